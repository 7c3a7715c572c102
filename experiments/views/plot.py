"""The progress chart as a PNG, in the style of autoresearch's progress.png.

Every experiment of an arena is a point at (experiment number, val_bpb): discarded
edits small and grey, kept edits coloured (filled when verified, hollow while not),
refuted claims red, the genome's baseline runs blue, crashes as red crosses along the
top. The running best, what a node could build on at each moment (verified kept
edits and the genome's baseline), is a step line, and the edits that moved it are
labelled with their short description. Lower is better.

Drawing uses matplotlib's Agg canvas directly (no pyplot, no display, no global
backend state), so it works on a headless node and from any thread.

    loopy plot -o progress.png [--arena A] [--topic T]
"""
from __future__ import annotations

import os
from pathlib import Path

from experiments.research.scoreboard import Scoreboard
from experiments.views.arena_view import ArenaView, Row, read_arena
from swarm.trust import TrustPolicy
from swarm.descriptions import edit_key_of

WIDTH_PX, HEIGHT_PX, DPI = 1600, 900, 100
MAX_LABELS = 30
KEPT, DISCARDED, BASELINE, BAD, BEST = "#1a7f37", "#b0b7bf", "#0969da", "#cf222e", "#116329"
MAX_KEY_LABEL = 40       # a longer edit key is labelled by its description, cut short


def short_desc(desc: str, limit: int = 32) -> str:
    """'[MATRIX_LR*2] MATRIX_LR x2: ...' -> 'MATRIX_LR*2'; other text cut to `limit`."""
    key = edit_key_of(desc)
    if key is not None and len(key) <= MAX_KEY_LABEL:
        return key
    text = " ".join((desc or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _y_range(view: ArenaView, best: list[float | None]) -> tuple[float, float]:
    """The useful range: every score down to the best, up to the bulk of the results
    (outliers above it are drawn on the top edge)."""
    scores = sorted(r.val_bpb for r in view.rows if r.status == "ok" and r.val_bpb is not None)
    if not scores:
        return 0.0, 1.0
    lo, hi = scores[0], scores[int(0.9 * (len(scores) - 1))]
    hi = max([hi] + [b for b in best if b is not None]
             + ([view.root_score] if view.root_score is not None else []))
    pad = (hi - lo) * 0.08 or 0.01
    return lo - pad, hi + pad


def plot_progress(view: ArenaView, out_path: str | Path, title: str | None = None,
                  width_px: int = WIDTH_PX, height_px: int = HEIGHT_PX, dpi: int = DPI) -> Path:
    """Draw `view` (experiments.views.arena_view.read_arena) to a PNG of width_px x height_px.

    Written to a temporary name and renamed into place; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_path = Path(out_path)
    rows = view.rows
    best = view.running_best()
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.06, 0.08, 0.92, 0.78))
    counts = view.counts()
    if title is None:
        title = f"Loopy progress: {view.arena}" + (f", topic {view.topic}" if view.topic else "")
    best_text = (f"best verified {view.best.val_bpb:.4f}" if view.best is not None
                 else "no score yet")
    subtitle = (f"{counts['experiments']} experiments, {counts['kept']} kept, "
                f"{counts['crashed']} crashed, {counts['refuted']} refuted; {best_text}")
    if view.arena.startswith("synthetic/"):
        subtitle += "  (SYNTHETIC: simulated trainer, nothing was trained)"
    fig.suptitle(title, x=0.06, y=0.975, ha="left", fontsize=16, fontweight="bold")
    fig.text(0.06, 0.925, subtitle, ha="left", fontsize=11, color="#57606a")
    ax.set_xlabel("experiment #", fontsize=12)
    ax.set_ylabel("val_bpb (lower is better)", fontsize=12)
    ax.grid(True, color="#eaeef2", linewidth=0.8)
    ax.set_axisbelow(True)
    if not rows:
        ax.text(0.5, 0.5, "no experiments in this arena yet", ha="center", va="center",
                transform=ax.transAxes, fontsize=14, color="#57606a")
        _save(fig, out_path, dpi)
        return out_path

    lo, hi = _y_range(view, best)
    ax.set_ylim(lo, hi)
    ax.set_xlim(0, len(rows) + 1)
    top = hi - (hi - lo) * 0.015
    groups: dict[str, tuple[list[int], list[float]]] = {}

    def add(group: str, n: int, y: float) -> None:
        xs, ys = groups.setdefault(group, ([], []))
        xs.append(n)
        ys.append(min(y, top))

    for n, row in enumerate(rows, 1):
        if row.status != "ok" or row.val_bpb is None:
            add("crash", n, top)
        elif row.refuted:
            add("refuted", n, row.val_bpb)
        elif row.baseline:
            add("baseline", n, row.val_bpb)
        elif row.kept:
            add("kept" if row.verified else "kept-unverified", n, row.val_bpb)
        else:
            add("discarded", n, row.val_bpb)
    style = {
        "discarded": dict(s=14, c=DISCARDED, alpha=0.7, linewidths=0, label="discarded"),
        "baseline": dict(s=44, c=BASELINE, edgecolors="#24292f", linewidths=0.6,
                         label="genome baseline"),
        "kept": dict(s=60, c=KEPT, edgecolors="#24292f", linewidths=0.7,
                     label="kept, verified"),
        "kept-unverified": dict(s=60, facecolors="white", edgecolors=KEPT, linewidths=1.6,
                                label="kept, not verified yet"),
        "refuted": dict(s=50, facecolors="white", edgecolors=BAD, linewidths=1.6,
                        label="refuted"),
        "crash": dict(s=40, c=BAD, marker="x", linewidths=1.5,
                      label="crashed / timed out / rejected"),
    }
    for group in ("discarded", "baseline", "kept-unverified", "kept", "refuted", "crash"):
        if group in groups:
            xs, ys = groups[group]
            ax.scatter(xs, ys, zorder=3 if group != "discarded" else 2, clip_on=False,
                       **style[group])

    steps_x, steps_y = [], []
    for n, value in enumerate(best, 1):
        if value is not None:
            steps_x.append(n)
            steps_y.append(value)
    if steps_x:
        steps_x.append(len(rows) + 1)
        steps_y.append(steps_y[-1])
        ax.step(steps_x, steps_y, where="post", color=BEST, linewidth=2.2, zorder=4,
                label="running best (verified)")
    _label_moves(ax, rows, best)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        order = sorted(range(len(labels)), key=lambda i: labels[i] != "running best (verified)")
        ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="lower right",
                  bbox_to_anchor=(1.0, 1.0), ncol=len(order), fontsize=10, frameon=False,
                  handletextpad=0.3, columnspacing=1.2, borderaxespad=0.3)
    _save(fig, out_path, dpi)
    return out_path


def _label_moves(ax, rows: list[Row], best: list[float | None]) -> None:
    """Label the edits that improved the running best (the largest moves if many)."""
    moves = []
    for i in range(1, len(rows)):
        before, now = best[i - 1], best[i]
        if before is not None and now is not None and now < before and not rows[i].baseline:
            moves.append((before - now, i))
    moves.sort(reverse=True)
    for _, i in sorted(moves[:MAX_LABELS], key=lambda m: m[1]):
        ax.annotate(short_desc(rows[i].desc), (i + 1, rows[i].val_bpb), xytext=(4, 8),
                    textcoords="offset points", rotation=30, fontsize=9, color="#24292f",
                    zorder=5)


def _save(fig, out_path: Path, dpi: int) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    os.replace(tmp, out_path)


def render_plot(board: Scoreboard, trust: TrustPolicy, topic: str | None, out: str | Path,
                title: str | None = None) -> dict:
    """`loopy plot`: the chart of the board's arena (and `topic`), scored by the node's own
    rules (`board`, `trust`), to `out`. Returns the counts drawn, for the command's
    summary line."""
    view = read_arena(board, trust, topic)
    path = plot_progress(view, out, title=title)
    return dict(view.counts(), path=str(path), arena=board.arena, topic=topic,
                best=view.best.val_bpb if view.best is not None else None)

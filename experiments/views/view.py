"""What a researcher sees of a running node: a rich live view, or plain log lines.

Both read one snapshot dict (the same facts `loopy status --json` prints):
`peer_id`, `genome`, `arena`, `topics`, `peers`, `records`, `experiments_local`,
`best`, `current` (the experiment in flight), `recent` (latest results from the
whole swarm) and `verifying` (verification work in flight).
"""
from __future__ import annotations

import sys
import time

from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text


def short(hex_id: str | None, n: int = 8) -> str:
    return hex_id[:n] if hex_id else "-"


def fmt_bpb(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def fmt_delta(value) -> str:
    return f"{value:+.4f}" if isinstance(value, (int, float)) else ""


def render(snap: dict):
    """The live view as one rich renderable."""
    head = Table.grid(padding=(0, 2))
    head.add_row(Text("node", style="bold"), snap.get("peer_id", "-"))
    head.add_row(Text("arena", style="bold"), f"{snap.get('arena', '-')}  (genome "
                 f"{snap.get('genome', '-')})")
    head.add_row(Text("topics", style="bold"), ", ".join(snap.get("topics", [])) or "-")
    peers = snap.get("peers", [])
    head.add_row(Text("peers", style="bold"),
                 f"{len(peers)} connected" if not snap.get("offline") else "offline")
    best = snap.get("best")
    best_line = (f"{fmt_bpb(best['val_bpb'])}  {short(best['id'])}  "
                 f"{'verified' if best.get('verified') else 'unverified'}"
                 if best else "no score yet")
    head.add_row(Text("best", style="bold"), best_line)
    head.add_row(Text("records", style="bold"),
                 f"{snap.get('records', 0)} in store, {snap.get('experiments_local', 0)} "
                 f"run here")

    parts = [Panel(head, title="loopy", border_style="cyan")]
    cur = snap.get("current")
    if cur:
        frac = float(cur.get("fraction") or 0.0)
        loss = cur.get("loss")
        line = Table.grid(padding=(0, 1))
        line.add_row(ProgressBar(total=1.0, completed=frac, width=40),
                     f"{frac:6.1%}", f"loss {loss:.4f}" if loss is not None else "",
                     f"{time.time() - cur.get('started', time.time()):5.0f}s")
        parts.append(Panel(Group(Text(cur.get("desc", "")),
                                 Text(f"parent {short(cur.get('parent'))}", style="dim"), line),
                           title="running", border_style="green"))
    for job in snap.get("verifying", []):
        parts.append(Text(f"verifying {short(job.get('id'))}: {job.get('desc', '')}",
                          style="yellow"))
    recent = Table(title="latest results", expand=True, show_edge=False)
    for col in ("who", "what", "val_bpb", "delta", "status"):
        recent.add_column(col, overflow="fold" if col == "what" else "ellipsis",
                          ratio=4 if col == "what" else 1)
    for r in snap.get("recent", [])[:10]:
        status = r.get("status", "")
        if r.get("kept"):
            status = "kept" + (" ✓" if r.get("verified") else "")
        author = r.get("author") or ""
        author = "self" if author in ("self", snap.get("peer_id")) else "…" + author[-6:]
        recent.add_row(author, r.get("desc", ""), fmt_bpb(r.get("val_bpb")),
                       fmt_delta(r.get("delta")), status)
    parts.append(recent)
    return Group(*parts)


def log_line(kind: str, data: dict, stream=None) -> None:
    """Plain mode: one line per event."""
    stream = stream or sys.stdout
    stamp = time.strftime("%H:%M:%S")
    if kind == "started":
        msg = f"start  {data.get('desc', '')} (parent {short(data.get('parent'))})"
    elif kind == "finished":
        verdict = "kept" if data.get("kept") else data.get("status", "")
        msg = (f"result {verdict:9s} val_bpb {fmt_bpb(data.get('val_bpb'))} "
               f"{fmt_delta(data.get('delta'))}  {data.get('desc', '')}")
        if data.get("reason") and data.get("status") != "ok":
            msg += f"  ({data['reason'][:120]})"
    elif kind == "proposal-failed":
        msg = f"skip   proposal failed: {data.get('reason', '')}"
    else:
        msg = f"{kind:6s} " + " ".join(f"{k}={v}" for k, v in data.items())
    print(f"[{stamp}] {msg}", file=stream, flush=True)

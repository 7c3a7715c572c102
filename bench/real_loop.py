"""Benchmark: one real-genome node on one core, the `mutate` agent, N edits from the baseline.

    python bench/real_loop.py                        # 60 s budget, 3 baselines + 20 edits (~40 min)
    python bench/real_loop.py --budget 20ktok --edits 2 --no-write    # a smoke run (minutes)
    python bench/real_loop.py --report-only --home DIR --no-write     # re-read a finished run

The node runs as a user would run it, offline:

    taskset -c 1 python node.py start --offline --topic general --agent mutate \\
        --trainer genome --device cpu --budget 60s --max-experiments 23 --home H --plain

The research loop first runs 3 baseline seeds (the arena's noise estimate), so
`--max-experiments` is 3 + `--edits`. The node process is pinned with `taskset`; the
harness sizes training threads from the process's CPU affinity, so every training and
evaluation child runs on 1 thread on that core. The data (tokenizer, tokenised corpus) is
prepared in the node's home before the node starts, so preparing it does not count.

While the node runs, the load average is sampled every 15 s (other jobs may share the
machine; on a time budget a busy core means fewer steps, hence worse scores). Afterwards
the node's store is read read-only with the same rules the node used
(experiments/views/arena_view.py `read_arena`, experiments/research/scoreboard.py): every run in order
with its delta against its parent in units of the baselines' sigma and whether it was
kept (beat its parent by more than 2 sigma), the running best, and the goal:

    at least 3 kept edits, each one above the noise (delta < -2 sigma).

The chart is drawn by the real CLI (`node.py plot`). Results go to docs/BENCHMARKS.md
between `<!-- bench_real_loop -->` markers and the chart to docs/real_loop.png (with
`--no-write`, the chart goes to the node's home and nothing in docs/ changes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

SECTION = "bench_real_loop"
BASELINE_RUNS = 3            # ScoreRules.baseline_repeats: the loop runs these first
GOAL_KEPT = 3
DOC_PLOT = REPO / "docs" / "real_loop.png"
LOAD_EVERY_S = 15.0
RUN_FILE = "real_loop_run.json"   # in the node's home: how the run went, for --report-only
RUN_ARGS = ("edits", "budget", "dataset", "topic", "agent", "seed", "core")


# ---------------------------------------------------------------------------------------------
# Running the node


def prepare_home(home: Path, dataset: str) -> float:
    """Tokenizer and token files in the node's own home, before the clock starts."""
    from genome.prepare import prepare_data
    t0 = time.perf_counter()
    prepare_data(home, dataset)
    return time.perf_counter() - t0


def node_command(home: Path, args) -> list[str]:
    return ["taskset", "-c", str(args.core), sys.executable, str(REPO / "node.py"), "start",
            "--offline", "--topic", args.topic, "--agent", args.agent, "--trainer", "genome",
            "--device", "cpu", "--dataset", args.dataset, "--budget", args.budget,
            "--seed", str(args.seed), "--max-experiments", str(BASELINE_RUNS + args.edits),
            "--home", str(home), "--plain"]


def run_timeout_s(budget: str, runs: int) -> float:
    """A cap for the whole node run: every run at its harness wall limit, plus evaluation."""
    from experiments.run.budget import parse_budget
    from experiments.run.harness import training_wall_limit
    per_run = training_wall_limit(parse_budget(budget), "cpu") + 180.0
    return runs * per_run + 300.0


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per-core (busy, total) jiffies from /proc/stat (empty where there is none)."""
    out = {}
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(v) for v in values]
                idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
                out[name] = (sum(ticks) - idle, sum(ticks))
    except (OSError, ValueError, IndexError):
        return {}
    return out


def core_busy(before: dict, after: dict) -> dict[str, float]:
    """Share of each core's time spent busy between two `cpu_times()` readings."""
    out = {}
    for name, (busy1, total1) in after.items():
        busy0, total0 = before.get(name, (0, 0))
        if total1 > total0:
            out[name] = (busy1 - busy0) / (total1 - total0)
    return out


BUSY_WARNING = 0.2   # another core busier than this: the run measures the load too


def warn_if_busy(core: int, seconds: float = 3.0) -> None:
    """Say so when other cores are busy: on a wall-clock budget they slow the node's core
    (memory contention) and widen the noise bar 3 to 5 times (docs/BENCHMARKS.md)."""
    before = cpu_times()
    time.sleep(seconds)
    busy = {name: share for name, share in core_busy(before, cpu_times()).items()
            if name != f"cpu{core}" and share > BUSY_WARNING}
    if busy:
        print("warning: other cores are busy (" + ", ".join(
            f"{name} {share:.0%}" for name, share in sorted(busy.items())) + "); the "
            "scores will be noisier than on a quiet machine", file=sys.stderr, flush=True)


def sample_load(stop: threading.Event, out: list, t0: float) -> None:
    while not stop.is_set():
        out.append((round(time.time() - t0, 1), *os.getloadavg()))
        stop.wait(LOAD_EVERY_S)


def run_node(home: Path, args) -> dict:
    """Start the node, wait until it stops after its experiments (or the cap), sample load."""
    cmd = node_command(home, args)
    cap = run_timeout_s(args.budget, BASELINE_RUNS + args.edits)
    loads: list[tuple] = []
    stop = threading.Event()
    t0 = time.time()
    sampler = threading.Thread(target=sample_load, args=(stop, loads, t0), daemon=True)
    ticks0 = cpu_times()
    sampler.start()
    cut = None
    with open(home / "node.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            rc = proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            cut = f"still running after the cap of {cap / 60:.0f} min: stopped with SIGTERM"
            proc.send_signal(signal.SIGTERM)   # the node records the run in flight and stops
            try:
                rc = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
                cut += ", then killed"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stop.set()
            sampler.join(timeout=5)
    wall = time.time() - t0
    ones = [s[1] for s in loads]
    return {"command": cmd, "rc": rc, "cut": cut, "wall_s": wall, "cap_s": cap,
            "date": time.strftime("%Y-%m-%d", time.localtime(t0)), "machine": machine(),
            "load_samples": loads,
            "load_mean": statistics.mean(ones) if ones else None,
            "load_max": max(ones) if ones else None,
            "core_busy": core_busy(ticks0, cpu_times())}


def save_run(home: Path, run: dict, prep_s: float, args) -> None:
    data = {"run": run, "prep_s": prep_s, "args": {k: getattr(args, k) for k in RUN_ARGS}}
    (home / RUN_FILE).write_text(json.dumps(data, indent=1, default=str))


def load_run(home: Path, args) -> tuple[dict | None, float | None]:
    """A finished run's record (and its settings into `args`); (None, None) if unusable."""
    try:
        data = json.loads((home / RUN_FILE).read_text())
        run, saved = data["run"], data["args"]
        for key in RUN_ARGS:
            if not isinstance(saved[key], (int, str)) or isinstance(saved[key], bool):
                raise TypeError(key)
        if not isinstance(run, dict) or not all(
                k in run for k in ("rc", "wall_s", "load_mean", "load_max", "core_busy", "cut",
                                   "date", "machine")):
            raise KeyError("run")
        float(run["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    for key in RUN_ARGS:
        setattr(args, key, saved[key])
    prep = data.get("prep_s")
    return run, prep if isinstance(prep, (int, float)) else None


def log_tail(home: Path, lines: int = 15) -> str:
    try:
        return "\n".join((home / "node.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def draw_plot(home: Path, out: Path, core: int) -> str:
    """The chart through the real command line, pinned like the node; its summary line."""
    cmd = ["taskset", "-c", str(core), sys.executable, str(REPO / "node.py"), "plot",
           "-o", str(out), "--home", str(home), "--plain"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"node.py plot failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout.strip().replace(str(REPO) + "/", "")


# ---------------------------------------------------------------------------------------------
# Reading the node's store (read-only)


def read_report(home: Path, seed: int = 0) -> dict:
    """Every run of the node's arena in order, scored with the node's own rules."""
    from experiments.views.arena_view import read_arena
    from experiments.views.dashboard.source import open_readonly, read_public_key
    from experiments.research.scoreboard import Scoreboard, ScoreRules
    from genome import base_train_source, genome_root_id
    from swarm.lineage import Lineage, LineageError
    from swarm.trust import TrustPolicy

    root = genome_root_id()
    store = open_readonly(home, root)
    try:
        arenas = [a for a, _n in store.arenas()]
        arena = store.get_meta("node.arena") or (arenas[0] if arenas else None)
        if arena is None:
            return {"arena": None, "runs": [], "sigma": None, "root_score": None,
                    "baselines": {}, "best": None, "kept": [], "attestations": 0}
        trust = TrustPolicy(store, read_public_key(home))
        lineage = Lineage(store, base_train_source(), root)
        board = Scoreboard(store, lineage, root, arena, ScoreRules(seed=seed),
                           trust.is_verified)
        view = read_arena(board, trust)
        records = {r.id_hex: r for r in store.experiments(arena=arena)}
        programs = {}
        for r in records.values():
            try:
                programs[r.id_hex] = lineage.source_of(r.id)
            except LineageError:
                programs[r.id_hex] = None
        baselines = board.baselines()
        attestations = store.attestation_count(trust.me) if trust.me else 0
    finally:
        store.close()
    sigma = view.sigma
    runs = []
    first_run_of: dict[str, int] = {}     # program -> the first edit that ran it
    for n, (row, best) in enumerate(zip(view.rows, view.running_best()), 1):
        result = records[row.id].result or {}
        program = programs.get(row.id)
        same_as = None
        if not row.baseline and program is not None:
            first = first_run_of.setdefault(program, n)
            same_as = first if first != n else None
        runs.append({
            "n": n, "id": row.id, "desc": row.desc, "baseline": row.baseline,
            "status": row.status, "val_bpb": row.val_bpb, "delta": row.delta,
            "delta_sigma": row.delta / sigma if row.delta is not None and sigma else None,
            "kept": row.kept, "verified": row.verified,
            "parent": "root" if row.parents[0] == view.root_id else row.parents[0][:8],
            "train_s": result.get("train_s"), "total_s": result.get("total_s"),
            "steps": result.get("steps"), "tokens": result.get("tokens"),
            "reason": result.get("reason", ""), "t_ms": row.t, "running_best": best,
            "same_as": same_as})
    kept = [r for r in runs if r["kept"]]
    return {"arena": arena, "runs": runs, "sigma": sigma, "root_score": view.root_score,
            "baselines": {s: v for s, v in sorted(baselines.items())},
            "best": None if view.best is None else
            {"val_bpb": view.best.val_bpb, "id": view.best.id.hex(),
             "desc": view.best.record.desc if view.best.record else "genome root"},
            "kept": kept, "attestations": attestations}


def failed_proposals(home: Path) -> list[dict]:
    """Proposals the loop refused (not experiments: they never ran), from proposals.jsonl."""
    out = []
    try:
        text = (home / "proposals.jsonl").read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append({"desc": str(entry.get("desc", ""))[:200],
                        "reason": str(entry.get("reason", ""))[:300]})
    return out


def goal_verdict(report: dict) -> tuple[bool, str]:
    """At least GOAL_KEPT kept edits, each one beating its parent by more than 2 sigma. A
    kept run of a program an earlier edit already ran (another parent's stack rebuilt it)
    found nothing new and does not count."""
    from experiments.research.scoreboard import ScoreRules  # the loop's keep rule
    sigma = report["sigma"]
    above = [r for r in report["kept"]
             if sigma and r["delta"] is not None and ScoreRules().beats(r["delta"], sigma)]
    new = [r for r in above if r.get("same_as") is None]
    met = len(new) >= GOAL_KEPT
    repeats = len(above) - len(new)
    return met, (f"goal: at least {GOAL_KEPT} kept edits, each above the noise "
                 f"(delta < -2 sigma): {'met' if met else 'MISSED'} "
                 f"({len(above)} of {len(report['kept'])} kept edits are above 2 sigma"
                 + (f"; {repeats} of them re-ran a program an earlier edit ran, and do "
                    "not count" if repeats else "") + ")")


# ---------------------------------------------------------------------------------------------
# The section of docs/BENCHMARKS.md


def _f(value, spec: str = ".4f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def machine() -> str:
    from benchdoc import cpu_name
    cpu = cpu_name()
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = "?"
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch_version}")


def render(report: dict, run: dict | None, args, plot_line: str, plot_ref: str | None,
           proposals: list[dict], prep_s: float | None, notes: str = "") -> str:
    runs, sigma = report["runs"], report["sigma"]
    edits = [r for r in runs if not r["baseline"]]
    met, goal = goal_verdict(report)
    lines = [f"<!-- {SECTION} -->",
             "## Real genome: one node, one core, the `mutate` agent (`bench/real_loop.py`)", ""]
    when = time.strftime("%Y-%m-%d")
    if run is not None:
        busy = ", ".join(f"{k} {v:.0%}" for k, v in sorted(run["core_busy"].items()))
        lines += [
            f"Measured {run['date']} on {run['machine']}. The real node, offline, pinned to core "
            f"{args.core} (training and evaluation on 1 thread): `node.py start --offline "
            f"--topic {args.topic} --agent {args.agent} --trainer genome --device cpu "
            f"--dataset {args.dataset} --budget {args.budget} --max-experiments "
            f"{BASELINE_RUNS + args.edits}` (3 baseline seeds for the noise estimate, then "
            f"{args.edits} edits). Arena `{report['arena']}`.", "",
            f"Wall time {run['wall_s'] / 60:.1f} min for {len(runs)} runs "
            f"(data prepared beforehand in {_f(prep_s, '.0f')} s, not counted); node exit "
            f"status {run['rc']}{'; ' + run['cut'] if run['cut'] else ''}. Load average "
            f"(1 min, sampled every {LOAD_EVERY_S:.0f} s) mean {_f(run['load_mean'], '.2f')}, "
            f"max {_f(run['load_max'], '.2f')}; cores busy over the run: {busy}. Other jobs "
            "may share core 0; on a time budget a busy core means fewer steps.", ""]
    else:
        lines += [f"Read {when} from an existing node home (`--report-only`; how the run "
                  f"went was not recorded); arena `{report['arena']}`.", ""]
    base = report["baselines"]
    base_text = ", ".join(f"seed {s}: {'/'.join(format(v, '.4f') for v in vals)}"
                          for s, vals in base.items())
    lines += [f"Noise: baselines {base_text or 'none'}; sigma (std over seeds) "
              f"**{_f(sigma)}**, so an edit is kept when it beats its parent by more than "
              f"2 sigma = {_f(2 * sigma if sigma else None)}. Edits train with the arena's "
              f"seed {args.seed} and are compared with their parent at that seed.", "",
              "| # | run | status | val_bpb | delta vs parent | delta / sigma | kept | "
              "train s / total s | steps | running best |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        desc = r["desc"].replace("|", "\\|")
        if len(desc) > 70:
            desc = desc[:69] + "…"
        status = r["status"] if r["status"] == "ok" else f"**{r['status']}**"
        kept = "baseline" if r["baseline"] else ("**kept**" if r["kept"] else "no")
        if r.get("same_as"):
            kept += f" (same program as #{r['same_as']})"
        lines.append(
            f"| {r['n']} | `{desc}` (parent {r['parent']}) | {status} | {_f(r['val_bpb'])} | "
            f"{_f(r['delta'], '+.4f')} | {_f(r['delta_sigma'], '+.1f')} | {kept} | "
            f"{_f(r['train_s'], '.0f')} / {_f(r['total_s'], '.0f')} | {_f(r['steps'], 'd')} | "
            f"{_f(r['running_best'])} |")
    lines.append("")
    bad = [r for r in runs if r["status"] != "ok"]
    for r in bad:
        lines.append(f"- run {r['n']} `{r['desc'][:60]}` ended `{r['status']}`: "
                     f"{r['reason'][:200]}")
    if bad:
        lines.append("")
    curve = [(r["n"], r["running_best"], r["desc"]) for i, r in enumerate(runs)
             if r["running_best"] is not None and
             (i == 0 or runs[i - 1]["running_best"] != r["running_best"])]
    root = report["root_score"]
    lines += ["Running best (what the node could build on), at each change:", "",
              "| after run | running best | vs baseline (seed " + str(args.seed) +
              ") | in sigma | set by |", "|---|---|---|---|---|"]
    for n, value, desc in curve:
        gain = value - root if root is not None else None
        lines.append(f"| {n} | {value:.4f} | {_f(gain, '+.4f')} | "
                     f"{_f(gain / sigma if gain is not None and sigma else None, '+.1f')} | "
                     f"`{desc[:60]}` |")
    lines.append("")
    totals = [r["total_s"] for r in runs if r["total_s"]]
    trains = [r["train_s"] for r in runs if r["train_s"]]
    best = report["best"]
    lines += [
        f"- Runs: {len(runs)} ({len(runs) - len(edits)} baselines, {len(edits)} edits, "
        f"{len(bad)} not ok); re-runs of peers' claims: {report['attestations']} (offline). "
        f"Mean train / total seconds per run: {_f(statistics.mean(trains) if trains else None, '.0f')}"
        f" / {_f(statistics.mean(totals) if totals else None, '.0f')}.",
        f"- Kept edits: **{len(report['kept'])}**" +
        (" (" + "; ".join(f"`{k['desc'][:50]}` {k['delta']:+.4f} = {k['delta_sigma']:+.1f} "
                          f"sigma" for k in report["kept"]) + ")" if report["kept"] else "") + ".",
        f"- Best: {_f(best['val_bpb'] if best else None)} (`{best['desc'][:60] if best else '-'}`)"
        f" against the baseline's {_f(root)} at seed {args.seed}: "
        f"{_f(best['val_bpb'] - root if best and root is not None else None, '+.4f')}.",
        f"- Proposals the loop refused before running them (duplicates, failed checks): "
        f"{len(proposals)}" + (": " + "; ".join(sorted({p['reason'][:80] for p in proposals}))
                               if proposals else "") + ".",
        f"- **{goal}**", ""]
    if notes:
        lines += [notes.strip(), ""]
    if plot_ref:
        lines += [f"![running best and every run]({plot_ref})", "",
                  f"Drawn by `node.py plot` ({plot_line}).", ""]
    lines.append(f"<!-- /{SECTION} -->")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edits", type=int, default=20, help="edits after the 3 baselines")
    ap.add_argument("--budget", default="60s", help="per-run training budget")
    ap.add_argument("--dataset", default="embedded")
    ap.add_argument("--topic", default="general")
    ap.add_argument("--agent", default="mutate")
    ap.add_argument("--seed", type=int, default=0, help="the arena's training seed")
    ap.add_argument("--core", type=int, default=1, help="the CPU core the node is pinned to")
    ap.add_argument("--home", help="node home (default: a temporary one, removed unless "
                                   "--keep); must hold no store yet unless --report-only")
    ap.add_argument("--keep", action="store_true", help="keep the temporary home")
    ap.add_argument("--report-only", action="store_true",
                    help="do not run a node: report on the store in --home")
    ap.add_argument("--no-write", action="store_true",
                    help="print only: leave docs/BENCHMARKS.md and docs/real_loop.png alone")
    ap.add_argument("--json", help="also dump the raw results to this file")
    ap.add_argument("--notes", help="a markdown file added to the written section")
    args = ap.parse_args()
    if args.edits < 1:
        ap.error("--edits must be at least 1")
    if args.report_only and not args.home:
        ap.error("--report-only needs --home")
    if shutil.which("taskset") is None or args.core >= (os.cpu_count() or 1):
        print(f"needs taskset and a core {args.core}", file=sys.stderr)
        return 2

    temporary = args.home is None
    home = Path(args.home or tempfile.mkdtemp(prefix="loopy-real-loop-")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    run, prep_s = None, None
    try:
        if not args.report_only:
            from swarm.store import STORE_FILE
            if (home / STORE_FILE).exists():
                print(f"{home} already holds a store: give a fresh --home", file=sys.stderr)
                return 2
            print(f"preparing data in {home}", flush=True)
            prep_s = prepare_home(home, args.dataset)
            warn_if_busy(args.core)
            print(f"running: {' '.join(node_command(home, args))}", flush=True)
            run = run_node(home, args)
            save_run(home, run, prep_s, args)
            print(f"node exited {run['rc']} after {run['wall_s'] / 60:.1f} min"
                  f"{'; ' + run['cut'] if run['cut'] else ''}", flush=True)
            if run["rc"] != 0 or run["cut"]:
                print("node log tail:\n" + log_tail(home), flush=True)
        if args.report_only:
            run, prep_s = load_run(home, args)
        from experiments.views.dashboard.source import DashboardError
        try:
            report = read_report(home, args.seed)
        except DashboardError as e:   # no store, a damaged one, one from a newer Loopy
            print(f"cannot read the node's store: {e}; node log tail:\n{log_tail(home)}",
                  file=sys.stderr)
            return 1
        if not report["runs"]:
            print("the node recorded no experiments; node log tail:\n" + log_tail(home),
                  file=sys.stderr)
            return 1
        plot_path = home / "real_loop.png" if args.no_write else DOC_PLOT
        plot_line = draw_plot(home, plot_path, args.core)
        plot_ref = None if args.no_write else DOC_PLOT.name
        proposals = failed_proposals(home)
        notes = Path(args.notes).read_text() if args.notes else ""
        text = render(report, run, args, plot_line, plot_ref, proposals, prep_s, notes)
        print(text, flush=True)
        print(f"chart: {plot_path}; node home: {home}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"report": report, "run": run, "proposals": proposals, "prep_s": prep_s},
                indent=1, default=str))
        if not args.no_write:
            from benchdoc import write_section
            write_section(SECTION, text)
        return 0
    finally:
        if temporary and not args.keep:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

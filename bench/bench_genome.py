"""The genome on CPU through the real harness: baseline, noise, overhead, edit effects.

Runs the baseline genome with 3 seeds and seed 0 three times (sigma over seeds and over
repeats), the time outside training with its breakdown (start-up of the training child
until its first batch and after its last, export, evaluation with the causality probes),
and a few plausible edits with paired seeds, each reported in units of sigma. A quiet
machine is needed: wall-clock parts are meaningless under load.

    python bench/bench_genome.py [--budget 300ktok] [--home DIR] [--no-edits] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdoc import write_section  # noqa: E402
from experiments.run.harness import run_experiment  # noqa: E402
from genome import base_train_source  # noqa: E402

EDITS = {
    "learning rates x3": [(r"^(MATRIX_LR|EMBED_LR|HEAD_LR) = ([0-9.e-]+)",
                           lambda m: f"{m.group(1)} = {float(m.group(2)) * 3!r}")],
    "half width": [(r'("cpu": dict\(DEPTH=4, WIDTH=)128', lambda m: m.group(1) + "64")],
    "no warmup": [(r"^WARMUP_FRAC = [0-9.]+", lambda m: "WARMUP_FRAC = 0.0")],
    "tied embeddings": [(r"^TIE_EMBEDDINGS = False", lambda m: "TIE_EMBEDDINGS = True")],
}


def edited(source: str, rules) -> str:
    for pattern, repl in rules:
        new = re.sub(pattern, repl, source, flags=re.M)
        if new == source:
            raise SystemExit(f"edit pattern {pattern!r} no longer matches genome/train.py")
        source = new
    return source


def run(source: str, home: Path, budget: str, seed: int) -> dict:
    r = run_experiment(source, home=home, dataset="embedded", budget=budget, device="cpu",
                       seed=seed)
    if r.status != "ok":
        raise SystemExit(f"run failed: {r.status}: {r.reason}")
    print(f"  seed {seed}: val_bpb {r.val_bpb:.4f} train {r.train_s:.1f}s total {r.total_s:.1f}s",
          flush=True)
    t = r.timings
    return {"bpb": r.val_bpb, "train_s": r.train_s or 0.0, "total_s": r.total_s,
            "tokens": r.tokens or 0, "prepare_s": t.get("prepare", 0.0),
            "child_s": t.get("train", 0.0) - (r.train_s or 0.0),
            "export_s": t.get("export", 0.0), "eval_s": t.get("eval", 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", default="300ktok")
    ap.add_argument("--home", default=None)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-edits", action="store_true", help="baselines and overhead only")
    args = ap.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="loopy-bench-"))
    base = base_train_source()
    load = os.getloadavg()[0]
    print("baseline, seeds 0-2")
    seeds = [run(base, home, args.budget, s) for s in range(3)]
    print("baseline, seed 0 twice more")
    repeats = [seeds[0]] + [run(base, home, args.budget, 0) for _ in range(2)]
    sigma = statistics.stdev(r["bpb"] for r in seeds)
    overhead = statistics.mean(r["total_s"] - r["train_s"] for r in seeds + repeats)
    rows = []
    for name, rules in ({} if args.no_edits else EDITS).items():
        print(name)
        runs = [run(edited(base, rules), home, args.budget, s) for s in range(3)]
        deltas = [e["bpb"] - b["bpb"] for e, b in zip(runs, seeds)]
        rows.append((name, statistics.mean(deltas), statistics.stdev(deltas)))
    mean_bpb = statistics.mean(r["bpb"] for r in seeds)
    per_seed = " / ".join(f"{r['bpb']:.4f}" for r in seeds)
    tok_s = statistics.mean(r["tokens"] / r["train_s"] for r in seeds if r["train_s"])
    lines = ["<!-- bench_genome -->", "## The genome on CPU (`bench/bench_genome.py`)", "",
             f"Budget {args.budget}, 2 threads, real harness (sandboxed training child fed "
             f"by the harness, export child, evaluation child with every scoring batch "
             f"probed). Measured {time.strftime('%Y-%m-%d')}, load average {load:.1f} at "
             f"the start.", "",
             "| quantity | value |", "|---|---|",
             f"| baseline val_bpb, seeds 0 / 1 / 2 | {per_seed} |",
             f"| baseline val_bpb (mean of seeds 0-2) | {mean_bpb:.4f} |",
             f"| sigma over 3 seeds | {sigma:.4f} |",
             f"| spread over 3 repeats of seed 0 | "
             f"{max(r['bpb'] for r in repeats) - min(r['bpb'] for r in repeats):.6f} "
             f"(seed 0: {repeats[0]['bpb']!r}) |",
             f"| training tokens/s | {tok_s:,.0f} |",
             f"| time outside training (total - training s) | {overhead:.1f} s |"] + [
                 f"| - {label} | {statistics.mean(r[key] for r in seeds + repeats):.1f} s |"
                 for key, label in (("prepare_s", "data preparation (cached)"),
                                    ("child_s", "training child outside its budget "
                                                "(start-up, saving)"),
                                    ("export_s", "export child (graph + weights)"),
                                    ("eval_s", "evaluation child (graph checks, scoring, "
                                               "probes)"))] + ["",
             "| edit (paired seeds 0-2) | mean delta | std | in sigmas |", "|---|---|---|---|"]
    for name, mean, std in rows:
        lines.append(f"| {name} | {mean:+.4f} | {std:.4f} | {mean / sigma:+.1f} |")
    lines.append("<!-- /bench_genome -->")
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section("bench_genome", section)


if __name__ == "__main__":
    main()

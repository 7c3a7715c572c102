"""Benchmark: how long an Optuna agent takes to rebuild its study from a long history.

The Optuna agents rebuild the study from the history on every proposal (the swarm's
records are the trial database). This times one proposal on the real base genome with
histories of 500, 2,000 and 5,000 records (lineages of catalogue edits with scores), for
`optuna:tpe` and `optuna:cmaes`: the median of 3 proposals each. Goal: under 1 s at 5,000.

    python bench/bench_optuna_rebuild.py [--sizes 500,2000,5000] [--no-write]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdoc import cpu_name, write_section  # noqa: E402
from experiments.agents.base import Tried, load_brief  # noqa: E402
from experiments.agents.catalogue import build_catalogue  # noqa: E402
from experiments.agents.literals import locate_settings  # noqa: E402
from experiments.agents.optuna_agent import OptunaAgent  # noqa: E402
from genome import base_train_source  # noqa: E402

GOAL_S = 1.0
SAMPLERS = ("tpe", "cmaes")


def history(n: int, keys: list[str], rng: random.Random) -> list[Tried]:
    """`n` records: lineages that branch from earlier records, each a catalogue edit with a
    score, about one in five kept (the shape of a long swarm history)."""
    out, ids = [], ["root"]
    for i in range(n):
        parent = ids[int(len(ids) * rng.random() ** 0.3)]  # newer records more often
        delta = rng.gauss(0.003, 0.01)
        status = "kept" if delta < -0.006 else rng.choice(["discarded"] * 9 + ["crash"])
        record = f"r{i:05d}"
        out.append(Tried(rng.choice(keys), "", parent, status,
                         delta if status != "crash" else None, record_id=record,
                         val_bpb=1.9 + rng.gauss(0, 0.01) if status != "crash" else None))
        if status == "kept":
            ids.append(record)
    return out


def time_proposals(sampler: str, base: str, tried: list[Tried], repeats: int = 3) -> float:
    brief = load_brief("general")
    parent_id = hashlib.sha256(base.encode()).hexdigest()[:16]
    times = []
    for seed in range(repeats):
        agent = OptunaAgent(sampler, base_source=base)  # a fresh agent: nothing cached
        t0 = time.perf_counter()
        proposal = agent.propose(base, brief, tried, parent_id=parent_id,
                                 rng=random.Random(seed))
        times.append(time.perf_counter() - t0)
        if proposal.failure:
            raise SystemExit(f"{sampler}: the proposal failed: {proposal.failure}")
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="500,2000,5000")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base = base_train_source()
    keys = sorted(build_catalogue(base, locate_settings(base), "cpu"))
    rows = []
    for n in sizes:
        tried = history(n, keys, random.Random(n))
        row = [time_proposals(s, base, tried) for s in SAMPLERS]
        rows.append((n, row))
        print(f"{n:>6} records: " + ", ".join(f"{s} {t * 1000:.0f} ms"
                                              for s, t in zip(SAMPLERS, row)), flush=True)
    worst = max(rows[-1][1])
    load = os.getloadavg()[0]
    lines = ["<!-- bench_optuna_rebuild -->",
             "## Optuna agents: rebuilding the study from a long history "
             "(`bench/bench_optuna_rebuild.py`)", "",
             f"One proposal on the real base genome by a fresh agent (the study rebuilt from "
             f"the whole history; the agent keeps the newest 2,000 records as trials), "
             f"median of 3. History: lineages of catalogue edits with scores. Measured "
             f"{time.strftime('%Y-%m-%d')} on {cpu_name()}, load average {load:.1f} at the "
             f"end.", "",
             "| records | " + " | ".join(f"optuna:{s}" for s in SAMPLERS) + " |",
             "|---|" + "---|" * len(SAMPLERS)]
    lines += [f"| {n:,} | " + " | ".join(f"{t * 1000:.0f} ms" for t in row) + " |"
              for n, row in rows]
    verdict = "met" if worst < GOAL_S else "not met"
    lines += ["", f"Goal: under {GOAL_S:g} s at {sizes[-1]:,} records: **{verdict}** "
                  f"({worst * 1000:.0f} ms at worst).", "<!-- /bench_optuna_rebuild -->"]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section("bench_optuna_rebuild", section)


if __name__ == "__main__":
    main()

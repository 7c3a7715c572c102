"""Verification under attack: 8 honest nodes with 0%, 20% and 40% extra liar nodes.

Synthetic trainer, in-process swarm (experiments/simulation/simulate.py: a perfect bus instead of
libp2p, so the numbers are about the verification policy, not the network). For each
liar share: the share of honest runs spent on verification, false records in any honest
node's best verified lineage (what it announces and exports), and the honest swarm's
improvement against the no-liar case after the same number of experiments.

    python bench/bench_liars.py [--experiments 30] [--seeds 2] [--no-write]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdoc import write_section  # noqa: E402
from experiments.simulation.simulate import false_steps, run  # noqa: E402

HONEST = 8


def measure(liars: int, experiments: int, landscape: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run(Path(tmp), honest=HONEST, liars=liars, sybils_per_liar=3,
                     experiments=experiments, landscape=landscape, seed=landscape)
        wall = time.perf_counter() - t0
        gains, false, verify, runs = [], 0, 0, 0
        for loop in result.loops:
            root = loop.scores.root_score()
            best = loop.scores.best()
            gains.append(root - best.val_bpb)
            if best.record is not None:
                false += len(false_steps(loop, best.id))
            verify += loop.store.attestation_count(loop.identity.public_key)
            runs += len(loop.store.experiments(local=True))
        return {"gain": statistics.mean(gains), "false": false,
                "verify_share": verify / (verify + runs), "lies": sum(len(l.claims)
                                                                      for l in result.liars),
                "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=30, help="steps per honest node")
    ap.add_argument("--seeds", type=int, default=2, help="landscapes to average over")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    for share in (0.0, 0.2, 0.4):
        liars = round(HONEST * share)
        runs = [measure(liars, args.experiments, seed) for seed in range(args.seeds)]
        row = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
        row.update(share=share, liars=liars, false=sum(r["false"] for r in runs))
        rows.append(row)
        print(row, flush=True)
    base = rows[0]["gain"] or float("nan")
    lines = [
        "<!-- bench_liars -->",
        "## Verification under attack (`bench/bench_liars.py`)",
        "",
        f"{HONEST} honest nodes, synthetic trainer (sigma 0.001), {args.experiments} steps each, "
        f"averaged over {args.seeds} landscapes; each liar controls 3 keys, publishes a "
        "fake improvement every step with attestations from its other keys, and replays old "
        "lies. In-process bus instead of libp2p. Measured "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| liars | lies published | verification share | false steps in honest best lineages"
        " | improvement vs no liars |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['liars']} ({r['share']:.0%}) | {r['lies']:.0f} | "
                     f"{r['verify_share']:.1%} | {r['false']} | {r['gain'] / base:.0%} |")
    lines += ["", "Goals: verification share at most 25%, zero false steps, at least 80% of "
              "the no-liar improvement with 20% liars.", "<!-- /bench_liars -->"]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section("bench_liars", section)


if __name__ == "__main__":
    main()

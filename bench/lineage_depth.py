"""Where a swarm's rounds go: the kept steps in the best lineage when the target is reached.

A lone node and an N-node swarm (perfect bus, bench/scaling.py's) run to each landscape's
one-night target from an earlier `scaling.py --json` dump; for each, the rounds (runs of
one node) it took and the depth of node 0's best lineage then. Rounds per kept step tell
whether a swarm waits on the lineage's depth (about 1 round a step is the floor) or on
something else (verification, baselines, the keep bar).

    python bench/lineage_depth.py --references R.json [--sizes 1,16] [--landscapes 0-11]
        [--trust-all] [--operator]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scaling  # noqa: E402

LONE_REPS = 3      # lone nodes per landscape, as the references have


def measure(refs: dict, n: int, lands: list[int], trust_all: bool, operator: bool) -> dict:
    rows = []
    for land in lands:
        ref = refs[land]
        for rep in range(LONE_REPS if n == 1 else 1):
            cap = 150 if n == 1 else int(math.ceil(scaling.cap_rounds(ref["t1"], n)))
            with tempfile.TemporaryDirectory() as tmp:
                out = trio.run(scaling.ideal_swarm, Path(tmp), n, land,
                               1000 + rep if n == 1 else 0, cap, ref["target"],
                               trust_all, operator)
            rows.append((land, out["rounds"], out["depth"]))
            shown = out["rounds"] if out["rounds"] is not None else f"> {cap}"
            print(f"N={n} landscape {land}: {shown} rounds, best lineage depth "
                  f"{out['depth']}", flush=True)
    reached = [(r, d) for _, r, d in rows if r is not None]
    return {"n": n, "reached": len(reached), "of": len(rows),
            "median_depth": statistics.median(d for _, _, d in rows),
            "rounds_per_step": (sum(r for r, _ in reached) / max(1, sum(d for _, d in reached))
                                if reached else None)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--references", required=True, help="a bench/scaling.py --json dump")
    ap.add_argument("--sizes", default="1,16")
    ap.add_argument("--landscapes", default="0-11")
    ap.add_argument("--trust-all", action="store_true")
    ap.add_argument("--operator", action="store_true")
    args = ap.parse_args()
    refs = scaling.load_references(args.references)
    lands = [land for land in scaling.parse_list(args.landscapes) if land in refs]
    if not lands:
        raise SystemExit("--landscapes: none of them is in the references")
    for n in scaling.parse_list(args.sizes):
        s = measure(refs, n, lands, args.trust_all, args.operator)
        per = f"{s['rounds_per_step']:.1f}" if s["rounds_per_step"] is not None else "-"
        print(f"N={n}: reached {s['reached']} of {s['of']}, median depth "
              f"{s['median_depth']}, {per} rounds (runs of one node) per kept step")
    return 0


if __name__ == "__main__":
    sys.exit(main())

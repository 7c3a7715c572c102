"""What records say that several parts of Loopy read: names, baselines, the genome's score.

- `TOPIC_RE`, `GENOME_RE`: a topic name and a genome id, as PROTOCOL.md's record format
  fixes them. Records, gossip topics, genome/ and the agents check names against these.
- `baseline_seed`, `baseline_runs`, `root_score`: PROTOCOL.md's baseline convention. A
  run of the unchanged genome is an experiment on the genome root with an empty patch
  and `desc` `baseline seed=N` (swarm.descriptions reads that text); the genome's own
  score in an arena is the median of its ok runs at the arena's seed (0 unless a node
  trains with another). The scoreboard and `loopy export` both use `root_score`.

Pure functions over strings and decoded records, and import-light (no msgpack, no keys):
genome/ imports this module.
"""
from __future__ import annotations

import re
import statistics
from collections.abc import Iterable

from swarm import descriptions

TOPIC_RE = re.compile(r"[a-z0-9-]{1,32}")
GENOME_RE = re.compile(r"[0-9a-f]{16}")
ARENA_SEED = 0


def baseline_seed(record) -> int | None:
    """The seed of a baseline run (the genome unchanged), else None."""
    return descriptions.baseline_seed(record.desc) if not record.patch else None


def baseline_runs(root_children: Iterable, arena: str) -> dict[int, list[float]]:
    """val_bpb of the ok baseline runs in `arena` by seed, from the genome root's children."""
    by_seed: dict[int, list[float]] = {}
    for record in root_children:
        seed = baseline_seed(record)
        if seed is not None and record.arena == arena and record.status == "ok":
            by_seed.setdefault(seed, []).append(record.val_bpb)
    return by_seed


def root_score(runs_by_seed: dict[int, list[float]], seed: int = ARENA_SEED) -> float | None:
    """The genome's own score in an arena: the median of its baseline runs at `seed`."""
    runs = runs_by_seed.get(seed)
    return statistics.median(runs) if runs else None

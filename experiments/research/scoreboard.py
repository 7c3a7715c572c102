"""Scores in one arena, read from the store: baselines, noise, kept edits, best parents.

Every experiment in an arena trains with the arena's fixed seed, so a child and
its parent are paired by seed. The arena's noise sigma comes from baseline runs
of the unchanged genome with different seeds (`baseline seed=N` records, this
node's or any peer's). An edit is *kept* when it beats its parent by more than
`noise_k * sigma`; a merge must beat the better of its parents.

No training and no network here: the research loop, `loopy status` and the
dashboard all read the same numbers through this class.

Reading the baselines means decoding every child of the genome root, and every
delta of a root edit needs them: inside `consistent()` (which `candidates()`
uses, and the loop wraps around its scans) they are read once. The store cannot
change inside such a block as long as it holds no `await`.
"""
from __future__ import annotations

import statistics
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from swarm.conventions import baseline_runs, baseline_seed, root_score
from swarm.lineage import Lineage
from swarm.records import Record
from swarm.store import Store
from swarm.trust import TrustedAuthors


@dataclass
class ScoreRules:
    seed: int = 0                 # the arena's training seed: paired comparisons
    noise_k: float = 2.0          # kept only if it beats its parent by noise_k * sigma
    sigma_floor: float = 1e-4     # never trust a noise estimate below this
    baseline_repeats: int = 3     # baseline seeds needed before sigma is known

    def beats(self, delta: float, sigma: float) -> bool:
        """The keep rule: a child whose val_bpb minus its parent's is `delta` is kept."""
        return delta < -self.noise_k * sigma


# One operator's swarm of this many nodes (trust_peer) measures this many baseline seeds
# in its first round, one a node; with the noise known that well, a lower bar keeps more
# true gains without keeping more noise. Fewer seeds do not carry the lower bar
# (docs/BENCHMARKS.md, scaling).
OPERATOR_SWARM = 16
OPERATOR_SWARM_K = 1.5


def keep_rules(seed: int = 0, operator_nodes: int = 1) -> ScoreRules:
    """The keep rule of a node whose operator runs `operator_nodes` nodes (itself
    included) that trust each other: the default, or for a swarm of at least
    OPERATOR_SWARM such nodes, that many shared seeds and a bar of OPERATOR_SWARM_K sigma."""
    if operator_nodes >= OPERATOR_SWARM:
        return ScoreRules(seed=seed, noise_k=OPERATOR_SWARM_K, baseline_repeats=OPERATOR_SWARM)
    return ScoreRules(seed=seed)


@dataclass
class Candidate:
    """A possible parent: a kept record, or the genome root (record None)."""
    id: bytes
    val_bpb: float
    record: Record | None = None


def is_baseline(record: Record) -> int | None:
    """The seed of a baseline run (the genome unchanged), else None."""
    return baseline_seed(record)


class Scoreboard:
    def __init__(self, store: Store, lineage: Lineage, root_id: bytes, arena: str,
                 rules: ScoreRules | None = None,
                 trusted: Callable[[Record], bool] | None = None,
                 baseline_authors: Callable[[], TrustedAuthors] | None = None):
        self.store, self.lineage, self.root_id, self.arena = store, lineage, root_id, arena
        self.rules = rules or ScoreRules()
        self.trusted = trusted or (lambda r: store.is_local(r.id))
        # Whose baseline runs count (TrustPolicy.trusted_author: ours and trusted peers'):
        # they set the arena's noise and the genome's score, so a stranger's must not.
        # None: every author's (views of a store that judge nothing).
        self.baseline_authors = baseline_authors
        self._memo: dict | None = None    # set inside consistent()
        self._depth = 0

    @contextmanager
    def consistent(self):
        """Read the baselines once for the block (nestable); the block must not await."""
        self._depth += 1
        if self._depth == 1:
            self._memo = {}
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._memo = None

    def baselines(self) -> dict[int, list[float]]:
        """val_bpb of baseline runs in the arena, by seed (every author's)."""
        if self._memo is not None:
            if "baselines" not in self._memo:
                self._memo["baselines"] = self._read_baselines()
            return {seed: list(runs) for seed, runs in self._memo["baselines"].items()}
        return self._read_baselines()

    def _read_baselines(self) -> dict[int, list[float]]:
        if self.baseline_authors is None:
            return baseline_runs(self.store.children(self.root_id), self.arena)
        # filtered in the query: strangers' records are never read
        children = self.store.children(self.root_id, authors=self.baseline_authors().keys())
        return baseline_runs(children, self.arena)

    def sigma(self) -> float | None:
        """Std of the baseline score over seeds; None until `baseline_repeats` seeds ran."""
        by_seed = self.baselines()
        if len(by_seed) < max(2, self.rules.baseline_repeats):
            return None
        per_seed = [statistics.median(v) for v in by_seed.values()]
        return max(statistics.stdev(per_seed), self.rules.sigma_floor)

    def root_score(self) -> float | None:
        """The genome's own score in the arena, at the arena's seed (the one rule:
        swarm.conventions.root_score, which `loopy export` uses too)."""
        return root_score(self.baselines(), self.rules.seed)

    def score_of(self, record_id: bytes) -> float | None:
        if record_id == self.root_id:
            return self.root_score()
        r = self.store.get(record_id)
        return r.val_bpb if r is not None and r.status == "ok" else None

    def parent_score(self, record: Record) -> float | None:
        """A merge must beat the better of its parents."""
        scores = [s for s in (self.score_of(p) for p in record.parents) if s is not None]
        return min(scores) if scores else None

    def delta(self, record: Record) -> float | None:
        parent = self.parent_score(record)
        if record.status != "ok" or parent is None:
            return None
        return record.val_bpb - parent

    def is_kept(self, record: Record, sigma: float | None = None) -> bool:
        """An ok non-baseline experiment that beat its parent by more than the noise."""
        if record.status != "ok" or not record.patch or record.arena != self.arena:
            return False
        sigma = self.sigma() if sigma is None else sigma
        delta = self.delta(record)
        if sigma is None or delta is None:
            return False
        return self.rules.beats(delta, sigma)

    def reproduces(self, result, claimed: float, sigma: float | None = None) -> bool:
        """Whether a re-run's result reproduces a claimed score: ok, and no worse than the
        claim by more than the noise (noise_k * sigma). The one rule every verifier uses."""
        sigma = (self.sigma() if sigma is None else sigma) or 0.0
        return result.status == "ok" and result.val_bpb <= claimed + self.rules.noise_k * sigma

    def label(self, record: Record, sigma: float | None = None) -> str:
        """What a record's outcome is called everywhere: kept, discarded, or its status
        (a baseline run of the genome is `ok`)."""
        if self.is_kept(record, sigma):
            return "kept"
        return "discarded" if record.status == "ok" and record.patch else record.status

    def candidates(self, topic: str | None = None) -> list[Candidate]:
        """The root and every trusted, buildable, kept record in the arena that scored
        below it, best first (a record worse than the root is no parent worth building on)."""
        with self.consistent():
            sigma = self.sigma()
            root = self.root_score()
            out = [Candidate(self.root_id, root)] if root is not None else []
            below = root if root is not None else float("inf")
            for r in self.store.experiments(arena=self.arena, topic=topic, ok_below=below):
                if self.is_kept(r, sigma) and self.trusted(r) and \
                        self.lineage.is_buildable(r.id):
                    out.append(Candidate(r.id, r.val_bpb, r))
        out.sort(key=lambda c: (c.val_bpb, c.id))
        return out

    def best(self, topic: str | None = None) -> Candidate | None:
        found = self.candidates(topic)
        return found[0] if found else None

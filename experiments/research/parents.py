"""Parent choice: which record the next edit builds on.

Usually the best kept record of the arena; a share of the time one of the top few, to
explore; a share of the time the best claim of a peer that nobody verified yet, when
it beats our best (a speculative parent: see `speculative_parent`). A node without
full isolation builds only on its own lineage.

A mixin of `ResearchLoop` (loop.py): it reads the loop's `store`, `lineage`, `scores`,
`trust`, `identity`, `config`, `rng` and `root_id`, its `firm_busy` and `busy` hints
(baselines.py) and the agent's exhausted parents (proposals.py).
"""
from __future__ import annotations

import math

from experiments.research.claims import ClaimChecks
from experiments.research.scoreboard import Candidate


class ParentChoice(ClaimChecks):
    def choose_parent(self) -> Candidate | None:
        """The best kept record, or (a share of the time) one of the top few.

        Before the root has a score, the root itself (score NaN) when a peer who earned
        our trust announced the arena's baseline seed (a stranger's announce never defers
        a baseline: swarm.announces): exploring the root meanwhile beats running the same
        baseline twice, and the edit is judged once the baseline arrives."""
        found = self.scores.candidates()
        if not self.config.foreign_code:
            found = [c for c in found if self.own_lineage(c.id)]
            return found[0] if found else None
        if not found:
            if self.config.rules.seed in self._seeds_run_elsewhere():
                return Candidate(self.root_id, math.nan)
            return None
        if len(found) > 1 and self.rng.random() < self.config.explore_share:
            return self.rng.choice(found[:self.config.explore_top])
        strangers = self.rng.random() < self.config.speculate_share
        return self.speculative_parent(found[0], strangers) or found[0]

    def speculative_parent(self, best: Candidate, strangers: bool) -> Candidate | None:
        """The best claim that beats `best` and is not verified yet, to build on now.

        Waiting for verification before building on a peer's improvement costs a swarm
        a round per improvement, and many of its edits land on a stale parent. Our child
        is trained and measured by us and judged against the claim's own score, so a
        claim that overstates its score makes our child look worse, not better: a lie
        costs us the run, and a child is kept only for what we measured it at, by the
        noise margin below the claimed score. (Its lineage then holds a step nobody
        verified yet; the re-run queue still checks it, and whoever we or the peers we
        trust caught lying is never built on.)

        Claims by authors we trust (we reproduced their claims, none refuted) come
        first. A stranger's claim counts too once a peer we trust reproduced it (one
        attestation: not verification, which takes k, but enough to risk a run on), and
        any stranger's claim when `strangers` (a `speculate_share` of the steps), so
        fresh keys publishing false claims can waste at most that share of our runs
        until the re-run queue catches them; keys vouching for each other count for
        nothing."""
        with self.scores.consistent():
            sigma = self.scores.sigma()
            if sigma is None:
                return None
            reps = self.trust.reputations()
            doubted = self.trust.doubted_authors(reps)
            floor = self.config.trust.liar_threshold if strangers \
                else self.config.trust.trust_threshold
            found, found_key = None, None
            for r in self.store.experiments(arena=self.arena, ok_below=best.val_bpb):
                rep = reps.get(r.author, 0.0)
                if r.val_bpb is None or r.val_bpb >= best.val_bpb:
                    continue
                if rep < floor and (rep < self.config.trust.liar_threshold or
                                    not self.trust.trusted_attesters(r, reps)):
                    continue  # a stranger's claim, unless a peer we trust reproduced it
                key = (rep < self.config.trust.trust_threshold, r.val_bpb, r.id)
                if found_key is not None and key >= found_key:
                    continue  # cheap checks first: most records lose on the key
                if doubted.get(r.author, 0) or not self._open_claim(r, sigma, reps):
                    continue  # (one we reproduced is a candidate already, not a claim)
                if self._shaky_parent(r, reps) or not self.lineage.is_buildable(r.id):
                    continue
                found, found_key = r, key
        return Candidate(found.id, found.val_bpb, found) if found is not None else None

    def own_lineage(self, record_id: bytes) -> bool:
        """Whether every edit in the record's ancestry is ours: the only programs a node
        without full isolation may run."""
        if record_id == self.root_id:
            return True
        try:
            chain = self.lineage.chain(record_id)
        except Exception:  # a broken lineage is nobody's program to run
            return False
        me = self.identity.public_key  # a merge carries its donor's code: treat it as foreign
        return all(r.author == me and len(r.parents) == 1 for r in chain)

    def _other_parents(self, tried: Candidate) -> list[Candidate]:
        """The other top records (`explore_top` of them, as `choose_parent` may pick), in
        order, that the agent has not said it has nothing left on."""
        found = self.scores.candidates()
        if not self.config.foreign_code:
            found = [c for c in found if self.own_lineage(c.id)]
        return [c for c in found[:self.config.explore_top]
                if c.id != tried.id and not self._is_exhausted(c.id)]

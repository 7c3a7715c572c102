"""Which peers' claims are open: what the loop may re-run, or build on before anyone
verified it.

A claim is a peer's kept experiment. It is open while we have not checked it, its
author is not a known liar, and it is not a copy; no peer we trust may have refuted it
for us to build on it early, fewer than k of them for us to re-run it. A claim whose
parent was refuted continues a lie, most likely, since honest nodes build only on what
they verified. The re-run queue (reruns.py) and the speculative parents (parents.py)
both ask these questions.

A copy is a claim of a program this node already had when the claim arrived: from our
own run, or from an earlier kept claim (in our order of receipt) by another author
(`ProgramIndex.copied_from`, `original_runs`). Reputation is what our re-runs reproduced
of an author's claims (swarm/trust.py), so re-running a copy would pay its author for
someone else's work: a fresh key that re-signs our own best record, a hair better, would
be reproduced by our own program and soon count as a trusted verifier. A copy is never
re-run for its author, nor built on (its original is the claim to check).

A mixin of `ResearchLoop` (loop.py): it reads the loop's `store`, `scores`, `trust`,
`identity`, `config`, `root_id` and its program index (`programs`, `_run_counts`:
proposals.py), and keeps the scan's copy-check memo in `_originals` (set up by the loop).
"""
from __future__ import annotations

from collections.abc import Callable

from experiments.research.programs import original_runs
from swarm.records import Record


class ClaimChecks:
    def _open_claim(self, r: Record, sigma: float, reps: dict[bytes, float],
                    counts: Callable[[bytes, bytes], bool] | None = None, *,
                    to_check: bool = False) -> bool:
        """A peer's kept claim that we have not checked, whose author is not a known liar,
        and that is no copy: what we may re-run (`to_check`) or build on early.

        To build on it early, no peer we trust may have refuted it. To re-run it, fewer
        than k of them: one trusted key that refutes every honest claim would otherwise
        keep us from ever checking anyone else, and so from ever trusting anyone else (our
        own re-run then also tells us whether that peer lied: swarm/trust.py).
        `counts`: `_run_counts()` already read (a scan reads it once)."""
        return (r.author != self.identity.public_key and self.scores.is_kept(r, sigma)
                and reps.get(r.author, 0.0) >= self.config.trust.liar_threshold
                and self.trust.my_verdict(r) is None
                and len(self.trust.trusted_refuters(r, reps)) < (
                    self.config.trust.k if to_check else 1)
                and self._copy_of(r, counts) is None)

    def _copy_of(self, r: Record, counts: Callable[[bytes, bytes], bool] | None = None
                 ) -> bytes | None:
        """The record whose program `r` repeats, if `r` is a copy (see above): ours, or
        another author's kept claim that we received before `r`. Runs of known liars that
        we did not re-run do not count as originals (as for duplicates: proposals.py)."""
        if counts is None:
            counts = self._run_counts()
        memo = self._originals
        if memo is None or memo[0] is not counts:   # one predicate (and memo) per scan
            memo = self._originals = (counts, original_runs(
                self.store, self.scores.is_kept, self.trust, counts))
        return self.programs.up_to_date().copied_from(r.id, self.identity.public_key,
                                                       memo[1])

    def _shaky_parent(self, claim: Record, reps: dict[bytes, float]) -> bool:
        """Whether a parent of the claim was refuted by us or a peer we trust."""
        for parent_id in claim.parents:
            parent = self.store.get(parent_id) if parent_id != self.root_id else None
            if parent is not None and parent.kind == "experiment" and (
                    self.trust.my_verdict(parent) == "refuted"
                    or self.trust.trusted_refuters(parent, reps)
                    or self.trust.is_liar(parent.author, reps)):
                return True
        return False

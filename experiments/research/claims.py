"""Which peers' claims are open: what the loop may re-run, or build on before anyone
verified it.

A claim is a peer's kept experiment. It is open while we have not checked it, no peer
we trust refuted it, and its author is not a known liar; a claim whose parent was
refuted continues a lie, most likely, since honest nodes build only on what they
verified. The re-run queue (reruns.py) and the speculative parents (parents.py) both
ask these questions.

A mixin of `ResearchLoop` (loop.py): it reads the loop's `store`, `scores`, `trust`,
`identity`, `config` and `root_id`.
"""
from __future__ import annotations

from swarm.records import Record


class ClaimChecks:
    def _open_claim(self, r: Record, sigma: float, reps: dict[bytes, float]) -> bool:
        """A peer's kept claim that we have not checked, no peer we trust refuted, and
        whose author is not a known liar: what we may re-run or build on early."""
        return (r.author != self.identity.public_key and self.scores.is_kept(r, sigma)
                and reps.get(r.author, 0.0) >= self.config.trust.liar_threshold
                and self.trust.my_verdict(r) is None
                and not self.trust.trusted_refuters(r, reps))

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

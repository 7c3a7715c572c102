"""The re-run queue: which peers' claims this node checks, and checking one.

A claim is worth a re-run when it says it beat its parent by more than the noise and it
would become our best (or our best in its topic). Re-runs take at most `verify_share` of
the node's runs. The verdict is an attestation, judged as `loopy verify` judges it
(verify_claim.py): `reproduced` when the re-run scores within the noise of the claim and
the gain also holds on held-out test windows where the trainer can score them;
`refuted` otherwise. A re-run that crashes or times out says nothing about the claim
until the machine shows it can still train (a health check, baselines.py): without
that, the node attests nothing.

A mixin of `ResearchLoop` (loop.py): it reads the loop's `store`, `lineage`, `scores`,
`trust`, `identity`, `genome`, `trainer`, `config`, `state`, `claim_lottery_key` (a
secret of this node's, for the order of strangers' claims), its `verifiers` hints and
its program index (`programs`, `_run_counts`, `_index_programs`: proposals.py), and runs
through the loop's `_train`, `_show`, `_health_check` (baselines.py) and `publish`.
"""
from __future__ import annotations

import hashlib
import time

from experiments.research.claims import ClaimChecks
from experiments.research.runs import StepOutcome, run_cancellable
from experiments.research.scoreboard import Candidate
from experiments.research.swarm_link import announce_policy
from experiments.research.verify_claim import MACHINE_FAILURES, draw_test_seed, judge_rerun, \
    parent_source, score_parent
from swarm.descriptions import verify_desc
from swarm.records import Record, make_attestation

SENIORITY_STEP_MS = 3_600_000       # strangers known an hour longer rank ahead...
SENIORITY_CAP_MS = 24 * 3_600_000   # ...up to a day


class Reruns(ClaimChecks):
    def verify_budget_left(self) -> bool:
        """Would one more re-run keep verification within `verify_share` of our runs?

        The first re-run is always allowed: until a node has reproduced someone it trusts
        no one, and in a swarm that starts together the share would otherwise hold back
        everyone's first adoption of a peer's improvement for several runs."""
        mine = self.store.local_experiment_count(self.arena)
        done = self.store.attestation_count(self.identity.public_key)
        return done == 0 or (done + 1) <= self.config.verify_share * (done + mine + 1)

    def pending_claim(self) -> Record | None:
        """The peer claim that would most change our decisions, if it holds.

        A claim is worth a re-run when it says it beat its parent by more than the noise
        and it would become our best (or our best in its topic); we skip what we already
        checked, what k trusted peers already vouch for, what a trusted peer re-runs now
        (its verdict will do to build on), authors known to lie, and copies of programs
        we had before the claim came (claims.py).
        Authors with more reputation come first, then (among equals) the lowest claimed
        score of an author we trust; strangers' claims come in an order their claims
        cannot buy (`_stranger_ranks`)."""
        with self.scores.consistent():
            return self._pending_claim()

    def _pending_claim(self) -> Record | None:
        sigma = self.scores.sigma()
        best = self.scores.best()
        if sigma is None or best is None:
            return None
        reps = self.trust.reputations()
        counts = self._run_counts()
        running = self.verifiers()
        topic_best: dict[str, float] = {}
        claims = []
        # (every topic's best is the root or below it: claims scored above it beat none)
        below = self.scores.root_score()
        for r in self.store.experiments(arena=self.arena, ok_below=(
                below if below is not None else float("inf"))):
            # (a copy of a program we had is not open: re-running it would pay its author
            # for someone else's run, see claims.py)
            if not self._open_claim(r, sigma, reps, counts, to_check=True) or \
                    self.trust.is_verified(r, reps):
                continue
            attesters = set(self.trust.trusted_attesters(r, reps))
            rerunning = set(self.trust.trusted_among(
                r, list(running.get(r.id_hex[:16], ())), reps)) - attesters
            if rerunning or len(attesters) >= self.config.trust.k:
                continue  # a peer we trust re-runs it now: its verdict will let us build on it
            if r.topic not in topic_best:
                found = self.scores.best(r.topic)
                topic_best[r.topic] = found.val_bpb if found else float("inf")
            if r.val_bpb >= topic_best[r.topic]:  # beats neither our best nor its topic's
                continue
            if self.lineage.is_buildable(r.id):
                claims.append(r)
        # Authors we checked before; then authors no trusted peer caught lying; then claims
        # not built on a refuted record; then claims no trusted peer refuted; then claims
        # trusted peers already vouch for; then strangers in an order no claim can buy
        # (`_stranger_ranks`); then claims fewer peers announce they re-run now (after the
        # ranks: an announce costs nothing); then the best claim. Fresh keys (Sybils among
        # them) wait behind known peers, and known liars' keys behind those. A claim built
        # on a record we (or peers we trust) refuted continues a lie, most likely: honest
        # nodes build only on what they verified. Without the re-runners key a swarm that
        # starts together would all re-run the one best claim; it only reorders, so
        # announces from Sybil keys cannot stop us checking anything.
        doubted = self.trust.doubted_authors(reps)
        ranks = self._stranger_ranks({r.author for r in claims}, reps)
        claims.sort(key=lambda r: (-reps.get(r.author, 0.0), doubted.get(r.author, 0),
                                   self._shaky_parent(r, reps),
                                   len(self.trust.trusted_refuters(r, reps)),
                                   -len(self.trust.trusted_attesters(r, reps)),
                                   ranks.get(r.author, (0, 0, 0)),
                                   len(running.get(r.id_hex[:16], ())), r.val_bpb, r.id))
        return claims[0] if claims else None

    def _stranger_ranks(self, authors: set[bytes], reps: dict[bytes, float]
                        ) -> dict[bytes, tuple[int, int, int]]:
        """The order in which strangers' claims are re-run: never by claimed score.

        Whatever a claim says costs its author nothing, so any order by it is the order a
        thousand fresh keys claiming the most would take (and did: bench_attacks,
        fake-claims). A stranger's claim must beat our best to be queued at all; among
        strangers, authors who kept their announced promises (swarm.announces: runs
        announced before their records came, as every honest node announces its runs)
        come first, then keys this node has known longer (whole hours, up to a day, by
        its own clock: keys minted when an attack starts come after the peers already
        here), then a lottery that this node draws for itself (a keyed hash with a secret
        of its own). Standing and seniority are cheap for a prepared attacker (two kept
        promises; one record a day ahead), so against one this is a lottery: a flood of
        keys gets its share by number at worst, and each key we catch is a liar after its
        first refutation. Trusted authors' claims are not ranked here: the best of them
        goes first."""
        threshold = self.config.trust.trust_threshold
        strangers = [a for a in authors if reps.get(a, 0.0) < threshold]
        if not strangers:
            return {}
        policy = announce_policy(self)
        tallies = self.store.announce_tallies(strangers)
        now_ms = int(time.time() * 1000)
        ranks = {}
        for author in strangers:
            earned = policy.standing(author, reps, tallies) == "earned"
            first = self.store.first_receipt(author)
            known_ms = min(max(now_ms - first, 0), SENIORITY_CAP_MS) if first else 0
            lottery = hashlib.blake2b(author, key=self.claim_lottery_key,
                                      digest_size=8).digest()
            ranks[author] = (0 if earned else 1, -(known_ms // SENIORITY_STEP_MS),
                             int.from_bytes(lottery, "big"))
        return ranks

    def claim_behind(self, source: str) -> Record | None:
        """The peer's claim that ran exactly this program, if re-running it would change
        our decisions (an open claim that beats our best, see `_open_claim`).

        The agent's best idea is then someone's result: re-running it as a verification
        costs the run the edit would have cost, and it counts as one (an attestation, and
        trust in its author if it holds), where running it as a new edit would measure
        nothing new. Refusing it as a duplicate would cost the swarm these checks of its
        best claim."""
        if not self.config.foreign_code:
            return None
        ran = self.programs.run_by(source, self._run_counts())
        record = self.store.get(ran) if ran is not None else None
        if record is None or record.val_bpb is None:
            return None
        with self.scores.consistent():
            sigma, best = self.scores.sigma(), self.scores.best()
            if sigma is None or best is None or record.val_bpb >= best.val_bpb:
                return None
            reps = self.trust.reputations()
            if not self._open_claim(record, sigma, reps, to_check=True) or \
                    self.trust.is_verified(record, reps) or \
                    not self.lineage.is_buildable(record.id):
                return None
        return record

    async def verify(self, claim: Record) -> StepOutcome:
        """Re-run a claim in our arena with the arena's seed; attest what we measured.

        Never a copy (claims.py): our verdict on it would move its author's reputation for
        a program someone else ran first (or we did), so it runs nothing and attests
        nothing (the queue never picks one; this guards the other callers)."""
        sigma = self.scores.sigma() or 0.0
        await self._index_programs()
        original = self._copy_of(claim)
        if original is not None:
            reason = f"a copy of record {original.hex()[:16]}: not re-run, no verdict"
            self._show("verified", {"id": claim.id_hex, "desc": f"verify {claim.desc}",
                                    "status": "unattested", "val_bpb": None,
                                    "claimed": claim.val_bpb, "delta": None, "kept": False,
                                    "author": claim.author_peer_id, "reason": reason})
            return StepOutcome("no-proposal", reason=reason)
        source = self.lineage.source_of(claim.id)
        job = {"id": claim.id_hex, "desc": claim.desc, "claimed": claim.val_bpb}
        self.state.verifying = [job]
        try:
            parent = Candidate(claim.parents[0], self.scores.parent_score(claim) or 0.0)
            test_seed = draw_test_seed(self.trainer)
            result = await self._train(source, self.config.rules.seed,
                                       verify_desc(claim.id, claim.desc), parent,
                                       test_seed=test_seed)
        finally:
            self.state.verifying = []
        if result.status in MACHINE_FAILURES:
            # Our crash says nothing about the claim until this machine shows it can
            # still train: refute only if the unmodified genome trains here now.
            health = await self._health_check()
            if health.record is None or health.record.status != "ok":
                entry = {"id": claim.id_hex, "desc": f"verify {claim.desc}",
                         "status": "unattested", "val_bpb": None, "claimed": claim.val_bpb,
                         "delta": None, "kept": False, "author": claim.author_peer_id,
                         "reason": f"our re-run failed ({result.status}: {result.reason}) "
                                   "and the health check " + ("failed" if health.record
                                                              else "did not run") +
                                   ": no verdict"}
                self._show("verified", entry)
                return health  # a failed baseline: serve() counts it towards stopping
        judged = await judge_rerun(
            claim, result, board=self.scores, sigma=sigma,
            parent_scores=lambda: run_cancellable(score_parent(
                self.trainer, parent_source(claim, self.lineage, self.root_id),
                seed=self.config.rules.seed, test_seed=test_seed,
                fallback=self.lineage.base_source)))
        verdict, reason = judged.verdict, judged.reason
        attestation = make_attestation(self.identity, genome=self.genome, target=claim.id,
                                       arena=self.arena, verdict=verdict, result=judged.result)
        self.store.insert(attestation, local=True)
        self.trust.save_reputations()
        await self.publish(attestation)
        entry = {"id": claim.id_hex, "desc": f"verify {claim.desc}", "status": verdict,
                 "val_bpb": result.val_bpb, "claimed": claim.val_bpb,
                 "delta": (result.val_bpb - claim.val_bpb) if result.val_bpb else None,
                 "kept": False, "reason": reason, "author": claim.author_peer_id}
        self._show("verified", entry)
        return StepOutcome("verification", record=attestation, parent=parent,
                           reason=verdict)

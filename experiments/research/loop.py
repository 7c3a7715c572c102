"""The research loop: choose a parent, propose an edit, run it, keep or discard, record.

One `ResearchLoop` owns one node's experiments in one arena. Everything it does
becomes a signed `experiment` record in the store, crashes and rejections
included; it resumes from the store after a restart (an experiment cut off by a
kill is recorded once, as interrupted).

Noise-aware keeping (experiments/research/scoreboard.py): an edit is kept when it beats
its parent by more than the arena's noise. The node runs baseline seeds itself
while the arena has fewer than `baseline_repeats`, and adds one every
`sigma_refresh` experiments so the noise estimate keeps improving.

A run that fails on this machine is not evidence against anyone until the machine
shows it can still train: after `root_failures` failed runs in a row, or a re-run of a
peer's claim that crashed or timed out, the node runs a baseline of the unmodified
genome (a health check) before it goes on. A re-run is attested `refuted` for a crash
only when that check passes; when the check fails too, the node attests nothing, and
`root_failures` failed baselines in a row stop it with the reason.

No program is run twice (experiments/research/programs.py): a proposal whose train.py the arena
already ran, or another live node announces it runs now, is refused like a duplicate edit.

The store is only touched from the thread that runs the loop (trio's); the
trainer and the agent, which block, run in worker threads.
"""
from __future__ import annotations

import json
import math
import random
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Protocol

import trio

from experiments.agents.base import (Agent, Brief, Proposal, Tried, usable_source,
                                     validate_proposal)
from experiments.research.crossover import Crossover, CrossoverFinder
from experiments.research.programs import KnownPrograms, ProgramIndex, program_digest
from experiments.research.scoreboard import Candidate, Scoreboard, ScoreRules
from swarm.announces import (EXPIRE_S, AnnounceLimits, AnnouncePolicy,  # noqa: F401
                             announced_program, parse_working_on, seeds_of, working_on)
from swarm.lineage import Lineage
from swarm.patch import make_patch
from swarm.records import Record, make_attestation, make_experiment
from swarm.store import Store
from swarm.trust import TrustPolicy, TrustRules

INFLIGHT_KEY = "loop.inflight"
BASELINE_RE = re.compile(r"^baseline seed=(\d+)$")
VERIFY_RE = re.compile(r"^verify ([0-9a-f]{16}): ")
PROGRAMS_PER_SLICE = 200     # records the program index reads between checkpoints
MACHINE_FAILURES = ("crash", "timeout")  # statuses a broken machine gives any program
YIELDED = "yielded: another node announced the same run on the same parent first"
EXHAUSTED = "search exhausted: the agent has nothing left to propose on the top records"
IDLE_MAX_S = 60.0        # a node with nothing to run waits 1, 2, 4 ... up to this long
IDLE_POLL_S = 1.0        # between looks at the store: new records end the wait early


class Trainer(Protocol):
    """Runs one train.py source in the node's arena; blocks; honours `cancel`."""

    arena: str
    label: str

    def run(self, source: str, *, seed: int, progress: Callable | None,
            cancel: threading.Event) -> "TrainerResult": ...


class TrainerResult(Protocol):
    status: str
    val_bpb: float | None
    reason: str

    def to_record_result(self) -> dict: ...


@dataclass
class LoopConfig:
    topic: str = "general"
    rules: ScoreRules = field(default_factory=ScoreRules)
    sigma_refresh: int = 25       # one more baseline seed every this many experiments
    explore_share: float = 0.2    # share of parents drawn from the top records, not the best
    explore_top: int = 5
    max_experiments: int = 0      # 0: run until stopped
    until: float | None = None    # unix seconds
    proposal_attempts: int = 5    # failed/duplicate proposals before giving up on a step
    verify_share: float = 0.25    # at most this share of the node's runs re-run others' claims
    trust: TrustRules = field(default_factory=TrustRules)
    claim_check_s: float = 3.0    # this far (and 4x) into a run, yield it to a peer running it
    merge_share: float = 0.15     # share of steps that try a merge with a kept sibling
    port_share: float = 0.1       # share of steps that try an edit kept in another arena
    speculate_share: float = 0.0  # share of steps that may build on a better claim by a
                                  # stranger before it is verified (see speculative_parent)
    foreign_code: bool = True     # run programs holding other authors' edits (claims,
                                  # re-runs, merges, peers' lineages); a node without full
                                  # isolation (experiments/run/sandbox.py) sets it False
    root_failures: int = 3        # the unmodified genome failing this often in a row stops
                                  # the loop: the machine, not an edit, is broken; and
                                  # this many failed runs of any kind in a row call for a
                                  # baseline (a health check) before the next edit


@dataclass
class StepOutcome:
    kind: str                         # baseline | experiment | verification | no-proposal
    record: Record | None = None
    parent: Candidate | None = None
    kept: bool = False
    delta: float | None = None
    reason: str = ""


@dataclass
class LoopState:
    """What the live view shows; updated by the loop, read by the UI."""
    current: dict | None = None       # {"desc", "parent", "started", "fraction", "loss"}
    verifying: list = field(default_factory=list)
    recent: list = field(default_factory=list)
    experiments_run: int = 0


class ResearchLoop:
    def __init__(self, *, store: Store, lineage: Lineage, identity, genome: str,
                 root_id: bytes, trainer: Trainer, agent: Agent, brief: Brief,
                 config: LoopConfig, home: Path,
                 busy: Callable[[], set[tuple[bytes, str]]] | None = None,
                 verifiers: Callable[[], dict[str, set[bytes]]] | None = None,
                 running_programs: Callable[[], set[str]] | None = None,
                 publish: Callable[[Record], Awaitable[None]] | None = None,
                 announce: Callable[[str], Awaitable[None]] | None = None,
                 on_event: Callable[[str, dict], None] | None = None,
                 rng: random.Random | None = None):
        self.store, self.lineage, self.identity = store, lineage, identity
        self.genome, self.root_id = genome, root_id
        self.trainer, self.agent, self.brief, self.config = trainer, agent, brief, config
        self.arena = trainer.arena
        self.home = Path(home)
        self.trust = TrustPolicy(store, identity.public_key, config.trust)
        self.scores = Scoreboard(store, lineage, root_id, self.arena, config.rules,
                                 self.trust.is_verified)
        self.busy = busy or (lambda: set())
        self.verifiers = verifiers or (lambda: {})
        self.running_programs = running_programs or (lambda: set())
        # (parent, desc) pairs announced by peers who earned our trust: the only hints
        # that may defer a baseline (connect_to_swarm sets both from swarm.announces)
        self.firm_busy: Callable[[], set[tuple[bytes, str]]] = lambda: set()
        self.programs = ProgramIndex(store, lineage, self.arena)
        self.publish = publish or _nothing
        self.announce = announce or _nothing
        self.on_event = on_event or (lambda kind, data: None)
        self.rng = rng or random.Random()
        self.crossovers = CrossoverFinder(store=store, lineage=lineage, scores=self.scores,
                                          trust=self.trust, root_id=root_id,
                                          rules=config.rules)
        self.state = LoopState()
        self.stop_reason = ""  # set when the loop stops itself on an error (see serve)
        self._liars: tuple[int, set[bytes]] | None = None  # (store count, known liars)
        self.failed_in_a_row = 0  # own runs that crashed or timed out since the last ok one
        self._cancel = threading.Event()
        self._exhausted: dict[bytes, tuple] = {}  # parent id -> `_news()` when the agent
                                                  # said it had nothing left on it
        self._idle_s = 0.0                      # the last wait after a step that ran nothing
        self.sleep = trio.sleep                 # the idle wait's clock (tests pass a fake)

    # -- parent choice --------------------------------------------------------

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
        a round per improvement: at 16 nodes about half of all edits were built on a
        stale parent because of it. Our child is trained and measured by us and judged
        against the claim's own score, so a claim that overstates its score makes our
        child look worse, not better: a lie costs us the run, and a child is kept only
        for what we measured it at, by the noise margin below the claimed score. (Its
        lineage then holds a step nobody verified yet; the re-run queue still checks
        it, and whoever we or the peers we trust caught lying is never built on.)

        Claims by authors we trust (we reproduced their claims, none refuted) come
        first. A stranger's claim counts too once a peer we trust reproduced it (one
        attestation: not verification, which takes k, but enough to risk a run on; on
        the perfect bus at 16 nodes this took the speedup from 5.0 to 5.5), and any
        stranger's claim when `strangers` (a `speculate_share` of the steps), so fresh
        keys publishing false claims can waste at most that share of our runs until the
        re-run queue catches them; keys vouching for each other count for nothing."""
        with self.scores.consistent():
            sigma = self.scores.sigma()
            if sigma is None:
                return None
            reps = self.trust.reputations()
            doubted = self.trust.doubted_authors(reps)
            floor = self.config.trust.liar_threshold if strangers \
                else self.config.trust.trust_threshold
            found, found_key = None, None
            for r in self.store.experiments(arena=self.arena):
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

    # -- verification ---------------------------------------------------------

    def verify_budget_left(self) -> bool:
        """Would one more re-run keep verification within `verify_share` of our runs?

        The first re-run is always allowed: until a node has reproduced someone it trusts
        no one, and in a swarm that starts together the share would otherwise hold back
        everyone's first adoption of a peer's improvement for several runs."""
        mine = self.store.experiments(arena=self.arena, local=True)
        done = self.store.attestation_count(self.identity.public_key)
        return done == 0 or (done + 1) <= self.config.verify_share * (done + len(mine) + 1)

    def pending_claim(self) -> Record | None:
        """The peer claim that would most change our decisions, if it holds.

        A claim is worth a re-run when it says it beat its parent by more than the noise
        and it would become our best (or our best in its topic); we skip what we already
        checked, what k trusted peers already vouch for, what a trusted peer re-runs now
        (its verdict will do to build on), and authors known to lie.
        Reputable authors come first, then the lowest claimed score."""
        with self.scores.consistent():
            return self._pending_claim()

    def _pending_claim(self) -> Record | None:
        sigma = self.scores.sigma()
        best = self.scores.best()
        if sigma is None or best is None:
            return None
        reps = self.trust.reputations()
        running = self.verifiers()
        topic_best: dict[str, float] = {}
        claims = []
        for r in self.store.experiments(arena=self.arena):
            if not self._open_claim(r, sigma, reps) or self.trust.is_verified(r, reps):
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
        # not built on a refuted record; then claims trusted peers already vouch for; then
        # claims fewer peers are re-running now; then the lowest claimed score. Fresh keys
        # (Sybils among them) wait behind known peers, and known liars' keys behind those.
        # A claim built on a record we (or peers we trust) refuted continues a lie, most
        # likely: honest nodes build only on what they verified. Without the re-runners
        # key a swarm that starts together would all re-run the one best claim; it only
        # reorders, so announces from Sybil keys cannot stop us checking anything.
        doubted = self.trust.doubted_authors(reps)
        claims.sort(key=lambda r: (-reps.get(r.author, 0.0), doubted.get(r.author, 0),
                                   self._shaky_parent(r, reps),
                                   -len(self.trust.trusted_attesters(r, reps)),
                                   len(running.get(r.id_hex[:16], ())), r.val_bpb, r.id))
        return claims[0] if claims else None

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

    async def verify(self, claim: Record) -> StepOutcome:
        """Re-run a claim in our arena with the arena's seed; attest what we measured."""
        sigma = self.scores.sigma() or 0.0
        source = self.lineage.source_of(claim.id)
        job = {"id": claim.id_hex, "desc": claim.desc, "claimed": claim.val_bpb}
        self.state.verifying = [job]
        try:
            parent = Candidate(claim.parents[0], self.scores.parent_score(claim) or 0.0)
            test_seed = secrets.randbits(63) if hasattr(self.trainer, "test_score") else None
            result = await self._train(source, self.config.rules.seed,
                                       verify_desc(claim), parent, test_seed=test_seed)
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
        holds = self.scores.reproduces(result, claim.val_bpb, sigma)
        reason = result.reason
        record_result = result.to_record_result()
        if holds and getattr(result, "test_bpb", None) is not None:
            held_out = await self._held_out_check(claim, result, test_seed, sigma)
            if held_out is not None:
                holds, reason, extra = held_out
                record_result.update(extra)
        verdict = "reproduced" if holds else "refuted"
        if not holds and result.status == "ok":
            record_result["reason"] = reason or "the re-run does not reproduce the claimed score"
        attestation = make_attestation(self.identity, genome=self.genome, target=claim.id,
                                       arena=self.arena, verdict=verdict, result=record_result)
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

    async def _held_out_check(self, claim: Record, result, test_seed: int, sigma: float):
        """Does the claim's gain over its parent hold on held-out test windows?

        Both models are scored on the same test windows, drawn with our secret seed: a
        gain that exists only on the public validation windows (learnt from them, or
        found by selection among many tries) does not show there. None when the parent
        has no test score here (it failed to train); else (holds, reason, result fields).
        """
        parent_id = claim.parents[0]
        parent_source = self.lineage.source_of(parent_id) if parent_id != self.root_id \
            else self.lineage.base_source
        scores = await run_cancellable(
            lambda cancel: self.trainer.test_score(parent_source, seed=self.config.rules.seed,
                                                   test_seed=test_seed, cancel=cancel))
        if scores is None:
            return None
        parent_val, parent_test = scores
        val_gain = parent_val - result.val_bpb
        test_gain = parent_test - result.test_bpb
        fields = {"test_bpb": result.test_bpb, "test_parent_bpb": parent_test}
        if test_gain >= val_gain - self.config.rules.noise_k * sigma:
            return True, result.reason, fields
        return False, (f"the gain does not hold on held-out test data: val gain "
                       f"{val_gain:+.4f}, test gain {test_gain:+.4f} (noise sigma "
                       f"{sigma:.4f})"), fields

    # -- history digest for the agent -----------------------------------------

    def history(self, limit: int = 500) -> list[Tried]:
        with self.scores.consistent():
            return self._history(limit)

    def _history(self, limit: int) -> list[Tried]:
        sigma = self.scores.sigma()
        tried = []
        for r in self.store.experiments(arena=self.arena, limit=limit):
            if not r.patch or (r.result or {}).get("reason", "").startswith("interrupted"):
                continue  # baselines, and runs the node cut short, are not tried edits
            delta = self.scores.delta(r)
            status = self.scores.label(r, sigma)
            tried.append(Tried(edit_key=edit_key_of(r.desc or ""), desc=r.desc or "",
                               parent_id=r.parents[0].hex(), status=status, delta=delta,
                               record_id=r.id.hex(), val_bpb=r.val_bpb))
        return tried

    def known_programs(self) -> KnownPrograms:
        """Programs already run in the arena (by anyone but known liars) or announced by
        a live node now: `in` tells whether a source is one of them (refreshed from the
        store on each call)."""
        self.programs.refresh()
        return KnownPrograms(self.programs, self.running_programs(), self._run_counts())

    def _run_counts(self) -> Callable[[bytes, bytes], bool]:
        """Whether a record's run of a program counts as done: not when its author is a
        known liar (unless we re-ran that record ourselves, and so measured it).
        Reputations change only with new records, so one read serves a whole step."""
        count = self.store.count()
        if self._liars is None or self._liars[0] != count:
            reps = self.trust.reputations()
            self._liars = (count, {a for a in reps if self.trust.is_liar(a, reps)})
        liars = self._liars[1]

        def counts(record_id: bytes, author: bytes) -> bool:
            return author not in liars or \
                self.trust.my_verdict_on(record_id, author) is not None
        return counts

    async def _index_programs(self) -> None:
        """Bring the program index up to date in slices: the first read of a big store
        (about 1 ms a record) must not hold up the network for seconds."""
        while not self.programs.refresh(limit=PROGRAMS_PER_SLICE):
            await trio.sleep(0)

    # -- the loop -------------------------------------------------------------

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run experiments until stopped, `max_experiments`, or `until`."""
        self.resume()
        task_status.started()
        run = 0
        root_failures = 0
        while not self._should_stop(run):
            outcome = await self.step()
            if outcome.kind != "no-proposal":
                run += 1
                self._idle_s = 0.0
            else:
                await self._idle(outcome)  # an agent that keeps failing must not spin the CPU
            if outcome.kind == "baseline" and outcome.record is not None:
                failed = outcome.record.status != "ok"
                root_failures = root_failures + 1 if failed else 0
                if failed and root_failures >= self.config.root_failures:
                    # Without a baseline nothing can be judged, and every retry would
                    # add one more failure record: stop and say why.
                    self.stop_reason = (
                        f"the unmodified genome failed {root_failures} times in a row "
                        f"({outcome.record.status}: {outcome.reason or 'no reason given'}); "
                        "this machine or its set-up cannot train it. Fix that and restart")
                    return

    def _should_stop(self, run: int) -> bool:
        c = self.config
        if c.max_experiments and run >= c.max_experiments:
            return True
        return c.until is not None and time.time() >= c.until

    def resume(self) -> Record | None:
        """Record an experiment a kill cut short, once, as interrupted."""
        raw = self.store.get_meta(INFLIGHT_KEY)
        if not raw:
            return None
        try:
            info = json.loads(raw)
            parents = [bytes.fromhex(p) for p in info["parents"]]
            record = make_experiment(
                self.identity, genome=self.genome, parents=parents, topic=info["topic"],
                arena=info["arena"], patch=info["patch"], desc=info["desc"],
                agent=info["agent"],
                result={"status": "crash", "reason": "interrupted: the node stopped during "
                        "this run", "train_s": 0.0, "total_s": 0.0, "tokens": 0, "steps": 0,
                        "params": 0, "peak_mem_mb": 0.0})
        except (ValueError, KeyError, TypeError):
            record = None  # a marker we cannot read: drop it rather than loop on it
        with self.store.atomic():
            if record is not None:
                self.store.insert(record, local=True)
            self.store.set_meta(INFLIGHT_KEY, "")
        return record

    async def step(self) -> StepOutcome:
        """One decision: a missing baseline seed, a claim to verify, or one proposed edit."""
        seed = self._missing_baseline_seed()
        if seed is not None:
            return await self._run_baseline(seed)
        if self.failed_in_a_row >= self.config.root_failures:
            # Edits (or re-runs) keep failing: is it them or this machine? A node whose
            # arena has peers' baselines runs none of its own, so ask now.
            return await self._health_check()
        claim = self.pending_claim() if self.config.foreign_code and \
            self.verify_budget_left() else None
        if claim is not None:
            return await self.verify(claim)
        parent = self.choose_parent()
        if parent is None:  # no root score yet (our own baseline seed crashed?)
            return await self._run_baseline(self.config.rules.seed)
        parent_source = self.lineage.source_of(parent.id) if parent.record else \
            self.lineage.base_source
        await self._index_programs()
        crossover = self.find_crossover(parent) if self.config.foreign_code else None
        if crossover is not None:
            # a merge of two checked sources can still break (a name used twice, say)
            checked = validate_proposal(parent_source, Proposal(crossover.source,
                                                                crossover.desc))
            if checked.failure is None:
                return await self._run_edit(parent, parent_source, checked, crossover.kind,
                                            crossover.parents)
            self.crossovers.failed.add((parent.id, crossover.donor.id))
            self._log_failed(parent, checked)
        proposal = await self._propose(parent, parent_source)
        if proposal is None and self._is_exhausted(parent.id):
            # Nothing left on this parent: the agent moves on to the other top records.
            for other in self._other_parents(parent):
                parent = other
                parent_source = self.lineage.source_of(parent.id) if parent.record else \
                    self.lineage.base_source
                proposal = await self._propose(parent, parent_source)
                if proposal is not None or not self._is_exhausted(parent.id):
                    break
        if proposal is None:
            return StepOutcome("no-proposal", parent=parent, reason=EXHAUSTED if
                               self._is_exhausted(parent.id) else "no usable proposal")
        if isinstance(proposal, Record):      # the agent's idea is a peer's open claim
            return await self.verify(proposal)
        return await self._run_edit(parent, parent_source, proposal)

    def find_crossover(self, parent: Candidate) -> Crossover | None:
        """A merge (`merge_share` of the steps) or a port (`port_share`) worth running on
        `parent` now, if there is one; otherwise the agent proposes as usual."""
        c = self.config
        roll = self.rng.random()
        if roll >= c.merge_share + c.port_share:
            return None
        tried = self.known_programs()
        busy = {desc for pid, desc in self.busy() if pid == parent.id}
        with self.scores.consistent():
            if roll < c.merge_share:
                return self.crossovers.merge(parent, tried, busy)
            return self.crossovers.port(parent, self.arena, tried, busy)

    def _seeds_run_elsewhere(self, hinted: bool = False) -> set[int]:
        """Baseline seeds peers who earned our trust announce they are running now (these
        may defer our run of a seed); with `hinted`, the seeds of every announce we honour
        (swarm.announces: strangers' included), which only reorder our baselines."""
        pairs = self.firm_busy() | (self.busy() if hinted else set())
        return seeds_of(pairs, self.root_id)

    def _missing_baseline_seed(self) -> int | None:
        """A baseline seed the arena still needs. Announces never block one: a seed a peer
        who earned our trust runs now counts as coming (a swarm splits the seeds), and a
        seed anyone else announces only goes after the other seeds we need anyway; when
        it is the last one we need, we run it ourselves."""
        c, rules = self.config, self.config.rules
        taken = self._taken_seeds()
        hinted = self._seeds_run_elsewhere(hinted=True)
        need = rules.baseline_repeats - len(taken)
        if rules.seed not in taken:
            if rules.seed in hinted and need > 1:
                return self._free_seed(taken | {rules.seed}, avoid=hinted)
            return rules.seed
        if need > 0:
            return self._free_seed(taken, avoid=hinted)
        local = len(self.store.experiments(arena=self.arena, local=True))
        if c.sigma_refresh and local and local % c.sigma_refresh == 0 and \
                self.state.experiments_run:
            return self._free_seed(taken, avoid=hinted)
        return None

    async def _health_check(self) -> StepOutcome:
        """A baseline of the unmodified genome at a fresh seed: can this machine train?"""
        return await self._run_baseline(self._free_seed())

    def _taken_seeds(self) -> set[int]:
        return set(self.scores.baselines()) | self._seeds_run_elsewhere()

    def _free_seed(self, taken: set[int] | None = None, avoid: set[int] = frozenset()
                   ) -> int:
        """The first baseline seed nobody ran or runs (and, if possible, not in `avoid`):
        a health check that passes also refines the noise estimate. Never fails: the
        sets are finite, however many keys announce seeds."""
        taken = self._taken_seeds() if taken is None else taken
        seed = self.config.rules.seed
        while seed in taken or seed in avoid:
            seed += 1
        return seed

    async def _propose(self, parent: Candidate, parent_source: str
                       ) -> Proposal | Record | None:
        """The agent's next edit on `parent`, checked; or, when the edit rebuilds the
        program of a peer's claim that would beat our best, that claim (to re-run: see
        claim_behind); None when every attempt failed, or at once when the agent says it
        has nothing left on this parent (see `_is_exhausted`: until new records arrive, it
        is not asked again about this parent)."""
        if self._is_exhausted(parent.id):
            return None
        known = self.known_programs()
        busy = {desc for pid, desc in self.busy() if pid == parent.id}
        # What others run on this parent now, so the agent picks something else: many
        # nodes on one parent would otherwise all reach for the same favourite edits.
        history = self.history() + [
            Tried(edit_key=edit_key_of(desc), desc=desc, parent_id=parent.id.hex(),
                  status="running", delta=None) for desc in sorted(busy)]
        for _ in range(self.config.proposal_attempts):
            rng = random.Random(self.rng.random())
            proposal = await trio.to_thread.run_sync(
                lambda: self.agent.propose(parent_source, self.brief, history,
                                           parent_id=parent.id.hex(), rng=rng))
            # A program run before is refused before the (costly) static screen.
            source = usable_source(parent_source, proposal)[0] if \
                isinstance(proposal, Proposal) and proposal.failure is None else None
            if source is not None:
                reason = known.why_duplicate(source)
                claim = self.claim_behind(source) if reason else None
                if claim is not None:
                    return claim
                if reason:
                    proposal = Proposal(proposal.source, proposal.desc, proposal.edit_key,
                                        reason)
            proposal = validate_proposal(parent_source, proposal)
            if proposal.failure is None and proposal.desc in busy:
                proposal.failure = "another live node announced this edit on this parent"
            if proposal.failure is None:
                return proposal
            self._log_failed(parent, proposal)
            if proposal.exhausted:
                self._exhausted[parent.id] = self._news()
                return None  # asking again changes nothing until the history does
            # Let the agent's next attempt know what went wrong.
            history = history + [Tried(edit_key=proposal.edit_key, desc=proposal.desc,
                                       parent_id=parent.id.hex(), status="rejected",
                                       delta=None)]
        return None

    def _is_exhausted(self, parent_id: bytes) -> bool:
        """Whether the agent said it had nothing left on this parent, and no record has
        arrived since (a new result, ours or a peer's, can change its mind)."""
        seen = self._exhausted.get(parent_id)
        if seen is None:
            return False
        if seen != self._news():
            self._exhausted.clear()
            return False
        return True

    def _news(self) -> tuple[int, int]:
        """What the agent and the parent choice read, counted: experiments and attestations
        (announces come and go without being news)."""
        return self.store.count("experiment"), self.store.count("attestation")

    def _other_parents(self, tried: Candidate) -> list[Candidate]:
        """The other top records (`explore_top` of them, as `choose_parent` may pick), in
        order, that the agent has not said it has nothing left on."""
        found = self.scores.candidates()
        if not self.config.foreign_code:
            found = [c for c in found if self.own_lineage(c.id)]
        return [c for c in found[:self.config.explore_top]
                if c.id != tried.id and not self._is_exhausted(c.id)]

    async def _idle(self, outcome: StepOutcome) -> None:
        """Wait after a step that ran nothing: 1 s, then twice as long each time in a row,
        up to IDLE_MAX_S, ending early when new records arrive (they can give the agent
        something to do again). Only this task sleeps: the node goes on serving the swarm.
        A run yielded to a peer ran something: one second, no backoff."""
        if outcome.reason == YIELDED:
            await self.sleep(1.0)
            return
        if outcome.reason == EXHAUSTED and not self._idle_s:   # said once per idle spell
            self.on_event("exhausted", {"reason": EXHAUSTED})
        self._idle_s = min(max(1.0, 2 * self._idle_s), IDLE_MAX_S)
        news, waited = self._news(), 0.0
        while waited < self._idle_s:
            wait = min(IDLE_POLL_S, self._idle_s - waited)
            await self.sleep(wait)
            waited += wait
            if self._news() != news:
                return

    def claim_behind(self, source: str) -> Record | None:
        """The peer's claim that ran exactly this program, if re-running it would change
        our decisions (an open claim that beats our best, see `_open_claim`).

        The agent's best idea is then someone's result: re-running it as a verification
        costs the run the edit would have cost, and it counts as one (an attestation, and
        trust in its author if it holds), where running it as a new edit would measure
        nothing new. Refusing it instead, as a duplicate, left 16-node swarms slower:
        those copies had been the nodes' own checks of the best claim."""
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
            if not self._open_claim(record, sigma, reps) or \
                    self.trust.is_verified(record, reps) or \
                    not self.lineage.is_buildable(record.id):
                return None
        return record

    def _log_failed(self, parent: Candidate, proposal: Proposal) -> None:
        """Failed proposals are not experiments: they go to a local log, not the swarm."""
        entry = {"t": time.time(), "parent": parent.id.hex(), "agent": self.agent.name,
                 "desc": proposal.desc, "reason": proposal.failure}
        with open(self.home / "proposals.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        self.on_event("proposal-failed", entry)

    async def _run_baseline(self, seed: int) -> StepOutcome:
        root = Candidate(self.root_id, self.scores.root_score() or float("nan"))
        source = self.lineage.base_source
        result = await self._train_claimed(source, seed, f"baseline seed={seed}", root)
        if result is None:
            return StepOutcome("no-proposal", parent=root, reason=YIELDED)
        record = await self._record([self.root_id], "", f"baseline seed={seed}", "baseline",
                                    result)
        outcome = StepOutcome("baseline", record=record, parent=root, reason=result.reason)
        self._remember(outcome)
        return outcome

    async def _run_edit(self, parent: Candidate, parent_source: str, proposal: Proposal,
                        agent: str | None = None,
                        parents: list[bytes] | None = None) -> StepOutcome:
        """Run a proposal (or a merge, with two parents) on `parent` and record it."""
        agent = agent or self.agent.name
        parents = parents or [parent.id]
        patch = make_patch(parent_source, proposal.source)
        marker = {"parents": [p.hex() for p in parents], "topic": self.config.topic,
                  "arena": self.arena, "patch": patch, "desc": proposal.desc,
                  "agent": agent}
        self.store.set_meta(INFLIGHT_KEY, json.dumps(marker))
        result = await self._train_claimed(proposal.source, self.config.rules.seed,
                                           proposal.desc, parent,
                                           program=program_digest(proposal.source))
        if result is None:
            self.store.set_meta(INFLIGHT_KEY, "")
            self._log_failed(parent, Proposal(proposal.source, proposal.desc,
                                              proposal.edit_key, YIELDED))
            return StepOutcome("no-proposal", parent=parent, reason=YIELDED)
        record = await self._record(parents, patch, proposal.desc, agent, result)
        kept = self.scores.is_kept(record)
        delta = record.val_bpb - parent.val_bpb if record.val_bpb is not None and \
            math.isfinite(parent.val_bpb) else None  # NaN: the root, not scored yet
        outcome = StepOutcome("experiment", record=record, parent=parent, kept=kept,
                              delta=delta, reason=result.reason)
        self._remember(outcome)
        return outcome

    async def _train_claimed(self, source: str, seed: int, desc: str, parent: Candidate,
                             program: str | None = None):
        """`_train`, but None when, `claim_check_s` (or 4x that) into the run, a peer who
        earned our trust turns out to run the same work and announced it before we did
        (swarm.announces.AnnouncePolicy.should_yield): two nodes that chose in the same
        moment, before either heard the other's announce, would otherwise both run it to
        the end. A copied announce never stops our run."""
        if not self.config.claim_check_s:
            return await self._train(source, seed, desc, parent, program)
        result = None
        with trio.CancelScope() as yielded:
            async with trio.open_nursery() as nursery:
                async def watch():
                    # again later: an announce can take seconds on a loaded network
                    for wait in (1, 3):
                        await trio.sleep(wait * self.config.claim_check_s)
                        if announce_policy(self).should_yield(parent.id, desc, program):
                            yielded.cancel()
                            return
                nursery.start_soon(watch)
                result = await self._train(source, seed, desc, parent, program)
                nursery.cancel_scope.cancel()
        return None if yielded.cancelled_caught else result

    async def _train(self, source: str, seed: int, desc: str, parent: Candidate,
                     program: str | None = None, test_seed: int | None = None):
        self.state.current = {"desc": desc, "parent": parent.id.hex(), "started": time.time(),
                              "fraction": 0.0, "loss": None}
        self.on_event("started", self.state.current)
        await self.announce(working_on(parent.id, desc, program))

        def progress(fraction, loss=None):
            if self.state.current is not None:
                self.state.current.update(fraction=fraction, loss=loss)

        try:
            extra = {"test_seed": test_seed} if test_seed is not None else {}
            result = await run_cancellable(
                lambda cancel: self.trainer.run(source, seed=seed, progress=progress,
                                                cancel=cancel, **extra))
        finally:
            self.state.current = None
        if result.status == "ok":
            self.failed_in_a_row = 0
        elif result.status in MACHINE_FAILURES:
            self.failed_in_a_row += 1
        return result

    async def _record(self, parents, patch, desc, agent, result) -> Record:
        record = make_experiment(self.identity, genome=self.genome, parents=parents,
                                 topic=self.config.topic, arena=self.arena, patch=patch,
                                 desc=desc, agent=agent, result=result.to_record_result())
        with self.store.atomic():  # the record and clearing the marker: all or nothing
            self.store.insert(record, local=True)
            self.store.set_meta(INFLIGHT_KEY, "")
        self.state.experiments_run += 1
        await self.publish(record)
        return record

    def _remember(self, outcome: StepOutcome) -> None:
        r = outcome.record
        status = r.status
        if outcome.kind == "experiment" and status == "ok" and not outcome.kept:
            status = "discarded"
        entry = {"id": r.id_hex, "desc": r.desc, "status": status, "val_bpb": r.val_bpb,
                 "delta": outcome.delta, "kept": outcome.kept, "reason": outcome.reason,
                 "author": "self"}
        self._show("finished", entry)

    def _show(self, kind: str, entry: dict) -> None:
        """One result for the live view's recent list and the event log."""
        self.state.recent = ([entry] + self.state.recent)[:20]
        self.on_event(kind, entry)


async def _nothing(*args) -> None:
    return None


# The working_on conventions (`working_on`, `parse_working_on`, `announced_program`) and
# what announces may do to the loop live in swarm.announces: announces are hints, never
# vetoes. The functions below are the loop's views of that policy.


def announce_policy(loop: "ResearchLoop", expire_s: float = EXPIRE_S) -> AnnouncePolicy:
    """The announce policy of `loop`'s node: its arena, its reputations, its trust rules."""
    rules = loop.config.trust
    return AnnouncePolicy(loop.store, loop.identity.public_key, arena=loop.arena,
                          reputations=loop.trust.reputations,
                          limits=AnnounceLimits(expire_s=expire_s,
                                                trust_threshold=rules.trust_threshold,
                                                liar_threshold=rules.liar_threshold))


def _policy(store: Store, me: bytes, max_age_s: float, arena: str | None = None,
            reputations=None) -> AnnouncePolicy:
    return AnnouncePolicy(store, me, arena=arena, reputations=reputations,
                          limits=AnnounceLimits(expire_s=max_age_s))


def yield_to_peer(store: Store, me: bytes, parent_id: bytes, desc: str,
                  program: str | None = None, max_age_s: float = EXPIRE_S, *,
                  arena: str | None = None, reputations=None) -> bool:
    """Whether to stop our run of `desc` on `parent_id` (or, given `program`, of the same
    program on any parent) for another node's announce of it: only when its author earned
    our trust and we received its announce before we announced the run ourselves (local
    receipt clock; see swarm.announces). A copied announce never cancels our run."""
    return _policy(store, me, max_age_s, arena, reputations).should_yield(
        parent_id, desc, program)


def verify_desc(claim: Record) -> str:
    """What a re-run is announced as: `verify <id prefix>: <claim's description>`."""
    return f"verify {claim.id_hex[:16]}: {claim.desc}"


def _live_announces(store: Store, me: bytes, max_age_s: float):
    """(author, working_on) of the other nodes' announces this node honours: received
    within `max_age_s` by our clock, weighted and capped (swarm.announces)."""
    for hint in _policy(store, me, max_age_s).hints():
        yield hint.author, hint.text


def verifiers_from_announces(store: Store, me: bytes, max_age_s: float = EXPIRE_S
                             ) -> dict[str, set[bytes]]:
    """Claim id prefix -> keys of the other live nodes that announce re-running it now
    (honoured hints only; the loop counts only peers it trusts among them)."""
    return _policy(store, me, max_age_s).verifiers()


def connect_to_swarm(loop: ResearchLoop, net) -> None:
    """The loop publishes what it records, announces what it runs (with its best verified
    head), and avoids the work that live peers announce, as far as the announce policy
    honours it. `net`: a running swarm.network.SwarmNode (its `publish` and `announce`)."""

    async def announce(working_on: str) -> None:
        best = loop.scores.best()
        head = best.id if best is not None and best.record is not None else None
        await net.announce(arena=loop.arena, working_on=working_on, head=head)

    policy = announce_policy(loop)
    loop.publish = net.publish
    loop.announce = announce
    # hints, never vetoes: weighted by what we know of each author, capped per author
    # and for strangers together, fresh by our own receipt clock (swarm.announces)
    loop.busy = policy.busy
    loop.firm_busy = lambda: policy.busy(firm_only=True)
    loop.verifiers = policy.verifiers
    loop.running_programs = policy.programs


def busy_from_announces(store: Store, me: bytes, max_age_s: float = EXPIRE_S
                        ) -> set[tuple[bytes, str]]:
    """(parent, edit) pairs that other live nodes announce they are running now (honoured
    hints only)."""
    return _policy(store, me, max_age_s).busy()


def programs_from_announces(store: Store, me: bytes, max_age_s: float = EXPIRE_S
                            ) -> set[str]:
    """Digests of the programs other live nodes announce they are running now (honoured
    hints only)."""
    return _policy(store, me, max_age_s).programs()


async def run_cancellable(fn: Callable[[threading.Event], object], grace_s: float = 15.0):
    """Run blocking `fn(cancel)` in a thread; on trio cancellation set `cancel` and wait
    (shielded, up to `grace_s`) for `fn` to stop its child processes and return."""
    cancel, finished = threading.Event(), threading.Event()

    def work():
        try:
            return fn(cancel)
        finally:
            finished.set()

    try:
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    except trio.Cancelled:
        cancel.set()
        with trio.move_on_after(grace_s) as scope:
            scope.shield = True
            while not finished.is_set():
                await trio.sleep(0.05)
        raise


def edit_key_of(desc: str) -> str | None:
    """The mutate agent's edit key, written as `[key] description`."""
    m = re.match(r"^\[([^\]]{1,80})\]", desc)
    return m.group(1) if m else None

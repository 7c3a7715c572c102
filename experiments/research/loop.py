"""The research loop: choose a parent, propose an edit, run it, keep or discard, record.

One `ResearchLoop` owns one node's experiments in one arena. Everything it does
becomes a signed `experiment` record in the store, crashes and rejections
included; it resumes from the store after a restart (an experiment cut off by a
kill is recorded once, as interrupted).

Each step is one decision, in this order: a baseline seed the arena still needs
(baselines.py), a health check after `root_failures` failed runs in a row, a peer's
claim to re-run (reruns.py), else an edit: a merge or a port (crossover.py) or the
agent's proposal (proposals.py) on the parent parents.py chooses. An edit is kept when
it beats its parent by more than the arena's noise (scoreboard.py). A run a peer who
earned our trust announced first is yielded to it; a step that ran nothing waits,
longer each time in a row, for news. `root_failures` failed baselines in a row stop
the loop with the reason: the machine, not an edit, is broken.

`ResearchLoop` is this module's running and recording plus one mixin per policy:
`ParentChoice` (parents.py), `Reruns` (reruns.py), `Baselines` (baselines.py) and
`Proposals` (proposals.py). swarm_link.py connects it to a swarm node.

The store is only touched from the thread that runs the loop (trio's); the
trainer and the agent, which block, run in worker threads (runs.py).
"""
from __future__ import annotations

import json
import math
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import trio

from experiments.agents.base import Agent, Brief, Proposal, validate_proposal
from experiments.research.baselines import Baselines
from experiments.research.crossover import CrossoverFinder
from experiments.research.parents import ParentChoice
from experiments.research.programs import ProgramIndex, program_digest
from experiments.research.proposals import Proposals
from experiments.research.reruns import Reruns
from experiments.research.runs import StepOutcome, Trainer, run_cancellable
from experiments.research.scoreboard import Candidate, Scoreboard, ScoreRules
from experiments.research.swarm_link import announce_policy
from experiments.research.verify_claim import MACHINE_FAILURES
from swarm.descriptions import INTERRUPTED_REASON, baseline_desc, working_on
from swarm.lineage import Lineage
from swarm.patch import make_patch
from swarm.records import Record, make_experiment, result_map
from swarm.store import Store
from swarm.trust import TrustedAuthors, TrustPolicy, TrustRules

__all__ = ["EXHAUSTED", "IDLE_MAX_S", "INFLIGHT_KEY", "LoopConfig", "LoopState", "ResearchLoop",
           "YIELDED"]

INFLIGHT_KEY = "loop.inflight"
YIELDED = "yielded: another node announced the same run on the same parent first"
EXHAUSTED = "search exhausted: the agent has nothing left to propose on the top records"
IDLE_MAX_S = 60.0        # a node with nothing to run waits 1, 2, 4 ... up to this long
IDLE_POLL_S = 1.0        # between looks at the store: new records end the wait early


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
class LoopState:
    """What the live view shows; updated by the loop, read by the UI."""
    current: dict | None = None       # {"desc", "parent", "started", "fraction", "loss"}
    verifying: list = field(default_factory=list)
    recent: list = field(default_factory=list)
    experiments_run: int = 0


class ResearchLoop(ParentChoice, Reruns, Baselines, Proposals):
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
                                 self.trust.is_verified, self.trust.trusted_author)
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
        # orders strangers' claims in the re-run queue; secret, so no key can sort first
        # (drawn from a given rng only so that simulations repeat)
        self.claim_lottery_key = rng.randbytes(16) if rng is not None else \
            secrets.token_bytes(16)
        self.rng = rng or random.Random()
        self.crossovers = CrossoverFinder(store=store, lineage=lineage, scores=self.scores,
                                          trust=self.trust, root_id=root_id,
                                          rules=config.rules)
        self.state = LoopState()
        self.stop_reason = ""  # set when the loop stops itself on an error (see serve)
        # (store count, known liars, trusted authors) for `_run_counts`
        self._liars: tuple[int, set[bytes], TrustedAuthors] | None = None
        self._originals = None  # (the `_run_counts` it was made with, `original_runs`)
        self.failed_in_a_row = 0  # own runs that crashed or timed out since the last ok one
        self._cancel = threading.Event()
        self._exhausted: dict[bytes, tuple] = {}  # parent id -> `_news()` when the agent
                                                  # said it had nothing left on it
        self._idle_s = 0.0                      # the last wait after a step that ran nothing
        self.sleep = trio.sleep                 # the idle wait's clock (tests pass a fake)

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
                result=result_map("crash", reason=INTERRUPTED_REASON, train_s=0.0,
                                  total_s=0.0, tokens=0, steps=0, params=0, peak_mem_mb=0.0))
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

    async def _run_baseline(self, seed: int) -> StepOutcome:
        root = Candidate(self.root_id, self.scores.root_score() or float("nan"))
        source = self.lineage.base_source
        result = await self._train_claimed(source, seed, baseline_desc(seed), root)
        if result is None:
            return StepOutcome("no-proposal", parent=root, reason=YIELDED)
        record = await self._record([self.root_id], "", baseline_desc(seed), "baseline",
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

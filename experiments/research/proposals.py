"""Proposals: asking the agent for the next edit, or finding a merge or a port instead.

The agent sees the arena's history (with what live peers run on the parent now), and
its proposal is checked before anything runs: no program is run twice (programs.py), so
a proposal whose train.py the arena already ran, or another live node announces it runs
now, is refused like a duplicate edit; one that rebuilds a peer's open claim becomes a
re-run of that claim (reruns.py). Failed proposals go to a local log, not the swarm.
When the agent says it has nothing left on a parent, it is not asked about that parent
again until new records arrive.

A mixin of `ResearchLoop` (loop.py): it reads the loop's `store`, `scores`, `trust`,
`agent`, `brief`, `config`, `rng`, `home`, `programs`, `crossovers`, its `busy` and
`running_programs` hints and `claim_behind` (reruns.py), reports to `on_event`, and
keeps its memos in `_liars` and `_exhausted` (set up by the loop).
"""
from __future__ import annotations

import json
import random
import time
from typing import Callable

import trio

from experiments.agents.base import Proposal, Tried, usable_source, validate_proposal
from experiments.research.crossover import Crossover
from experiments.research.programs import KnownPrograms
from experiments.research.scoreboard import Candidate
from swarm.descriptions import edit_key_of, is_interrupted
from swarm.records import Record

PROGRAMS_PER_SLICE = 200     # records the program index reads between checkpoints
_EXHAUSTED = object()        # the agent said it has nothing left on the parent


class Proposals:
    def history(self, limit: int = 500, *, firm: bool = False) -> list[Tried]:
        """The arena's tried edits, oldest first; `firm`: ours and trusted peers' only."""
        with self.scores.consistent():
            return self._history(limit, firm)

    def _records_for_history(self, limit: int, firm: bool = False) -> list[Record]:
        """The newest `limit` experiments of the arena, ours and trusted peers' first:
        strangers' records only fill what is left (none when `firm`), so junk from fresh
        keys (dated ahead, as a record's own `t` may be) cannot push our own results out
        of the window."""
        chosen = self.store.experiments_of(self.arena, self.trust.trusted_author().peers,
                                           limit)
        known = {r.id for r in chosen}
        if len(chosen) < limit and not firm:
            strangers = [r for r in self.store.experiments(arena=self.arena, limit=limit)
                         if r.id not in known]
            chosen += strangers[len(strangers) - (limit - len(chosen)):]
        return sorted(chosen, key=lambda r: (r.t, r.id))

    def _history(self, limit: int, firm: bool = False) -> list[Tried]:
        sigma = self.scores.sigma()
        tried = []
        for r in self._records_for_history(limit, firm):
            if not r.patch or is_interrupted((r.result or {}).get("reason")):
                continue  # baselines, and runs the node cut short, are not tried edits
            delta = self.scores.delta(r)
            status = self.scores.label(r, sigma)
            tried.append(Tried(edit_key=edit_key_of(r.desc or ""), desc=r.desc or "",
                               parent_id=r.parents[0].hex(), status=status, delta=delta,
                               record_id=r.id.hex(), val_bpb=r.val_bpb))
        return tried

    def known_programs(self, *, firm: bool = False) -> KnownPrograms:
        """Programs already run in the arena (by anyone but known liars; `firm`: by us,
        trusted peers, or as a stranger's kept claim) or announced by a live node now (not
        when `firm`): `in` tells whether a source is one of them (refreshed from the store
        on each call)."""
        self.programs.refresh()
        running = self.running_programs() if not firm else set()
        return KnownPrograms(self.programs, running, self._run_counts(firm=firm))

    def _run_counts(self, *, firm: bool = False) -> Callable[[bytes, bytes], bool]:
        """Whether a record's run of a program counts as done: not when its author is a
        known liar (unless we re-ran that record ourselves, and so measured it). `firm`:
        only ours, trusted peers', those we re-ran, and strangers' kept claims (which a
        proposal turns into a re-run: reruns.claim_behind).
        Reputations change only with new records, so one read serves a whole step."""
        count = self.store.count()
        if self._liars is None or self._liars[0] != count:
            reps = self.trust.reputations()
            self._liars = (count, {a for a in reps if self.trust.is_liar(a, reps)},
                           self.trust.trusted_author(reps))
        liars, trusted = self._liars[1], self._liars[2]

        def counts(record_id: bytes, author: bytes) -> bool:
            return author not in liars or \
                self.trust.my_verdict_on(record_id, author) is not None

        def firmly(record_id: bytes, author: bytes) -> bool:
            if trusted(author):
                return True
            if author not in liars:
                record = self.store.get(record_id)
                if record is not None and self.scores.is_kept(record):
                    return True
            return self.trust.my_verdict_on(record_id, author) is not None
        return firmly if firm else counts

    async def _index_programs(self) -> None:
        """Bring the program index up to date in slices: the first read of a big store
        takes seconds, and must not hold up the network meanwhile."""
        while not self.programs.refresh(limit=PROGRAMS_PER_SLICE):
            await trio.sleep(0)

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

    async def _propose(self, parent: Candidate, parent_source: str
                       ) -> Proposal | Record | None:
        """The agent's next edit on `parent`, checked; or, when the edit rebuilds the
        program of a peer's claim that would beat our best, that claim (to re-run: see
        claim_behind); None when every attempt failed, or at once when the agent says it
        has nothing left on this parent (see `_is_exhausted`: until new records arrive, it
        is not asked again about this parent).

        Strangers' results are hints, never vetoes: the agent first sees the whole arena,
        and when it says it has nothing left, or every edit it proposed repeats a program
        someone ran or announces, it is asked again with only what we and the peers we
        trust ran (and strangers' kept claims), and no announced programs. Keys that
        publish made-up failures of every edit the agent would try next can then cost us
        the agent's insight from their records, never our search."""
        if self._is_exhausted(parent.id):
            return None
        found, vetoed = await self._ask_agent(parent, parent_source, firm=False)
        if (found is None and vetoed) or (found is _EXHAUSTED and (
                vetoed or len(self.history(firm=True)) < len(self.history()))):
            found, _ = await self._ask_agent(parent, parent_source, firm=True)
        if found is _EXHAUSTED:
            self._exhausted[parent.id] = self._news()
            return None  # asking again changes nothing until the history does
        return found

    async def _ask_agent(self, parent: Candidate, parent_source: str, *, firm: bool):
        """`_propose` with the history of everyone's runs, or only the firm one: a proposal,
        a claim to re-run, None when every attempt failed, or `_EXHAUSTED`; and whether an
        attempt was refused for repeating someone's program or announced edit."""
        vetoed = False
        known = self.known_programs(firm=firm)
        busy_now = self.firm_busy() if firm else self.busy()
        busy = {desc for pid, desc in busy_now if pid == parent.id}
        # What others run on this parent now, so the agent picks something else: many
        # nodes on one parent would otherwise all reach for the same favourite edits.
        history = self.history(firm=firm) + [
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
                    return claim, vetoed
                if reason:
                    vetoed = True
                    proposal = Proposal(proposal.source, proposal.desc, proposal.edit_key,
                                        reason)
            proposal = validate_proposal(parent_source, proposal)
            if proposal.failure is None and proposal.desc in busy:
                vetoed = True
                proposal.failure = "another live node announced this edit on this parent"
            if proposal.failure is None:
                return proposal, vetoed
            self._log_failed(parent, proposal)
            if proposal.exhausted:
                return _EXHAUSTED, vetoed
            # Let the agent's next attempt know what went wrong.
            history = history + [Tried(edit_key=proposal.edit_key, desc=proposal.desc,
                                       parent_id=parent.id.hex(), status="rejected",
                                       delta=None)]
        return None, vetoed

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

    def _log_failed(self, parent: Candidate, proposal: Proposal) -> None:
        """Failed proposals are not experiments: they go to a local log, not the swarm."""
        entry = {"t": time.time(), "parent": parent.id.hex(), "agent": self.agent.name,
                 "desc": proposal.desc, "reason": proposal.failure}
        with open(self.home / "proposals.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        self.on_event("proposal-failed", entry)

"""Announces are hints, never vetoes: what a node makes of its peers' `announce` records.

An announce says what its author runs now (`working_on`). Read naively it is a veto
anyone can cast with a free key: "skip this baseline seed, this edit, this program,
stop the run you started". This module is the one place that turns the announces in
the store into *weighted hints* (the `working_on` text itself is written and read by
swarm/descriptions.py).

The rules (docs/PROTOCOL.md states them for other implementations):

- **Local clock only.** An announce's freshness is judged by when *this node received*
  it, never by the author's `t`: a hint is live for `expire_s` after its last receipt,
  and for at most `hold_s(arena)` after this node first received that author's current
  `working_on` (re-announcing the same text renews freshness, not the hold).
- **Promises.** Each new `working_on` of the form `<parent> [#program] <desc>` is a
  promise: a record by the same author must follow before the hold runs out (an
  experiment whose first parent and `desc` match, or for `verify <claim prefix>: ...`
  an attestation of that claim). The store keeps the tally (`Store.announce_tallies`).
- **Standing of an author**, from what this node knows:
  - `ignored` (weight 0): a known liar (swarm.trust), or more promises broken than kept;
  - `trusted` (weight 1): reputation at or over the trust threshold (we reproduced
    their claims);
  - `earned` (weight 0.5): at least `min_kept` promises kept, and more kept than
    broken;
  - `stranger` (weight 0.1): everyone else.
- **Caps.** One live reservation per author (the store keeps one announce per author).
  Trusted authors are not capped further; earned authors together hold at most
  `earned_slots` reservations and strangers together at most `stranger_slots`, the
  heaviest (then the earliest received) first. A flood of fresh keys reserves at most
  `stranger_slots` edits or programs, whatever its size.
- **Baselines are never blocked.** An announced baseline seed only reorders which seed a
  node runs first; a node defers a baseline (explores the root meanwhile) only for a
  trusted or earned author, and only for that hint's hold. See
  `experiments.research.baselines.Baselines._missing_baseline_seed`.
- **Yielding.** A node stops its running experiment for a peer's announce of the same
  work only when that peer has earned trust (trusted or earned) AND this node received
  the peer's announce of it strictly before it announced the work itself (by the local
  clock; the key breaks an exact tie). A copied announce, arriving after ours, never
  cancels our run, whatever its key.
- **Bounded.** The store keeps at most `MAX_STORED_ANNOUNCES` announces (those
  received longest ago are dropped first, authors with a kept promise last) and none
  older than `RETAIN_S`; and a bounded promise history (`MAX_PROMISES`, at most
  `PROMISES_PER_AUTHOR` per author).

This module imports nothing of the store or trust (the store imports it): the policy
receives the store and a `reputations()` callable.
"""
from __future__ import annotations

import re
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from swarm.descriptions import announced_program, baseline_seed, parse_working_on, verify_target


# --------------------------------------------------------------------------- promises

@dataclass(frozen=True)
class Promise:
    """The record an announce's `working_on` promises: an experiment by its author on
    `parent` with `desc`, or (when `target` is set) an attestation of the claim whose id
    starts with `target`."""
    parent: bytes
    desc: str
    target: str | None


def promise_of(text: str | None) -> Promise | None:
    parsed = parse_working_on(text)
    if parsed is None:
        return None
    parent, desc = parsed
    return Promise(parent, desc, verify_target(desc))


# --------------------------------------------------------------------------- limits

EXPIRE_S = 300.0            # live this long after the last receipt (peers re-announce
                            # every 60 s)
HOLD_S = 1800.0             # at most this long after the first receipt of a working_on
RETAIN_S = 24 * 3600.0      # the store drops announces received longer ago than this
MAX_STORED_ANNOUNCES = 1000
MAX_PROMISES = 20_000
PROMISES_PER_AUTHOR = 32
STRANGER_SLOTS = 4
EARNED_SLOTS = 16
MIN_KEPT = 2

_TIME_BUDGET = re.compile(r"^[^/]+/time:([0-9]+)/")


def hold_s(arena: str | None) -> float:
    """How long one `working_on` may hold a reservation: `HOLD_S`, or for arenas with a
    longer time budget three budgets plus ten minutes (a run, its evaluation, a restart)."""
    m = _TIME_BUDGET.match(arena or "")
    budget = int(m.group(1)) if m else 0
    return max(HOLD_S, 3.0 * budget + 600.0)


@dataclass(frozen=True)
class AnnounceLimits:
    expire_s: float = EXPIRE_S
    stranger_slots: int = STRANGER_SLOTS
    earned_slots: int = EARNED_SLOTS
    min_kept: int = MIN_KEPT
    trust_threshold: float = 1.0    # as swarm.trust.TrustRules
    liar_threshold: float = -4.0


WEIGHTS = {"trusted": 1.0, "earned": 0.5, "stranger": 0.1, "ignored": 0.0}


@dataclass(frozen=True)
class Hint:
    """One live announce of another node, as this node weighs it."""
    author: bytes
    text: str
    parent: bytes
    desc: str
    program: str | None
    since_ms: int          # when we first received this author's current working_on
    received_ms: int       # when we last received it
    standing: str          # trusted | earned | stranger
    weight: float

    @property
    def firm(self) -> bool:
        """From an author who has earned trust: may defer a baseline, may make us yield."""
        return self.standing in ("trusted", "earned")


# The last hints computed from each store, reused while nothing they depend on changed:
# the store (any write, by any connection), the reputations, the policy's settings, and
# the clock (until the first moment a hint expires or a promise breaks). The loop asks
# several times a step, and a store full of a flood of fresh keys' announces makes each
# computation costly (docs/LOG.md, 2026-12-03, squat-1000).
_HINTS_MEMO: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()


class AnnouncePolicy:
    """Weighted, capped hints from the announces in `store`, for the node keyed `me`.

    `arena`: count only announces of this arena (a run in another arena duplicates
    nothing here); `reputations()`: author key -> reputation (swarm.trust); `clock`:
    unix seconds (tests move it). Every method reads the store afresh (the hints are
    reused only while the store, the reputations and the moment's hints are unchanged).
    """

    def __init__(self, store: Any, me: bytes, *, arena: str | None = None,
                 reputations: Callable[[], dict[bytes, float]] | None = None,
                 limits: AnnounceLimits | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.me, self.arena = store, me, arena
        self.reputations = reputations or (lambda: {})
        self.limits = limits or AnnounceLimits()
        self.clock = clock

    # -- standing -------------------------------------------------------------

    def standing(self, author: bytes, reps: dict[bytes, float],
                 tallies: dict[bytes, tuple[int, int]]) -> str:
        lim = self.limits
        rep = reps.get(author, 0.0)
        kept, broken = tallies.get(author, (0, 0))
        if rep < lim.liar_threshold or broken > kept:
            return "ignored"
        if rep >= lim.trust_threshold:
            return "trusted"
        if kept >= lim.min_kept and kept > broken:
            return "earned"
        return "stranger"

    # -- hints ----------------------------------------------------------------

    def _live(self, now_ms: int) -> list[tuple[bytes, str, int, int]]:
        """(author, working_on, received_ms, since_ms) of the live announces of our arena,
        ours included."""
        out = []
        self._arenas: dict[bytes, str | None] = {}
        for author, arena, text, received, since in self.store.live_announces(
                now_ms - int(self.limits.expire_s * 1000)):
            if self.arena is not None and arena != self.arena:
                continue
            if now_ms - since > hold_s(arena) * 1000:
                continue   # held too long: a run that never ends is not a run
            out.append((author, text, received, since))
            self._arenas[author] = arena
        return out

    def hints(self, now_ms: int | None = None) -> list[Hint]:
        """Other nodes' live hints that this node honours, heaviest first, capped."""
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        reps = self.reputations()
        marker = getattr(self.store, "change_marker", None)
        key = None
        if marker is not None:
            key = (self.me, self.arena, self.limits, marker(), tuple(sorted(reps.items())))
            memo = _HINTS_MEMO.get(self.store)
            if memo is not None and memo[0] == key and memo[1] <= now_ms <= memo[2]:
                return list(memo[3])
        out, valid_until = self._hints(now_ms, reps)
        if key is not None:
            try:
                _HINTS_MEMO[self.store] = (key, now_ms, valid_until, out)
            except TypeError:   # a store that cannot be referenced weakly: no reuse
                pass
        return list(out)

    def _hints(self, now_ms: int, reps: dict[bytes, float]) -> tuple[list[Hint], float]:
        """The hints at `now_ms`, and until when (ms) they stay the same if nothing else
        changes: the first moment a live announce expires or an open promise breaks."""
        live = [x for x in self._live(now_ms) if x[0] != self.me]
        if not live:
            return [], float("inf")
        expire_ms = self.limits.expire_s * 1000
        valid_until = min(min(received + expire_ms,
                              since + hold_s(self._arenas.get(author)) * 1000)
                          for author, _text, received, since in live)
        next_deadline = getattr(self.store, "next_promise_deadline", None)
        deadline = next_deadline(now_ms) if next_deadline is not None else now_ms
        valid_until = min(valid_until, deadline if deadline is not None else float("inf"))
        tallies = self.store.announce_tallies([x[0] for x in live], now_ms)
        found = []
        for author, text, received, since in live:
            parsed = parse_working_on(text)
            if parsed is None:
                continue   # presence only: reserves nothing
            standing = self.standing(author, reps, tallies)
            if standing == "ignored":
                continue
            found.append(Hint(author, text, parsed[0], parsed[1], announced_program(text),
                              since, received, standing, WEIGHTS[standing]))
        found.sort(key=lambda h: (-h.weight, h.since_ms, h.author))
        slots = {"trusted": len(found), "earned": self.limits.earned_slots,
                 "stranger": self.limits.stranger_slots}
        out = []
        for hint in found:
            if slots[hint.standing] > 0:
                slots[hint.standing] -= 1
                out.append(hint)
        return out, valid_until

    def busy(self, firm_only: bool = False) -> set[tuple[bytes, str]]:
        """(parent, desc) pairs honoured hints say other nodes run now; `firm_only`: from
        authors who have earned trust only."""
        return {(h.parent, h.desc) for h in self.hints() if h.firm or not firm_only}

    def programs(self) -> set[str]:
        """Program digests honoured hints say other nodes run now."""
        return {h.program for h in self.hints() if h.program}

    def verifiers(self) -> dict[str, set[bytes]]:
        """Claim id prefix -> keys of the nodes honoured hints say re-run it now."""
        out: dict[str, set[bytes]] = {}
        for h in self.hints():
            target = verify_target(h.desc)
            if target:
                out.setdefault(target, set()).add(h.author)
        return out

    def should_yield(self, parent_id: bytes, desc: str, program: str | None = None) -> bool:
        """Whether to stop our run of `desc` on `parent_id` (or of `program` on any parent)
        for another node's announce of the same work.

        Only to an author who has earned trust and whose announce of it we received
        strictly before we announced it ourselves (local clock; the lower key breaks an
        exact tie). Without our own live announce of it there is nothing to yield."""
        now_ms = int(self.clock() * 1000)
        mine = None
        for author, text, _received, since in self._live(now_ms):
            if author == self.me and self._same(text, parent_id, desc, program):
                mine = since
        if mine is None:
            return False
        for hint in self.hints(now_ms):
            if hint.firm and self._same(hint.text, parent_id, desc, program) and \
                    (hint.since_ms, hint.author) < (mine, self.me):
                return True
        return False

    @staticmethod
    def _same(text: str, parent_id: bytes, desc: str, program: str | None) -> bool:
        return parse_working_on(text) == (parent_id, desc) or \
            (program is not None and announced_program(text) == program)


def seeds_of(pairs: Iterable[tuple[bytes, str]], root_id: bytes) -> set[int]:
    """Baseline seeds among (parent, desc) pairs on the genome root."""
    out = set()
    for parent, desc in pairs:
        seed = baseline_seed(desc) if parent == root_id else None
        if seed is not None:
            out.add(seed)
    return out

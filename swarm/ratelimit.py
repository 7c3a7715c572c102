"""Per-peer rate limits: token buckets, and how many records a node accepts per minute.

- `RateLimiter`: a token bucket per key (a peer id). Plain functions, an
  injectable clock, bounded under a flood of new keys. The sync server limits
  requests (and bytes, `take`) per peer with it; `RecordRateLimit` and the storage
  budgets of `swarm.admission` build on it.
- `RecordLimits`: the numbers, with the reasoning for each default.
- `RecordRateLimit`: admits or drops a *valid* record before it reaches the
  store. Over gossip it limits both the forwarding peer (the libp2p peer that
  handed us the message) and the record's author (the signing key: a liar
  flooding with his own key through many relays); over sync, where we pull
  what we chose to ask for, it limits the author only, with a far larger
  allowance, because a late joiner legitimately pulls an author's whole
  history at once.

A drop here is not an accusation: the record was valid, only too much. The
caller treats it as gossipsub's IGNORE (not forwarded, not stored, not scored
as invalid). Only a flood that goes on (`RecordLimits.drops_per_strike`
records a forwarder is to blame for) earns it one strike with `PeerGuard`,
which bans after a few strikes in a few minutes. Counters of dropped records
per peer are kept for `status` and logs.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("loopy.swarm.ratelimit")

MAX_TRACKED = 10_000  # keys per table; a peer-id flood must not grow memory unbounded
LOG_EVERY_S = 60.0  # at most one log line per dropped-from peer and limit per minute


# --------------------------------------------------------------------------- buckets

class RateLimiter:
    """Token bucket per key: `burst` at once, then `rate` per second."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_TRACKED) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("a bucket needs rate >= 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def tokens(self, key: str) -> float:
        """Tokens `key` has now (a new key has a full bucket); takes none."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - at) * self.rate)

    def allow(self, key: str) -> bool:
        """Take one token from `key`'s bucket if it has one."""
        return self.take(key, 1.0)

    def take(self, key: str, amount: float) -> bool:
        """Take `amount` tokens from `key`'s bucket if it has that many (bytes, say)."""
        tokens = self.tokens(key)
        allowed = tokens >= amount
        self._buckets[key] = (tokens - amount if allowed else tokens, self.clock())
        if len(self._buckets) > self.max_keys:
            # Forget the keys idle longest; a forgotten key starts full again, which a
            # flooder cannot use: his own bucket is the one updated most recently.
            idle_first = sorted(self._buckets.items(), key=lambda kv: kv[1][1])
            for old, _ in idle_first[: len(idle_first) // 2]:
                del self._buckets[old]
        return allowed


# --------------------------------------------------------------------------- limits

@dataclass(frozen=True)
class RecordLimits:
    """How many valid records a node accepts per minute; over the limit they are dropped.

    Honest rates these must never cut (docs/SCALING.md): a node publishes per
    experiment one announce when it starts, the experiment, about 0.2
    attestations, plus an announce every 60 s. A GPU node on 5-minute runs
    sends about 1.2 records a minute, a CPU node on 60 s runs about 3; the
    synthetic scaling bench (runs of 4 s or more) at most about 33. A whole
    swarm of 100 nodes sends about 2 records a second on all topics together,
    1,000 nodes about 21 (where py-libp2p, at 10-25 ms of CPU a record, already
    needs half a core).
    """

    # Per author over gossip: 60 a minute is 20x a CPU node's pace and about twice
    # the fastest synthetic bench node; a burst of 120 takes a node publishing a
    # backlog at once. A liar's key gets no more than 1 record a second.
    author_per_min: float = 60.0
    author_burst: float = 120.0
    # Per forwarder over gossip: a relay hands us many authors' records, and a leaf
    # with a single peer gets every record of its topics from it, so this sits above
    # what a 1,000-node swarm sends on all topics together (21/s) and near what
    # py-libp2p can verify at all: one peer cannot take more than about half a core.
    forwarder_per_min: float = 1800.0
    forwarder_burst: float = 1800.0
    # Per author over sync (no forwarder limit: we pull only ids we chose, and an
    # honest server hands a late joiner the swarm's whole history). The fastest
    # honest author (CPU, 60 s runs) makes about 1,400 syncable records a day
    # (announces are not synced), 40,000 a month; 20,000 at once plus 2,000 a
    # minute gets such a month in 10 minutes, a GPU node's month (10,000) at once.
    sync_author_per_min: float = 2000.0
    sync_author_burst: float = 20000.0
    # One PeerGuard strike per this many dropped records a forwarder is to blame for
    # (its own limit, or its own key's). PeerGuard bans at 5 strikes decaying with a
    # 5-minute half-life: about 3,000 drops in a few minutes, i.e. a flood of at
    # least 10 records a second over the limit for minutes. A one-off honest burst
    # earns at most a strike that fades; relaying one author's flood earns none (his
    # key's limit cuts it), but a peer that keeps handing us more than 30 records a
    # second, whoever signed them (a Sybil flood), is cut off: at that rate, it would
    # cost us most of a core anyway.
    drops_per_strike: int = 600

    def __post_init__(self) -> None:
        for name in ("author", "forwarder", "sync_author"):
            if getattr(self, f"{name}_per_min") < 0 or getattr(self, f"{name}_burst") < 1:
                raise ValueError(f"{name}: per_min must be >= 0 and burst >= 1")
        if self.drops_per_strike < 1:
            raise ValueError("drops_per_strike must be >= 1")


@dataclass(frozen=True)
class Drop:
    """Why a valid record was dropped; `strike`: the forwarder earned a PeerGuard strike."""
    reason: str
    strike: bool = False


FORWARDER_OVER = "forwarder over its record limit"
AUTHOR_OVER = "author over its record limit"
SYNC_AUTHOR_OVER = "author over its sync record limit"


class RecordRateLimit:
    """Admits valid records per forwarder and per author (see the module docstring).

    Peers and authors are libp2p peer id strings (an author's key gives its peer
    id, so a connected peer's own records count under the same name). Plain
    functions; one instance per node, used from the trio thread.
    """

    def __init__(self, limits: RecordLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or RecordLimits()
        self.clock = clock
        lim = self.limits
        self.forwarders = RateLimiter(lim.forwarder_per_min / 60, lim.forwarder_burst, clock)
        self.authors = RateLimiter(lim.author_per_min / 60, lim.author_burst, clock)
        self.sync_authors = RateLimiter(lim.sync_author_per_min / 60, lim.sync_author_burst,
                                        clock)
        # Dropped records: by the forwarder over its limit, by the author over its limit
        # (gossip), by the author over its sync limit.
        self.dropped_forwarded: dict[str, int] = {}
        self.dropped_authored: dict[str, int] = {}
        self.dropped_synced: dict[str, int] = {}
        self.dropped = 0
        self._blame: dict[str, int] = {}
        self._logged_at: dict[tuple[str, str], float] = {}

    # -- gossip
    def admit_gossip(self, forwarder: str, author: str, *, new: bool = True) -> Drop | None:
        """None to accept a valid gossiped record, else why it is dropped.

        Records new to our store count against the author; known ones (a replay
        of an honest author's old records) cannot use up his allowance. Every
        record counts against the forwarder. Nothing is taken unless both agree.
        """
        if self.forwarders.tokens(forwarder) < 1.0:
            self._count(self.dropped_forwarded, forwarder, FORWARDER_OVER)
            return Drop(FORWARDER_OVER, self._blame_for(forwarder))
        if new and not self.authors.allow(author):
            self._count(self.dropped_authored, author, AUTHOR_OVER)
            # The relay of someone else's flood is not to blame; an author sending
            # his own flood straight to us is.
            strike = self._blame_for(forwarder) if author == forwarder else False
            return Drop(AUTHOR_OVER, strike)
        self.forwarders.allow(forwarder)
        return None

    # -- sync
    def admit_synced(self, author: str) -> Drop | None:
        """None to store a verified record pulled by sync, else why it is dropped."""
        if self.sync_authors.allow(author):
            return None
        self._count(self.dropped_synced, author, SYNC_AUTHOR_OVER)
        return Drop(SYNC_AUTHOR_OVER)

    # -- counters
    def dropped_from(self, peer: str) -> tuple[int, int]:
        """(records it forwarded over its limit, records it signed over its limits)."""
        return (self.dropped_forwarded.get(peer, 0),
                self.dropped_authored.get(peer, 0) + self.dropped_synced.get(peer, 0))

    def counts(self) -> dict[str, dict[str, int]]:
        """Every non-zero drop counter, for logs and `status --json`."""
        return {"forwarder": dict(self.dropped_forwarded),
                "author": dict(self.dropped_authored),
                "sync_author": dict(self.dropped_synced)}

    def _count(self, table: dict[str, int], key: str, reason: str) -> None:
        self.dropped += 1
        table[key] = table.get(key, 0) + 1
        _bound(table)
        now = self.clock()
        last = self._logged_at.get((key, reason))
        if last is None or now - last >= LOG_EVERY_S:
            self._logged_at[(key, reason)] = now
            _bound(self._logged_at)
            log.info("dropping records: %s is %s (%d so far)", key, reason, table[key])

    def _blame_for(self, forwarder: str) -> bool:
        """Count a drop against `forwarder`; True on every `drops_per_strike`-th."""
        blame = self._blame.get(forwarder, 0) + 1
        self._blame[forwarder] = blame
        _bound(self._blame)
        return blame % self.limits.drops_per_strike == 0


def _bound(table: dict) -> None:
    """Keep a table of counts (or times) under MAX_TRACKED keys: forget the smaller
    (or older) half."""
    if len(table) > MAX_TRACKED:
        for key, _ in sorted(table.items(), key=lambda kv: kv[1])[: len(table) // 2]:
            del table[key]

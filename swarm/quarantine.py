"""Quarantine: peers' records whose parents (or target) we do not have yet, kept out of
the store, in memory and bounded, until what they reference arrives or they expire.

A record with invented parents costs its author nothing to sign, so the store never
takes one: it waits here. When a record arrives, `arrived(id)` hands back the records
that waited for it and now have everything they reference (the caller inserts them,
which may release more). A record that waits longer than `ttl_s` is dropped, and so are
the oldest when the quarantine is over `max_records` or `max_bytes`; one sending peer may
hold at most `peer_share` of the records (its own oldest go first), so a flood from one
peer cannot push out what others sent. Nothing here is persistent: a restarted node asks
its peers again.

Plain functions, an injectable clock; one instance per node, used from the trio thread.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class QuarantineLimits:
    # A late joiner's catch-up parks the heads it fetched here while it asks for their
    # ancestors (one level per round trip); 4,096 records is more than the heads of any
    # one topic in the largest history measured (docs/SCALING.md), and what does not fit
    # is fetched again by the next catch-up, once its ancestors are stored.
    max_records: int = 4096
    max_bytes: int = 32 * 1024 * 1024   # envelope + body bytes held (memory)
    ttl_s: float = 900.0                # 15 minutes: many catch-up rounds
    peer_share: float = 0.5             # of max_records, per sending peer


@dataclass
class _Entry:
    record: Any
    missing: set[bytes]
    peer: str
    at: float
    size: int
    needed: bool = False


@dataclass
class QuarantineStats:
    added: int = 0
    released: int = 0
    expired: int = 0
    evicted: int = 0


class Quarantine:
    """Records waiting for the records they reference (see the module docstring)."""

    def __init__(self, limits: QuarantineLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or QuarantineLimits()
        self.clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()  # oldest first
        self._waiting: dict[bytes, set[bytes]] = {}  # missing id -> records waiting on it
        self._per_peer: dict[str, int] = {}
        self.bytes = 0
        self.stats = QuarantineStats()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._entries

    def missing_ids(self) -> list[bytes]:
        """Every id some quarantined record waits for."""
        return list(self._waiting)

    def waiting_on(self, record_id: bytes) -> bool:
        return record_id in self._waiting

    def needed(self, record_id: bytes) -> bool:
        """Whether a quarantined record we protect (marked `needed` when added) waits
        for `record_id`."""
        return any(self._entries[w].needed for w in self._waiting.get(record_id, ())
                   if w in self._entries)

    def add(self, record: Any, missing: Iterable[bytes], peer: str = "",
            needed: bool = False) -> bool:
        """Park `record` until every id in `missing` arrived; False if it is here already
        (or `missing` is empty: nothing to wait for)."""
        missing = set(missing)
        if record.id in self._entries or not missing:
            return False
        self.expire()
        size = len(record.envelope) + len(record.body_bytes)
        entry = _Entry(record, missing, peer, self.clock(), size, needed)
        share = max(1, int(self.limits.max_records * self.limits.peer_share))
        if self._per_peer.get(peer, 0) >= share:
            oldest = next(rid for rid, e in self._entries.items() if e.peer == peer)
            self._drop(oldest)
            self.stats.evicted += 1
        self._entries[record.id] = entry
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        self.bytes += size
        for ref in missing:
            self._waiting.setdefault(ref, set()).add(record.id)
        self.stats.added += 1
        while len(self._entries) > self.limits.max_records or \
                self.bytes > self.limits.max_bytes:
            self._drop(next(iter(self._entries)))
            self.stats.evicted += 1
        return True

    def arrived(self, record_id: bytes) -> list[Any]:
        """`record_id` is stored now: the records that no longer wait for anything, taken
        out of the quarantine (oldest first). Also forgets `record_id` itself if it was
        here (it arrived by another way)."""
        if record_id in self._entries:
            self._drop(record_id)
        waiters = self._waiting.pop(record_id, set())
        ready = []
        for waiter in waiters:
            entry = self._entries.get(waiter)
            if entry is None:
                continue
            entry.missing.discard(record_id)
            if not entry.missing:
                ready.append(entry)
        ready.sort(key=lambda e: e.at)
        out = []
        for entry in ready:
            self._drop(entry.record.id)
            self.stats.released += 1
            out.append(entry.record)
        return out

    def expire(self) -> int:
        """Drop records that waited longer than `ttl_s`; returns how many."""
        cutoff = self.clock() - self.limits.ttl_s
        old = []
        for record_id, entry in self._entries.items():
            if entry.at > cutoff:
                break  # oldest first
            old.append(record_id)
        for record_id in old:
            self._drop(record_id)
        self.stats.expired += len(old)
        return len(old)

    def _drop(self, record_id: bytes) -> None:
        entry = self._entries.pop(record_id)
        self.bytes -= entry.size
        left = self._per_peer.get(entry.peer, 1) - 1
        if left > 0:
            self._per_peer[entry.peer] = left
        else:
            self._per_peer.pop(entry.peer, None)
        for ref in entry.missing:
            waiters = self._waiting.get(ref)
            if waiters is not None:
                waiters.discard(record_id)
                if not waiters:
                    del self._waiting[ref]

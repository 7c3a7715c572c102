"""Storage admission: how much of strangers' records a node stores, whatever the number
of keys they sign with.

Per-author rate limits (`swarm.ratelimit`) do nothing against fresh keys: a thousand
keys each under its limit deliver tens of GB an hour of valid records. So what this node
*stores* of records by strangers is budgeted in bytes, as the store counts them
(`Store.stored_cost`: body + envelope + 3 KiB for the row, its indexes and slack):

- a *stranger* is an author who is neither us nor a peer we trust (reputation at the
  trust threshold, from our own re-runs: swarm.trust), for a record no record we protect
  references (`Store.is_needed`: a parent or target of one of our records or a trusted
  author's, or of one waiting in quarantine);
- strangers' records together: at most `strangers_per_hour` bytes an hour after a burst
  of `strangers_burst` (token bucket);
- the sending peer (the gossip forwarder, or the peer a sync pulled from) and the
  author: smaller buckets each, so one peer or one key cannot take the whole budget;
- strangers' announces are not charged (the store keeps at most 1,000 announces, each
  author's newest only: swarm.announces) but one over `max_stranger_announce` bytes is
  not stored at all (honest announces are well under 2 KiB);
- records of ours and of peers we trust are not charged (only rate-limited).

A record over a budget is dropped without blame: over gossip it is IGNOREd (not stored,
not forwarded, not scored); over sync it is simply not stored, and a later sync asks
again. Records whose parents (or target) we lack are charged the same way and then wait
in `swarm.quarantine`, never in the store, until those arrive.

**The bound.** Every byte a stranger adds to the store was charged to the strangers'
bucket first, so under any attack the store grows by at most `strangers_burst +
strangers_per_hour * hours`: with the defaults at most 32 + 128 = 160 MiB (168 MB) in the
first hour and 128 MiB (134 MB) in each hour after, whatever the number of keys or peers.
Retention (swarm.retention) then deletes strangers' records nothing protects beyond a
quota, so an attack of any length leaves at most the quota (128 MiB) plus the last hour's
admissions (160 MiB) of strangers' records on disk.

Why these numbers: a 100-node swarm of CPU nodes on 60 s runs publishes about 100
experiments a minute, about 30 MiB an hour at this cost; 128 MiB an hour is four times
that, and a late joiner pulls about 25,000 such records an hour from strangers.

`Ingest` is where peers' records enter a node: admission, then the store or quarantine,
and records quarantined for a parent released into the store when it arrives.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from swarm.quarantine import Quarantine
from swarm.ratelimit import Drop, RateLimiter
from swarm.store import STORED_ROW_OVERHEAD

log = logging.getLogger("loopy.swarm.admission")

MIB = 1024 * 1024
STRANGERS = "*"  # the key of the strangers' common bucket

STRANGERS_OVER = "strangers' storage budget spent"
PEER_OVER = "sending peer's storage budget for strangers spent"
AUTHOR_OVER = "author's storage budget spent"
ANNOUNCE_TOO_LARGE = "a stranger's announce larger than we keep"


@dataclass(frozen=True)
class StorageBudgets:
    """Bytes of strangers' records stored per hour (see the module docstring)."""
    strangers_per_hour: int = 128 * MIB
    strangers_burst: int = 32 * MIB
    peer_per_hour: int = 64 * MIB
    peer_burst: int = 16 * MIB
    author_per_hour: int = 16 * MIB
    author_burst: int = 8 * MIB
    max_stranger_announce: int = 8 * 1024

    def __post_init__(self) -> None:
        for name in ("strangers", "peer", "author"):
            if getattr(self, f"{name}_per_hour") < 0 or getattr(self, f"{name}_burst") < 1:
                raise ValueError(f"{name}: per_hour must be >= 0 and burst >= 1")

    def max_growth_bytes(self, hours: float) -> float:
        """The most strangers' records can add to the store in `hours` of attack."""
        return self.strangers_burst + self.strangers_per_hour * hours


def record_cost(record: Any) -> int:
    """What a record costs on disk (`Store.stored_cost`)."""
    return len(record.body_bytes) + len(record.envelope) + STORED_ROW_OVERHEAD


class Admission:
    """Charges strangers' records to the storage budgets; `admit` says None or why not.

    `trusted(author key)`: us or a peer we trust. `needed(record id)`: a record we
    protect references it (it bypasses the budgets, as a trusted author's record does).
    Plain functions, an injectable clock.
    """

    def __init__(self, budgets: StorageBudgets | None = None, *,
                 trusted: Callable[[bytes], bool] = lambda author: False,
                 needed: Callable[[bytes], bool] = lambda record_id: False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budgets = b = budgets or StorageBudgets()
        self.trusted = trusted
        self.needed = needed
        self.strangers = RateLimiter(b.strangers_per_hour / 3600, b.strangers_burst, clock,
                                     max_keys=1)
        self.peers = RateLimiter(b.peer_per_hour / 3600, b.peer_burst, clock)
        self.authors = RateLimiter(b.author_per_hour / 3600, b.author_burst, clock)
        self.charged = 0        # bytes of strangers' records admitted
        self.admitted = 0       # strangers' records admitted
        self.dropped: dict[str, int] = {}  # reason -> records

    def is_stranger(self, record: Any) -> bool:
        return not (self.trusted(record.author) or self.needed(record.id))

    def budget_left(self) -> float:
        """Bytes the strangers' bucket holds now."""
        return self.strangers.tokens(STRANGERS)

    def admit(self, record: Any, peer: str) -> Drop | None:
        """None to store (or quarantine) a valid record from `peer`, else why not."""
        if not self.is_stranger(record):
            return None
        if record.kind == "announce":
            if len(record.envelope) > self.budgets.max_stranger_announce:
                return self._drop(ANNOUNCE_TOO_LARGE)
            return None
        cost = record_cost(record)
        author = record.author
        if self.strangers.tokens(STRANGERS) < cost:
            return self._drop(STRANGERS_OVER)
        if self.peers.tokens(peer) < cost:
            return self._drop(PEER_OVER)
        if self.authors.tokens(author.hex()) < cost:
            return self._drop(AUTHOR_OVER)
        self.strangers.take(STRANGERS, cost)
        self.peers.take(peer, cost)
        self.authors.take(author.hex(), cost)
        self.charged += cost
        self.admitted += 1
        return None

    def _drop(self, reason: str) -> Drop:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        return Drop(reason)


# --------------------------------------------------------------------------- ingest

STORED = "stored"
QUARANTINED = "quarantined"
KNOWN = "known"
PRUNED = "pruned before"
MAX_PRUNED_REMEMBERED = 65_536


class Ingest:
    """Peers' records into the node: admission, then the store or the quarantine.

    `offer(record, peer)` admits a verified record (unless the caller's gossip validator
    did so already: `admitted=True`), stores it when everything it references is stored
    (the genome root counts as stored), else parks it in the quarantine and asks for what
    it lacks (`Store.want`). Every insert into the store, by any path of this Store
    object, releases the quarantined records that waited for it. Ids retention deleted
    are remembered (bounded) so that peers' heads do not bring them back, unless a record
    we protect comes to need them.
    """

    def __init__(self, store: Any, admission: Admission, quarantine: Quarantine) -> None:
        self.store = store
        self.admission = admission
        self.quarantine = quarantine
        admission.needed = self.needed
        self.stored = 0           # records this ingest stored (direct and released)
        self.released = 0
        self._pruned: OrderedDict[bytes, None] = OrderedDict()
        self._arrivals: list[bytes] = []
        self._releasing = False
        store.add_listener(self._on_store_change)

    def close(self) -> None:
        self.store.remove_listener(self._on_store_change)

    # -- what we know
    def needed(self, record_id: bytes) -> bool:
        """A record we protect (stored, or waiting in quarantine) references the id."""
        return self.quarantine.needed(record_id) or self.store.is_needed(record_id)

    def known(self, record_id: bytes) -> bool:
        """Stored or quarantined: a copy needs neither a budget nor a fetch."""
        return record_id in self.quarantine or self.store.has(record_id)

    def unknown(self, ids: Iterable[bytes]) -> list[bytes]:
        """The ids worth fetching: neither stored nor quarantined, nor deleted by
        retention (unless a record we protect needs one now); given order."""
        return [i for i in ids if not self.known(i)
                and (i not in self._pruned or self.needed(i))]

    def missing_refs(self, record: Any) -> list[bytes]:
        """What the record references that is not stored: an experiment's parents (the
        genome root is never missing), an attestation's target. Announces: nothing (their
        head is a hint)."""
        if record.kind == "experiment":
            refs = [p for p in record.parents if p != self.store.root_id]
        elif record.kind == "attestation":
            refs = [record.target]
        else:
            return []
        return [r for r in dict.fromkeys(refs) if not self.store.has(r)]

    def note_pruned(self, ids: Iterable[bytes]) -> None:
        for record_id in ids:
            self._pruned[record_id] = None
            self._pruned.move_to_end(record_id)
        while len(self._pruned) > MAX_PRUNED_REMEMBERED:
            self._pruned.popitem(last=False)

    # -- admission for gossip's validator
    def admit(self, record: Any, peer: str) -> Drop | None:
        """The storage check of the gossip validator: None to accept (and forward)."""
        if self.known(record.id):
            return None
        if record.id in self._pruned and not self.needed(record.id):
            return Drop(PRUNED)
        return self.admission.admit(record, peer)

    # -- storing
    def offer(self, record: Any, peer: str, *, admitted: bool = False) -> str:
        """Store, quarantine or drop one verified record from `peer`; returns STORED,
        QUARANTINED, KNOWN, or the reason it was dropped."""
        if self.known(record.id):
            return KNOWN
        if not admitted:
            drop = self.admit(record, peer)
            if drop is not None:
                return drop.reason
        missing = self.missing_refs(record)
        if missing:
            needed = not self.admission.is_stranger(record)
            if self.quarantine.add(record, missing, peer, needed=needed):
                self.store.want(missing, needed=needed)
            return QUARANTINED
        if self.store.insert(record):
            self.stored += 1
            return STORED
        return KNOWN

    def offer_many(self, records: Sequence[Any], peer: str) -> int:
        """`offer` each (one store transaction); returns how many records were stored,
        those the batch released from quarantine included."""
        before = self.stored
        with self.store.atomic():
            for record in records:
                self.offer(record, peer)
        return self.stored - before

    def _on_store_change(self, inserted: list[Any], removed: list[bytes]) -> None:
        """After a commit: release what waited for the inserted records (iteratively: a
        release is an insert, whose commit comes back here)."""
        if removed:
            self.note_pruned(removed)
        self._arrivals.extend(r.id for r in inserted)
        if self._releasing:
            return
        self._releasing = True
        try:
            while self._arrivals:
                ready = self.quarantine.arrived(self._arrivals.pop())
                if ready:
                    n = self.store.insert_many(ready)
                    self.stored += n
                    self.released += n
        except Exception:  # the store is closing, or broke: the records expire instead
            log.exception("releasing quarantined records failed")
            self._arrivals.clear()
        finally:
            self._releasing = False

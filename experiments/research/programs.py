"""Which train.py programs the arena has already run, or live nodes run now.

Two nodes often reach one program by different paths: a stack of edits on the root, the
same edits one at a time on a kept child, a merge of two siblings, and checks of (parent,
edit) pairs see none of these copies. Re-running a program measures nothing new (a
deliberate re-run is a verification, and is recorded as one), so the loop checks a
proposal's *program*, not only its (parent, edit) pair, against:

- `ProgramIndex`: every experiment in the arena, by a digest of its source, kept up to
  date incrementally from the store;
- the programs other live nodes announce they are running (`working_on` carries the
  digest, see `swarm.descriptions.working_on`).

The index also tells a copy from its original (`copied_from`): a record whose program
this node already had, from our own run or from an earlier kept claim by another author
(`original_runs`). "Earlier" is this node's receipt order, never the record's own `t`
(its author sets that). Re-signing someone's record, or rebuilding its program by another
path, costs nothing, so a copy earns its author no re-run and no reputation (claims.py).
"""
from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable

from swarm.descriptions import is_interrupted
from swarm.lineage import Lineage, LineageError
from swarm.records import Record
from swarm.store import Store
from swarm.trust import TrustPolicy

DIGEST_CHARS = 16            # 64 bits: collisions are no concern at any swarm's size
RETRY_PER_REFRESH = 64       # records whose lineage is incomplete, re-tried per refresh

Receipt = tuple[int, int]    # (received_at ms, rowid): this node's order of receipt


def program_digest(source: str) -> str:
    """A short, stable name for a train.py program (hex)."""
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]


class ProgramIndex:
    """Digest of each experiment's program in one arena -> the records that ran it, in
    the order this node received them.

    Runs a kill cut short (recorded as interrupted) do not count: they measured nothing.
    Records whose lineage is not complete yet (an ancestor still syncing) are retried on
    later refreshes, a bounded number per refresh."""

    def __init__(self, store: Store, lineage: Lineage, arena: str):
        self.store, self.lineage, self.arena = store, lineage, arena
        # digest -> [(receipt, id, author, ran ok)], sorted by receipt
        self._by_digest: dict[str, list[tuple[Receipt, bytes, bytes, bool]]] = {}
        self._digest_of: dict[bytes, str] = {}
        self._seen: set[bytes] = set()
        self._incomplete: list[bytes] = []
        self._pending: list[bytes] = []
        self._marker: tuple[int, int] | None = None

    def refresh(self, limit: int | None = None) -> bool:
        """Read the experiments not indexed yet (at most `limit` of them: a big store's
        first read takes seconds, and the caller may want to yield in between). True when
        the index is up to date."""
        if not self._pending:
            retry, self._incomplete = self._incomplete[:RETRY_PER_REFRESH], \
                self._incomplete[RETRY_PER_REFRESH:]
            self._pending = retry + [i for i in self.store.experiment_ids(self.arena)
                                     if i not in self._seen]
        todo = self._pending if limit is None else self._pending[:limit]
        self._pending = self._pending[len(todo):]
        received = self.store.receipts(todo)
        for record_id in todo:
            self._seen.add(record_id)
            record = self.store.get(record_id)
            if record is None or is_interrupted((record.result or {}).get("reason")):
                continue
            try:
                source = self.lineage.source_of(record_id)
            except LineageError:
                self._incomplete.append(record_id)
                continue
            digest = program_digest(source)
            self._digest_of[record_id] = digest
            bisect.insort(self._by_digest.setdefault(digest, []),
                          (received.get(record_id, (0, 0)), record_id, record.author,
                           record.status == "ok"))
        return not self._pending

    def up_to_date(self) -> "ProgramIndex":
        """Refresh (all of it) if the store may have changed since the last time: cheap
        to call often."""
        marker = self.store.change_marker()
        if marker != self._marker or self._pending:
            self.refresh()
            self._marker = marker
        return self

    def run_by(self, source: str, counts: Callable[[bytes, bytes], bool] | None = None
               ) -> bytes | None:
        """The first record (as this node received them) that ran this program in the
        arena and `counts(id, author)`, if there is one (call refresh first)."""
        for _, record_id, author, _ in self._by_digest.get(program_digest(source), ()):
            if counts is None or counts(record_id, author):
                return record_id
        return None

    def copied_from(self, record_id: bytes, me: bytes,
                    counts: Callable[[bytes, bytes], bool] | None = None) -> bytes | None:
        """The record `record_id` copies, if it is a copy: one that ran the same program,
        by another author, that is ours (our records always come first) or an ok run that
        this node received before it and that `counts(id, author)` (`original_runs`). None
        when `record_id` is the first of its program, ours, or not indexed (call refresh
        first)."""
        digest = self._digest_of.get(record_id)
        if digest is None:
            return None
        runs = self._by_digest[digest]
        receipt, author = next((k, a) for k, i, a, _ in runs if i == record_id)
        if author == me:
            return None
        for key, other, other_author, ok in runs:
            if other_author == me:
                return other
            if other_author == author or key >= receipt or not ok:
                continue   # (a crash is no result to copy: `original_runs`)
            if counts is None or counts(other, other_author):
                return other
        return None

    def __len__(self) -> int:
        return len(self._by_digest)


def original_runs(store: Store, is_kept: Callable[[Record], bool], trust: TrustPolicy,
                  counts: Callable[[bytes, bytes], bool] | None = None
                  ) -> Callable[[bytes, bytes], bool]:
    """Which runs of a program can be the original that a later record copies: ours,
    and others' kept claims that `counts(id, author)` and that we did not refute.

    A copy earns nothing because it repeats someone's result. A crash, a worse score or a
    claim we re-ran and refuted is no result to copy: if it made an original, anyone who
    guesses the swarm's next edits could publish them first (as failures, or as absurd
    claims) and make every honest claim of them a copy, never re-run nor built on."""
    memo: dict[bytes, bool] = {}

    def original(record_id: bytes, author: bytes) -> bool:
        if author == trust.me:
            return True
        if record_id not in memo:   # (one scan asks about the same runs many times)
            record = None
            if trust.my_verdict_on(record_id, author) != "refuted" and \
                    (counts is None or counts(record_id, author)):
                record = store.get(record_id)
            memo[record_id] = record is not None and is_kept(record)
        return memo[record_id]
    return original


class KnownPrograms:
    """The programs a proposal must not repeat: run in the arena, or running elsewhere.

    Only records that `counts(id, author)` count (the loop leaves out known liars' runs
    that it did not re-run itself): a fake record of a program, with a bad score nobody
    would ever re-run, must not keep the swarm from trying it."""

    def __init__(self, index: ProgramIndex, running: set[str],
                 counts: Callable[[bytes, bytes], bool] | None = None):
        self.index, self.running, self.counts = index, running, counts

    def why_duplicate(self, source: str) -> str | None:
        """Why running `source` would repeat someone's work, or None if it is new."""
        ran = self.index.run_by(source, self.counts)
        if ran is not None:
            return f"duplicate: this program was already run (record {ran.hex()[:16]})"
        if program_digest(source) in self.running:
            return "duplicate: another live node announced it is running this program"
        return None

    def __contains__(self, source: object) -> bool:
        return isinstance(source, str) and self.why_duplicate(source) is not None

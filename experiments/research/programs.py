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
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable

from swarm.descriptions import is_interrupted
from swarm.lineage import Lineage, LineageError
from swarm.store import Store

DIGEST_CHARS = 16            # 64 bits: collisions are no concern at any swarm's size
RETRY_PER_REFRESH = 64       # records whose lineage is incomplete, re-tried per refresh


def program_digest(source: str) -> str:
    """A short, stable name for a train.py program (hex)."""
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]


class ProgramIndex:
    """Digest of each experiment's program in one arena -> the records that ran it.

    Runs a kill cut short (recorded as interrupted) do not count: they measured nothing.
    Records whose lineage is not complete yet (an ancestor still syncing) are retried on
    later refreshes, a bounded number per refresh."""

    def __init__(self, store: Store, lineage: Lineage, arena: str):
        self.store, self.lineage, self.arena = store, lineage, arena
        self._by_digest: dict[str, list[tuple[bytes, bytes]]] = {}   # [(id, author)]
        self._seen: set[bytes] = set()
        self._incomplete: list[bytes] = []
        self._pending: list[bytes] = []

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
            self._by_digest.setdefault(program_digest(source), []).append(
                (record_id, record.author))
        return not self._pending

    def run_by(self, source: str, counts: Callable[[bytes, bytes], bool] | None = None
               ) -> bytes | None:
        """The first record that ran this program in the arena and `counts(id, author)`,
        if there is one (call refresh first)."""
        for record_id, author in self._by_digest.get(program_digest(source), ()):
            if counts is None or counts(record_id, author):
                return record_id
        return None

    def __len__(self) -> int:
        return len(self._by_digest)


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

"""The sync server's `heads` answers, kept up to date insert by insert.

A `heads` request asks for the experiment heads of some topics (experiments no stored
record builds on; all topics when none are named) and the attestations of experiments
in those topics (attestations have no children, so a late joiner would otherwise never
learn them). Computing that from the store decodes every attestation's target; before
this index the answer was cached only until the next insert, so on a busy node nearly
every request paid for a rebuild (about 1.5 s of CPU at 20,000 records).

`HeadsIndex` listens to the store (`Store.add_listener`) and updates in place: a new
experiment is a head of its topic and its parents stop being heads; a new attestation is
filed under its target's topic (or waits, unfiled, until the target arrives). Deletions
(retention) and writes by another connection to the same file (`Store.data_version`)
rebuild it, from index columns only (no record is decoded). Answers are cached per topic
list until the index changes.

The answer, as before: for each requested topic in sorted order (or all topics), its
heads newest first (`t` descending, then id), then the matching attestations oldest first
(`t`, then id), duplicates dropped, at most `limit` ids.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# ids of 34 msgpack bytes: 30,000 stay under the 1 MiB sync frame
DEFAULT_LIMIT = 30_000
MAX_CACHED_ANSWERS = 64  # peers choose the topic lists


class HeadsIndex:
    """Experiment heads per topic and attestations per target topic, for one store."""

    def __init__(self, store: Any, limit: int = DEFAULT_LIMIT) -> None:
        self.store = store
        self.limit = limit
        self.rebuilds = 0
        self._answers: dict[tuple[str, ...], list[bytes]] = {}
        store.add_listener(self._on_change)
        self.rebuild()

    def close(self) -> None:
        self.store.remove_listener(self._on_change)

    # -- building
    def rebuild(self) -> None:
        """From the store's index columns: nothing is decoded."""
        c = self.store._conn
        self._data_version = self.store.data_version()
        self._heads: dict[str | None, dict[bytes, int]] = {}   # topic -> head id -> t
        self._att_by_topic: dict[str | None, dict[bytes, int]] = {}  # target topic -> id -> t
        self._att_all: dict[bytes, int] = {}
        self._att_waiting: dict[bytes, dict[bytes, int]] = {}  # unknown target -> id -> t
        for record_id, topic, t in c.execute(
                "SELECT r.id, r.topic, r.t FROM records r INDEXED BY records_by_kind_t "
                "WHERE r.kind = 'experiment' AND NOT EXISTS "
                "(SELECT 1 FROM parents p WHERE p.parent = r.id)"):
            self._heads.setdefault(topic, {})[record_id] = t
        for att_id, target, t, kind, topic in c.execute(
                "SELECT a.id, a.target, a.t, r.kind, r.topic FROM attestations a "
                "LEFT JOIN records r ON r.id = a.target"):
            self._file_attestation(att_id, target, t, kind, topic)
        self._answers.clear()
        self.rebuilds += 1

    def _file_attestation(self, att_id: bytes, target: bytes, t: int, kind: str | None,
                          topic: str | None) -> None:
        self._att_all[att_id] = t
        if kind == "experiment":
            self._att_by_topic.setdefault(topic, {})[att_id] = t
        elif kind is None:  # the target is not stored (yet)
            self._att_waiting.setdefault(target, {})[att_id] = t

    def _kind_topic(self, record_id: bytes) -> tuple[str | None, str | None]:
        row = self.store._conn.execute("SELECT kind, topic FROM records WHERE id = ?",
                                       (record_id,)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def _on_change(self, inserted: list[Any], removed: list[bytes]) -> None:
        if removed:
            self.rebuild()
            return
        changed = False
        for record in inserted:
            if record.kind == "experiment":
                changed = True
                self._add_experiment(record)
            elif record.kind == "attestation":
                changed = True
                self._file_attestation(record.id, record.target, record.t,
                                       *self._kind_topic(record.target))
        if changed:
            self._answers.clear()

    def _add_experiment(self, record: Any) -> None:
        topic = record.topic
        for parent in record.parents:
            kind, parent_topic = self._kind_topic(parent)
            if kind == "experiment":
                self._heads.get(parent_topic, {}).pop(parent, None)
        # a child stored before it (an insert out of order) keeps it from being a head
        if not self.store._conn.execute("SELECT 1 FROM parents WHERE parent = ? LIMIT 1",
                                        (record.id,)).fetchone():
            self._heads.setdefault(topic, {})[record.id] = record.t
        for att_id, t in self._att_waiting.pop(record.id, {}).items():
            self._att_by_topic.setdefault(topic, {})[att_id] = t

    # -- answering
    def answer(self, topics: Sequence[str]) -> list[bytes]:
        """Ids for a `heads` request naming `topics` (already checked; empty: all)."""
        if self.store.data_version() != self._data_version:
            self.rebuild()  # another connection wrote to the file
        key = tuple(sorted(set(topics)))
        cached = self._answers.get(key)
        if cached is not None:
            return cached
        ids: list[bytes] = []
        if key:
            for topic in key:
                ids.extend(_newest_first(self._heads.get(topic, {}), self.limit))
            attestations: dict[bytes, int] = {}
            for topic in key:
                attestations.update(self._att_by_topic.get(topic, {}))
        else:
            every: dict[bytes, int] = {}
            for heads in self._heads.values():
                every.update(heads)
            ids.extend(_newest_first(every, self.limit))
            attestations = self._att_all
        if len(ids) < self.limit:
            ids.extend(sorted(attestations, key=lambda i: (attestations[i], i))
                       [:self.limit - len(ids)])
        ids = list(dict.fromkeys(ids))[:self.limit]
        if len(self._answers) >= MAX_CACHED_ANSWERS:
            self._answers.clear()
        self._answers[key] = ids
        return ids


def _newest_first(heads: dict[bytes, int], limit: int) -> list[bytes]:
    return sorted(heads, key=lambda i: (-heads[i], i))[:limit]

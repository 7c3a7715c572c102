"""Rebuild any record's train.py by applying the patches along its ancestry.

A record's source is its first parent's source with the record's patch applied; the
chain ends at the genome root id, whose source is the base `genome/train.py`. A
two-parent (merge) record carries the merged source's patch against its FIRST parent,
so the same rule covers it.

Sources are cached (LRU). A lookup walks back only to the nearest cached ancestor, and
checkpoints are cached every `CHECKPOINT_EVERY` steps of a long chain, so a deep lineage
is never re-applied from the root twice and siblings share their ancestors' work.

Failures never crash the caller:
- `MissingAncestor`: an ancestor is not stored yet (it is in the store's wanted list);
  try again once sync fetched it.
- `BrokenLineage`: a patch does not apply, or an ancestor is broken. The failing record
  and the record asked for are marked broken in the store with the reason, so `best()`
  never offers them again.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

from swarm.patch import MAX_SOURCE_BYTES, PatchError, apply_patch_lines, split_lines
from swarm.records import Record, load_stored_body
from swarm.store import Store

CHECKPOINT_EVERY = 64
WALK_BATCH = 256  # most ancestors fetched per store query
CACHE_BYTES = 64 * 2**20  # the source cache's memory, estimated by _lines_cost


def _lines_cost(lines: list[str]) -> int:
    """About what a cached source costs in memory: each line is its own string object."""
    return 56 * len(lines) + sum(map(len, lines))


class LineageError(Exception):
    """A record's source cannot be built; the message says why."""


class MissingAncestor(LineageError):
    """An ancestor is not in the store (yet); `missing` is its id."""

    def __init__(self, missing: bytes, reason: str):
        super().__init__(reason)
        self.missing = missing


class BrokenLineage(LineageError):
    """A patch on the way does not apply, or an ancestor is already known broken."""


class Lineage:
    """train.py of any stored experiment, built from `base_source` and the patches."""

    def __init__(self, store: Store, base_source: str, root_id: bytes,
                 cache_size: int = 256):
        if hashlib.sha256(base_source.encode("utf-8")).digest() != root_id:
            raise ValueError("root_id is not the sha256 of base_source")
        self.store = store
        self.base_source = base_source
        self.root_id = root_id
        self._cache_size = max(cache_size, 1)
        self._cache: OrderedDict[bytes, list[str]] = OrderedDict()
        self._cache_cost: dict[bytes, int] = {}
        self._cache_bytes = 0
        self._root_lines = split_lines(base_source)

    def _cached(self, record_id: bytes) -> list[str] | None:
        lines = self._cache.get(record_id)
        if lines is not None:
            self._cache.move_to_end(record_id)
        return lines

    def _remember(self, record_id: bytes, lines: list[str]) -> None:
        if record_id in self._cache:
            self._cache.move_to_end(record_id)
            return
        # bounded by entries and by memory: a source of many tiny lines costs a Python
        # string object per line (about 56 bytes each), whatever its length in bytes
        cost = _lines_cost(lines)
        self._cache[record_id] = lines
        self._cache_cost[record_id] = cost
        self._cache_bytes += cost
        while len(self._cache) > self._cache_size or (
                self._cache_bytes > CACHE_BYTES and len(self._cache) > 1):
            old, _ = self._cache.popitem(last=False)
            self._cache_bytes -= self._cache_cost.pop(old)

    def source_of(self, record_id: bytes) -> str:
        """The train.py of `record_id` (the base source for the genome root id)."""
        return "".join(self._lines_of(record_id))

    def lines_of(self, record_id: bytes) -> list[str]:
        """`source_of` as lines (`patch.split_lines`); shared with the cache: read only."""
        return self._lines_of(record_id)

    def chain(self, record_id: bytes) -> list[Record]:
        """The complete first-parent chain of `record_id`, root edit first.

        Raises MissingAncestor if the chain does not reach the genome root.
        """
        chain = self.store.ancestry(record_id)
        if not chain:
            raise MissingAncestor(record_id, f"{record_id.hex()[:12]} is not stored")
        if chain[0].kind != "experiment":
            raise LineageError(f"{chain[0].id_hex[:12]} is a {chain[0].kind}, "
                               f"not an experiment")
        first_parent = chain[0].parents[0]
        if first_parent != self.root_id:
            raise MissingAncestor(first_parent, f"ancestor {first_parent.hex()[:12]} is "
                                                f"not stored yet")
        return chain

    def is_buildable(self, record_id: bytes) -> bool:
        try:
            self._lines_of(record_id)
            return True
        except LineageError:
            return False

    def _lines_of(self, record_id: bytes) -> list[str]:
        if record_id == self.root_id:
            return self._root_lines
        cached = self._cached(record_id)
        if cached is not None:
            return cached
        # walk back to the root or the nearest cached ancestor, collecting patches;
        # the store hands the walk over in batches, one query each
        steps: list[tuple[bytes, str]] = []
        seen: set[bytes] = set()
        current = record_id
        lines: list[str] | None = None
        batch = 4  # most lookups stop at a cached parent: ask for few rows, then more
        while lines is None:
            rows = self.store.first_parent_walk(current, batch)
            batch = min(batch * 4, WALK_BATCH)
            for row_id, kind, body_bytes, broken in rows:
                if row_id == self.root_id:
                    lines = self._root_lines
                    break
                if row_id != record_id:
                    lines = self._cached(row_id)
                    if lines is not None:
                        break
                if row_id in seen:
                    raise self._broken(record_id, "ancestry has a cycle")
                seen.add(row_id)
                if broken is not None:
                    if row_id == record_id:
                        raise BrokenLineage(f"{record_id.hex()[:12]}: {broken}")
                    raise self._broken(record_id, f"ancestor {row_id.hex()[:12]} is broken: "
                                                  f"{broken}")
                if kind is None:
                    raise MissingAncestor(row_id, f"ancestor {row_id.hex()[:12]} is not "
                                                  f"stored yet")
                if kind != "experiment":
                    raise LineageError(f"{row_id.hex()[:12]} is a {kind}, not an experiment")
                body = load_stored_body(body_bytes)
                steps.append((row_id, body["patch"]))
                current = body["parents"][0]
        # apply root-first
        for n, (step_id, patch) in enumerate(reversed(steps), 1):
            try:
                lines = apply_patch_lines(lines, patch, paths=("train.py",))
                size = sum(map(len, lines))
                if size > MAX_SOURCE_BYTES:  # no train.py this big runs: stop building on it
                    raise PatchError(f"the source grows to {size} characters, over the "
                                     f"{MAX_SOURCE_BYTES}-byte limit on train.py")
            except PatchError as e:
                reason = f"patch does not apply: {e}"
                self.store.mark_broken(step_id, reason)
                if step_id != record_id:
                    self.store.mark_broken(
                        record_id, f"ancestor {step_id.hex()[:12]} is broken: {reason}")
                raise BrokenLineage(f"{step_id.hex()[:12]}: {reason}") from None
            if n % CHECKPOINT_EVERY == 0 or step_id == record_id:
                self._remember(step_id, lines)
        return lines

    def _broken(self, record_id: bytes, reason: str) -> BrokenLineage:
        self.store.mark_broken(record_id, reason)
        return BrokenLineage(f"{record_id.hex()[:12]}: {reason}")

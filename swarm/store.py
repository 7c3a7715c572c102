"""The record store: SQLite in WAL mode in the node's home, free of network I/O.

Durability: `journal_mode=WAL` with `synchronous=FULL`, so a write that returned was
fsynced; nothing acknowledged is lost to a crash or `kill -9`. Every write happens in
one transaction (`atomic()`); schema changes are named migrations, each applied in its
own transaction and recorded in `schema_version`. A store written by a newer schema is
refused rather than misread.

The store verifies nothing: callers insert `Record`s that `records.decode_envelope`
accepted (or that this node built). Inserts are idempotent. An experiment whose parents
are unknown is kept, and its missing parents (except the genome root id) are listed in
`wanted()` until they arrive; likewise an attestation's unknown target and an announced
head. (The node itself does not insert peers' records with unknown parents: they wait in
`swarm.quarantine` until their parents arrive; `swarm.admission`.) Only each author's
newest `announce` is kept: it is presence, not history; with it the store notes when
this node first and last received the author's `working_on` and the promise it makes,
and keeps a bounded number of announces (swarm.announces).

Wanted ids are bounded: at most `MAX_WANTED`, each asked for with a back-off after a
peer did not have it (`missed`), and dropped after `WANTED_MAX_TRIES` misses or
`WANTED_TTL_S` unless a record of ours or of an author we trust needs it (`needed`).
`prune` deletes strangers' records that nothing we protect needs (swarm.retention), and
listeners (`add_listener`) hear of every committed insert and deletion (the sync
server's heads index, swarm.heads).

Threads: a Store owns one SQLite connection and must be used from the thread that
opened it (sqlite3 enforces this). The node calls it from the trio thread; other threads
open their own Store on the same file (WAL lets readers run beside the writer).

Read-only: `Store.open(path, readonly=True)` opens an existing, fully migrated store with a
read-only connection (`mode=ro`, `PRAGMA query_only`) for a reader beside the node (the
dashboard): it creates and migrates nothing, every write raises StoreError, and the same
query methods answer. Such a store may be handed between threads, one call at a time (the
caller serialises them).
"""
from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator

from swarm import announces as ann
from swarm.records import KINDS, Record, load_stored

STORE_FILE = "store.sqlite"

log = logging.getLogger("loopy.swarm.store")

# Wanted ids (see the module docstring). An id only strangers' records reference (or a
# stranger's announced head) is asked for at most WANTED_MAX_TRIES times in all, across
# every peer, and forgotten after an hour: invented ids cannot make each catch-up ask
# each peer again. One our own or a trusted author's record needs is kept for a week.
MAX_WANTED = 8192
WANTED_TTL_S = 3600
WANTED_NEEDED_TTL_S = 7 * 86400
WANTED_MAX_TRIES = 6
WANTED_BACKOFF_S = 30          # after a miss; doubling, at most WANTED_BACKOFF_MAX_S
WANTED_BACKOFF_MAX_S = 900
# What a stored record costs on disk beyond its body and envelope bytes (both are kept):
# the row, its index entries, parent and attestation rows, and page slack; charged above
# the most it was seen to take (docs/LOG.md, 2026-12-03).
STORED_ROW_OVERHEAD = 3072

# (name, statements). Append only: never edit a migration that has shipped.
MIGRATIONS: list[tuple[str, list[str]]] = [
    ("initial schema", [
        """CREATE TABLE records (
            id BLOB PRIMARY KEY,
            kind TEXT NOT NULL,
            author BLOB NOT NULL,
            t INTEGER NOT NULL,
            arena TEXT,
            topic TEXT,
            val_bpb REAL,
            status TEXT,
            body BLOB NOT NULL,
            envelope BLOB NOT NULL,
            received_at INTEGER NOT NULL,
            local INTEGER NOT NULL DEFAULT 0
        )""",
        # key columns first: SQLite 3.40's integrity_check misreports NOT NULL columns
        # placed before the key of a WITHOUT ROWID table
        """CREATE TABLE parents (
            child BLOB NOT NULL, position INTEGER NOT NULL, parent BLOB NOT NULL,
            PRIMARY KEY (child, position)) WITHOUT ROWID""",
        """CREATE TABLE attestations (
            id BLOB PRIMARY KEY, target BLOB NOT NULL, verifier BLOB NOT NULL,
            verdict TEXT NOT NULL, val_bpb REAL, t INTEGER NOT NULL) WITHOUT ROWID""",
        "CREATE TABLE wanted (id BLOB PRIMARY KEY, since INTEGER NOT NULL) WITHOUT ROWID",
        """CREATE TABLE broken (id BLOB PRIMARY KEY, reason TEXT NOT NULL,
            at INTEGER NOT NULL) WITHOUT ROWID""",
        """CREATE TABLE peers (peer_id TEXT PRIMARY KEY, addrs TEXT NOT NULL DEFAULT '[]',
            last_seen INTEGER, reputation REAL NOT NULL DEFAULT 0)""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ]),
    # Every index on a random key costs about one page write per insert, so there are
    # few: the id, parents both ways, best() and one time order per filter.
    ("query indexes", [
        "CREATE INDEX parents_by_parent ON parents (parent)",
        "CREATE INDEX attestations_by_target ON attestations (target, verifier, t)",
        # best(): the lowest ok score per arena is the first index entry; t and id
        # complete the order, so ties need no sort (a topic filters along the scan)
        """CREATE INDEX records_best ON records (arena, val_bpb, t, id)
            WHERE kind = 'experiment' AND status = 'ok'""",
        # heads(), since(), experiments(): newest first by kind, arena or author
        "CREATE INDEX records_by_kind_t ON records (kind, t)",
        "CREATE INDEX records_by_kind_arena ON records (kind, arena, t)",
        "CREATE INDEX records_by_kind_author ON records (kind, author, t)",
    ]),
    # Development snapshots shipped an earlier "query indexes" (more random-key indexes,
    # and heads kept through a `children` column that is no longer maintained). Bring
    # either version to the same indexes; on a new store this only rebuilds records_best.
    ("query indexes for bulk sync", [
        "DROP INDEX IF EXISTS records_best_topic",
        "DROP INDEX IF EXISTS records_heads",
        "DROP INDEX IF EXISTS records_heads_arena",
        "DROP INDEX IF EXISTS records_by_t",
        "DROP INDEX IF EXISTS records_best",
        """CREATE INDEX records_best ON records (arena, val_bpb, t, id)
            WHERE kind = 'experiment' AND status = 'ok'""",
        "CREATE INDEX IF NOT EXISTS records_by_kind_t ON records (kind, t)",
    ]),
    # Announces are hints judged by when WE received them (swarm.announces): the current
    # working_on of each author with its first and last local receipt, and the promises
    # (announced runs) with whether their record came in time. Announces stored before
    # carry no receipt history: drop them (they are presence, renewed every minute).
    ("announce receipts and promises", [
        "DELETE FROM records WHERE kind = 'announce'",
        """CREATE TABLE announce_work (
            author BLOB PRIMARY KEY, id BLOB NOT NULL, working_on TEXT NOT NULL,
            since INTEGER NOT NULL, received_at INTEGER NOT NULL,
            local INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID""",
        "CREATE INDEX announce_work_received ON announce_work (received_at)",
        """CREATE TABLE announce_promises (
            author BLOB NOT NULL, since INTEGER NOT NULL, parent BLOB NOT NULL,
            desc TEXT NOT NULL, target TEXT, deadline INTEGER NOT NULL,
            kept INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (author, since)) WITHOUT ROWID""",
    ]),
    # Bounded wanted ids (tries and back-off, and whether a record we protect needs the
    # id), and retention: one index in receipt order (appended to, so cheap to keep)
    # that covers everything prune() reads of a record, its stored size included, so a
    # prune never reads record bodies.
    ("bounded wanted ids and retention", [
        "ALTER TABLE wanted ADD COLUMN tries INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE wanted ADD COLUMN next_at INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE wanted ADD COLUMN needed INTEGER NOT NULL DEFAULT 0",
        """CREATE INDEX records_retention ON records (received_at, kind, local, author, id,
            (length(body) + length(envelope)))""",
    ]),
    # Reputations read this node's own verdicts (and the records it attested) on every
    # step: without this index each read scans every attestation, a flood's included.
    ("attestations by verifier", [
        "CREATE INDEX attestations_by_verifier ON attestations (verifier, target)",
    ]),
]


# The tables the migrations create: what a read-only open expects to find.
TABLES = frozenset(name for _, statements in MIGRATIONS for statement in statements
                   for name in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", statement))


class StoreError(Exception):
    """The store file cannot be used (newer schema, not a Loopy store), or a write was
    asked of a read-only store."""


@dataclass(frozen=True)
class Peer:
    peer_id: str
    addrs: list[str]
    last_seen: int | None
    reputation: float


def _now_ms() -> int:
    return int(time.time() * 1000)


# FROM and WHERE of attestations `a` made in the arena of their target `rt`: a verdict
# measured in another arena says nothing about the record (hardware differs honestly).
_IN_ITS_ARENA = ("FROM attestations a JOIN records ra ON ra.id = a.id "
                 "JOIN records rt ON rt.id = a.target WHERE ra.arena IS rt.arena")


def _newest_verdicts(rows: Iterable[tuple[bytes, bytes, str]]) -> dict[bytes, dict[bytes, str]]:
    """target -> verifier -> verdict from (target, verifier, verdict) rows in time order:
    each verifier's newest verdict counts (a later run may correct an earlier one)."""
    latest: dict[bytes, dict[bytes, str]] = {}
    for target, verifier, verdict in rows:
        latest.setdefault(target, {})[verifier] = verdict
    return latest


def _ours_or(authors: Iterable[bytes], table: str = "") -> tuple[str, list[bytes]]:
    """A WHERE clause (and its parameters) for records that are ours (local) or by one of
    `authors` (at most 500 of them: one query's parameters)."""
    keys = list(dict.fromkeys(authors))[:500]
    marks = ", ".join("?" * len(keys))
    clause = f"{table}local = 1 OR {table}author IN ({marks})" if keys else f"{table}local = 1"
    return f"({clause})", keys


class Store:
    """Records, their parent links, attestations, wanted ids, broken ids, peers, meta."""

    def __init__(self, conn: sqlite3.Connection, path: Path, root_id: bytes | None,
                 readonly: bool = False):
        self._conn = conn
        self._depth = 0  # nesting of atomic()
        self.path = path
        self.root_id = root_id
        self.readonly = readonly
        # Authors whose records' missing parents and targets are `needed` wanted ids (ours
        # always): the node sets it from its trust (swarm.network).
        self.trusted_authors: frozenset[bytes] = frozenset()
        self._listeners: list[Callable[[list[Record], list[bytes]], None]] = []
        self._inserted: list[Record] = []   # this transaction's, for the listeners
        self._removed: list[bytes] = []
        self._new_wanted = 0  # wanted rows added since the table was last bounded

    # -- opening, migrations, transactions ------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, root_id: bytes | None = None,
             readonly: bool = False) -> "Store":
        """Open (creating and migrating) the store at `path`, a file or a node home.

        `root_id` is the genome root id: a parent that is never wanted, because every
        node rebuilds it from its own genome/train.py. `readonly`: open an existing store
        read-only (see the module docstring); StoreError says why one cannot be.
        """
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / STORE_FILE
        if readonly:
            return cls._open_readonly(path.resolve(), root_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{path}: cannot switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            # a bigger page cache and fewer, larger checkpoints: bulk sync inserts touch
            # index pages all over the file
            conn.execute("PRAGMA cache_size = -65536")         # 64 MiB, used on demand
            conn.execute("PRAGMA wal_autocheckpoint = 16384")  # pages: 64 MiB of WAL
            conn.execute("PRAGMA journal_size_limit = 67108864")
            store = cls(conn, path, root_id)
            store._migrate()
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(f"{path}: not a usable store ({e})") from e
        except BaseException:
            conn.close()
            raise
        return store

    @classmethod
    def _open_readonly(cls, path: Path, root_id: bytes | None) -> "Store":
        if not path.is_file():
            raise StoreError(f"{path}: no store here; start the node first "
                             f"(`loopy start`) or give the right --home")
        conn = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True, timeout=30,
                               check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA query_only = 1")
            conn.execute("PRAGMA busy_timeout = 30000")
            store = cls(conn, path, root_id, readonly=True)
            store._check_schema()
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(f"{path}: not a usable store ({e})") from None
        except BaseException:
            conn.close()
            raise
        return store

    def _check_schema(self) -> None:
        """A read-only store must be complete: it can migrate nothing."""
        tables = {row[0] for row in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            raise StoreError(f"{self.path}: not a Loopy store (it has no schema_version "
                             f"table)" if tables else
                             f"{self.path}: the store is empty (never migrated); start the "
                             f"node once to create its tables")
        version = self.schema_version()
        self._refuse_newer(version)
        if version < len(MIGRATIONS):
            raise StoreError(
                f"{self.path}: the store is partly migrated (schema version {version} of "
                f"{len(MIGRATIONS)}); a read-only reader never writes, so run `loopy status` "
                f"or start the node once to finish the migration")
        missing = TABLES - tables
        if missing:
            raise StoreError(f"{self.path}: the store is damaged: tables "
                             f"{', '.join(sorted(missing))} are missing")
        self._conn.execute("SELECT count(*) FROM records").fetchone()

    def _refuse_newer(self, version: int) -> None:
        if version > len(MIGRATIONS):
            raise StoreError(f"{self.path}: schema version {version} is newer than this "
                             f"Loopy knows ({len(MIGRATIONS)}); upgrade Loopy")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One write transaction; nested uses join the outer one."""
        if self.readonly:
            raise StoreError(f"{self.path}: the store is open read-only: it never writes")
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._inserted, self._removed = [], []
            self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self._conn.execute("COMMIT")
        self._notify()

    def add_listener(self, listener: Callable[[list[Record], list[bytes]], None]) -> None:
        """Call `listener(inserted records, removed ids)` after every commit that inserted
        or deleted records (announces included among inserts). Only this Store object's
        writes: another connection's show in `data_version()`."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[list[Record], list[bytes]], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self) -> None:
        inserted, removed = self._inserted, self._removed
        self._inserted, self._removed = [], []
        if not (inserted or removed):
            return
        for listener in list(self._listeners):
            try:
                listener(inserted, removed)
            except Exception:  # a listener's bug must not undo or fail a committed write
                log.exception("store listener failed")

    def data_version(self) -> int:
        """Changes when another connection commits to the file (not on our own writes)."""
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def change_marker(self) -> tuple[int, int]:
        """Changes whenever the store's content may have: any write of ours (rows changed
        since we opened it) or a commit by another connection."""
        return self._conn.total_changes, self.data_version()

    def schema_version(self) -> int:
        row = self._conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] or 0

    def migrations_applied(self) -> list[tuple[int, str]]:
        return self._conn.execute(
            "SELECT version, name FROM schema_version ORDER BY version").fetchall()

    def _migrate(self) -> None:
        with self.atomic():
            self._conn.execute("""CREATE TABLE IF NOT EXISTS schema_version (
                version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)""")
        current = self.schema_version()
        self._refuse_newer(current)
        for version, (name, statements) in enumerate(MIGRATIONS, 1):
            if version <= current:
                continue
            with self.atomic():
                for statement in statements:
                    self._conn.execute(statement)
                self._conn.execute("INSERT INTO schema_version VALUES (?, ?, ?)",
                                   (version, name, _now_ms()))

    # -- writing --------------------------------------------------------------

    def insert(self, record: Record, local: bool = False) -> bool:
        """Store a verified record; True if it was new. Idempotent."""
        with self.atomic():
            return self._insert(record, local)

    def insert_many(self, records: Iterable[Record], local: bool = False) -> int:
        """Store many verified records in one transaction; returns how many were new."""
        with self.atomic():
            return sum(self._insert(r, local) for r in records)

    def _insert(self, record: Record, local: bool) -> bool:
        c = self._conn
        now = _now_ms()
        if record.kind == "announce":
            newer = c.execute("SELECT 1 FROM records WHERE kind = 'announce' AND author = ? "
                              "AND (t > ? OR id = ?)",
                              (record.author, record.t, record.id)).fetchone()
            if newer:
                return False
            c.execute("DELETE FROM records WHERE kind = 'announce' AND author = ?",
                      (record.author,))
            self._note_announce(record, local, now)
        cur = c.execute(
            "INSERT OR IGNORE INTO records (id, kind, author, t, arena, topic, val_bpb, status,"
            " body, envelope, received_at, local) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (record.id, record.kind, record.author, record.t, record.body.get("arena"),
             record.topic, record.val_bpb, record.status, record.body_bytes, record.envelope,
             now, int(bool(local))))
        if cur.rowcount == 0:
            if local:  # a record we made that came back to us first from a peer
                c.execute("UPDATE records SET local = 1 WHERE id = ?", (record.id,))
            return False
        self._inserted.append(record)
        row = c.execute("DELETE FROM wanted WHERE id = ? RETURNING needed",
                        (record.id,)).fetchone()
        # what this record references is needed when we protect the record itself
        needed = bool(local) or record.author in self.trusted_authors or bool(row and row[0])
        if record.kind == "experiment":
            for position, parent in enumerate(record.parents):
                c.execute("INSERT INTO parents (child, position, parent) VALUES (?, ?, ?)",
                          (record.id, position, parent))
                self._want_if_missing(parent, needed)
            # the run its author announced, if any, came in time: a promise kept
            c.execute("UPDATE announce_promises SET kept = 1 WHERE author = ? AND kept = 0 "
                      "AND parent = ? AND desc = ? AND target IS NULL AND deadline >= ?",
                      (record.author, record.parents[0], record.desc or "", now))
        elif record.kind == "attestation":
            c.execute("INSERT INTO attestations VALUES (?, ?, ?, ?, ?, ?)",
                      (record.id, record.target, record.author, record.verdict,
                       record.val_bpb, record.t))
            self._want_if_missing(record.target, needed)
            c.execute("UPDATE announce_promises SET kept = 1 WHERE author = ? AND kept = 0 "
                      "AND target = ? AND deadline >= ?",
                      (record.author, record.target.hex()[:16], now))
        elif record.kind == "announce" and record.head is not None:
            self._want_if_missing(record.head, needed)
        return True

    def _note_announce(self, record: Record, local: bool, now: int) -> None:
        """Receipt times of an announce, the promise a new working_on makes, and the
        bounds on both (swarm.announces)."""
        c = self._conn
        text = record.working_on or ""
        row = c.execute("SELECT working_on, since FROM announce_work WHERE author = ?",
                        (record.author,)).fetchone()
        since = row[1] if row is not None and row[0] == text else now
        c.execute("INSERT OR REPLACE INTO announce_work VALUES (?, ?, ?, ?, ?, ?)",
                  (record.author, record.id, text, since, now, int(bool(local))))
        promise = ann.promise_of(text) if since == now else None
        if promise is not None:
            deadline = since + int(ann.hold_s(record.body.get("arena")) * 1000)
            c.execute("INSERT OR IGNORE INTO announce_promises (author, since, parent, desc,"
                      " target, deadline) VALUES (?, ?, ?, ?, ?, ?)",
                      (record.author, since, promise.parent, promise.desc, promise.target,
                       deadline))
            c.execute("DELETE FROM announce_promises WHERE author = ? AND since <= coalesce("
                      "(SELECT since FROM announce_promises WHERE author = ? "
                      "ORDER BY since DESC LIMIT 1 OFFSET ?), -1)",
                      (record.author, record.author, ann.PROMISES_PER_AUTHOR))
            self._prune_promises()
        self._prune_announces(now, exclude=record.author)

    def _prune_announces(self, now: int, exclude: bytes = b"") -> None:
        """Drop announces received more than RETAIN_S ago, and beyond
        MAX_STORED_ANNOUNCES those received longest ago (authors who kept a promise
        last). Our own (`local`) announce stays."""
        c = self._conn
        cutoff = now - int(ann.RETAIN_S * 1000)
        doomed = [row[0] for row in c.execute(
            "SELECT author FROM announce_work WHERE received_at < ? AND local = 0",
            (cutoff,))]
        over = c.execute("SELECT count(*) FROM announce_work WHERE local = 0"
                         ).fetchone()[0] - len(doomed) - ann.MAX_STORED_ANNOUNCES
        # those received longest ago first, authors who kept a promise last: one query per
        # kind, each walking the receipt index only as far as it must (a single query
        # ordered by the EXISTS sorted every announce on every insert: 3.4 ms an insert at
        # the cap, which a flood of fresh keys' announces makes every insert)
        for kept in (False, True):
            if over <= 0:
                break
            found = [row[0] for row in c.execute(
                "SELECT w.author FROM announce_work w INDEXED BY announce_work_received "
                "WHERE w.received_at >= ? AND w.local = 0 AND w.author != ? AND "
                f"{'' if kept else 'NOT '}EXISTS (SELECT 1 FROM announce_promises p "
                "WHERE p.author = w.author AND p.kept = 1) "
                "ORDER BY w.received_at, w.author LIMIT ?", (cutoff, exclude, over))]
            doomed += found
            over -= len(found)
        for author in doomed:
            c.execute("DELETE FROM records WHERE kind = 'announce' AND author = ?", (author,))
            c.execute("DELETE FROM announce_work WHERE author = ?", (author,))

    def _prune_promises(self) -> None:
        """Keep at most MAX_PROMISES promises: the oldest unkept ones go first."""
        c = self._conn
        over = c.execute("SELECT count(*) FROM announce_promises").fetchone()[0] \
            - ann.MAX_PROMISES
        if over > 0:
            c.execute("DELETE FROM announce_promises WHERE (author, since) IN (SELECT author,"
                      " since FROM announce_promises ORDER BY kept, since LIMIT ?)", (over,))

    def _want_if_missing(self, record_id: bytes, needed: bool = False) -> None:
        if record_id == self.root_id:
            return
        if self._conn.execute("SELECT 1 FROM records WHERE id = ?", (record_id,)).fetchone():
            return
        cur = self._conn.execute(
            "INSERT INTO wanted (id, since, needed) VALUES (?, ?, ?) ON CONFLICT (id) "
            "DO UPDATE SET needed = max(needed, excluded.needed)",
            (record_id, _now_ms(), int(needed)))
        self._new_wanted += cur.rowcount
        if self._new_wanted >= 256:
            self._bound_wanted(_now_ms())

    def want(self, ids: Iterable[bytes], needed: bool = False) -> int:
        """Add ids learnt elsewhere (a peer's heads, a quarantined record's parents) to
        wanted unless stored; `needed`: a record we protect needs them. Returns the number
        of wanted ids afterwards."""
        with self.atomic():
            for record_id in ids:
                self._want_if_missing(record_id, needed)
            self._bound_wanted(_now_ms())
        return self._conn.execute("SELECT count(*) FROM wanted").fetchone()[0]

    def unwant(self, record_id: bytes) -> None:
        """Stop asking for an id (no peer has it, or it came back invalid)."""
        with self.atomic():
            self._conn.execute("DELETE FROM wanted WHERE id = ?", (record_id,))

    def missed(self, ids: Iterable[bytes], now_ms: int | None = None) -> None:
        """A peer was asked for these wanted ids and did not send them: ask again only
        after a back-off (30 s, doubling, at most 15 min), and forget an id no record we
        protect needs after WANTED_MAX_TRIES misses."""
        now = _now_ms() if now_ms is None else now_ms
        with self.atomic():
            for record_id in ids:
                self._conn.execute(
                    "UPDATE wanted SET next_at = ? + min(?, ? * (1 << min(tries, 20))), "
                    "tries = tries + 1 WHERE id = ?",
                    (now, WANTED_BACKOFF_MAX_S * 1000, WANTED_BACKOFF_S * 1000, record_id))
            self._conn.execute("DELETE FROM wanted WHERE needed = 0 AND tries >= ?",
                               (WANTED_MAX_TRIES,))

    def expire_wanted(self, now_ms: int | None = None) -> int:
        """Drop expired wanted ids and bound the table; returns how many are left."""
        with self.atomic():
            self._bound_wanted(_now_ms() if now_ms is None else now_ms)
        return self._conn.execute("SELECT count(*) FROM wanted").fetchone()[0]

    def _bound_wanted(self, now: int) -> None:
        c = self._conn
        self._new_wanted = 0
        c.execute("DELETE FROM wanted WHERE (needed = 0 AND (since < ? OR tries >= ?)) "
                  "OR since < ?", (now - WANTED_TTL_S * 1000, WANTED_MAX_TRIES,
                                   now - WANTED_NEEDED_TTL_S * 1000))
        over = c.execute("SELECT count(*) FROM wanted").fetchone()[0] - MAX_WANTED
        if over > 0:  # the oldest of those nothing we protect needs go first
            c.execute("DELETE FROM wanted WHERE id IN (SELECT id FROM wanted "
                      "ORDER BY needed, since, id LIMIT ?)", (over,))

    def is_needed(self, record_id: bytes) -> bool:
        """Whether a record we protect (ours, or a trusted author's) references this
        wanted id."""
        row = self._conn.execute("SELECT needed FROM wanted WHERE id = ?",
                                 (record_id,)).fetchone()
        return bool(row and row[0])

    def mark_broken(self, record_id: bytes, reason: str) -> None:
        """Remember that a record's train.py cannot be rebuilt (its lineage is broken)."""
        with self.atomic():
            self._conn.execute("INSERT OR REPLACE INTO broken VALUES (?, ?, ?)",
                               (record_id, reason, _now_ms()))

    # -- retention ------------------------------------------------------------

    def stored_cost(self, record: Record) -> int:
        """What a record costs on disk, as retention and admission count it."""
        return len(record.body_bytes) + len(record.envelope) + STORED_ROW_OVERHEAD

    def protected_ids(self, keep_authors: Iterable[bytes] = (), pins: Iterable[bytes] = (),
                      received_after_ms: int | None = None) -> set[bytes]:
        """Ids `prune` never deletes (see there): a set, for tests and status."""
        with self.atomic():
            self._mark_protected(keep_authors, pins, received_after_ms)
            return {row[0] for row in self._conn.execute("SELECT id FROM temp.prune_keep")}

    def _mark_protected(self, keep_authors: Iterable[bytes], pins: Iterable[bytes],
                        received_after_ms: int | None) -> None:
        """Fill temp.prune_keep: our records, records received after `received_after_ms`,
        the experiments and attestations of `keep_authors`, `pins`, and every record
        these reach through parents and attestation targets."""
        c = self._conn
        c.execute("CREATE TEMP TABLE IF NOT EXISTS prune_authors "
                  "(author BLOB PRIMARY KEY) WITHOUT ROWID")
        c.execute("CREATE TEMP TABLE IF NOT EXISTS prune_pins (id BLOB PRIMARY KEY) WITHOUT ROWID")
        c.execute("CREATE TEMP TABLE IF NOT EXISTS prune_keep (id BLOB PRIMARY KEY) WITHOUT ROWID")
        for table in ("prune_authors", "prune_pins", "prune_keep"):
            c.execute(f"DELETE FROM temp.{table}")
        c.executemany("INSERT OR IGNORE INTO temp.prune_authors VALUES (?)",
                      [(a,) for a in keep_authors])
        c.executemany("INSERT OR IGNORE INTO temp.prune_pins VALUES (?)", [(i,) for i in pins])
        cutoff = received_after_ms if received_after_ms is not None else 1 << 62
        c.execute(
            """INSERT INTO temp.prune_keep
               WITH RECURSIVE keep(id) AS (
                   SELECT id FROM records INDEXED BY records_retention
                       WHERE kind != 'announce' AND (local = 1 OR received_at >= ?)
                   UNION SELECT r.id FROM temp.prune_authors k
                       JOIN records r INDEXED BY records_by_kind_author
                       ON r.kind IN ('experiment', 'attestation') AND r.author = k.author
                   UNION SELECT id FROM temp.prune_pins
                   UNION SELECT p.parent FROM parents p JOIN keep ON p.child = keep.id
                   UNION SELECT a.target FROM attestations a JOIN keep ON a.id = keep.id)
               SELECT id FROM keep""", (cutoff,))

    def prune(self, *, keep_authors: Iterable[bytes], pins: Iterable[bytes] = (),
              quota_bytes: int, min_age_ms: int, now_ms: int | None = None
              ) -> tuple[int, int, int]:
        """Delete strangers' records that nothing protects, oldest received first, until
        those left take at most `quota_bytes` (each counted at `stored_cost`).

        Protected, never deleted: every record of ours (`local`), every experiment and
        attestation authored by `keep_authors` (us and the peers we trust), the `pins`
        (what the node works on now), every record received in the last `min_age_ms`,
        and every record any of these reaches through parents and attestation targets
        (so every lineage a protected record builds on, and every record an attestation
        of ours or of a trusted peer is about). Announces are bounded apart (see
        `_prune_announces`). A record anything protected references is itself protected,
        so what is deleted is only ever referenced by other deleted records: a record goes
        together with everything built on it or attesting it (all unprotected).

        Returns (records deleted, their cost in bytes, cost of the unprotected records
        left)."""
        now = _now_ms() if now_ms is None else now_ms
        cutoff = now - min_age_ms
        c = self._conn
        deleted, freed = 0, 0
        with self.atomic():
            self._mark_protected(keep_authors, pins, cutoff)
            candidates = c.execute(
                "SELECT id, length(body) + length(envelope) FROM records "
                "INDEXED BY records_retention WHERE received_at < ? AND kind != 'announce' "
                "AND local = 0 AND id NOT IN (SELECT id FROM temp.prune_keep) "
                "ORDER BY received_at", (cutoff,)).fetchall()
            total = sum(size + STORED_ROW_OVERHEAD for _, size in candidates)
            gone: set[bytes] = set()
            for record_id, _ in candidates:
                if total <= quota_bytes:
                    break
                if record_id in gone:
                    continue
                subtree = c.execute(
                    """WITH RECURSIVE sub(id) AS (
                           SELECT ?
                           UNION SELECT p.child FROM parents p JOIN sub ON p.parent = sub.id
                           UNION SELECT a.id FROM attestations a JOIN sub ON a.target = sub.id)
                       SELECT sub.id, length(r.body) + length(r.envelope),
                              sub.id IN (SELECT id FROM temp.prune_keep)
                       FROM sub JOIN records r ON r.id = sub.id""", (record_id,)).fetchall()
                if any(kept for _, _, kept in subtree):  # cannot happen: kept is closed
                    log.warning("prune: %s reaches a protected record; kept",
                                record_id.hex()[:12])
                    continue
                for sub_id, size, _ in subtree:
                    if sub_id in gone:
                        continue
                    gone.add(sub_id)
                    for sql in ("DELETE FROM records WHERE id = ?",
                                "DELETE FROM parents WHERE child = ?",
                                "DELETE FROM attestations WHERE id = ?",
                                "DELETE FROM broken WHERE id = ?"):
                        c.execute(sql, (sub_id,))
                    self._removed.append(sub_id)
                    deleted += 1
                    freed += size + STORED_ROW_OVERHEAD
                    total -= size + STORED_ROW_OVERHEAD
        return deleted, freed, total

    def unprotected_bytes(self, keep_authors: Iterable[bytes] = (), pins: Iterable[bytes] = (),
                          received_after_ms: int | None = None) -> int:
        """The cost of the records `prune` could delete (all ages unless
        `received_after_ms`)."""
        with self.atomic():
            self._mark_protected(keep_authors, pins, received_after_ms)
            row = self._conn.execute(
                "SELECT coalesce(sum(length(body) + length(envelope) + ?), 0) FROM records "
                "INDEXED BY records_retention WHERE kind != 'announce' AND local = 0 "
                "AND id NOT IN (SELECT id FROM temp.prune_keep)",
                (STORED_ROW_OVERHEAD,)).fetchone()
        return row[0]

    # -- reading records ------------------------------------------------------

    def _records(self, sql: str, args: tuple = ()) -> list[Record]:
        """Records from a query that selects (id, envelope)."""
        return [load_stored(row[1], bytes(row[0])) for row in self._conn.execute(sql, args)]

    def get(self, record_id: bytes) -> Record | None:
        row = self._conn.execute("SELECT envelope FROM records WHERE id = ?",
                                 (record_id,)).fetchone()
        return load_stored(row[0], bytes(record_id)) if row else None

    def has(self, record_id: bytes) -> bool:
        return self._conn.execute("SELECT 1 FROM records WHERE id = ?",
                                  (record_id,)).fetchone() is not None

    def missing(self, ids: Iterable[bytes]) -> list[bytes]:
        """The ids among `ids` that are not stored, in the given order."""
        return [i for i in ids if not self.has(i)]

    def is_local(self, record_id: bytes) -> bool:
        row = self._conn.execute("SELECT local FROM records WHERE id = ?",
                                 (record_id,)).fetchone()
        return bool(row and row[0])

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            return self._conn.execute("SELECT count(*) FROM records").fetchone()[0]
        return self._conn.execute("SELECT count(*) FROM records WHERE kind = ?",
                                  (kind,)).fetchone()[0]

    def local_experiment_count(self, arena: str) -> int:
        """How many experiments this node ran in `arena` (no record is decoded)."""
        return self._conn.execute(
            "SELECT count(*) FROM records WHERE kind = 'experiment' AND arena = ? AND local = 1",
            (arena,)).fetchone()[0]

    def children(self, record_id: bytes, authors: Iterable[bytes] | None = None
                 ) -> list[Record]:
        """Stored records that name `record_id` as a parent, oldest first; given
        `authors`, only theirs and ours (local)."""
        if authors is None:
            return self._records(
                "SELECT r.id, r.envelope FROM parents p JOIN records r ON r.id = p.child "
                "WHERE p.parent = ? ORDER BY r.t, r.id", (record_id,))
        where, keys = _ours_or(authors, "r.")
        return self._records(
            "SELECT r.id, r.envelope FROM parents p JOIN records r ON r.id = p.child "
            f"WHERE p.parent = ? AND {where} ORDER BY r.t, r.id", (record_id, *keys))

    def parent_ids(self, record_id: bytes) -> list[bytes]:
        return [row[0] for row in self._conn.execute(
            "SELECT parent FROM parents WHERE child = ? ORDER BY position", (record_id,))]

    def first_parent_walk(self, record_id: bytes, max_steps: int
                          ) -> list[tuple[bytes, str | None, bytes | None, str | None]]:
        """`record_id` and its first-parent ancestors, nearest first, in one query.

        Rows are (id, kind, body bytes, broken reason); up to `max_steps` rows. The walk
        ends at the first id that is not stored, which is included with kind and body
        None (the genome root id, or a wanted record).
        """
        rows = self._conn.execute(
            """WITH RECURSIVE chain(id, depth) AS (
                   SELECT ?, 0
                   UNION ALL
                   SELECT p.parent, chain.depth + 1 FROM chain
                   JOIN parents p ON p.child = chain.id AND p.position = 0
                   WHERE chain.depth + 1 < ?)
               SELECT chain.id, r.kind, r.body, b.reason FROM chain
               LEFT JOIN records r ON r.id = chain.id
               LEFT JOIN broken b ON b.id = chain.id
               ORDER BY chain.depth""", (record_id, max_steps)).fetchall()
        return rows

    def ancestry(self, record_id: bytes) -> list[Record]:
        """The first-parent chain ending at `record_id`, root-first.

        It starts at the oldest stored ancestor: `ancestry(x)[0].parents[0]` is the
        genome root id for a complete chain, or a wanted id when one is missing. Empty if
        `record_id` is not stored. Ids are hashes so a cycle cannot happen; a guard stops
        one anyway (a damaged file).
        """
        chain: list[Record] = []
        seen: set[bytes] = set()
        current: bytes | None = record_id
        while current is not None:
            rows = self._conn.execute(
                """WITH RECURSIVE chain(id, depth) AS (
                       SELECT ?, 0
                       UNION ALL
                       SELECT p.parent, chain.depth + 1 FROM chain
                       JOIN parents p ON p.child = chain.id AND p.position = 0
                       WHERE chain.depth + 1 < ?)
                   SELECT chain.id, r.envelope FROM chain
                   JOIN records r ON r.id = chain.id ORDER BY chain.depth""",
                (current, 4096)).fetchall()
            current = None
            for row_id, envelope in rows:
                if row_id in seen:
                    current = None
                    break
                seen.add(row_id)
                record = load_stored(envelope, bytes(row_id))
                chain.append(record)
                current = record.parents[0] if record.kind == "experiment" else None
            if len(rows) < 4096:
                break  # the walk ended inside this batch
        chain.reverse()
        return chain

    def ancestors(self, record_id: bytes) -> set[bytes]:
        """Ids of every stored-or-referenced ancestor through all parents (for merges)."""
        out: set[bytes] = set()
        frontier = [record_id]
        while frontier:
            current = frontier.pop()
            for parent in self.parent_ids(current):
                if parent not in out:
                    out.add(parent)
                    frontier.append(parent)
        return out

    def heads(self, arena: str | None = None, topic: str | None = None,
              limit: int | None = None) -> list[Record]:
        """Experiments no stored record builds on, newest first."""
        # walk experiments newest first until `limit` leaves are found (recent records
        # are mostly leaves, so a limited walk stops early)
        index = "records_by_kind_t" if arena is None else "records_by_kind_arena"
        sql = (f"SELECT r.id, r.envelope FROM records r INDEXED BY {index} "
               "WHERE r.kind = 'experiment'")
        args: list = []
        if arena is not None:
            sql += " AND r.arena = ?"
            args.append(arena)
        if topic is not None:
            sql += " AND r.topic = ?"
            args.append(topic)
        sql += (" AND NOT EXISTS (SELECT 1 FROM parents p WHERE p.parent = r.id)"
                " ORDER BY r.t DESC, r.id")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return self._records(sql, tuple(args))

    def best(self, arena: str, topic: str | None = None, verified_only: bool = False,
             verified_ids: Collection[bytes] | Callable[[Record], bool] | None = None,
             ) -> Record | None:
        """The ok experiment with the lowest val_bpb in `arena` (and `topic`), or None.

        Broken records never count. `verified_ids` (a set of ids, or a predicate on the
        Record) restricts the candidates; without it, `verified_only=True` accepts records
        this node made itself or that another peer attested as reproduced.
        """
        where = ("WHERE r.kind = 'experiment' AND r.status = 'ok' AND r.arena = ?"
                 + (" AND r.topic = ?" if topic is not None else "")
                 + " AND NOT EXISTS (SELECT 1 FROM broken b WHERE b.id = r.id)")
        args = [arena] if topic is None else [arena, topic]
        if verified_ids is None and verified_only:
            where += (" AND (r.local = 1 OR EXISTS (SELECT 1 FROM attestations a "
                      "WHERE a.target = r.id AND a.verdict = 'reproduced' "
                      "AND a.verifier != r.author))")
        order = "ORDER BY r.val_bpb, r.t, r.id"
        if callable(verified_ids):
            for record_id, envelope in self._conn.execute(
                    f"SELECT r.id, r.envelope FROM records r INDEXED BY records_best "
                    f"{where} {order}", args):
                record = load_stored(envelope, bytes(record_id))
                if verified_ids(record):
                    return record
            return None
        # candidates best first, by id only: just the winner's envelope is read
        for (record_id,) in self._conn.execute(
                f"SELECT r.id FROM records r INDEXED BY records_best {where} {order}", args):
            if verified_ids is None or record_id in verified_ids:
                return self.get(record_id)
        return None

    def since(self, t_ms: int, kind: str | None = None) -> list[Record]:
        """Records timed at or after `t_ms`, oldest first."""
        kinds = KINDS if kind is None else (kind,)
        marks = ", ".join("?" * len(kinds))
        return self._records(
            f"SELECT id, envelope FROM records INDEXED BY records_by_kind_t "
            f"WHERE kind IN ({marks}) AND t >= ? ORDER BY t, id", (*kinds, t_ms))

    def experiments(self, arena: str | None = None, topic: str | None = None,
                    author: bytes | None = None, local: bool | None = None,
                    limit: int | None = None, ok_below: float | None = None) -> list[Record]:
        """Experiments matching every given filter, oldest first (newest `limit` if set).
        `ok_below`: only ok runs that scored below it, found without decoding the others
        (a flood of strangers' worse records costs a scan for the best nothing)."""
        sql = "SELECT id, envelope FROM records WHERE kind = 'experiment'"
        args: list = []
        if ok_below is not None:
            sql += " AND status = 'ok' AND val_bpb < ?"
            args.append(float(ok_below))
        for column, value in (("arena", arena), ("topic", topic), ("author", author)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        if local is not None:
            sql += " AND local = ?"
            args.append(int(local))
        if limit is None:
            return self._records(sql + " ORDER BY t, id", tuple(args))
        records = self._records(sql + " ORDER BY t DESC, id LIMIT ?", (*args, limit))
        records.reverse()
        return records

    def receipts(self, ids: Iterable[bytes]) -> dict[bytes, tuple[int, int]]:
        """When this node stored each record of `ids`: (received_at, rowid), so that records
        stored in one millisecond keep the order they were stored in (a new row gets a
        rowid above every row present). A record's own `t` is its author's word."""
        ids = list(ids)
        out: dict[bytes, tuple[int, int]] = {}
        for start in range(0, len(ids), 500):
            batch = ids[start:start + 500]
            rows = self._conn.execute(
                "SELECT id, received_at, rowid FROM records WHERE id IN "
                f"({', '.join('?' * len(batch))})", batch)
            out.update((bytes(row[0]), (row[1], row[2])) for row in rows)
        return out

    def first_receipt(self, author: bytes) -> int | None:
        """When this node first stored an experiment or attestation by `author` that it
        still holds (ms): how long it has known the key, on its own clock."""
        row = self._conn.execute(
            "SELECT min(received_at) FROM records WHERE kind IN ('experiment', 'attestation') "
            "AND author = ?", (author,)).fetchone()
        return row[0] if row else None

    def experiments_of(self, arena: str, authors: Iterable[bytes], limit: int) -> list[Record]:
        """The newest `limit` experiments in `arena` that are ours (local) or by one of
        `authors`, oldest first: one query however many authors."""
        where, keys = _ours_or(authors)
        records = self._records(
            f"SELECT id, envelope FROM records WHERE kind = 'experiment' AND arena = ? "
            f"AND {where} ORDER BY t DESC, id LIMIT ?", (arena, *keys, limit))
        records.reverse()
        return records

    def experiment_ids(self, arena: str | None = None, topic: str | None = None) -> list[bytes]:
        """Ids of the experiments in `arena` (and `topic`), oldest first: cheap (no record
        is decoded)."""
        sql, args = "SELECT id FROM records WHERE kind = 'experiment'", []
        for column, value in (("arena", arena), ("topic", topic)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        return [row[0] for row in self._conn.execute(sql + " ORDER BY t, id", args)]

    def get_many(self, ids: Iterable[bytes]) -> dict[bytes, Record]:
        """The stored records among `ids`, by id (a few queries, however many ids)."""
        ids = list(ids)
        out: dict[bytes, Record] = {}
        for start in range(0, len(ids), 500):
            batch = ids[start:start + 500]
            for record_id, envelope in self._conn.execute(
                    f"SELECT id, envelope FROM records WHERE id IN ({','.join('?' * len(batch))})",
                    batch):
                out[bytes(record_id)] = load_stored(envelope, bytes(record_id))
        return out

    def arenas(self) -> list[tuple[str, int]]:
        """(arena, experiments) of every arena with experiments, most experiments first."""
        return self._conn.execute(
            "SELECT arena, count(*) FROM records WHERE kind = 'experiment' "
            "GROUP BY arena ORDER BY count(*) DESC, arena").fetchall()

    def topics(self, arena: str) -> list[str]:
        """The topics of the arena's experiments, in name order."""
        return [row[0] for row in self._conn.execute(
            "SELECT DISTINCT topic FROM records WHERE kind = 'experiment' AND arena = ? "
            "ORDER BY topic", (arena,))]

    def announces(self) -> list[Record]:
        """Each author's newest announce, newest first (at most MAX_STORED_ANNOUNCES
        of others', and ours)."""
        return self._records("SELECT id, envelope FROM records WHERE kind = 'announce' "
                             "ORDER BY t DESC, id")

    def live_announces(self, received_since_ms: int
                       ) -> list[tuple[bytes, str | None, str, int, int]]:
        """(author, arena, working_on, received_at, since) of the announces received at
        or after `received_since_ms` by our clock, latest receipt first; `since`: when we
        first received the author's current working_on. Nothing is decoded."""
        return self._conn.execute(
            "SELECT w.author, r.arena, w.working_on, w.received_at, w.since "
            "FROM announce_work w INDEXED BY announce_work_received "
            "JOIN records r ON r.id = w.id WHERE w.received_at >= ? "
            "ORDER BY w.received_at DESC, w.author", (received_since_ms,)).fetchall()

    def announce_tallies(self, authors: Iterable[bytes], now_ms: int | None = None
                         ) -> dict[bytes, tuple[int, int]]:
        """Author -> (promises kept, promises broken): announced runs whose record came
        before the deadline, and those whose deadline passed without one."""
        now_ms = _now_ms() if now_ms is None else now_ms
        authors = list(dict.fromkeys(authors))
        out: dict[bytes, tuple[int, int]] = {}
        for i in range(0, len(authors), 500):
            chunk = authors[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            for author, kept, broken in self._conn.execute(
                    f"SELECT author, sum(kept), sum(kept = 0 AND deadline < ?) "
                    f"FROM announce_promises WHERE author IN ({marks}) GROUP BY author",
                    (now_ms, *chunk)):
                out[author] = (kept, broken)
        return out

    def next_promise_deadline(self, now_ms: int) -> int | None:
        """The earliest deadline, at or after `now_ms`, of a promise not kept yet: the
        next moment an author's tally (swarm.announces) can change without a write."""
        return self._conn.execute(
            "SELECT min(deadline) FROM announce_promises WHERE kept = 0 AND deadline >= ?",
            (now_ms,)).fetchone()[0]

    def wanted(self, limit: int | None = None, now_ms: int | None = None) -> list[bytes]:
        """Ids to ask peers for now, oldest request first: referenced by stored (or
        quarantined) records but not stored, not expired, and not in a back-off after a
        miss (see `missed`)."""
        now = _now_ms() if now_ms is None else now_ms
        sql = ("SELECT id FROM wanted WHERE next_at <= ? AND since >= "
               "(CASE WHEN needed THEN ? ELSE ? END) AND (needed OR tries < ?) "
               "ORDER BY since, id")
        args: tuple = (now, now - WANTED_NEEDED_TTL_S * 1000, now - WANTED_TTL_S * 1000,
                       WANTED_MAX_TRIES)
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        return [row[0] for row in self._conn.execute(sql, args)]

    def wanted_count(self) -> int:
        """Rows in the wanted table (due or not)."""
        return self._conn.execute("SELECT count(*) FROM wanted").fetchone()[0]

    # -- attestations ---------------------------------------------------------

    def attestations_for(self, record_id: bytes) -> list[Record]:
        return self._records(
            "SELECT r.id, r.envelope FROM attestations a JOIN records r ON r.id = a.id "
            "WHERE a.target = ? ORDER BY a.t, a.id", (record_id,))

    def _verifiers(self, record_id: bytes, verdict: str) -> list[bytes]:
        latest = _newest_verdicts(self._conn.execute(
            f"SELECT a.target, a.verifier, a.verdict {_IN_ITS_ARENA} AND a.target = ? "
            "ORDER BY a.t, a.id", (record_id,))).get(record_id, {})
        return [verifier for verifier, v in latest.items() if v == verdict]

    def newest_verdicts(self) -> dict[bytes, tuple[list[bytes], list[bytes]]]:
        """Every attested record -> (who_reproduced, who_refuted) of it, in one query."""
        return {target: ([k for k, v in by.items() if v == "reproduced"],
                         [k for k, v in by.items() if v == "refuted"])
                for target, by in _newest_verdicts(self._conn.execute(
                    f"SELECT a.target, a.verifier, a.verdict {_IN_ITS_ARENA} "
                    "ORDER BY a.t, a.id")).items()}

    def who_reproduced(self, record_id: bytes) -> list[bytes]:
        """Public keys whose newest attestation of `record_id` says reproduced."""
        return self._verifiers(record_id, "reproduced")

    def attestation_count(self, verifier: bytes) -> int:
        return self._conn.execute("SELECT count(*) FROM attestations WHERE verifier = ?",
                                  (verifier,)).fetchone()[0]

    def verdict_counts(self, verifier: bytes) -> list[tuple[bytes, str, int]]:
        """(author, verdict, count) of `verifier`'s attestations of other authors' records."""
        return self._conn.execute(
            "SELECT r.author, a.verdict, count(*) FROM attestations a "
            "JOIN records r ON r.id = a.target WHERE a.verifier = ? AND r.author != ? "
            "GROUP BY r.author, a.verdict", (verifier, verifier)).fetchall()

    def dissent_counts(self, verifier: bytes) -> list[tuple[bytes, int]]:
        """(other verifier, count) of the records `verifier` attested that the other one
        attested with the opposite verdict, at any time (a verdict flipped once ours is
        known still counts), in the record's own arena (as every verdict: scores in
        another arena differ honestly). `verifier`'s newest verdict is its own; a record's
        author is no verifier of it."""
        rows = self._conn.execute(
            f"SELECT a.target, a.verifier, a.verdict, rt.author {_IN_ITS_ARENA} AND "
            "a.target IN (SELECT target FROM attestations WHERE verifier = ?) "
            "ORDER BY a.t, a.id", (verifier,)).fetchall()
        mine = {target: verdict for target, v, verdict, _ in rows if v == verifier}
        against: set[tuple[bytes, bytes]] = set()
        for target, other, verdict, author in rows:
            if other not in (verifier, author) and target in mine and verdict != mine[target]:
                against.add((other, target))
        counts: dict[bytes, int] = {}
        for other, _ in against:
            counts[other] = counts.get(other, 0) + 1
        return sorted(counts.items())

    def who_refuted(self, record_id: bytes) -> list[bytes]:
        """Public keys whose newest attestation of `record_id` says refuted."""
        return self._verifiers(record_id, "refuted")

    # -- broken ---------------------------------------------------------------

    def broken_reason(self, record_id: bytes) -> str | None:
        row = self._conn.execute("SELECT reason FROM broken WHERE id = ?",
                                 (record_id,)).fetchone()
        return row[0] if row else None

    def broken(self) -> dict[bytes, str]:
        return dict(self._conn.execute("SELECT id, reason FROM broken"))

    # -- peers and meta -------------------------------------------------------

    def upsert_peer(self, peer_id: str, addrs: list[str] | None = None,
                    last_seen: int | None = None) -> None:
        """Record a peer; given addrs replace the old ones, last_seen only moves forward."""
        with self.atomic():
            self._conn.execute("INSERT OR IGNORE INTO peers (peer_id) VALUES (?)", (peer_id,))
            if addrs is not None:
                self._conn.execute("UPDATE peers SET addrs = ? WHERE peer_id = ?",
                                   (json.dumps(list(addrs)), peer_id))
            if last_seen is not None:
                self._conn.execute(
                    "UPDATE peers SET last_seen = max(coalesce(last_seen, 0), ?) "
                    "WHERE peer_id = ?", (last_seen, peer_id))

    def set_reputation(self, peer_id: str, reputation: float) -> None:
        with self.atomic():
            self._conn.execute("INSERT OR IGNORE INTO peers (peer_id) VALUES (?)", (peer_id,))
            self._conn.execute("UPDATE peers SET reputation = ? WHERE peer_id = ?",
                               (float(reputation), peer_id))

    def peer(self, peer_id: str) -> Peer | None:
        row = self._conn.execute("SELECT peer_id, addrs, last_seen, reputation FROM peers "
                                 "WHERE peer_id = ?", (peer_id,)).fetchone()
        return Peer(row[0], json.loads(row[1]), row[2], row[3]) if row else None

    def peers(self) -> list[Peer]:
        """Known peers, most recently seen first."""
        return [Peer(p, json.loads(a), s, r) for p, a, s, r in self._conn.execute(
            "SELECT peer_id, addrs, last_seen, reputation FROM peers "
            "ORDER BY last_seen DESC NULLS LAST, peer_id")]

    # the discovery.PeerBook protocol
    def load_peers(self) -> list[tuple[str, list[str]]]:
        return [(p.peer_id, p.addrs) for p in self.peers()]

    def save_peer(self, peer_id: str, addrs: list[str], last_seen_ms: int) -> None:
        self.upsert_peer(peer_id, addrs, last_seen_ms)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.atomic():
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def integrity_check(self) -> str:
        return self._conn.execute("PRAGMA integrity_check").fetchone()[0]

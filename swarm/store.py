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
head. Only each author's newest `announce` is kept: it is presence, not history.

Threads: a Store owns one SQLite connection and must be used from the thread that
opened it (sqlite3 enforces this). The node calls it from the trio thread; other threads
open their own Store on the same file (WAL lets readers run beside the writer).
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator

from swarm.records import KINDS, Record, load_stored

STORE_FILE = "store.sqlite"

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
]


class StoreError(Exception):
    """The store file cannot be used (newer schema, not a Loopy store)."""


@dataclass(frozen=True)
class Peer:
    peer_id: str
    addrs: list[str]
    last_seen: int | None
    reputation: float


def _now_ms() -> int:
    return int(time.time() * 1000)


class Store:
    """Records, their parent links, attestations, wanted ids, broken ids, peers, meta."""

    def __init__(self, conn: sqlite3.Connection, path: Path, root_id: bytes | None):
        self._conn = conn
        self._depth = 0  # nesting of atomic()
        self.path = path
        self.root_id = root_id

    # -- opening, migrations, transactions ------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, root_id: bytes | None = None) -> "Store":
        """Open (creating and migrating) the store at `path`, a file or a node home.

        `root_id` is the genome root id: a parent that is never wanted, because every
        node rebuilds it from its own genome/train.py.
        """
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / STORE_FILE
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

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One write transaction; nested uses join the outer one."""
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
            self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self._conn.execute("COMMIT")

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
        if current > len(MIGRATIONS):
            raise StoreError(f"{self.path}: schema version {current} is newer than this "
                             f"Loopy knows ({len(MIGRATIONS)}); upgrade Loopy")
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
        if record.kind == "announce":
            newer = c.execute("SELECT 1 FROM records WHERE kind = 'announce' AND author = ? "
                              "AND (t > ? OR id = ?)",
                              (record.author, record.t, record.id)).fetchone()
            if newer:
                return False
            c.execute("DELETE FROM records WHERE kind = 'announce' AND author = ?",
                      (record.author,))
        cur = c.execute(
            "INSERT OR IGNORE INTO records (id, kind, author, t, arena, topic, val_bpb, status,"
            " body, envelope, received_at, local) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (record.id, record.kind, record.author, record.t, record.body.get("arena"),
             record.topic, record.val_bpb, record.status, record.body_bytes, record.envelope,
             _now_ms(), int(bool(local))))
        if cur.rowcount == 0:
            if local:  # a record we made that came back to us first from a peer
                c.execute("UPDATE records SET local = 1 WHERE id = ?", (record.id,))
            return False
        c.execute("DELETE FROM wanted WHERE id = ?", (record.id,))
        if record.kind == "experiment":
            for position, parent in enumerate(record.parents):
                c.execute("INSERT INTO parents (child, position, parent) VALUES (?, ?, ?)",
                          (record.id, position, parent))
                self._want_if_missing(parent)
        elif record.kind == "attestation":
            c.execute("INSERT INTO attestations VALUES (?, ?, ?, ?, ?, ?)",
                      (record.id, record.target, record.author, record.verdict,
                       record.val_bpb, record.t))
            self._want_if_missing(record.target)
        elif record.kind == "announce" and record.head is not None:
            self._want_if_missing(record.head)
        return True

    def _want_if_missing(self, record_id: bytes) -> None:
        if record_id == self.root_id:
            return
        if self._conn.execute("SELECT 1 FROM records WHERE id = ?", (record_id,)).fetchone():
            return
        self._conn.execute("INSERT OR IGNORE INTO wanted VALUES (?, ?)", (record_id, _now_ms()))

    def want(self, ids: Iterable[bytes]) -> int:
        """Add ids learnt elsewhere (a peer's heads) to wanted unless stored; returns the
        number of wanted ids afterwards."""
        with self.atomic():
            for record_id in ids:
                self._want_if_missing(record_id)
        return self._conn.execute("SELECT count(*) FROM wanted").fetchone()[0]

    def unwant(self, record_id: bytes) -> None:
        """Stop asking for an id (no peer has it, or it came back invalid)."""
        with self.atomic():
            self._conn.execute("DELETE FROM wanted WHERE id = ?", (record_id,))

    def mark_broken(self, record_id: bytes, reason: str) -> None:
        """Remember that a record's train.py cannot be rebuilt (its lineage is broken)."""
        with self.atomic():
            self._conn.execute("INSERT OR REPLACE INTO broken VALUES (?, ?, ?)",
                               (record_id, reason, _now_ms()))

    # -- reading records ------------------------------------------------------

    def _records(self, sql: str, args: tuple = ()) -> list[Record]:
        return [load_stored(row[0]) for row in self._conn.execute(sql, args)]

    def get(self, record_id: bytes) -> Record | None:
        row = self._conn.execute("SELECT envelope FROM records WHERE id = ?",
                                 (record_id,)).fetchone()
        return load_stored(row[0]) if row else None

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

    def children(self, record_id: bytes) -> list[Record]:
        """Stored records that name `record_id` as a parent, oldest first."""
        return self._records(
            "SELECT r.envelope FROM parents p JOIN records r ON r.id = p.child "
            "WHERE p.parent = ? ORDER BY r.t, r.id", (record_id,))

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
                record = load_stored(envelope)
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
        sql = f"SELECT r.envelope FROM records r INDEXED BY {index} WHERE r.kind = 'experiment'"
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
            for (envelope,) in self._conn.execute(
                    f"SELECT r.envelope FROM records r INDEXED BY records_best {where} {order}",
                    args):
                record = load_stored(envelope)
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
            f"SELECT envelope FROM records INDEXED BY records_by_kind_t "
            f"WHERE kind IN ({marks}) AND t >= ? ORDER BY t, id", (*kinds, t_ms))

    def experiments(self, arena: str | None = None, topic: str | None = None,
                    author: bytes | None = None, local: bool | None = None,
                    limit: int | None = None) -> list[Record]:
        """Experiments matching every given filter, oldest first (newest `limit` if set)."""
        sql = "SELECT envelope FROM records WHERE kind = 'experiment'"
        args: list = []
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

    def experiment_ids(self, arena: str) -> list[bytes]:
        """Ids of the arena's experiments, oldest first: cheap (no record is decoded)."""
        return [row[0] for row in self._conn.execute(
            "SELECT id FROM records WHERE kind = 'experiment' AND arena = ? ORDER BY t, id",
            (arena,))]

    def announces(self) -> list[Record]:
        """Each author's newest announce, newest first."""
        return self._records("SELECT envelope FROM records WHERE kind = 'announce' "
                             "ORDER BY t DESC, id")

    def wanted(self) -> list[bytes]:
        """Ids referenced by stored records but not stored, oldest request first."""
        return [row[0] for row in self._conn.execute(
            "SELECT id FROM wanted ORDER BY since, id")]

    # -- attestations ---------------------------------------------------------

    def attestations_for(self, record_id: bytes) -> list[Record]:
        return self._records(
            "SELECT r.envelope FROM attestations a JOIN records r ON r.id = a.id "
            "WHERE a.target = ? ORDER BY a.t, a.id", (record_id,))

    def _verifiers(self, record_id: bytes, verdict: str) -> list[bytes]:
        # each verifier's newest verdict counts (a later run may correct an earlier one)
        rows = self._conn.execute(
            "SELECT verifier, verdict FROM attestations WHERE target = ? ORDER BY t, id",
            (record_id,)).fetchall()
        latest = {verifier: v for verifier, v in rows}
        return [verifier for verifier, v in latest.items() if v == verdict]

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

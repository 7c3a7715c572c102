"""What the dashboard serves, read from a node's home through a read-only connection.

The dashboard runs in threads beside the node, so it opens its OWN Store on the node's
file, read-only (Store.open(readonly=True): `mode=ro` and `PRAGMA query_only`): WAL lets
it read while the node writes, and nothing it does can change the store. Every query is
the Store's own: the dashboard holds no SQL and no schema of its own. The one write the lineage
code makes as a side effect (marking a record broken when its patch does not apply) is
kept in memory here instead; the node marks it itself when it meets the record.

One connection serves every request thread, one request at a time (a lock); answers
are cached until the store changes (SQLite's `data_version` moves when another
connection commits), so a page that polls costs a query, not a rescan.

A store this Loopy cannot read, a newer or partly migrated schema, a missing file: each
is a `DashboardError` whose message says what is wrong and what to do.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

import msgpack

from experiments.research.home import STATUS_FILE, read_status_file
from experiments.research.scoreboard import Scoreboard, ScoreRules
from experiments.views.arena_view import ArenaView, lineage_tree, read_arena
from genome import base_train_source, genome_root_id
from swarm.export import export_patch
from swarm.identity import KEY_FILE, IdentityError, NodeIdentity, peer_id_from_public_key
from swarm.lineage import Lineage, LineageError
from swarm.records import ARENA_RE, TOPIC_RE, Record, RecordError
from swarm.store import Store, StoreError
from swarm.trust import TrustPolicy, TrustRules

log = logging.getLogger(__name__)

MAX_DECODED = 50_000            # decoded records kept between store changes
STALE_STATUS_S = 15.0           # status.json older than this: the node is not running
# what reading a damaged store can raise (load_stored trusts bytes the store holds)
STORE_READ_ERRORS = (sqlite3.DatabaseError, LineageError, RecordError,
                     msgpack.exceptions.UnpackException, ValueError, KeyError, TypeError)


class DashboardError(RuntimeError):
    """The dashboard cannot start or cannot read the store; the message says why."""


class NotFound(Exception):
    """A well-formed request for something that does not exist (yet)."""


class BadRequest(Exception):
    """A query parameter the dashboard does not accept."""


_NOBODY: tuple[list[bytes], list[bytes]] = ([], [])  # no verdicts (shared: read only)


class ReadOnlyStore(Store):
    """The node's Store opened read-only (Store.open(readonly=True)), with answers kept.

    Scoring a whole arena asks every record's verifiers and reads the arena's
    experiments more than once; this store answers those from one query each until
    `forget()` (called when the store changed). Records are content-addressed, so
    decoded ones are kept across changes: a new record costs one decode, not a rescan.
    The one write the lineage code makes as a side effect (marking a record broken) is
    kept in memory.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.broken_seen: dict[bytes, str] = {}
        self._decoded: dict[bytes, Record] = {}
        self._lists: dict[tuple, list[bytes]] = {}
        self._verdicts: dict[bytes, tuple[list[bytes], list[bytes]]] | None = None

    def forget(self) -> None:
        """The store changed: drop answers (decoded records stay, they cannot change)."""
        self._lists, self._verdicts = {}, None
        if len(self._decoded) > MAX_DECODED:
            self._decoded = {}

    def experiments(self, arena: str | None = None, topic: str | None = None,
                    author: bytes | None = None, local: bool | None = None,
                    limit: int | None = None, ok_below: float | None = None) -> list[Record]:
        if author is not None or local is not None or limit is not None:
            return super().experiments(arena, topic, author, local, limit, ok_below)
        key = (arena, topic)
        if key not in self._lists:
            ids = self.experiment_ids(arena, topic)
            self._decoded.update(self.get_many(i for i in ids if i not in self._decoded))
            self._lists[key] = ids
        found = [self._decoded[i] for i in self._lists[key]]
        if ok_below is None:
            return found
        return [r for r in found if r.status == "ok" and r.val_bpb is not None
                and r.val_bpb < ok_below]

    def who_reproduced(self, record_id: bytes) -> list[bytes]:
        return self._newest_verdicts().get(record_id, _NOBODY)[0]

    def who_refuted(self, record_id: bytes) -> list[bytes]:
        return self._newest_verdicts().get(record_id, _NOBODY)[1]

    def _newest_verdicts(self) -> dict[bytes, tuple[list[bytes], list[bytes]]]:
        if self._verdicts is None:
            self._verdicts = self.newest_verdicts()
        return self._verdicts

    def atomic(self):
        raise DashboardError("the dashboard is read-only: it never writes to the store")

    def mark_broken(self, record_id: bytes, reason: str) -> None:
        self.broken_seen[record_id] = reason


def open_readonly(home: str | Path, root_id: bytes) -> ReadOnlyStore:
    """The node's store, opened read-only; DashboardError with the reason if unusable."""
    try:
        return ReadOnlyStore.open(home, root_id=root_id, readonly=True)
    except StoreError as e:
        raise DashboardError(str(e)) from None


def read_public_key(home: Path) -> bytes:
    """This node's public key if its home has one; b"" (nobody) otherwise. Never creates."""
    if not (home / KEY_FILE).is_file():
        return b""
    try:
        return NodeIdentity.load_or_create(home).public_key
    except IdentityError as e:
        raise DashboardError(str(e)) from None


def check_params(query: dict[str, list[str]], allowed: tuple[str, ...]) -> dict[str, str]:
    """One value per allowed parameter, each checked against its record field's rule."""
    out = {}
    for key, values in query.items():
        if key not in allowed:
            raise BadRequest(f"unknown parameter {key!r}")
        if len(values) != 1:
            raise BadRequest(f"parameter {key!r} given {len(values)} times")
        value = values[0]
        rule = ARENA_RE if key == "arena" else TOPIC_RE
        if value and not rule.fullmatch(value):
            raise BadRequest(f"{key} {value[:80]!r} is not a valid {key}")
        if value:
            out[key] = value
    return out


class DashboardSource:
    """Answers for every dashboard route, from one read-only view of a node's home."""

    def __init__(self, home: str | Path, *, arena: str | None = None, me: bytes | None = None,
                 rules: ScoreRules | None = None, trust_rules: TrustRules | None = None,
                 snapshot: Callable[[], dict] | None = None):
        self.home = Path(home).expanduser()
        self.root_id = genome_root_id()
        self.store = open_readonly(self.home, self.root_id)
        try:
            self.me = read_public_key(self.home) if me is None else me
        except DashboardError:
            self.store.close()
            raise
        self.lineage = Lineage(self.store, base_train_source(), self.root_id)
        self.default_arena = arena
        self.rules = rules or ScoreRules()
        self.trust_rules = trust_rules or TrustRules()
        self.snapshot = snapshot
        self.lock = threading.Lock()
        self._version: int | None = None
        self._cache: dict[tuple, object] = {}
        self._closed = False

    def close(self) -> None:
        with self.lock:
            if not self._closed:
                self._closed = True
                self.store.close()

    # -- caching --------------------------------------------------------------

    def _fresh(self) -> None:
        """Drop cached answers if the node committed anything since they were made."""
        if self._closed:
            raise DashboardError("the dashboard is shutting down")
        version = self.store.data_version()
        if version != self._version:
            self._version, self._cache = version, {}
            self.store.forget()

    def _cached(self, key: tuple, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _arena(self, arena: str | None) -> str | None:
        if arena:
            return arena
        if self.default_arena:
            return self.default_arena
        saved = self.store.get_meta("node.arena")
        if saved:
            return saved
        arenas = self.store.arenas()
        return arenas[0][0] if arenas else None

    def _trust(self) -> TrustPolicy:
        return TrustPolicy(self.store, self.me, self.trust_rules)

    def _view(self, arena: str, topic: str | None) -> ArenaView:
        def make():
            trust = self._trust()
            board = Scoreboard(self.store, self.lineage, self.root_id, arena, self.rules,
                               trust.is_verified, trust.trusted_author)
            return read_arena(board, trust, topic)
        return self._cached(("view", arena, topic), make)

    # -- routes ---------------------------------------------------------------

    def status(self) -> dict:
        """The node's live snapshot (what `loopy status --json` prints)."""
        if self.snapshot is not None:
            snap = json.loads(json.dumps(self.snapshot(), default=str))
            if not isinstance(snap, dict):
                return {"running": True, "note": "the node's snapshot is not a map"}
            snap.setdefault("running", True)
            return snap
        snap = read_status_file(self.home)
        if snap is None:
            return {"running": False, "note": f"no readable {STATUS_FILE} in the node's home"}
        updated = snap.get("updated")
        fresh = isinstance(updated, (int, float)) and time.time() - updated < STALE_STATUS_S
        snap["running"] = bool(fresh and not snap.get("stopped"))
        return snap

    def status_json(self) -> bytes:
        return encode_json(self.status())

    def experiments_json(self, params: dict[str, str]) -> bytes:
        """Every experiment of the arena, scored, with the running best."""
        with self.lock:
            self._fresh()
            arena = self._arena(params.get("arena"))
            topic = params.get("topic")
            return self._cached(("experiments", arena, topic),
                                lambda: encode_json(self._experiments(arena, topic)))

    def _experiments(self, arena: str | None, topic: str | None) -> dict:
        arenas = [{"arena": a, "experiments": n} for a, n in self.store.arenas()]
        if arena is None:
            return {"arena": None, "topic": topic, "arenas": arenas, "topics": [],
                    "experiments": [], "running_best": [], "counts": {}, "sigma": None,
                    "root": None, "best": None}
        view = self._view(arena, topic)
        best = None
        if view.best is not None:
            best = {"id": view.best_id, "val_bpb": view.best.val_bpb,
                    "genome_root": view.best.record is None}
        return {"arena": arena, "topic": topic, "arenas": arenas,
                "topics": self.store.topics(arena),
                "synthetic": arena.startswith("synthetic/"),
                "sigma": view.sigma, "noise_k": view.noise_k,
                "root": {"id": view.root_id, "val_bpb": view.root_score},
                "best": best, "counts": view.counts(),
                "experiments": [row.to_json() for row in view.rows],
                "running_best": view.running_best()}

    def lineage_json(self, params: dict[str, str]) -> bytes:
        """The kept edits as a tree from the genome root to the heads."""
        with self.lock:
            self._fresh()
            arena = self._arena(params.get("arena"))
            topic = params.get("topic")

            def make():
                if arena is None:
                    return {"arena": None, "topic": topic, "root": {"id": self.root_id.hex()},
                            "best": None, "nodes": [], "kept": 0, "truncated": 0,
                            "outside": []}
                return lineage_tree(self._view(arena, topic))
            return self._cached(("lineage", arena, topic), lambda: encode_json(make()))

    def peers_json(self) -> bytes:
        """Every peer this node knows, with reputation; `connected` from the live node."""
        status = self.status()  # outside the lock: reads a file or the node's callable
        with self.lock:
            self._fresh()
            live = status.get("peers") if status.get("running") else None
            connected = {p.get("peer_id"): p for p in live if isinstance(p, dict)} \
                if isinstance(live, list) else {}
            arena = self._arena(None)
            known = self._cached(("peers", arena), lambda: self._known_peers(arena))
            return encode_json(self._peers(known, connected, arena))

    def _known_peers(self, arena: str | None) -> tuple:
        """What the store says about peers: reputations, announces, peers table, work."""
        reps = {peer_id_from_public_key(k): v for k, v in self._trust().reputations().items()
                if len(k) == 32}
        announces = {a.author_peer_id: a for a in self.store.announces()}
        stored = {p.peer_id: p for p in self.store.peers()}
        work: dict[str, dict[str, int]] = {}
        if arena is not None:
            for row in self._view(arena, None).rows:
                n = work.setdefault(row.author, {"experiments": 0, "kept": 0})
                n["experiments"] += 1
                n["kept"] += row.kept
        return reps, announces, stored, work

    def _peers(self, known: tuple, connected: dict, arena: str | None) -> dict:
        reps, announces, stored, work = known
        me = peer_id_from_public_key(self.me) if len(self.me) == 32 else None
        rows = []
        for peer_id in sorted(set(stored) | set(reps) | set(announces) | set(connected)
                              | set(work)):
            if not isinstance(peer_id, str):
                continue
            p, a, live = stored.get(peer_id), announces.get(peer_id), connected.get(peer_id)
            rep = reps.get(peer_id, 0.0)
            rows.append({
                "peer_id": peer_id, "me": peer_id == me, "connected": live is not None,
                "reputation": None if peer_id == me else rep,
                "trusted": peer_id == me or rep >= self.trust_rules.trust_threshold,
                "liar": peer_id != me and rep < self.trust_rules.liar_threshold,
                "addrs": list((live or {}).get("addrs") or (p.addrs if p else [])),
                "last_seen": p.last_seen if p else None,
                "topics": list(a.topics) if a else [], "arena": a.arena if a else None,
                "working_on": a.working_on if a else None,
                "head": a.head.hex() if a and a.head else None,
                **work.get(peer_id, {"experiments": 0, "kept": 0})})
        rows.sort(key=lambda r: (not r["me"], not r["connected"],
                                 -(r["reputation"] or 0.0), r["peer_id"]))
        return {"arena": arena, "peers": rows,
                "trust": {"k": self.trust_rules.k,
                          "trust_threshold": self.trust_rules.trust_threshold,
                          "liar_threshold": self.trust_rules.liar_threshold}}

    def best_patch(self, params: dict[str, str]) -> tuple[str, str]:
        """(file name, patch text): `loopy export` of the best verified record."""
        with self.lock:
            self._fresh()
            arena = self._arena(params.get("arena"))
            topic = params.get("topic")
            where = f"arena {arena}" + (f", topic {topic}" if topic else "")
            if arena is None:
                raise NotFound("no experiments in the store yet: nothing to export")
            view = self._view(arena, topic)
            if view.best is None or view.best.record is None:
                raise NotFound(f"no verified improvement in {where} yet: nothing to export")
            record_id = view.best.id
            text = self._cached(("patch", record_id), lambda: export_patch(self.lineage,
                                                                           record_id))
            return f"loopy-{record_id.hex()[:12]}.patch", text


def encode_json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str).encode()


def describe_error(error: BaseException) -> str:
    """A store-read failure as one line for the page's banner."""
    if isinstance(error, DashboardError):
        return str(error)
    log.debug("dashboard: reading the store failed", exc_info=error)
    return (f"cannot read the store ({type(error).__name__}: {error}); it may be damaged: "
            f"`loopy status` says more")

"""A node's home, opened: what the CLI, the dashboard and the simulation build a node from.

    with NodeHome.open(settings) as home:      # identity (made on first use), store, lineage
        arena = home.arena()                    # where the node last worked, else its settings'
        board = home.scoreboard(arena)          # the node's scoring and trust rules
        snap = snapshot(home, arena)            # what `loopy status --json` prints

- One running node per home: `lock_home` holds an exclusive lock for the node's life,
  `home_is_locked` asks whether one runs.
- The status-file protocol: a running node rewrites `<home>/status.json` every second
  (`write_status_file`, atomically); `read_status_file` and `live_status` read it back.
- Putting a node together and running it is experiments/research/compose.py's job.
- `NodeHome.verify`: one claim re-run by hand (`loopy verify`), judged as the loop judges.

Nothing here prints: callers get errors whose message says what to fix (`HomeError`) and
callbacks, and decide how to show them.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgpack

from experiments.research.loop import ResearchLoop
from experiments.research.programs import ProgramIndex, original_runs
from experiments.research.runs import run_cancellable
from experiments.research.scoreboard import Candidate, Scoreboard
from experiments.research.settings import (ConfigError, Settings, home_dir, isolation_gaps,
                                           resolve_run, score_rules, trust_rules)
from experiments.research.verify_claim import Rerun, rerun_claim
from experiments.simulation.synthetic import SyntheticTrainer
from genome import base_train_source, genome_id, genome_root_id
from swarm import export
from swarm.identity import IdentityError, NodeIdentity
from swarm.lineage import Lineage
from swarm.records import Record, RecordError, make_attestation
from swarm.store import Store, StoreError
from swarm.trust import TrustPolicy

STATUS_FILE = "status.json"
LOCK_FILE = "node.lock"
MAX_STATUS_BYTES = 4 * 1024 * 1024
# what reading a damaged store raises (records are decoded from the bytes it holds)
DAMAGED_STORE_ERRORS = (sqlite3.DatabaseError, msgpack.exceptions.UnpackException, RecordError)


class HomeError(Exception):
    """The home cannot be used (its key, its store, its directory); the message says why."""


class HomeLocked(HomeError):
    """Another node runs on this home."""


class DataNotReady(HomeError):
    """The trainer's data cannot be prepared; the message says what to fix."""


class RecordUnavailable(ValueError):
    """No record is what was asked for (an id prefix, the best kept), or this machine may
    not run it; the message says why."""


# ---------------------------------------------------------------------------
# The home's state


@dataclass
class NodeHome:
    """What a node keeps in its home, opened together, with the settings it runs with."""
    settings: Settings
    path: Path
    identity: NodeIdentity
    store: Store
    lineage: Lineage
    genome: str
    root_id: bytes
    lock: IO | None = None      # the home's lock file, held while this node runs

    @classmethod
    def open(cls, settings: Settings, *, running: bool = False) -> "NodeHome":
        """Open the home of `settings` (created, with a new key, on first use).

        `running`: for the node that runs on this home, which holds its lock until
        `close()` (HomeLocked when another node holds it)."""
        try:
            path = home_dir(settings)
        except ConfigError as e:
            raise HomeError(str(e)) from None
        lock = lock_home(path) if running else None
        root = genome_root_id()
        try:
            identity = NodeIdentity.load_or_create(path)
            store = Store.open(path, root_id=root)
        except (IdentityError, StoreError) as e:
            if lock is not None:
                lock.close()
            raise HomeError(str(e)) from None
        return cls(settings, path, identity, store, Lineage(store, base_train_source(), root),
                   genome_id(), root, lock)

    def close(self) -> None:
        self.store.close()
        if self.lock is not None:
            self.lock.close()

    def __enter__(self) -> "NodeHome":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def arena(self) -> str:
        """The arena this node last worked in, else the one its settings give."""
        saved = self.store.get_meta("node.arena")
        if saved:
            return saved
        if self.settings.trainer == "synthetic":
            return SyntheticTrainer(0).arena
        return resolve_run(self.settings)[3]

    def ran_with(self) -> tuple[list[str], bool]:
        """The topics and offline flag this node last ran with, else the settings'."""
        try:
            saved = json.loads(self.store.get_meta("node.ran_with") or "null")
            return list(saved["topics"]), bool(saved["offline"])
        except (ValueError, TypeError, KeyError):
            return self.settings.topic, self.settings.offline

    def remember_run(self, arena: str) -> None:
        """What `arena()` and `ran_with()` say once this node has run."""
        self.store.set_meta("node.arena", arena)
        self.store.set_meta("node.ran_with", json.dumps({"topics": self.settings.topic,
                                                         "offline": self.settings.offline}))

    def trust(self) -> TrustPolicy:
        return TrustPolicy(self.store, self.identity.public_key, trust_rules(self.settings))

    def scoreboard(self, arena: str) -> Scoreboard:
        trust = self.trust()
        return Scoreboard(self.store, self.lineage, self.root_id, arena,
                          score_rules(self.settings), trust.is_verified,
                          trust.trusted_author)

    def attest(self, claim: Record, arena: str, verdict: str, result: dict) -> Record:
        """Store our verdict on `claim`, measured in `arena`, and what it does to reputations."""
        attestation = make_attestation(self.identity, genome=self.genome, target=claim.id,
                                       arena=arena, verdict=verdict, result=result)
        self.store.insert(attestation, local=True)
        self.trust().save_reputations()
        return attestation

    def claim_to_verify(self, prefix: str) -> Record:
        """The scored experiment `prefix` names, if this machine may re-run it;
        RecordUnavailable says why not."""
        record = self.find_experiment(prefix)
        if record.status != "ok":
            raise RecordUnavailable(f"{record.id_hex[:12]} is not a scored experiment")
        missing = isolation_gaps(self.settings)
        if missing and record.author != self.identity.public_key:
            raise RecordUnavailable("refusing to run another author's program: this machine "
                                    "cannot fully isolate it (" + "; ".join(missing) + ")")
        return record

    async def verify(self, claim: Record, trainer, progress=None) -> Rerun:
        """Re-run `claim` on a prepared trainer, the loop's way (verify_claim), and attest
        the verdict when the trainer runs in the claim's arena and the run gave one."""
        rerun = await rerun_claim(claim, trainer=trainer, lineage=self.lineage,
                                  root_id=self.root_id, board=self.scoreboard(trainer.arena),
                                  run_blocking=run_cancellable, progress=progress)
        if rerun.judgement is not None and trainer.arena == claim.arena and \
                self.copied_from(claim) is None:
            self.attest(claim, trainer.arena, rerun.judgement.verdict, rerun.judgement.result)
        return rerun

    def copied_from(self, claim: Record) -> bytes | None:
        """The record whose program `claim` repeats, if it is a copy: ours, or another
        author's kept claim this node received first. A copy is re-run on request but never
        attested, so it earns its author no reputation (the loop's rule: claims.py)."""
        return ProgramIndex(self.store, self.lineage, claim.arena).up_to_date().copied_from(
            claim.id, self.identity.public_key,
            original_runs(self.store, self.scoreboard(claim.arena).is_kept, self.trust()))

    def export_lineage(self, record_id: bytes, fmt: str) -> str:
        """`record_id`'s lineage as a `patch`, a git-am `series`, its `source` or `tsv`."""
        if fmt == "patch":
            return export.export_patch(self.lineage, record_id)
        if fmt == "source":
            return export.export_source(self.lineage, record_id)
        trust = self.trust()
        authors = trust.trusted_author().keys()  # whose baselines give the genome's score
        if fmt == "series":
            return export.export_series(
                self.lineage, record_id,
                verified_by=lambda rid: trust.verified_by(self.store.get(rid)),
                seed=self.settings.seed, baseline_authors=authors)
        if fmt == "tsv":
            return export.export_tsv(self.lineage, record_id, seed=self.settings.seed,
                                     baseline_authors=authors)
        raise ValueError(f"unknown export format {fmt!r}")

    def find_experiment(self, prefix: str) -> Record:
        """The one experiment whose id starts with `prefix` (hex); RecordUnavailable if not."""
        matches = [r for r in self.store.experiments() if r.id_hex.startswith(prefix.lower())]
        if len(matches) != 1:
            raise RecordUnavailable(f"--record {prefix}: {len(matches)} records match")
        return matches[0]

    def best_kept(self, arena: str, topic: str | None = None) -> Candidate:
        """The best kept record in the arena (and topic); RecordUnavailable if none is."""
        best = self.scoreboard(arena).best(topic)
        if best is None or best.record is None:
            raise RecordUnavailable(f"no kept experiment in arena {arena}"
                                    + (f", topic {topic}" if topic else "")
                                    + ": nothing to export yet")
        return best


# ---------------------------------------------------------------------------
# One running node per home


def _try_lock(path: Path) -> IO | None:
    """The home's lock file, locked by us; None when another process holds it."""
    f = open(path / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def lock_home(path: Path) -> IO:
    """One running node per home: an exclusive lock held for the node's lifetime (close
    the returned file to release it); HomeLocked when another node holds it."""
    f = _try_lock(path)
    if f is None:
        raise HomeLocked(f"another node is running on {path} (see {path / STATUS_FILE})")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def home_is_locked(path: Path) -> bool:
    """Whether a node runs on this home now."""
    f = _try_lock(path)
    if f is None:
        return True
    f.close()
    return False


# ---------------------------------------------------------------------------
# The status file and the snapshot it holds


def write_status_file(path: Path, snap: dict) -> None:
    """Atomically, so a reader never sees half a file."""
    tmp = path / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps(dict(snap, updated=time.time(), pid=os.getpid()), default=str))
    os.replace(tmp, path / STATUS_FILE)


def read_status_file(path: Path) -> dict | None:
    """The last snapshot a node wrote in its home; None when there is none readable."""
    try:
        with open(path / STATUS_FILE, "rb") as f:
            data = f.read(MAX_STATUS_BYTES + 1)
        snap = json.loads(data) if len(data) <= MAX_STATUS_BYTES else None
    except (OSError, ValueError):
        return None
    return snap if isinstance(snap, dict) else None


def live_status(path: Path) -> dict | None:
    """The snapshot of the node running on this home now; None when none runs."""
    return read_status_file(path) if home_is_locked(path) else None


def snapshot(home: NodeHome, arena: str, loop: ResearchLoop | None = None, net=None) -> dict:
    """The facts `status --json` prints and the live view draws (keys kept stable)."""
    board = loop.scores if loop is not None else home.scoreboard(arena)
    best = board.best()
    best_json = None
    if best is not None and best.record is not None:
        best_json = {"id": best.id.hex(), "val_bpb": best.val_bpb,
                     "verified": bool(board.trusted(best.record)), "arena": arena}
    elif best is not None:
        best_json = {"id": best.id.hex(), "val_bpb": best.val_bpb, "verified": True,
                     "arena": arena, "genome_root": True}
    recent = []
    for r in home.store.experiments(arena=arena, limit=10)[::-1]:
        label = board.label(r)
        kept = label == "kept"
        status = "ok" if kept else label  # the view marks kept runs by their flag
        recent.append({"id": r.id_hex, "author": r.author_peer_id, "desc": r.desc,
                       "status": status, "val_bpb": r.val_bpb, "delta": board.delta(r),
                       "kept": kept, "verified": bool(board.trusted(r))})
    # read from the store, the node's own (last) run says what it works on, not our flags
    topics, offline = (home.settings.topic, home.settings.offline) if loop is not None else \
        home.ran_with()
    snap = {
        "peer_id": home.identity.peer_id, "genome": home.genome, "arena": arena,
        "topics": topics, "records": home.store.count(),
        "experiments_local": home.store.local_experiment_count(arena),
        "best": best_json, "peers": [], "recent": recent, "current": None,
        "verifying": [], "sigma": board.sigma(), "offline": offline,
    }
    if loop is not None:
        snap["current"] = loop.state.current
        snap["verifying"] = loop.state.verifying
    if net is not None:
        snap["listen"] = net.listen_addrs()
        snap["peers"] = peer_list(net)
        snap["records_dropped"] = net.rate_limit.dropped
    return snap


def node_status(home: NodeHome) -> dict:
    """`loopy status`: the snapshot from the store, with what the running node is doing
    now (`running`, `current`, `peers`, `verifying`) if one runs on this home."""
    snap = snapshot(home, home.arena())
    live = live_status(home.path)
    snap["running"] = live is not None
    if live is not None:
        snap.update(current=live.get("current"), peers=live.get("peers", []),
                    verifying=live.get("verifying", []))
    return snap


def known_peers(home: NodeHome) -> list[dict]:
    """Every peer the store remembers, connected ones (from the running node) first."""
    connected = (live_status(home.path) or {}).get("peers")
    live = {p["peer_id"]: p for p in connected if isinstance(p, dict) and "peer_id" in p} \
        if isinstance(connected, list) else {}
    home.trust().save_reputations()
    announces = {a.author_peer_id: a for a in home.store.announces()}
    rows = []
    for peer in home.store.peers():
        a = announces.get(peer.peer_id)
        rows.append({
            "peer_id": peer.peer_id, "connected": peer.peer_id in live,
            "addrs": live.get(peer.peer_id, {}).get("addrs") or peer.addrs,
            "topics": list(a.topics) if a else [], "arena": a.arena if a else None,
            "head": a.head.hex() if a and a.head else None,
            "working_on": a.working_on if a else None,
            "last_seen": peer.last_seen, "reputation": peer.reputation})
    rows.sort(key=lambda r: (not r["connected"], -(r["last_seen"] or 0)))
    return rows


def peer_list(net) -> list[dict]:
    """The peers a running swarm node is connected to, as the status file lists them."""
    return [{"peer_id": p.peer_id, "addrs": p.addrs, "topics": p.topics,
             "last_seen": p.last_seen, "score": p.score,
             "dropped_forwarded": p.dropped_forwarded, "dropped_authored": p.dropped_authored}
            for p in net.connected_peers()]

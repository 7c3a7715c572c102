"""One arena's experiments as plain rows for people: what the dashboard and the plot draw.

Every number comes from the same rules the research loop uses: `Scoreboard` says what
was kept (beat its parent by more than the arena's noise) and what the best verified
record is; `TrustPolicy` says what this node counts as verified, from its own
attestations and trusted peers'. Reading is all this module does: it never writes to
the store (a view over a read-only connection works) and it never trains.

A view is a snapshot. It scores the whole arena in one pass (the scoreboard's per-record
questions are answered from one read of the arena's experiments, the baselines and the
reputations), so thousands of records take a fraction of a second.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from experiments.research.scoreboard import Candidate, Scoreboard, is_baseline
from swarm.descriptions import baseline_desc
from swarm.records import Record
from swarm.trust import TrustPolicy

LINEAGE_NODE_LIMIT = 400   # most kept records the lineage tree shows (the best ones)


@dataclass(frozen=True)
class Row:
    """One experiment as the dashboard's JSON and the plot see it."""
    id: str
    parents: list[str]
    author: str
    topic: str
    agent: str
    t: int                      # unix milliseconds, the author's clock
    status: str                 # ok | crash | timeout | rejected
    val_bpb: float | None
    delta: float | None         # against its (better) parent; None when unknown
    kept: bool                  # beat its parent by more than the arena's noise
    verified: bool              # as this node counts it (own run, own re-run, k trusted peers)
    refuted: bool               # this node, or a peer it trusts, could not reproduce it
    baseline: bool              # the unchanged genome, run for the noise estimate
    desc: str

    def to_json(self) -> dict:
        return dict(vars(self))  # asdict() deep-copies: ten times slower for thousands


@dataclass
class ArenaView:
    arena: str
    topic: str | None
    rows: list[Row]                          # oldest first
    sigma: float | None
    root_id: str
    root_score: float | None                 # the genome's own score at the arena's seed
    best: Candidate | None                   # the best verified buildable record (or root)
    candidates: set[str] = field(default_factory=set)   # ids that can be a parent
    noise_k: float = 2.0
    seed: int = 0

    @property
    def best_id(self) -> str | None:
        return self.best.id.hex() if self.best is not None and self.best.record else None

    def running_best(self) -> list[float | None]:
        """After each row: the best score a node could build on so far (a step line).

        What counts is what the loop would take as a parent: the genome's baseline at the
        arena's seed, and kept, verified, buildable records."""
        out: list[float | None] = []
        best: float | None = None
        for row in self.rows:
            score = None
            if row.id in self.candidates:
                score = row.val_bpb
            elif row.baseline and row.status == "ok" and self.root_score is not None \
                    and row.desc == baseline_desc(self.seed):
                score = row.val_bpb
            if score is not None and (best is None or score < best):
                best = score
            out.append(best)
        return out

    def counts(self) -> dict[str, int]:
        out = {"experiments": len(self.rows), "kept": 0, "discarded": 0, "crashed": 0,
               "verified": 0, "refuted": 0, "baselines": 0}
        for row in self.rows:
            if row.baseline:
                out["baselines"] += 1
            elif row.status != "ok":
                out["crashed"] += 1
            elif row.kept:
                out["kept"] += 1
            else:
                out["discarded"] += 1
            out["verified"] += row.verified
            out["refuted"] += row.refuted
        return out


class _SnapshotScoreboard(Scoreboard):
    """The scoreboard's rules, with the arena's scores and baselines read once."""

    def __init__(self, board: Scoreboard, records: list[Record]):
        super().__init__(board.store, board.lineage, board.root_id, board.arena, board.rules,
                         board.trusted)
        self._baselines = super().baselines()
        self._scores = {r.id: (r.val_bpb if r.status == "ok" else None) for r in records}
        self._deltas: dict[bytes, float | None] = {}

    def baselines(self) -> dict[int, list[float]]:
        return self._baselines

    def score_of(self, record_id: bytes) -> float | None:
        if record_id not in self._scores:  # a parent from another arena or topic
            self._scores[record_id] = super().score_of(record_id)
        return self._scores[record_id]

    def delta(self, record: Record) -> float | None:
        if record.id not in self._deltas:  # asked by is_kept and by the row
            self._deltas[record.id] = super().delta(record)
        return self._deltas[record.id]


def refuted(trust: TrustPolicy, record: Record, reps: dict[bytes, float]) -> bool:
    """This node refuted it, or a peer this node trusts did (their newest verdict)."""
    mine = trust.my_verdict(record)
    if mine is not None:
        return mine == "refuted"
    return any(v not in (record.author, trust.me)
               and reps.get(v, 0.0) >= trust.rules.trust_threshold
               for v in trust.store.who_refuted(record.id))


def read_arena(board: Scoreboard, trust: TrustPolicy, topic: str | None = None) -> ArenaView:
    """Score every experiment of `board.arena` (of `topic` if given) for display."""
    store = board.store
    records = store.experiments(arena=board.arena, topic=topic)
    snap = _SnapshotScoreboard(board, records)
    reps = trust.reputations()
    verified = {r.id: trust.is_verified(r, reps) for r in records}
    snap.trusted = lambda r: verified[r.id] if r.id in verified else trust.is_verified(r, reps)
    sigma = snap.sigma()
    candidates = snap.candidates(topic)
    rows = []
    for r in records:
        rows.append(Row(
            id=r.id_hex, parents=[p.hex() for p in r.parents], author=r.author_peer_id,
            topic=r.topic or "", agent=r.agent or "", t=r.t, status=r.status or "",
            val_bpb=r.val_bpb, delta=snap.delta(r), kept=snap.is_kept(r, sigma),
            verified=verified[r.id], refuted=refuted(trust, r, reps),
            baseline=is_baseline(r) is not None, desc=r.desc or ""))
    return ArenaView(arena=board.arena, topic=topic, rows=rows, sigma=sigma,
                     root_id=board.root_id.hex(), root_score=snap.root_score(),
                     best=candidates[0] if candidates else None,
                     candidates={c.id.hex() for c in candidates if c.record is not None},
                     noise_k=board.rules.noise_k, seed=board.rules.seed)


def lineage_tree(view: ArenaView, limit: int = LINEAGE_NODE_LIMIT) -> dict:
    """The kept edits as a tree from the genome root to the heads.

    Nodes are the kept records (the `limit` best if there are more) and every
    first-parent ancestor that joins them to the root, each with its description,
    score, change against its parent and verification state. `best` marks the path from
    the root to the best verified record: the lineage `loopy export` writes.
    """
    by_id = {row.id: row for row in view.rows}
    kept = sorted((row for row in view.rows if row.kept), key=lambda r: (r.val_bpb, r.id))
    shown = kept[:limit]
    if view.best_id and view.best_id in by_id and by_id[view.best_id] not in shown:
        shown.append(by_id[view.best_id])
    chosen: dict[str, Row] = {}
    outside: set[str] = set()   # ancestors not among this view's rows (other arena/topic)
    for row in shown:
        current: Row | None = row
        while current is not None and current.id not in chosen:
            chosen[current.id] = current
            parent = current.parents[0]
            current = by_id.get(parent)
            if current is None and parent != view.root_id:
                outside.add(parent)
    best_path: set[str] = set()
    current_id = view.best_id
    while current_id in chosen and current_id not in best_path:
        best_path.add(current_id)
        current_id = chosen[current_id].parents[0]
    has_child = {row.parents[0] for row in chosen.values()}
    nodes = []
    for row in sorted(chosen.values(), key=lambda r: (r.t, r.id)):
        parent = row.parents[0]
        nodes.append({
            "id": row.id, "parent": parent if parent in chosen else view.root_id,
            "detached": parent != view.root_id and parent not in chosen,
            "merge_parent": row.parents[1] if len(row.parents) > 1 else None,
            "desc": row.desc, "val_bpb": row.val_bpb, "delta": row.delta,
            "kept": row.kept, "verified": row.verified, "refuted": row.refuted,
            "author": row.author, "topic": row.topic, "t": row.t, "status": row.status,
            "best": row.id in best_path, "head": row.id not in has_child})
    return {"arena": view.arena, "topic": view.topic,
            "root": {"id": view.root_id, "val_bpb": view.root_score,
                     "desc": "genome (the base train.py)"},
            "best": view.best_id, "nodes": nodes, "kept": len(kept),
            "truncated": max(0, len(kept) - limit), "outside": sorted(outside)}

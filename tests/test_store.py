"""swarm.store: schema and migrations, idempotent inserts, wanted/heads/best/ancestry
queries, attestations, peers, and durability under kill -9."""
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from swarm.identity import NodeIdentity
from swarm.records import (Record, encode_body, encode_envelope, make_announce,
                           make_attestation, make_experiment)
from swarm.store import MIGRATIONS, Store, StoreError

GENOME = "0123456789abcdef"
ARENA = "embedded/tokens:300000/cpu"
GPU = "climbmix/time:300/nvidia-h100-80gb"
ROOT = hashlib.sha256(b"base\n").digest()
ALICE, BOB, CAROL = (NodeIdentity(bytes([n]) * 32) for n in (1, 2, 3))
REPO = Path(__file__).resolve().parent.parent

_clock = iter(range(1_760_000_000_000, 1_900_000_000_000, 1000))


def exp(parents=(ROOT,), bpb=1.0, who=ALICE, arena=ARENA, topic="optimizer",
        status="ok", desc="edit", t=None):
    result = {"status": status, "val_bpb": bpb} if status == "ok" else {"status": status}
    return make_experiment(who, genome=GENOME, parents=list(parents), topic=topic,
                           arena=arena, patch="", desc=desc, agent="mutate", result=result,
                           t=next(_clock) if t is None else t)


def attest(target, verdict, who=BOB, t=None):
    result = {"status": "ok", "val_bpb": 1.0} if verdict == "reproduced" else {
        "status": "ok", "val_bpb": 2.0}
    return make_attestation(who, genome=GENOME, target=target.id, arena=ARENA,
                            verdict=verdict, result=result, t=next(_clock) if t is None else t)


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path, root_id=ROOT)
    yield s
    assert s.integrity_check() == "ok"
    s.close()


# ---------------------------------------------------------------------------
# opening and migrations


def test_open_sets_wal_full_sync_and_records_migrations(tmp_path):
    s = Store.open(tmp_path / "store.sqlite", root_id=ROOT)
    conn = s._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert s.schema_version() == len(MIGRATIONS)
    assert s.migrations_applied() == [(i + 1, name) for i, (name, _) in enumerate(MIGRATIONS)]
    s.close()
    again = Store.open(tmp_path / "store.sqlite")
    assert again.migrations_applied() == [(i + 1, n) for i, (n, _) in enumerate(MIGRATIONS)]
    again.close()


def test_home_directory_means_store_sqlite_inside(tmp_path):
    Store.open(tmp_path).close()
    assert (tmp_path / "store.sqlite").exists()


def test_newer_schema_is_refused(tmp_path):
    Store.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "store.sqlite")
    conn.execute("INSERT INTO schema_version VALUES (99, 'from the future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store.open(tmp_path)


def test_not_a_database_is_refused(tmp_path):
    (tmp_path / "store.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable store"):
        Store.open(tmp_path)


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    import swarm.store as store_module
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS + [
        ("broken", ["CREATE TABLE half_done (x)", "THIS IS NOT SQL"])])
    with pytest.raises(StoreError):
        Store.open(tmp_path)
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    s = Store.open(tmp_path)
    assert s.schema_version() == len(MIGRATIONS)
    assert not s._conn.execute("SELECT name FROM sqlite_master WHERE name='half_done'").fetchall()
    s.close()


# the schema of the first development snapshot (commit cea9c3a), at version 2
SNAPSHOT_SCHEMA = [
    """CREATE TABLE records (id BLOB PRIMARY KEY, kind TEXT NOT NULL, author BLOB NOT NULL,
        t INTEGER NOT NULL, arena TEXT, topic TEXT, val_bpb REAL, status TEXT,
        body BLOB NOT NULL, envelope BLOB NOT NULL, received_at INTEGER NOT NULL,
        local INTEGER NOT NULL DEFAULT 0, children INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE parents (child BLOB NOT NULL, position INTEGER NOT NULL,
        parent BLOB NOT NULL, PRIMARY KEY (child, position)) WITHOUT ROWID""",
    """CREATE TABLE attestations (id BLOB PRIMARY KEY, target BLOB NOT NULL,
        verifier BLOB NOT NULL, verdict TEXT NOT NULL, val_bpb REAL, t INTEGER NOT NULL)
        WITHOUT ROWID""",
    "CREATE TABLE wanted (id BLOB PRIMARY KEY, since INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE broken (id BLOB PRIMARY KEY, reason TEXT NOT NULL, at INTEGER NOT NULL)
        WITHOUT ROWID""",
    """CREATE TABLE peers (peer_id TEXT PRIMARY KEY, addrs TEXT NOT NULL DEFAULT '[]',
        last_seen INTEGER, reputation REAL NOT NULL DEFAULT 0)""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE INDEX parents_by_parent ON parents (parent)",
    "CREATE INDEX attestations_by_target ON attestations (target, verifier, t)",
    """CREATE INDEX records_best ON records (arena, val_bpb)
        WHERE kind = 'experiment' AND status = 'ok'""",
    """CREATE INDEX records_best_topic ON records (arena, topic, val_bpb)
        WHERE kind = 'experiment' AND status = 'ok'""",
    "CREATE INDEX records_heads ON records (t) WHERE kind = 'experiment' AND children = 0",
    "CREATE INDEX records_by_t ON records (t)",
    "CREATE INDEX records_by_kind_author ON records (kind, author, t)",
    "CREATE INDEX records_by_kind_arena ON records (kind, arena, t)",
    """CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
        applied_at INTEGER NOT NULL)""",
    "INSERT INTO schema_version VALUES (1, 'initial schema', 0), (2, 'query indexes', 0)",
]


def test_development_snapshot_store_is_migrated(tmp_path):
    conn = sqlite3.connect(tmp_path / "store.sqlite")
    for statement in SNAPSHOT_SCHEMA:
        conn.execute(statement)
    conn.commit()
    conn.close()
    a = exp()
    b = exp(parents=[a.id], bpb=0.5)
    with Store.open(tmp_path, root_id=ROOT) as s:
        assert s.schema_version() == len(MIGRATIONS)
        s.insert_many([a, b])
        assert s.heads() == [b] and s.best(ARENA) == b and s.since(0) == [a, b]
        assert s.integrity_check() == "ok"
        indexes = {row[0] for row in s._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    with Store.open(tmp_path / "fresh.sqlite", root_id=ROOT) as fresh:
        assert indexes == {row[0] for row in fresh._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}


# ---------------------------------------------------------------------------
# inserting


def test_insert_is_idempotent(store):
    rec = exp()
    assert store.insert(rec) is True
    assert store.insert(rec) is False
    assert store.count() == 1 and store.has(rec.id) and not store.has(b"\0" * 32)
    got = store.get(rec.id)
    assert got == rec and got.envelope == rec.envelope and got.body == rec.body
    assert store.get(b"\0" * 32) is None


def test_experiments_ok_below_reads_only_better_ok_runs(store):
    good, worse, crashed = exp(bpb=0.9), exp(bpb=1.5), exp(status="crash")
    store.insert_many([good, worse, crashed])
    assert [r.id for r in store.experiments(arena=ARENA, ok_below=1.0)] == [good.id]
    assert {r.id for r in store.experiments(arena=ARENA, ok_below=float("inf"))} == \
        {good.id, worse.id}
    assert len(store.experiments(arena=ARENA)) == 3


def test_local_experiment_count_counts_ours_in_the_arena(store):
    store.insert(exp(bpb=0.9), local=True)
    store.insert(exp(bpb=0.8, arena="other/time:60/cpu"), local=True)
    store.insert(exp(bpb=0.7))
    assert store.local_experiment_count(ARENA) == 1


def test_first_receipt_is_the_oldest_record_still_held(store):
    first = exp(who=CAROL)
    store.insert(first)
    store._conn.execute("UPDATE records SET received_at = 5 WHERE id = ?", (first.id,))
    store.insert(exp(who=CAROL))
    assert store.first_receipt(CAROL.public_key) == 5
    assert store.first_receipt(BOB.public_key) is None


def test_local_flag(store):
    mine, theirs = exp(), exp(who=BOB)
    store.insert(mine, local=True)
    store.insert(theirs)
    assert store.is_local(mine.id) and not store.is_local(theirs.id)
    assert store.experiments(local=True) == [mine]
    assert store.experiments(local=False) == [theirs]
    store.insert(theirs, local=True)  # our own record came back to us from a peer first
    assert store.is_local(theirs.id)


def test_insert_many_is_one_transaction(store):
    a, b = exp(), exp()
    assert store.insert_many([a, b, a]) == 2
    with pytest.raises(AttributeError):
        store.insert_many([exp(), "not a record"])
    assert store.count() == 2  # the good record of the failed batch was rolled back


def test_wanted_parents_and_their_arrival(store):
    parent = exp()
    child = exp(parents=[parent.id])
    store.insert(child)
    assert store.wanted() == [parent.id]
    assert store.heads() == [child]
    store.insert(parent)
    assert store.wanted() == []
    assert store.heads() == [child]  # the parent learnt it has a child
    assert store.children(parent.id) == [child]


def test_root_is_never_wanted_and_merges_want_both(store):
    a, b = exp(), exp()
    merge = exp(parents=[a.id, b.id])
    store.insert(a)
    store.insert(merge)
    assert store.wanted() == [b.id]
    assert store.parent_ids(merge.id) == [a.id, b.id]
    store.insert(b)
    assert store.wanted() == [] and store.heads() == [merge]
    assert store.ancestors(merge.id) == {a.id, b.id, ROOT}


def test_attestation_target_and_announce_head_are_wanted(store):
    target = exp()
    store.insert(attest(target, "reproduced"))
    head = exp(who=CAROL)
    store.insert(make_announce(CAROL, genome=GENOME, topics=["general"], arena=ARENA,
                               head=head.id, t=next(_clock)))
    assert set(store.wanted()) == {target.id, head.id}
    store.want([target.id, b"\x07" * 32])
    assert len(store.wanted()) == 3
    store.unwant(b"\x07" * 32)
    store.insert_many([target, head])
    assert store.wanted() == []


def test_only_newest_announce_per_author_is_kept(store):
    def announce(who, t, working_on=""):
        return make_announce(who, genome=GENOME, topics=["general"], arena=ARENA,
                             working_on=working_on, t=t)
    old, new = announce(ALICE, 1000, "a"), announce(ALICE, 2000, "b")
    assert store.insert(new)
    assert not store.insert(old)  # stale
    assert not store.insert(new)
    bob = announce(BOB, 1500)
    assert store.insert(bob)
    newest = announce(ALICE, 3000, "c")
    assert store.insert(newest)
    assert store.announces() == [newest, bob]
    assert store.count("announce") == 2


# ---------------------------------------------------------------------------
# queries


def test_ancestry_is_root_first_and_stops_at_gaps(store):
    chain = [exp()]
    for _ in range(5):
        chain.append(exp(parents=[chain[-1].id]))
    store.insert_many(chain[1:])
    got = store.ancestry(chain[-1].id)
    assert got == chain[1:] and got[0].parents[0] == chain[0].id  # starts after the gap
    store.insert(chain[0])
    assert store.ancestry(chain[-1].id) == chain
    assert store.ancestry(chain[2].id) == chain[:3]
    assert store.ancestry(b"\0" * 32) == []


def _fake(record_id: bytes, parent: bytes) -> Record:
    """A record whose stored id does not match its body: only a damaged file has these."""
    body = {"kind": "experiment", "genome": GENOME, "author": ALICE.public_key, "t": 1,
            "parents": [parent], "topic": "x", "arena": ARENA, "patch": "", "desc": "",
            "agent": "", "result": {"status": "crash"}}
    body_bytes = encode_body(body)
    return Record(record_id, "experiment", body, body_bytes, b"\0" * 64, ALICE.public_key,
                  encode_envelope(body_bytes, b"\0" * 64))


def test_ancestry_cycle_guard(store):
    x, y = b"\x0a" * 32, b"\x0b" * 32
    store.insert_many([_fake(x, y), _fake(y, x)])
    assert len(store.ancestry(x)) == 2


def test_heads_filters_and_order(store):
    a = exp(topic="optimizer")
    b = exp(parents=[a.id], topic="schedule")
    c = exp(arena=GPU)
    d = exp(status="crash")
    store.insert_many([a, b, c, d])
    assert store.heads() == [d, c, b]
    assert store.heads(arena=ARENA) == [d, b]
    assert store.heads(arena=ARENA, topic="schedule") == [b]
    assert store.heads(limit=1) == [d]


def test_best_per_arena_topic_and_status(store):
    recs = [exp(bpb=1.5), exp(bpb=1.2, topic="schedule"), exp(bpb=1.3),
            exp(status="crash"), exp(bpb=0.9, arena=GPU)]
    store.insert_many(recs)
    assert store.best(ARENA) == recs[1]
    assert store.best(ARENA, topic="optimizer") == recs[2]
    assert store.best(GPU) == recs[4]
    assert store.best("embedded/time:60/cpu") is None
    store.mark_broken(recs[1].id, "patch does not apply")
    assert store.best(ARENA) == recs[2]
    assert store.broken_reason(recs[1].id) == "patch does not apply"
    assert store.broken() == {recs[1].id: "patch does not apply"}


def test_best_with_verification(store):
    great = exp(bpb=0.5, who=BOB)
    good = exp(bpb=0.8, who=CAROL)
    mine = exp(bpb=0.9)
    store.insert_many([great, good])
    store.insert(mine, local=True)
    assert store.best(ARENA) == great
    assert store.best(ARENA, verified_only=True) == mine  # nobody verified the others
    store.insert(attest(great, "reproduced", who=BOB))    # self-attestation does not count
    assert store.best(ARENA, verified_only=True) == mine
    store.insert(attest(good, "reproduced", who=ALICE))
    assert store.best(ARENA, verified_only=True) == good
    assert store.best(ARENA, verified_ids={great.id}) == great
    assert store.best(ARENA, verified_ids=set()) is None
    assert store.best(ARENA, verified_ids=lambda r: r.author == CAROL.public_key) == good


def test_attestations_latest_verdict_per_verifier(store):
    target = exp()
    store.insert(target)
    first = attest(target, "refuted", who=BOB)
    later = attest(target, "reproduced", who=BOB)
    carol = attest(target, "refuted", who=CAROL)
    store.insert_many([later, first, carol])  # arrival order does not matter
    assert store.attestations_for(target.id) == [first, later, carol]
    assert store.who_reproduced(target.id) == [BOB.public_key]
    assert store.who_refuted(target.id) == [CAROL.public_key]
    assert store.who_reproduced(b"\0" * 32) == []


def test_attestation_count_and_verdict_counts(store):
    bobs, carols = exp(who=BOB), exp(who=CAROL)
    store.insert_many([bobs, carols, attest(bobs, "reproduced", who=ALICE),
                       attest(carols, "refuted", who=ALICE),
                       attest(carols, "refuted", who=ALICE),
                       attest(bobs, "reproduced", who=BOB)])  # self-attestation
    assert store.attestation_count(ALICE.public_key) == 3
    assert sorted(store.verdict_counts(ALICE.public_key)) == sorted(
        [(BOB.public_key, "reproduced", 1), (CAROL.public_key, "refuted", 2)])
    assert store.verdict_counts(BOB.public_key) == []


def test_since_and_experiments_filters(store):
    a = exp(t=1000)
    b = exp(t=2000, who=BOB, topic="schedule")
    c = exp(t=3000, arena=GPU)
    att = attest(a, "reproduced", t=2500)
    store.insert_many([c, att, b, a])
    assert store.since(2000) == [b, att, c]
    assert store.since(2000, kind="experiment") == [b, c]
    assert store.experiments() == [a, b, c]
    assert store.experiments(arena=ARENA) == [a, b]
    assert store.experiments(topic="schedule") == [b]
    assert store.experiments(author=BOB.public_key) == [b]
    assert store.experiments(limit=2) == [b, c]
    assert store.missing([a.id, b"\x01" * 32]) == [b"\x01" * 32]
    assert store.count("experiment") == 3 and store.count("attestation") == 1


def test_peers_and_meta(store):
    store.upsert_peer("12D3KooWA", ["/ip4/127.0.0.1/tcp/1"], last_seen=100)
    store.upsert_peer("12D3KooWA", last_seen=50)   # last_seen never goes back
    store.save_peer("12D3KooWB", ["/ip4/127.0.0.1/tcp/2"], 200)
    store.set_reputation("12D3KooWA", -2.5)
    a = store.peer("12D3KooWA")
    assert (a.addrs, a.last_seen, a.reputation) == (["/ip4/127.0.0.1/tcp/1"], 100, -2.5)
    assert [p.peer_id for p in store.peers()] == ["12D3KooWB", "12D3KooWA"]
    assert store.load_peers() == [("12D3KooWB", ["/ip4/127.0.0.1/tcp/2"]),
                                  ("12D3KooWA", ["/ip4/127.0.0.1/tcp/1"])]
    assert store.peer("nobody") is None
    assert store.get_meta("head") is None and store.get_meta("head", "x") == "x"
    store.set_meta("head", "abc")
    assert store.get_meta("head") == "abc"


def test_one_store_per_thread(store):
    errors = []

    def use():
        try:
            store.count()
        except sqlite3.ProgrammingError as e:
            errors.append(e)
    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    assert errors, "sqlite3 must refuse a connection shared across threads"


def test_reader_in_another_connection_sees_committed_records(store, tmp_path):
    rec = exp()
    store.insert(rec)
    other = Store.open(tmp_path)
    assert other.get(rec.id) == rec
    other.close()


# ---------------------------------------------------------------------------
# read-only mode: a reader beside the node (the dashboard) with the same queries


def test_readonly_store_answers_the_same_queries_and_never_writes(store, tmp_path):
    a = exp(desc="a")
    b = exp(parents=(a.id,), bpb=0.9, topic="schedule", desc="b")
    c = exp(arena=GPU, desc="c")
    store.insert_many([a, b, c, attest(a, "reproduced"), attest(a, "refuted", who=CAROL),
                       attest(b, "refuted"), attest(b, "reproduced")])
    store.set_meta("node.arena", ARENA)
    ro = Store.open(tmp_path, root_id=ROOT, readonly=True)
    try:
        assert ro.readonly and not store.readonly
        assert ro.get(b.id) == b and ro.children(a.id) == [b]
        assert ro.experiments(arena=ARENA) == store.experiments(arena=ARENA) == [a, b]
        assert ro.get_meta("node.arena") == ARENA
        with pytest.raises(StoreError, match="read-only"):
            ro.set_meta("x", "y")
        with pytest.raises(StoreError, match="read-only"):
            ro.insert(exp(desc="d"))
        with pytest.raises(StoreError, match="read-only"):
            ro.mark_broken(a.id, "no")
        with pytest.raises(sqlite3.OperationalError):
            ro._conn.execute("INSERT INTO meta VALUES ('x', 'y')")
        assert store.get_meta("x") is None and store.broken_reason(a.id) is None
        # it reads what the writer commits later (WAL)
        d = exp(desc="d")
        store.insert(d)
        assert ro.get(d.id) == d
    finally:
        ro.close()


def test_readonly_open_creates_and_migrates_nothing(tmp_path):
    with pytest.raises(StoreError, match="no store here"):
        Store.open(tmp_path / "home", readonly=True)
    assert not (tmp_path / "home").exists()
    sqlite3.connect(tmp_path / "store.sqlite").close()
    with pytest.raises(StoreError, match="empty"):
        Store.open(tmp_path, readonly=True)
    conn = sqlite3.connect(tmp_path / "store.sqlite")
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT, "
                 "applied_at INTEGER)")
    for statement in MIGRATIONS[0][1]:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1, 'initial schema', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=f"partly migrated .schema version 1 of "
                                         f"{len(MIGRATIONS)}"):
        Store.open(tmp_path, readonly=True)
    conn = sqlite3.connect(tmp_path / "store.sqlite")
    assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 1
    conn.execute("INSERT INTO schema_version VALUES (99, 'future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this Loopy"):
        Store.open(tmp_path, readonly=True)


def test_readonly_open_refuses_a_damaged_store(tmp_path):
    Store.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "store.sqlite")
    conn.execute("DROP TABLE broken")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="tables broken are missing"):
        Store.open(tmp_path, readonly=True)
    (tmp_path / "junk.sqlite").write_bytes(b"not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable store"):
        Store.open(tmp_path / "junk.sqlite", readonly=True)


def test_readonly_store_may_change_threads(store, tmp_path):
    store.insert(exp())
    ro = Store.open(tmp_path, readonly=True)
    counts = []
    thread = threading.Thread(target=lambda: counts.append(ro.count()))
    thread.start()
    thread.join()
    ro.close()
    assert counts == [1]


def test_bulk_queries_match_the_per_record_ones(store):
    a, b = exp(desc="a"), exp(topic="schedule", desc="b")
    c = exp(arena=GPU, desc="c")
    store.insert_many([a, b, c, attest(a, "reproduced"), attest(a, "refuted", who=CAROL),
                       attest(a, "reproduced", who=CAROL), attest(b, "refuted")])
    verdicts = store.newest_verdicts()
    assert set(verdicts) == {a.id, b.id}
    for record in (a, b):
        assert verdicts[record.id] == (store.who_reproduced(record.id),
                                       store.who_refuted(record.id))
    assert verdicts[a.id] == ([BOB.public_key, CAROL.public_key], [])
    assert store.experiment_ids(ARENA) == [a.id, b.id]
    assert store.experiment_ids(ARENA, "schedule") == [b.id]
    assert store.experiment_ids() == [a.id, b.id, c.id]
    assert store.get_many([c.id, b"\0" * 32, a.id]) == {c.id: c, a.id: a}
    assert store.arenas() == [(ARENA, 2), (GPU, 1)]
    assert store.topics(ARENA) == ["optimizer", "schedule"]


# ---------------------------------------------------------------------------
# durability

CHILD = r"""
import sys
sys.path.insert(0, sys.argv[2])
from swarm.identity import NodeIdentity
from swarm.records import make_experiment
from swarm.store import Store

store = Store.open(sys.argv[1], root_id=b"\x00" * 32)
me = NodeIdentity.generate()
parent = b"\x00" * 32
for i in range(1_000_000):
    rec = make_experiment(me, genome="0123456789abcdef", parents=[parent], topic="general",
                          arena="embedded/tokens:300000/cpu", patch="", desc=f"step {i}",
                          agent="test", result={"status": "ok", "val_bpb": 1.0 + i * 1e-6},
                          t=1_760_000_000_000 + i)
    store.insert(rec)
    print(rec.id_hex, flush=True)  # acknowledged: the insert has returned
    parent = rec.id
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [50, 400])
def test_kill_9_loses_nothing_acknowledged(tmp_path, kill_after):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(REPO)],
                            stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in proc.stdout:
            acked.append(bytes.fromhex(line.strip()))
            if len(acked) >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                break
        acked += [bytes.fromhex(x) for x in proc.stdout.read().split()]  # already printed
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = Store.open(tmp_path, root_id=b"\x00" * 32)
    assert store.integrity_check() == "ok"
    assert all(store.has(i) for i in acked)
    assert store.count() >= len(acked)
    chain = store.ancestry(acked[-1])
    assert [r.id for r in chain] == acked  # the whole lineage, in order
    store.close()

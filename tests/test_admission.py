"""Bounded storage under a Sybil flood (issue 18, point 2): storage budgets for strangers,
the quarantine for records with unknown parents, bounded and expiring wanted ids (no
amplification of invented ids), and retention that never prunes what an honest node ran
or built on (checked by exporting its best lineage and rebuilding every step).

Everything runs on real Stores in tmp_path with injected clocks; no network.
"""
import hashlib
import random

import pytest

import swarm.store as store_module
from swarm.admission import (AUTHOR_OVER, KNOWN, PEER_OVER, QUARANTINED, STORED,
                             STRANGERS_OVER, Admission, Ingest, StorageBudgets, record_cost)
from swarm.export import export_patch, export_series, export_source
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage
from swarm.patch import apply_patch, make_patch
from swarm.quarantine import Quarantine, QuarantineLimits
from swarm.records import make_announce, make_attestation, make_experiment
from swarm.retention import RetentionPolicy, pins, prune
from swarm.store import MAX_WANTED, WANTED_MAX_TRIES, WANTED_TTL_S, Store
from swarm.sync import catch_up
from swarm.trust import TrustPolicy

GENOME = "0123456789abcdef"
ARENA = "embedded/tokens:300000/cpu"
BASE = "".join(f"setting_{i} = {i}\n" for i in range(60))
ROOT = hashlib.sha256(BASE.encode()).digest()
ME, TRUSTY, STRANGER = (NodeIdentity(bytes([n]) * 32) for n in (21, 22, 23))
_t = iter(range(1_760_000_000_000, 1_800_000_000_000, 1_000))
HOUR_MS = 3600 * 1000


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def exp(who, parent, old=BASE, new=None, desc="an edit", bpb=1.5, topic="optimizer",
        parents=None):
    new = old if new is None else new
    return make_experiment(who, genome=GENOME, parents=parents or [parent], topic=topic,
                           arena=ARENA, patch=make_patch(old, new), desc=desc, agent="mutate",
                           result={"status": "ok", "val_bpb": bpb}, t=next(_t))


def attest(who, target, verdict="reproduced"):
    return make_attestation(who, genome=GENOME, target=target, arena=ARENA, verdict=verdict,
                            result={"status": "ok", "val_bpb": 1.5}, t=next(_t))


def junk(who, parent=ROOT, size=200, n=0):
    """A valid record with made-up content (a fresh key's flood)."""
    new = BASE + "".join(f"junk_{n}_{i} = {'x' * 20}\n" for i in range(size // 30))
    return exp(who, parent, BASE, new, desc=f"junk {n}", bpb=0.1)


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "store", root_id=ROOT)
    yield s
    s.close()


def file_bytes(store) -> int:
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    return pages * store._conn.execute("PRAGMA page_size").fetchone()[0]


def ingest_for(store, budgets=None, clock=None, trusted=(), limits=None):
    clock = clock or Clock()
    trusted = set(trusted)
    admission = Admission(budgets, trusted=lambda a: a in trusted, clock=clock)
    return Ingest(store, admission, Quarantine(limits, clock=clock)), clock


# --------------------------------------------------------------------------- budgets

def test_a_flood_from_a_thousand_fresh_keys_stays_within_the_storage_budget(store):
    budgets = StorageBudgets(strangers_per_hour=3600 * 1024, strangers_burst=256 * 1024,
                             peer_per_hour=3600 * 1024 * 4, peer_burst=1 << 20,
                             author_per_hour=3600 * 64, author_burst=64 * 1024)
    ingest, clock = ingest_for(store, budgets, trusted={ME.public_key})
    before = file_bytes(store)
    keys = [NodeIdentity.generate() for _ in range(1000)]
    outcomes = {}
    honest_stored = 0
    for n, key in enumerate(keys):  # 60 s of flood: 1,000 keys, 2 records each
        clock.now += 0.06
        for i in range(2):
            outcome = ingest.offer(junk(key, n=2 * n + i), peer=f"flooder-{n % 3}")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if n % 100 == 0:  # our own records (and a trusted peer's) are never held back
            honest_stored += ingest.offer(exp(ME, ROOT, desc=f"mine {n}"), "me") == STORED
    assert honest_stored == 10
    charged = ingest.admission.charged
    allowed = budgets.max_growth_bytes(60 / 3600)   # burst + 60 s at 1 KiB/s
    assert 0 < charged <= allowed
    assert outcomes[STORED] < 2000 and outcomes[STRANGERS_OVER] > 1000
    flood = [r for r in store.experiments() if r.author != ME.public_key]
    assert sum(store.stored_cost(r) for r in flood) == charged
    # the stated bound holds on disk: the file grew by no more than what was charged
    assert file_bytes(store) - before <= charged + sum(
        store.stored_cost(r) for r in store.experiments(author=ME.public_key))


def test_budgets_per_peer_and_per_author_leave_room_for_others(store):
    budgets = StorageBudgets(strangers_per_hour=0, strangers_burst=1 << 20,
                             peer_per_hour=0, peer_burst=200 * 1024,
                             author_per_hour=0, author_burst=64 * 1024)
    ingest, _ = ingest_for(store, budgets)
    greedy_key = NodeIdentity.generate()
    outcomes = [ingest.offer(junk(greedy_key, n=i), "p1") for i in range(40)]
    assert outcomes.count(STORED) < 40 and AUTHOR_OVER in outcomes
    # one peer relaying many keys hits its own budget, not everyone's
    relayed = [ingest.offer(junk(NodeIdentity.generate(), n=100 + i), "p1") for i in range(80)]
    assert PEER_OVER in relayed
    other = [ingest.offer(junk(NodeIdentity.generate(), n=300 + i), "p2") for i in range(5)]
    assert other == [STORED] * 5


def test_record_cost_bounds_what_the_store_really_takes(store):
    before = file_bytes(store)
    records = [junk(NodeIdentity.generate(), size=random.choice([0, 100, 1500, 9000]), n=i)
               for i in range(600)]
    store.insert_many(records)
    assert file_bytes(store) - before <= sum(record_cost(r) for r in records)


def test_strangers_announces_are_not_charged_but_oversized_ones_are_not_kept(store):
    budgets = StorageBudgets(strangers_per_hour=0, strangers_burst=1)
    ingest, _ = ingest_for(store, budgets)
    small = make_announce(NodeIdentity.generate(), genome=GENOME, topics=["optimizer"],
                          arena=ARENA, t=next(_t))
    big = make_announce(NodeIdentity.generate(), genome=GENOME, topics=["optimizer"],
                        arena=ARENA, addrs=[f"/ip4/10.0.0.{i}/tcp/{'1' * 180}"
                                            for i in range(60)], t=next(_t))
    assert ingest.offer(small, "p") == STORED
    assert ingest.offer(big, "p") != STORED and not store.has(big.id)


# --------------------------------------------------------------------------- quarantine

def test_records_with_unknown_parents_wait_in_quarantine_then_enter_in_order(store):
    ingest, _ = ingest_for(store)
    a = exp(STRANGER, ROOT, desc="a")
    b = exp(STRANGER, a.id, desc="b")
    c = exp(STRANGER, b.id, desc="c")
    seal = attest(NodeIdentity.generate(), c.id)
    for record in (seal, c, b):
        assert ingest.offer(record, "peer") == QUARANTINED
    assert store.count() == 0 and len(ingest.quarantine) == 3
    assert set(store.wanted()) == {a.id, b.id, c.id}  # what the quarantine waits for
    assert ingest.unknown([a.id, b.id, c.id]) == [a.id]  # quarantined ones are not re-fetched
    assert ingest.offer(a, "peer") == STORED  # ... and releases the whole chain
    assert all(store.has(r.id) for r in (a, b, c, seal))
    assert len(ingest.quarantine) == 0 and store.wanted() == []
    assert ingest.released == 3 and ingest.offer(b, "peer") == KNOWN


def test_a_parent_inserted_by_any_path_releases_its_children(store):
    ingest, _ = ingest_for(store)
    parent = exp(ME, ROOT, desc="mine")
    child = exp(STRANGER, parent.id, desc="built on mine")
    assert ingest.offer(child, "peer") == QUARANTINED
    store.insert(parent, local=True)  # the loop's own insert, not through ingest
    assert store.has(child.id) and child.id not in ingest.quarantine


def test_quarantined_records_expire(store):
    limits = QuarantineLimits(ttl_s=60)
    ingest, clock = ingest_for(store, limits=limits)
    orphan = exp(STRANGER, bytes(32), desc="invented parent")
    assert ingest.offer(orphan, "peer") == QUARANTINED
    clock.now += 61
    assert ingest.quarantine.expire() == 1 and len(ingest.quarantine) == 0
    assert not store.has(orphan.id) and ingest.unknown([orphan.id]) == [orphan.id]


def test_the_quarantine_stays_bounded_and_one_peer_cannot_take_it_all(store):
    limits = QuarantineLimits(max_records=100, max_bytes=1 << 30, peer_share=0.5)
    ingest, _ = ingest_for(store, limits=limits)
    q = ingest.quarantine
    honest = [exp(STRANGER, bytes([1]) * 32, desc=f"honest {i}") for i in range(20)]
    for record in honest:
        ingest.offer(record, "honest")
    for i in range(500):  # a flood of orphans from fresh keys through one peer
        ingest.offer(junk(NodeIdentity.generate(), parent=bytes([2]) * 32, n=i), "flooder")
        assert len(q) <= 100
    assert all(r.id in q for r in honest)  # the flooder only evicted its own
    for i in range(500):  # from many peers: the oldest go first, the total stays bounded
        ingest.offer(junk(NodeIdentity.generate(), parent=bytes([3]) * 32, n=1000 + i),
                     f"peer-{i}")
    assert len(q) == 100 and q.stats.evicted >= 900
    small = Quarantine(QuarantineLimits(max_records=10_000, max_bytes=50_000))
    for i in range(200):
        small.add(junk(NodeIdentity.generate(), n=i), [bytes(32)], "p")
        assert small.bytes <= 50_000


# --------------------------------------------------------------------------- wanted ids

def test_wanted_ids_back_off_expire_and_stay_bounded(store, monkeypatch):
    now = [1_900_000_000_000]
    monkeypatch.setattr(store_module, "_now_ms", lambda: now[0])
    invented = [bytes([9, i]) + bytes(30) for i in range(5)]
    store.want(invented)
    assert store.wanted() == invented
    store.missed(invented[:2])  # a peer did not have them: not again for 30 s
    assert store.wanted() == invented[2:]
    now[0] += 31_000
    assert store.wanted() == invented
    for _ in range(WANTED_MAX_TRIES):
        store.missed(invented[:1])
        now[0] += 3_600_000 // 4
    assert invented[0] not in store.wanted() and not store.is_needed(invented[0])
    now[0] += WANTED_TTL_S * 1000
    assert store.wanted() == [] and store.expire_wanted() == 0
    # a parent our own record needs is kept (and asked for) long after that
    mine = exp(ME, bytes([7]) * 32, desc="on a parent we lack")
    store.insert(mine, local=True)
    assert store.is_needed(bytes([7]) * 32)
    now[0] += 2 * WANTED_TTL_S * 1000
    for _ in range(WANTED_MAX_TRIES + 2):
        store.missed([bytes([7]) * 32])
    now[0] += 3_600_000
    assert store.wanted() == [bytes([7]) * 32]
    # bounded: the oldest of the ids nothing needs go first
    store.want([i.to_bytes(32, "big") for i in range(MAX_WANTED + 500)])
    assert store.wanted_count() == MAX_WANTED and store.is_needed(bytes([7]) * 32)


class CountingPeer:
    """A sync peer with some records; it counts the ids it was asked for."""

    def __init__(self, records, heads=()):
        self.records = {r.id: r for r in records}
        self.heads_ = list(heads)
        self.asked = {}

    async def heads(self, topics):
        return self.heads_

    async def get(self, ids):
        for i in ids:
            self.asked[i] = self.asked.get(i, 0) + 1
        return [self.records[i].envelope for i in ids if i in self.records]


async def test_invented_announce_heads_are_not_asked_of_every_peer_every_time(
        store, monkeypatch):
    now = [1_900_000_000_000]
    monkeypatch.setattr(store_module, "_now_ms", lambda: now[0])
    ingest, _ = ingest_for(store)
    invented = [bytes([5, i]) + bytes(30) for i in range(50)]
    for i, head in enumerate(invented):  # 50 strangers announce heads nobody has
        ingest.offer(make_announce(NodeIdentity.generate(), genome=GENOME, topics=["x"],
                                   arena=ARENA, head=head, t=next(_t)), "p")
    peers = [CountingPeer([]) for _ in range(8)]

    def verify(envelope):
        return None, "none of these peers has a record"

    for round_ in range(40):  # 20 minutes of catch-ups, every peer every 30 s
        for peer in peers:
            await catch_up(peer, [], missing=ingest.unknown, wanted=store.wanted,
                           verify=verify, store=lambda rs: ingest.offer_many(rs, "p"),
                           on_missed=store.missed)
        now[0] += 30_000
    asks = [sum(p.asked.get(i, 0) for p in peers) for i in invented]
    # without the back-off: 40 rounds x 8 peers = 320 asks of each; now a handful in all
    assert max(asks) <= WANTED_MAX_TRIES
    now[0] += WANTED_TTL_S * 1000
    assert store.expire_wanted() == 0


async def test_a_late_joiner_fetches_a_deep_history_through_the_quarantine(store):
    ingest, _ = ingest_for(store)
    author = NodeIdentity.generate()
    chain, parent = [], ROOT
    for i in range(120):
        record = exp(author, parent, desc=f"step {i}")
        chain.append(record)
        parent = record.id
    leaves = [exp(author, random.choice(chain).id, desc=f"leaf {i}") for i in range(200)]
    everything = chain + leaves
    heads = [chain[-1].id] + [r.id for r in leaves]
    peer = CountingPeer(everything, heads)
    by_env = {r.envelope: r for r in everything}
    result = await catch_up(peer, [], missing=ingest.unknown, wanted=store.wanted,
                            verify=lambda env: (by_env[env], ""),
                            store=lambda rs: ingest.offer_many(rs, "p"), on_missed=store.missed)
    assert all(store.has(r.id) for r in everything)
    assert result.stored == len(everything) and len(ingest.quarantine) == 0
    assert max(peer.asked.values()) == 1


# --------------------------------------------------------------------------- retention

def test_prune_under_a_flood_keeps_every_lineage_the_node_ran_or_built_on(tmp_path):
    """An honest node (ME) built a lineage on a stranger's claim and on a trusted peer's
    step, attested a stranger's claim, and has a trusted peer (TRUSTY) whose own lineage
    builds on strangers. 1,000 fresh keys flood it: roots, chains, attestations of each
    other and junk children of its own records. A prune with no quota at all deletes
    the flood, and the best lineage still exports and rebuilds byte for byte."""
    store = Store.open(tmp_path / "store", root_id=ROOT)
    try:
        _prune_under_flood(store)
    finally:
        store.close()


def _prune_under_flood(store):
    sources = {ROOT: BASE}

    def step(who, parent, n, bpb, local=False):
        new = sources[parent].replace(f"setting_{n} = {n}\n", f"setting_{n} = {n * 7}\n")
        record = exp(who, parent, sources[parent], new, desc=f"setting {n}", bpb=bpb)
        sources[record.id] = new
        store.insert(record, local=local)
        return record

    # the honest node's lineage: a stranger's claim, ours, a trusted peer's, ours again
    s1 = step(STRANGER, ROOT, 1, 1.40)
    m2 = step(ME, s1.id, 2, 1.38, local=True)
    t3 = step(TRUSTY, m2.id, 3, 1.35)
    m4 = step(ME, t3.id, 4, 1.30, local=True)
    m5 = step(ME, m4.id, 5, 1.25, local=True)
    # TRUSTY earned our trust: we reproduced its step
    store.insert(attest(ME, t3.id), local=True)
    # TRUSTY's own lineage built on strangers, and a stranger claim we re-ran (refuted)
    o1 = step(STRANGER, ROOT, 10, 1.45)
    o2 = step(NodeIdentity.generate(), o1.id, 11, 1.44)
    o3 = step(TRUSTY, o2.id, 12, 1.43)
    claim = step(NodeIdentity.generate(), ROOT, 13, 1.20)
    store.insert(attest(ME, claim.id, "refuted"), local=True)
    seen = step(NodeIdentity.generate(), ROOT, 14, 1.46)
    store.insert(attest(TRUSTY, seen.id))  # a trusted peer attested it: kept
    working = step(NodeIdentity.generate(), ROOT, 15, 1.47)  # what we run on right now
    store.insert(make_announce(ME, genome=GENOME, topics=["optimizer"], arena=ARENA,
                               working_on=f"{working.id.hex()} try setting 15",
                               t=next(_t)), local=True)
    honest = {r.id for r in (s1, m2, t3, m4, m5, o1, o2, o3, claim, seen, working)}

    # the flood, through the node's admission (budgets big enough to let it all in)
    budgets = StorageBudgets(strangers_burst=1 << 30, peer_burst=1 << 30,
                             author_burst=1 << 30)
    trust = TrustPolicy(store, ME.public_key)
    reps = trust.reputations()
    keep = {ME.public_key} | {a for a, r in reps.items() if r >= trust.rules.trust_threshold}
    assert keep == {ME.public_key, TRUSTY.public_key}
    store.trusted_authors = frozenset(keep)
    ingest, _ = ingest_for(store, budgets, trusted=keep)
    flood, previous = [], None
    for n in range(1000):
        key = NodeIdentity.generate()
        kind = n % 5
        if kind == 0 or previous is None:
            record = junk(key, n=n)
        elif kind == 1:
            record = junk(key, parent=previous.id, n=n)  # chains of junk
        elif kind == 2:
            record = attest(key, previous.id)  # fresh keys vouching for each other
        elif kind == 3:
            record = junk(key, parent=random.choice([m2, m4, m5, t3]).id, n=n)  # on ours
        else:
            record = attest(key, random.choice([m5, s1, o1]).id)
        assert ingest.offer(record, "flooder") == STORED
        flood.append(record)
        if record.kind == "experiment":
            previous = record
    before = store.count()

    policy = RetentionPolicy(quota_bytes=0, min_age_s=3600)
    # within the hour nothing is pruned: the loop may be about to pick any of it
    assert prune(store, keep_authors=keep, policy=policy).deleted == 0
    report = prune(store, keep_authors=keep, policy=policy,
                   now_ms=store_module._now_ms() + 2 * HOUR_MS)
    assert report.deleted == len(flood) and store.count() == before - len(flood)
    assert report.unprotected_bytes == 0 and report.pins >= 1
    assert all(store.has(i) for i in honest)
    assert not any(store.has(r.id) for r in flood)
    assert store.integrity_check() == "ok"
    # nothing left references a deleted record
    assert store._conn.execute("SELECT count(*) FROM parents p WHERE NOT EXISTS "
                               "(SELECT 1 FROM records r WHERE r.id = p.child)").fetchone()[0] == 0

    # the best lineage the node uses, exported and rebuilt step by step, byte for byte
    lineage = Lineage(store, BASE, ROOT)  # a fresh cache: everything from the store
    best = store.best(ARENA, verified_ids=TrustPolicy(store, ME.public_key).predicate())
    assert best == m5
    chain = lineage.chain(best.id)
    assert [r.id for r in chain] == [s1.id, m2.id, t3.id, m4.id, m5.id]
    for record in chain:
        assert lineage.source_of(record.id).encode() == sources[record.id].encode()
        assert export_source(lineage, record.id) == sources[record.id]
    assert apply_patch(BASE, export_patch(lineage, best.id)) == sources[m5.id]
    trust = TrustPolicy(store, ME.public_key)
    series = export_series(lineage, best.id,
                           verified_by=lambda rid: trust.verified_by(store.get(rid)))
    assert series.count("\nSubject: [PATCH ") == 5
    rebuilt = BASE
    for record in chain:  # each step's own patch, replayed from the genome
        rebuilt = apply_patch(rebuilt, record.patch)
        assert rebuilt == sources[record.id]
    for other in (o3, working):
        assert lineage.source_of(other.id) == sources[other.id]


def test_prune_takes_the_oldest_strangers_first_down_to_the_quota(store, monkeypatch):
    now = [1_900_000_000_000]
    monkeypatch.setattr(store_module, "_now_ms", lambda: now[0])
    records = []
    for i in range(30):
        records.append(junk(NodeIdentity.generate(), n=i))
        store.insert(records[-1])
        now[0] += 60_000
    costs = [store.stored_cost(r) for r in records]
    quota = sum(costs[10:])  # room for the 20 newest
    deleted, freed, left = store.prune(keep_authors=[], quota_bytes=quota, min_age_ms=0,
                                       now_ms=now[0])
    assert deleted == 10 and freed == sum(costs[:10]) and left == quota
    assert not any(store.has(r.id) for r in records[:10])
    assert all(store.has(r.id) for r in records[10:])


def test_pins_come_from_our_announce_and_the_run_in_flight(store):
    claim = exp(STRANGER, ROOT, desc="a claim")
    parent = exp(STRANGER, ROOT, desc="a parent")
    store.insert_many([claim, parent])
    store.insert(make_announce(ME, genome=GENOME, topics=["optimizer"], arena=ARENA,
                               working_on=f"{ROOT.hex()} verify {claim.id.hex()[:16]}: x",
                               t=next(_t)), local=True)
    store.set_meta("loop.inflight", '{"parents": ["%s"]}' % parent.id.hex())
    assert pins(store) == {ROOT, claim.id, parent.id}
    store.set_meta("loop.inflight", "not json")
    assert pins(store) == {ROOT, claim.id}


def test_a_pruned_record_is_not_fetched_again_unless_something_we_keep_needs_it(store):
    ingest, _ = ingest_for(store)
    old = junk(NodeIdentity.generate(), n=1)
    ingest.offer(old, "p")
    store.prune(keep_authors=[], quota_bytes=0, min_age_ms=0,
                now_ms=store_module._now_ms() + 1000)
    assert not store.has(old.id)
    assert ingest.unknown([old.id]) == []  # a peer's heads do not bring it back
    assert ingest.offer(old, "p") != STORED
    store.insert(exp(ME, old.id, desc="we build on it after all"), local=True)
    assert ingest.unknown([old.id]) == [old.id] and store.wanted() == [old.id]
    assert ingest.offer(old, "p") == STORED

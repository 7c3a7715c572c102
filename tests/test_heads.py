"""swarm.heads: the sync server's heads answers stay equal to a fresh computation from the
store across inserts (in any order, in batches, by another connection) and deletions,
without rebuilding on every insert."""
import hashlib
import random

import pytest

from swarm.heads import HeadsIndex
from swarm.identity import NodeIdentity
from swarm.records import make_attestation, make_experiment
from swarm.store import Store

GENOME = "0123456789abcdef"
ARENA = "embedded/tokens:300000/cpu"
ROOT = hashlib.sha256(b"base").digest()
TOPICS = ["optimizer", "schedule", "init"]
QUERIES = [[], ["optimizer"], ["schedule"], ["init", "optimizer"], TOPICS, ["nothing"]]
KEYS = [NodeIdentity(bytes([n]) * 32) for n in range(1, 6)]


def reference(store, topics, limit=30_000):
    """The answer as computed before the index: heads per topic newest first, then the
    attestations of experiments in those topics, oldest first (topics sorted, as
    swarm.network asks)."""
    topics = sorted(set(topics))
    ids = []
    for topic in topics or [None]:
        ids.extend(r.id for r in store.heads(topic=topic, limit=limit))
    topic_set = set(topics)
    for attestation in store.since(0, kind="attestation"):
        if len(ids) >= limit:
            break
        target = store.get(attestation.target)
        if not topic_set or (target is not None and target.topic in topic_set):
            ids.append(attestation.id)
    return list(dict.fromkeys(ids))[:limit]


def world(rng, n=300, t0=1_760_000_000_000):
    """A random DAG over three topics (merges included) and attestations, some of
    records that never arrive."""
    records, experiments = [], []
    for i in range(n):
        parents = [ROOT] if not experiments or rng.random() < 0.1 else \
            [rng.choice(experiments).id]
        if experiments and rng.random() < 0.05:
            parents.append(rng.choice(experiments).id)
        record = make_experiment(rng.choice(KEYS), genome=GENOME,
                                 parents=list(dict.fromkeys(parents)),
                                 topic=rng.choice(TOPICS), arena=ARENA, patch="",
                                 desc=f"e{i}", agent="a",
                                 result={"status": "ok", "val_bpb": 1.0},
                                 t=t0 + rng.randrange(0, 10_000) * 1000)
        experiments.append(record)
        records.append(record)
        if rng.random() < 0.25:
            target = rng.choice(experiments).id if rng.random() < 0.9 else bytes([i % 256]) * 32
            records.append(make_attestation(rng.choice(KEYS), genome=GENOME, target=target,
                                            arena=ARENA, verdict="reproduced",
                                            result={"status": "ok", "val_bpb": 1.0},
                                            t=t0 + rng.randrange(0, 10_000) * 1000))
    return records


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_index_equals_a_fresh_rebuild_after_every_batch_of_inserts(tmp_path, seed):
    rng = random.Random(seed)
    store = Store.open(tmp_path / "s", root_id=ROOT)
    index = HeadsIndex(store)
    records = world(rng)
    rng.shuffle(records)  # children before parents, attestations before targets
    i = 0
    while i < len(records):
        batch = records[i:i + rng.choice([1, 1, 3, 17])]
        i += len(batch)
        if len(batch) == 1:
            store.insert(batch[0])
        else:
            store.insert_many(batch)
        for topics in rng.sample(QUERIES, 2):
            assert index.answer(topics) == reference(store, topics)
    for topics in QUERIES:
        assert index.answer(topics) == reference(store, topics)
        assert index.answer(topics) == HeadsIndex(store).answer(topics)
    assert index.rebuilds == 1  # updated in place: never rebuilt by an insert
    store.close()


def test_the_index_follows_deletions_and_other_connections(tmp_path):
    rng = random.Random(7)
    store = Store.open(tmp_path / "s", root_id=ROOT)
    index = HeadsIndex(store)
    records = world(rng, n=120)
    store.insert_many(records[:60])
    other = Store.open(tmp_path / "s", root_id=ROOT)  # e.g. a `loopy` command's store
    other.insert_many(records[60:])
    other.close()
    for topics in QUERIES:
        assert index.answer(topics) == reference(store, topics)
    deleted, _, _ = store.prune(keep_authors=[], quota_bytes=0, min_age_ms=0,
                                now_ms=2 ** 50)
    assert deleted > 0
    for topics in QUERIES:
        assert index.answer(topics) == reference(store, topics)
    index.close()
    store.close()


def test_answers_are_bounded_and_cached_until_the_index_changes(tmp_path):
    store = Store.open(tmp_path / "s", root_id=ROOT)
    index = HeadsIndex(store, limit=50)
    store.insert_many(world(random.Random(3), n=200))
    first = index.answer([])
    assert len(first) == 50 and first == reference(store, [], limit=50)
    assert index.answer([]) is first  # cached
    store.insert(make_experiment(KEYS[0], genome=GENOME, parents=[ROOT], topic="init",
                                 arena=ARENA, patch="", desc="new", agent="a",
                                 result={"status": "ok", "val_bpb": 1.0},
                                 t=1_900_000_000_000))
    assert index.answer([]) is not first and index.answer([]) == reference(store, [], 50)
    store.close()

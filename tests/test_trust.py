"""Verification and trust: who counts as a verifier, and a swarm that liars cannot poison."""
import pytest

from experiments.simulation.simulate import false_steps, run
from genome import genome_id, genome_root_id
from swarm.identity import NodeIdentity
from swarm.records import make_attestation, make_experiment
from swarm.store import Store
from swarm.trust import PENALTY, REWARD, TrustPolicy, TrustRules

G = genome_id()
ROOT = genome_root_id()
ARENA = "synthetic/tokens:300000/sim"
OK = {"status": "ok", "val_bpb": 1.5, "train_s": 1.0, "total_s": 2.0, "tokens": 1, "steps": 1,
      "params": 1, "peak_mem_mb": 1.0}


def keys(tmp_path, *names):
    return [NodeIdentity.load_or_create(tmp_path / n) for n in names]


def claim(author, val=1.5, desc="x"):
    return make_experiment(author, genome=G, parents=[ROOT], topic="general", arena=ARENA,
                           patch="", desc=desc, agent="test", result=dict(OK, val_bpb=val))


def attest(verifier, target, verdict="reproduced"):
    return make_attestation(verifier, genome=G, target=target.id, arena=ARENA,
                            verdict=verdict, result=OK)


@pytest.fixture
def world(tmp_path):
    me, alice, bob, mallory, *sybils = keys(tmp_path, "me", "alice", "bob", "mallory",
                                            *(f"s{i}" for i in range(10)))
    store = Store.open(tmp_path / "store", root_id=ROOT)
    return store, TrustPolicy(store, me.public_key, TrustRules(k=2)), me, alice, bob, \
        mallory, sybils


def test_own_records_and_own_reproductions_are_verified(world):
    store, trust, me, alice, *_ = world
    mine, theirs = claim(me, desc="mine"), claim(alice, desc="theirs")
    store.insert(mine, local=True)
    store.insert(theirs)
    assert trust.is_verified(mine)
    assert not trust.is_verified(theirs)
    store.insert(attest(me, theirs))
    assert trust.is_verified(theirs)
    assert trust.reputation(alice.public_key) == REWARD
    assert trust.verified_by(theirs) == ["self"]


def test_the_operators_own_nodes_count_as_this_node_and_no_one_else_does(world):
    store, _, me, alice, bob, mallory, sybils = world
    trust = TrustPolicy(store, me.public_key, TrustRules(k=2, operator_keys=frozenset(
        {alice.public_key})))
    hers, his = claim(alice, desc="hers"), claim(bob, desc="his")
    for r in (hers, his):
        store.insert(r)
    assert trust.is_verified(hers) and trust.my_verdict(hers) == "reproduced"
    assert not trust.is_verified(his)
    assert trust.trusted_author()(alice.public_key)
    assert not trust.trusted_author()(bob.public_key)
    # her attestation counts as a trusted one; sybils' still count for nothing
    for s in sybils:
        store.insert(attest(s, his))
    store.insert(attest(alice, his))
    assert trust.trusted_attesters(his) == [alice.public_key] and not trust.is_verified(his)
    # no refutation and no dissent makes the operator's node a liar or a stranger
    store.insert(attest(me, claim(alice, desc="x2"), "refuted"))
    assert trust.reputation(alice.public_key) >= TrustRules().trust_threshold
    assert not trust.is_liar(alice.public_key)
    # the same store read by a node without the setting trusts her for nothing
    plain = TrustPolicy(store, me.public_key, TrustRules(k=2))
    assert not plain.is_verified(hers) and not plain.trusted_author()(alice.public_key)


def test_sybils_vouching_for_each_other_count_for_nothing(world):
    store, trust, me, alice, bob, mallory, sybils = world
    lie = claim(mallory, val=0.1)
    store.insert(lie)
    for s in sybils:
        store.insert(attest(s, lie))
    assert not trust.is_verified(lie)
    assert trust.verified_by(lie) == []


def test_k_trusted_peers_verify_and_a_refuted_author_stops_counting(world):
    store, trust, me, alice, bob, mallory, _ = world
    # We reproduced one claim each of alice and bob: they are trusted verifiers now.
    for peer in (alice, bob):
        c = claim(peer, desc=f"good {peer.peer_id}")
        store.insert(c)
        store.insert(attest(me, c))
    lie = claim(mallory, val=1.2, desc="too good")
    store.insert(lie)
    store.insert(attest(alice, lie))
    assert not trust.is_verified(lie)          # one trusted attestation: k=2 not reached
    store.insert(attest(bob, lie))
    assert trust.is_verified(lie)              # two trusted peers reproduced it
    # Later we refute another of mallory's claims: mallory is a liar now, and the record
    # that was verified through others stops counting (and so stops being a parent).
    other = claim(mallory, val=1.1, desc="another")
    store.insert(other)
    store.insert(attest(me, other, "refuted"))
    assert trust.reputation(mallory.public_key) == -PENALTY
    assert not trust.is_verified(lie)
    assert not trust.is_verified(other)


def test_our_refutation_beats_any_number_of_attestations(world):
    store, trust, me, alice, bob, mallory, _ = world
    for peer in (alice, bob):
        c = claim(peer, desc=f"good {peer.peer_id}")
        store.insert(c)
        store.insert(attest(me, c))
    target = claim(mallory, val=1.3)
    store.insert(target)
    store.insert(attest(alice, target))
    store.insert(attest(bob, target))
    store.insert(attest(me, target, "refuted"))
    assert not trust.is_verified(target)
    assert trust.verified_by(target) == []


def test_a_trusted_refutation_vetoes_but_an_untrusted_one_does_not(world):
    store, trust, me, alice, bob, mallory, sybils = world
    for peer in (alice, bob):
        c = claim(peer, desc=f"good {peer.peer_id}")
        store.insert(c)
        store.insert(attest(me, c))
    honest = claim(bob, val=1.3, desc="honest")
    store.insert(honest)
    store.insert(attest(alice, honest))
    store.insert(attest(sybils[0], honest))
    for s in sybils[1:]:  # untrusted keys cannot veto a record
        store.insert(attest(s, honest, "refuted"))
    assert trust.trusted_refuters(honest) == []
    lie = claim(mallory, val=1.2, desc="lie")
    store.insert(lie)
    store.insert(attest(sybils[0], lie))
    store.insert(attest(alice, lie, "refuted"))
    assert trust.trusted_refuters(lie) == [alice.public_key]
    assert not trust.is_verified(lie)


def test_authors_trusted_peers_refuted_are_doubted_but_sybils_cannot_smear(world):
    store, trust, me, alice, bob, mallory, sybils = world
    good = claim(alice, desc="alice, reproduced by me")
    store.insert(good)
    store.insert(attest(me, good))                       # alice is trusted now
    lie = claim(mallory, val=1.2, desc="mallory's lie")
    store.insert(lie)
    store.insert(attest(alice, lie, "refuted"))
    honest = claim(bob, val=1.3, desc="bob")
    store.insert(honest)
    for s in sybils:                                     # untrusted keys smear bob
        store.insert(attest(s, honest, "refuted"))
    assert trust.doubted_authors() == {mallory.public_key: 1}


def test_reputation_falls_much_faster_than_it_rises(world):
    store, trust, me, alice, *_ = world
    for i in range(3):
        c = claim(alice, desc=f"good {i}")
        store.insert(c)
        store.insert(attest(me, c))
    bad = claim(alice, desc="bad")
    store.insert(bad)
    store.insert(attest(me, bad, "refuted"))
    assert trust.reputation(alice.public_key) == 3 * REWARD - PENALTY < 0
    trust.save_reputations()
    assert store.peer(alice.peer_id).reputation == 3 * REWARD - PENALTY


@pytest.mark.parametrize("liars", [1, 2])
def test_liars_cannot_poison_an_honest_swarm(tmp_path, liars):
    """Liars publish improvements that do not reproduce, attest to each other's lies from
    many keys, and replay old records; the honest swarm still progresses, and none of its best
    verified records (what they announce as head and export) holds a false step."""
    result = run(tmp_path, honest=3, liars=liars, experiments=25, landscape=0)
    assert sum(len(l.claims) for l in result.liars) >= 10
    progressed = 0
    for loop in result.loops:
        best = loop.scores.best()
        assert best is not None
        if best.record is not None:   # one node may find nothing in 25 steps: that is luck
            progressed += 1
            assert best.val_bpb < loop.scores.root_score()
            assert false_steps(loop, best.id) == []
        for lie in (c for l in result.liars for c in l.claims):
            assert not loop.trust.is_verified(lie)
        done = loop.store.attestation_count(loop.identity.public_key)
        runs = len(loop.store.experiments(local=True))
        assert done <= loop.config.verify_share * (done + runs) + 1e-9
    assert progressed >= 1, "liars stopped the whole honest swarm"

"""Announces are hints, never vetoes (issue 18): swarm.announces and the loop under
announce attacks at small scale.

Attacks: one key squatting the seed-0 baseline forever; 1,000 keys squatting every seed;
a copied announce from a key that sorts first; an announce timed far in the future; a
flood of strangers' announces. And what an honest author earns: promises kept.
"""
import random
import time

import pytest
import trio

from experiments.agents import load_brief, make_agent
from experiments.research.loop import YIELDED, LoopConfig, ResearchLoop
from experiments.research.scoreboard import ScoreRules, is_baseline
from experiments.research.swarm_link import announce_policy, connect_to_swarm
from experiments.simulation.synthetic import SyntheticTrainer
from genome import base_train_source, genome_id, genome_root_id
from swarm import announces as ann
from swarm import records as rec
from swarm.announces import AnnounceLimits, AnnouncePolicy
from swarm.descriptions import working_on
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage
from swarm.records import make_announce, make_attestation, make_experiment
from swarm.store import Store

ROOT = genome_root_id()
G = genome_id()
ARENA = "synthetic/tokens:300000/sim"
T0 = 1_800_000_000_000
CRASH = {"status": "crash", "reason": "x"}


def key(n: int) -> NodeIdentity:
    return NodeIdentity(n.to_bytes(4, "big") * 8)


def announce(who, text, *, t=None, arena=ARENA):
    return make_announce(who, genome=G, topics=["general"], arena=arena, working_on=text,
                         t=t)


class Clock:
    """One clock for the store's receipt times and the policy's 'now' (milliseconds)."""

    def __init__(self, monkeypatch, start=T0):
        self.ms = start
        monkeypatch.setattr("swarm.store._now_ms", lambda: self.ms)

    def __call__(self) -> float:   # the policy's clock: seconds
        return self.ms / 1000

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "store", root_id=ROOT)
    yield s
    s.close()


def policy(store, me, clock, reps=None, **limits):
    return AnnouncePolicy(store, me.public_key, arena=ARENA, clock=clock,
                          reputations=(lambda: reps or {}),
                          limits=AnnounceLimits(**limits))


def keep_promise(store, who, clock, desc):
    """`who` announces an edit on the root and publishes its record a minute later."""
    store.insert(announce(who, working_on(ROOT, desc)))
    clock.advance(60)
    store.insert(make_experiment(who, genome=G, parents=[ROOT], topic="general",
                                 arena=ARENA, patch="", desc=desc, agent="a",
                                 result=CRASH))


# --------------------------------------------------------------------------- the loop


class FakeNet:
    """What connect_to_swarm needs of swarm.network.SwarmNode: publish stores, announce
    stores our announce (as the network does), nothing travels."""

    def __init__(self, store, identity):
        self.store, self.identity = store, identity

    async def publish(self, record):
        self.store.insert(record, local=True)

    async def announce(self, *, arena, working_on="", head=None):
        self.store.insert(make_announce(self.identity, genome=G, topics=["general"],
                                        arena=arena, working_on=working_on, head=head),
                          local=True)


def make_loop(home, *, delay_s=0.0, claim_check_s=0.0, seed=1):
    home.mkdir(parents=True, exist_ok=True)
    store = Store.open(home, root_id=ROOT)
    identity = NodeIdentity.load_or_create(home)
    loop = ResearchLoop(
        store=store, lineage=Lineage(store, base_train_source(), ROOT), identity=identity,
        genome=G, root_id=ROOT, trainer=SyntheticTrainer(seed, sigma=0.001, delay_s=delay_s),
        agent=make_agent("mutate"), brief=load_brief("general"), home=home,
        rng=random.Random(seed),
        config=LoopConfig(topic="general", rules=ScoreRules(), claim_check_s=claim_check_s))
    connect_to_swarm(loop, FakeNet(store, identity))
    return loop


async def test_one_key_squatting_the_seed_0_baseline_forever(tmp_path):
    loop = make_loop(tmp_path)
    squatter = key(1)
    text = working_on(ROOT, "baseline seed=0")
    seeds = []
    for _ in range(3):
        # it re-announces before every step, with its clock 9 minutes ahead
        loop.store.insert(announce(squatter, text, t=rec.now_ms() + 9 * 60_000))
        outcome = await loop.step()
        assert outcome.kind == "baseline"
        seeds.append(is_baseline(outcome.record))
    assert 0 in seeds                      # reordered at most: seed 0 ran, and not twice
    assert loop.scores.root_score() is not None and loop.scores.sigma() is not None
    outcome = await loop.step()            # and research goes on
    assert outcome.kind in ("experiment", "no-proposal")


def test_a_squatter_holds_a_hint_for_one_hold_at_most_then_counts_for_nothing(
        store, monkeypatch):
    clock = Clock(monkeypatch)
    me, squatter = key(1), key(2)
    text = working_on(ROOT, "baseline seed=0")
    p = policy(store, me, clock)
    hold = ann.hold_s(ARENA)
    for _ in range(int(hold // 60) - 1):          # re-announced every minute
        store.insert(announce(squatter, text, t=int(clock.ms)))
        assert p.busy() == {(ROOT, "baseline seed=0")}
        clock.advance(60)
    clock.advance(120)
    store.insert(announce(squatter, text, t=int(clock.ms)))
    assert p.busy() == set()                      # held too long: not a run any more
    # the promise is broken: whatever it announces next counts for nothing
    store.insert(announce(squatter, working_on(ROOT, "baseline seed=1"), t=int(clock.ms)))
    assert store.announce_tallies([squatter.public_key], clock.ms)[squatter.public_key] \
        == (0, 1)
    assert p.busy() == set()


async def test_a_thousand_keys_squatting_every_seed(tmp_path):
    loop = make_loop(tmp_path)
    squatters = [key(1000 + i) for i in range(1000)]
    loop.store.insert_many(
        [announce(k, working_on(ROOT, f"baseline seed={i}")) for i, k in enumerate(squatters)])
    assert loop.store.count("announce") == 1000
    hints = announce_policy(loop).hints()
    assert len(hints) == ann.STRANGER_SLOTS and {h.standing for h in hints} == {"stranger"}
    seeds = []
    for _ in range(3):
        outcome = await loop.step()
        assert outcome.kind == "baseline"
        seeds.append(is_baseline(outcome.record))
    assert 0 in seeds and loop.scores.root_score() is not None
    outcome = await loop.step()
    assert outcome.kind in ("experiment", "no-proposal")


def test_no_number_of_announced_seeds_makes_the_loop_raise(tmp_path):
    loop = make_loop(tmp_path)
    every = {(ROOT, f"baseline seed={s}") for s in range(20_000)}
    loop.busy = loop.firm_busy = lambda: every   # even were they all trusted peers
    assert loop._missing_baseline_seed() is None   # seeds 0-2 run by peers we trust
    assert loop._free_seed() == 20_000             # a health check still finds a seed


async def test_a_copied_announce_from_a_key_that_sorts_first_does_not_cancel_our_run(
        tmp_path):
    loop = make_loop(tmp_path / "node", delay_s=1.5, claim_check_s=0.1)
    me = loop.identity
    copier = min((key(i) for i in range(1, 40)), key=lambda k: k.public_key)
    assert copier.public_key < me.public_key
    # even a copier we trust (it fooled us before) does not make us yield
    reps = {copier.public_key: 5.0}
    loop.trust.reputations = lambda: reps
    net = FakeNet(loop.store, me)

    async def announce_and_get_copied(text):
        await net.announce(arena=loop.arena, working_on=text)
        time.sleep(0.003)               # it hears ours, then copies it (our clock)
        loop.store.insert(announce(copier, text, t=rec.now_ms() - 60_000))
    loop.announce = announce_and_get_copied
    with trio.fail_after(30):
        outcome = await loop.step()
    assert outcome.kind == "baseline" and outcome.reason != YIELDED
    assert outcome.record.author == me.public_key


def test_copied_announces_never_make_us_yield(store, monkeypatch):
    clock = Clock(monkeypatch)
    me = key(500)
    copiers = sorted((key(i) for i in range(1, 30)), key=lambda k: k.public_key)
    assert copiers[0].public_key < me.public_key
    text = working_on(ROOT, "[X*2] x", "0123456789abcdef")
    store.insert(announce(me, text), local=True)
    reps = {c.public_key: 3.0 for c in copiers}
    p = policy(store, me, clock, reps)
    for c in copiers:
        clock.advance(0.001)
        store.insert(announce(c, text, t=T0 - 3_600_000))   # claims to be an hour older
        assert not p.should_yield(ROOT, "[X*2] x", "0123456789abcdef")
    # ours renewed every minute keeps its first receipt: still no yield
    clock.advance(60)
    store.insert(announce(me, text, t=int(clock.ms)), local=True)
    assert not p.should_yield(ROOT, "[X*2] x", "0123456789abcdef")


def test_an_announce_timed_far_in_the_future_expires_by_our_clock(store, monkeypatch):
    clock = Clock(monkeypatch)
    me, future = key(1), key(2)
    far = announce(future, working_on(ROOT, "[X*2] x"), t=T0 + 365 * 86_400_000)
    with pytest.raises(rec.RecordError, match="future"):   # the network never takes it
        rec.decode_envelope(far.envelope, genome=G, now_ms=T0)
    store.insert(far)            # a store that got it anyway
    p = policy(store, me, clock)
    assert p.busy() == {(ROOT, "[X*2] x")}
    clock.advance(ann.EXPIRE_S + 1)
    assert p.busy() == set()     # its own `t` keeps nothing fresh
    # nor does an older-timed replay of it, or its author's honest next announce
    store.insert(announce(future, working_on(ROOT, "[X*2] x"), t=T0))
    assert p.busy() == set()


def test_a_flood_of_strangers_reserves_no_more_than_the_cap(store, monkeypatch):
    clock = Clock(monkeypatch)
    me, trusted, earned = key(1), key(2), key(3)
    keep_promise(store, earned, clock, "[A] a")
    keep_promise(store, earned, clock, "[B] b")
    store.insert(announce(earned, working_on(ROOT, "[EARNED] e", "e" * 16)))
    store.insert(announce(trusted, working_on(ROOT, "[TRUSTED] t", "f" * 16)))
    for i in range(300):
        clock.advance(0.01)
        store.insert(announce(key(100 + i), working_on(ROOT, f"[S{i}] s", f"{i:016x}")))
    p = policy(store, me, clock, {trusted.public_key: 2.0})
    hints = p.hints()
    assert [h.standing for h in hints] == ["trusted", "earned"] + ["stranger"] * 4
    busy = p.busy()
    assert len(busy) == 2 + ann.STRANGER_SLOTS
    assert (ROOT, "[TRUSTED] t") in busy and (ROOT, "[EARNED] e") in busy
    assert len(p.programs()) == 2 + ann.STRANGER_SLOTS
    assert p.busy(firm_only=True) == {(ROOT, "[TRUSTED] t"), (ROOT, "[EARNED] e")}


def test_promises_kept_earn_weight_and_promises_broken_lose_it(store, monkeypatch):
    clock = Clock(monkeypatch)
    me, peer, liar = key(1), key(2), key(3)
    p = policy(store, me, clock, {liar.public_key: -10.0})

    def standing(who):
        return p.standing(who.public_key, p.reputations(),
                          store.announce_tallies([who.public_key], clock.ms))
    assert standing(peer) == "stranger"
    keep_promise(store, peer, clock, "[A] a")
    assert standing(peer) == "stranger"
    # a re-run announced and attested is a promise kept too
    target = make_experiment(key(9), genome=G, parents=[ROOT], topic="general", arena=ARENA,
                             patch="", desc="claim", agent="a", result=CRASH)
    store.insert(announce(peer, working_on(ROOT, f"verify {target.id_hex[:16]}: claim")))
    clock.advance(60)
    store.insert(make_attestation(peer, genome=G, target=target.id, arena=ARENA,
                                  verdict="refuted", result=CRASH))
    assert store.announce_tallies([peer.public_key], clock.ms)[peer.public_key] == (2, 0)
    assert standing(peer) == "earned"
    # two runs announced that never turned into records (or too late) lose it
    for desc in ("[B] b", "[C] c"):
        store.insert(announce(peer, working_on(ROOT, desc)))
        clock.advance(ann.hold_s(ARENA) + 1)
    store.insert(make_experiment(peer, genome=G, parents=[ROOT], topic="general",
                                 arena=ARENA, patch="", desc="[C] c", agent="a",
                                 result=CRASH))         # after its deadline
    assert store.announce_tallies([peer.public_key], clock.ms)[peer.public_key] == (2, 2)
    assert standing(peer) == "stranger"
    store.insert(announce(peer, working_on(ROOT, "[D] d")))
    clock.advance(ann.hold_s(ARENA) + 1)
    assert standing(peer) == "ignored"
    assert standing(liar) == "ignored"


def test_announces_of_other_arenas_reserve_nothing_here(store, monkeypatch):
    clock = Clock(monkeypatch)
    store.insert(announce(key(2), working_on(ROOT, "baseline seed=0"),
                          arena="other/tokens:1000/cpu"))
    assert policy(store, key(1), clock).busy() == set()


def test_the_store_keeps_a_bounded_number_of_announces(store, monkeypatch):
    clock = Clock(monkeypatch)
    monkeypatch.setattr(ann, "MAX_STORED_ANNOUNCES", 20)
    me, honest = key(1), key(2)
    store.insert(announce(me, working_on(ROOT, "[MINE] m")), local=True)
    keep_promise(store, honest, clock, "[A] a")
    store.insert(announce(honest, working_on(ROOT, "[H] h")))
    for i in range(100):
        clock.advance(0.01)
        store.insert(announce(key(100 + i), working_on(ROOT, f"[S{i}] s")))
    authors = {a.author for a in store.announces()}
    assert len(authors) == 20 + 1                       # ours is never pruned
    assert me.public_key in authors and honest.public_key in authors   # kept a promise
    assert key(199).public_key in authors and key(100).public_key not in authors
    # and nothing is kept longer than RETAIN_S after it was received
    clock.advance(ann.RETAIN_S + 1)
    store.insert(announce(key(999), working_on(ROOT, "[NEW] n")))
    assert {a.author for a in store.announces()} == {me.public_key, key(999).public_key}


def test_the_store_keeps_a_bounded_promise_history(store, monkeypatch):
    clock = Clock(monkeypatch)
    who = key(2)
    for i in range(ann.PROMISES_PER_AUTHOR + 10):
        clock.advance(1)
        store.insert(announce(who, working_on(ROOT, f"[E{i}] e")))
    count = store._conn.execute("SELECT count(*) FROM announce_promises").fetchone()[0]
    assert count == ann.PROMISES_PER_AUTHOR


def test_promises_and_holds_read_the_working_on_convention():
    p = ann.promise_of(working_on(ROOT, "verify 0123456789abcdef: x"))
    assert p == ann.Promise(ROOT, "verify 0123456789abcdef: x", "0123456789abcdef")
    assert ann.promise_of("presence only") is None
    assert ann.hold_s("climbmix/time:300/nvidia-h100-80gb") == ann.HOLD_S
    assert ann.hold_s("climbmix/time:3600/nvidia-h100-80gb") == 3 * 3600 + 600

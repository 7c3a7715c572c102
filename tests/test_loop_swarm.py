"""The research loop among peers: splitting baseline seeds, yielding a run another node
announced too, the first re-run, and the scoreboard's consistent reads (issue 8).
Announces are hints (issue 18): only peers who earned trust defer a baseline or make a
node yield, and only when they announced first (tests/test_announces.py has the attacks)."""
import json
import math
import random
import time

import trio

from experiments.agents import load_brief, make_agent
from experiments.research.loop import YIELDED, LoopConfig, ResearchLoop
from experiments.research.scoreboard import ScoreRules, is_baseline
from experiments.research.swarm_link import yield_to_peer
from experiments.simulation.synthetic import SyntheticTrainer
from genome import base_train_source, genome_id, genome_root_id
from swarm.descriptions import working_on
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage
from swarm.records import make_announce, make_experiment
from swarm.store import Store

ROOT = genome_root_id()


def make_loop(home, *, trainer=None, busy=None, claim_check_s=3.0, seed=1, firm=True):
    home.mkdir(parents=True, exist_ok=True)
    store = Store.open(home, root_id=ROOT)
    loop = ResearchLoop(
        store=store, lineage=Lineage(store, base_train_source(), ROOT),
        identity=NodeIdentity.load_or_create(home), genome=genome_id(), root_id=ROOT,
        trainer=trainer or SyntheticTrainer(seed, sigma=0.001), agent=make_agent("mutate"),
        brief=load_brief("general"), home=home, rng=random.Random(seed),
        config=LoopConfig(topic="general", rules=ScoreRules(), claim_check_s=claim_check_s))
    if busy is not None:
        loop.busy = busy
        if firm:    # announced by peers who earned our trust
            loop.firm_busy = busy
    return loop


def trust(loop, *keys):
    """Make `keys` peers the loop trusts (as if it had reproduced their claims)."""
    reps = {k.public_key: 1.0 for k in keys}
    loop.trust.reputations = lambda: reps


def announce(identity, parent, desc, arena):
    return make_announce(identity, genome=genome_id(), topics=["general"], arena=arena,
                         working_on=working_on(parent, desc))


def ordered_keys(tmp_path, n):
    ids = [NodeIdentity.load_or_create(tmp_path / f"k{i}") for i in range(n)]
    return sorted(ids, key=lambda i: i.public_key)


async def test_nodes_that_start_together_take_different_baseline_seeds(tmp_path):
    busy = {(ROOT, "baseline seed=0")}
    loop = make_loop(tmp_path, busy=lambda: busy)
    assert loop._missing_baseline_seed() == 1
    busy.add((ROOT, "baseline seed=1"))
    assert loop._missing_baseline_seed() == 2
    busy.add((ROOT, "baseline seed=2"))
    assert loop._missing_baseline_seed() is None   # three seeds are covered
    busy.clear()
    assert loop._missing_baseline_seed() == 0      # the peer went quiet: run it ourselves


async def test_strangers_announced_seeds_only_reorder_the_baselines(tmp_path):
    busy = {(ROOT, f"baseline seed={s}") for s in range(3)}
    loop = make_loop(tmp_path, busy=lambda: busy, firm=False)
    assert loop._missing_baseline_seed() == 3      # another seed we need anyway, first
    assert loop.choose_parent() is None            # no root exploration on their word
    seeds = []
    for _ in range(3):
        outcome = await loop.step()
        seeds.append(is_baseline(outcome.record))
    assert seeds == [3, 4, 0]                      # seed 0 last, but run: the root scored
    assert loop.scores.root_score() is not None and loop._missing_baseline_seed() is None


async def test_while_a_peer_runs_the_root_baseline_the_node_explores_the_root(tmp_path):
    busy = {(ROOT, f"baseline seed={s}") for s in range(3)}
    loop = make_loop(tmp_path, busy=lambda: busy)
    parent = loop.choose_parent()
    assert parent.id == ROOT and math.isnan(parent.val_bpb)
    for _ in range(20):       # until an edit runs to the end (some proposals crash)
        outcome = await loop.step()
        assert outcome.kind == "experiment" and outcome.delta is None
        assert list(outcome.record.parents) == [ROOT] and outcome.record.patch
        if outcome.record.status == "ok":
            break
    assert outcome.record.status == "ok"
    # Once the baselines arrive (a trusted peer's), the early edit is judged like any other.
    peer = NodeIdentity.load_or_create(tmp_path / "peer")
    trust(loop, peer)
    trainer = SyntheticTrainer(1, sigma=0.001)
    for s in range(3):
        result = trainer.run(base_train_source(), seed=s)
        loop.store.insert(make_experiment(
            peer, genome=genome_id(), parents=[ROOT], topic="general", arena=loop.arena,
            patch="", desc=f"baseline seed={s}", agent="baseline",
            result=result.to_record_result()))
    busy.clear()
    assert loop.scores.delta(outcome.record) is not None
    assert loop._missing_baseline_seed() is None


async def test_without_a_peer_on_the_root_baseline_the_node_runs_it(tmp_path):
    loop = make_loop(tmp_path, busy=lambda: {(ROOT, "baseline seed=1")})
    assert loop.choose_parent() is None
    outcome = await loop.step()
    assert outcome.kind == "baseline" and is_baseline(outcome.record) == 0


def test_of_two_nodes_announcing_the_same_run_the_later_yields_to_a_trusted_first(
        tmp_path, monkeypatch):
    first, second = (NodeIdentity.load_or_create(tmp_path / k) for k in "ab")
    arena = "synthetic/tokens:300000/sim"
    trusted = {first.public_key: 1.0, second.public_key: 1.0}
    now = int(time.time() * 1000)
    for me, other, expected in ((second, first, True), (first, second, False)):
        store = Store.open(tmp_path / f"store-{expected}", root_id=ROOT)

        def check(parent=ROOT, desc="[X*2] x", reps=trusted):
            return yield_to_peer(store, me.public_key, parent, desc, reputations=lambda: reps)
        received = {first.public_key: now - 2000, second.public_key: now - 1000}

        def receive(who, local=False):   # at the time this test says we received it
            monkeypatch.setattr("swarm.store._now_ms", lambda: received[who.public_key])
            store.insert(announce(who, ROOT, "[X*2] x", arena), local=local)
        assert not check()                                            # nothing announced
        receive(other)
        assert not check()                                            # we did not announce
        receive(me, local=True)
        assert check() is expected       # only the second to announce yields
        assert not check(reps={})            # a stranger never makes us yield
        # Another edit, or the same edit on another parent, is no conflict.
        assert not check(desc="[X*0.5] x")
        assert not check(parent=b"\1" * 32)
        store.close()


async def test_a_run_a_trusted_peer_announced_first_is_cut_short_and_not_recorded(tmp_path):
    low, high = ordered_keys(tmp_path, 2)
    loop = make_loop(tmp_path / "node", trainer=SyntheticTrainer(1, sigma=0.001, delay_s=5.0),
                     claim_check_s=0.2)
    loop.identity = high
    loop.trust.me = high.public_key
    trust(loop, low)

    async def announce_it(text):   # what the network does: store our announce
        loop.store.insert(make_announce(high, genome=genome_id(), topics=["general"],
                                        arena=loop.arena, working_on=text), local=True)
    loop.announce = announce_it
    loop.store.insert(announce(low, ROOT, "baseline seed=0", loop.arena))
    with trio.fail_after(4):   # well before the 5 s run would end
        outcome = await loop.step()
    assert outcome.kind == "no-proposal" and outcome.reason == YIELDED
    assert loop.store.experiments() == []
    # The key does not matter, the order does: the node whose announce came first here
    # (low's, above) keeps its run when the other announces the same later.
    loop.identity, loop.trust.me = low, low.public_key
    trust(loop, high)
    loop.store.insert(announce(high, ROOT, "baseline seed=0", loop.arena))
    loop.trainer = SyntheticTrainer(1, sigma=0.001, delay_s=0.5)

    async def announce_low(text):
        loop.store.insert(make_announce(low, genome=genome_id(), topics=["general"],
                                        arena=loop.arena, working_on=text), local=True)
    loop.announce = announce_low
    outcome = await loop.step()
    assert outcome.kind == "baseline"


async def test_an_edit_that_yields_leaves_no_inflight_marker_and_is_logged(tmp_path):
    low, high = ordered_keys(tmp_path, 2)
    loop = make_loop(tmp_path / "node", claim_check_s=0.2)
    for _ in range(3):
        await loop.step()                       # baselines, no delay
    first = loop.identity                       # whose baselines those were
    loop.identity, loop.trust.me = high, high.public_key
    trust(loop, low, first)
    loop.trainer.delay_s = 3.0
    seen = []

    async def announce_it(text):
        seen.append(text)
        # a trusted peer announced the very same edit just before us
        loop.store.insert(make_announce(low, genome=genome_id(), topics=["general"],
                                        arena=loop.arena, working_on=text))
        loop.store.insert(make_announce(high, genome=genome_id(), topics=["general"],
                                        arena=loop.arena, working_on=text), local=True)
    loop.announce = announce_it
    before = len(loop.store.experiments())
    outcome = await loop.step()
    assert outcome.kind == "no-proposal" and outcome.reason == YIELDED
    assert len(loop.store.experiments()) == before
    assert loop.store.get_meta("loop.inflight") == ""
    logged = [json.loads(x) for x in (tmp_path / "node" / "proposals.jsonl").read_text()
              .splitlines()]
    assert logged[-1]["reason"] == YIELDED


async def test_the_first_re_run_is_allowed_before_the_share_would_allow_it(tmp_path):
    loop = make_loop(tmp_path)
    await loop.step()                           # one run of our own
    assert loop.config.verify_share * 2 < 1     # the share alone would say no
    assert loop.verify_budget_left()


async def test_consistent_reads_give_the_same_scores_and_forget_after_the_block(tmp_path):
    loop = make_loop(tmp_path)
    for _ in range(8):
        await loop.step()
    plain = [(c.id, c.val_bpb) for c in loop.scores.candidates()]
    with loop.scores.consistent():
        with loop.scores.consistent():          # nestable
            inner = [(c.id, c.val_bpb) for c in loop.scores.candidates()]
        assert loop.scores._memo is not None
    assert loop.scores._memo is None
    assert inner == plain
    history = loop.history()
    assert history and all(t.parent_id for t in history)

"""The research loop among peers: splitting baseline seeds, yielding a run another node
announced too, the first re-run, and the scoreboard's consistent reads (issue 8)."""
import json
import math
import random

import trio

from experiments.agents import load_brief, make_agent
from experiments.loop import (YIELDED, LoopConfig, ResearchLoop, working_on,
                              yield_to_peer)
from experiments.scoreboard import ScoreRules, is_baseline
from experiments.synthetic import SyntheticTrainer
from genome import base_train_source, genome_id, genome_root_id
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage
from swarm.records import make_announce, make_experiment
from swarm.store import Store

ROOT = genome_root_id()


def make_loop(home, *, trainer=None, busy=None, claim_check_s=3.0, seed=1):
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
    return loop


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
    # Once the baselines arrive (a peer's), the early edit is judged like any other.
    peer = NodeIdentity.load_or_create(tmp_path / "peer")
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


def test_of_two_nodes_announcing_the_same_run_exactly_the_higher_key_yields(tmp_path):
    low, high = ordered_keys(tmp_path, 2)
    arena = "synthetic/tokens:300000/sim"
    for me, other, expected in ((high, low, True), (low, high, False)):
        store = Store.open(tmp_path / f"store-{expected}", root_id=ROOT)
        assert not yield_to_peer(store, me.public_key, ROOT, "[X*2] x")  # nothing announced
        store.insert(announce(other, ROOT, "[X*2] x", arena))
        assert not yield_to_peer(store, me.public_key, ROOT, "[X*2] x")  # we did not announce
        store.insert(announce(me, ROOT, "[X*2] x", arena), local=True)
        assert yield_to_peer(store, me.public_key, ROOT, "[X*2] x") is expected
        # Another edit, or the same edit on another parent, is no conflict.
        assert not yield_to_peer(store, me.public_key, ROOT, "[X*0.5] x")
        assert not yield_to_peer(store, me.public_key, b"\1" * 32, "[X*2] x")
        store.close()


async def test_a_run_a_lower_key_also_announced_is_cut_short_and_not_recorded(tmp_path):
    low, high = ordered_keys(tmp_path, 2)
    loop = make_loop(tmp_path / "node", trainer=SyntheticTrainer(1, sigma=0.001, delay_s=5.0),
                     claim_check_s=0.2)
    loop.identity = high   # the node holds the higher of the two keys
    loop.trust.me = high.public_key

    async def announce_it(text):   # what the network does: store our announce
        loop.store.insert(make_announce(high, genome=genome_id(), topics=["general"],
                                        arena=loop.arena, working_on=text), local=True)
    loop.announce = announce_it
    loop.store.insert(announce(low, ROOT, "baseline seed=0", loop.arena))
    with trio.fail_after(4):   # well before the 5 s run would end
        outcome = await loop.step()
    assert outcome.kind == "no-proposal" and outcome.reason == YIELDED
    assert loop.store.experiments() == []
    # Not the lower key's turn to yield: the same run goes through.
    loop.identity, loop.trust.me = low, low.public_key
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
    loop.identity, loop.trust.me = high, high.public_key
    loop.trainer.delay_s = 3.0
    seen = []

    async def announce_it(text):
        seen.append(text)
        # a lower key announced the very same edit at the same moment
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

"""Nodes one operator runs on several machines (`trust_peer`): each counts the others'
measurements as its own, so none re-runs another's claims or repeats its baselines, and a
key that is not listed still earns trust only by reproduced claims (swarm/trust.py)."""
import random

from experiments.agents import load_brief, make_agent
from experiments.research.loop import LoopConfig, ResearchLoop
from experiments.research.scoreboard import ScoreRules
from experiments.simulation.synthetic import SyntheticTrainer
from genome import base_train_source, genome_id, genome_root_id
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage
from swarm.records import decode_envelope
from swarm.store import Store
from swarm.trust import TrustRules

ROOT = genome_root_id()


def make_loop(home, *, operator_keys=frozenset(), max_experiments=0, seed=0):
    home.mkdir()
    store = Store.open(home, root_id=ROOT)
    config = LoopConfig(topic="optimizer", rules=ScoreRules(), max_experiments=max_experiments,
                        trust=TrustRules(operator_keys=frozenset(operator_keys)))
    return ResearchLoop(store=store, lineage=Lineage(store, base_train_source(), ROOT),
                        identity=NodeIdentity.load_or_create(home), genome=genome_id(),
                        root_id=ROOT, trainer=SyntheticTrainer(seed, sigma=0.001),
                        agent=make_agent("mutate"), brief=load_brief("optimizer"),
                        config=config, home=home, rng=random.Random(seed))


def hand_over(src, dst):
    """Every record of `src` as gossip or sync would hand it to `dst`."""
    for r in src.store.experiments(arena=src.arena, local=True):
        dst.store.insert(decode_envelope(r.envelope, genome=genome_id()))


async def test_an_operators_nodes_share_baselines_and_build_on_each_other_at_once(tmp_path):
    first = make_loop(tmp_path / "a", max_experiments=20, seed=1)
    await first.serve()
    best = first.scores.best()
    assert best.record is not None
    mine = make_loop(tmp_path / "b", operator_keys={first.identity.public_key}, seed=1)
    stranger = make_loop(tmp_path / "c", seed=1)
    for loop in (mine, stranger):
        hand_over(first, loop)
    # the operator's other node: its seeds set our noise, its best is ours, nothing to re-run
    assert mine.scores.sigma() == first.scores.sigma()
    assert mine.scores.best().id == best.id
    assert mine.pending_claim() is None
    assert mine._missing_baseline_seed() is None
    # a node without the setting: no noise estimate of its own, nothing verified yet
    assert stranger.scores.sigma() is None
    assert stranger.scores.best() is None or stranger.scores.best().record is None
    for loop in (first, mine, stranger):
        loop.store.close()


async def test_on_the_bench_bus_an_operators_nodes_never_repeat_each_others_runs(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import scaling
    mine = await scaling.ideal_swarm(tmp_path / "op", 3, 1, 0, 12, None, operator=True)
    open_swarm = await scaling.ideal_swarm(tmp_path / "open", 3, 1, 0, 12, None)
    assert mine["attestations"] == 0 and mine["duplicates"] == 0
    assert open_swarm["attestations"] + open_swarm["duplicates"] > 0
    assert mine["depth"] >= 1   # 36 runs on landscape 1 keep at least one step

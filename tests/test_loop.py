"""The research loop on the synthetic trainer: keeping, recording, resuming, bad agents."""
import json
import random
import threading

import pytest
import trio

from experiments.agents import Proposal, load_brief, make_agent
from experiments.research.loop import INFLIGHT_KEY, LoopConfig, ResearchLoop
from experiments.research.scoreboard import Candidate, ScoreRules, is_baseline
from experiments.simulation.synthetic import SyntheticTrainer
from genome import base_train_source, genome_id, genome_root_id
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage
from swarm.records import decode_envelope
from swarm.store import Store


def make_loop(home, *, agent=None, trainer=None, max_experiments=0, seed=0):
    root = genome_root_id()
    store = Store.open(home, root_id=root)
    lineage = Lineage(store, base_train_source(), root)
    identity = NodeIdentity.load_or_create(home)
    trainer = trainer or SyntheticTrainer(seed, sigma=0.001)
    agent = agent or make_agent("mutate")
    config = LoopConfig(topic="optimizer", rules=ScoreRules(), max_experiments=max_experiments)
    return ResearchLoop(store=store, lineage=lineage, identity=identity, genome=genome_id(),
                        root_id=root, trainer=trainer, agent=agent,
                        brief=load_brief("optimizer"), config=config, home=home,
                        rng=random.Random(seed))


async def test_loop_runs_baselines_then_keeps_only_edits_above_noise(tmp_path):
    loop = make_loop(tmp_path, max_experiments=30)
    await loop.serve()
    records = loop.store.experiments(arena=loop.arena)
    assert len(records) == 30
    baselines = [r for r in records if is_baseline(r) is not None]
    # Three seeds first, then one more every `sigma_refresh` (25) experiments.
    assert [is_baseline(r) for r in records[:3]] == [0, 1, 2]
    assert sorted(is_baseline(r) for r in baselines) == [0, 1, 2, 3]
    sigma = loop.scores.sigma()
    assert sigma is not None and sigma > 0
    kept = [r for r in records if loop.scores.is_kept(r)]
    assert kept, "30 synthetic experiments found nothing"
    for r in kept:
        assert r.val_bpb < loop.scores.parent_score(r) - 2 * sigma
    # Every record is signed by the node and decodes as a peer would receive it.
    for r in records:
        again = decode_envelope(r.envelope, genome=loop.genome)
        assert again.id == r.id and again.author == loop.identity.public_key
    # The best candidate is a kept record whose lineage rebuilds.
    best = loop.scores.best()
    assert best.record is not None and loop.scores.is_kept(best.record)
    assert loop.lineage.source_of(best.id) != base_train_source()


async def test_loop_never_runs_the_same_edit_twice_on_one_parent(tmp_path):
    loop = make_loop(tmp_path, max_experiments=40)
    await loop.serve()
    seen = set()
    for r in loop.store.experiments(arena=loop.arena):
        if is_baseline(r) is None:
            key = (r.parents[0], loop.lineage.source_of(r.id))
            assert key not in seen
            seen.add(key)


class ScriptedAgent:
    name = "scripted"

    def __init__(self, source):
        self.source = source

    def propose(self, parent_source, brief, history, *, parent_id, rng):
        return Proposal(self.source, "scripted edit")


async def test_a_program_already_run_on_another_parent_is_not_run_again(tmp_path):
    """A stack of edits on one parent can rebuild a program run on another (on the root:
    the best record's own edits). A real run did that and counted the re-measurement as a
    kept edit; the loop refuses it as a duplicate and still takes a new program."""
    base = base_train_source()
    a = base.replace("MATRIX_LR = 0.02 ", "MATRIX_LR = 0.03 ")
    ab = a.replace("EMBED_LR = 0.01 ", "EMBED_LR = 0.02 ")
    abc = ab.replace("HEAD_LR = 0.004 ", "HEAD_LR = 0.008 ")
    assert base != a != ab != abc
    agent = ScriptedAgent(ab)
    loop = make_loop(tmp_path, agent=agent)
    for _ in range(3):
        await loop.step()
    root = loop.scores.candidates()[0]
    child = (await loop._run_edit(root, base, Proposal(a, "a on the root"))).record
    await loop._run_edit(root, base, Proposal(ab, "a and b on the root"))
    on_child = Candidate(child.id, child.val_bpb, child)
    assert await loop._propose(on_child, a) is None
    reasons = [json.loads(x)["reason"]
               for x in (tmp_path / "proposals.jsonl").read_text().splitlines()]
    assert reasons and all(r.startswith("duplicate: this program was already run")
                           for r in reasons)
    agent.source = abc
    assert (await loop._propose(on_child, a)).source == abc


class GarbageAgent:
    name = "garbage"

    def __init__(self):
        self.calls = 0

    def propose(self, parent_source, brief, history, *, parent_id, rng):
        self.calls += 1
        answers = [None, Proposal("def broken(:\n", "syntax error"),
                   Proposal(parent_source, "identical file"),
                   Proposal("import socket\n" + parent_source, "opens a socket"),
                   Proposal(123, "not text")]
        return answers[self.calls % len(answers)]


async def test_failed_proposals_are_logged_and_the_loop_goes_on(tmp_path):
    agent = GarbageAgent()
    loop = make_loop(tmp_path, agent=agent)
    for _ in range(3):
        await loop.step()  # the three baselines
    outcome = await loop.step()
    assert outcome.kind == "no-proposal"
    assert agent.calls == loop.config.proposal_attempts
    lines = [json.loads(x) for x in (tmp_path / "proposals.jsonl").read_text().splitlines()]
    assert len(lines) == loop.config.proposal_attempts
    assert all(entry["reason"] for entry in lines)
    assert len(loop.store.experiments()) == 3  # no record for a failed proposal


class BlockingTrainer:
    """Blocks until cancelled, like a long training run."""

    def __init__(self):
        self.inner = SyntheticTrainer(3)
        self.arena = self.inner.arena
        self.label = "blocking"
        self.started = threading.Event()
        self.block = False

    def run(self, source, *, seed, progress=None, cancel=None):
        if self.block:
            self.started.set()
            cancel.wait()
            raise RuntimeError("cancelled")
        return self.inner.run(source, seed=seed)


async def test_a_run_cut_short_is_recorded_once_as_interrupted(tmp_path):
    trainer = BlockingTrainer()
    loop = make_loop(tmp_path, trainer=trainer)
    for _ in range(3):
        await loop.step()
    trainer.block = True
    with trio.move_on_after(30) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop.step)
            await trio.to_thread.run_sync(trainer.started.wait)
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert len(loop.store.experiments()) == 3  # nothing recorded for the cut-off run
    assert json.loads(loop.store.get_meta(INFLIGHT_KEY))["desc"]
    loop.store.close()

    # Restart: the interrupted run becomes one crash record, and only once.
    again = make_loop(tmp_path, trainer=SyntheticTrainer(3))
    record = again.resume()
    assert record is not None and record.status == "crash"
    assert record.result["reason"].startswith("interrupted")
    assert again.resume() is None
    assert len(again.store.experiments()) == 4
    # An interrupted edit is not "tried": the agent may propose it again.
    assert all(not t.desc == record.desc for t in again.history())


async def test_max_experiments_stops_the_loop(tmp_path):
    loop = make_loop(tmp_path, max_experiments=5)
    await loop.serve()
    assert len(loop.store.experiments()) == 5


@pytest.mark.parametrize("noise_k", [0.0, 50.0])
async def test_noise_threshold_decides_what_is_kept(tmp_path, noise_k):
    loop = make_loop(tmp_path, max_experiments=20)
    loop.config.rules.noise_k = noise_k
    await loop.serve()
    kept = [r for r in loop.store.experiments() if loop.scores.is_kept(r)]
    if noise_k == 50.0:
        assert kept == []
    else:
        assert kept


class BrokenMachineTrainer:
    """Every run crashes, as on a machine whose GPU the training child cannot open."""

    def __init__(self):
        self.inner = SyntheticTrainer(0)
        self.arena, self.label, self.runs = self.inner.arena, "broken", 0

    def run(self, source, *, seed, progress=None, cancel=None):
        from experiments.run.harness import ExperimentResult
        self.runs += 1
        return ExperimentResult(status="crash", arena=self.arena,
                                reason="train.py exited with status 1: RuntimeError: CUDA 304")


async def test_a_genome_that_cannot_train_here_stops_the_loop_with_the_reason(tmp_path):
    trainer = BrokenMachineTrainer()
    loop = make_loop(tmp_path, trainer=trainer)  # no max_experiments: it would run forever
    with trio.fail_after(30):
        await loop.serve()
    assert trainer.runs == loop.config.root_failures == 3
    assert "failed 3 times in a row" in loop.stop_reason and "CUDA 304" in loop.stop_reason
    records = loop.store.experiments(arena=loop.arena)
    assert len(records) == 3 and all(r.status == "crash" for r in records)


async def test_one_failed_baseline_among_good_ones_does_not_stop_the_loop(tmp_path):
    class Flaky(BrokenMachineTrainer):
        def run(self, source, *, seed, progress=None, cancel=None):
            if self.runs in (0, 2):  # the first and third runs crash
                return super().run(source, seed=seed)
            self.runs += 1
            return self.inner.run(source, seed=seed)

    loop = make_loop(tmp_path, trainer=Flaky(), max_experiments=8)
    await loop.serve()
    assert loop.stop_reason == ""
    assert len(loop.store.experiments(arena=loop.arena)) == 8

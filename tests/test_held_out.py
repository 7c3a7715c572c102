"""Verification against the held-out test split, and nodes that must not run others' code."""
import random

from experiments.agents import load_brief, make_agent
from experiments.research.loop import LoopConfig, ResearchLoop
from experiments.research.scoreboard import ScoreRules
from experiments.simulation.synthetic import SyntheticTrainer
from genome import base_train_source, genome_id, genome_root_id
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage
from swarm.patch import make_patch
from swarm.records import make_experiment
from swarm.store import Store

ROOT = genome_root_id()
OVERFIT = "# learnt the validation windows\n"
FAILS_ON_VERIFIERS = "# exits when it is scored for a verifier\n"


class HeldOutTrainer(SyntheticTrainer):
    """The synthetic landscape, with a test score: a program carrying OVERFIT scores 0.05
    better on the validation windows only, as a model that memorised them would."""

    def __init__(self):
        super().__init__(0, sigma=0.001)
        self.test_calls = []

    def _scores(self, source, seed):
        result = super().run(source, seed=seed, progress=None, cancel=None)
        test = result.val_bpb
        if OVERFIT in source:
            result.val_bpb -= 0.05
        return result, test

    def run(self, source, *, seed, progress=None, cancel=None, test_seed=None):
        result, test = self._scores(source, seed)
        result.test_bpb = test if test_seed is not None else None
        return result

    def test_score(self, source, *, seed, test_seed, cancel=None):
        self.test_calls.append(test_seed)
        if FAILS_ON_VERIFIERS in source:
            return None
        result, test = self._scores(source, seed)
        return result.val_bpb, test


def make_loop(home, trainer, *, foreign_code=True):
    store = Store.open(home, root_id=ROOT)
    lineage = Lineage(store, base_train_source(), ROOT)
    config = LoopConfig(topic="optimizer", rules=ScoreRules(), max_experiments=3,
                        foreign_code=foreign_code)
    return ResearchLoop(store=store, lineage=lineage, identity=NodeIdentity.load_or_create(home),
                        genome=genome_id(), root_id=ROOT, trainer=trainer,
                        agent=make_agent("mutate"), brief=load_brief("optimizer"),
                        config=config, home=home, rng=random.Random(0))


def claim_of(loop, source, trainer):
    """A stranger's claim of `source` on the root, at the score our trainer gives it."""
    result = trainer.run(source, seed=0)
    return make_experiment(NodeIdentity.generate(), genome=loop.genome, parents=[ROOT],
                           topic="optimizer", arena=loop.arena,
                           patch=make_patch(base_train_source(), source), desc="an edit",
                           agent="mutate", result=result.to_record_result())


def edited(extra=""):
    source = base_train_source().replace("WARMUP_FRAC = 0.1", "WARMUP_FRAC = 0.05")
    assert source != base_train_source()
    return source + extra


async def test_a_gain_that_holds_on_test_windows_is_reproduced(tmp_path):
    trainer = HeldOutTrainer()
    loop = make_loop(tmp_path, trainer)
    await loop.serve()  # three baselines: the arena's noise
    claim = claim_of(loop, edited(), trainer)
    loop.store.insert(claim)
    outcome = await loop.verify(claim)
    assert outcome.record.verdict == "reproduced", outcome.record.result
    result = outcome.record.result
    assert result["test_bpb"] > 0 and result["test_parent_bpb"] > 0
    assert len(trainer.test_calls) == 1


async def test_a_gain_only_on_validation_windows_is_refuted(tmp_path):
    trainer = HeldOutTrainer()
    loop = make_loop(tmp_path, trainer)
    await loop.serve()
    claim = claim_of(loop, edited(OVERFIT), trainer)
    loop.store.insert(claim)
    outcome = await loop.verify(claim)
    # The re-run reproduces the validation score: only the test windows show the cheat.
    assert outcome.record.result["val_bpb"] <= claim.val_bpb + 2 * loop.scores.sigma()
    assert outcome.record.verdict == "refuted"
    assert "does not hold on held-out test data" in outcome.record.result["reason"]


async def test_a_parent_that_fails_on_verifiers_does_not_spare_the_held_out_check(tmp_path):
    """The claim's parent is made to fail when a verifier scores it; the claim's gain is
    then checked against the genome root on the same test windows."""
    trainer = HeldOutTrainer()
    loop = make_loop(tmp_path, trainer)
    await loop.serve()
    author = NodeIdentity.generate()
    parent_source = edited(FAILS_ON_VERIFIERS)
    parent = make_experiment(author, genome=loop.genome, parents=[ROOT], topic="optimizer",
                             arena=loop.arena, patch=make_patch(base_train_source(),
                                                                parent_source),
                             desc="a parent", agent="mutate",
                             result=trainer.run(edited(), seed=0).to_record_result())
    child_source = edited(OVERFIT)
    child = make_experiment(author, genome=loop.genome, parents=[parent.id], topic="optimizer",
                            arena=loop.arena, patch=make_patch(parent_source, child_source),
                            desc="a claim", agent="mutate",
                            result=trainer.run(child_source, seed=0).to_record_result())
    loop.store.insert(parent)
    loop.store.insert(child)
    outcome = await loop.verify(child)
    assert outcome.record.verdict == "refuted", outcome.record.result
    assert "does not hold on held-out test data" in outcome.record.result["reason"]
    assert len(trainer.test_calls) == 2  # the parent (failed), then the root


async def test_test_windows_are_drawn_afresh_for_every_verification(tmp_path):
    trainer = HeldOutTrainer()
    loop = make_loop(tmp_path, trainer)
    await loop.serve()
    for extra in ("", "# another\n"):
        claim = claim_of(loop, edited(extra), trainer)
        loop.store.insert(claim)
        await loop.verify(claim)
    assert len(set(trainer.test_calls)) == 2


async def test_without_full_isolation_a_node_runs_no_one_elses_code(tmp_path):
    trainer = HeldOutTrainer()
    loop = make_loop(tmp_path, trainer, foreign_code=False)
    await loop.serve()
    claim = claim_of(loop, edited(), trainer)  # a stranger's better claim
    loop.store.insert(claim)
    parent = loop.choose_parent()
    assert parent is None or loop.own_lineage(parent.id)
    assert not loop.own_lineage(claim.id)
    assert loop.claim_behind(edited()) is None
    # Its own steps go on: every record it makes is its own, on its own lineage.
    loop.config.max_experiments = 8
    await loop.serve()
    mine = loop.store.experiments(arena=loop.arena, local=True)
    assert len(mine) == 3 + 8
    assert all(r.author == loop.identity.public_key and loop.own_lineage(r.id) for r in mine)
    assert loop.store.attestation_count(loop.identity.public_key) == 0

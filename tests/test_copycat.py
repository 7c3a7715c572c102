"""A copy earns nothing: a claim of a program this node already had (its own run, or an
earlier record by another author, in this node's order of receipt) is never re-run for
its author and never gives that author reputation (claims.py, programs.py).

The attack: a fresh key re-signs our own best kept record (same patch, same parent), a
hair better; our re-run of our own program reproduces it, the key becomes a trusted
verifier, and two such keys then vouch a fake score into our best parent."""
import random

from experiments.agents import load_brief, make_agent
from experiments.research.loop import LoopConfig, ResearchLoop
from experiments.research.scoreboard import ScoreRules
from experiments.simulation.synthetic import SyntheticTrainer
from genome import base_train_source, genome_id, genome_root_id
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage
from swarm.patch import make_patch
from swarm.records import decode_envelope, make_experiment
from swarm.store import Store

ROOT = genome_root_id()


def make_loop(home, *, max_experiments=3, seed=0):
    store = Store.open(home, root_id=ROOT)
    lineage = Lineage(store, base_train_source(), ROOT)
    config = LoopConfig(topic="optimizer", rules=ScoreRules(), max_experiments=max_experiments)
    return ResearchLoop(store=store, lineage=lineage, identity=NodeIdentity.load_or_create(home),
                        genome=genome_id(), root_id=ROOT,
                        trainer=SyntheticTrainer(seed, sigma=0.001),
                        agent=make_agent("mutate"), brief=load_brief("optimizer"),
                        config=config, home=home, rng=random.Random(seed))


def wire(record):
    """The record as gossip or sync hands it to the store."""
    return decode_envelope(record.envelope, genome=genome_id())


def copy_of(record, key, val_bpb, t=None):
    """`record` re-signed by `key`: same parents, same patch (so the same program)."""
    return make_experiment(key, genome=genome_id(), parents=list(record.parents),
                           topic=record.topic, arena=record.arena, patch=record.patch,
                           desc=record.desc, agent=record.agent,
                           result=dict(record.result, val_bpb=val_bpb), t=t)




def my_verdicts_on(loop, record):
    return [a for a in loop.store.attestations_for(record.id)
            if a.author == loop.identity.public_key]


async def test_a_resigned_copy_of_our_own_kept_record_is_never_re_run(tmp_path):
    loop = make_loop(tmp_path, max_experiments=25, seed=1)
    await loop.serve()
    sigma, best = loop.scores.sigma(), loop.scores.best()
    assert best.record is not None and loop.scores.is_kept(best.record)
    ours = best.record
    sybils = [NodeIdentity.generate() for _ in range(3)]
    copies = []
    for i, key in enumerate(sybils):
        copy = copy_of(ours, key, ours.val_bpb - (i + 1) * 0.3 * sigma)
        if i == 2:  # the same program by another path: all its edits at once on the root
            copy = make_experiment(key, genome=genome_id(), parents=[ROOT], topic=ours.topic,
                                   arena=ours.arena, desc="[X] all at once", agent="mutate",
                                   patch=make_patch(base_train_source(),
                                                    loop.lineage.source_of(ours.id)),
                                   result=dict(ours.result, val_bpb=ours.val_bpb - sigma))
        loop.store.insert(wire(copy))
        copies.append(copy)
        assert loop._copy_of(copy) == ours.id
        assert loop.pending_claim() is None
        for _ in range(8):
            await loop.step()
    # nor re-run when handed to verify directly (the path claim_behind takes)
    outcome = await loop.verify(copies[0])
    assert outcome.kind == "no-proposal" and "copy" in outcome.reason
    reps = loop.trust.reputations()
    for key, copy in zip(sybils, copies):
        assert not my_verdicts_on(loop, copy)
        assert reps.get(key.public_key, 0.0) < loop.config.trust.trust_threshold
        # nor built on before anyone verified it
        assert not loop._open_claim(copy, sigma, reps)


async def test_a_later_copy_of_a_peers_record_is_skipped_and_the_original_verified(tmp_path):
    loop = make_loop(tmp_path)
    await loop.serve()  # three baselines: the arena's noise
    honest, copier = NodeIdentity.generate(), NodeIdentity.generate()
    base = loop.scores.best()
    edited, result = a_better_edit(loop, base_train_source(), base.val_bpb,
                                   3 * loop.scores.sigma())
    original = make_experiment(honest, genome=genome_id(), parents=[ROOT], topic="optimizer",
                               arena=loop.arena, patch=make_patch(base_train_source(), edited),
                               desc="[NEW] a line", agent="mutate",
                               result=result.to_record_result())
    loop.store.insert(wire(original))
    # received later, though it says it is older and a little better
    copy = copy_of(original, copier, original.val_bpb - 0.5 * loop.scores.sigma(),
                   t=original.t - 60_000)
    loop.store.insert(wire(copy))
    assert loop._copy_of(copy) == original.id and loop._copy_of(original) is None
    assert loop.pending_claim().id == original.id
    outcome = await loop.step()
    assert outcome.kind == "verification" and outcome.record.body["target"] == original.id
    assert outcome.reason == "reproduced"
    assert loop.trust.is_verified(loop.store.get(original.id))
    assert loop.pending_claim() is None
    for _ in range(5):
        outcome = await loop.step()
        assert outcome.kind != "verification" or outcome.record.body["target"] != copy.id
    assert not my_verdicts_on(loop, copy)
    reps = loop.trust.reputations()
    assert reps.get(honest.public_key) == 1.0
    assert reps.get(copier.public_key, 0.0) == 0.0


def a_better_edit(loop, source, score, margin):
    """An edit of `source` that our trainer scores `margin` below `score`: a new program
    (one line of code added)."""
    for i in range(500):
        edited = source + f"\n_copycat_{i} = [{i}] * 2\n"
        result = loop.trainer.run(edited, seed=loop.config.rules.seed)
        if result.status == "ok" and result.val_bpb < score - margin:
            return edited, result
    raise AssertionError("no edit beats it")


async def test_a_new_program_from_a_fresh_key_is_still_verified(tmp_path):
    loop = make_loop(tmp_path, max_experiments=25, seed=1)
    await loop.serve()
    sigma, ours = loop.scores.sigma(), loop.scores.best().record
    fresh, copier = NodeIdentity.generate(), NodeIdentity.generate()
    source = loop.lineage.source_of(ours.id)
    # far enough below that the baseline seed due next (a new sigma) leaves it kept
    edited, result = a_better_edit(loop, source, ours.val_bpb, 0.01)
    claim = make_experiment(fresh, genome=genome_id(), parents=[ours.id], topic="optimizer",
                            arena=loop.arena, patch=make_patch(source, edited),
                            desc="[NEW] a line", agent="mutate",
                            result=result.to_record_result())
    loop.store.insert(wire(claim))
    # a copy of our own best, claiming far more, must not crowd the new program out
    copy = copy_of(ours, copier, claim.val_bpb - 10 * sigma)
    loop.store.insert(wire(copy))
    assert loop._copy_of(claim) is None
    assert loop.pending_claim().id == claim.id
    for _ in range(3):  # a baseline seed may be due first
        outcome = await loop.step()
        if outcome.kind == "verification":
            break
    assert outcome.kind == "verification" and outcome.record.body["target"] == claim.id
    assert outcome.reason == "reproduced"
    assert loop.trust.is_verified(loop.store.get(claim.id))
    reps = loop.trust.reputations()
    assert reps.get(fresh.public_key) == 1.0
    assert reps.get(copier.public_key, 0.0) == 0.0
    assert loop.scores.best().id == claim.id

"""One program is run once per arena: the program index, the digest that announces carry,
and the loop refusing a program another node runs now on another parent (issue 8)."""
import json
import random
import time

import pytest

from experiments.agents import load_brief
from experiments.agents.base import Proposal
from experiments.research.loop import LoopConfig, ResearchLoop
from experiments.research.programs import KnownPrograms, ProgramIndex, program_digest
from experiments.research.scoreboard import ScoreRules
from experiments.research.swarm_link import programs_from_announces, yield_to_peer
from experiments.simulation.synthetic import SyntheticTrainer
from genome import base_train_source, genome_id, genome_root_id
from swarm.descriptions import announced_program, parse_working_on, working_on
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage
from swarm.patch import make_patch
from swarm.records import make_announce, make_experiment
from swarm.store import Store

ROOT = genome_root_id()
BASE = base_train_source()
A = BASE.replace("MATRIX_LR = 0.02 ", "MATRIX_LR = 0.03 ")
AB = A.replace("EMBED_LR = 0.01 ", "EMBED_LR = 0.02 ")
ARENA = "synthetic/tokens:300000/sim"
OK = {"status": "ok", "val_bpb": 1.89, "train_s": 1.0, "total_s": 1.0, "tokens": 1,
      "steps": 1, "params": 1, "peak_mem_mb": 1.0}


def experiment(identity, parent, parent_source, source, desc, result=OK):
    return make_experiment(identity, genome=genome_id(), parents=[parent], topic="general",
                           arena=ARENA, patch=make_patch(parent_source, source), desc=desc,
                           agent="mutate", result=result)


def test_announces_carry_the_program_and_older_announces_still_parse():
    digest = program_digest(AB)
    text = working_on(ROOT, "[X*2] an edit", digest)
    assert parse_working_on(text) == (ROOT, "[X*2] an edit")
    assert announced_program(text) == digest
    plain = working_on(ROOT, "baseline seed=1")
    assert parse_working_on(plain) == (ROOT, "baseline seed=1")
    assert announced_program(plain) is None
    assert announced_program("not ours") is None and parse_working_on("not ours") is None
    # a description that merely starts with '#' is a description, not a digest
    odd = working_on(ROOT, "#1 idea")
    assert parse_working_on(odd) == (ROOT, "#1 idea") and announced_program(odd) is None


def test_the_index_knows_every_program_of_the_arena_whatever_the_path(tmp_path):
    store = Store.open(tmp_path, root_id=ROOT)
    lineage = Lineage(store, BASE, ROOT)
    me = NodeIdentity.load_or_create(tmp_path / "me")
    index = ProgramIndex(store, lineage, ARENA)
    index.refresh()
    assert len(index) == 0 and index.run_by(A) is None
    child = experiment(me, ROOT, BASE, A, "a")
    stack = experiment(me, child.id, A, AB, "b on a")
    store.insert_many([child, stack])
    index.refresh()
    assert index.run_by(A) == child.id and index.run_by(AB) == stack.id
    known = KnownPrograms(index, running=set())
    # AB reached from the root in one step is the same program: a duplicate
    assert AB in known and "already run" in known.why_duplicate(AB)
    assert known.why_duplicate(AB.replace("0.02 ", "0.04 ", 1)) is None
    store.close()


def test_the_index_reads_a_big_store_in_slices(tmp_path):
    store = Store.open(tmp_path, root_id=ROOT)
    me = NodeIdentity.load_or_create(tmp_path / "me")
    sources = [BASE + f"\n# variant {i}\n" for i in range(5)]
    store.insert_many(experiment(me, ROOT, BASE, src, f"v{i}") for i, src in enumerate(sources))
    index = ProgramIndex(store, Lineage(store, BASE, ROOT), ARENA)
    assert [index.refresh(limit=2) for _ in range(3)] == [False, False, True]
    assert all(index.run_by(src) is not None for src in sources) and len(index) == 5
    store.close()


def test_a_run_cut_short_does_not_count_and_an_incomplete_lineage_is_retried(tmp_path):
    store = Store.open(tmp_path, root_id=ROOT)
    lineage = Lineage(store, BASE, ROOT)
    me = NodeIdentity.load_or_create(tmp_path / "me")
    index = ProgramIndex(store, lineage, ARENA)
    cut = dict(OK, status="crash", reason="interrupted: the node stopped during this run")
    cut.pop("val_bpb")
    store.insert(experiment(me, ROOT, BASE, A, "a", result=cut))
    child = experiment(me, ROOT, BASE, AB, "a and b")
    orphan = experiment(me, child.id, AB, AB + "\n# more\n", "more")
    store.insert(orphan)             # its parent has not arrived yet
    index.refresh()
    assert index.run_by(A) is None and index.run_by(AB + "\n# more\n") is None
    store.insert(child)              # the parent syncs in: the orphan is read next time
    index.refresh()
    assert index.run_by(AB) == child.id and index.run_by(AB + "\n# more\n") == orphan.id
    store.close()


def test_running_programs_come_from_other_nodes_live_announces(tmp_path):
    store = Store.open(tmp_path, root_id=ROOT)
    me, peer = (NodeIdentity.load_or_create(tmp_path / k) for k in ("me", "peer"))
    for who, program in ((me, program_digest(A)), (peer, program_digest(AB))):
        store.insert(make_announce(who, genome=genome_id(), topics=["general"], arena=ARENA,
                                   working_on=working_on(ROOT, "x", program)))
    assert programs_from_announces(store, me.public_key) == {program_digest(AB)}
    assert programs_from_announces(store, me.public_key, max_age_s=-1) == set()
    store.close()


def test_the_same_program_on_another_parent_is_a_conflict_the_trusted_earlier_one_wins(
        tmp_path, monkeypatch):
    first, second = (NodeIdentity.load_or_create(tmp_path / k) for k in "ab")
    store = Store.open(tmp_path, root_id=ROOT)
    digest, other_parent = program_digest(AB), b"\1" * 32
    now = int(time.time() * 1000)
    for i, (who, parent, desc) in enumerate(((first, ROOT, "a and b"),
                                             (second, other_parent, "b"))):
        monkeypatch.setattr("swarm.store._now_ms", lambda i=i: now - 2000 + 1000 * i)
        store.insert(make_announce(who, genome=genome_id(), topics=["general"], arena=ARENA,
                                   working_on=working_on(parent, desc, digest)))
    trusted = {first.public_key: 1.0, second.public_key: 1.0}
    assert yield_to_peer(store, second.public_key, other_parent, "b", digest,
                         reputations=lambda: trusted)
    assert not yield_to_peer(store, first.public_key, ROOT, "a and b", digest,
                             reputations=lambda: trusted)    # ours came first
    assert not yield_to_peer(store, second.public_key, other_parent, "b", digest)  # stranger
    # without the digest (an older peer), another parent is no conflict
    assert not yield_to_peer(store, second.public_key, other_parent, "b",
                             reputations=lambda: trusted)
    store.close()


class ScriptedAgent:
    name = "scripted"

    def __init__(self, *sources):
        self.sources = list(sources)

    def propose(self, parent_source, brief, history, *, parent_id, rng):
        return Proposal(self.sources.pop(0), "scripted edit")


async def test_the_loop_skips_a_program_a_live_node_runs_from_another_parent(tmp_path):
    store = Store.open(tmp_path, root_id=ROOT)
    agent = ScriptedAgent(AB, A)
    loop = ResearchLoop(
        store=store, lineage=Lineage(store, BASE, ROOT),
        identity=NodeIdentity.load_or_create(tmp_path), genome=genome_id(), root_id=ROOT,
        trainer=SyntheticTrainer(1, sigma=0.001), agent=agent, brief=load_brief("general"),
        config=LoopConfig(topic="general", rules=ScoreRules(), claim_check_s=0),
        home=tmp_path, rng=random.Random(1),
        running_programs=lambda: {program_digest(AB)})   # someone runs AB, from its child
    for _ in range(3):
        await loop.step()                                  # the baselines
    announced = []

    async def announce(text):
        announced.append(text)
    loop.announce = announce
    outcome = await loop.step()
    assert outcome.kind == "experiment" and loop.lineage.source_of(outcome.record.id) == A
    logged = [json.loads(x) for x in (tmp_path / "proposals.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in logged] == [
        "duplicate: another live node announced it is running this program"]
    # and what we run is announced with its program, so others can skip it in turn
    assert announced and announced_program(announced[-1]) == program_digest(A)
    store.close()


def scripted_loop(tmp_path, *sources):
    store = Store.open(tmp_path, root_id=ROOT)
    return ResearchLoop(
        store=store, lineage=Lineage(store, BASE, ROOT),
        identity=NodeIdentity.load_or_create(tmp_path), genome=genome_id(), root_id=ROOT,
        trainer=SyntheticTrainer(1, sigma=0.001), agent=ScriptedAgent(*sources),
        brief=load_brief("general"),
        config=LoopConfig(topic="general", rules=ScoreRules(), claim_check_s=0,
                          verify_share=0.0, merge_share=0.0, port_share=0.0),
        home=tmp_path, rng=random.Random(1))


async def test_an_idea_that_rebuilds_a_peers_better_claim_re_runs_that_claim(tmp_path):
    """The agent proposes, on the root, the program a stranger claims beat it: the node
    re-runs the claim as a verification (an attestation) instead of a new edit."""
    loop = scripted_loop(tmp_path, AB)
    for _ in range(3):
        await loop.step()                                  # the baselines
    root = loop.scores.root_score()
    peer = NodeIdentity.load_or_create(tmp_path / "peer")
    claim = experiment(peer, ROOT, BASE, AB, "a and b", dict(OK, val_bpb=root - 0.05))
    loop.store.insert(claim)
    loop.verify_budget_left = lambda: False                # not the re-run queue's turn
    outcome = await loop.step()
    assert outcome.kind == "verification"
    assert [a.target for a in loop.store.attestations_for(claim.id)] == [claim.id]
    assert len(loop.store.experiments(local=True)) == 3    # no new experiment
    loop.store.close()


@pytest.mark.parametrize("case", ["ours", "worse than our best", "refuted by us"])
async def test_a_program_run_before_is_refused_when_re_running_it_decides_nothing(
        tmp_path, case):
    loop = scripted_loop(tmp_path, AB, A)
    for _ in range(3):
        await loop.step()
    root = loop.scores.root_score()
    author = loop.identity if case == "ours" else NodeIdentity.load_or_create(tmp_path / "p")
    score = root + 0.05 if case == "worse than our best" else root - 0.05
    claim = experiment(author, ROOT, BASE, AB, "a and b", dict(OK, val_bpb=score))
    loop.store.insert(claim, local=case == "ours")
    if case == "refuted by us":
        await loop.verify(claim)                           # the synthetic run refutes it
        assert loop.trust.my_verdict(claim) == "refuted"
    loop.verify_budget_left = lambda: False
    outcome = await loop.step()
    assert outcome.kind == "experiment" and loop.lineage.source_of(outcome.record.id) == A
    loop.store.close()


async def test_a_known_liars_record_of_a_program_does_not_block_it(tmp_path):
    """A fake negative result is never re-run, so its author is only caught by other
    lies: once caught, its records stop counting as programs already run."""
    loop = scripted_loop(tmp_path, AB)
    for _ in range(3):
        await loop.step()
    root = loop.scores.root_score()
    mallory = NodeIdentity.load_or_create(tmp_path / "mallory")
    fake = experiment(mallory, ROOT, BASE, AB, "a and b: worse", dict(OK, val_bpb=root + 0.1))
    loop.store.insert(fake)
    assert AB in loop.known_programs()
    lie = experiment(mallory, ROOT, BASE, A, "a: a claimed improvement",
                     dict(OK, val_bpb=root - 0.5))
    loop.store.insert(lie)
    await loop.verify(lie)                           # our re-run refutes it
    assert loop.trust.is_liar(mallory.public_key)
    assert AB not in loop.known_programs()
    assert A in loop.known_programs()                # we ran that one ourselves, re-running it
    loop.verify_budget_left = lambda: False
    outcome = await loop.step()
    assert outcome.kind == "experiment" and loop.lineage.source_of(outcome.record.id) == AB
    loop.store.close()

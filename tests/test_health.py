"""A broken machine refutes nobody: a failed run counts against a program only once the
node has shown it can still train the unmodified genome (a health-check baseline)."""
import random

import trio

from experiments.agents import load_brief, make_agent
from experiments.run.harness import ExperimentResult
from experiments.research.loop import LoopConfig, ResearchLoop
from experiments.research.scoreboard import ScoreRules, is_baseline
from experiments.simulation.synthetic import SyntheticTrainer
from genome import base_train_source, genome_id, genome_root_id
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage
from swarm.patch import make_patch
from swarm.records import make_attestation, make_experiment
from swarm.store import Store

ROOT = genome_root_id()
BASE = base_train_source()
EDIT = BASE.replace("MATRIX_LR = 0.02 ", "MATRIX_LR = 0.03 ")
OK = {"status": "ok", "train_s": 1.0, "total_s": 1.0, "tokens": 1, "steps": 1, "params": 1,
      "peak_mem_mb": 1.0}


class Machine:
    """The synthetic trainer on a machine that can break: `broken` makes every run crash
    (as CUDA error 304 did on a sandbox that hid /proc), `crashes` makes one program crash
    on a machine that is fine."""

    def __init__(self, *, crashes=None, broken=False):
        self.inner = SyntheticTrainer(0, sigma=0.001)
        self.arena, self.label = self.inner.arena, self.inner.label
        self.crashes, self.broken = crashes, broken
        self.sources: list[str] = []

    def run(self, source, *, seed, progress=None, cancel=None):
        self.sources.append(source)
        if self.broken or source == self.crashes:
            return ExperimentResult(status="crash", arena=self.arena,
                                    reason="train.py exited with status 1: CUDA error 304")
        return self.inner.run(source, seed=seed, progress=progress, cancel=cancel)


def make_loop(home, trainer, **config):
    store = Store.open(home, root_id=ROOT)
    return ResearchLoop(
        store=store, lineage=Lineage(store, BASE, ROOT),
        identity=NodeIdentity.load_or_create(home), genome=genome_id(), root_id=ROOT,
        trainer=trainer, agent=make_agent("mutate"), brief=load_brief("general"), home=home,
        rng=random.Random(0),
        config=LoopConfig(topic="general", rules=ScoreRules(), claim_check_s=0.0,
                          merge_share=0.0, port_share=0.0, **config))


def peer_claim(loop, peer, source=EDIT, gain=0.05):
    """A peer's kept edit of the root that would become our best."""
    claim = make_experiment(peer, genome=loop.genome, parents=[ROOT], topic="general",
                            arena=loop.arena, patch=make_patch(BASE, source),
                            desc="MATRIX_LR 0.02 -> 0.03", agent="mutate",
                            result=dict(OK, val_bpb=loop.scores.root_score() - gain))
    loop.store.insert(claim)
    return claim


async def baselines(loop):
    for _ in range(3):
        assert (await loop.step()).kind == "baseline"
    assert loop.scores.sigma() is not None


def own_baseline_seeds(loop):
    return [is_baseline(r) for r in loop.store.experiments(local=True)
            if is_baseline(r) is not None]


async def test_a_claim_that_crashes_on_a_healthy_machine_is_refuted_after_a_check(tmp_path):
    machine = Machine(crashes=EDIT)
    loop = make_loop(tmp_path, machine)
    await baselines(loop)
    peer = NodeIdentity.load_or_create(tmp_path / "peer")
    claim = peer_claim(loop, peer)
    outcome = await loop.verify(claim)
    assert outcome.kind == "verification" and outcome.reason == "refuted"
    assert machine.sources[-2:] == [EDIT, BASE]       # the re-run, then the health check
    assert own_baseline_seeds(loop) == [0, 1, 2, 3]   # a fresh seed: it refines sigma too
    [attestation] = loop.store.attestations_for(claim.id)
    assert attestation.verdict == "refuted" and attestation.result["status"] == "crash"
    assert loop.trust.reputation(peer.public_key) < 0
    assert loop.failed_in_a_row == 0
    loop.store.close()


async def test_a_claim_that_runs_is_judged_without_a_health_check(tmp_path):
    machine = Machine()
    loop = make_loop(tmp_path, machine)
    await baselines(loop)
    claim = peer_claim(loop, NodeIdentity.load_or_create(tmp_path / "peer"), gain=-1.0)
    outcome = await loop.verify(claim)       # claims to be worse than it is: it holds
    assert outcome.reason == "reproduced" and machine.sources[-1] == EDIT
    assert own_baseline_seeds(loop) == [0, 1, 2]
    loop.store.close()


async def test_on_a_broken_machine_a_failed_re_run_refutes_nobody_and_the_node_stops(
        tmp_path):
    machine = Machine()
    loop = make_loop(tmp_path, machine)
    await baselines(loop)
    peer = NodeIdentity.load_or_create(tmp_path / "peer")
    claim = peer_claim(loop, peer)
    machine.broken = True                     # say, the GPU fell off the bus
    with trio.fail_after(30):
        await loop.serve()                    # no max_experiments: only the stop rule ends it
    assert "failed 3 times in a row" in loop.stop_reason
    assert "CUDA error 304" in loop.stop_reason
    assert loop.store.attestations_for(claim.id) == []
    assert loop.trust.reputation(peer.public_key) == 0
    # each re-run of the claim was followed by a failed health check, never an attestation
    failed = [r for r in loop.store.experiments(local=True) if r.status == "crash"]
    assert failed and all(is_baseline(r) is not None for r in failed)
    loop.store.close()


async def test_a_node_that_runs_no_baseline_of_its_own_stops_on_a_broken_machine(tmp_path):
    """Its arena has a trusted peer's baselines, so only edits would run: they crash, the
    health checks crash, and the node stops instead of recording crashes forever."""
    machine = Machine(broken=True)
    loop = make_loop(tmp_path, machine)
    peer = NodeIdentity.load_or_create(tmp_path / "peer")
    earned = make_experiment(peer, genome=loop.genome, parents=[ROOT], topic="general",
                             arena=loop.arena, patch=make_patch(BASE, EDIT), desc="an edit",
                             agent="mutate", result=dict(OK, val_bpb=1.85))
    loop.store.insert(earned)  # one of its claims we reproduced: the peer is trusted
    loop.store.insert(make_attestation(loop.identity, genome=loop.genome, target=earned.id,
                                       arena=loop.arena, verdict="reproduced",
                                       result=dict(OK, val_bpb=1.85)), local=True)
    assert loop.trust.trusted_author()(peer.public_key)
    for seed, val in enumerate((1.900, 1.901, 1.899)):
        loop.store.insert(make_experiment(
            peer, genome=loop.genome, parents=[ROOT], topic="general", arena=loop.arena,
            patch="", desc=f"baseline seed={seed}", agent="baseline",
            result=dict(OK, val_bpb=val)))
    with trio.fail_after(30):
        await loop.serve()
    assert "failed 3 times in a row" in loop.stop_reason
    mine = loop.store.experiments(local=True)
    edits = [r for r in mine if is_baseline(r) is None]
    assert len(edits) == loop.config.root_failures          # then only health checks
    assert [is_baseline(r) for r in mine[len(edits):]] == [3, 3, 3]
    loop.store.close()


async def test_edits_that_crash_on_a_healthy_machine_cost_one_check_and_the_loop_goes_on(
        tmp_path):
    class BadEdits(Machine):
        """The first three edits crash (as an agent's broken code would); then all is well."""
        def run(self, source, *, seed, progress=None, cancel=None):
            edits = sum(1 for s in self.sources if s != BASE)
            if source != BASE and edits < 3:
                self.sources.append(source)
                return ExperimentResult(status="crash", arena=self.arena,
                                        reason="NameError: name 'x' is not defined")
            return super().run(source, seed=seed, progress=progress, cancel=cancel)

    loop = make_loop(tmp_path, BadEdits(), max_experiments=10)
    await loop.serve()
    assert loop.stop_reason == ""
    statuses = [(is_baseline(r), r.status) for r in loop.store.experiments(local=True)]
    assert statuses[:7] == [(0, "ok"), (1, "ok"), (2, "ok"), (None, "crash"),
                            (None, "crash"), (None, "crash"), (3, "ok")]
    assert len(statuses) == 10 and all(seed is None for seed, _ in statuses[7:])
    loop.store.close()


async def test_a_strangers_baselines_set_neither_the_noise_nor_the_genomes_score(tmp_path):
    """Three baselines by a fresh key once became the arena's noise (sigma 28: nothing is
    ever kept again) and the genome's score; now only ours and trusted peers' count, and
    the node runs its own."""
    loop = make_loop(tmp_path, Machine(), max_experiments=3)
    stranger = NodeIdentity.generate()
    for seed, val in enumerate((3.0, 50.0, 0.01)):
        loop.store.insert(make_experiment(
            stranger, genome=loop.genome, parents=[ROOT], topic="general", arena=loop.arena,
            patch="", desc=f"baseline seed={seed}", agent="baseline",
            result=dict(OK, val_bpb=val)))
    assert loop.scores.sigma() is None and loop.scores.root_score() is None
    with trio.fail_after(30):
        await loop.serve()
    mine = loop.store.experiments(local=True)
    assert sorted(is_baseline(r) for r in mine) == [0, 1, 2]  # its own seeds, all three
    assert loop.scores.sigma() < 0.01 and abs(loop.scores.root_score() - 1.9) < 0.01


async def test_junk_dated_ahead_cannot_push_our_results_out_of_the_agents_history(tmp_path):
    """The history window is the newest records; a record's `t` is its author's word (up to
    10 minutes ahead), so strangers' junk only fills what ours and trusted peers' leave."""
    from swarm.records import now_ms
    loop = make_loop(tmp_path, Machine(), max_experiments=6)
    with trio.fail_after(30):
        await loop.serve()
    mine = {r.id.hex() for r in loop.store.experiments(local=True) if r.patch}
    assert mine
    junk = []
    for k in range(5):
        key = NodeIdentity.generate()
        for i in range(12):
            junk.append(make_experiment(
                key, genome=loop.genome, parents=[ROOT], topic="general", arena=loop.arena,
                patch=make_patch(BASE, BASE + f"# junk {k} {i}\n"), desc=f"junk {k} {i}",
                agent="mutate", result={"status": "crash", "reason": "x", "train_s": 0.0,
                                        "total_s": 0.0}, t=now_ms() + 9 * 60_000))
    loop.store.insert_many(junk)
    window = {t.record_id for t in loop.history(limit=20)}
    assert mine <= window
    assert window - mine  # the rest of the window is strangers' records

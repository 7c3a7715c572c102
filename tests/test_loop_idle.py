"""No agent ever spins: a node whose agent has nothing left moves on to other parents, then
waits (longer each time, until new records arrive) instead of retrying in a busy loop.

The waits run on a fake clock (`ResearchLoop.sleep`): the tests count agent calls per
virtual second and per step, never real time."""
import hashlib
import random

import trio

from experiments.agents import Proposal, load_brief, make_agent
from experiments.agents.base import exhausted
from experiments.research.loop import EXHAUSTED, IDLE_MAX_S, LoopConfig, ResearchLoop
from experiments.research.scoreboard import Candidate, ScoreRules
from experiments.simulation.synthetic import SyntheticTrainer
from genome import base_train_source, genome_id, genome_root_id
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage
from swarm.records import make_experiment
from swarm.store import Store

TINY = '''"""A genome with two knobs: the mutate catalogue runs out fast."""
MATRIX_LR = 0.02  # learning rate
QK_NORM = True  # normalise queries and keys


def build_model(run):
    return None
'''


def make_loop(home, agent, base=None, seed=0):
    base = base or base_train_source()
    root = genome_root_id() if base == base_train_source() else \
        hashlib.sha256(base.encode("utf-8")).digest()
    store = Store.open(home, root_id=root)
    lineage = Lineage(store, base, root)
    trainer = SyntheticTrainer(seed, sigma=0.001, base_source=base)
    config = LoopConfig(topic="general", rules=ScoreRules(), claim_check_s=0)
    return ResearchLoop(store=store, lineage=lineage, identity=NodeIdentity.load_or_create(home),
                        genome=genome_id(), root_id=root, trainer=trainer, agent=agent,
                        brief=load_brief("general"), config=config, home=home,
                        rng=random.Random(seed))


class FakeClock:
    """`loop.sleep` on virtual time: returns at once, and stops the loop at `limit_s`."""

    def __init__(self, limit_s, scope, on_tick=None):
        self.now, self.limit_s, self.scope, self.on_tick = 0.0, limit_s, scope, on_tick
        self.sleeps = []

    async def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_tick is not None:
            self.on_tick(self.now)
        if self.now >= self.limit_s:
            self.scope.cancel()
        await trio.lowlevel.checkpoint()


class CountingAgent:
    """Wraps an agent; notes the virtual time of every call."""

    def __init__(self, inner, clock_ref):
        self.inner, self.clock_ref, self.calls = inner, clock_ref, []
        self.name = getattr(inner, "name", "counting")

    def propose(self, parent_source, brief, history, *, parent_id, rng):
        self.calls.append(self.clock_ref[0].now if self.clock_ref else 0.0)
        return self.inner.propose(parent_source, brief, history, parent_id=parent_id, rng=rng)


class Exhausted:
    name = "exhausted"

    def propose(self, parent_source, brief, history, *, parent_id, rng):
        return exhausted("nothing left to try")


async def serve_for(loop, virtual_s, on_tick=None):
    with trio.CancelScope() as scope:
        clock = FakeClock(virtual_s, scope, on_tick)
        loop.sleep = clock.sleep
        if isinstance(loop.agent, CountingAgent):
            loop.agent.clock_ref.append(clock)
        await loop.serve()
    return clock


def count_steps(loop, clock_ref):
    """Wraps loop.step: the virtual time of every step."""
    times, step = [], loop.step

    async def counted():
        times.append(clock_ref[0].now if clock_ref else 0.0)
        return await step()
    loop.step = counted
    return times


async def test_an_exhausted_agent_is_not_asked_again_and_the_waits_back_off(tmp_path):
    agent = CountingAgent(Exhausted(), [])
    loop = make_loop(tmp_path, agent)
    steps = count_steps(loop, agent.clock_ref)
    clock = await serve_for(loop, 3600)
    # an hour with nothing to do: the old loop asked the agent 5 times a second (18,000
    # calls); now it is asked once, and not again until a record arrives
    assert len(agent.calls) == 1
    assert len(loop.store.experiments()) == 3        # the baselines; nothing else recorded
    idle_steps = [t for t in steps if t > 0]
    assert len(idle_steps) <= 3600 / IDLE_MAX_S + 10
    gaps = [b - a for a, b in zip(idle_steps, idle_steps[1:])]
    assert gaps[:5] == [2.0, 4.0, 8.0, 16.0, 32.0] and set(gaps[5:]) == {IDLE_MAX_S}
    assert set(clock.sleeps) == {1.0}                # polls the store once a second


async def test_new_records_end_the_wait(tmp_path):
    agent = CountingAgent(Exhausted(), [])
    loop = make_loop(tmp_path, agent)
    peer = NodeIdentity.load_or_create(tmp_path / "peer")
    arrived = []

    def on_tick(now):
        if now >= 300 and not arrived:      # deep in a 60 s wait
            record = make_experiment(peer, genome=loop.genome, parents=[loop.root_id],
                                     topic="general", arena=loop.arena, patch="",
                                     desc="baseline seed=7", agent="baseline",
                                     result={"status": "ok", "val_bpb": 1.9, "train_s": 1.0,
                                             "total_s": 1.0, "tokens": 1, "steps": 1,
                                             "params": 1, "peak_mem_mb": 1.0})
            loop.store.insert(record)
            arrived.append(now)

    await serve_for(loop, 400, on_tick)
    after = [t for t in agent.calls if t >= arrived[0]]
    assert after and after[0] - arrived[0] <= 1.0     # asked again within a poll


async def test_an_exhausted_parent_sends_the_agent_to_the_next_one(tmp_path):
    """The agent has nothing left on the best record: the same step proposes on the next
    top record, asking about the exhausted one once, not `proposal_attempts` times."""
    class OnlyRoot:
        name = "only-root"

        def __init__(self):
            self.parents, self.made = [], 0

        def propose(self, parent_source, brief, history, *, parent_id, rng):
            self.parents.append(parent_id)
            if parent_id != loop.root_id.hex():
                return exhausted("nothing left here")
            self.made += 1
            lr = f"0.02{self.made}"
            return Proposal(parent_source.replace("MATRIX_LR = 0.02", f"MATRIX_LR = {lr}"),
                            f"[MATRIX_LR={lr}] a small step")

    agent = OnlyRoot()
    loop = make_loop(tmp_path, agent)
    for _ in range(3):
        await loop.step()   # baselines
    base = loop.lineage.base_source
    child = (await loop._run_edit(loop.scores.candidates()[0], base,
                                  Proposal(base.replace("EMBED_LR = 0.01", "EMBED_LR = 0.02"),
                                           "[EMBED_LR=0.02] a child"))).record
    root = Candidate(loop.root_id, loop.scores.root_score())
    best = Candidate(child.id, child.val_bpb - 1.0, child)
    loop.scores.candidates = lambda topic=None: [best, root]
    loop.choose_parent = lambda: best
    loop.config.merge_share = loop.config.port_share = 0.0
    outcome = await loop.step()
    assert outcome.kind == "experiment" and outcome.parent.id == loop.root_id
    assert agent.parents == [child.id.hex(), loop.root_id.hex()]
    # next step: the exhausted parent is not asked again until a record arrives; one did
    # (the run above), so it is asked once more, then the root again
    agent.parents.clear()
    await loop.step()
    assert agent.parents == [child.id.hex(), loop.root_id.hex()]


async def test_all_parents_exhausted_says_so(tmp_path):
    loop = make_loop(tmp_path, Exhausted())
    for _ in range(3):
        await loop.step()
    outcome = await loop.step()
    assert outcome.kind == "no-proposal" and outcome.reason == EXHAUSTED
    assert len(loop.store.experiments()) == 3


async def test_mutate_on_a_tiny_catalogue_runs_out_and_never_busy_loops(tmp_path):
    """The real mutate agent (without its TPE hand-over) on a genome with two knobs: it
    runs every edit and stack it has, says so, and the node idles: in the second half of a virtual hour nothing runs and
    the agent is asked a bounded number of times (old loop: 5 times a second)."""
    agent = CountingAgent(make_agent("mutate", base_source=TINY, then=None), [])
    loop = make_loop(tmp_path, agent, base=TINY)
    events = []
    loop.on_event = lambda kind, data: events.append(kind)
    steps = count_steps(loop, agent.clock_ref)
    await serve_for(loop, 3600)
    runs = loop.store.experiments()
    assert len(runs) >= 3 + 5                    # the baselines, and the edits it had
    assert "exhausted" in events
    late_steps = [t for t in steps if t >= 1800]
    late_calls = [t for t in agent.calls if t >= 1800]
    assert len(late_steps) <= 1800 / IDLE_MAX_S + 2
    assert len(late_calls) <= len(late_steps) * (1 + loop.config.explore_top)

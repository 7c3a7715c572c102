"""The Optuna agents (`optuna:tpe`, `optuna:cmaes`): the search space read off the catalogue,
trials rebuilt from the history, proposals as normal lineage steps, pending trials."""
import math
import random

import pytest

from agents_fixture import FIXTURE, brief, source_id
from experiments.agents.base import Tried, validate_proposal
from experiments.agents.edit_keys import parse_key
from experiments.agents.literals import locate_settings
from experiments.agents.optuna_agent import MAX_MOVES, OptunaAgent, search_space
from experiments.agents.registry import make_agent
from swarm.descriptions import edit_key_of

PID = source_id(FIXTURE)
SAMPLERS = ("tpe", "cmaes")


def values_of(source):
    out = {}
    for s in locate_settings(source):
        out.setdefault(s.name, s.value)
    return out


def test_make_agent_specs():
    for sampler in SAMPLERS:
        agent = make_agent(f"optuna:{sampler}", base_source=FIXTURE, timeout_s=3)
        assert isinstance(agent, OptunaAgent) and agent.name == f"optuna:{sampler}"
    for bad in ("optuna", "optuna:", "optuna:gp", "optuna:tpe:x"):
        with pytest.raises(ValueError):
            make_agent(bad)


def test_search_space_is_what_the_catalogue_edits():
    dims = search_space(FIXTURE)
    lr = dims["MATRIX_LR"]                  # scaled by the catalogue: x0.25 .. x4, log
    assert lr.continuous and lr.log and lr.low == pytest.approx(0.005)
    assert lr.high == pytest.approx(0.08)
    assert dims["QK_NORM"].choices == (True, False)
    assert set(dims["ACTIVATION"].choices) == {"relu2", "gelu", "silu"}
    assert dims["WEIGHT_DECAY"].choices == (0.0, 0.01, 0.1)     # a zero turns it off
    assert dims["DEPTH"].choices == (2, 3, 4, 5, 6)            # two steps of +-1
    assert "COMPILE" not in search_space(FIXTURE, "cpu")     # it can only time out there
    for d in dims.values():
        assert d.unit(d.base) is not None
        assert d.at(d.unit(d.base)) == pytest.approx(d.base) if d.continuous else \
            d.at(d.unit(d.base)) == d.base


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_proposals_are_normal_lineage_steps(sampler):
    agent = OptunaAgent(sampler, base_source=FIXTURE)
    for seed in range(5):
        p = agent.propose(FIXTURE, brief(), [], parent_id=PID, rng=random.Random(seed))
        assert p.ok, p.failure
        assert validate_proposal(FIXTURE, p).ok
        assert p.desc.startswith(f"[{p.edit_key}] ") and edit_key_of(p.desc) == p.edit_key
        parts = parse_key(p.edit_key)          # peers' mutate agents read it
        assert parts and len(parts) <= MAX_MOVES and len(p.edit_key) <= 80
        before, after = values_of(FIXTURE), values_of(p.source)
        for target, op, value in parts:
            assert op == "=" and after[target] == pytest.approx(value)
        changed = {k for k in after if not _same(after[k], before.get(k))}
        assert changed == {t for t, _, _ in parts}


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_deterministic_given_the_rng(sampler):
    history = lr_history(20)
    a = OptunaAgent(sampler, base_source=FIXTURE).propose(
        FIXTURE, brief(), history, parent_id=PID, rng=random.Random(7))
    b = OptunaAgent(sampler, base_source=FIXTURE).propose(
        FIXTURE, brief(), list(history), parent_id=PID, rng=random.Random(7))
    assert a.ok and a.source == b.source and a.desc == b.desc


def lr_history(n, parent=PID):
    """n results on the parent, each moving MATRIX_LR only: the higher the better."""
    out = []
    for i in range(n):
        lr = round(0.005 * (16 ** (i / (n - 1))), 5)
        val = 1.9 - 0.01 * math.log(lr / 0.02)
        out.append(Tried(f"MATRIX_LR={lr}", "", parent, "discarded", val - 1.9,
                         record_id=f"r{i}", val_bpb=val))
    return out


def test_tpe_follows_the_records():
    """Every record says a higher MATRIX_LR is better: TPE moves it up."""
    history = lr_history(30)
    agent = OptunaAgent("tpe", base_source=FIXTURE)
    ups = 0
    for seed in range(12):
        p = agent.propose(FIXTURE, brief(), history, parent_id=PID, rng=random.Random(seed))
        parts = {t: v for t, _, v in parse_key(p.edit_key)}
        ups += parts.get("MATRIX_LR", 0.0) > 0.04
    assert ups >= 9


def test_cmaes_replays_the_records():
    """CMA-ES replayed from the same records: its draws of MATRIX_LR move up too."""
    history = lr_history(39)           # three generations of 13
    agent = OptunaAgent("cmaes", base_source=FIXTURE)
    dims = dict(agent.space)
    draws = agent._cma(dims, agent.trials(history, PID), seed=1)
    lrs = [next(draws)["MATRIX_LR"] for _ in range(40)]
    assert sorted(lrs)[len(lrs) // 2] > 0.02 * 1.4


def test_trials_follow_lineages_and_keep_other_agents_records_as_parents():
    """A record made by another agent (a code edit, no key) is not a trial, but its
    children are: their settings are derived from its own (its parent's, with the key)."""
    agent = OptunaAgent("tpe", base_source=FIXTURE)
    history = [
        Tried("MATRIX_LR=0.03", "", PID, "kept", -0.01, record_id="a", val_bpb=1.89),
        Tried(None, "an LLM's code edit", "a", "kept", -0.01, record_id="b", val_bpb=1.88),
        Tried("DEPTH+1", "", "b", "discarded", 0.002, record_id="c", val_bpb=1.882),
        Tried("WEIGHT_DECAY=0.1", "", "b", "crash", None, record_id="d"),
        Tried("EMBED_LR=0.02", "", "b", "running", None),
        Tried("garbage key!", "", "b", "discarded", 0.0, record_id="e", val_bpb=1.88),
    ]
    found = agent.trials(history, "b")
    values = [v for v, _ in found.done]
    assert [y for _, y in found.done] == [1.89, 1.882, 1.89]   # the crash: the worst value
    assert values[0]["MATRIX_LR"] == 0.03
    assert values[1]["MATRIX_LR"] == 0.03 and values[1]["DEPTH"] == 5
    assert values[2]["WEIGHT_DECAY"] == 0.1 and values[2]["MATRIX_LR"] == 0.03
    assert len(found.pending) == 1 and found.pending[0]["EMBED_LR"] == 0.02
    assert found.pending[0]["MATRIX_LR"] == 0.03
    assert found.tried_here == {"DEPTH+1", "WEIGHT_DECAY=0.1", "EMBED_LR=0.02",
                                "garbage key!"}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_run_a_peer_announces_is_not_proposed_again(sampler):
    """The proposal a node would make, announced by a live peer on the same parent (the
    loop lists it as `running`): the agent makes another one."""
    agent = OptunaAgent(sampler, base_source=FIXTURE)
    first = agent.propose(FIXTURE, brief(), [], parent_id=PID, rng=random.Random(3))
    busy = [Tried(first.edit_key, first.desc, PID, "running", None)]
    again = agent.propose(FIXTURE, brief(), busy, parent_id=PID, rng=random.Random(3))
    assert again.ok and again.edit_key != first.edit_key


def test_pending_trials_spread_tpe_draws():
    """Pending trials count (constant liar): a study with many runs announced near one
    value draws away from it."""
    agent = OptunaAgent("tpe", base_source=FIXTURE, startup_trials=0)
    history = lr_history(12)
    dims = dict(agent.space)
    calm = agent._tpe(dims, agent.trials(history, PID), seed=5)
    crowded = history + [Tried("MATRIX_LR=0.08", "", "elsewhere", "running", None)] * 12
    busy = agent._tpe(dims, agent.trials(crowded, PID), seed=5)
    near = [sum(abs(next(d)["MATRIX_LR"] - 0.08) < 0.01 for _ in range(10)) for d in (calm, busy)]
    assert near[1] < near[0]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_nothing_left_on_a_parent_is_said_as_such(sampler):
    tiny = "QK_NORM = True  # normalise queries and keys\n\n\ndef build_model(run):\n    pass\n"
    agent = OptunaAgent(sampler, base_source=tiny)
    p = agent.propose(tiny, brief(), [], parent_id="t", rng=random.Random(0))
    assert p.ok and p.edit_key == "QK_NORM=False"
    history = [Tried(p.edit_key, p.desc, "t", "discarded", 0.01, record_id="x",
                     val_bpb=1.91)]
    p = agent.propose(tiny, brief(), history, parent_id="t", rng=random.Random(1))
    assert p.failure and p.exhausted


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_hostile_history_is_survived(sampler):
    agent = OptunaAgent(sampler, base_source=FIXTURE)
    history = ["junk", None, Tried("MATRIX_LR=nan", "", PID, "kept", float("nan")),
               Tried("MATRIX_LR=1e300", "", PID, "kept", -1e300, record_id="x",
                     val_bpb=-1e300),
               Tried("DEPTH=-3", "", PID, "discarded", 0.01, record_id="y", val_bpb=1.9),
               Tried("A" * 500, "", PID, "discarded", 0.01)]
    p = agent.propose(FIXTURE, brief(), history + lr_history(15), parent_id=PID,
                      rng=random.Random(0))
    assert p.ok, p.failure
    for parent in ("def (", None, ""):
        assert agent.propose(parent, brief(), [], parent_id="z", rng=random.Random(0)).failure


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_study_rebuild_with_a_long_history(sampler):
    """2,000 records (the trials' cap) rebuild into a study that proposes (its time is
    measured by bench/bench_optuna_rebuild.py, not asserted here)."""
    rng = random.Random(0)
    keys = ["MATRIX_LR=0.03", "DEPTH+1", "EMBED_LR=0.02", "QK_NORM=False", "WARMUP_FRAC=0.05"]
    history = [Tried(rng.choice(keys), "", f"p{i % 50}", rng.choice(["kept", "discarded"]),
                     rng.gauss(0, 0.01), record_id=f"p{i}", val_bpb=1.9 + rng.gauss(0, 0.01))
               for i in range(2000)]
    agent = OptunaAgent(sampler, base_source=FIXTURE)
    p = agent.propose(FIXTURE, brief(), history, parent_id=PID, rng=random.Random(0))
    assert p.ok


@pytest.mark.parametrize("sampler", SAMPLERS)
async def test_the_loop_runs_them_and_they_build_on_other_agents_records(tmp_path, sampler):
    """In ResearchLoop on the synthetic trainer: a home where `mutate` ran first, then the
    Optuna agent; its study holds the mutate records, and its own records carry keys."""
    from test_loop import make_loop
    first = make_loop(tmp_path, agent=make_agent("mutate"), max_experiments=12)
    await first.serve()
    first.store.close()
    agent = make_agent(f"optuna:{sampler}")
    loop = make_loop(tmp_path, agent=agent, max_experiments=10)
    history = loop.history()
    assert all(t.record_id and (t.val_bpb is not None or t.status != "discarded")
               for t in history)
    await loop.serve()
    mine = [r for r in loop.store.experiments(arena=loop.arena) if r.agent == agent.name]
    assert len(mine) == 10
    assert all(parse_key(edit_key_of(r.desc)) for r in mine)
    parent = loop.scores.best()
    found = agent.trials(loop.history(), parent.id.hex())
    assert len(found.done) >= 12 + 10 - 2 * 3   # everything but the baselines, roughly

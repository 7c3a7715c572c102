"""Crossovers (experiments/research/crossover.py) and their wiring into the research loop: merges of
sibling improvements (two-parent with a verified donor, single-parent with a claim), the
donors a merge must never use, conflicts, ports from other arenas, re-runs skipped
because trusted peers are running them already, and claims built on before they are
verified (speculative parents).

The store is filled with records made directly (baselines, kept edits, attestations,
announces); the loop runs a step only where the wiring itself is under test."""
import json
import random
import time

import pytest

import experiments.research.crossover as crossover_module
from experiments.agents import load_brief, make_agent
from experiments.research.crossover import Crossover, merge_desc, port_desc, ported_ids
from experiments.research.loop import LoopConfig, ResearchLoop
from experiments.research.scoreboard import Candidate, ScoreRules
from experiments.research.swarm_link import verifiers_from_announces
from experiments.simulation.synthetic import SyntheticTrainer
from genome import base_train_source, genome_id, genome_root_id
from swarm.descriptions import verify_desc, working_on
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage
from swarm.patch import make_patch
from swarm.records import make_announce, make_attestation, make_experiment
from swarm.store import Store

G = genome_id()
ROOT = genome_root_id()
BASE = base_train_source()
ARENA = SyntheticTrainer(0).arena                              # ours
FOREIGN = SyntheticTrainer(0, budget="tokens:600000").arena    # another budget, another arena
ELSEWHERE = "elsewhere/tokens:1/sim"   # where peers earn (or lose) our trust, out of the way


def result(val, status="ok"):
    out = {"status": status, "train_s": 1.0, "total_s": 2.0, "tokens": 1, "steps": 1,
           "params": 1, "peak_mem_mb": 1.0, "reason": "synthetic test"}
    if status == "ok":
        out["val_bpb"] = val
    return out


def setting(source, name, old, new):
    """`source` with the line `NAME = old ...` changed to `NAME = new ...`."""
    before, after = f"\n{name} = {old} ", f"\n{name} = {new} "
    assert source.count(before) == 1, f"{name} = {old} is not a line of the source"
    return source.replace(before, after)


class World:
    """One node (`me`) with its loop and store, and the peers it hears from."""

    def __init__(self, tmp_path, *, baselines=(1.900, 1.901, 1.899)):
        self.tmp_path = tmp_path
        home = tmp_path / "me"
        home.mkdir()
        store = Store.open(home, root_id=ROOT)
        self.loop = ResearchLoop(
            store=store, lineage=Lineage(store, BASE, ROOT),
            identity=NodeIdentity.load_or_create(home), genome=G, root_id=ROOT,
            trainer=SyntheticTrainer(0, sigma=0.001), agent=make_agent("mutate"),
            brief=load_brief("general"), home=home, rng=random.Random(0),
            config=LoopConfig(topic="general", rules=ScoreRules(), claim_check_s=0.0,
                              explore_share=0.0))
        self.store, self.lineage, self.me = store, self.loop.lineage, self.loop.identity
        self._keys: dict[str, NodeIdentity] = {}
        self._n = 0
        # sigma 0.001: kept means at least 0.002 below the parent; the root scores 1.900
        self.baselines(ARENA, baselines, author=self.me)

    def key(self, name):
        if name not in self._keys:
            self._keys[name] = NodeIdentity.load_or_create(self.tmp_path / "keys" / name)
        return self._keys[name]

    def experiment(self, author, parent, source, val, *, arena=ARENA, desc=None,
                   status="ok", parents=None):
        """A signed experiment whose patch turns `parent`'s source into `source`."""
        self._n += 1
        record = make_experiment(
            author, genome=G, parents=parents or [parent], topic="general", arena=arena,
            patch=make_patch(self.lineage.source_of(parent), source),
            desc=desc or f"edit {self._n}", agent="test", result=result(val, status))
        self.store.insert(record, local=author is self.me)
        return record

    def baselines(self, arena, values, author):
        for seed, val in enumerate(values):
            self.store.insert(make_experiment(
                author, genome=G, parents=[ROOT], topic="general", arena=arena, patch="",
                desc=f"baseline seed={seed}", agent="baseline", result=result(val)),
                local=author is self.me)

    def attest(self, verifier, target, verdict="reproduced"):
        self.store.insert(make_attestation(verifier, genome=G, target=target.id,
                                           arena=target.arena, verdict=verdict,
                                           result=result(target.val_bpb or 1.9)),
                          local=verifier is self.me)

    def judged(self, name, verdict, times=1):
        """We re-ran `times` claims of `name` elsewhere: its reputation moves with them."""
        for _ in range(times):
            self._n += 1
            claim = make_experiment(self.key(name), genome=G, parents=[ROOT],
                                    topic="general", arena=ELSEWHERE, patch="",
                                    desc=f"claim {self._n}", agent="test", result=result(1.5))
            self.store.insert(claim)
            self.attest(self.me, claim, verdict)
        return self.key(name)

    def trusted(self, name):
        return self.judged(name, "reproduced")

    def ours(self, val=1.85):
        """Our best: MATRIX_LR raised, a kept edit of the root."""
        return self.experiment(self.me, ROOT, setting(BASE, "MATRIX_LR", "0.02", "0.03"),
                               val, desc="MATRIX_LR 0.02 -> 0.03")

    def parent(self, record):
        return Candidate(record.id, record.val_bpb, record)

    def merge(self, parent, tried=frozenset(), busy=frozenset()):
        with self.loop.scores.consistent():
            return self.loop.crossovers.merge(parent, tried, busy)

    def port(self, parent, tried=frozenset(), busy=frozenset()):
        with self.loop.scores.consistent():
            return self.loop.crossovers.port(parent, ARENA, tried, busy)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.close()


HEAD_LR_UP = ("HEAD_LR", "0.004", "0.006")
WARMDOWN_DOWN = ("WARMDOWN_FRAC", "0.5", "0.4")


def sibling(world, author, val=1.86, change=HEAD_LR_UP, desc="HEAD_LR 0.004 -> 0.006"):
    """A kept edit of the root, another setting than ours."""
    return world.experiment(author, ROOT, setting(BASE, *change), val, desc=desc)


def both_edits(source):
    return "MATRIX_LR = 0.03 " in source and "HEAD_LR = 0.006 " in source


# ---------------------------------------------------------------------------
# merges


@pytest.mark.parametrize("verified_by", ["me", "two trusted peers"])
async def test_a_verified_sibling_is_merged_as_a_two_parent_experiment(world, verified_by):
    ours = world.ours()
    donor = sibling(world, world.key("carol"))
    if verified_by == "me":
        world.attest(world.me, donor)
    else:
        for name in ("alice", "bob"):
            world.attest(world.trusted(name), donor)
    assert world.loop.trust.is_verified(donor)
    parent = world.loop.choose_parent()
    assert parent.id == ours.id                 # our best: the merge builds on it

    found = world.merge(parent)
    assert isinstance(found, Crossover) and found.kind == "merge"
    assert found.parents == [ours.id, donor.id] and found.donor.id == donor.id
    assert found.desc == merge_desc(ours.id, donor, verified=True)
    assert both_edits(found.source)
    assert found.source.replace("MATRIX_LR = 0.03 ", "MATRIX_LR = 0.02 ") == \
        world.lineage.source_of(donor.id)       # nothing but the two edits
    assert found.gain == pytest.approx(donor.val_bpb - 1.900)

    world.loop.config.merge_share, world.loop.config.port_share = 1.0, 0.0
    outcome = await world.loop.step()
    record = outcome.record
    assert outcome.kind == "experiment" and record.agent == "merge"
    assert list(record.parents) == [ours.id, donor.id]
    assert record.desc == found.desc
    # the patch is against the first parent, and the lineage rebuilds the merged source
    assert record.patch == make_patch(world.lineage.source_of(ours.id), found.source)
    assert world.lineage.source_of(record.id) == found.source
    # once run, the same merge is not proposed again
    assert world.merge(parent, tried=world.loop.known_programs()) is None


@pytest.mark.parametrize("vouched", ["nobody", "one trusted peer and Sybils"])
async def test_a_claim_is_tried_on_our_parent_without_building_on_it(world, vouched):
    ours = world.ours()
    donor = sibling(world, world.trusted("carol"))    # an author we reproduced before
    if vouched != "nobody":
        world.attest(world.trusted("alice"), donor)
        for i in range(5):
            world.attest(world.key(f"sybil{i}"), donor)
    assert not world.loop.trust.is_verified(donor)
    parent = world.parent(ours)

    found = world.merge(parent)
    assert found is not None and found.kind == "merge"
    assert found.parents == [ours.id]
    assert found.desc == merge_desc(ours.id, donor, verified=False)
    assert found.desc.startswith(f"merge of {donor.id_hex} (a claim)")
    assert both_edits(found.source)

    world.loop.config.merge_share, world.loop.config.port_share = 1.0, 0.0
    outcome = await world.loop.step()
    record = outcome.record
    assert outcome.kind == "experiment" and record.agent == "merge"
    assert list(record.parents) == [ours.id] and donor.id not in record.parents
    assert record.desc.startswith(f"merge of {donor.id_hex} (a claim)")
    assert world.lineage.source_of(record.id) == found.source


@pytest.mark.parametrize("case, excluded", [
    ("author is a liar", True),
    ("we refuted it", True),
    ("a trusted peer refuted it", True),
    ("only Sybils refuted it", False),
    ("we refuted the author once but reproduced him more", False),
])
def test_donors_we_have_reason_to_doubt_are_not_merged(world, case, excluded):
    ours = world.ours()
    mallory = world.trusted("mallory")                  # reproduced once: reputation 1
    donor = sibling(world, mallory)
    parent = world.parent(ours)
    assert world.merge(parent).donor.id == donor.id     # before the doubt: merged

    if case == "author is a liar":
        world.judged("mallory", "refuted", times=2)     # other claims of his, refuted
        assert world.loop.trust.is_liar(mallory.public_key)
    elif case == "we refuted it":
        world.judged("mallory", "reproduced", times=2)  # so he is no liar after this
        world.attest(world.me, donor, "refuted")
        assert not world.loop.trust.is_liar(mallory.public_key)
    elif case == "a trusted peer refuted it":
        world.attest(world.trusted("alice"), donor, "refuted")
    elif case == "only Sybils refuted it":
        for i in range(5):
            world.attest(world.key(f"sybil{i}"), donor, "refuted")
    else:
        world.judged("mallory", "refuted")
        world.judged("mallory", "reproduced", times=5)   # 1 - 5 + 5: trusted again
        assert not world.loop.trust.is_liar(mallory.public_key)

    found = world.merge(parent)
    if excluded:
        assert found is None
    else:
        assert found is not None and found.donor.id == donor.id


def test_ancestors_and_descendants_of_the_parent_are_never_donors(world):
    a = world.ours()
    # b builds on a (kept against a's 1.85); peer's c builds on b
    b_source = setting(world.lineage.source_of(a.id), "MUON_MOMENTUM", "0.95", "0.9")
    b = world.experiment(world.me, a.id, b_source, 1.82, desc="momentum down")
    c_source = setting(b_source, "WARMUP_FRAC", "0.1", "0.05")
    c = world.experiment(world.key("carol"), b.id, c_source, 1.80, desc="warmup shorter")
    world.attest(world.me, c)
    assert all(world.loop.scores.is_kept(r) for r in (a, b, c))
    assert world.merge(world.parent(b)) is None      # a: ancestor, c: descendant
    assert world.merge(world.parent(a)) is None      # b and c: descendants
    assert world.merge(world.parent(c)) is None      # a and b: ancestors
    # a sibling branch is a donor for each of them, and it is the only one
    s = sibling(world, world.me, val=1.87)
    for record in (a, b, c):
        found = world.merge(world.parent(record))
        assert found is not None and found.donor.id == s.id
        assert found.parents == [record.id, s.id]
        assert "HEAD_LR = 0.006 " in found.source
        assert found.source.replace("HEAD_LR = 0.006 ", "HEAD_LR = 0.004 ") == \
            world.lineage.source_of(record.id)


def test_a_strangers_claim_is_not_merged_until_we_trust_the_author(world):
    ours = world.ours()
    donor = sibling(world, world.key("stranger"))
    for i in range(5):                                   # Sybils vouching change nothing
        world.attest(world.key(f"sybil{i}"), donor)
    assert world.merge(world.parent(ours)) is None
    world.trusted("stranger")                            # we reproduced another claim of his
    found = world.merge(world.parent(ours))
    assert found is not None and found.donor.id == donor.id and found.parents == [ours.id]


def test_the_merge_with_a_nearer_common_ancestor_uses_it_as_the_base(world):
    a = world.ours()
    b_source = setting(world.lineage.source_of(a.id), "MUON_MOMENTUM", "0.95", "0.9")
    b = world.experiment(world.me, a.id, b_source, 1.82, desc="momentum down")
    # carol's sibling of b, also on a: the base is a, so a's edit is not "undone"
    d_source = setting(world.lineage.source_of(a.id), *HEAD_LR_UP)
    d = world.experiment(world.trusted("carol"), a.id, d_source, 1.83, desc="head lr up")
    found = world.merge(world.parent(b))
    assert found.donor.id == d.id and found.parents == [b.id]   # a claim: one parent
    assert found.gain == pytest.approx(1.83 - 1.85)
    assert found.source == setting(b_source, *HEAD_LR_UP)


def test_merges_already_tried_or_announced_are_skipped_for_the_next_donor(world):
    ours = world.ours()
    d1 = sibling(world, world.me, val=1.86)                         # gains 0.04
    d2 = sibling(world, world.me, val=1.88, change=WARMDOWN_DOWN,
                 desc="warmdown shorter")                           # gains 0.02
    parent = world.parent(ours)
    first = world.merge(parent)
    assert first.donor.id == d1.id                                  # most gain first
    assert world.merge(parent, tried={first.source}).donor.id == d2.id
    assert world.merge(parent, busy={first.desc}).donor.id == d2.id
    second = world.merge(parent, busy={first.desc})
    assert world.merge(parent, tried={first.source}, busy={second.desc}) is None
    assert world.merge(parent, tried={first.source, second.source}) is None
    # skipped, not failed: without the reason it comes back
    assert not world.loop.crossovers.failed
    assert world.merge(parent).donor.id == d1.id


def test_no_merge_on_the_root_or_before_the_noise_is_known(tmp_path):
    w = World(tmp_path, baselines=(1.900, 1.901))   # two seeds: sigma unknown
    ours = w.ours()
    sibling(w, w.me)
    assert w.merge(w.parent(ours)) is None
    w.baselines(ARENA, (1.9, 1.901, 1.899), author=w.me)  # ours or a trusted peer's count
    assert w.merge(w.parent(ours)) is not None
    assert w.merge(Candidate(ROOT, 1.9)) is None
    w.store.close()


def test_a_conflict_is_remembered_and_not_tried_again(world, monkeypatch):
    ours = world.ours()                                   # MATRIX_LR 0.03
    donor = world.experiment(world.me, ROOT, setting(BASE, "MATRIX_LR", "0.02", "0.015"),
                             1.86, desc="MATRIX_LR 0.02 -> 0.015")
    calls = []

    def counting(base, a, b):
        calls.append(1)
        return real(base, a, b)
    real = crossover_module.merge3
    monkeypatch.setattr(crossover_module, "merge3", counting)
    parent = world.parent(ours)
    assert world.merge(parent) is None
    assert (ours.id, donor.id) in world.loop.crossovers.failed and len(calls) == 1
    assert world.merge(parent) is None
    assert len(calls) == 1                                # not attempted again
    # the swapped roles are a different pair: tried once, and remembered too
    assert world.merge(world.parent(donor)) is None
    assert (donor.id, ours.id) in world.loop.crossovers.failed and len(calls) == 2


async def test_after_a_conflict_the_loop_runs_the_agents_proposal(world):
    ours = world.ours()
    donor = world.experiment(world.me, ROOT, setting(BASE, "MATRIX_LR", "0.02", "0.015"),
                             1.86, desc="MATRIX_LR 0.02 -> 0.015")
    world.loop.config.merge_share, world.loop.config.port_share = 1.0, 0.0
    outcome = await world.loop.step()
    assert outcome.kind == "experiment" and outcome.parent.id == ours.id
    assert outcome.record.agent == world.loop.agent.name
    assert list(outcome.record.parents) == [ours.id]
    assert (ours.id, donor.id) in world.loop.crossovers.failed


def test_a_donor_that_made_our_very_edit_gives_no_merge(world):
    ours = world.ours()
    same = world.experiment(world.trusted("carol"), ROOT, world.lineage.source_of(ours.id),
                            1.86, desc="the same idea, found twice")
    assert world.merge(world.parent(ours)) is None        # the merge is our own source
    assert (ours.id, same.id) in world.loop.crossovers.failed


async def test_a_merge_that_fails_the_checks_is_logged_and_not_run(world):
    ours = world.ours()
    # a peer's claim whose source would not pass the static screen
    bad_source = BASE.replace("\nimport ", "\nimport socket\nimport ", 1)
    assert bad_source != BASE
    donor = world.experiment(world.trusted("mallory"), ROOT, bad_source, 1.86,
                             desc="faster sockets")
    parent = world.parent(ours)
    assert world.merge(parent).donor.id == donor.id       # merge3 itself is happy
    world.loop.config.merge_share, world.loop.config.port_share = 1.0, 0.0
    outcome = await world.loop.step()
    assert outcome.kind == "experiment" and outcome.record.agent == world.loop.agent.name
    assert "socket" not in world.lineage.source_of(outcome.record.id)
    logged = [json.loads(line) for line in
              (world.loop.home / "proposals.jsonl").read_text().splitlines()]
    assert logged[0]["desc"].startswith(f"merge of {donor.id_hex} (a claim)")
    assert logged[0]["reason"].startswith("static check")
    assert (ours.id, donor.id) in world.loop.crossovers.failed
    assert world.merge(parent) is None


# ---------------------------------------------------------------------------
# ports


@pytest.fixture
def foreign(world):
    """Another arena with its own baselines (sigma 0.001 around 2.000)."""
    world.baselines(FOREIGN, (2.000, 2.001, 1.999), author=world.key("dave"))
    return world


def foreign_edit(world, author, val, change=("WEIGHT_DECAY", "0.0", "0.1"), desc=None):
    return world.experiment(author, ROOT, setting(BASE, *change), val, arena=FOREIGN,
                            desc=desc or f"{change[0]} {change[1]} -> {change[2]}")


async def test_an_edit_kept_in_another_arena_is_ported_to_our_parent(foreign):
    world = foreign
    assert FOREIGN != ARENA
    ours = world.ours()
    donor = foreign_edit(world, world.key("dave"), 1.95)
    parent = world.parent(ours)
    found = world.port(parent)
    assert isinstance(found, Crossover) and found.kind == "port"
    assert found.parents == [ours.id] and found.donor.id == donor.id
    assert found.desc == port_desc(donor)
    assert found.desc.startswith(f"port of {donor.id_hex} from {FOREIGN}: ")
    assert found.source == setting(world.lineage.source_of(ours.id),
                                   "WEIGHT_DECAY", "0.0", "0.1")
    assert found.gain == pytest.approx(1.95 - 2.000)

    world.loop.config.merge_share, world.loop.config.port_share = 0.0, 1.0
    outcome = await world.loop.step()
    record = outcome.record
    assert record.agent == "port" and list(record.parents) == [ours.id]
    assert record.arena == ARENA and record.desc == found.desc
    assert world.lineage.source_of(record.id) == found.source
    assert ported_ids(world.store.experiments(arena=ARENA)) == {donor.id}
    assert world.port(parent) is None                     # ported once is enough


def test_a_port_done_anywhere_in_our_arena_is_not_proposed_again(foreign):
    world = foreign
    ours = world.ours()
    best = foreign_edit(world, world.key("dave"), 1.95)                # gains 0.05
    next_best = foreign_edit(world, world.key("erin"), 1.97,
                             change=("ADAM_EPS", "1e-8", "1e-6"))       # gains 0.03
    parent = world.parent(ours)
    assert world.port(parent).donor.id == best.id
    # a peer ported `best` onto the root of our arena (another parent: not in `tried`)
    world.experiment(world.key("frank"), ROOT, setting(BASE, "WEIGHT_DECAY", "0.0", "0.1"),
                     1.91, desc=port_desc(best))
    assert ported_ids(world.store.experiments(arena=ARENA)) == {best.id}
    found = world.port(parent)
    assert found.donor.id == next_best.id
    assert found.desc.startswith(f"port of {next_best.id_hex} from {FOREIGN}: ")
    # announced by a live node, or already run on this parent: not proposed either
    assert world.port(parent, busy={found.desc}) is None
    assert world.port(parent, tried={found.source}) is None


def test_a_liars_foreign_edit_is_not_ported(foreign):
    world = foreign
    ours = world.ours()
    mallory = world.key("mallory")
    donor = foreign_edit(world, mallory, 1.95)
    parent = world.parent(ours)
    assert world.port(parent).donor.id == donor.id        # no verification needed
    world.judged("mallory", "refuted")
    assert world.loop.trust.is_liar(mallory.public_key)
    assert world.port(parent) is None


@pytest.mark.parametrize("why", ["within the noise", "crashed", "worse", "no sigma there"])
def test_a_foreign_edit_not_kept_in_its_own_arena_is_not_ported(world, why):
    ours = world.ours()
    if why != "no sigma there":
        world.baselines(FOREIGN, (2.000, 2.001, 1.999), author=world.key("dave"))
    val, status = {"within the noise": (1.999, "ok"), "crashed": (None, "crash"),
                   "worse": (2.1, "ok"), "no sigma there": (1.5, "ok")}[why]
    world.experiment(world.key("dave"), ROOT, setting(BASE, "WEIGHT_DECAY", "0.0", "0.1"),
                     val, arena=FOREIGN, status=status)
    assert world.port(world.parent(ours)) is None


def test_our_own_arenas_edits_are_not_ports(world):
    ours = world.ours()
    sibling(world, world.me)                  # kept here: a merge donor, not a port
    assert world.port(world.parent(ours)) is None
    assert world.merge(world.parent(ours)) is not None


def test_a_port_that_conflicts_with_our_parent_is_remembered(foreign):
    world = foreign
    ours = world.ours()                                   # MATRIX_LR 0.03
    donor = foreign_edit(world, world.key("dave"), 1.95, change=("MATRIX_LR", "0.02", "0.01"))
    assert world.port(world.parent(ours)) is None
    assert (ours.id, donor.id) in world.loop.crossovers.failed
    assert world.port(world.parent(ours)) is None
    # on a sibling parent of ours it applies cleanly: the conflict was that parent's only
    other = sibling(world, world.me)
    found = world.port(world.parent(other))
    assert found is not None and found.donor.id == donor.id
    assert found.source == setting(world.lineage.source_of(other.id), "MATRIX_LR", "0.02",
                                   "0.01")


def test_a_fresh_arena_ports_onto_the_root(foreign):
    world = foreign
    donor = foreign_edit(world, world.key("dave"), 1.95)
    root = world.loop.choose_parent()
    assert root.id == ROOT and root.record is None     # nothing kept here yet
    found = world.port(root)
    assert found is not None and found.donor.id == donor.id
    assert found.source == world.lineage.source_of(donor.id)


# ---------------------------------------------------------------------------
# re-runs that trusted peers are doing already


@pytest.fixture
def claim_world(world):
    """A peer's claim that would become our best: the loop wants to re-run it."""
    claim = sibling(world, world.key("carol"), val=1.85)
    world.trusted("alice"), world.trusted("bob")
    assert world.loop.pending_claim().id == claim.id
    return world, claim


@pytest.mark.parametrize("running, skipped", [
    (("alice", "bob"), True),
    (("sybil0", "sybil1", "sybil2"), False),
    (("alice", "sybil0"), True),                # one trusted re-run: its verdict will do
    (("carol", "sybil0"), False),               # the author's own re-run counts for nothing
])
def test_a_claim_a_trusted_peer_is_re_running_is_not_re_run_again(claim_world, running,
                                                                  skipped):
    """Its reproduction lets us build on the claim (speculative_parent), so one trusted
    re-run in progress is enough to wait for; keys we never checked are not."""
    world, claim = claim_world
    keys = {world.key(name).public_key for name in running}
    world.loop.verifiers = lambda: {claim.id_hex[:16]: keys}
    found = world.loop.pending_claim()
    assert (found is None) if skipped else (found.id == claim.id)


def test_a_re_run_by_a_peer_who_already_attested_adds_nothing(claim_world):
    world, claim = claim_world
    world.attest(world.key("alice"), claim)
    assert world.loop.pending_claim().id == claim.id            # one attestation: not k
    world.loop.verifiers = lambda: {claim.id_hex[:16]: {world.key("alice").public_key}}
    assert world.loop.pending_claim().id == claim.id
    world.loop.verifiers = lambda: {claim.id_hex[:16]: {world.key("bob").public_key}}
    assert world.loop.pending_claim() is None


def test_re_runs_of_another_claim_do_not_skip_this_one(claim_world):
    world, claim = claim_world
    keys = {world.key("alice").public_key, world.key("bob").public_key}
    world.loop.verifiers = lambda: {"0" * 16: keys}
    assert world.loop.pending_claim().id == claim.id


def announce(identity, text, t=None):
    return make_announce(identity, genome=G, topics=["general"], arena=ARENA,
                         working_on=text, t=t)


def test_verifiers_are_read_from_fresh_verify_announces_of_others(claim_world, monkeypatch):
    world, claim = claim_world
    store, me = world.store, world.me
    other = sibling(world, world.key("dave"), val=1.95, change=WARMDOWN_DOWN, desc="wd")
    on_claim = working_on(claim.parents[0], verify_desc(claim.id, claim.desc))
    now_ms = int(time.time() * 1000)
    store.insert(announce(me, on_claim), local=True)                       # ourselves
    store.insert(announce(world.key("alice"), on_claim))
    # stale: fresh by its author's clock, but we received it long ago (our clock counts)
    monkeypatch.setattr("swarm.store._now_ms", lambda: now_ms - 1_000_000)
    store.insert(announce(world.key("bob"), on_claim, t=now_ms))
    monkeypatch.undo()
    store.insert(announce(world.key("erin"),
                          working_on(ROOT, verify_desc(other.id, other.desc))))
    store.insert(announce(world.key("hal"), f"verify {claim.id_hex[:16]}: no parent"))
    expected = {claim.id_hex[:16]: {world.key("alice").public_key},
                other.id_hex[:16]: {world.key("erin").public_key}}
    assert verifiers_from_announces(store, me.public_key) == expected
    # a longer horizon counts bob's old announce too
    assert verifiers_from_announces(store, me.public_key, max_age_s=10_000)[
        claim.id_hex[:16]] == {world.key("alice").public_key, world.key("bob").public_key}
    store.insert(announce(world.key("frank"), working_on(ROOT, "[X*2] an edit")))
    store.insert(announce(world.key("gina"), working_on(ROOT, f"verify {claim.id_hex[:15]}: x")))
    assert verifiers_from_announces(store, me.public_key) == expected

    # wired into the loop: only a fresh announce of a peer we trust counts
    world.loop.verifiers = lambda: verifiers_from_announces(store, me.public_key)
    assert world.loop.pending_claim() is None                   # alice re-runs it now
    world.loop.verifiers = lambda: {k: v - {world.key("alice").public_key} for k, v in
                                    verifiers_from_announces(store, me.public_key).items()}
    assert world.loop.pending_claim().id == claim.id            # bob's alone is stale


def test_strangers_flooding_claims_do_not_crowd_out_a_good_donor(world):
    ours = world.ours()
    good = sibling(world, world.trusted("carol"), val=1.87)
    for i in range(30):       # fresh keys claiming far better scores, each its own edit
        source = setting(BASE, "HEAD_LR", "0.004", f"0.{i + 10}")
        world.experiment(world.key(f"liar{i}"), ROOT, source, 1.5, desc=f"lie {i}")
    found = world.merge(world.parent(ours))
    assert found is not None and found.donor.id == good.id


def test_claims_by_an_author_a_trusted_peer_caught_lying_wait_their_turn(world):
    world.ours()
    alice = world.trusted("alice")
    mallory = world.key("mallory")
    earlier_lie = world.experiment(mallory, ROOT, setting(BASE, *WARMDOWN_DOWN), 1.5,
                                   arena=ELSEWHERE, desc="an earlier lie")
    world.attest(alice, earlier_lie, "refuted")
    lie = sibling(world, mallory, val=1.80)                      # claims the most
    fresh = world.experiment(world.key("fresh"), ROOT, setting(BASE, *WARMDOWN_DOWN), 1.82,
                             desc="a stranger's honest claim")
    assert world.loop.pending_claim().id == fresh.id
    world.attest(world.me, fresh)                                # checked: mallory's turn
    assert world.loop.pending_claim().id == lie.id


def test_a_claim_built_on_a_refuted_record_waits_behind_fresh_claims(world):
    world.ours()
    first_lie = sibling(world, world.key("mallory"), val=1.80)
    world.attest(world.me, first_lie, "refuted")
    chained = world.experiment(world.key("mallory2"), first_lie.id,
                               setting(world.lineage.source_of(first_lie.id), *WARMDOWN_DOWN),
                               1.70, desc="a lie on a lie")
    fresh = world.experiment(world.key("fresh"), ROOT, setting(BASE, *WARMDOWN_DOWN), 1.82,
                             desc="a stranger's honest claim")
    assert world.loop.pending_claim().id == fresh.id
    world.attest(world.me, fresh)
    assert world.loop.pending_claim().id == chained.id     # still checked, only later


# ---------------------------------------------------------------------------
# building on a claim before it is verified (speculative parents)


def speculating(world, share):
    world.loop.config.speculate_share = share
    return world.loop.choose_parent()


def test_a_trusted_authors_better_claim_is_built_on_before_it_is_verified(world):
    ours = world.ours(val=1.85)
    claim = sibling(world, world.trusted("carol"), val=1.84)
    assert not world.loop.trust.is_verified(claim)
    assert speculating(world, 0.0).id == claim.id
    worse = sibling(world, world.trusted("dave"), val=1.86, change=WARMDOWN_DOWN, desc="wd")
    assert speculating(world, 0.0).id == claim.id and worse.id != ours.id


def test_a_strangers_claim_is_built_on_only_in_the_speculate_share(world):
    world.ours(val=1.85)
    claim = sibling(world, world.key("stranger"), val=1.84)
    assert speculating(world, 0.0).id != claim.id
    assert speculating(world, 1.0).id == claim.id


@pytest.mark.parametrize("vouched_by", ["a trusted peer", "only Sybils", "nobody"])
def test_a_strangers_claim_a_trusted_peer_reproduced_is_built_on_at_once(world, vouched_by):
    """One trusted reproduction is not verification (that takes k), but it is enough to
    build on: the child is ours to measure. Keys we never checked vouch for nothing."""
    ours = world.ours(val=1.85)
    claim = sibling(world, world.key("stranger"), val=1.84)
    if vouched_by == "a trusted peer":
        world.attest(world.trusted("alice"), claim)
    if vouched_by == "only Sybils":
        for name in ("s1", "s2", "s3"):
            world.attest(world.key(name), claim)
    assert not world.loop.trust.is_verified(claim)
    expected = claim.id if vouched_by == "a trusted peer" else ours.id
    assert speculating(world, 0.0).id == expected


def test_a_liars_claim_is_not_built_on_even_when_a_trusted_peer_vouches(world):
    ours = world.ours(val=1.85)
    mallory = world.judged("mallory", "refuted", times=2)
    claim = sibling(world, mallory, val=1.84)
    world.attest(world.trusted("alice"), claim)
    assert speculating(world, 0.0).id == ours.id


def test_a_trusted_authors_claim_comes_before_a_strangers_better_one(world):
    world.ours(val=1.85)
    trusted = sibling(world, world.trusted("carol"), val=1.84)
    sibling(world, world.key("stranger"), val=1.70, change=WARMDOWN_DOWN, desc="wd")
    assert speculating(world, 1.0).id == trusted.id


@pytest.mark.parametrize("why", ["refuted by us", "refuted by a trusted peer", "doubted author",
                                 "liar", "built on a refuted record", "not kept",
                                 "not better than ours"])
def test_claims_never_built_on_before_verification(world, why):
    ours = world.ours(val=1.85)
    carol = world.trusted("carol")
    parent, val = ROOT, 1.84
    if why == "built on a refuted record":
        refuted = sibling(world, world.key("mallory"), val=1.80, change=WARMDOWN_DOWN, desc="wd")
        world.attest(world.me, refuted, "refuted")
        parent = refuted.id
    if why == "not kept":
        parent, val = ours.id, 1.849         # within the noise of its parent
    if why == "not better than ours":
        val = 1.851
    source = setting(world.lineage.source_of(parent), *HEAD_LR_UP)
    claim = world.experiment(carol, parent, source, val, desc="HEAD_LR up")
    if why == "refuted by us":
        world.attest(world.me, claim, "refuted")
    if why == "refuted by a trusted peer":
        world.attest(world.trusted("alice"), claim, "refuted")
    if why == "doubted author":
        earlier = world.experiment(carol, ROOT, setting(BASE, *WARMDOWN_DOWN), 1.5,
                                   arena=ELSEWHERE, desc="an earlier lie")
        world.attest(world.trusted("alice"), earlier, "refuted")
    if why == "liar":
        world.judged("carol", "refuted", times=2)
    assert speculating(world, 1.0).id == ours.id


async def test_a_lie_built_on_costs_one_run_and_is_never_kept(world):
    world.ours(val=1.85)
    # a stranger claims a setting change that does nothing is worth a 0.1 gain
    lie = sibling(world, world.key("mallory"), val=1.75, change=WARMDOWN_DOWN, desc="wd")
    world.loop.config.speculate_share = 1.0
    world.loop.config.merge_share = world.loop.config.port_share = 0.0
    world.loop.config.verify_share = 0.0            # no re-run: build on it right away
    world.loop.verify_budget_left = lambda: False
    outcome = await world.loop.step()
    assert outcome.kind == "experiment" and outcome.parent.id == lie.id
    assert list(outcome.record.parents) == [lie.id]
    assert not outcome.kept                          # judged against the claimed 1.75
    assert world.loop.scores.best().val_bpb == 1.85
    assert speculating(world, 1.0).id == lie.id      # until the re-run queue catches it
    world.attest(world.me, lie, "refuted")
    assert speculating(world, 1.0).id != lie.id


def test_claims_fewer_peers_are_re_running_are_re_run_first(world):
    world.ours(val=1.88)
    best = sibling(world, world.trusted("carol"), val=1.84)
    other = sibling(world, world.trusted("dave"), val=1.86, change=WARMDOWN_DOWN, desc="wd")
    assert world.loop.pending_claim().id == best.id
    strangers = {world.key(f"s{i}").public_key for i in range(2)}
    world.loop.verifiers = lambda: {best.id_hex[:16]: strangers}
    assert world.loop.pending_claim().id == other.id     # reordered, never skipped
    world.attest(world.me, other)
    assert world.loop.pending_claim().id == best.id


def test_announced_re_runs_do_not_reorder_strangers_claims(world):
    """An announce costs nothing: it cannot push a stranger's claim behind fakes."""
    world.ours(val=1.88)
    sibling(world, world.key("carol"), val=1.84)
    sibling(world, world.key("dave"), val=1.86, change=WARMDOWN_DOWN, desc="wd")
    first = world.loop.pending_claim()          # the lottery's pick
    fresh = {world.key(f"s{i}").public_key for i in range(2)}
    world.loop.verifiers = lambda: {first.id_hex[:16]: fresh}
    assert world.loop.pending_claim().id == first.id

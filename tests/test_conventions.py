"""swarm.conventions and the rules with one home: names, baselines and the genome's score,
and the agent's brief."""
from types import SimpleNamespace

import pytest

import genome
from experiments.agents.base import load_brief
from swarm import conventions, gossip, records
from swarm.conventions import baseline_runs, baseline_seed, root_score

ARENA = "embedded/tokens:300000/cpu"


def run(desc, bpb=1.0, patch="", arena=ARENA, status="ok"):
    return SimpleNamespace(desc=desc, val_bpb=bpb, patch=patch, arena=arena, status=status)


def test_names_have_one_home():
    assert genome.TOPIC_RE is records.TOPIC_RE is conventions.TOPIC_RE
    assert records.GENOME_RE is conventions.GENOME_RE
    for topic in ("general", "a-1", "x" * 32):
        assert gossip.valid_topic(topic) and genome.check_topic(topic) == topic
    for topic in ("", "x" * 33, "Upper", "a_b", "opt\n", "../x"):
        assert not gossip.valid_topic(topic)
        with pytest.raises(ValueError):
            genome.check_topic(topic)
    assert gossip.valid_genome("0123456789abcdef") and not gossip.valid_genome("0123456789ABCDEF")


def test_baseline_runs_and_the_root_score():
    assert baseline_seed(run("baseline seed=3")) == 3
    assert baseline_seed(run("baseline seed=3", patch="--- a/train.py\n")) is None
    for desc in ("baseline", "baseline seed=", "baseline seed=1 again", None):
        assert baseline_seed(run(desc)) is None
    children = [run("baseline seed=0", 1.5), run("baseline seed=0", 1.7),
                run("baseline seed=0", 1.6), run("baseline seed=1", 1.0),
                run("baseline seed=0", 0.1, status="crash"),
                run("baseline seed=0", 0.2, arena="other/tokens:1/cpu"),
                run("an edit", 0.3, patch="--- a/train.py\n")]
    by_seed = baseline_runs(children, ARENA)
    assert by_seed == {0: [1.5, 1.7, 1.6], 1: [1.0]}
    assert root_score(by_seed) == 1.6
    assert root_score(by_seed, seed=1) == 1.0
    assert root_score(by_seed, seed=2) is None and root_score({}) is None


@pytest.fixture
def genome_dir(tmp_path):
    (tmp_path / "topics").mkdir()
    (tmp_path / "program.md").write_text("# Program\n\nLower val_bpb.\n")
    (tmp_path / "topics" / "optimizer.md").write_text("# Optimizer\n\nTry Muon.\n")
    return tmp_path


def test_the_brief_has_one_builder_and_one_fallback(genome_dir):
    for topic in ("optimizer", "new-topic"):
        brief = load_brief(topic, genome_dir)
        assert brief.topic == topic
        assert brief.text == genome.program_brief(topic, genome_dir)
    assert load_brief("optimizer", genome_dir).text == \
        "# Program\n\nLower val_bpb.\n\n# Optimizer\n\nTry Muon.\n"
    assert "No focus file exists for this topic" in load_brief("new-topic", genome_dir).text
    assert load_brief("general").text == genome.program_brief("general")
    for bad in ("opt\n", "Bad", "", None, "../program"):
        with pytest.raises(ValueError):
            load_brief(bad, genome_dir)

"""Tests for genome/__init__.py: genome identity hashes and agent briefs."""

import hashlib
import subprocess
import sys

import pytest

import genome


def fake_repo(root, prepare=b"prepare", evaluate=b"evaluate", graph=b"graph", feed=b"feed",
              train=b"train", download=b"download"):
    (root / "genome").mkdir(parents=True, exist_ok=True)
    (root / "experiments" / "run").mkdir(parents=True, exist_ok=True)
    (root / "genome" / "train.py").write_bytes(train)
    (root / "genome" / "prepare.py").write_bytes(prepare)
    (root / "genome" / "download.py").write_bytes(download)
    (root / "experiments" / "run" / "evaluate_child.py").write_bytes(evaluate)
    (root / "experiments" / "run" / "model_graph.py").write_bytes(graph)
    (root / "experiments" / "run" / "data_feed.py").write_bytes(feed)
    return root


PINNED = "d1d2aa2f3d5490c2"
TAIL = (b"experiments/run/model_graph.py\0graph\0" b"experiments/run/data_feed.py\0feed\0")


def test_genome_id_follows_the_documented_formula(tmp_path):
    repo = fake_repo(tmp_path, b"P\x00bytes", b"E", train=b"T")
    expected = hashlib.sha256(
        b"loopy-genome/1\0"
        + b"genome/train.py\0" + b"T" + b"\0"
        + b"genome/prepare.py\0" + b"P\x00bytes" + b"\0"
        + b"experiments/run/evaluate_child.py\0" + b"E" + b"\0" + TAIL).hexdigest()[:16]
    assert genome.genome_id(repo) == expected


def test_genome_id_test_vector(tmp_path):
    # Pinned so that any change to the formula is caught: other
    # implementations must compute the same id from the same files.
    repo = fake_repo(tmp_path, b"prepare", b"evaluate")
    assert genome.genome_id(repo) == hashlib.sha256(
        b"loopy-genome/1\x00genome/train.py\x00train\x00genome/prepare.py\x00prepare\x00"
        b"experiments/run/evaluate_child.py\x00evaluate\x00" + TAIL).hexdigest()[:16]
    assert genome.genome_id(repo) == PINNED


def test_genome_id_changes_with_any_trusted_byte(tmp_path):
    base = genome.genome_id(fake_repo(tmp_path / "a"))
    assert genome.genome_id(fake_repo(tmp_path / "b", prepare=b"prepare ")) != base
    assert genome.genome_id(fake_repo(tmp_path / "c", evaluate=b"Evaluate")) != base
    assert genome.genome_id(fake_repo(tmp_path / "f", graph=b"Graph")) != base
    assert genome.genome_id(fake_repo(tmp_path / "g", feed=b"Feed")) != base
    assert genome.genome_id(fake_repo(tmp_path / "h", train=b"Train")) != base
    # moving bytes between the files changes the id too (paths and separators are hashed)
    assert (genome.genome_id(fake_repo(tmp_path / "d", b"ab", b"c"))
            != genome.genome_id(fake_repo(tmp_path / "e", b"a", b"bc")))


def test_the_downloader_is_not_part_of_the_genome_id(tmp_path):
    # the data digest in the arena names what it fetched: a fix to it must not split the swarm
    base = genome.genome_id(fake_repo(tmp_path / "a"))
    assert genome.genome_id(fake_repo(tmp_path / "b", download=b"fixed download")) == base
    assert "genome/download.py" not in genome.GENOME_ID_FILES


def test_genome_id_without_evaluation_code_is_a_clear_error(tmp_path):
    repo = fake_repo(tmp_path)
    (repo / "experiments" / "run" / "evaluate_child.py").unlink()
    with pytest.raises(FileNotFoundError, match="evaluate_child.py"):
        genome.genome_id(repo)


def test_real_genome_id_is_stable_across_processes():
    if not (genome.REPO_DIR / "experiments" / "run" / "evaluate_child.py").is_file():
        with pytest.raises(FileNotFoundError):
            genome.genome_id()
        return
    here = genome.genome_id()
    assert len(here) == 16 and int(here, 16) >= 0
    other = subprocess.run([sys.executable, "-c", "import genome; print(genome.genome_id())"],
                           cwd=genome.REPO_DIR, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == here


def test_root_id_is_sha256_of_base_train_py():
    source = genome.base_train_source()
    assert genome.genome_root_id() == hashlib.sha256(source.encode("utf-8")).digest()
    assert len(genome.genome_root_id()) == 32


def test_genome_package_does_not_import_torch():
    code = "import sys, genome; genome.genome_root_id(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=genome.REPO_DIR,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture
def briefs(tmp_path, monkeypatch):
    (tmp_path / "topics").mkdir()
    (tmp_path / "program.md").write_text("# Program\n\nLower val_bpb.\n")
    (tmp_path / "topics" / "optimizer.md").write_text("# Optimizer\n\nTry Muon settings.\n")
    (tmp_path / "topics" / "Bad_Name.md").write_text("ignored")
    monkeypatch.setattr(genome, "GENOME_DIR", tmp_path)
    monkeypatch.setattr(genome, "TOPICS_DIR", tmp_path / "topics")
    return tmp_path


def test_program_brief_joins_program_and_topic(briefs):
    brief = genome.program_brief("optimizer")
    assert brief == "# Program\n\nLower val_bpb.\n\n# Optimizer\n\nTry Muon settings.\n"


def test_program_brief_for_a_topic_without_a_file(briefs):
    brief = genome.program_brief("new-topic-2")
    assert brief.startswith("# Program\n\nLower val_bpb.\n\n")
    assert "new-topic-2" in brief


@pytest.mark.parametrize("topic", [
    "", "a" * 33, "Optimizer", "../program", "a/b", "a b", "opt\n", "é", None, 5,
])
def test_program_brief_rejects_bad_topic_names(briefs, topic):
    with pytest.raises(ValueError):
        genome.program_brief(topic)


def test_available_topics(briefs):
    assert genome.available_topics() == ["optimizer"]


def test_real_briefs_exist_for_listed_topics():
    assert (genome.GENOME_DIR / "program.md").is_file()
    assert genome.available_topics()
    for topic in genome.available_topics():
        assert genome.program_brief(topic).strip()

"""The genome: the program the swarm evolves, and its identity.

Paths and hashes only; this module never imports torch, so that a node that
only relays and verifies records starts fast.

- `genome_root_id()`: sha256 of the base `genome/train.py` bytes (32 raw
  bytes), the first parent of every root edit.
- `genome_id()`: 16 hex chars naming what defines a score: the base train.py and the
  trusted code that scores it (prepare.py, the data feed, the model-graph checks and the
  evaluation child); nodes with different ids never mix results. The downloader
  (download.py) is left out: the data digest in the arena names what it fetched.
- `program_brief(topic)`: the agent's standing brief plus the topic's focus; the one
  builder of an agent's brief.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from swarm.conventions import TOPIC_RE

GENOME_DIR = Path(__file__).resolve().parent
REPO_DIR = GENOME_DIR.parent
DATA_DIR = GENOME_DIR / "data"
TOPICS_DIR = GENOME_DIR / "topics"

# The files whose bytes define the genome id, in this order. The base train.py is one:
# every patch applies to it and the baseline runs it, so nodes with different bases must
# not share topics (with genome_root_id alone, each would admit the other's records as
# orphans whose first parent no peer can serve).
GENOME_ID_FILES = ("genome/train.py", "genome/prepare.py", "experiments/run/evaluate_child.py",
                   "experiments/run/model_graph.py", "experiments/run/data_feed.py")
GENOME_ID_DOMAIN = b"loopy-genome/1\0"


def base_train_source() -> str:
    """The base genome/train.py as text (the root of every lineage)."""
    return (GENOME_DIR / "train.py").read_text(encoding="utf-8")


def genome_root_id() -> bytes:
    """sha256 of the base genome/train.py bytes (32 raw bytes)."""
    return hashlib.sha256((GENOME_DIR / "train.py").read_bytes()).digest()


def genome_id(repo_dir: Path = REPO_DIR) -> str:
    """First 16 hex chars of the hash over the base train.py and the trusted evaluation code.

    sha256(b"loopy-genome/1\\0" + for each file: relpath, \\0, bytes, \\0).
    """
    digest = hashlib.sha256(GENOME_ID_DOMAIN)
    for relpath in GENOME_ID_FILES:
        path = Path(repo_dir) / relpath
        if not path.is_file():
            raise FileNotFoundError(
                f"genome id needs {relpath} (the base genome or trusted evaluation code), "
                f"missing under {repo_dir}")
        digest.update(relpath.encode("utf-8") + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def check_topic(topic: str) -> str:
    """Return topic if it is a valid topic name (1-32 of a-z 0-9 -)."""
    if not isinstance(topic, str) or TOPIC_RE.fullmatch(topic) is None:
        raise ValueError(f"invalid topic {topic!r}: use 1-32 characters of a-z, 0-9 and -")
    return topic


def available_topics() -> list[str]:
    """Topics that have a focus file in genome/topics/."""
    if not TOPICS_DIR.is_dir():
        return []
    return sorted(p.stem for p in TOPICS_DIR.glob("*.md") if TOPIC_RE.fullmatch(p.stem))


def program_brief(topic: str, genome_dir: Path | str | None = None) -> str:
    """genome/program.md followed by genome/topics/<topic>.md (of `genome_dir` if given).

    A valid topic without a focus file gets the standing brief and a line
    naming the topic, so that new topics work before anyone writes a file.
    """
    check_topic(topic)
    root = GENOME_DIR if genome_dir is None else Path(genome_dir)
    topics = TOPICS_DIR if genome_dir is None else root / "topics"
    program = (root / "program.md").read_text(encoding="utf-8")
    focus_path = topics / f"{topic}.md"
    if focus_path.is_file():
        focus = focus_path.read_text(encoding="utf-8")
    else:
        focus = (f"# Topic: {topic}\n\nNo focus file exists for this topic: "
                 f"work on whatever fits the name `{topic}` and lowers val_bpb.\n")
    return program.rstrip("\n") + "\n\n" + focus

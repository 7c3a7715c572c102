"""FIXED AND TRUSTED: data, tokenizer, dataloader and the evaluation metric.

Agents never edit this file. Its bytes are part of the genome id: a node
whose prepare.py differs lives in a different swarm, because val_bpb is only
comparable when it is measured by exactly this code.

What it provides (contract in docs/ARCHITECTURE.md):
- the corpus: the embedded public-domain books in genome/data/ (offline
  default) or public parquet text shards, fetched by genome/download.py (which
  is not part of the genome id: the data digest names what it fetched) and
  verified against their sha256;
- a BPE tokenizer (vocab 8192 including special tokens) trained here with
  rustbpe and run through tiktoken, cached as data (never as code);
- train.bin / val.bin: flat uint16 token arrays, each document prefixed by
  BOS, written atomically with sha256 sidecars and rebuilt when corrupt;
- `make_dataloader`: BOS-aligned best-fit packing with a process-wide token
  counter that enforces a token budget;
- `evaluate_bpb`: the one ground-truth metric,
  val_bpb = sum of target cross-entropy in nats / (ln 2 * sum of the
  targets' UTF-8 bytes), special tokens excluded from both sums.

Imports only stdlib, numpy and tiktoken at module level; torch and pyarrow
are imported inside the functions that need them.

    python genome/prepare.py --home ~/.loopy                  # embedded corpus
    python genome/prepare.py --home ~/.loopy --dataset climbmix --num-shards 4
"""

from __future__ import annotations

import argparse
import bisect
import functools
import hashlib
import io
import json
import lzma
import math
import os
import pickle
import re
import secrets
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import tiktoken

# ---------------------------------------------------------------------------
# Constants (fixed: changing any of them changes the genome id)
# ---------------------------------------------------------------------------

VOCAB_SIZE = 8192  # including the special tokens
BOS_TOKEN = "<|bos|>"
SPECIAL_TOKENS = (BOS_TOKEN, "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>")
# GPT-4's split pattern with numbers in groups of at most two digits (as in
# nanochat): a small vocab should not spend merges on three-digit numbers.
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}|"""
                 r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
TOKENIZER_TEXT_CAP = 200_000_000  # characters of train text the tokenizer sees
TOKENIZER_FORMAT = "loopy-tokenizer/1"
TOKEN_DTYPE = np.uint16

EMBEDDED_DIR = Path(__file__).resolve().parent / "data"
EMBEDDED_FILES = {"train": "embedded-train.jsonl.xz", "val": "embedded-val.jsonl.xz"}
# The held-out test split: documents of the train file whose index mod 10 is in
# TEST_SLOTS (30 % of the chapters, spread over every book). No run trains on them and
# they compress to about 650 KB, over 4x the patch limit, so no patch can carry them.
TEST_EVERY, TEST_SLOTS = 10, (1, 4, 7)
SPLITS = ("train", "val", "test")

DATA_URL_ENV = "LOOPY_DATA_URL"
RUN_CONFIG_ENV = "LOOPY_RUN_CONFIG"
DEVICES = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class ShardedDataset:
    """A public dataset of parquet text shards named by index."""
    name: str
    base_url: str
    filename: str            # format string with {i}
    num_train_shards: int    # train shards are 0 .. num_train_shards-1
    val_shard: int           # one fixed shard, never used for training
    test_shard: int          # the held-out test split: one shard no run trains on
    default_shards: int      # train shards downloaded unless told otherwise
    text_column: str = "text"
    sha256: tuple[tuple[int, str], ...] = ()  # pinned (index, hex) where known

    def shard_name(self, index: int) -> str:
        return self.filename.format(i=index)

    def pinned_sha256(self, index: int) -> str | None:
        return dict(self.sha256).get(index)


# The climbmix shards autoresearch trains on; the last shard is validation.
DATASETS = {
    "embedded": None,  # genome/data/, works offline
    "climbmix": ShardedDataset(
        name="climbmix",
        base_url="https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main",
        filename="shard_{i:05d}.parquet",
        num_train_shards=6541,
        val_shard=6542,
        test_shard=6541,
        default_shards=10,
    ),
}


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

class DataError(Exception):
    """Base class: the data cannot be prepared; the message says how to fix it."""


class CorpusError(DataError):
    """The corpus on disk is missing or corrupt."""


class DatasetUnavailable(DataError):
    """A dataset that needs a download could not be downloaded."""


class BudgetExhausted(StopIteration):
    """The token budget of this run has been served (ends a for loop)."""


Progress = Callable[[str, int, int], None]


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


# ---------------------------------------------------------------------------
# Files: atomic writes and sha256 sidecars
# ---------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tmp_path(path: Path) -> Path:
    # Unique per writer, so two processes preparing one home never collide.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_sidecar(path: Path, digest: str, inputs: dict) -> None:
    body = json.dumps({"sha256": digest, "inputs": inputs}, sort_keys=True)
    _atomic_write_bytes(_sidecar(path), body.encode() + b"\n")


def _cache_valid(path: Path, inputs: dict) -> bool:
    """True when path exists, matches its sidecar's sha256, and was built
    from the same inputs (tokenizer, corpus, settings)."""
    try:
        meta = json.loads(_sidecar(path).read_text())
        return (isinstance(meta, dict) and meta.get("inputs") == inputs
                and path.is_file() and meta.get("sha256") == sha256_file(path))
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------
# Corpus: the embedded books
# ---------------------------------------------------------------------------

def _embedded_checksums(corpus_dir: Path) -> dict[str, str]:
    """Verify the embedded corpus against SHA256SUMS; {split: sha256}."""
    fix = ("restore it with `git checkout -- genome/data` or rebuild it with "
           "`python genome/data/build_corpus.py`")
    sums_path = corpus_dir / "SHA256SUMS"
    try:
        lines = sums_path.read_text().splitlines()
    except OSError as e:
        raise CorpusError(f"embedded corpus checksums missing ({sums_path}: {e.strerror}); {fix}")
    expected = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            expected[parts[1].lstrip("*")] = parts[0]
    out = {}
    for split, name in EMBEDDED_FILES.items():
        path = corpus_dir / name
        if name not in expected:
            raise CorpusError(f"{sums_path} has no entry for {name}; {fix}")
        if not path.is_file():
            raise CorpusError(f"embedded corpus file missing: {path}; {fix}")
        if sha256_file(path) != expected[name]:
            raise CorpusError(f"embedded corpus file corrupt (sha256 mismatch): {path}; {fix}")
        out[split] = expected[name]
    return out


def _is_test_document(index: int) -> bool:
    return index % TEST_EVERY in TEST_SLOTS


def _embedded_documents(corpus_dir: Path, split: str) -> Iterator[str]:
    """Documents of one split; "tokenizer" is the whole train file (train + test)."""
    path = corpus_dir / EMBEDDED_FILES["val" if split == "val" else "train"]
    try:
        with lzma.open(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                doc = json.loads(line)
                if not (isinstance(doc, dict) and isinstance(doc.get("text"), str)):
                    raise ValueError(f"line {number} is not a {{name, text}} object")
                if split in ("train", "test") and _is_test_document(number - 1) != (split == "test"):
                    continue
                yield doc["text"]
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError, ValueError) as e:
        raise CorpusError(f"cannot read embedded corpus {path}: {e}; rebuild it with "
                          "`python genome/data/build_corpus.py`") from e


# ---------------------------------------------------------------------------
# Corpus: downloaded parquet shards
# ---------------------------------------------------------------------------

def _downloader():
    """genome/download.py, the HTTP client, imported only when a shard must be fetched.

    It lies outside the genome id (the data digest names what it fetched), and the
    sandboxed children, which import this file without it beside them, never get here.
    """
    try:
        from genome import download
    except ImportError:  # `python genome/prepare.py` in a checkout that is not installed
        import download
    return download


def _ensure_shard(spec: ShardedDataset, index: int, shard_dir: Path, base_url: str,
                  progress: Progress, attempts: int, backoff_s: float) -> tuple[Path, str]:
    """A verified local copy of one shard (downloaded if needed)."""
    name = spec.shard_name(index)
    path = shard_dir / name
    pinned = spec.pinned_sha256(index)
    inputs = {"url_name": name}
    if _cache_valid(path, inputs):
        digest = json.loads(_sidecar(path).read_text())["sha256"]
        if pinned is None or digest == pinned:
            return path, digest
    url = f"{base_url.rstrip('/')}/{name}"
    download = _downloader()
    try:
        digest = download.download_file(url, path, expected_sha256=pinned, attempts=attempts,
                                        backoff_s=backoff_s, progress=progress)
    except download.DownloadError as e:
        raise DatasetUnavailable(
            f"dataset {spec.name!r} needs a download and it failed: {e}. "
            f"Check the network (or set {DATA_URL_ENV} to a mirror); "
            "`--dataset embedded` works offline.") from e
    _write_sidecar(path, digest, inputs)
    return path, digest


def _parquet_documents(paths: list[Path], column: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError("reading parquet shards needs pyarrow: pip install pyarrow") from e
    for path in paths:
        try:
            parquet = pq.ParquetFile(path)
            if column not in parquet.schema_arrow.names:
                raise ValueError(f"no {column!r} column")
            for batch in parquet.iter_batches(columns=[column], batch_size=4096):
                for text in batch.column(0).to_pylist():
                    if isinstance(text, str) and text:
                        yield text
        except (OSError, ValueError, TypeError) as e:
            # The file passed its sha256 check, so this is the wrong file:
            # delete it so that the next run downloads it again.
            _sidecar(path).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            raise CorpusError(f"cannot read parquet shard {path}: {e}; it was removed "
                              "and will be downloaded again on the next run") from e


def _parquet_rows(path: Path) -> int:
    """Rows in a shard from its footer (for progress only; 0 if unreadable)."""
    try:
        import pyarrow.parquet as pq
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (ImportError, OSError, ValueError):
        return 0


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

class Tokenizer:
    """A trained BPE run through tiktoken, with per-token UTF-8 byte counts."""

    def __init__(self, pat_str: str, mergeable_ranks: dict[bytes, int],
                 special_tokens: dict[str, int], name: str = "loopy-bpe"):
        self.enc = tiktoken.Encoding(name=name, pat_str=pat_str,
                                     mergeable_ranks=mergeable_ranks,
                                     special_tokens=special_tokens)
        self.vocab_size = self.enc.n_vocab
        self.bos_id = special_tokens[BOS_TOKEN]
        self.special_ids = frozenset(special_tokens.values())
        token_bytes = np.zeros(self.vocab_size, dtype=np.int32)
        for raw, rank in mergeable_ranks.items():
            token_bytes[rank] = len(raw)
        self.token_bytes = token_bytes

    def encode(self, text: str) -> list[int]:
        """Ordinary text only: special-token strings in text stay text."""
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=_threads())

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))


def _threads() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def _validate_tokenizer_state(state) -> tuple[str, dict[bytes, int], dict[str, int]]:
    """Check the cached tokenizer's plain data; raise ValueError if it is wrong."""
    if not isinstance(state, dict) or state.get("format") != TOKENIZER_FORMAT:
        raise ValueError("not a Loopy tokenizer")
    pat, ranks = state.get("pat_str"), state.get("mergeable_ranks")
    special = state.get("special_tokens")
    if not (isinstance(pat, str) and isinstance(ranks, dict) and isinstance(special, dict)):
        raise ValueError("tokenizer fields have wrong types")
    if not all(type(k) is bytes and type(v) is int for k, v in ranks.items()):
        raise ValueError("mergeable ranks must map bytes to int")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("mergeable ranks are not 0..n-1")
    if not all(bytes([b]) in ranks for b in range(256)):
        raise ValueError("tokenizer lacks single-byte tokens")
    n = len(ranks)
    if (not all(type(k) is str and type(v) is int for k, v in special.items())
            or sorted(special.values()) != list(range(n, n + len(special)))
            or BOS_TOKEN not in special):
        raise ValueError("bad special tokens")
    if n + len(special) >= 2 ** 16:
        raise ValueError("vocab does not fit uint16")
    return pat, ranks, special


class _PlainDataUnpickler(pickle.Unpickler):
    """Loads dicts, strings, bytes and ints only: a cache file is data, and a
    tampered one must not run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a cached tokenizer; ValueError if it is corrupt or tampered."""
    path = Path(path)
    data = path.read_bytes()
    sidecar = _sidecar(path)
    if sidecar.exists():
        try:
            recorded = json.loads(sidecar.read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded != hashlib.sha256(data).hexdigest():
            raise ValueError(f"tokenizer {path} does not match its sha256 sidecar")
    try:
        state = _PlainDataUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # any unpickling failure means a corrupt file
        raise ValueError(f"tokenizer {path} is corrupt: {e}") from e
    return Tokenizer(*_validate_tokenizer_state(state))


def _train_tokenizer(texts: Iterable[str], vocab_size: int, text_cap: int) -> dict:
    import rustbpe

    def capped():
        left = text_cap
        for text in texts:
            if left <= 0:
                return
            yield text[:left]
            left -= len(text)

    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(capped(), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(raw): int(rank) for raw, rank in bpe.get_mergeable_ranks()}
    special = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    state = {"format": TOKENIZER_FORMAT, "pat_str": bpe.get_pattern(),
             "mergeable_ranks": ranks, "special_tokens": special}
    tokenizer = Tokenizer(*_validate_tokenizer_state(state))
    probe = "Hello, world! 12345 \u00e9t\u00e9 \u2014 \u65e5\u672c <|bos|>\n\n  x"
    ids = tokenizer.encode(probe)
    counted = int(tokenizer.token_bytes[ids].sum())
    if tokenizer.decode(ids) != probe or counted != len(probe.encode()):
        raise DataError("trained tokenizer failed its round-trip check")
    return state


# ---------------------------------------------------------------------------
# Tokenised arrays
# ---------------------------------------------------------------------------

def _write_token_file(path: Path, docs: Iterable[str], tokenizer: Tokenizer,
                      progress: Progress, stage: str, total_docs: int) -> int:
    """Tokenise docs into a flat uint16 file, BOS before each; returns tokens."""
    if tokenizer.vocab_size >= 2 ** 16:
        raise DataError("vocab does not fit uint16")
    tmp = _tmp_path(path)
    written = done_docs = 0
    batch: list[str] = []

    def flush(f):
        nonlocal written, done_docs
        encoded = tokenizer.encode_batch(batch)
        out = np.empty(sum(len(ids) for ids in encoded) + len(encoded), dtype=TOKEN_DTYPE)
        at = 0
        for ids in encoded:
            out[at] = tokenizer.bos_id
            out[at + 1:at + 1 + len(ids)] = ids
            at += 1 + len(ids)
        out.tofile(f)
        written += len(out)
        done_docs += len(batch)
        progress(stage, min(done_docs, total_docs), total_docs)
        batch.clear()

    try:
        with open(tmp, "wb") as f:
            for text in docs:
                batch.append(text)
                if len(batch) == 1024:
                    flush(f)
            if batch:
                flush(f)
            f.flush()
            os.fsync(f.fileno())
        if written == 0:
            raise CorpusError(f"no documents to write into {path.name}")
        os.replace(tmp, path)
        progress(stage, total_docs, total_docs)
    finally:
        tmp.unlink(missing_ok=True)
    return written


@dataclass(frozen=True)
class DataPaths:
    dataset: str
    tokenizer: Path
    train_bin: Path
    val_bin: Path
    test_bin: Path


DATA_DIGEST_CHARS = 16


def data_digest(paths: DataPaths) -> str:
    """The prepared data in 16 hex chars: sha256 over the sha256 of the tokenizer and of the
    train, val and test token files (their sidecars, which prepare_data verified).

    Equal digests mean the same bytes tokenised by the same tokenizer: the same score means
    the same thing. Downloaded datasets put it in their arena (`climbmix.<digest>`), so nodes
    whose mirrors served different bytes, or that trained on other shards, never compare
    scores. Raises CorpusError when a file was not prepared.
    """
    digest = hashlib.sha256(b"loopy-data/1\0")
    for label, path in (("tokenizer", paths.tokenizer), ("train", paths.train_bin),
                        ("val", paths.val_bin), ("test", paths.test_bin)):
        try:
            sha = json.loads(_sidecar(path).read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            sha = None
        if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise CorpusError(f"{path} has no sha256 sidecar: prepare the data again "
                              "(python genome/prepare.py)")
        digest.update(f"{label}\0{sha}\0".encode())
    return digest.hexdigest()[:DATA_DIGEST_CHARS]


def prepare_data(home: Path, dataset: str = "embedded", progress: Progress | None = None, *,
                 num_shards: int | None = None, data_url: str | None = None) -> DataPaths:
    """Train/cache the tokenizer and tokenise train/val into home/data/<dataset>/.

    Idempotent: caches are verified against their sha256 sidecars and the
    inputs they were built from, and rebuilt when corrupt or stale.
    `num_shards` and `data_url` (default: env LOOPY_DATA_URL, else the
    dataset's own URL) apply to downloaded datasets only.
    """
    return _prepare(Path(home), dataset, progress, num_shards=num_shards, data_url=data_url)


def _prepare(home: Path, dataset: str, progress: Progress | None, *,
             vocab_size: int = VOCAB_SIZE, text_cap: int = TOKENIZER_TEXT_CAP,
             corpus_dir: Path = EMBEDDED_DIR, num_shards: int | None = None,
             data_url: str | None = None, attempts: int = 5,
             backoff_s: float = 1.0) -> DataPaths:
    """prepare_data with the knobs tests need (small vocab, small text cap)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    progress = progress or _no_progress
    out = home / "data" / dataset
    out.mkdir(parents=True, exist_ok=True)
    spec = DATASETS[dataset]

    if spec is None:
        sums = _embedded_checksums(corpus_dir)
        corpus = {"train": {"embedded": sums["train"]}, "val": {"embedded": sums["val"]},
                  "test": {"embedded": sums["train"]}}
        # read (and decompress) only when a cache must be rebuilt
        load = functools.cache(lambda split: list(_embedded_documents(corpus_dir, split)))
        names = ("tokenizer",) + SPLITS
        documents = {split: (lambda split=split: iter(load(split))) for split in names}
        counts = {split: (lambda split=split: len(load(split))) for split in names}
    else:
        n = spec.default_shards if num_shards is None else num_shards
        if not (isinstance(n, int) and 1 <= n <= spec.num_train_shards):
            raise ValueError(f"num_shards must be 1..{spec.num_train_shards}")
        base_url = data_url or os.environ.get(DATA_URL_ENV) or spec.base_url
        shard_dir = out / "shards"
        fetched = {split: [_ensure_shard(spec, i, shard_dir, base_url, progress,
                                         attempts, backoff_s) for i in indices]
                   for split, indices in (("train", range(n)), ("val", [spec.val_shard]),
                                          ("test", [spec.test_shard]))}
        corpus = {split: {p.name: d for p, d in shards} for split, shards in fetched.items()}
        fetched["tokenizer"] = fetched["train"]
        documents = {split: (lambda split=split: _parquet_documents(
            [p for p, _ in fetched[split]], spec.text_column)) for split in fetched}
        counts = {split: (lambda shards=shards: sum(_parquet_rows(p) for p, _ in shards))
                  for split, shards in fetched.items()}

    paths = DataPaths(dataset, out / "tokenizer.pkl", out / "train.bin", out / "val.bin",
                      out / "test.bin")
    tok_inputs = {"format": TOKENIZER_FORMAT, "vocab_size": vocab_size, "text_cap": text_cap,
                  "pattern": SPLIT_PATTERN, "special_tokens": list(SPECIAL_TOKENS),
                  "corpus": corpus["train"]}
    tokenizer = None
    if _cache_valid(paths.tokenizer, tok_inputs):
        try:
            tokenizer = load_tokenizer(paths.tokenizer)
        except (OSError, ValueError):
            tokenizer = None
    if tokenizer is None:
        progress("train tokenizer", 0, 1)
        state = _train_tokenizer(documents["tokenizer"](), vocab_size, text_cap)
        blob = pickle.dumps(state, protocol=4)
        _atomic_write_bytes(paths.tokenizer, blob)
        _write_sidecar(paths.tokenizer, hashlib.sha256(blob).hexdigest(), tok_inputs)
        tokenizer = load_tokenizer(paths.tokenizer)
        progress("train tokenizer", 1, 1)
    tok_sha = json.loads(_sidecar(paths.tokenizer).read_text())["sha256"]

    for split, path in (("train", paths.train_bin), ("val", paths.val_bin),
                        ("test", paths.test_bin)):
        inputs = {"tokenizer_sha256": tok_sha, "corpus": corpus[split], "dtype": "uint16"}
        if spec is None and split != "val":
            inputs["split"] = {"test_every": TEST_EVERY, "test_slots": list(TEST_SLOTS), "is": split}
        if not _cache_valid(path, inputs):
            _write_token_file(path, documents[split](), tokenizer, progress,
                              f"tokenise {split}", counts[split]())
            _write_sidecar(path, sha256_file(path), inputs)
    return paths


# ---------------------------------------------------------------------------
# Run configuration (written by the harness, read by train.py)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RunConfig:
    device: str          # "cpu" | "cuda" | "mps"
    profile: str         # same set: which model scale train.py should use
    budget_kind: str     # "time" (seconds of training) | "tokens"
    budget_value: float  # seconds or tokens
    seed: int
    out_dir: Path        # where train.py writes model.pt
    train_bin: Path
    vocab_size: int
    bos_id: int
    seq_len: int
    threads: int
    feed_fds: tuple[int, int] | None = None  # (request write, batch read): see make_dataloader


def _field(raw: dict, key: str, kind, check=lambda v: True, why: str = ""):
    value = raw.get(key)
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if not ok or not check(value):
        raise ValueError(f"run config: bad {key!r} ({value!r}){': ' + why if why else ''}")
    return value


def run_config(path: str | os.PathLike | None = None) -> RunConfig:
    """Read the run configuration from path, else from env LOOPY_RUN_CONFIG."""
    path = path or os.environ.get(RUN_CONFIG_ENV)
    if not path:
        raise RuntimeError(f"{RUN_CONFIG_ENV} is not set: train.py runs under the Loopy "
                           "harness, which writes the run config and sets it")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError("run config must be a JSON object")
    kind = _field(raw, "budget_kind", str, lambda v: v in ("time", "tokens"), "time or tokens")
    budget = _field(raw, "budget_value", (int, float) if kind == "time" else int,
                    lambda v: 0 < v < 1e15 and math.isfinite(v), "a positive number")
    vocab = _field(raw, "vocab_size", int, lambda v: 0 < v < 2 ** 16)
    feed_fds = raw.get("feed_fds")
    if feed_fds is not None:
        if not (isinstance(feed_fds, list) and len(feed_fds) == 2 and feed_fds[0] != feed_fds[1]
                and all(isinstance(v, int) and not isinstance(v, bool) and 2 < v < 2 ** 31
                        for v in feed_fds)):
            raise ValueError(f"run config: bad 'feed_fds' ({feed_fds!r}): "
                             "two distinct file descriptors above 2")
        feed_fds = tuple(feed_fds)
    return RunConfig(
        device=_field(raw, "device", str, lambda v: v in DEVICES, "/".join(DEVICES)),
        profile=_field(raw, "profile", str, lambda v: v in DEVICES, "/".join(DEVICES)),
        budget_kind=kind,
        budget_value=budget,
        seed=_field(raw, "seed", int, lambda v: 0 <= v < 2 ** 63),
        out_dir=Path(_field(raw, "out_dir", str, bool)),
        train_bin=Path(_field(raw, "train_bin", str, bool)),
        vocab_size=vocab,
        bos_id=_field(raw, "bos_id", int, lambda v: 0 <= v < vocab),
        seq_len=_field(raw, "seq_len", int, lambda v: 0 < v <= 1 << 20),
        threads=_field(raw, "threads", int, lambda v: 0 < v <= 4096),
        feed_fds=feed_fds,
    )


# ---------------------------------------------------------------------------
# Dataloader: BOS-aligned best-fit packing; under the harness, batches come
# from the harness over a pipe (the feed), which also enforces the budget
# ---------------------------------------------------------------------------

_meter_lock = threading.Lock()
_tokens_served = 0

# The feed protocol, spoken between the training child (make_dataloader) and
# the harness (experiments/run/data_feed.py, which imports these constants from the
# trusted copy of this file). The child writes a request, the harness answers
# with a reply header and, when the status is FEED_OK, B*(T+1) tokens: B
# row-major rows of T+1 little-endian uint16, x = rows[:, :-1], y = rows[:, 1:].
FEED_REQUEST = struct.Struct("<4sII")    # magic, B, T
FEED_REPLY = struct.Struct("<4sIII")     # magic, status, B, T
FEED_REQUEST_MAGIC = b"LFq1"
FEED_REPLY_MAGIC = b"LFb1"
FEED_OK, FEED_END, FEED_ERROR = 0, 1, 2  # END: the budget is spent, for good
FEED_TOKEN_DTYPE = np.dtype("<u2")


def tokens_served() -> int:
    """Training tokens received by this process from all dataloaders (B*T each).

    Informational under the harness: the harness counts what it serves."""
    return _tokens_served


def document_bounds(tokens: np.ndarray, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of the documents in a token array (each starts
    with BOS and holds at least one more token)."""
    if len(tokens) == 0:
        raise ValueError("train.bin is empty")
    chunk = 1 << 26  # scan a large memmap in pieces, not one huge mask
    starts = np.concatenate([np.flatnonzero(tokens[at:at + chunk] == bos_id) + at
                             for at in range(0, len(tokens), chunk)])
    if len(starts) == 0 or starts[0] != 0:
        raise ValueError("train.bin must start with BOS (rebuild it with prepare_data)")
    ends = np.append(starts[1:], len(tokens))
    keep = ends - starts >= 2  # a document needs at least one token after BOS
    if not keep.any():
        raise ValueError("train.bin holds no documents")
    return starts[keep], ends[keep]


class _Pieces:
    """Documents in a seeded random order, cut into row-sized pieces.

    Each piece starts with BOS: the first piece of a document with its own,
    later pieces of a long document with one inserted, so that every row
    starts at a BOS and no text of a long document is skipped.
    """

    def __init__(self, tokens: np.ndarray, bos_id: int, row_len: int, seed: int,
                 bounds: tuple[np.ndarray, np.ndarray] | None = None):
        self.tokens, self.bos, self.row_len = tokens, bos_id, row_len
        self.starts, self.ends = bounds if bounds is not None else document_bounds(tokens, bos_id)
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            for doc in self.rng.permutation(len(self.starts)):
                start, end = int(self.starts[doc]), int(self.ends[doc])
                yield np.asarray(self.tokens[start:min(end, start + self.row_len)], dtype=np.int64)
                at = start + self.row_len
                while at < end:  # continuation pieces: BOS + up to row_len-1 tokens
                    chunk = self.tokens[at:min(end, at + self.row_len - 1)]
                    piece = np.empty(len(chunk) + 1, dtype=np.int64)
                    piece[0], piece[1:] = self.bos, chunk
                    yield piece
                    at += self.row_len - 1


class RowPacker:
    """Rows of seq_len+1 tokens, packed best-fit from _Pieces (numpy only).

    One deterministic stream of rows per (tokens, seed, seq_len): the local
    loader and the harness's feed both draw from it, so a batch size does not
    change which rows come next, only how many are taken at a time.
    """

    BUFFER = 1000  # pieces to choose from when filling a row

    def __init__(self, tokens: np.ndarray, bos_id: int, seq_len: int, seed: int, *,
                 buffer: int = BUFFER, bounds: tuple[np.ndarray, np.ndarray] | None = None):
        self.row_len, self.buffer_size = seq_len + 1, buffer
        self.pieces = iter(_Pieces(tokens, bos_id, self.row_len, seed, bounds))
        self.lengths: list[int] = []         # sorted piece lengths
        self.buffer: list[np.ndarray] = []   # pieces, in the same order

    def _refill(self) -> None:
        while len(self.buffer) < self.buffer_size:
            piece = next(self.pieces)
            at = bisect.bisect_right(self.lengths, len(piece))
            self.lengths.insert(at, len(piece))
            self.buffer.insert(at, piece)

    def _row(self, row: np.ndarray) -> None:
        """Fill one row: largest piece that fits, repeatedly; when none fits,
        the shortest piece is cropped to fill the rest."""
        pos, capacity = 0, len(row)
        while pos < capacity:
            self._refill()
            at = bisect.bisect_right(self.lengths, capacity - pos) - 1
            if at < 0:
                at = 0
            piece = self.buffer.pop(at)
            self.lengths.pop(at)
            take = min(len(piece), capacity - pos)
            row[pos:pos + take] = piece[:take]
            pos += take

    def rows(self, count: int) -> np.ndarray:
        """The next count rows, int64 (count, seq_len+1)."""
        out = np.empty((count, self.row_len), dtype=np.int64)
        for row in out:
            self._row(row)
        return out


class _OnDevice:
    """(B, T+1) token rows -> (x, y) int64 (B, T) tensors on device."""

    def __init__(self, batch_size: int, seq_len: int, device):
        import torch

        self.torch, self.device = torch, torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            # Two pinned buffers, alternated; an event says when the copy out
            # of one has finished so that it can be refilled.
            self.pinned = [torch.empty((2, batch_size, seq_len), dtype=torch.int64, pin_memory=True)
                           for _ in range(2)]
            self.events = [None, None]
            self.flip = 0

    def __call__(self, rows: np.ndarray):
        if self.cuda:
            buf = self.pinned[self.flip]
            if self.events[self.flip] is not None:
                self.events[self.flip].synchronize()
            view = buf.numpy()
            view[0], view[1] = rows[:, :-1], rows[:, 1:]
            on_device = buf.to(self.device, non_blocking=True)
            event = self.torch.cuda.Event()
            event.record()
            self.events[self.flip] = event
            self.flip ^= 1
            return on_device[0], on_device[1]
        x = self.torch.from_numpy(np.ascontiguousarray(rows[:, :-1], dtype=np.int64))
        y = self.torch.from_numpy(np.ascontiguousarray(rows[:, 1:], dtype=np.int64))
        if self.device.type != "cpu":
            x, y = x.to(self.device), y.to(self.device)
        return x, y


def _check_shape(batch_size, seq_len) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2 ** 31
               for v in (batch_size, seq_len)):
        raise ValueError("batch_size and seq_len must be positive ints")


class _PackedLoader:
    """Iterator of (x, y) batches read from train_bin here; see make_dataloader."""

    BUFFER = RowPacker.BUFFER

    def __init__(self, train_bin, batch_size, seq_len, device, seed, config):
        _check_shape(batch_size, seq_len)
        self.B, self.T = batch_size, seq_len
        tokens = np.memmap(train_bin, dtype=TOKEN_DTYPE, mode="r")
        if len(tokens) == 0:
            raise ValueError(f"{train_bin} is empty")
        # train.bin starts with BOS by construction; the run config, when
        # there is one, must agree.
        bos_id = int(tokens[0])
        if config is not None and config.bos_id != bos_id:
            raise ValueError(f"{train_bin} starts with token {bos_id}, "
                             f"but the run config says BOS is {config.bos_id}")
        self.packer = RowPacker(tokens, bos_id, seq_len, seed, buffer=self.BUFFER)
        self.budget = None
        if config is not None and config.budget_kind == "tokens":
            self.budget = int(config.budget_value)
        self.out = _OnDevice(batch_size, seq_len, device)

    def __iter__(self):
        return self

    def __next__(self):
        global _tokens_served
        step = self.B * self.T
        with _meter_lock:
            if self.budget is not None and _tokens_served + step > self.budget:
                raise BudgetExhausted(f"token budget of {self.budget} served")
            _tokens_served += step
        return self.out(self.packer.rows(self.B))


class FeedError(DataError):
    """The harness's feed refused a request or went away."""


_feed_lock = threading.Lock()  # loaders of one process share the pipes


class _FeedLoader:
    """Iterator of (x, y) batches asked of the harness over the feed pipes."""

    def __init__(self, fds: tuple[int, int], batch_size, seq_len, device):
        _check_shape(batch_size, seq_len)
        self.B, self.T = batch_size, seq_len
        self.request_fd, self.data_fd = fds
        self.request = FEED_REQUEST.pack(FEED_REQUEST_MAGIC, batch_size, seq_len)
        self.payload = bytearray(batch_size * (seq_len + 1) * FEED_TOKEN_DTYPE.itemsize)
        self.ended = False
        self.out = _OnDevice(batch_size, seq_len, device)

    def __iter__(self):
        return self

    def _read_exactly(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = os.readv(self.data_fd, [view[got:]])
            if n == 0:
                raise FeedError("the harness closed the data feed")
            got += n

    def __next__(self):
        global _tokens_served
        if self.ended:
            raise BudgetExhausted("the harness ended the training budget")
        with _feed_lock:
            try:
                sent = 0
                while sent < len(self.request):
                    sent += os.write(self.request_fd, self.request[sent:])
                header = bytearray(FEED_REPLY.size)
                self._read_exactly(memoryview(header))
                magic, status, B, T = FEED_REPLY.unpack(header)
                if magic != FEED_REPLY_MAGIC or status not in (FEED_OK, FEED_END, FEED_ERROR):
                    raise FeedError("the data feed sent a malformed reply")
                if status == FEED_ERROR:
                    raise FeedError(f"the harness refused the batch request "
                                    f"B={self.B} T={self.T} (see the harness log)")
                if status == FEED_END:
                    self.ended = True
                    raise BudgetExhausted("the harness ended the training budget")
                if (B, T) != (self.B, self.T):
                    raise FeedError(f"the data feed answered B={B} T={T} "
                                    f"for B={self.B} T={self.T}")
                self._read_exactly(memoryview(self.payload))
            except BrokenPipeError as e:
                raise FeedError("the harness closed the data feed") from e
            except OSError as e:
                raise FeedError(f"the data feed failed: {e}") from e
            rows = np.frombuffer(self.payload, dtype=FEED_TOKEN_DTYPE).reshape(self.B, self.T + 1)
            batch = self.out(rows)  # copies out of payload before the next request reuses it
        with _meter_lock:
            _tokens_served += self.B * self.T
        return batch


def make_dataloader(train_bin, batch_size: int, seq_len: int, device, seed: int) -> Iterator:
    """Iterator of (x, y) int64 tensors (B, T) on device.

    Every row of T+1 tokens starts at a BOS; pieces of documents are packed
    best-fit (deterministic given seed). Each batch adds B*T to
    `tokens_served()`.

    Under the harness (run config with feed_fds) the batches come from the
    harness, which packs them from its own train.bin with this same code and
    seed, and counts and enforces the budget; train_bin is not read. When it
    says the budget is spent the iterator raises BudgetExhausted, a
    StopIteration, so `for x, y in loader:` simply ends; a refused request or
    a closed feed raises FeedError.

    Without feed_fds (tests, tools) train_bin is read here, and under a token
    budget in the run config a batch is served only while the process-wide
    total stays within it; a time budget does not stop this loader.
    """
    config = run_config() if os.environ.get(RUN_CONFIG_ENV) else None
    if config is not None and config.feed_fds is not None:
        return _FeedLoader(config.feed_fds, batch_size, seq_len, device)
    return _PackedLoader(train_bin, batch_size, seq_len, device, seed, config)


# ---------------------------------------------------------------------------
# Evaluation: the one ground-truth metric
# ---------------------------------------------------------------------------

def val_window_starts(n_tokens: int, seq_len: int, n_windows: int) -> np.ndarray:
    """The fixed validation windows: n_windows starts evenly spaced over val.bin."""
    return np.linspace(0, n_tokens - (seq_len + 1), n_windows).round().astype(np.int64)


def test_window_starts(n_tokens: int, seq_len: int, n_windows: int, seed: int) -> np.ndarray:
    """Test windows drawn at random over test.bin; the seed is the scorer's secret."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.integers(0, n_tokens - seq_len, size=n_windows)).astype(np.int64)


def evaluate_bpb(model, val_bin, token_bytes, batch_size: int, seq_len: int, device,
                 n_windows: int) -> float:
    """Bits per byte of model on n_windows fixed windows of val.bin (val_window_starts)."""
    tokens = np.memmap(val_bin, dtype=TOKEN_DTYPE, mode="r")
    _check_eval_args(tokens, batch_size, seq_len, n_windows)
    starts = val_window_starts(len(tokens), seq_len, n_windows)
    return bpb_on_windows(model, tokens, starts, token_bytes, batch_size, seq_len, device)


def test_bpb(model, test_bin, token_bytes, batch_size: int, seq_len: int, device,
             n_windows: int, seed: int) -> float:
    """Bits per byte of model on n_windows random windows of the held-out test.bin."""
    tokens = np.memmap(test_bin, dtype=TOKEN_DTYPE, mode="r")
    _check_eval_args(tokens, batch_size, seq_len, n_windows)
    starts = test_window_starts(len(tokens), seq_len, n_windows, seed)
    return bpb_on_windows(model, tokens, starts, token_bytes, batch_size, seq_len, device)


def _check_eval_args(tokens, batch_size: int, seq_len: int, n_windows: int) -> None:
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("n_windows", n_windows)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int")
    if len(tokens) < seq_len + 1:
        raise ValueError(f"the token file has {len(tokens)} tokens, fewer than seq_len+1")


def bpb_on_windows(model, tokens, starts, token_bytes, batch_size: int, seq_len: int,
                   device) -> float:
    """Bits per byte of model on the windows of seq_len+1 tokens at `starts`.

    model(idx) must return a plain torch.Tensor of logits (B, T, V) with V >= the vocab
    size; cross-entropy is computed here in float32. Targets whose byte count is 0
    (special tokens) are excluded from both sums. Raises ValueError on wrong shapes or
    non-finite logits.
    """
    import torch
    import torch.nn.functional as F

    device = torch.device(device)
    byte_counts = np.asarray(token_bytes, dtype=np.int64)
    vocab = len(byte_counts)
    if int(tokens.max()) >= vocab:
        raise ValueError("the token file holds token ids outside the tokenizer's vocab")
    byte_table = torch.from_numpy(byte_counts).to(device)

    total_nats, total_bytes = 0.0, 0
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            for first in range(0, len(starts), batch_size):
                batch_starts = starts[first:first + batch_size]
                windows = np.stack([tokens[s:s + seq_len + 1] for s in batch_starts])
                windows = torch.from_numpy(windows.astype(np.int64)).to(device)
                x, y = windows[:, :-1], windows[:, 1:]
                logits = model(x)
                if type(logits) is not torch.Tensor:
                    raise ValueError(f"model returned {type(logits).__name__}, not a torch.Tensor")
                b = len(batch_starts)
                if (logits.dim() != 3 or tuple(logits.shape[:2]) != (b, seq_len)
                        or logits.shape[2] < vocab):
                    raise ValueError(f"logits shape {tuple(logits.shape)}, "
                                     f"expected ({b}, {seq_len}, >={vocab})")
                logits = logits.float()
                low, high = torch.aminmax(logits)  # NaN or inf shows in these; cheaper
                if not (math.isfinite(float(low)) and math.isfinite(float(high))):
                    raise ValueError("model returned non-finite logits")
                nats = F.cross_entropy(logits.reshape(b * seq_len, -1), y.reshape(-1),
                                       reduction="none")
                target_bytes = byte_table[y.reshape(-1)]
                counted = target_bytes > 0
                total_nats += float(nats[counted].double().sum())
                total_bytes += int(target_bytes.sum())
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    if total_bytes == 0:
        raise ValueError("evaluation windows hold no countable target bytes")
    return total_nats / (math.log(2) * total_bytes)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Prepare Loopy's data: tokenizer, train.bin, val.bin.",
        epilog="example: python genome/prepare.py --home ~/.loopy --dataset embedded")
    parser.add_argument("--home", type=Path, required=True,
                        help="node home (data goes to HOME/data/DATASET)")
    parser.add_argument("--dataset", default="embedded", choices=sorted(DATASETS))
    parser.add_argument("--num-shards", type=int, default=None, help="train shards to download")
    args = parser.parse_args(argv)

    last = [0.0, None]

    def show(stage, done, total):
        now = time.monotonic()
        if (now - last[0] > 1 or done == total) and last[1] != (stage, done):
            last[0], last[1] = now, (stage, done)
            print(f"{stage}: {done}/{total}", flush=True)

    started = time.monotonic()
    try:
        paths = prepare_data(args.home, args.dataset, show, num_shards=args.num_shards)
    except DataError as e:
        print(f"error: {e}")
        return 1
    tokenizer = load_tokenizer(paths.tokenizer)
    for label, path in (("train", paths.train_bin), ("val", paths.val_bin),
                        ("test", paths.test_bin)):
        print(f"{label}: {path} ({path.stat().st_size // 2} tokens)")
    print(f"tokenizer: {paths.tokenizer} (vocab {tokenizer.vocab_size}, bos {tokenizer.bos_id})")
    if DATASETS[args.dataset] is not None:  # to pin in DATASETS: sha256=((index, hex), ...)
        for sidecar in sorted((paths.train_bin.parent / "shards").glob("*.sha256")):
            sha = json.loads(sidecar.read_text())["sha256"]
            print(f"shard {sidecar.name.removesuffix('.sha256')}: sha256 {sha}")
    digest = data_digest(paths)
    arena = f" (arena dataset: {args.dataset}.{digest})" if DATASETS[args.dataset] else ""
    print(f"data digest: {digest}{arena}")
    print(f"seconds: {time.monotonic() - started:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

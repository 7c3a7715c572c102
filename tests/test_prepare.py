"""Tests for genome/prepare.py: corpus, tokenizer, caches, dataloader, budget,
evaluate_bpb and downloaded datasets (shards from a local HTTP server; the HTTP client
itself, genome/download.py, is tested in test_download.py)."""

import hashlib
import json
import lzma
import math
import os
import pickle
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genome import prepare as P
from shard_server import SHARD_TEXTS, SPEC, ShardServer, write_shard

SMALL_VOCAB = 400


# --- fixtures ----------------------------------------------------------------

@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The default path: full embedded corpus, vocab 8192 (a few seconds)."""
    home = tmp_path_factory.mktemp("home")
    paths = P.prepare_data(home, "embedded")
    return paths, P.load_tokenizer(paths.tokenizer)


def write_corpus(directory: Path, train: list[str], val: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    sums = []
    for split, texts in (("train", train), ("val", val)):
        name = P.EMBEDDED_FILES[split]
        lines = "".join(json.dumps({"name": f"{split}/{i}", "text": t}) + "\n"
                        for i, t in enumerate(texts))
        (directory / name).write_bytes(lzma.compress(lines.encode()))
        sums.append(f"{hashlib.sha256((directory / name).read_bytes()).hexdigest()}  {name}\n")
    (directory / "SHA256SUMS").write_text("".join(sums))
    return directory


def real_documents(split: str, count: int) -> list[str]:
    with lzma.open(P.EMBEDDED_DIR / P.EMBEDDED_FILES[split], "rt") as f:
        return [json.loads(line)["text"] for _, line in zip(range(count), f)]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A few real chapters, so caches build in a fraction of a second."""
    return write_corpus(tmp_path_factory.mktemp("corpus"),
                        real_documents("train", 40), real_documents("val", 6))


def prepare_small(home, corpus_dir, **kw):
    return P._prepare(home, "embedded", None, vocab_size=SMALL_VOCAB,
                      corpus_dir=corpus_dir, **kw)


@pytest.fixture
def fresh_meter(monkeypatch):
    """Each test starts with nothing served and no run config."""
    monkeypatch.setattr(P, "_tokens_served", 0)
    monkeypatch.delenv(P.RUN_CONFIG_ENV, raising=False)


def write_run_config(path: Path, **overrides) -> Path:
    config = {"device": "cpu", "profile": "cpu", "budget_kind": "tokens",
              "budget_value": 1000, "seed": 0, "out_dir": str(path.parent),
              "train_bin": str(path.parent / "train.bin"), "vocab_size": 8192,
              "bos_id": 0, "seq_len": 16, "threads": 1}
    config.update(overrides)
    path.write_text(json.dumps(config))
    return path


# --- embedded corpus and default preparation ----------------------------------

def test_default_embedded_dataset(embedded):
    paths, tok = embedded
    assert tok.vocab_size == P.VOCAB_SIZE
    assert tok.bos_id == tok.enc.encode_single_token(P.BOS_TOKEN)
    train = np.fromfile(paths.train_bin, dtype=np.uint16)
    val = np.fromfile(paths.val_bin, dtype=np.uint16)
    docs_train = list(P._embedded_documents(P.EMBEDDED_DIR, "train"))
    assert train[0] == tok.bos_id and val[0] == tok.bos_id
    assert int((train == tok.bos_id).sum()) == len(docs_train)
    # the first document decodes back exactly
    second_bos = np.flatnonzero(train == tok.bos_id)[1]
    assert tok.decode(train[1:second_bos].tolist()) == docs_train[0]
    # a real corpus compresses to about 4 bytes per token
    ratio = tok.token_bytes[train].sum() / (train != tok.bos_id).sum()
    assert 3.5 < ratio < 5.5


def test_prepare_is_idempotent(embedded, monkeypatch):
    paths, _ = embedded
    before = {p: p.stat().st_mtime_ns for p in (paths.tokenizer, paths.train_bin, paths.val_bin)}
    monkeypatch.setattr(P, "_train_tokenizer", lambda *a: pytest.fail("retrained"))
    home = paths.train_bin.parent.parent.parent
    again = P.prepare_data(home, "embedded")
    assert again == paths
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_tokenizer_special_and_byte_counts(embedded):
    _, tok = embedded
    for special in P.SPECIAL_TOKENS:
        assert tok.token_bytes[tok.enc.encode_single_token(special)] == 0
    # special-token text in a document stays ordinary text
    ids = tok.encode("a <|bos|> b")
    assert tok.bos_id not in ids
    assert tok.decode(ids) == "a <|bos|> b"
    # tokens are byte sequences: some are fragments of a multi-byte character
    ids = tok.encode("\U0001F600\u65e5\u672c\u8a9e \U0001F47E")
    fragments = []
    for i in ids:
        raw = tok.enc.decode_single_token_bytes(i)
        assert tok.token_bytes[i] == len(raw)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            fragments.append(i)
    assert fragments, "expected byte-fragment tokens for rare characters"


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_tokenizer_round_trip_and_bytes(embedded, text):
    _, tok = embedded
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(P.CorpusError, match="build_corpus.py"):
        prepare_small(tmp_path / "home", tmp_path / "nowhere")


def test_corrupt_corpus_is_a_clear_error(tmp_path, small_corpus):
    broken = write_corpus(tmp_path / "c", real_documents("train", 3), real_documents("val", 1))
    path = broken / P.EMBEDDED_FILES["train"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(P.CorpusError, match="sha256 mismatch"):
        prepare_small(tmp_path / "home", broken)
    (broken / "SHA256SUMS").unlink()
    with pytest.raises(P.CorpusError, match="checksums missing"):
        prepare_small(tmp_path / "home", broken)


def test_corpus_with_bad_lines_is_a_clear_error(tmp_path):
    bad = tmp_path / "c"
    bad.mkdir()
    for split, name in P.EMBEDDED_FILES.items():
        (bad / name).write_bytes(lzma.compress(b'{"name": "x", "text": 5}\n'))
    (bad / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256((bad / n).read_bytes()).hexdigest()}  {n}\n"
        for n in P.EMBEDDED_FILES.values()))
    with pytest.raises(P.CorpusError, match="not a"):
        prepare_small(tmp_path / "home", bad)


# --- caches --------------------------------------------------------------------

def test_corrupt_bins_are_rebuilt(tmp_path, small_corpus):
    paths = prepare_small(tmp_path, small_corpus)
    good = {p: p.read_bytes() for p in (paths.train_bin, paths.val_bin)}
    data = bytearray(good[paths.train_bin])
    data[10] ^= 0x01
    paths.train_bin.write_bytes(bytes(data))  # same size, one bit flipped
    paths.val_bin.write_bytes(good[paths.val_bin][:-2])  # truncated
    prepare_small(tmp_path, small_corpus)
    assert {p: p.read_bytes() for p in good} == good


def test_missing_sidecar_rebuilds(tmp_path, small_corpus):
    paths = prepare_small(tmp_path, small_corpus)
    P._sidecar(paths.val_bin).unlink()
    paths.val_bin.write_bytes(b"\x00\x00")
    prepare_small(tmp_path, small_corpus)
    assert len(paths.val_bin.read_bytes()) > 2
    inputs = json.loads(P._sidecar(paths.val_bin).read_text())["inputs"]
    assert P._cache_valid(paths.val_bin, inputs)


def test_corrupt_tokenizer_is_rebuilt_without_traceback(tmp_path, small_corpus):
    paths = prepare_small(tmp_path, small_corpus)
    original = paths.tokenizer.read_bytes()
    paths.tokenizer.write_bytes(b"not a pickle at all")
    prepare_small(tmp_path, small_corpus)
    assert P.load_tokenizer(paths.tokenizer).vocab_size == SMALL_VOCAB
    assert paths.tokenizer.read_bytes() == original  # training is deterministic


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_tampered_tokenizer_never_runs_code(tmp_path, small_corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = prepare_small(tmp_path / "home", small_corpus)
    evil = pickle.dumps({"format": P.TOKENIZER_FORMAT, "x": _Boom()})
    paths.tokenizer.write_bytes(evil)
    # even with a matching sidecar the loader refuses code
    meta = json.loads(P._sidecar(paths.tokenizer).read_text())
    P._write_sidecar(paths.tokenizer, hashlib.sha256(evil).hexdigest(), meta["inputs"])
    with pytest.raises(ValueError, match="corrupt"):
        P.load_tokenizer(paths.tokenizer)
    prepare_small(tmp_path / "home", small_corpus)
    assert not (tmp_path / "pwned").exists()
    assert P.load_tokenizer(paths.tokenizer).vocab_size == SMALL_VOCAB


@pytest.mark.parametrize("mutate", [
    lambda s: s.update(format="other"),
    lambda s: s["mergeable_ranks"].pop(b"a"),
    lambda s: s["special_tokens"].pop(P.BOS_TOKEN),
    lambda s: s["mergeable_ranks"].update({b"zz": 1}),
    lambda s: s.update(mergeable_ranks={i: i for i in range(256)}),
])
def test_invalid_tokenizer_state_is_rejected(tmp_path, small_corpus, mutate):
    paths = prepare_small(tmp_path, small_corpus)
    state = pickle.loads(paths.tokenizer.read_bytes())
    mutate(state)
    paths.tokenizer.write_bytes(pickle.dumps(state))
    P._sidecar(paths.tokenizer).unlink()
    with pytest.raises(ValueError):
        P.load_tokenizer(paths.tokenizer)


def test_stale_bins_follow_a_new_tokenizer(tmp_path, small_corpus):
    paths = prepare_small(tmp_path, small_corpus)
    old_train = paths.train_bin.read_bytes()
    P._prepare(tmp_path, "embedded", None, vocab_size=SMALL_VOCAB + 50, corpus_dir=small_corpus)
    tok = P.load_tokenizer(paths.tokenizer)
    assert tok.vocab_size == SMALL_VOCAB + 50
    train = np.fromfile(paths.train_bin, dtype=np.uint16)
    assert train.tobytes() != old_train and train[0] == tok.bos_id


def test_progress_is_reported(tmp_path, small_corpus):
    seen = []
    prepare_small(tmp_path, small_corpus)  # no callback is fine
    P._prepare(tmp_path / "b", "embedded", lambda *a: seen.append(a), vocab_size=SMALL_VOCAB,
               corpus_dir=small_corpus)
    stages = {s for s, _, _ in seen}
    assert {"train tokenizer", "tokenise train", "tokenise val"} <= stages
    assert {"tokenise test"} <= stages  # the held-out split: 3 documents in 10
    assert ("tokenise train", 28, 28) in seen and ("tokenise test", 12, 12) in seen


# --- dataloader ------------------------------------------------------------------

def synthetic_train_bin(path: Path, lengths: list[int]) -> list[np.ndarray]:
    """BOS=0, then documents whose tokens count up globally (1, 2, 3, ...), so
    that any slice of a document is a run of consecutive integers."""
    docs, next_token = [], 1
    for n in lengths:
        docs.append(np.arange(next_token, next_token + n, dtype=np.uint16))
        next_token += n
    flat = np.concatenate([np.concatenate([[0], d]).astype(np.uint16) for d in docs])
    flat.tofile(path)
    return docs


def segments(row: np.ndarray) -> list[np.ndarray]:
    starts = list(np.flatnonzero(row == 0)) + [len(row)]
    return [row[a + 1:b] for a, b in zip(starts, starts[1:])]


def test_rows_are_bos_aligned_pieces_of_documents(tmp_path, fresh_meter, monkeypatch):
    monkeypatch.setattr(P._PackedLoader, "BUFFER", 32)  # small corpus: keep the buffer small
    rng = np.random.default_rng(1)
    lengths = [int(n) for n in rng.integers(1, 90, size=300)]
    docs = synthetic_train_bin(tmp_path / "train.bin", lengths)
    first_token = {int(d[0]): i for i, d in enumerate(docs)}
    doc_of = np.zeros(sum(lengths) + 1, dtype=np.int64)
    for i, d in enumerate(docs):
        doc_of[d] = i
    T = 32
    loader = P.make_dataloader(tmp_path / "train.bin", 8, T, "cpu", seed=3)
    seen = set()
    for _ in range(80):
        x, y = next(loader)
        assert x.shape == y.shape == (8, T) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        rows = torch.cat([x, y[:, -1:]], dim=1).numpy()
        assert (rows[:, 0] == 0).all()  # every row starts at a BOS
        for row in rows:
            for seg in segments(row):
                if len(seg) == 0:
                    continue
                # a piece is a contiguous run inside one document
                assert (np.diff(seg) == 1).all()
                assert len(set(doc_of[seg])) == 1
                # which starts at the document's start or continues at a row boundary
                doc = docs[doc_of[seg[0]]]
                offset = int(seg[0] - doc[0])
                assert offset % T == 0, offset
                seen.update(seg.tolist())
                if offset == 0:
                    assert int(seg[0]) in first_token
    # packing wastes little: 1.3 epochs of row slots served nearly every token
    assert len(seen) > 0.9 * sum(lengths)


def test_long_documents_are_served_whole(tmp_path, fresh_meter, monkeypatch):
    monkeypatch.setattr(P._PackedLoader, "BUFFER", 4)
    docs = synthetic_train_bin(tmp_path / "train.bin", [1000, 700, 5])
    loader = P.make_dataloader(tmp_path / "train.bin", 4, 64, "cpu", seed=0)
    seen = set()
    for _ in range(20):
        x, y = next(loader)
        seen.update(x.flatten().tolist())
        seen.update(y.flatten().tolist())
    # 1705 tokens, 4*65 per batch: continuation pieces cover the long documents
    assert set(np.concatenate(docs).tolist()) <= seen


def test_dataloader_is_deterministic(tmp_path, fresh_meter):
    synthetic_train_bin(tmp_path / "train.bin", [int(n) for n in np.arange(5, 200, 7)])

    def batches(seed):
        loader = P.make_dataloader(str(tmp_path / "train.bin"), 4, 16, torch.device("cpu"), seed)
        return [torch.cat(next(loader)) for _ in range(10)]

    a, b, c = batches(7), batches(7), batches(8)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_dataloader_counts_tokens_without_a_budget(tmp_path, fresh_meter):
    synthetic_train_bin(tmp_path / "train.bin", [50] * 10)
    loader = P.make_dataloader(tmp_path / "train.bin", 3, 8, "cpu", 0)
    for _ in range(5):
        next(loader)
    assert P.tokens_served() == 5 * 3 * 8


def test_token_budget_ends_the_loop(tmp_path, fresh_meter, monkeypatch):
    synthetic_train_bin(tmp_path / "train.bin", [40] * 20)
    B, T = 2, 16
    config = write_run_config(tmp_path / "run.json", budget_value=10 * B * T + 5, bos_id=0)
    monkeypatch.setenv(P.RUN_CONFIG_ENV, str(config))
    loader = P.make_dataloader(tmp_path / "train.bin", B, T, "cpu", 0)
    steps = sum(1 for _ in loader)  # a for loop simply ends
    assert steps == 10
    assert P.tokens_served() == 10 * B * T
    with pytest.raises(P.BudgetExhausted):
        next(loader)
    assert issubclass(P.BudgetExhausted, StopIteration)
    assert next(loader, None) is None  # train.py's idiom
    # the counter is process-wide: a new loader cannot reset the budget, and
    # a batch is served only if it fits in what is left (5 tokens here)
    with pytest.raises(P.BudgetExhausted):
        next(P.make_dataloader(tmp_path / "train.bin", B, T, "cpu", 0))
    small = P.make_dataloader(tmp_path / "train.bin", 1, 5, "cpu", 0)
    assert next(small)[0].shape == (1, 5)
    with pytest.raises(P.BudgetExhausted):
        next(small)
    assert P.tokens_served() == 10 * B * T + 5


def test_time_budget_does_not_stop_the_loader(tmp_path, fresh_meter, monkeypatch):
    synthetic_train_bin(tmp_path / "train.bin", [40] * 5)
    config = write_run_config(tmp_path / "run.json", budget_kind="time", budget_value=1.5)
    monkeypatch.setenv(P.RUN_CONFIG_ENV, str(config))
    loader = P.make_dataloader(tmp_path / "train.bin", 4, 16, "cpu", 0)
    for _ in range(50):
        next(loader)
    assert P.tokens_served() == 50 * 64


def test_loader_rejects_a_bos_mismatch_and_bad_files(tmp_path, fresh_meter, monkeypatch):
    synthetic_train_bin(tmp_path / "train.bin", [10] * 3)
    monkeypatch.setenv(P.RUN_CONFIG_ENV, str(write_run_config(tmp_path / "run.json", bos_id=5)))
    with pytest.raises(ValueError, match="BOS"):
        P.make_dataloader(tmp_path / "train.bin", 1, 4, "cpu", 0)
    monkeypatch.delenv(P.RUN_CONFIG_ENV)
    np.zeros(3, dtype=np.uint16).tofile(tmp_path / "nodocs.bin")  # BOS only, no text
    with pytest.raises(ValueError, match="no documents"):
        P.make_dataloader(tmp_path / "nodocs.bin", 1, 4, "cpu", 0)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError):
        P.make_dataloader(tmp_path / "empty.bin", 1, 4, "cpu", 0)
    with pytest.raises(ValueError):
        P.make_dataloader(tmp_path / "train.bin", 0, 4, "cpu", 0)


def test_loader_on_the_real_corpus(embedded, fresh_meter):
    paths, tok = embedded
    loader = P.make_dataloader(paths.train_bin, 8, 256, "cpu", 0)
    for _ in range(5):
        x, y = next(loader)
        assert (x[:, 0] == tok.bos_id).all()
        assert int(x.max()) < tok.vocab_size


# --- run config ------------------------------------------------------------------

def test_run_config_reads_the_env_file(tmp_path, monkeypatch):
    path = write_run_config(tmp_path / "run.json", budget_kind="time", budget_value=60.5)
    monkeypatch.setenv(P.RUN_CONFIG_ENV, str(path))
    run = P.run_config()
    assert run.device == "cpu" and run.budget_kind == "time" and run.budget_value == 60.5
    assert run.train_bin == tmp_path / "train.bin" and isinstance(run.out_dir, Path)


@pytest.mark.parametrize("bad", [
    {"device": "tpu"}, {"budget_kind": "steps"}, {"budget_value": -1},
    {"budget_value": "100"}, {"budget_value": 1.5}, {"seed": True}, {"seq_len": 0},
    {"bos_id": 9000}, {"vocab_size": 70000}, {"train_bin": ""}, {"threads": None},
])
def test_run_config_rejects_bad_fields(tmp_path, bad):
    with pytest.raises(ValueError):
        P.run_config(write_run_config(tmp_path / "run.json", **bad))


def test_run_config_needs_the_env(monkeypatch, tmp_path):
    monkeypatch.delenv(P.RUN_CONFIG_ENV, raising=False)
    with pytest.raises(RuntimeError, match=P.RUN_CONFIG_ENV):
        P.run_config()
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError):
        P.run_config(tmp_path / "list.json")


# --- evaluate_bpb ------------------------------------------------------------------

class FixedLogits(torch.nn.Module):
    """The same logit vector at every position (uniform when all zero)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone(), requires_grad=False)
        self.calls = 0

    def forward(self, idx):
        self.calls += 1
        return self.logits.expand(idx.shape[0], idx.shape[1], -1).clone()


def expected_windows(tokens, seq_len, n_windows):
    starts = np.linspace(0, len(tokens) - seq_len - 1, n_windows).round().astype(int)
    return np.stack([tokens[s + 1:s + seq_len + 1] for s in starts])


def test_uniform_model_gives_log2_vocab_per_token(tmp_path):
    V = 50
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, V, size=5000).astype(np.uint16)
    tokens[::37] = V - 1  # a special token (byte count 0) sprinkled in
    tokens.tofile(tmp_path / "val.bin")
    token_bytes = rng.integers(1, 5, size=V).astype(np.int32)
    token_bytes[V - 1] = 0
    model = FixedLogits(torch.zeros(V))
    bpb = P.evaluate_bpb(model, tmp_path / "val.bin", token_bytes, batch_size=3, seq_len=20,
                         device="cpu", n_windows=10)
    targets = expected_windows(tokens, 20, 10)
    counted = targets[token_bytes[targets] > 0]
    assert len(counted) < targets.size  # specials really were excluded
    expected = math.log2(V) * len(counted) / token_bytes[counted].sum()
    assert bpb == pytest.approx(expected, rel=1e-6)  # float32 cross-entropy
    assert model.calls == 4  # ceil(10 / 3) batches


def test_non_uniform_model_matches_hand_computed_cross_entropy(tmp_path):
    tokens = np.array([0, 1, 2, 3, 4, 5, 6] * 30, dtype=np.uint16)
    tokens.tofile(tmp_path / "val.bin")
    token_bytes = np.array([1, 2, 3, 1, 2, 3, 0])
    z = torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0, -2.0, 1.0])
    bpb = P.evaluate_bpb(FixedLogits(z), tmp_path / "val.bin", token_bytes, 2, 9, "cpu", 5)
    targets = expected_windows(tokens, 9, 5).ravel()
    logp = z.double().numpy() - np.log(np.exp(z.double().numpy()).sum())
    keep = token_bytes[targets] > 0
    expected = -logp[targets[keep]].sum() / (math.log(2) * token_bytes[targets].sum())
    assert bpb == pytest.approx(expected, rel=1e-6)


def test_evaluate_bpb_windows_are_fixed(embedded):
    paths, tok = embedded
    model = FixedLogits(torch.zeros(tok.vocab_size))
    a = P.evaluate_bpb(model, paths.val_bin, tok.token_bytes, 4, 64, "cpu", 12)
    b = P.evaluate_bpb(model, paths.val_bin, tok.token_bytes, 5, 64, "cpu", 12)
    assert a == pytest.approx(b, rel=1e-12)  # batching does not change the windows
    assert a == pytest.approx(13 / 4.3, rel=0.1)  # log2(8192) bits over ~4.3 bytes/token


def test_padded_vocab_is_accepted_and_model_mode_restored(tmp_path):
    (np.arange(100) % 10).astype(np.uint16).tofile(tmp_path / "val.bin")
    model = FixedLogits(torch.zeros(16))  # 16 logits for a vocab of 10
    model.train()
    bpb = P.evaluate_bpb(model, tmp_path / "val.bin", np.ones(10), 2, 8, "cpu", 3)
    assert bpb == pytest.approx(4.0)  # log2(16) bits per 1-byte token
    assert model.training


@pytest.mark.parametrize("output", [
    lambda idx: torch.full((idx.shape[0], idx.shape[1], 10), float("nan")),
    lambda idx: torch.full((idx.shape[0], idx.shape[1], 10), float("inf")),
    lambda idx: torch.zeros(idx.shape[0], idx.shape[1] - 1, 10),
    lambda idx: torch.zeros(idx.shape[0], idx.shape[1], 5),
    lambda idx: torch.zeros(idx.shape[0], idx.shape[1]),
    lambda idx: (torch.zeros(idx.shape[0], idx.shape[1], 10),),
    lambda idx: torch.zeros(idx.shape[0], idx.shape[1], 10).as_subclass(Sneaky),
])
def test_evaluate_bpb_rejects_bad_outputs(tmp_path, output):
    np.zeros(100, dtype=np.uint16).tofile(tmp_path / "val.bin")

    class Model(torch.nn.Module):
        def forward(self, idx):
            return output(idx)

    with pytest.raises(ValueError):
        P.evaluate_bpb(Model(), tmp_path / "val.bin", np.ones(10), 2, 8, "cpu", 3)


class Sneaky(torch.Tensor):
    """A tensor subclass could rewrite the trusted side's maths."""


def test_evaluate_bpb_rejects_bad_inputs(tmp_path):
    np.zeros(5, dtype=np.uint16).tofile(tmp_path / "short.bin")
    model = FixedLogits(torch.zeros(10))
    with pytest.raises(ValueError):
        P.evaluate_bpb(model, tmp_path / "short.bin", np.ones(10), 2, 8, "cpu", 3)
    np.full(50, 12, dtype=np.uint16).tofile(tmp_path / "oov.bin")
    with pytest.raises(ValueError, match="vocab"):
        P.evaluate_bpb(model, tmp_path / "oov.bin", np.ones(10), 2, 8, "cpu", 3)
    np.zeros(50, dtype=np.uint16).tofile(tmp_path / "val.bin")
    for kwargs in ({"batch_size": 0}, {"n_windows": -1}, {"seq_len": 2.5}):
        args = {"batch_size": 2, "seq_len": 8, "n_windows": 3, **kwargs}
        with pytest.raises(ValueError):
            P.evaluate_bpb(model, tmp_path / "val.bin", np.ones(10), device="cpu", **args)
    with pytest.raises(ValueError, match="no countable"):
        P.evaluate_bpb(model, tmp_path / "val.bin", np.zeros(10), 2, 8, "cpu", 3)


# --- downloaded datasets, served by a local server (tests/shard_server.py) ------------

def prepare_climbmix(home, url, **kw):
    return P._prepare(home, "climbmix", None, vocab_size=300, num_shards=2, data_url=url,
                      backoff_s=0.01, **kw)


def test_download_and_prepare_parquet_shards(tmp_path, shard_files):
    with ShardServer(shard_files) as server:
        server.fail_first.add(SPEC.shard_name(1))  # a transient 500 is retried
        paths = prepare_climbmix(tmp_path / "home", server.url)
    shard_dir = tmp_path / "home" / "data" / "climbmix" / "shards"
    for name, data in shard_files.items():
        assert (shard_dir / name).read_bytes() == data
    assert server.requests.count(f"/resolve/main/{SPEC.shard_name(1)}") == 2
    tok = P.load_tokenizer(paths.tokenizer)
    train = np.fromfile(paths.train_bin, dtype=np.uint16)
    assert int((train == tok.bos_id).sum()) == len(SHARD_TEXTS[0]) + len(SHARD_TEXTS[1])
    val = np.fromfile(paths.val_bin, dtype=np.uint16)
    first = np.flatnonzero(val == tok.bos_id)[1]
    assert tok.decode(val[1:first].tolist()) == SHARD_TEXTS[SPEC.val_shard][0]
    test = np.fromfile(paths.test_bin, dtype=np.uint16)
    assert int((test == tok.bos_id).sum()) == len(SHARD_TEXTS[SPEC.test_shard])
    # the server is gone: everything is verified from the local cache
    again = prepare_climbmix(tmp_path / "home", server.url)
    assert again == paths


def test_corrupt_download_is_retried_then_fails_clearly(tmp_path, shard_files):
    name = SPEC.shard_name(0)
    with ShardServer(shard_files) as server:
        server.corrupt.add(name)
        with pytest.raises(P.DatasetUnavailable, match="sha256 mismatch") as info:
            prepare_climbmix(tmp_path / "home", server.url, attempts=3)
    assert server.requests.count(f"/cdn/{name}") == 3
    assert "--dataset embedded" in str(info.value)
    shard_dir = tmp_path / "home" / "data" / "climbmix" / "shards"
    assert not (shard_dir / name).exists()
    assert not [p for p in shard_dir.iterdir() if p.name.startswith(".")]  # no tmp, no part


def test_pinned_sha_wins_over_the_server(tmp_path, shard_files, monkeypatch):
    name = SPEC.shard_name(0)
    pinned = P.ShardedDataset(**{**SPEC.__dict__, "sha256": ((0, "0" * 64),)})
    monkeypatch.setitem(P.DATASETS, "climbmix", pinned)
    with ShardServer(shard_files) as server:
        with pytest.raises(P.DatasetUnavailable, match="sha256 mismatch"):
            prepare_climbmix(tmp_path / "home", server.url, attempts=2)
    assert server.requests.count(f"/cdn/{name}") == 2


def test_corrupted_local_shard_is_downloaded_again(tmp_path, shard_files):
    with ShardServer(shard_files) as server:
        prepare_climbmix(tmp_path / "home", server.url)
        shard = tmp_path / "home" / "data" / "climbmix" / "shards" / SPEC.shard_name(0)
        shard.write_bytes(b"garbage")
        before = len(server.requests)
        prepare_climbmix(tmp_path / "home", server.url)
        assert len(server.requests) == before + 2  # one redirect + one download
    assert shard.read_bytes() == shard_files[SPEC.shard_name(0)]


def test_missing_shard_is_unavailable(tmp_path, shard_files):
    with ShardServer({k: v for k, v in shard_files.items() if k != SPEC.shard_name(1)}) as server:
        with pytest.raises(P.DatasetUnavailable, match="404"):
            prepare_climbmix(tmp_path / "home", server.url)
        # a 404 is final: no retries
        assert server.requests.count(f"/resolve/main/{SPEC.shard_name(1)}") == 1


def test_server_down_is_dataset_unavailable(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(P.DATA_URL_ENV, f"http://127.0.0.1:{port}/resolve/main")
    with pytest.raises(P.DatasetUnavailable) as info:
        P._prepare(tmp_path / "home", "climbmix", None, num_shards=1, attempts=2, backoff_s=0.01)
    message = str(info.value)
    assert "needs a download" in message and "--dataset embedded" in message
    assert "Check the network" in message and P.DATA_URL_ENV in message
    assert f"127.0.0.1:{port}" in message and "after 2 attempts" in message
    assert "Traceback" not in message and "\n" not in message  # one line a user can act on


def test_unreadable_parquet_is_a_clear_error(tmp_path):
    files = {SPEC.shard_name(i): b"PAR1 this is not parquet PAR1"
             for i in (0, SPEC.val_shard, SPEC.test_shard)}
    with ShardServer(files) as server:
        with pytest.raises(P.CorpusError, match="downloaded again"):
            P._prepare(tmp_path / "home", "climbmix", None, vocab_size=300, num_shards=1,
                       data_url=server.url, backoff_s=0.01)


def test_dataset_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        P.prepare_data(tmp_path, "nope")
    with pytest.raises(ValueError, match="num_shards"):
        P.prepare_data(tmp_path, "climbmix", num_shards=0)
    with pytest.raises(ValueError, match="num_shards"):
        P.prepare_data(tmp_path, "climbmix", num_shards=SPEC.num_train_shards + 1)


# --- downloads: progress, truncation, resuming, the data digest ------------------------------

def test_fresh_download_reports_progress_to_the_full_size(tmp_path, shard_files):
    seen = []
    with ShardServer(shard_files) as server:
        P._prepare(tmp_path / "home", "climbmix", lambda *a: seen.append(a), vocab_size=300,
                   num_shards=2, data_url=server.url, backoff_s=0.01)
    for name, data in shard_files.items():
        steps = [(done, total) for stage, done, total in seen if stage == f"download {name}"]
        assert steps and steps[-1] == (len(data), len(data))
        assert [d for d, _ in steps] == sorted(d for d, _ in steps)
    stages = [stage for stage, _, _ in seen]
    assert stages.index(f"download {SPEC.shard_name(0)}") < stages.index("train tokenizer")


def test_a_truncated_shard_resumes_where_it_stopped(tmp_path, shard_files):
    name = SPEC.shard_name(0)
    cut = len(shard_files[name]) // 2
    with ShardServer(shard_files) as server:
        server.truncate_first[name] = cut
        paths = prepare_climbmix(tmp_path / "home", server.url)
    shard_dir = paths.train_bin.parent / "shards"
    assert (shard_dir / name).read_bytes() == shard_files[name]
    assert [r for n, r in server.ranges_asked if n == name] == [None, f"bytes={cut}-"]
    assert not [p for p in shard_dir.iterdir() if p.name.startswith(".")]


def test_a_truncated_shard_without_range_support_starts_over(tmp_path, shard_files):
    name = SPEC.shard_name(0)
    with ShardServer(shard_files) as server:
        server.ranges = False  # answers a Range request with the whole file (200)
        server.truncate_first[name] = 100
        prepare_climbmix(tmp_path / "home", server.url)
    shard = tmp_path / "home" / "data" / "climbmix" / "shards" / name
    assert shard.read_bytes() == shard_files[name]
    assert [r for n, r in server.ranges_asked if n == name] == [None, "bytes=100-"]


def test_the_data_digest_names_the_prepared_data(tmp_path, shard_files):
    with ShardServer(shard_files) as server:
        first = prepare_climbmix(tmp_path / "a", server.url)
        same = prepare_climbmix(tmp_path / "b", server.url)  # another node, same bytes
        one_shard = P._prepare(tmp_path / "c", "climbmix", None, vocab_size=300, num_shards=1,
                               data_url=server.url, backoff_s=0.01)
        other_val = dict(shard_files)
        other_val[SPEC.shard_name(SPEC.val_shard)] = write_shard(
            tmp_path / "v.parquet", ["Validation text served by another mirror."] * 30)
    with ShardServer(other_val) as server:
        bad_mirror = prepare_climbmix(tmp_path / "d", server.url)
    digest = P.data_digest(first)
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert P.data_digest(same) == digest
    assert P.data_digest(one_shard) != digest  # other training data
    assert P.data_digest(bad_mirror) != digest  # other validation data
    P._sidecar(first.val_bin).unlink()
    with pytest.raises(P.CorpusError, match="sha256 sidecar"):
        P.data_digest(first)

"""The trusted evaluation child on exported graphs: honest models get exactly the trusted
metric's score; graphs that peek at later tokens or at other rows of the batch are caught by
the causality probe on the scoring batches themselves; the result-file protocol holds.

Models are exported in-process with model_graph.export_model; the trusted prepare.py is the
fake genome's: the real one, on a tiny corpus with a 300-token vocabulary.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

import fake_genome as fg
from experiments.run import evaluate_child
from experiments.run import model_graph as mg
from genome import train

VOCAB = 300  # the fake genome's tokenizer
SETTINGS = evaluate_child.EVAL_SETTINGS["cpu"]
B, T = SETTINGS["batch_size"], SETTINGS["seq_len"]

class Bigram(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(VOCAB, VOCAB)

    def forward(self, idx):
        return self.table(idx)


class PeeksAtNextToken(Bigram):
    """Adds a scaled one-hot of the next token: a large gain that only exists by cheating."""

    def __init__(self):
        super().__init__()
        self.register_buffer("eye", torch.eye(VOCAB))

    def forward(self, idx):
        nxt = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
        return self.table(idx) + 5.0 * nn.functional.embedding(nxt, self.eye)


class ReadsOtherRow(Bigram):
    """Causal in time, but row i reads row i-1 of the same batch (at the same position)."""

    def forward(self, idx):
        out = self.table(idx)
        return out + 0.5 * torch.cat([out[-1:], out[:-1]], dim=0)


class MeanOfRow(Bigram):
    """Every position sees the mean embedding of the whole row, future included."""

    def forward(self, idx):
        out = self.table(idx)
        return out + out.mean(dim=1, keepdim=True)


class PeeksOnce(Bigram):
    """Causal everywhere but at one position, whose logits see the token after it."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at
        self.register_buffer("eye", torch.eye(VOCAB))
        only = torch.zeros(T, 1)
        only[at] = 1.0
        self.register_buffer("only", only)

    def forward(self, idx):
        nxt = nn.functional.embedding(idx[:, self.at + 1], self.eye)  # (rows, VOCAB)
        return self.table(idx) + 5.0 * self.only * nxt[:, None, :]


class PeeksBehindAHugeLogit(Bigram):
    """Peeks at the next token and adds one logit of -1e6 where the metric cannot miss it:
    a column past the vocabulary, or a 0-byte token's (whose targets are not counted). A
    probe tolerance scaled by the logits' own size let this through at val_bpb 0.09."""

    def __init__(self, zero_byte_token: int | None):
        super().__init__()
        self.register_buffer("eye", torch.eye(VOCAB))
        mask = torch.zeros(VOCAB)
        if zero_byte_token is not None:
            mask[zero_byte_token] = -1e6
        self.register_buffer("huge", mask)
        self.extra_column = zero_byte_token is None

    def forward(self, idx):
        nxt = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
        out = self.table(idx) + 40.0 * nn.functional.embedding(nxt, self.eye) + self.huge
        if self.extra_column:
            out = torch.cat([out, torch.full_like(out[..., :1], -1e6)], dim=-1)
        return out


class OverflowsFloat32(Bigram):
    """float64 logits, finite there and infinite as the metric's float32."""

    def forward(self, idx):
        return self.table(idx).double() * 1e300


class NotFinite(Bigram):
    def forward(self, idx):
        return self.table(idx) * float("inf")


class InBatchLookup(Bigram):
    """Causal within its row, but looks its last two tokens up in the OTHER rows of the batch
    and votes for what followed there: where windows overlap, that is the row's own future."""

    def __init__(self):
        super().__init__()
        self.register_buffer("eye", torch.eye(VOCAB))
        rows = torch.arange(B).repeat_interleave(T)
        self.register_buffer("other", rows[:, None] != rows[None, :])

    def forward(self, idx):
        key = torch.cat([torch.full_like(idx[:, :1], -1), idx[:, :-1] * VOCAB + idx[:, 1:]], 1)
        found = torch.cat([key[:, :-1], torch.full_like(idx[:, :1], -2)], 1)  # followed by
        nxt = torch.cat([idx[:, 1:], idx[:, -1:]], 1)
        match = (key.reshape(-1, 1) == found.reshape(1, -1)) & self.other
        votes = match.float() @ nn.functional.embedding(nxt.reshape(-1), self.eye)
        return self.table(idx) + 5.0 * (votes >= 3).float().view(idx.shape[0], T, VOCAB)


class ValLookup(Bigram):
    """Causal, but carries the validation text: a table from each 3-token context in val.bin
    to the token that followed it there (what a patch could smuggle in as a constant)."""
    SLOTS = 4099

    def __init__(self, val_tokens):
        super().__init__()
        table = torch.zeros(self.SLOTS, VOCAB)
        t = torch.as_tensor(val_tokens.astype("int64"))
        keys = ((t[:-3] * VOCAB + t[1:-2]) * VOCAB + t[2:-1]) % self.SLOTS
        table[keys, t[3:]] = 12.0
        self.register_buffer("memory", table)

    def forward(self, idx):
        pad = torch.zeros_like(idx[:, :1])
        a = torch.cat([pad, pad, idx[:, :-2]], 1)
        b = torch.cat([pad, idx[:, :-1]], 1)
        key = ((a * VOCAB + b) * VOCAB + idx) % self.SLOTS
        return self.table(idx) + nn.functional.embedding(key, self.memory)


def genome_gpt():
    torch.manual_seed(0)
    model = train.build_model(SimpleNamespace(profile="cpu", vocab_size=VOCAB, seq_len=T))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def bigram(cls=Bigram):
    torch.manual_seed(1)
    return cls().eval()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    genome = fg.make_genome(root / "genome")
    spec = importlib.util.spec_from_file_location("fake_prepare_for_eval", genome / "prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = prepare  # dataclasses look their module up
    spec.loader.exec_module(prepare)
    data = prepare.prepare_data(root / "home")
    tokenizer = prepare.load_tokenizer(data.tokenizer)
    assert tokenizer.vocab_size == VOCAB
    models = {"gpt": genome_gpt(), "bigram": bigram(), "peeks": bigram(PeeksAtNextToken),
              "other_row": bigram(ReadsOtherRow), "mean_of_row": bigram(MeanOfRow),
              "in_batch_lookup": bigram(InBatchLookup),
              "not_finite": bigram(NotFinite), "peeks_last": bigram(lambda: PeeksOnce(T - 2)),
              "peeks_middle": bigram(lambda: PeeksOnce(100)),
              "huge_column": bigram(lambda: PeeksBehindAHugeLogit(None)),
              "huge_zero_byte": bigram(lambda: PeeksBehindAHugeLogit(
                  int(np.flatnonzero(np.asarray(tokenizer.token_bytes) == 0)[0]))),
              "overflows": bigram(OverflowsFloat32)}
    torch.manual_seed(1)
    models["val_lookup"] = ValLookup(np.fromfile(data.val_bin, dtype=np.uint16)).eval()
    for name, model in models.items():
        mg.export_model(model, batch_size=B, seq_len=T, out_dir=root / name)
    return SimpleNamespace(root=root, genome=genome, prepare=prepare, data=data,
                           token_bytes=tokenizer.token_bytes, models=models)


def make_spec(env, name: str, **extra) -> dict:
    return {"trusted_prepare": str(env.genome / "prepare.py"),
            "graph_dir": str(env.root / name), "val_bin": str(env.data.val_bin),
            "tokenizer": str(env.data.tokenizer), "device": "cpu", "profile": "cpu",
            "threads": 1, "probe_seed": 1234, "max_weight_bytes": 2**30, **extra}


def test_honest_model_scores_exactly_the_trusted_metric(env):
    result = evaluate_child.evaluate(make_spec(env, "gpt"))
    assert result["status"] == "ok", result
    model = env.models["gpt"]
    args = (env.data.val_bin, env.token_bytes, B, T, "cpu",
            SETTINGS["n_windows"])
    graph = mg.load_graph(env.root / "gpt", vocab_size=VOCAB, batch_size=B, seq_len=T,
                          device="cpu")
    assert result["val_bpb"] == env.prepare.evaluate_bpb(graph, *args)  # bit for bit
    assert result["val_bpb"] == pytest.approx(env.prepare.evaluate_bpb(model, *args), rel=1e-5)
    assert result["params"] == sum(p.numel() for p in model.parameters()) + 2 * model.cos.numel()
    assert result["probe_batches"] == 16  # every one of the 16 scoring batches
    assert 0 <= result["probe_max_diff"] <= evaluate_child.PROBE_TOLERANCE["cpu"]
    assert "test_bpb" not in result and result["eval_s"] > 0


def test_held_out_test_split_is_scored_and_probed_when_asked(env):
    spec = make_spec(env, "bigram", test={"seed": 7, "n_windows": 40},
                     test_bin=str(env.data.test_bin))
    result = evaluate_child.evaluate(spec)
    assert result["status"] == "ok", result
    graph = mg.load_graph(env.root / "bigram", vocab_size=VOCAB, batch_size=B, seq_len=T,
                          device="cpu")
    expected = env.prepare.test_bpb(graph, env.data.test_bin, env.token_bytes, B, T, "cpu",
                                    40, 7)
    assert result["test_bpb"] == expected
    assert 0 < result["val_bpb"] < 20
    assert result["probe_batches"] == 16 + 3  # every val and test batch


def test_a_model_that_carries_the_validation_text_is_rejected(env):
    spec = make_spec(env, "val_lookup", test={"seed": 3, "n_windows": 64},
                     test_bin=str(env.data.test_bin))
    result = evaluate_child.evaluate(spec)
    assert result["status"] == "rejected", result
    assert "carries the validation text" in result["reason"]
    # Without the held-out check its validation score would look excellent.
    alone = evaluate_child.evaluate(make_spec(env, "val_lookup"))
    honest = evaluate_child.evaluate(make_spec(env, "bigram"))
    assert alone["status"] == "ok" and alone["val_bpb"] < honest["val_bpb"] - 0.5


@pytest.mark.parametrize("name", ["peeks", "other_row", "mean_of_row", "in_batch_lookup"])
def test_non_causal_graphs_are_rejected_by_the_probe(env, name):
    result = evaluate_child.evaluate(make_spec(env, name))
    assert result["status"] == "rejected", result
    assert result["reason"].startswith("causality probe (validation batch "), result["reason"]
    assert "val_bpb" not in result


@pytest.mark.parametrize("name", ["huge_column", "huge_zero_byte"])
def test_a_huge_logit_does_not_widen_the_probes_tolerance(env, name):
    for seed in range(3):
        result = evaluate_child.evaluate(make_spec(env, name, probe_seed=seed))
        assert result["status"] == "rejected", (seed, result)
        assert result["reason"].startswith("causality probe (validation batch "), result


def test_logits_past_float32s_range_are_rejected_not_an_evaluator_error(env):
    result = evaluate_child.evaluate(make_spec(env, "overflows"))
    assert result["status"] == "rejected", result
    assert result["reason"] == "the graph returned non-finite logits"


def test_a_graph_that_breaks_the_loader_is_rejected_not_an_evaluator_error(env, tmp_path):
    graph = json.loads((env.root / "bigram" / mg.GRAPH_FILE).read_text())
    node = next(n for n in graph["nodes"] if n["op"] == "call_function")
    node["args"].append({"float": 10 ** 400})  # float() of it overflows
    (tmp_path / mg.GRAPH_FILE).write_text(json.dumps(graph))
    (tmp_path / mg.WEIGHTS_FILE).write_bytes((env.root / "bigram" / mg.WEIGHTS_FILE).read_bytes())
    result = evaluate_child.evaluate(make_spec(env, "x", graph_dir=str(tmp_path)))
    assert result["status"] == "rejected", result


@pytest.mark.parametrize("name", ["peeks", "in_batch_lookup"])
def test_probe_does_not_depend_on_the_seed_to_catch_a_peek(env, name):
    """The fake validation text is short: its windows overlap heavily, the case where a row
    could find its own future in the other rows of the batch."""
    assert len(np.fromfile(env.data.val_bin, dtype=np.uint16)) < SETTINGS["n_windows"] * T / 4
    for seed in range(5):
        result = evaluate_child.evaluate(make_spec(env, name, probe_seed=seed))
        assert result["status"] == "rejected", (seed, result)


@pytest.fixture(scope="module")
def long_val(env):
    """Validation tokens long enough that no two of the 256 windows overlap (as on the real
    corpora): every row gets its own dealt cut."""
    path = env.root / "long_val.bin"
    rng = np.random.default_rng(5)
    rng.integers(0, VOCAB, size=SETTINGS["n_windows"] * (T + 1) + 1000).astype(np.uint16) \
        .tofile(path)
    return str(path)


@pytest.mark.parametrize("name", ["peeks_last", "peeks_middle"])
def test_a_peek_at_one_fixed_position_is_caught_whatever_the_seed(env, long_val, name):
    """Independent random cuts let such a model pass about 37 % of evaluations; dealt cuts
    cover every position once in 255 rows, and the validation windows are 256 rows."""
    for seed in range(6):
        result = evaluate_child.evaluate(make_spec(env, name, probe_seed=seed, val_bin=long_val))
        assert result["status"] == "rejected", (seed, result)
        assert result["reason"].startswith("causality probe (validation batch "), result
    honest = evaluate_child.evaluate(make_spec(env, "bigram", val_bin=long_val))
    assert honest["status"] == "ok", honest


def test_cut_deck_deals_every_cut_once_before_repeating():
    deck = evaluate_child.CutDeck(256, np.random.default_rng(3))
    first = [deck.deal() for _ in range(255)]
    assert sorted(first) == list(range(255))
    again = [deck.deal() for _ in range(255)]
    assert sorted(again) == list(range(255)) and again != first
    lone = evaluate_child.probe_cuts(np.arange(0, 16 * 1000, 1000), 256,
                                     np.random.default_rng(0), deck := evaluate_child.CutDeck(
                                         256, np.random.default_rng(1)))
    assert len(set(lone.tolist())) == 16 and len(deck.cards) == 255 - 16


def test_probe_cuts_never_keep_text_another_row_replaces():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, T_ = int(rng.integers(1, 12)), int(rng.integers(4, 40))
        starts = np.sort(rng.integers(0, int(rng.integers(1, 200)), size=n))
        cuts = evaluate_child.probe_cuts(starts, T_, rng)
        assert ((cuts >= -1) & (cuts <= T_ - 1)).all()
        kept = [set(range(s, s + c + 1)) for s, c in zip(starts, cuts)]
        replaced = [set(range(s + c + 1, s + T_)) for s, c in zip(starts, cuts)]  # inputs
        for i in range(n):
            for j in range(n):
                assert not kept[j] & replaced[i], (starts, cuts, i, j)
        assert (cuts >= 0).any()  # some row is always checked
    lone = evaluate_child.probe_cuts(np.array([0, 1000, 2000]), 256, rng)
    assert ((0 <= lone) & (lone <= 254)).all()


def test_graph_rejections_become_status_rejected(env, tmp_path):
    result = evaluate_child.evaluate(make_spec(env, "not_finite"))
    assert result == {"status": "rejected", "reason": "the graph returned non-finite logits",
                      "params": VOCAB * VOCAB}
    graph_dir = tmp_path / "hostile"
    graph_dir.mkdir()
    graph = json.loads((env.root / "bigram" / mg.GRAPH_FILE).read_text())
    next(n for n in graph["nodes"] if n["op"] == "call_function")["target"] = "aten.rand.default"
    (graph_dir / mg.GRAPH_FILE).write_text(json.dumps(graph))
    (graph_dir / mg.WEIGHTS_FILE).write_bytes((env.root / "bigram" / mg.WEIGHTS_FILE).read_bytes())
    result = evaluate_child.evaluate(make_spec(env, "x", graph_dir=str(graph_dir)))
    assert result["status"] == "rejected"
    assert "operator 'aten.rand.default' is not allowed" in result["reason"]


def test_child_process_protocol(env, tmp_path):
    """Run as the harness does: eval.json is deleted, the result carries the nonce."""
    spec = make_spec(env, "bigram", nonce="nonce-1", result_path=str(tmp_path / "result.json"))
    (tmp_path / "eval.json").write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-I", evaluate_child.__file__,
                           str(tmp_path / "eval.json")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                       "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "ok" and result["nonce"] == "nonce-1", result
    assert not (tmp_path / "eval.json").exists()
    assert "evaluation: ok val_bpb" in done.stdout


def test_evaluator_failure_is_status_error(env, tmp_path):
    spec = make_spec(env, "bigram", nonce="n2", result_path=str(tmp_path / "result.json"),
                     trusted_prepare=str(tmp_path / "missing_prepare.py"))
    (tmp_path / "eval.json").write_text(json.dumps(spec))
    assert evaluate_child.main([str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "error" and result["nonce"] == "n2"
    assert not (tmp_path / "eval.json").exists()


def test_probe_plan_takes_its_fraction_and_at_least_two(monkeypatch):
    rng = np.random.default_rng(0)
    assert evaluate_child.probe_plan(16, rng) == set(range(16))  # the default: every batch
    monkeypatch.setattr(evaluate_child, "PROBE_FRACTION", 0.25)
    assert len(evaluate_child.probe_plan(16, rng)) == 4
    assert len(evaluate_child.probe_plan(3, rng)) == 2
    assert evaluate_child.probe_plan(1, rng) == {0}
    assert len(evaluate_child.probe_plan(64, rng)) == 16


def test_eval_settings_are_fixed_per_profile():
    assert evaluate_child.EVAL_SETTINGS["cpu"]["seq_len"] == 256
    assert evaluate_child.EVAL_SETTINGS["cuda"]["seq_len"] == 2048
    assert evaluate_child.EVAL_SETTINGS["mps"]["seq_len"] == 1024


def test_evaluator_imports_no_candidate_code():
    """Nothing in the trusted child loads train.py, model.pt or pickles."""
    source = Path(evaluate_child.__file__).read_text()
    code = source.split('"""', 2)[2]  # past the docstring
    for word in ("torch.load", "pickle", "train_py", "model_pt", "import train", "exec("):
        assert word not in code, word

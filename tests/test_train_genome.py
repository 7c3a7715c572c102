"""Tests for genome/train.py, the base genome: a cheap, side-effect-free import; a causal model
that returns (B, T, V) logits in every configuration its switches offer; the optimizer and the
schedule; and real training runs in a child process against the real prepare.py (token and
time budgets, determinism, the summary, the exit on divergence)."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from experiments.run.static_check import check_source
from genome import train

GENOME_DIR = Path(train.__file__).resolve().parent
TRAIN_PY = GENOME_DIR / "train.py"
VOCAB = 512
BOS = VOCAB - 1
SUMMARY_KEYS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M")


def cpu_run(**overrides):
    """The fields of a RunConfig that build_model reads."""
    return SimpleNamespace(**{"profile": "cpu", "vocab_size": VOCAB, "seq_len": 256, **overrides})


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return train.build_model(cpu_run(**overrides)).eval()


# ---------------------------------------------------------------------------------------------
# Import and model


def test_import_is_cheap_and_side_effect_free(tmp_path):
    """Importing trains nothing, prints nothing, writes nothing, reads no run config."""
    env = {k: v for k, v in os.environ.items() if k != "LOOPY_RUN_CONFIG"}
    env["PYTHONPATH"] = str(GENOME_DIR)
    proc = subprocess.run([sys.executable, "-c", "import train; assert callable(train.build_model)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    assert list(tmp_path.iterdir()) == []


def test_base_genome_passes_the_static_screen():
    assert check_source(TRAIN_PY.read_text()) == (True, "")


def test_forward_returns_float_logits_of_shape_b_t_v():
    model = tiny_model()
    idx = torch.randint(0, VOCAB, (3, 17))
    with torch.no_grad():
        logits = model(idx)
    assert type(logits) is torch.Tensor
    assert logits.shape == (3, 17, VOCAB) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # With targets the same forward gives the mean cross-entropy, near ln(V) at init.
    loss = model(idx, idx)
    assert loss.dim() == 0 and abs(loss.item() - math.log(VOCAB)) < 0.5


def test_profiles_give_the_intended_model_sizes():
    sizes = {}
    for profile in ("cpu", "mps", "cuda"):
        model = train.build_model(cpu_run(profile=profile, vocab_size=8192,
                                          seq_len=train.PROFILES[profile]["SEQ_LEN"]))
        sizes[profile] = sum(p.numel() for p in model.parameters())
    assert 1.5e6 < sizes["cpu"] < 4e6
    assert sizes["cpu"] < sizes["mps"] < sizes["cuda"]
    assert 40e6 < sizes["cuda"] < 60e6  # autoresearch scale


VARIANTS = {
    "base": {},
    "post-norm, gelu, tied, softcap, no qk-norm": dict(
        NORM_PLACEMENT="post", ACTIVATION="gelu", TIE_EMBEDDINGS=True, SOFTCAP=15.0, QK_NORM=False),
    "silu, small init, other rotary base": dict(ACTIVATION="silu", INIT_SCALE=0.5, ROPE_BASE=500.0),
}


@pytest.mark.parametrize("settings", VARIANTS.values(), ids=VARIANTS.keys())
def test_model_is_causal_in_every_variant(monkeypatch, settings):
    for name, value in settings.items():
        monkeypatch.setattr(train, name, value)
    model = tiny_model()
    # Zero-initialised output projections would hide leaks: give every weight a value.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    idx = torch.randint(0, VOCAB, (2, 64))
    with torch.no_grad():
        before = model(idx)
        for cut in (1, 20, 63):
            changed = idx.clone()
            changed[:, cut:] = torch.randint(0, VOCAB, (2, 64 - cut))
            after = model(changed)
            torch.testing.assert_close(after[:, :cut], before[:, :cut], rtol=1e-5, atol=1e-5)
            assert not torch.allclose(after[:, cut:], before[:, cut:])  # the probe can see changes


def test_state_dict_holds_learned_weights_only_and_round_trips():
    first, second = tiny_model(seed=1), tiny_model(seed=2)
    state = first.state_dict()
    assert not any(key in state for key in ("cos", "sin"))  # derived from constants
    second.load_state_dict(state, strict=True)
    idx = torch.randint(0, VOCAB, (2, 32))
    with torch.no_grad():
        assert torch.equal(first(idx), second(idx))


def test_sequences_longer_than_the_rotary_tables_are_refused():
    model = tiny_model(seq_len=64)  # the cpu profile trains at 256: tables cover 256
    with pytest.raises(ValueError, match="longer than the rotary tables"):
        model(torch.zeros(1, 257, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule


@pytest.mark.parametrize("shape", [(64, 64), (96, 32), (32, 96)])
def test_newton_schulz_orthogonalises(shape):
    torch.manual_seed(0)
    rows, cols = shape
    u, _ = torch.linalg.qr(torch.randn(rows, min(shape)))
    v, _ = torch.linalg.qr(torch.randn(cols, min(shape)))
    g = u @ torch.diag(torch.logspace(-1, 1, min(shape))) @ v.T  # condition number 100
    out = train.newton_schulz(g, 5)
    assert out.shape == g.shape
    singular = torch.linalg.svdvals(out)
    # The quintic iteration lands every singular value in roughly 0.7..1.2, not exactly 1.
    assert singular.min() > 0.6 and singular.max() < 1.25
    # ... and keeps the singular vectors: out is close to u v^T.
    assert torch.linalg.matrix_norm(out - u @ v.T, ord=2) < 0.4


def test_optimizer_puts_block_matrices_on_muon_and_the_rest_on_adamw(monkeypatch):
    model = tiny_model()
    model.register_parameter("gain", torch.nn.Parameter(torch.ones(4)))  # as an edit might
    muon, embed, head, others = train.make_optimizer(model).param_groups
    matrices = {id(p) for p in model.blocks.parameters()}
    assert (muon["kind"], muon["lr"]) == ("muon", train.MATRIX_LR)
    assert {id(p) for p in muon["params"]} == matrices
    assert (embed["kind"], embed["lr"], embed["params"]) == ("adamw", train.EMBED_LR, [model.embed.weight])
    assert (head["kind"], head["lr"], head["params"]) == ("adamw", train.HEAD_LR, [model.head.weight])
    assert (others["kind"], others["lr"], others["params"]) == ("adamw", train.EMBED_LR, [model.gain])

    monkeypatch.setattr(train, "TIE_EMBEDDINGS", True)
    tied = tiny_model()
    kinds = [(g["kind"], len(g["params"])) for g in train.make_optimizer(tied).param_groups]
    assert kinds == [("muon", len(matrices)), ("adamw", 1)]  # one shared matrix, no head group


def test_optimizer_step_lowers_the_loss():
    model = tiny_model().train()
    optimizer = train.make_optimizer(model)
    idx = torch.randint(0, 64, (4, 32))  # a small sub-vocabulary: easy to learn
    losses = []
    for _ in range(15):
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


def test_lr_schedule_warms_up_holds_and_warms_down(monkeypatch):
    monkeypatch.setattr(train, "WARMUP_FRAC", 0.1)
    monkeypatch.setattr(train, "WARMDOWN_FRAC", 0.5)
    monkeypatch.setattr(train, "FINAL_LR_FRAC", 0.0)
    lr = train.lr_multiplier
    assert lr(0.0) == 0.0 and lr(0.05) == pytest.approx(0.5)
    assert lr(0.1) == lr(0.3) == lr(0.5) == 1.0
    assert lr(0.75) == pytest.approx(0.5) and lr(1.0) == pytest.approx(0.0)
    monkeypatch.setattr(train, "WARMUP_FRAC", 0.0)
    monkeypatch.setattr(train, "FINAL_LR_FRAC", 0.1)
    assert lr(0.0) == 1.0 and lr(1.0) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------
# Training runs: a child process, the real prepare.py, a tiny synthetic train.bin


@pytest.fixture(scope="module")
def train_bin(tmp_path_factory):
    """Documents of 20..300 tokens from a skewed distribution, each prefixed by BOS."""
    rng = np.random.default_rng(0)
    docs = [np.concatenate([[BOS], rng.zipf(1.5, rng.integers(20, 300)) % (VOCAB - 1)])
            for _ in range(400)]
    path = tmp_path_factory.mktemp("data") / "train.bin"
    np.concatenate(docs).astype(np.uint16).tofile(path)
    return path


def train_child(tmp_path, train_bin, source=TRAIN_PY, budget_kind="tokens", budget_value=8192,
                seed=0):
    """Run a train.py the way the harness does; (process, out_dir)."""
    out = tmp_path / f"out-{budget_kind}-{seed}"
    out.mkdir()
    config = tmp_path / f"run-{budget_kind}-{seed}.json"
    config.write_text(json.dumps({
        "device": "cpu", "profile": "cpu", "budget_kind": budget_kind, "budget_value": budget_value,
        "seed": seed, "out_dir": str(out), "train_bin": str(train_bin), "vocab_size": VOCAB,
        "bos_id": BOS, "seq_len": 256, "threads": 2}))
    env = dict(os.environ, LOOPY_RUN_CONFIG=str(config), PYTHONPATH=str(GENOME_DIR))
    proc = subprocess.run([sys.executable, str(source)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc, out


def summary(stdout):
    """The `key: value` lines after the `---` separator."""
    assert "\n---\n" in stdout, stdout[-2000:]
    return dict(re.findall(r"^(\w+):\s+(\S+)$", stdout.split("\n---\n")[-1], re.M))


@pytest.fixture(scope="module")
def token_run(tmp_path_factory, train_bin):
    return train_child(tmp_path_factory.mktemp("token_run"), train_bin)


def test_token_budget_run_saves_weights_and_prints_the_summary(token_run):
    proc, out = token_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    values = summary(proc.stdout)
    assert set(SUMMARY_KEYS) <= set(values)
    assert all(not math.isinf(float(values[key])) for key in SUMMARY_KEYS)
    # 8192 tokens at 4 x 256 per step: exactly 8 steps, the budget to the token.
    assert int(values["num_steps"]) == 8 and float(values["total_tokens_M"]) == 0.008192
    assert float(values["peak_vram_mb"]) > 0

    progress = [float(f) for f in re.findall(r"^progress: (\S+) loss: \S+ step: \d+$", proc.stdout, re.M)]
    assert progress and progress == sorted(progress) and progress[-1] == 1.0

    model = train.build_model(cpu_run())
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True), strict=True)
    with torch.no_grad():
        assert model(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, VOCAB)


@pytest.mark.slow  # two more training children
def test_same_seed_and_token_budget_give_bit_identical_weights(tmp_path, train_bin, token_run):
    first = torch.load(token_run[1] / "model.pt", weights_only=True)
    again_proc, again = train_child(tmp_path, train_bin, seed=0)
    other_proc, other = train_child(tmp_path, train_bin, seed=1)
    assert again_proc.returncode == 0 and other_proc.returncode == 0
    again, other = (torch.load(d / "model.pt", weights_only=True) for d in (again, other))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_time_budget_run_stops_once_its_training_seconds_are_spent(tmp_path, train_bin):
    proc, out = train_child(tmp_path, train_bin, budget_kind="time", budget_value=1.0)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    values = summary(proc.stdout)
    # The clock runs from the first batch (the harness's rule), with no warm-up steps off it.
    assert float(values["training_seconds"]) >= 1.0
    assert int(values["num_steps"]) >= 1
    assert (out / "model.pt").is_file()


@pytest.mark.parametrize("head_lr", ["1e6", "1e999"], ids=["explodes", "nan"])
def test_a_diverging_run_exits_nonzero_without_weights(tmp_path, train_bin, head_lr):
    source, count = re.subn(r"(?m)^HEAD_LR = \S+", f"HEAD_LR = {head_lr}", TRAIN_PY.read_text())
    assert count == 1
    edited = tmp_path / "train.py"
    edited.write_text(source)
    proc, out = train_child(tmp_path, train_bin, source=edited)
    assert proc.returncode == 1
    assert "FAIL: training diverged" in proc.stdout
    assert "\n---\n" not in proc.stdout
    assert not (out / "model.pt").exists()

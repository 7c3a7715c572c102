"""The CUDA profile follows the card's memory (genome/train.py's cuda_plan), tested on CPU.

The micro-batch is chosen from the memory a card offers while gradient accumulation keeps
the tokens per optimiser step, so the model and the maths are the same on every card; the
precision follows the compute capability. torch.cuda's queries are mocked: no GPU needed.
What needs a GPU to verify (real peaks, MFU, scores across sizes) is bench/gpu_check.py.
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from experiments.run import hardware
from genome import train

GiB = 2**30
CUDA = train.PROFILES["cuda"]
TOKENS_PER_STEP = 64 * 2048 * 2  # the cuda profile's step: unchanged by any card


# Nominal card sizes: the micro-batch each gets in bf16 (compute capability 8.0+).
TABLE = [  # (GB, micro-batch, grad-accum)
    (8, 8, 16),
    (12, 16, 8),
    (16, 16, 8),
    (24, 32, 4),
    (40, 64, 2),
    (80, 64, 2),
    (141, 64, 2),
]


@pytest.mark.parametrize("gb, micro_batch, grad_accum", TABLE)
def test_micro_batch_table(gb, micro_batch, grad_accum):
    plan = train.cuda_plan(gb * GiB, (9, 0))
    assert (plan.batch_size, plan.grad_accum) == (micro_batch, grad_accum)
    assert plan.dtype == torch.bfloat16 and plan.compiled
    assert plan.batch_size * plan.grad_accum * CUDA["SEQ_LEN"] == TOKENS_PER_STEP


# What real cards report (torch.cuda.get_device_properties(0).total_memory), and what a
# desktop leaves of it with a display running: the same choices as the nominal table.
REAL_CARDS = [  # (card, bytes offered, capability, micro-batch, precision)
    ("RTX 3070 8 GB, display on", 8_589_410_304 - GiB // 2, (8, 6), 8, torch.bfloat16),
    ("RTX 3060 12 GB", 12_878_086_144, (8, 6), 16, torch.bfloat16),
    ("Tesla T4 16 GB", 15_843_721_216, (7, 5), 16, torch.float16),
    ("V100 16 GB", 16_935_682_048, (7, 0), 16, torch.float16),
    ("RTX 4090 24 GB", 25_393_692_672, (8, 9), 32, torch.bfloat16),
    ("A100 40 GB", 42_314_694_656, (8, 0), 64, torch.bfloat16),
    ("H100 80 GB", 85_520_809_984, (9, 0), 64, torch.bfloat16),
    ("H200 141 GB", 150_100_000_000, (9, 0), 64, torch.bfloat16),
    ("GTX 1080 8 GB", 8_507_162_624, (6, 1), 4, None),  # fp32, eager (no Triton before 7.0)
]


@pytest.mark.parametrize("card, offered, capability, micro_batch, dtype", REAL_CARDS,
                         ids=[c[0] for c in REAL_CARDS])
def test_real_cards(card, offered, capability, micro_batch, dtype):
    plan = train.cuda_plan(offered, capability)
    assert plan.batch_size == micro_batch and plan.dtype == dtype
    assert plan.compiled == (capability >= (7, 0))
    assert plan.batch_size * plan.grad_accum * CUDA["SEQ_LEN"] == TOKENS_PER_STEP


def test_the_memory_model_reproduces_the_measurement():
    """30.3 GB peak at micro-batch 64 (H200, bf16, compiled): the anchor of the estimate."""
    estimate = train.cuda_memory_needed(64, CUDA, 8192, torch.bfloat16)
    assert abs(estimate / GiB - 30.3) < 0.2
    # weights, gradients and optimizer state are a small part of it
    state = train.cuda_memory_needed(0, CUDA, 8192, torch.bfloat16)
    assert state < 0.05 * estimate
    assert train.cuda_memory_needed(64, CUDA, 8192, None) > 1.9 * estimate - state  # fp32
    assert train.cuda_memory_needed(64, CUDA, 8192, torch.float16, compiled=False) > estimate


@pytest.mark.parametrize("capability", [(6, 1), (7, 0), (7, 5), (8, 0), (8, 9), (9, 0), (10, 0)])
def test_every_size_keeps_the_step_and_more_memory_never_means_a_smaller_micro_batch(capability):
    previous = 0
    for gb in [2 + i / 4 for i in range(0, 800)]:
        try:
            plan = train.cuda_plan(int(gb * GiB), capability)
        except train.NotEnoughMemory:
            assert previous == 0, f"{gb} GB failed after a smaller card worked"
            continue
        assert plan.batch_size * plan.grad_accum == 128
        assert plan.batch_size <= CUDA["BATCH_SIZE"]
        assert plan.batch_size >= previous
        needed = train.cuda_memory_needed(plan.batch_size, CUDA, 8192, plan.dtype, plan.compiled)
        assert needed <= train.CUDA_MEMORY["usable_share"] * gb * GiB
        previous = plan.batch_size
    assert previous == CUDA["BATCH_SIZE"]  # the largest card gets the measured configuration


@pytest.mark.parametrize("capability, dtype, compiled", [
    ((10, 0), torch.bfloat16, True), ((9, 0), torch.bfloat16, True),
    ((8, 0), torch.bfloat16, True), ((7, 5), torch.float16, True),
    ((7, 0), torch.float16, True), ((6, 1), None, False), ((5, 2), None, False)])
def test_precision_follows_the_compute_capability(capability, dtype, compiled):
    plan = train.cuda_plan(80 * GiB, capability)
    assert plan.dtype == dtype and plan.compiled == compiled
    # the arena's precision class (trusted code, which never imports train.py) agrees
    assert hardware.cuda_precision(capability) == {torch.bfloat16: "bf16", torch.float16: "fp16",
                                                   None: "fp32"}[dtype]


def test_a_card_too_small_gets_one_clear_error_with_the_memory_it_needs():
    with pytest.raises(train.NotEnoughMemory) as info:
        train.cuda_plan(1 * GiB, (8, 6))
    message = str(info.value)
    assert "offers 1.1 GB" in message and "--device cpu" in message
    needed = float(message.split("needs about ")[1].split(" GB")[0])
    assert 1.2 < needed < 4
    train.cuda_plan(int((needed + 0.1) * 1e9), (8, 6))  # the memory it names is enough


def test_an_edited_profile_keeps_its_own_step():
    """An edit that doubles BATCH_SIZE or adds a GRAD_ACCUM step still gets its own tokens per
    step on every card; a deeper model gets smaller micro-batches."""
    doubled = dict(CUDA, BATCH_SIZE=128)
    assert train.cuda_plan(141 * GiB, (9, 0), doubled).batch_size == 128
    assert train.cuda_plan(8 * GiB, (9, 0), doubled).grad_accum == 32
    three = dict(CUDA, GRAD_ACCUM=3)  # 192 sequences a step: micro-batches that divide it
    plan = train.cuda_plan(8 * GiB, (9, 0), three)
    assert plan.batch_size * plan.grad_accum == 192 and plan.batch_size == 12
    deeper = dict(CUDA, DEPTH=16)
    assert train.cuda_plan(24 * GiB, (9, 0), deeper).batch_size < train.cuda_plan(
        24 * GiB, (9, 0)).batch_size


# ---------------------------------------------------------------------------------------------
# hardware_settings: the CPU and MPS profiles are untouched; CUDA asks the card (mocked here)


def run(profile):
    return SimpleNamespace(profile=profile, vocab_size=8192, seq_len=256)


def test_the_cpu_profile_is_unchanged(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("the cpu path asked torch.cuda")

    for name in ("get_device_properties", "get_device_capability", "mem_get_info"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    assert train.PROFILES["cpu"] == dict(DEPTH=4, WIDTH=128, HEADS=4, SEQ_LEN=256, BATCH_SIZE=4,
                                         GRAD_ACCUM=1, COMPILE=False)
    p, dtype = train.hardware_settings(run("cpu"), torch.device("cpu"))
    assert p == train.PROFILES["cpu"] and p is not train.PROFILES["cpu"] and dtype is None
    p, dtype = train.hardware_settings(run("mps"), torch.device("mps"))
    assert p == train.PROFILES["mps"] and dtype is None
    assert (p["BATCH_SIZE"], p["GRAD_ACCUM"]) == (16, 1)


def fake_card(monkeypatch, total, capability=(9, 0), fraction=1.0, free=None, reserved=0):
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(total_memory=total, name="Fake GPU"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction",
                        lambda device=None: fraction, raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device=None: (total if free is None else free, total))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)


def test_cuda_settings_follow_the_memory_fraction(monkeypatch):
    """A simulated 14 GB card (an H200 capped at 10 %), as bench/gpu_check.py runs them."""
    fake_card(monkeypatch, 150_100_000_000, fraction=0.1)
    p, dtype = train.hardware_settings(run("cuda"), torch.device("cuda"))
    assert (p["BATCH_SIZE"], p["GRAD_ACCUM"], dtype) == (16, 8, torch.bfloat16)
    assert {k: v for k, v in p.items() if k not in ("BATCH_SIZE", "GRAD_ACCUM")} == {
        k: v for k, v in CUDA.items() if k not in ("BATCH_SIZE", "GRAD_ACCUM")}
    assert train.PROFILES["cuda"]["BATCH_SIZE"] == 64  # the table itself is left alone


def test_cuda_settings_leave_room_for_what_others_use(monkeypatch):
    fake_card(monkeypatch, 24 * GiB, capability=(8, 9), free=8 * GiB)  # another job holds 16
    assert train.cuda_memory_offered(torch.device("cuda")) == 8 * GiB
    p, _ = train.hardware_settings(run("cuda"), torch.device("cuda"))
    assert p["BATCH_SIZE"] == 8
    fake_card(monkeypatch, 24 * GiB, capability=(8, 9), free=8 * GiB, reserved=6 * GiB)
    assert train.cuda_memory_offered(torch.device("cuda")) == 14 * GiB  # ours counts as ours


def test_cuda_settings_on_an_old_card(monkeypatch):
    fake_card(monkeypatch, 12 * GiB, capability=(7, 5))
    p, dtype = train.hardware_settings(run("cuda"), torch.device("cuda"))
    assert dtype == torch.float16 and p["COMPILE"] and p["BATCH_SIZE"] == 16
    p, _ = train.hardware_settings(run("cuda"), torch.device("cuda"), compiled=False)
    assert not p["COMPILE"] and p["BATCH_SIZE"] == 8  # eager keeps more activations


def test_a_too_small_card_fails_with_one_line(tmp_path):
    """train.py on a (mocked) 1 GB card: one FAIL line with the memory it needs, exit 1."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps({
        "device": "cuda", "profile": "cuda", "budget_kind": "tokens", "budget_value": 8192,
        "seed": 0, "out_dir": str(tmp_path), "train_bin": str(tmp_path / "train.bin"),
        "vocab_size": 8192, "bos_id": 8188, "seq_len": 2048, "threads": 1}))
    mock = ("import runpy, sys, types, torch\n"
            "c = torch.cuda\n"
            "c.get_device_properties = lambda d=None: types.SimpleNamespace(total_memory=2**30)\n"
            "c.get_device_capability = lambda d=None: (8, 6)\n"
            "c.get_per_process_memory_fraction = lambda d=None: 1.0\n"
            "c.mem_get_info = lambda d=None: (2**30, 2**30)\n"
            "c.memory_reserved = lambda d=None: 0\n"
            "torch.set_float32_matmul_precision = lambda *a: None\n"
            "sys.argv = [sys.argv[1]]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    genome = Path(train.__file__).resolve().parent
    env = dict(os.environ, LOOPY_RUN_CONFIG=str(config), PYTHONPATH=str(genome))
    proc = subprocess.run([sys.executable, "-c", mock, str(genome / "train.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [proc.stdout.strip()]  # exactly one line
    assert proc.stdout.startswith("FAIL: this GPU offers 1.1 GB") and "needs about" in proc.stdout
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# fp16 with loss scaling: the path of cards without bf16, run on CPU (torch allows it there)


def fp16_steps(model, optimizer, scaler, batches, accum=2):
    """The optimiser steps of train.main's loop, in fp16 autocast with a GradScaler."""
    losses = []
    for x, y in batches:
        for _ in range(accum):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = model(x, y)
            scaler.scale(loss / accum).backward()
        scaler.step(optimizer)
        scaler.update()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.fixture
def small_model(monkeypatch):
    """The genome's model at a small size (fp16 matmuls are slow on CPUs)."""
    monkeypatch.setitem(train.PROFILES, "small", dict(DEPTH=2, WIDTH=64, HEADS=2, SEQ_LEN=32,
                                                      BATCH_SIZE=2, GRAD_ACCUM=2, COMPILE=False))
    torch.manual_seed(0)
    return train.build_model(SimpleNamespace(profile="small", vocab_size=128, seq_len=32)).train()


def test_fp16_with_a_grad_scaler_trains_the_genome(small_model):
    model = small_model
    optimizer = train.make_optimizer(model)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    idx = torch.randint(0, 32, (2, 33))
    losses = fp16_steps(model, optimizer, scaler, [(idx[:, :-1], idx[:, 1:])] * 15)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0] - 1.0
    assert scaler.get_scale() > 1.0  # scaling is in force


def test_the_grad_scaler_skips_a_step_with_overflowing_gradients(small_model):
    model = small_model
    optimizer = train.make_optimizer(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=True)
    idx = torch.randint(0, 64, (2, 17))
    fp16_steps(model, optimizer, scaler, [(idx[:, :-1], idx[:, 1:])])  # the optimizer has state
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scale = scaler.get_scale()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(idx[:, :-1], idx[:, 1:])
    scaler.scale(loss).backward()
    model.head.weight.grad[0, 0] = float("inf")  # an fp16 overflow
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # skipped
    assert scaler.get_scale() == scale / 2


def test_newton_schulz_stays_fp32_off_the_gpu():
    g = torch.randn(32, 16)
    assert train.newton_schulz(g, 5).dtype == torch.float32

"""Device detection, hardware classes, arena classes and evaluation settings."""
from types import SimpleNamespace

import pytest

from experiments.run.hardware import (arena_class, cpu_threads, cuda_token_class, detect_device,
                                  eval_settings, gpu_class, hardware_class, profile)


@pytest.mark.parametrize("name, total, expected", [
    ("NVIDIA H100 80GB HBM3", 85_520_809_984, "nvidia-h100-80gb"),
    ("NVIDIA H200", 150_100_000_000, "nvidia-h200-140gb"),
    ("NVIDIA A100-SXM4-40GB", 42_314_694_656, "nvidia-a100-sxm4-40gb"),
    ("NVIDIA GeForce RTX 4090", 25_393_692_672, "nvidia-geforce-rtx-4090-24gb"),
    ("Tesla T4", 15_843_721_216, "tesla-t4-15gb"),
    ("!!!", 8 * 2**30, "8gb"),
])
def test_gpu_class(name, total, expected):
    assert gpu_class(name, total) == expected


def test_cpu_and_mps_classes():
    assert detect_device("cpu") == "cpu"
    assert hardware_class("cpu") == "cpu"
    assert hardware_class("mps") == "apple-mps"
    assert profile("cuda") == "cuda"
    assert cpu_threads() >= 1


@pytest.mark.parametrize("bad", ["gpu", "", "CUDA", None])
def test_bad_devices(bad):
    with pytest.raises(ValueError):
        detect_device(bad)
    with pytest.raises(ValueError):
        profile(bad)


def test_auto_picks_an_available_device():
    assert detect_device("auto") in ("cpu", "cuda", "mps")


def test_eval_settings_come_from_the_trusted_evaluator():
    assert eval_settings("cpu") == {"seq_len": 256, "batch_size": 16, "n_windows": 256}
    assert eval_settings("cuda")["seq_len"] == 2048
    assert eval_settings("mps")["seq_len"] == 1024
    with pytest.raises(ValueError):
        eval_settings("tpu")


# --- the hardware part of an arena: per card for time budgets, shared for token budgets ---

@pytest.mark.parametrize("capability, expected", [
    ((10, 0), "cuda"), ((9, 0), "cuda"), ((8, 9), "cuda"), ((8, 0), "cuda"),
    ((7, 5), "cuda-fp16"), ((7, 0), "cuda-fp16"), ((6, 1), "cuda-fp32"), ((5, 0), "cuda-fp32")])
def test_token_budgets_share_one_class_per_precision(capability, expected):
    assert cuda_token_class(capability) == expected


def fake_gpu(monkeypatch, name, total, capability):
    import torch
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(name=name, total_memory=total))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


@pytest.mark.parametrize("name, total, capability, time_class, tokens_class", [
    ("NVIDIA H100 80GB HBM3", 85_520_809_984, (9, 0), "nvidia-h100-80gb", "cuda"),
    ("NVIDIA H200", 150_100_000_000, (9, 0), "nvidia-h200-140gb", "cuda"),
    ("NVIDIA GeForce RTX 3070", 8_589_410_304, (8, 6), "nvidia-geforce-rtx-3070-8gb", "cuda"),
    ("Tesla T4", 15_843_721_216, (7, 5), "tesla-t4-15gb", "cuda-fp16"),
])
def test_arena_class(monkeypatch, name, total, capability, time_class, tokens_class):
    fake_gpu(monkeypatch, name, total, capability)
    assert arena_class("cuda", "time") == time_class  # wall-clock: the card itself
    assert arena_class("cuda", "tokens") == tokens_class  # tokens: every card of its precision
    assert arena_class("cpu", "tokens") == arena_class("cpu", "time") == "cpu"
    assert arena_class("mps", "tokens") == arena_class("mps", "time") == "apple-mps"
    with pytest.raises(ValueError, match="budget kind"):
        arena_class("cuda", "steps")

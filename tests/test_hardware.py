"""Device detection, hardware classes and evaluation settings."""
import pytest

from experiments.hardware import (cpu_threads, detect_device, eval_settings, gpu_class,
                                  hardware_class, profile)


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

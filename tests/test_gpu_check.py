"""bench/gpu_check.py, the script a session with a GPU runs once: on CPU it must show its
help, refuse clearly, and its edits of train.py must pass the static screen and still train."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.run.static_check import check_source
from genome import base_train_source

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


def script(*args, **kw):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, cwd=kw.get("cwd", ROOT))


def test_help_works_without_a_gpu():
    proc = script("--help")
    assert proc.returncode == 0, proc.stderr
    assert "--sizes" in proc.stdout and "set_per_process_memory_fraction" in proc.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_refuses_clearly(tmp_path):
    proc = script("--out", str(tmp_path / "out.jsonl"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr and "Nothing was run" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("size", [8.0, 141.0, None])
def test_the_edits_pass_the_static_screen(size):
    source = gpu_check.simulated_source(base_train_source(), size)
    assert check_source(source) == (True, "")
    assert source.count("set_per_process_memory_fraction(min(") == (size is not None)
    assert source.count("gpu_check_main") == source.count("gpu_check_compiled") == 1


def test_the_clock_lines_do_not_disturb_a_run(tmp_path):
    """The edited genome still trains (CPU, 2 steps) and its log gives the phases."""
    genome = ROOT / "genome"
    (tmp_path / "train.py").write_text(gpu_check.simulated_source(base_train_source(), None))
    rng = np.random.default_rng(0)
    docs = [np.concatenate([[511], rng.integers(0, 511, rng.integers(20, 300))])
            for _ in range(100)]
    np.concatenate(docs).astype(np.uint16).tofile(tmp_path / "train.bin")
    config = tmp_path / "run.json"
    config.write_text(json.dumps({
        "device": "cpu", "profile": "cpu", "budget_kind": "tokens", "budget_value": 2048,
        "seed": 0, "out_dir": str(tmp_path), "train_bin": str(tmp_path / "train.bin"),
        "vocab_size": 512, "bos_id": 511, "seq_len": 256, "threads": 1}))
    env = dict(os.environ, LOOPY_RUN_CONFIG=str(config), PYTHONPATH=str(genome))
    proc = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "train.log").write_text(proc.stdout)
    values = gpu_check.train_log_values(tmp_path, "r1")
    assert float(values["gpu_check_main"]) <= float(values["gpu_check_compiled"])
    assert values["num_steps"] == "2"


def test_sizes_and_the_report():
    assert gpu_check.parse_sizes("8, 12,full") == [8.0, 12.0, None]
    with pytest.raises(SystemExit):
        gpu_check.parse_sizes("8,huge")
    row = dict(kind="sizes", size="8 GB", budget="60s", seed=0, repeat=0, status="ok",
               reason="", arena="embedded/time:60/nvidia-h200-140gb", val_bpb=2.5, train_s=60.0,
               tokens=6e7, steps=100, total_s=120.0, peak_child_gb=5.0, card_train_gb=5.5,
               card_eval_gb=7.0, mfu="30.0", micro_batch="8", grad_accum="16",
               precision="bfloat16", compiled="compiled", prepare_s=0.1, export_s=5.0,
               eval_s=12.0, child_s=100.0, startup_s=3.0, setup_compile_s=30.0,
               after_budget_s=2.0)
    tokens = [dict(row, kind="tokens", size=size, budget="20Mtok", repeat=rep, val_bpb=bpb,
                   arena="embedded/tokens:20000000/cuda")
              for size, rep, bpb in (("8 GB", 0, 2.50), ("full", 0, 2.51), ("8 GB", 1, 2.505))]
    text = gpu_check.report([row] + tokens, "Fake GPU")
    assert "| 8 GB | ok | 8 x 16 | bfloat16 (compiled) | 30.0 |" in text
    assert "Across sizes: |delta| 0.0100; the same size twice: 0.0050" in text
    assert "| 60.0 | 50 % |" in text  # 60 s of 120 outside training

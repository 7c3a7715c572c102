"""Bad inputs through the whole harness: each ends rejected, crash or timeout with a clear
reason, never with a better score than honest, never harming the node.

The fast tests use the tiny fake genome of tests/fake_genome.py (a bigram model on 64
tokens); the slow test runs the real genome end to end with a tiny token budget.
"""
import os
import threading

import pytest

import fake_genome as fg
from experiments.harness import (ExperimentCancelled, ExperimentResult, _TrainingOutput,
                                 run_experiment, run_patch, training_wall_limit)
from experiments.budget import parse_budget
from experiments.sandbox import alive, isolation_plan
from experiments.workspace import (Workspace, copy_weights, create_workspace)
from swarm.identity import NodeIdentity
from swarm.patch import make_patch
from swarm.records import make_experiment

PLAN = isolation_plan()


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    return fg.make_genome(tmp_path_factory.mktemp("genome"))


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def run(source, home, genome, **kw):
    kw.setdefault("budget", "8ktok")
    return run_experiment(source, home=home, genome_dir=genome, device="cpu", **kw)


def check_record(result: ExperimentResult) -> dict:
    """The result map must make a valid signed experiment record, as the swarm will see it."""
    record = make_experiment(NodeIdentity.generate(), genome="0" * 16, parents=[bytes(32)],
                             topic="general", arena=result.arena, patch="", desc="test",
                             agent="test", result=result.to_record_result())
    return record.result


def runs_left(home) -> list[str]:
    runs = home / "runs"
    return sorted(p.name for r in runs.iterdir() for p in r.iterdir()) if runs.exists() else []


# --- honest runs ---------------------------------------------------------------------------


def test_honest_patch_is_scored_by_the_harness_not_by_train_py(home, genome):
    base = fg.TRAIN
    patch = make_patch(base, base.replace("LR = 0.3", "LR = 0.2"), path="genome/train.py")
    seen = []
    result = run_patch(patch, home=home, genome_dir=genome, device="cpu", budget="8ktok",
                       progress=lambda fraction, loss: seen.append((fraction, loss)))
    assert result.status == "ok", result.summary() + result.log_tail
    # train.py printed "val_bpb: 0.100000": ignored; the score is the evaluator's own.
    assert 1.0 < result.val_bpb < 6.0
    assert result.arena == "embedded/tokens:8000/cpu"
    assert result.steps == 31 and result.tokens == 31 * 8 * 32
    assert result.params == 64 * 64  # counted by the evaluator ("num_params_M: garbage")
    assert result.peak_mem_mb > 0 and 0 < result.train_s <= result.total_s
    assert seen and all(0 <= f <= 1 for f, _ in seen) and seen[-1][0] > 0.9
    record = check_record(result)
    assert set(record) == {"status", "val_bpb", "train_s", "total_s", "tokens", "steps",
                           "params", "peak_mem_mb"}
    # The workspace is cleaned up; the logs stay.
    assert runs_left(home) == ["eval.log", "train.log"]
    run_dir = next((home / "runs").iterdir())
    assert "val_bpb:          0.100000" in (run_dir / "train.log").read_text()
    assert "evaluation: ok" in (run_dir / "eval.log").read_text()
    if PLAN.netns and PLAN.mountns:
        assert {"netns", "mountns", "readonly-fs"} <= set(result.isolation)


def test_non_causal_model_is_rejected_by_the_causality_probe(home, genome):
    result = run(fg.NON_CAUSAL, home, genome)
    assert result.status == "rejected"
    assert result.reason.startswith("causality probe: logits at positions <= ")
    assert result.val_bpb is None
    assert "val_bpb" not in check_record(result)


def test_training_cannot_read_validation_data_through_an_allowed_route(home, genome):
    # make_dataloader is allowed and reads any path it is given: point it at val.bin.
    sneaky = fg.TRAIN.replace("    steps = tokens = 0\n", """    steps = tokens = 0
    val = str(run.train_bin).replace("train.bin", "val.bin")
    try:
        next(iter(make_dataloader(val, 1, 8, run.device, 0)))
        print("val readable: True", flush=True)
    except Exception as e:
        print(f"val readable: False ({type(e).__name__})", flush=True)
""")
    assert sneaky != fg.TRAIN
    result = run(sneaky, home, genome, keep_workspace=True)
    log = next((home / "runs").iterdir()).joinpath("train.log").read_text()
    if not PLAN.mountns:
        pytest.skip(f"no mount namespace here: {PLAN.notes}")
    assert "val readable: False" in log
    assert result.status == "ok"


# --- cheats and failures -------------------------------------------------------------------


def test_printed_score_is_ignored_even_when_training_fails(home, genome):
    result = run(fg.NO_WEIGHTS, home, genome)  # prints "val_bpb: 0.01", saves no weights
    assert result.status == "crash"
    assert result.reason == "train.py exited normally but saved no out/model.pt"
    assert result.val_bpb is None


def test_never_ending_training_times_out_and_leaves_no_process(home, genome):
    forever = fg.NEVER_ENDS.replace('print("training forever", flush=True)',
                                    'print("progress: 0.0 loss: 1.0", flush=True)')
    pids = []

    def find_children(fraction, loss):  # runs while the child lives: find it by its cwd
        for name in os.listdir("/proc"):
            try:
                if name.isdigit() and os.readlink(f"/proc/{name}/cwd").startswith(str(home)):
                    pids.append(int(name))
            except OSError:
                pass

    result = run(forever, home, genome, wall_limit_s=3, progress=find_children)
    assert result.status == "timeout"
    assert "wall limit of 3 s" in result.reason and "process group killed" in result.reason
    assert pids, "the training child was never seen: the test would prove nothing"
    assert not any(alive(pid) for pid in pids)
    check_record(result)


def test_exception_is_a_crash_with_the_tracebacks_last_line(home, genome):
    result = run(fg.RAISES, home, genome)
    assert result.status == "crash"
    assert result.reason == "train.py exited with status 1: RuntimeError: loss exploded at step 3"
    assert "Traceback" in result.log_tail


def test_unbounded_memory_is_killed(home, genome):
    result = run(fg.MEMORY_HOG, home, genome, mem_limit_mb=300)
    assert result.status == "crash"
    assert "memory limit of 300 MB" in result.reason


@pytest.mark.parametrize("attack, reason", [
    ("data = open(str(run.train_bin).replace('train.bin', 'val.bin'), 'rb').read()\n",
     "use of 'open' is not allowed"),
    ("import socket\nsocket.create_connection(('127.0.0.1', 22))\n",
     "import of 'socket' is not allowed"),
    ("import subprocess\nsubprocess.run(['curl', 'http://evil'])\n",
     "import of 'subprocess' is not allowed"),
    ("F.cross_entropy = lambda logits, y, **k: torch.zeros(())\n",
     "assignment to 'F.cross_entropy' (an attribute of an imported module or object)"),
    ("torch.Tensor.log_softmax = lambda self, dim: self * 0\n",
     "assignment to 'torch.Tensor.log_softmax'"),
    ("import os\nos.kill(1, 9)\n", "'os.kill' is not allowed"),
])
def test_static_attacks_are_rejected_before_anything_runs(home, genome, attack, reason):
    source = fg.TRAIN.replace("def main():\n", "def main():\n    run = run_config()\n" +
                              "".join("    " + line + "\n" for line in attack.splitlines()), 1)
    result = run(source, home, genome)
    assert result.status == "rejected"
    assert result.reason.startswith("static check: line ")
    assert reason in result.reason
    assert not (home / "runs").exists()  # nothing ran, not even a workspace
    check_record(result)


def test_patch_that_touches_another_file_is_rejected(home, genome):
    patch = make_patch("x = 1\n", "x = 2\n", path="genome/prepare.py")
    result = run_patch(patch, home=home, genome_dir=genome, device="cpu")
    assert result.status == "rejected"
    assert result.reason.startswith("patch: ") and "only train.py may change" in result.reason
    assert not (home / "runs").exists()


def test_patch_that_does_not_apply_is_rejected(home, genome):
    patch = make_patch("LR = 0.5\n", "LR = 0.6\n", path="train.py")
    result = run_patch(patch, home=home, genome_dir=genome, device="cpu")
    assert result.status == "rejected"
    assert result.reason.startswith("patch does not apply: ")
    assert not (home / "runs").exists()


def test_cancel_raises_and_cleans_up(home, genome):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(ExperimentCancelled):
        run(fg.NEVER_ENDS, home, genome, cancel=cancel)
    assert runs_left(home) == ["train.log"]


def test_bad_arguments_are_errors_not_results(home, genome):
    with pytest.raises(ValueError, match="budget"):
        run(fg.TRAIN, home, genome, budget="lots")
    with pytest.raises(ValueError, match="device"):
        run_experiment(fg.TRAIN, home=home, genome_dir=genome, device="tpu")
    with pytest.raises(ValueError, match="seed"):
        run(fg.TRAIN, home, genome, seed=-1)


# --- pieces ----------------------------------------------------------------------------------


def test_summary_parsing_is_defensive(tmp_path):
    from experiments.workspace import LogFile

    calls = []
    out = _TrainingOutput(LogFile(tmp_path / "log"), lambda f, l: calls.append((f, l)))
    for line in ["progress: 0.5 loss: 3.25 step: 7", "progress: 1.5 loss: 2.0",
                 "progress: nan loss: 1",
                 "progress: 0.7 loss: inf", "---", "val_bpb: 0.0001", "training_seconds: inf",
                 "num_steps: 12abc", "total_tokens_M: -5", "num_params_M: 1e400",
                 "peak_vram_mb: 123.5", "mfu_percent:   7.5   "]:
        out(line)
    assert calls == [(0.5, 3.25), (0.7, None)]
    assert out.number("training_seconds") is None
    assert out.integer("num_steps") is None
    assert out.integer("total_tokens_M", 1e6) is None
    assert out.integer("num_params_M", 1e6) is None
    assert out.number("peak_vram_mb") == 123.5
    assert out.number("mfu_percent") == 7.5
    assert out.number("missing") is None


def test_wall_limits():
    assert training_wall_limit(parse_budget("60s"), "cpu") == pytest.approx(30 + 66)
    assert training_wall_limit(parse_budget("300s"), "cuda") == pytest.approx(150 + 330)
    # Token budgets: a generous cap, 25x the typical time on the device, at least 3 minutes.
    expected = 30 + 25 * 300_000 / 7000
    assert training_wall_limit(parse_budget("300ktok"), "cpu") == pytest.approx(expected)
    assert training_wall_limit(parse_budget("1ktok"), "cpu") == pytest.approx(30 + 180)


CONFIG = {"device": "cpu", "profile": "cpu", "budget_kind": "tokens", "budget_value": 100,
          "seed": 0, "train_bin": "x", "vocab_size": 64, "bos_id": 0, "seq_len": 32, "threads": 1}


def _workspace(tmp_path, genome) -> Workspace:
    return create_workspace(tmp_path / "home", "print(1)\n", genome / "prepare.py", CONFIG)


def test_weights_are_copied_only_from_a_plain_file(tmp_path, genome):
    ws = _workspace(tmp_path, genome)
    with pytest.raises(FileNotFoundError):
        copy_weights(ws, tmp_path / "a.pt")
    secret = tmp_path / "secret"
    secret.write_bytes(b"node key")
    (ws.out_dir / "model.pt").symlink_to(secret)
    with pytest.raises(ValueError, match="cannot be opened safely"):
        copy_weights(ws, tmp_path / "b.pt")
    (ws.out_dir / "model.pt").unlink()
    os.link(secret, ws.out_dir / "model.pt")
    with pytest.raises(ValueError, match="hard link"):
        copy_weights(ws, tmp_path / "c.pt")
    (ws.out_dir / "model.pt").unlink()
    os.mkfifo(ws.out_dir / "model.pt")
    with pytest.raises(ValueError, match="not a regular file"):
        copy_weights(ws, tmp_path / "d.pt")
    (ws.out_dir / "model.pt").unlink()
    ws.out_dir.rmdir()
    ws.out_dir.symlink_to(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"weights")
    with pytest.raises(ValueError, match="cannot be opened safely"):
        copy_weights(ws, tmp_path / "e.pt")
    ws.out_dir.unlink()
    ws.out_dir.mkdir()
    (ws.out_dir / "model.pt").write_bytes(b"weights")
    with pytest.raises(ValueError, match="over the 3-byte limit"):
        copy_weights(ws, tmp_path / "f.pt", max_bytes=3)
    copy_weights(ws, tmp_path / "g.pt")
    assert (tmp_path / "g.pt").read_bytes() == b"weights"


def test_workspace_layout(tmp_path, genome):
    ws = _workspace(tmp_path, genome)
    names = sorted(p.name for p in ws.work.iterdir())
    assert names == ["out", "prepare.py", "run.json", "train.py"]
    assert (ws.work / "prepare.py").read_bytes() == (genome / "prepare.py").read_bytes()
    with pytest.raises(ValueError, match="run id"):
        create_workspace(tmp_path, "x", genome / "prepare.py", CONFIG, run_id="../evil")
    with pytest.raises(ValueError, match="run config lacks"):
        create_workspace(tmp_path, "x", genome / "prepare.py", {})


# --- the real genome --------------------------------------------------------------------------


@pytest.mark.slow
def test_real_genome_end_to_end(tmp_path):
    from genome import base_train_source

    result = run_experiment(base_train_source(), home=tmp_path / "home", device="cpu",
                            budget="8192tok", seed=1, wall_limit_s=900)
    assert result.status == "ok", result.summary() + "\n" + result.log_tail
    assert 1.0 < result.val_bpb < 20.0
    assert result.tokens == 8192 and result.steps == 8  # the cpu profile's batch: 4 x 256
    assert result.params > 1_000_000
    check_record(result)

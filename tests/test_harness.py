"""Bad inputs through the whole harness: each ends rejected, crash or timeout with a clear
reason, or ok with an honest score, never harming the node.

The fast tests use the tiny fake genome of tests/fake_genome.py (a bigram model on the
real prepare.py with a 300-token vocabulary); the slow test runs the real genome end to
end with a tiny token budget. None of the attacks relies on the static screen: each
class is written so that the screen lets it through (see test_attacks_pass_the_screen).
"""
import ast
import os
import textwrap
import threading

import pytest

import fake_genome as fg
from experiments.run.harness import (ExperimentCancelled, ExperimentResult, _TrainingOutput,
                                 run_experiment, run_patch, training_wall_limit)
from experiments.run import model_stages
from experiments.run.budget import parse_budget
from experiments.run.sandbox import alive, isolation_plan
from experiments.run.workspace import (Workspace, copy_weights, create_workspace)
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
    assert result.steps == 31 and result.tokens == 31 * 8 * 32  # the feed's count
    assert result.params == 300 * 300  # counted by the evaluator ("num_params_M: garbage")
    assert result.peak_mem_mb > 0 and 0 < result.train_s <= result.total_s
    assert seen and all(0 <= f <= 1 for f, _ in seen) and seen[-1][0] > 0.9
    record = check_record(result)
    assert set(record) == {"status", "val_bpb", "train_s", "total_s", "tokens", "steps",
                           "params", "peak_mem_mb"}
    # The workspace is cleaned up; the logs stay.
    assert runs_left(home) == ["eval.log", "export.log", "train.log"]
    run_dir = next((home / "runs").iterdir())
    assert "val_bpb:          0.100000" in (run_dir / "train.log").read_text()
    assert "evaluation: ok" in (run_dir / "eval.log").read_text()
    if PLAN.complete:
        assert {"netns", "mountns", "readonly-fs", "allowlist-root"} <= set(result.isolation)
        assert "isolation" not in record


def test_non_causal_model_is_rejected_by_the_causality_probe(home, genome):
    result = run(fg.NON_CAUSAL, home, genome)
    assert result.status == "rejected"
    assert "causality" in result.reason
    assert result.val_bpb is None
    assert "val_bpb" not in check_record(result)


PEEK = textwrap.dedent("""
    seen = {}
    for path in TARGETS:
        try:
            with open(path, "rb") as f:
                seen[path] = len(f.read(16))
        except OSError as e:
            seen[path] = type(e).__name__
    print("peek:", seen, flush=True)
""")


def _peek_targets(home, genome):
    data = home / "data" / "embedded"
    return [str(data / name) for name in ("val.bin", "test.bin", "train.bin", "tokenizer.pkl")] + [
        str(genome / "data" / "embedded-val.jsonl.xz"), str(home / "identity.key"),
        str(fg.REAL_PREPARE.parent / "data" / "embedded-val.jsonl.xz"),
        str(fg.REAL_PREPARE.parent.parent / "experiments" / "run" / "evaluate_child.py")]


def _with_peek(source, where, targets):
    code = "TARGETS = " + repr(targets) + "\n" + PEEK
    indent = "    " if where.startswith("    ") or where.endswith(":\n") else ""
    body = "".join(indent + line + "\n" for line in code.strip("\n").splitlines())
    return source.replace(where, where + body, 1)


@pytest.fixture
def no_screen(monkeypatch):
    """Turn the static screen off: the defences under test must hold without it."""
    import experiments.run.harness as harness
    monkeypatch.setattr(harness, "check_source", lambda source: (True, ""))


def test_training_and_export_see_no_data_and_no_checkout(home, genome, no_screen):
    if not PLAN.complete:
        pytest.skip(f"no full isolation here: {PLAN.notes}")
    run(fg.TRAIN, home, genome)  # prepare the data first, so that every target exists
    (home / "identity.key").write_bytes(b"secret")
    targets = _peek_targets(home, genome)
    assert all(os.path.exists(t) for t in targets)
    sneaky = _with_peek(fg.TRAIN, "    run = run_config()\n", targets)
    sneaky = _with_peek(sneaky, "def build_model(run):\n", targets)
    result = run(sneaky, home, genome)
    assert result.status == "ok", result.reason
    logs = [p.read_text() for p in sorted((home / "runs").glob("*/t*.log"))[-1:]]
    logs += [p.read_text() for p in sorted((home / "runs").glob("*/export.log"))[-1:]]
    peeks = [line for log in logs for line in log.splitlines() if line.startswith("peek:")]
    assert len(peeks) >= 2, logs  # the training child and the export child both looked
    for line in peeks:
        seen = ast.literal_eval(line.split(":", 1)[1].strip())
        assert set(seen) == set(targets)
        assert all(isinstance(v, str) for v in seen.values()), seen  # errors, no bytes


# --- the classes of attack, each without the static screen ---------------------------------

LOOP = "    for x, y in make_dataloader(run.train_bin, 8, 32, run.device, run.seed):\n"


def test_more_tokens_than_the_budget_cannot_be_had(home, genome, no_screen):
    # Ask again and again, with new loaders and other shapes, and lie about the count.
    greedy = fg.TRAIN.replace(LOOP, """    batches = []
    for shape in ((8, 32), (8, 32), (1, 8), (2, 4)):
        batches += list(make_dataloader(run.train_bin, *shape, run.device, run.seed))
    print(f"got: {sum(x.numel() for x, _ in batches)}", flush=True)
    for x, y in batches:
""")
    assert "got: " in greedy.replace('print(f"total_tokens_M:   {tokens / 1e6:.6f}")', 'print("total_tokens_M:   99.0")')
    assert greedy != fg.TRAIN
    result = run(greedy, home, genome, budget="8ktok")
    assert result.status == "ok", result.reason
    assert result.tokens == 31 * 8 * 32 and result.steps == 31  # the feed's count
    log = next((home / "runs").iterdir()).joinpath("train.log").read_text()
    assert f"got: {31 * 8 * 32}" in log


def test_training_past_a_time_budget_is_stopped(home, genome, no_screen):
    # Keeps the batches it was served and trains on them again after the data ends.
    hoarder = fg.TRAIN.replace(LOOP, """    kept = []
    for x, y in make_dataloader(run.train_bin, 8, 32, run.device, run.seed):
        kept.append((x, y))
    for x, y in itertools.cycle(kept):
""").replace("import time\n", "import itertools\nimport time\n", 1)
    assert hoarder.count("kept.append") == 1
    result = run(hoarder, home, genome, budget="2s")
    assert result.status == "timeout"
    assert "did not exit within" in result.reason and "end of its budget" in result.reason
    assert result.train_s <= 2.5


def test_startup_time_does_not_count_as_training(home, genome, no_screen):
    slow_start = fg.TRAIN.replace("    model = build_model(run)\n",
                                  "    model = build_model(run)\n    time.sleep(3)\n")
    result = run(slow_start, home, genome, budget="1s")
    assert result.status == "ok", result.reason
    assert 0.9 <= result.train_s <= 1.5  # from the first batch, by the feed's clock


def test_code_run_at_export_cannot_reach_the_verdict(home, genome, no_screen):
    honest = run(fg.TRAIN, home, genome)
    assert honest.status == "ok"
    # Imported by the export child: tries every way it knows to the evaluator's files.
    forger = fg.TRAIN.replace("def build_model(run):\n", """def build_model(run):
    import glob, json, os
    fake = json.dumps({"status": "ok", "val_bpb": 0.01, "params": 1})
    for pattern in ("../eval", "../eval/result.json", "/proc/*/cwd/result.json",
                    str(run.out_dir) + "/../../eval/result.json"):
        for path in glob.glob(pattern) or [pattern]:
            try:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                with open(path, "w") as f:
                    f.write(fake)
            except OSError:
                pass
""")
    result = run(forger, home, genome)
    assert result.status == "ok", result.reason
    # the same program's honest score (to float32 rounding of multi-threaded reductions)
    assert result.val_bpb == pytest.approx(honest.val_bpb, rel=1e-6, abs=0)


@pytest.mark.parametrize("forward, why", [
    ("        return self.table(idx) + torch.rand(1)\n", "rand"),
    ("        self.calls += 1\n        return self.table(idx) * self.calls\n", "state"),
])
def test_models_that_are_not_pure_functions_are_rejected(home, genome, no_screen, forward, why):
    source = fg.TRAIN.replace("        return self.table(idx)\n", forward)
    if why == "state":
        source = source.replace("        self.table = nn.Embedding(vocab, vocab)\n",
                                "        self.table = nn.Embedding(vocab, vocab)\n"
                                "        self.register_buffer('calls', torch.zeros(()))\n")
    result = run(source, home, genome)
    assert result.status == "rejected", (result.status, result.reason)
    assert "graph" in result.reason or "export" in result.reason


def test_evaluator_started_beside_a_failed_export_ends_without_a_verdict(home, genome,
                                                                         no_screen):
    # the evaluation child starts while the export runs; an export that fails must end it
    source = fg.TRAIN.replace("        return self.table(idx)\n",
                              "        return self.table(idx) + torch.rand(1)\n")
    result = run(source, home, genome)
    assert result.status == "rejected" and "export" in result.reason
    assert runs_left(home) == ["eval.log", "export.log", "train.log"]  # nothing else stays
    eval_log = (next((home / "runs").iterdir()) / "eval.log").read_text()
    assert "nothing to evaluate" in eval_log and "evaluation: ok" not in eval_log


def test_export_child_waiting_beside_a_failed_training_ends_on_its_own(home, genome):
    # the export child starts with training; a training that fails must end it unasked
    result = run(fg.RAISES, home, genome)
    assert result.status == "crash"
    assert runs_left(home) == ["export.log", "train.log"]
    log = (next((home / "runs").iterdir()) / "export.log").read_text()
    assert "export aborted: no trained model to export" in log


def test_export_time_runs_from_its_go_and_is_all_a_program_gets(home, genome, no_screen,
                                                                monkeypatch):
    """Computing after the budget (training on batches stashed in the weights, say) in the
    export child gets EXPORT_WALL_LIMIT_S, then a timeout; a training longer than that
    limit does not eat into it, since the export's clock starts when it is handed the
    weights."""
    monkeypatch.setitem(model_stages.EXPORT_WALL_LIMIT_S, "cpu", 8.0)
    slow_start = fg.TRAIN.replace("    model = build_model(run)\n",
                                  "    model = build_model(run)\n    time.sleep(10)\n")
    honest = run(slow_start, home, genome)
    assert honest.status == "ok", honest.reason
    assert honest.timings["export"] < 8.0
    keeps_going = fg.TRAIN.replace("def build_model(run):\n", """def build_model(run):
    if __name__ != "__main__":  # imported by the export child, after the budget
        while True:
            pass
""")
    result = run(keeps_going, home, genome)
    assert result.status == "timeout", (result.status, result.reason)
    assert result.reason == "exporting the model ran past 8 s"
    assert 8.0 <= result.timings["export"] < 60


def test_held_out_test_score_is_measured_on_request(home, genome):
    first = run(fg.TRAIN, home, genome, test_seed=1)
    again = run(fg.TRAIN, home, genome, test_seed=1)
    other = run(fg.TRAIN, home, genome, test_seed=2)
    assert first.status == "ok" and first.test_bpb is not None
    assert first.test_bpb == again.test_bpb != other.test_bpb  # the seed draws the windows
    # the windows change nothing else: the same training, the same validation score (to
    # float32 rounding: multi-threaded CPU reductions need not add in one order)
    assert first.val_bpb == pytest.approx(other.val_bpb, rel=1e-6, abs=0)
    assert abs(first.test_bpb - other.test_bpb) > 1e-4
    assert run(fg.TRAIN, home, genome).test_bpb is None


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
    assert runs_left(home) == ["export.log", "train.log"]  # the export child was ended too


def test_bad_arguments_are_errors_not_results(home, genome):
    with pytest.raises(ValueError, match="budget"):
        run(fg.TRAIN, home, genome, budget="lots")
    with pytest.raises(ValueError, match="device"):
        run_experiment(fg.TRAIN, home=home, genome_dir=genome, device="tpu")
    with pytest.raises(ValueError, match="seed"):
        run(fg.TRAIN, home, genome, seed=-1)


# --- pieces ----------------------------------------------------------------------------------


def test_summary_parsing_is_defensive(tmp_path):
    from experiments.run.workspace import LogFile

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
    # Time budgets: startup + budget + the short end grace (the feed's deadlines bite first).
    assert training_wall_limit(parse_budget("60s"), "cpu") == pytest.approx(30 + 60 * 1.02 + 10)
    assert training_wall_limit(parse_budget("300s"), "cuda") == pytest.approx(150 + 306 + 10)
    # Token budgets: a generous cap, 25x the typical time on the device, at least 3 minutes.
    expected = 30 + 25 * 300_000 / 7000
    assert training_wall_limit(parse_budget("300ktok"), "cpu") == pytest.approx(expected)
    assert training_wall_limit(parse_budget("1ktok"), "cpu") == pytest.approx(30 + 180)


CONFIG = {"device": "cpu", "profile": "cpu", "budget_kind": "tokens", "budget_value": 100,
          "seed": 0, "train_bin": "x", "vocab_size": 64, "bos_id": 0, "seq_len": 32, "threads": 1,
          "feed_fds": None}


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


def test_an_oversized_graph_is_not_copied(tmp_path, monkeypatch):
    """graph.json has the evaluator's own limit, far under the weights': a bigger one is
    refused before the node copies it."""
    from experiments.run import workspace
    monkeypatch.setattr(workspace, "MAX_GRAPH_BYTES", 100)
    src = tmp_path / "out"
    src.mkdir()
    (src / "graph.json").write_bytes(b"{" + b" " * 200 + b"}")
    (src / "weights.safetensors").write_bytes(b"x" * 1000)
    with pytest.raises(ValueError):
        workspace.copy_model_files(src, tmp_path / "eval")
    (src / "graph.json").write_bytes(b"{}")
    workspace.copy_model_files(src, tmp_path / "eval2")  # the weights may be larger


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

"""The two stages after training: the trained model becomes a graph (the untrusted export
child), and trusted code scores it (the evaluation child).

    export = ExportChild(ws, ...)          # starts with training: torch loads meanwhile
    ... the training child runs ...
    evaluation = EvaluationChild(...)      # starts now: its start-up overlaps the export
    exported = export.go()                 # the weights are in place: export them (no GPU)
    verdict, log_tail = evaluation.go()    # the graph is in place: score it
    export.close(); evaluation.close()     # always: ends a child that got no go

The export child runs the candidate's build_model, so it is sandboxed like training; the
evaluation child never imports, executes or unpickles anything the candidate wrote.
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from experiments.run import evaluate_child, export_child, model_graph
from experiments.run.hardware import eval_settings
from experiments.run.sandbox import DEFAULT_DISK_LIMIT_MB, run_sandboxed
from experiments.run.workspace import (MAX_WEIGHTS_BYTES, LogFile, copy_model_files,
                                       copy_weights, prepare_export_dir)
from swarm.records import MAX_REASON

# From the export child's go: the computing time a program gets after its budget.
EXPORT_WALL_LIMIT_S = {"cpu": 30.0, "cuda": 120.0, "mps": 120.0}
EVAL_WALL_LIMIT_S = {"cpu": 300.0, "cuda": 600.0, "mps": 600.0}
EVAL_CHILD = Path(evaluate_child.__file__).resolve()
EXPORT_CHILD = Path(export_child.__file__).resolve()
MODEL_GRAPH = Path(model_graph.__file__).resolve()
MAX_RESULT_BYTES = 64 * 1024
_ERROR_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Exhausted)\b.*|FAIL:.*")


class EvaluationError(RuntimeError):
    """The trusted evaluator failed on its own: a node problem, never the candidate's result."""


class ExperimentCancelled(RuntimeError):
    """The caller's cancel event stopped the experiment: there is no result to record."""


def _last_error_line(log_tail: str) -> str:
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.fullmatch(line):
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


def _child_env(threads: int, run_config: Path | None = None,
               pythonpath: Path | None = None) -> dict:
    # PASSIVE: OpenMP threads sleep instead of spinning at barriers: on a machine with
    # other work, spinning threads wait for each other's time slices (docs/LOG.md).
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OMP_WAIT_POLICY": "PASSIVE"}
    if run_config is not None:
        env["LOOPY_RUN_CONFIG"] = str(run_config)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


@dataclass
class _Exported:
    status: str
    reason: str = ""
    graph_dir: Path | None = None
    log_tail: str = ""


class ExportChild:
    """The untrusted export child, started together with the training child.

    Its interpreter, torch and the exporter load while training runs; then it waits on a
    pipe. `go()` copies the trained weights in, lets it run the candidate's build_model and
    the export, and returns the result: the export has EXPORT_WALL_LIMIT_S from the go, so
    a program gets only that much computing time after its budget, and no GPU. `close()`
    (always called) ends a child that never got its go (training failed), and waits."""

    def __init__(self, ws, source: str, trusted_prepare_py: Path, run_config: dict,
                 settings: dict, threads: int, mem_limit: int, device: str, cancel,
                 wait_limit: float):
        self.ws, self.device = ws, device
        self.dir = ws.root / "export"
        self.limit = EXPORT_WALL_LIMIT_S[device]
        prepare_export_dir(ws, self.dir, source, trusted_prepare_py,
                           dict(run_config, device="cpu", feed_fds=None,
                                out_dir=str(self.dir / "out")))
        spec = {"train_py": str(self.dir / "train.py"), "prepare_py": str(self.dir / "prepare.py"),
                "run_config": str(self.dir / "run.json"), "model_pt": str(self.dir / "model.pt"),
                "out_dir": str(self.dir / "out"), "batch_size": settings["batch_size"],
                "seq_len": settings["seq_len"]}
        with open(self.dir / "export.json", "x", encoding="utf-8") as f:
            json.dump(spec, f)
        env = _child_env(threads, self.dir / "run.json", self.dir)
        env["CUDA_VISIBLE_DEVICES"] = ""
        read_end, self._go = os.pipe()
        self._went: float | None = None
        self._child = self._error = None
        log = LogFile(ws.export_log)
        read_end_open = [True]

        def close_read_end() -> None:  # ours, once the child holds its copy
            if read_end_open[0]:
                read_end_open[0] = False
                os.close(read_end)

        def deadline() -> float | None:
            return None if self._went is None else self._went + self.limit

        def run() -> None:
            try:
                self._child = run_sandboxed(
                    [sys.executable, "-I", str(EXPORT_CHILD), str(self.dir / "export.json"),
                     "--go-fd", str(read_end)],
                    cwd=self.dir, env=env, wall_limit_s=wait_limit + self.limit,
                    deadline=deadline, mem_limit_mb=mem_limit,
                    reveal_paths=[EXPORT_CHILD, MODEL_GRAPH], pass_fds=(read_end,),
                    on_start=close_read_end,
                    rlimit_as_mb=mem_limit + 4096 if device == "cpu" else None,
                    on_line=log.write, cancel=cancel)
            except BaseException as e:  # re-raised by go() or close() in the owner's thread
                self._error = e
            finally:
                close_read_end()
                log.close()

        self._thread = threading.Thread(target=run, name="export-child", daemon=True)
        self._thread.start()

    def go(self) -> _Exported:
        """Export the weights the training child saved; the graph lands in ws.eval_dir."""
        try:
            copy_weights(self.ws, self.dir / "model.pt")
        except FileNotFoundError:
            self.close()
            return _Exported("crash", "train.py exited normally but saved no out/model.pt")
        except ValueError as e:
            self.close()
            return _Exported("rejected", str(e))
        self._went = time.monotonic()
        try:
            os.write(self._go, b"g")
        except OSError:
            pass  # the child is gone already: its exit says why
        self.close()
        child = self._child
        if child.cancelled:
            raise ExperimentCancelled("cancelled during export")
        if child.timed_out:
            return _Exported("timeout", f"exporting the model ran past {self.limit:.0f} s",
                             log_tail=child.log_tail)
        if child.disk_exceeded:
            return _Exported("crash", f"the export wrote more than {DEFAULT_DISK_LIMIT_MB} MB "
                                      f"(or too many files) to its directory",
                             log_tail=child.log_tail)
        if child.mem_exceeded or child.returncode != 0:
            why = "exceeded the memory limit" if child.mem_exceeded else \
                _last_error_line(child.log_tail)
            return _Exported("rejected", f"the trained model cannot be exported as a graph of "
                                         f"standard operators: {why}", log_tail=child.log_tail)
        try:
            graph_dir = copy_model_files(self.dir / "out", self.ws.eval_dir)
        except FileNotFoundError as e:
            return _Exported("crash", f"the export wrote no model: {e}", log_tail=child.log_tail)
        except ValueError as e:
            return _Exported("rejected", str(e), log_tail=child.log_tail)
        return _Exported("ok", graph_dir=graph_dir, log_tail=child.log_tail)

    def close(self) -> None:
        """Without a go, the child exits on EOF; wait for it either way."""
        if self._go is not None:
            os.close(self._go)
            self._go = None
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class EvaluationChild:
    """The trusted evaluation child, started before its graph exists.

    Making one launches it (from a thread that owns the sandboxed process) while the
    export still runs, so its start-up (interpreter, torch, tokenizer) overlaps the export; it
    then waits on a pipe. `go()` tells it the graph is in `graph_dir` and returns the
    verdict; `close()` (always called) ends a child that never got its go, and waits for
    it. The spec, with the nonce and the probe seed, travels on that pipe, never in a
    file."""

    def __init__(self, log_path: Path, graph_dir: Path, data, trusted_prepare_py: Path,
                 device: str, profile: str, threads: int, mem_limit: int, limit: float,
                 cancel, test_seed: int | None):
        self.limit, self.mem_limit = limit, mem_limit
        self._nonce = secrets.token_hex(16)
        self._result_path = graph_dir / "result.json"
        read_end, self._go = os.pipe()
        spec = {"nonce": self._nonce, "result_path": str(self._result_path),
                "trusted_prepare": str(trusted_prepare_py), "graph_dir": str(graph_dir),
                "val_bin": str(data.val_bin), "tokenizer": str(data.tokenizer),
                "device": device, "profile": profile, "threads": threads,
                "probe_seed": secrets.randbits(63), "max_weight_bytes": MAX_WEIGHTS_BYTES}
        # Every evaluation checks a few held-out test windows (val text carried in the
        # model); a verification asks for a full set, with its own seed, and gets test_bpb.
        if test_seed is not None:
            spec["test"] = {"seed": int(test_seed),
                            "n_windows": eval_settings(profile)["n_windows"]}
        else:
            spec["test"] = {"seed": secrets.randbits(63),
                            "n_windows": evaluate_child.CHECK_WINDOWS}
        spec["test_bin"] = str(data.test_bin)
        graph_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        encoded = json.dumps(spec).encode()
        # the whole spec fits the pipe's buffer (64 KiB), so this write never blocks
        os.write(self._go, b"%08d" % len(encoded) + encoded)
        sidecar = data.tokenizer.with_name(data.tokenizer.name + ".sha256")
        reveal = [EVAL_CHILD, MODEL_GRAPH, trusted_prepare_py, data.val_bin, data.test_bin,
                  data.tokenizer, sidecar]
        self._log = LogFile(log_path)
        self._child = self._error = None

        read_end_open = [True]

        def close_read_end() -> None:  # ours, once the child holds its copy
            if read_end_open[0]:
                read_end_open[0] = False
                os.close(read_end)

        def run() -> None:
            try:
                self._child = run_sandboxed(
                    [sys.executable, "-I", str(EVAL_CHILD), "--fd", str(read_end)],
                    cwd=graph_dir,
                    env=_child_env(threads), wall_limit_s=limit, mem_limit_mb=mem_limit,
                    reveal_paths=[p for p in reveal if Path(p).exists()],
                    pass_fds=(read_end,), on_start=close_read_end,
                    rlimit_as_mb=mem_limit + 4096 if device == "cpu" else None,
                    on_line=self._log.write, cancel=cancel)
            except BaseException as e:  # re-raised by go() or close() in the owner's thread
                self._error = e
            finally:
                close_read_end()
                self._log.close()

        self._thread = threading.Thread(target=run, name="evaluation-child", daemon=True)
        self._thread.start()

    def _join(self) -> None:
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def go(self) -> tuple[dict, str]:
        """The verdict on the graph now in place: ({'status', 'reason'|'val_bpb', ...}, tail)."""
        try:
            os.write(self._go, b"g")
        except OSError:
            pass  # the child is gone already: its result says why
        self._close_pipe()
        self._join()
        child = self._child
        if child.cancelled:
            raise ExperimentCancelled("cancelled during evaluation")
        if child.timed_out:
            reason = f"evaluation ran past its wall limit of {self.limit:.0f} s"
            return {"status": "timeout", "reason": reason}, child.log_tail
        if child.mem_exceeded:
            reason = f"evaluation exceeded the memory limit of {self.mem_limit} MB"
            return {"status": "crash", "reason": reason}, child.log_tail
        if child.disk_exceeded:
            return {"status": "crash", "reason": f"evaluation wrote more than "
                                                 f"{DEFAULT_DISK_LIMIT_MB} MB to its directory"}, \
                child.log_tail
        verdict = _read_verdict(self._result_path, self._nonce)
        if verdict is None or child.returncode != 0:
            return {"status": "crash", "reason": f"evaluation crashed (status "
                                                 f"{child.returncode}): "
                                                 f"{_last_error_line(child.log_tail)}"}, \
                child.log_tail
        if verdict["status"] == "error":
            raise EvaluationError(f"the trusted evaluator failed: {verdict['reason']}; "
                                  f"log tail:\n{child.log_tail[-2000:]}")
        return verdict, child.log_tail

    def _close_pipe(self) -> None:
        if self._go is not None:
            os.close(self._go)
            self._go = None

    def close(self) -> None:
        """Without a go, the child exits on EOF; wait for it either way."""
        self._close_pipe()
        self._thread.join()


def evaluate_graph(log_path: Path, graph_dir: Path, data, trusted_prepare_py: Path,
                   device: str, profile: str, threads: int, mem_limit: int, limit: float,
                   cancel, test_seed: int | None) -> tuple[dict, str]:
    """Evaluate a graph already in `graph_dir`: (verdict dict, log tail)."""
    child = EvaluationChild(log_path, graph_dir, data, trusted_prepare_py, device, profile,
                             threads, mem_limit, limit, cancel, test_seed)
    try:
        return child.go()
    finally:
        child.close()


def _read_verdict(path: Path, nonce: str) -> dict | None:
    """The evaluation child's result, if it is well formed and carries this run's nonce."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        raw = os.read(fd, MAX_RESULT_BYTES + 1)
    finally:
        os.close(fd)
    try:
        result = json.loads(raw) if len(raw) <= MAX_RESULT_BYTES else None
    except ValueError:
        return None
    if not isinstance(result, dict) or not isinstance(result.get("nonce"), str):
        return None
    if not secrets.compare_digest(result["nonce"], nonce):
        return None
    status = result.get("status")
    params = result.get("params")
    if not (isinstance(params, int) and not isinstance(params, bool) and params >= 0):
        params = None
    if status == "ok":
        bpb, test = result.get("val_bpb"), result.get("test_bpb")
        if not (isinstance(bpb, float) and math.isfinite(bpb) and bpb > 0):
            return None
        if test is not None and not (isinstance(test, float) and math.isfinite(test) and test > 0):
            return None
        return {"status": "ok", "val_bpb": bpb, "test_bpb": test, "params": params}
    if status in ("rejected", "crash", "error"):
        reason = result.get("reason")
        reason = reason[:MAX_REASON] if isinstance(reason, str) and reason else status
        return {"status": status, "reason": reason, "params": params}
    return None

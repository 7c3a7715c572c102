"""Run one experiment safely: static check -> training -> export -> evaluation -> result.

    result = run_experiment(source, home=home)             # a whole train.py
    result = run_patch(patch_text, home=home)              # an edit of the base genome
    result.status, result.val_bpb, result.to_record_result()

The boundary (DESIGN.md, "Experiments: running one edit safely"): candidate code never
shares a process with the validation data or the verdict.
1. Static check (experiments/run/static_check.py): train.py only, size limit, AST screen.
   Failures are `rejected` with the reason; nothing runs. The screen is a first filter,
   not the defence: everything below holds for a program that passes it.
2. Data: the trusted genome/prepare.py prepares (or finds cached) tokenizer and the
   train, val and test token files, in the node's home; a downloaded dataset's shards
   are fetched by genome/download.py, which the children never need.
3. Training child, `python train.py` in a fresh workspace (experiments/run/workspace.py),
   sandboxed (experiments/run/sandbox.py): it sees its workspace, the interpreter and
   nothing else; no network. Its tokens come over a pipe from the harness's data feed
   (experiments/run/data_feed.py), which counts the budget: exactly the token budget, or
   batches until `budget` seconds after the first one; then the child has a short grace
   to save its weights, and is killed after it. train_s, tokens and steps (batches
   served) are the feed's measurements; what the child prints is informational.
4. Export child (experiments/run/export_child.py, sandboxed the same way, no GPU): imports
   the candidate to rebuild its model from the saved weights and writes it as data,
   a graph of standard operators and safetensors weights (experiments/run/model_graph.py).
5. Evaluation child (experiments/run/evaluate_child.py, trusted code only; started
   while the export runs, so that its start-up overlaps it; both stages are driven by
   experiments/run/model_stages.py): reads the graph
   as data, checks it (allowed operators, no state or randomness, shapes), checks
   causality on its own scoring windows, computes val_bpb (and, given `test_seed`,
   test_bpb on held-out windows) with the trusted metric. Its answer counts only if it
   carries this run's secret nonce.
6. An `ExperimentResult`: status ok | crash | timeout | rejected, val_bpb (ok only),
   times, tokens, steps, params, peak memory, reason, log tail, the isolation in force
   and the arena. `.to_record_result()` gives PROTOCOL.md's `result` map.

Failures of the node itself (the sandbox cannot be set up, the evaluator's own code
fails, the data cannot be prepared) raise instead of producing a result, so that a node
never publishes a candidate's score that its own problem decided.
"""
from __future__ import annotations

import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from experiments.run.budget import Budget, default_budget, make_arena, parse_budget
from experiments.run.data_feed import DataFeed
from experiments.run.hardware import (arena_class, cpu_threads, detect_device, eval_settings,
                                  profile as device_profile, total_memory_mb)
from experiments.run.model_stages import (EVAL_WALL_LIMIT_S, EXPORT_WALL_LIMIT_S,  # noqa: F401
                                          EvaluationChild, EvaluationError, ExperimentCancelled,
                                          ExportChild, _child_env, _last_error_line,
                                          evaluate_graph)
from experiments.run.model_store import ModelStore, model_key
from experiments.run.sandbox import DEFAULT_DISK_LIMIT_MB, missing_isolation, run_sandboxed
from experiments.run.static_check import check_patch, check_source
from experiments.run.workspace import LogFile, cleanup, copy_model_files, create_workspace
from swarm.records import result_map

STATUSES = ("ok", "crash", "timeout", "rejected")
# Until the first batch: interpreter, torch import, model build and, on GPUs,
# torch.compile warmup (the budget's clock starts at the first batch served).
STARTUP_GRACE_S = {"cpu": 30.0, "cuda": 150.0, "mps": 60.0}
# After the budget ends: finish the step and save the weights. Short, because a program
# could keep training on batches it held back.
END_GRACE_S = {"cpu": 10.0, "cuda": 10.0, "mps": 10.0}
END_GRACE_FRACTION = 0.02
# Token budgets: the wall limit is a generous cap, TOKEN_CAP_FACTOR x the time the budget
# takes at a typical speed for the device (tokens per second). Generous because a token
# budget's score does not depend on speed: an honest run on a busy machine (several times
# slower; docs/LOG.md) must not end as a timeout; the cap only stops runs that never end.
TYPICAL_TOKENS_PER_S = {"cpu": 7_000, "cuda": 500_000, "mps": 40_000}
TOKEN_CAP_FACTOR = 25.0
TOKEN_CAP_MIN_S = 180.0
DEFAULT_DATASETS = {"cpu": "embedded", "mps": "embedded", "cuda": "climbmix"}


@dataclass
class ExperimentResult:
    status: str
    arena: str
    val_bpb: float | None = None
    test_bpb: float | None = None  # held-out test windows, when a test seed was given
    train_s: float = 0.0
    total_s: float = 0.0
    tokens: int | None = None
    steps: int | None = None
    params: int | None = None
    peak_mem_mb: float | None = None
    reason: str = ""
    log_tail: str = ""
    isolation: list[str] = field(default_factory=list)
    missing_isolation: list[str] = field(default_factory=list)  # layers the sandbox lacked
    run_id: str | None = None
    workspace: str | None = None  # kept only with keep_workspace=True
    timings: dict = field(default_factory=dict)  # seconds: prepare, train, export, eval

    @property
    def overhead_s(self) -> float:
        """Harness time that is not training: startup, data, evaluation."""
        return max(0.0, self.total_s - self.train_s)

    def to_record_result(self) -> dict:
        """PROTOCOL.md's result map (swarm.records.result_map): reason only when not ok."""
        missing = self.missing_isolation
        return result_map(self.status, val_bpb=self.val_bpb, train_s=self.train_s,
                          total_s=self.total_s, tokens=self.tokens, steps=self.steps,
                          params=self.params, peak_mem_mb=self.peak_mem_mb,
                          reason=None if self.status == "ok" else self.reason,
                          isolation="missing: " + "; ".join(missing) if missing else None)

    def to_json(self) -> dict:
        data = asdict(self)
        data["overhead_s"] = round(self.overhead_s, 3)
        return data

    def summary(self) -> str:
        if self.status == "ok":
            head = f"val_bpb {self.val_bpb:.6f}  ({self.arena})"
        else:
            head = f"{self.status}: {self.reason}  ({self.arena})"
        parts = [f"train {self.train_s:.1f} s", f"total {self.total_s:.1f} s"]
        if self.tokens is not None:
            parts.append(f"{self.tokens:,} tokens")
        if self.steps is not None:
            parts.append(f"{self.steps} steps")
        if self.params is not None:
            parts.append(f"{self.params / 1e6:.2f}M params")
        if self.peak_mem_mb is not None:
            parts.append(f"peak {self.peak_mem_mb:.0f} MB")
        return "\n".join([head, ", ".join(parts), "isolation: " + ", ".join(self.isolation)])


# ---------------------------------------------------------------------------------------------
# Parsing the training child's output (untrusted text: garbage gives None, never an error)

_SUMMARY_LINE = re.compile(r"([A-Za-z_]+):\s+(\S+)")
_PROGRESS_LINE = re.compile(r"progress:\s*(\S+)\s+loss:\s*(\S+).*")


def _finite(text: str, low: float = 0.0, high: float = 1e18) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and low <= value <= high else None


class _TrainingOutput:
    """Collects summary values and forwards progress from the training child's lines."""

    def __init__(self, log: LogFile, progress):
        self.log = log
        self.progress = progress if callable(progress) else None
        self.values: dict[str, str] = {}

    def __call__(self, line: str) -> None:
        self.log.write(line)
        line = line.strip()
        match = _PROGRESS_LINE.fullmatch(line)
        if match:
            fraction = _finite(match.group(1), 0.0, 1.0)
            if fraction is not None and self.progress is not None:
                self.progress(fraction, _finite(match.group(2), 0.0, 1e6))
            return
        match = _SUMMARY_LINE.fullmatch(line)
        if match and len(self.values) < 64:
            self.values[match.group(1)] = match.group(2)

    def number(self, key: str, high: float = 1e18) -> float | None:
        return _finite(self.values[key], 0.0, high) if key in self.values else None

    def integer(self, key: str, scale: float = 1.0) -> int | None:
        value = self.number(key, 1e15 / scale)
        return int(round(value * scale)) if value is not None else None


# ---------------------------------------------------------------------------------------------
# Trusted data preparation (memoised per process: prepare_data re-hashes every cache)

_prepared: dict[tuple, tuple] = {}


def _trusted_prepare(genome_dir: Path | None):
    if genome_dir is None:
        import genome.prepare as prepare  # the node catches its error classes by this name
        return prepare
    import importlib.util

    path = Path(genome_dir).resolve() / "prepare.py"
    name = f"loopy_trusted_prepare_{abs(hash(str(path)))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _stamp(*paths) -> tuple:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _prepare_data(prepare, home: Path, dataset: str, progress):
    """(DataPaths, vocab_size, bos_id, tokenizer sidecar or None)."""
    key = (str(home), dataset, prepare.__file__)
    cached = _prepared.get(key)
    if cached is not None:
        data, stamp, vocab, bos = cached
        try:
            if _stamp(data.tokenizer, data.train_bin, data.val_bin) == stamp:
                return data, vocab, bos
        except OSError:
            pass
    stage = getattr(progress, "stage", None)
    if stage is not None:
        data = prepare.prepare_data(home, dataset, progress=stage)
    else:
        data = prepare.prepare_data(home, dataset)
    tokenizer = prepare.load_tokenizer(data.tokenizer)
    _prepared[key] = (data, _stamp(data.tokenizer, data.train_bin, data.val_bin),
                      tokenizer.vocab_size, tokenizer.bos_id)
    return data, tokenizer.vocab_size, tokenizer.bos_id


def prepare_run_data(home: Path, dataset: str, progress=None) -> None:
    """Prepare the tokenizer and token files `run_experiment` will use, ahead of it.

    Raises genome.prepare's CorpusError or DatasetUnavailable, or ImportError for a
    missing tokenizer dependency; the result is cached for the runs that follow.
    """
    _prepare_data(_trusted_prepare(None), Path(home).resolve(), dataset, progress)


# ---------------------------------------------------------------------------------------------
# Limits


def training_wall_limit(budget: Budget, device: str) -> float:
    """Seconds the training child may run at most: budget + grace, or a generous cap for
    tokens (the feed's deadlines stop a time-budget child much earlier)."""
    startup = STARTUP_GRACE_S[device]
    if budget.kind == "time":
        return startup + budget.value * (1 + END_GRACE_FRACTION) + END_GRACE_S[device]
    expected = budget.value / TYPICAL_TOKENS_PER_S[device]
    return startup + max(TOKEN_CAP_MIN_S, TOKEN_CAP_FACTOR * expected)


def default_mem_limit_mb(device: str) -> int:
    """Half the machine's memory (at least 1 GiB); the child's host RAM, not GPU memory."""
    total = total_memory_mb() or 8192
    return max(1024, total // 2)


# ---------------------------------------------------------------------------------------------
# The experiment


def _resolve(device: str, dataset: str | None, budget, home=None, progress=None,
             genome_dir: Path | None = None) -> tuple[str, str, Budget, str]:
    """(device, dataset, budget, arena) for what the caller asked.

    The arena's hardware part is `hardware.arena_class` (per card for time budgets, one
    class per precision for token budgets on CUDA). Given `home`, a downloaded dataset is
    prepared there (cached) and its data digest goes into the arena's dataset part; without
    it the arena has no digest (the embedded corpus never has one: the repository pins it).
    """
    device = detect_device(device)
    dataset = dataset or DEFAULT_DATASETS[device]
    if budget is None or budget == "":
        budget = default_budget(device)
    elif not isinstance(budget, Budget):
        budget = parse_budget(budget)
    digest = _data_digest(Path(home).resolve(), dataset, progress, genome_dir) if home else None
    return device, dataset, budget, make_arena(dataset, budget, arena_class(device, budget.kind),
                                               digest)


def _data_digest(home: Path, dataset: str, progress=None,
                 genome_dir: Path | None = None) -> str | None:
    """The prepared data's digest (genome.prepare.data_digest) for downloaded datasets, whose
    bytes come from a mirror; None for the embedded corpus, pinned by the repository."""
    prepare = _trusted_prepare(genome_dir)
    if getattr(prepare, "DATASETS", {}).get(dataset) is None:
        return None
    data, _, _ = _prepare_data(prepare, home, dataset, progress)
    return prepare.data_digest(data)


def run_experiment(source: str, *, home, dataset: str | None = "embedded", budget=None,
                   device: str = "auto", seed: int = 0, progress=None,
                   keep_workspace: bool = False, wall_limit_s: float | None = None,
                   mem_limit_mb: int | None = None, eval_wall_limit_s: float | None = None,
                   genome_dir: Path | None = None, cancel=None, test_seed: int | None = None,
                   models: ModelStore | None = None) -> ExperimentResult:
    """Train and score one candidate train.py; see the module docstring.

    `dataset` None picks the device's default (embedded on CPU/MPS, climbmix on CUDA);
    `budget` is a Budget, a string like '300ktok' or None for the device's default.
    The result's arena names the data of a downloaded dataset by its digest
    (`climbmix.<16 hex>/...`, see _resolve), so its data is prepared before anything else.
    `progress(fraction, loss)` is called from a reader thread; `progress.stage(name,
    done, total)`, if present, gets data preparation and evaluation stages.
    `genome_dir` replaces the genome directory (tests use a small fake prepare.py).
    Setting `cancel` (a threading.Event) kills the running child and raises
    ExperimentCancelled. `test_seed` also scores the model on held-out test windows
    drawn with that seed (`result.test_bpb`); `models` keeps the exported model of an
    ok run for later scoring (see score_stored_model).
    """
    t0 = time.monotonic()
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in 0..2^63-1, not {seed!r}")
    home = Path(home).resolve()
    device, dataset, budget, arena = _resolve(device, dataset, budget, home, progress, genome_dir)

    def finish(status: str, **fields) -> ExperimentResult:
        fields.setdefault("total_s", round(time.monotonic() - t0, 3))
        return ExperimentResult(status=status, arena=arena, **fields)

    ok, reason = check_source(source)
    if not ok:
        return finish("rejected", reason=f"static check: {reason}")

    timings = {}
    prepare = _trusted_prepare(genome_dir)
    trusted_prepare_py = Path(prepare.__file__).resolve()
    data, vocab_size, bos_id = _prepare_data(prepare, home, dataset, progress)
    timings["prepare"] = round(time.monotonic() - t0, 3)
    profile = device_profile(device)
    threads = cpu_threads() if device == "cpu" else min(8, cpu_threads())
    settings = eval_settings(profile)
    feed = DataFeed(data.train_bin, seed=seed, budget_kind=budget.kind,
                    budget_value=budget.value, bos_id=bos_id, prepare=prepare)
    run_config = {"device": device, "profile": profile, "budget_kind": budget.kind,
                  "budget_value": budget.value, "seed": seed,
                  "train_bin": "served-by-the-harness", "vocab_size": vocab_size,
                  "bos_id": bos_id, "seq_len": settings["seq_len"], "threads": threads,
                  "feed_fds": list(feed.child_fds())}
    mem_limit = mem_limit_mb or default_mem_limit_mb(device)
    try:
        ws = create_workspace(home, source, trusted_prepare_py, run_config)
    except BaseException:
        feed.stop()  # its pipes, which no child will ever hold
        raise
    export = None
    try:
        limit = wall_limit_s or training_wall_limit(budget, device)
        # --- export child: starts now, so that its start-up overlaps training's; it runs
        # the candidate's code only after its go, with the training child gone
        try:
            export = ExportChild(ws, source, trusted_prepare_py, run_config, settings, threads,
                                 mem_limit, device, cancel, wait_limit=limit + 60.0)
        except ValueError as e:
            return finish("rejected", reason=str(e))

        # --- training child: its tokens come from the feed, which counts the budget
        log = LogFile(ws.train_log)
        output = _TrainingOutput(log, progress)
        startup = STARTUP_GRACE_S[device]
        grace = END_GRACE_S[device] + END_GRACE_FRACTION * (
            budget.value if budget.kind == "time" else 0.0)

        def deadline():
            return feed.startup_deadline(startup) or feed.deadline(grace)

        feed.start()
        try:
            train = run_sandboxed(
                [sys.executable, "train.py"], cwd=ws.work,
                env=_child_env(threads, ws.run_json, ws.work), wall_limit_s=limit,
                mem_limit_mb=mem_limit, reveal_paths=[], pass_fds=feed.child_fds(),
                on_start=feed.close_child_ends, deadline=deadline,
                rlimit_as_mb=mem_limit + 4096 if device == "cpu" else None, on_line=output,
                cancel=cancel)
        finally:
            feed.stop()
            log.close()
        if train.cancelled:
            raise ExperimentCancelled("cancelled during training")
        timings["train"] = round(train.wall_s, 3)
        fed = feed.measurements()
        measured = dict(
            train_s=round(fed["train_s"], 3), tokens=fed["tokens"], steps=fed["batches"],
            log_tail=train.log_tail, isolation=train.isolation,
            missing_isolation=missing_isolation(), run_id=ws.run_id,
            timings=timings, workspace=str(ws.root) if keep_workspace else None,
            peak_mem_mb=(output.number("peak_vram_mb") if device == "cuda" else None)
            or train.peak_rss_mb)
        if fed["error"]:
            return finish("crash", reason=f"bad request to the data feed: {fed['error']}",
                          **measured)
        if train.timed_out:
            return finish("timeout", reason=_timeout_reason(fed, train.wall_s, limit, startup,
                                                            grace, budget), **measured)
        if train.mem_exceeded:
            return finish("crash", reason=f"training exceeded the memory limit of {mem_limit} MB "
                                          f"(killed at {train.peak_rss_mb:.0f} MB)", **measured)
        if train.disk_exceeded:
            return finish("crash", reason=f"training wrote more than {DEFAULT_DISK_LIMIT_MB} MB "
                                          f"(or too many files) to its workspace", **measured)
        if train.returncode != 0:
            return finish("crash", reason=f"train.py exited with status {train.returncode}: "
                                          f"{_last_error_line(train.log_tail)}", **measured)

        # --- evaluation child: trusted code only; it starts up while the export runs
        evaluation = EvaluationChild(
            ws.eval_log, ws.eval_dir, data, trusted_prepare_py, device, profile, threads,
            mem_limit, EXPORT_WALL_LIMIT_S[device]
            + (eval_wall_limit_s or EVAL_WALL_LIMIT_S[device]), cancel, test_seed)
        try:
            # --- the export proper: the trained model becomes data (a graph and its weights)
            t_export = time.monotonic()
            exported = export.go()
            timings["export"] = round(time.monotonic() - t_export, 3)
            measured["log_tail"] = (train.log_tail + exported.log_tail)[-4096:]
            if exported.status != "ok":
                return finish(exported.status, reason=exported.reason, **measured)

            # --- the evaluation proper: no candidate code runs there
            stage = getattr(progress, "stage", None)
            if stage is not None:
                stage("evaluate", 0, 1)
            t_eval = time.monotonic()
            verdict, eval_tail = evaluation.go()
            timings["eval"] = round(time.monotonic() - t_eval, 3)
        finally:
            evaluation.close()
        measured["log_tail"] = (measured["log_tail"] + eval_tail)[-4096:]
        if verdict.get("params") is not None:
            measured["params"] = verdict["params"]
        if verdict["status"] != "ok":
            return finish(verdict["status"], reason=verdict["reason"], **measured)
        if models is not None:
            models.put(model_key(source, arena, seed), exported.graph_dir)
        return finish("ok", val_bpb=verdict["val_bpb"],
                      test_bpb=verdict.get("test_bpb") if test_seed is not None else None,
                      **measured)
    finally:
        feed.stop()
        try:
            if export is not None:
                export.close()  # a child that got no go (training failed) ends on EOF
        finally:
            cleanup(ws, keep=keep_workspace)


def _timeout_reason(fed: dict, wall_s: float, limit: float, startup: float, grace: float,
                    budget: Budget) -> str:
    if wall_s < limit - 0.5 and fed["first_batch_time"] is None:
        return f"train.py asked for no training data within {startup:.0f} s of starting"
    if wall_s < limit - 0.5 and (fed["end_time"] is not None or budget.kind == "time"):
        return (f"train.py did not exit within {grace:.0f} s of the end of its budget "
                f"({budget.describe()}); process group killed")
    return (f"training ran past the wall limit of {limit:.0f} s (budget {budget.describe()}); "
            f"process group killed")


def score_stored_model(key: str, models: ModelStore, *, home, dataset: str | None = "embedded",
                       budget=None, device: str = "auto", test_seed: int | None = None,
                       cancel=None) -> dict | None:
    """Score a model `run_experiment` kept (val and, given a seed, test windows) again.

    None when the store no longer holds it; else the evaluation's verdict dict."""
    import shutil
    import tempfile

    stored = models.get(key)
    if stored is None:
        return None
    device, dataset, budget, _ = _resolve(device, dataset, budget)
    prepare = _trusted_prepare(None)
    data, _, _ = _prepare_data(prepare, Path(home).resolve(), dataset, None)
    profile = device_profile(device)
    threads = cpu_threads() if device == "cpu" else min(8, cpu_threads())
    runs = Path(home).resolve() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="score-", dir=runs))
    try:
        graph_dir = copy_model_files(stored, scratch / "eval")
        verdict, _ = evaluate_graph(scratch / "eval.log", graph_dir, data,
                               Path(prepare.__file__).resolve(), device, profile, threads,
                               default_mem_limit_mb(device), EVAL_WALL_LIMIT_S[device], cancel,
                               test_seed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return verdict


def run_patch(patch_text: str, *, home, base_source: str | None = None,
              genome_dir: Path | None = None, device: str = "auto",
              dataset: str | None = "embedded", budget=None, **kwargs) -> ExperimentResult:
    """Apply an edit of train.py to the base genome (or `base_source`) and run it.

    A patch that touches another file, is malformed or does not apply is `rejected`
    with the reason, and nothing runs.
    """
    from swarm.patch import PatchError, apply_patch

    t0 = time.monotonic()
    device, dataset, budget, arena = _resolve(device, dataset, budget, home, None, genome_dir)

    def rejected(reason: str) -> ExperimentResult:
        return ExperimentResult(status="rejected", arena=arena, reason=reason,
                                total_s=round(time.monotonic() - t0, 3))

    ok, reason = check_patch(patch_text)
    if not ok:
        return rejected(f"patch: {reason}")
    if base_source is None:
        base_dir = Path(genome_dir) if genome_dir is not None else None
        if base_dir is None:
            from genome import base_train_source
            base_source = base_train_source()
        else:
            base_source = (base_dir / "train.py").read_text(encoding="utf-8")
    try:
        source = apply_patch(base_source, patch_text)
    except PatchError as e:
        return rejected(f"patch does not apply: {e}")
    return run_experiment(source, home=home, dataset=dataset, budget=budget, device=device,
                          genome_dir=genome_dir, **kwargs)

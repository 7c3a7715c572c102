"""The trainers a node can use: the real genome harness, or the synthetic landscape.

Both follow `experiments.research.runs.Trainer`: an `arena`, a `label`, and a blocking
`run(source, *, seed, progress, cancel)` that returns a result with
`.status`, `.val_bpb`, `.reason` and `.to_record_result()`.
"""
from __future__ import annotations

import threading
from pathlib import Path

from experiments.run.harness import _resolve, prepare_run_data, run_experiment, score_stored_model
from experiments.run.model_store import ModelStore, model_key


class GenomeTrainer:
    """Trains train.py for real in the sandboxed harness."""

    def __init__(self, home: Path, *, dataset: str | None = None, budget=None,
                 device: str = "auto"):
        self.home = Path(home)
        self.device, self.dataset, self.budget, self.arena = _resolve(device, dataset, budget)
        self.label = f"genome on {self.device}"
        self.models = ModelStore(self.home / "models")

    def prepare(self, progress=None) -> None:
        """The tokenizer and token files, before the first run: a node that cannot get
        its data says so when it starts, rather than in the middle of its loop."""
        prepare_run_data(self.home, self.dataset, progress)
        # A downloaded dataset's digest names its data in the arena (see harness._resolve).
        self.arena = _resolve(self.device, self.dataset, self.budget, self.home)[3]

    def run(self, source: str, *, seed: int, progress=None,
            cancel: threading.Event | None = None, test_seed: int | None = None):
        # A set `cancel` kills the child and raises ExperimentCancelled: the loop is
        # being cancelled then, so nothing is recorded for this run.
        return run_experiment(source, home=self.home, dataset=self.dataset,
                              budget=self.budget, device=self.device, seed=seed,
                              progress=progress, cancel=cancel, test_seed=test_seed,
                              models=self.models)

    def test_score(self, source: str, *, seed: int, test_seed: int,
                   cancel: threading.Event | None = None) -> tuple[float, float] | None:
        """(val_bpb, test_bpb) of `source` trained at `seed`, on the test windows of
        `test_seed`: from the model this node kept of that run, else trained again.
        None when it does not train to an ok result."""
        key = model_key(source, self.arena, seed)
        verdict = score_stored_model(key, self.models, home=self.home, dataset=self.dataset,
                                     budget=self.budget, device=self.device,
                                     test_seed=test_seed, cancel=cancel)
        if verdict is None:
            result = self.run(source, seed=seed, cancel=cancel, test_seed=test_seed)
            if result.status != "ok" or result.test_bpb is None:
                return None
            return result.val_bpb, result.test_bpb
        if verdict.get("status") != "ok" or verdict.get("test_bpb") is None:
            return None
        return verdict["val_bpb"], verdict["test_bpb"]


def make_trainer(kind: str, home: Path, *, dataset: str | None = None, budget=None,
                 device: str = "auto", synthetic_seed: int = 0, synthetic_delay_s: float = 0.0):
    """`genome` (real training) or `synthetic` (a hidden landscape, seconds per run)."""
    if kind == "genome":
        return GenomeTrainer(home, dataset=dataset, budget=budget, device=device)
    if kind == "synthetic":
        from experiments.simulation.synthetic import SyntheticTrainer
        return SyntheticTrainer(synthetic_seed, delay_s=synthetic_delay_s)
    raise ValueError(f"unknown trainer {kind!r}: use 'genome' or 'synthetic'")

"""The trusted evaluation child on its own: cheats that get past the static screen (here
the screen is bypassed on purpose) are caught at run time; honest models are scored.

All variants are evaluated concurrently by one module fixture (each evaluation is a
child process that imports torch), then asserted one by one.
"""
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import fake_genome as fg
from experiments import evaluate_child

AFTER_IMPORTS = "from prepare import make_dataloader, run_config\n"
FORWARD = "        return self.table(idx)\n"


def at_import(code: str) -> str:
    return fg.TRAIN.replace(AFTER_IMPORTS, AFTER_IMPORTS + code)


def forward(code: str) -> str:
    assert FORWARD in fg.TRAIN
    body = "".join("        " + line + "\n" for line in code.splitlines())
    return fg.TRAIN.replace(FORWARD, body)


VARIANTS = {
    "honest": fg.TRAIN,
    # Halve the loss the evaluator computes.
    "patch_functional": at_import("_ce = F.cross_entropy\n"
                                  "F.cross_entropy = lambda *a, **k: _ce(*a, **k) * 0.5\n"),
    "patch_tensor_method": at_import(
        "_float = torch.Tensor.float\n"
        "torch.Tensor.float = lambda self, *a: _float(self, *a) * 2\n"),
    "patch_builtin": at_import("import builtins\nbuiltins.sum = lambda *a: 0\n"),
    "function_mode": at_import(
        "from torch.overrides import TorchFunctionMode\n"
        "class Quiet(TorchFunctionMode):\n"
        "    def __torch_function__(self, func, types, args=(), kwargs=None):\n"
        "        return func(*args, **(kwargs or {}))\n"
        "Quiet().__enter__()\n"),
    "tensor_subclass": forward("return self.table(idx).as_subclass(Sly)").replace(
        AFTER_IMPORTS, AFTER_IMPORTS + "class Sly(torch.Tensor):\n    pass\n"),
    "non_finite": forward("return self.table(idx) * float('nan')"),
    "wrong_shape": forward("return self.table(idx)[:, :-1]"),
    # Causal in time, but row b reads row b-1 of the same batch.
    "cross_row": forward("out = self.table(idx)\n"
                         "steps = torch.arange(1, idx.size(1) + 1).view(1, -1, 1)\n"
                         "return out + out.roll(1, dims=0).cumsum(dim=1) / steps"),
    # Every call drifts: the model keeps state between calls.
    "stateful": forward("self.calls = getattr(self, 'calls', 0) + 1\n"
                        "return self.table(idx) + 0.01 * self.calls"),
    # Inputs and targets are views of one window: writing its predictions into the input
    # would turn the targets into the predictions. The evaluator hands out a copy.
    "mutates_input": forward("out = self.table(idx)\n"
                             "idx[:, 1:] = out.argmax(-1)[:, :-1]\n"
                             "return out"),
    "exits": at_import("import sys\nsys.exit(0)\n"),
    "wrong_weights": fg.TRAIN.replace("return Bigram(run.vocab_size)",
                                      "return Bigram(run.vocab_size + 1)"),
}


def _evaluate(root: Path, genome: Path, data, name: str, source: str) -> tuple[dict, str, bool]:
    d = root / name
    d.mkdir()
    (d / "train.py").write_text(source)
    shutil.copyfile(genome / "prepare.py", d / "prepare.py")
    shutil.copyfile(root / "model.pt", d / "model.pt")
    shutil.copyfile(root / "run.json", d / "run.json")
    spec = {"nonce": f"nonce-{name}", "result_path": str(d / "result.json"),
            "trusted_prepare": str(genome / "prepare.py"), "prepare_py": str(d / "prepare.py"),
            "train_py": str(d / "train.py"), "model_pt": str(d / "model.pt"),
            "run_config": str(d / "run.json"), "val_bin": str(data.val_bin),
            "tokenizer": str(data.tokenizer), "device": "cpu", "profile": "cpu", "threads": 1,
            "probe_seed": 1234}
    (d / "eval.json").write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-I", evaluate_child.__file__, str(d / "eval.json")],
                          cwd=d, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    result = json.loads((d / "result.json").read_text())
    return result, done.stdout + done.stderr, (d / "eval.json").exists()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import importlib.util

    import torch

    root = tmp_path_factory.mktemp("evaluate")
    genome = fg.make_genome(root / "genome")
    spec = importlib.util.spec_from_file_location("fake_prepare_for_eval", genome / "prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    data = prepare.prepare_data(root / "home")
    config = {"device": "cpu", "profile": "cpu", "budget_kind": "tokens", "budget_value": 1000,
              "seed": 0, "out_dir": str(root), "train_bin": str(data.train_bin), "vocab_size": 64,
              "bos_id": 0, "seq_len": 256, "threads": 1}
    (root / "run.json").write_text(json.dumps(config))
    # "Trained" weights: a bigram table that knows the data's cycle.
    table = torch.full((64, 64), -2.0)
    for t in range(1, 64):
        table[t, 1 + (t % 63)] = 3.0
    torch.save({"table.weight": table}, root / "model.pt")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_evaluate, root, genome, data, name, source)
                   for name, source in VARIANTS.items()}
        return {name: future.result() for name, future in futures.items()}


def test_honest_model_is_scored(results):
    result, log, spec_left = results["honest"]
    assert result["status"] == "ok", log
    assert 0.5 < result["val_bpb"] < 6.0
    assert result["params"] == 64 * 64
    assert result["nonce"] == "nonce-honest"
    assert not spec_left, "eval.json must be deleted before train.py is imported"
    assert "evaluation: ok" in log


@pytest.mark.parametrize("name, reason", [
    ("patch_functional",
     "torch.nn.functional.cross_entropy was replaced or removed (after building the model)"),
    ("patch_tensor_method", "torch.Tensor.float was added (after building the model)"),
    ("patch_builtin", "builtins.sum was replaced or removed"),
    ("function_mode", "a torch function mode is active"),
    ("tensor_subclass", "model returned Sly, not a plain torch.Tensor"),
    ("non_finite", "model returned non-finite logits"),
    ("wrong_shape", "model returned logits of shape (16, 255, 64), expected (16, 256, >=64)"),
    ("cross_row", "causality probe: logits of one row changed"),
    ("stateful", "causality probe: "),
])
def test_cheats_are_rejected(results, name, reason):
    result, log, _ = results[name]
    assert result["status"] == "rejected", (result, log)
    assert reason in result["reason"], result["reason"]
    assert "val_bpb" not in result


def test_writing_predictions_into_the_input_does_not_help(results):
    honest = results["honest"][0]["val_bpb"]
    result, log, _ = results["mutates_input"]
    assert result["status"] == "ok", log
    assert result["val_bpb"] == pytest.approx(honest, rel=1e-6)


@pytest.mark.parametrize("name, reason", [
    ("exits", "loading the model failed: SystemExit: 0"),
    ("wrong_weights", "loading the model failed: size mismatch for table.weight"),
])
def test_broken_candidates_crash(results, name, reason):
    result, log, _ = results[name]
    assert result["status"] == "crash", (result, log)
    assert result["reason"].startswith(reason), result["reason"]


def test_eval_settings_are_fixed_per_profile():
    assert evaluate_child.EVAL_SETTINGS["cpu"]["seq_len"] == 256
    assert evaluate_child.EVAL_SETTINGS["cuda"]["seq_len"] == 2048
    assert evaluate_child.EVAL_SETTINGS["mps"]["seq_len"] == 1024

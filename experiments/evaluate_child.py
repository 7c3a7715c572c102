"""TRUSTED evaluation child: score one trained candidate, or reject it with a reason.

    python -I experiments/evaluate_child.py <eval.json>

(`python -m experiments.evaluate_child <eval.json>` works too where the package is
importable.) The harness runs this in a sandboxed child process (no network, node home
hidden, validation data visible read-only). Its bytes are part of the genome id, together
with genome/prepare.py: the evaluation settings below and the causality probe define
what a score means.

Steps, in this order:
1. Read eval.json (written by the harness) and delete it, so that the untrusted code
   imported later cannot read the result nonce from it.
2. Import torch and numpy, load the trusted prepare.py (by path, from the genome) and
   the probe windows, and snapshot the functions the evaluation relies on (torch,
   torch.nn.functional, Tensor methods, numpy, math, builtins, the trusted prepare).
3. Import the candidate train.py by path as module `train`, with the workspace's copy of
   prepare.py as module `prepare`; build the model with `build_model(run)`, load
   `model.pt` with `torch.load(weights_only=True)` and `load_state_dict(strict=True)`.
4. Check the snapshot is unchanged (no monkeypatching) and no torch function/dispatch
   mode is active; run the causality probe (changing later tokens must not change earlier
   logits; rows of a batch must not see each other; calls must not keep state); check
   again; call the trusted `prepare.evaluate_bpb` through a guard that gives the model a
   copy of its input and accepts only a plain, finite float tensor of the right shape;
   check again.
5. Write the result JSON (status ok | rejected | crash, val_bpb, params, reason, the
   nonce) to the path eval.json named.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
import traceback

# Evaluation settings per hardware profile (never chosen by train.py). 256 windows of 256
# tokens give a stable CPU score in a few seconds on 2 cores.
EVAL_SETTINGS = {
    "cpu": {"seq_len": 256, "batch_size": 16, "n_windows": 256},
    "mps": {"seq_len": 1024, "batch_size": 8, "n_windows": 512},
    "cuda": {"seq_len": 2048, "batch_size": 32, "n_windows": 2048},
}
# Causality probe: relative + absolute tolerance on logits that must not change.
PROBE_TOLERANCE = {"cpu": 1e-4, "mps": 1e-3, "cuda": 1e-3}
PROBE_CUTS = ((0.0, 0.25), (0.25, 0.75), (0.75, 1.0))  # one cut point drawn in each range
MAX_WEIGHTS_BYTES = 8 * 2**30


class Rejected(Exception):
    """The candidate cheats or breaks the evaluation contract: no score, a reason."""


def _snapshot(objects: dict) -> dict:
    """name -> (namespace object, {attr: value}) of everything the evaluator relies on."""
    return {name: (obj, dict(vars(obj))) for name, obj in objects.items()}


def _check_snapshot(snapshot: dict, stage: str, strict_new: frozenset) -> None:
    for name, (obj, before) in snapshot.items():
        now = vars(obj)
        for key, value in before.items():
            if key not in now or now[key] is not value:
                raise Rejected(f"{name}.{key} was replaced or removed ({stage})")
        if name in strict_new:
            added = sorted(set(now) - set(before))
            if added:
                raise Rejected(f"{name}.{added[0]} was added ({stage})")


def _check_modes(torch, stage: str) -> None:
    C = torch._C
    for what, probe in (("torch function mode", "_len_torch_function_stack"),
                        ("torch dispatch mode", "_len_torch_dispatch_stack")):
        length = getattr(C, probe, None)
        if length is not None and length() != 0:
            raise Rejected(f"a {what} is active ({stage})")


class _Guard:
    """What evaluate_bpb calls instead of the model: a copy in, a checked plain tensor out."""

    def __init__(self, torch, model, vocab: int):
        self.torch, self.model, self.vocab = torch, model, vocab

    @property
    def training(self):
        return bool(self.model.training)

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def __call__(self, idx):
        torch = self.torch
        logits = self.model(idx.clone())
        if type(logits) is not torch.Tensor:
            raise Rejected(f"model returned {type(logits).__name__}, not a plain torch.Tensor")
        shape = tuple(logits.shape)
        if len(shape) != 3 or shape[:2] != tuple(idx.shape) or shape[2] < self.vocab:
            raise Rejected(f"model returned logits of shape {shape}, expected "
                           f"({idx.shape[0]}, {idx.shape[1]}, >={self.vocab})")
        if not logits.is_floating_point():
            raise Rejected(f"model returned {logits.dtype} logits, not floating point")
        logits = logits.detach().float().clone()
        if not bool(torch.isfinite(logits).all()):
            raise Rejected("model returned non-finite logits")
        return logits


def causality_probe(torch, np, call, tokens, settings: dict, device, tolerance: float,
                    rng) -> float:
    """Raise Rejected if the model's logits depend on later tokens, other rows, or earlier calls.

    Returns the largest relative change seen (a well-behaved model gives 0 or rounding noise).

    Windows and replacement text come from the validation data itself (at positions drawn
    from a per-run secret seed), so a probe batch looks exactly like an evaluation batch.
    """
    T, B = settings["seq_len"], settings["batch_size"]
    if len(tokens) < T + 2:
        raise ValueError("validation data is shorter than one evaluation window")

    def windows():
        starts = rng.integers(0, len(tokens) - T, size=B)
        batch = np.stack([tokens[s:s + T] for s in starts]).astype(np.int64)
        return torch.from_numpy(batch).to(device)

    worst = [0.0]

    def differs(a, b):
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        scale = float(a.abs().max()) if a.numel() else 0.0
        worst[0] = max(worst[0], diff / (1.0 + scale))
        return diff > tolerance * (1.0 + scale), diff

    x = windows()
    base = call(x)
    for low, high in PROBE_CUTS:
        first = int(low * (T - 1))
        cut = int(rng.integers(first, max(int(high * (T - 1)), first + 1)))
        changed = x.clone()
        changed[:, cut + 1:] = windows()[:, cut + 1:]
        bad, diff = differs(base[:, :cut + 1], call(changed)[:, :cut + 1])
        if bad:
            raise Rejected(f"causality probe: logits at positions <= {cut} changed by {diff:.3g} "
                           f"when only tokens after position {cut} changed")
    if B > 1:
        mixed = windows()
        mixed[0] = x[0]
        bad, diff = differs(base[0], call(mixed)[0])
        if bad:
            raise Rejected(f"causality probe: logits of one row changed by {diff:.3g} "
                           f"when only the other rows of the batch changed")
    bad, diff = differs(base, call(x))
    if bad:
        raise Rejected(f"causality probe: the same input gave logits that differ by {diff:.3g} "
                       f"on a second call (the model keeps state between calls)")
    return worst[0]


def _load_module(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load_weights(torch, path: str):
    st = os.lstat(path)
    if not os.path.isfile(path) or os.path.islink(path):
        raise ValueError("model.pt is not a regular file")
    if st.st_size > MAX_WEIGHTS_BYTES:
        raise ValueError(f"model.pt is {st.st_size} bytes, over the {MAX_WEIGHTS_BYTES}-byte limit")
    state = torch.load(path, map_location="cpu", weights_only=True)
    tensor_types = (torch.Tensor, torch.nn.Parameter)
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and type(v) in tensor_types for k, v in state.items()):
        raise ValueError("model.pt must hold a state_dict: a dict of names to tensors")
    return state


def evaluate(spec: dict) -> dict:
    """The evaluation proper; returns the result dict (without the nonce)."""
    t0 = time.time()
    import numpy as np
    import torch
    import torch.nn.functional as F
    import builtins

    trusted = _load_module("loopy_trusted_prepare", spec["trusted_prepare"])
    profile = spec["profile"]
    settings = EVAL_SETTINGS[profile]
    device = torch.device(spec["device"])
    if spec["device"] == "cpu":
        torch.set_num_threads(int(spec["threads"]))
    tokenizer = trusted.load_tokenizer(spec["tokenizer"])
    probe_tokens = np.array(np.memmap(spec["val_bin"], dtype=trusted.TOKEN_DTYPE, mode="r"))
    rng = np.random.default_rng(int(spec["probe_seed"]))
    os.environ[trusted.RUN_CONFIG_ENV] = spec["run_config"]
    run = trusted.run_config(spec["run_config"])

    snapshot = _snapshot({"torch": torch, "torch.nn.functional": F, "torch.Tensor": torch.Tensor,
                          "torch._C.TensorBase": torch._C.TensorBase,
                          "torch.nn.Module": torch.nn.Module, "numpy": np, "math": math,
                          "builtins": builtins, "prepare": trusted})
    strict_new = frozenset({"torch.Tensor", "torch._C.TensorBase", "torch.nn.Module", "builtins"})
    tensor_type = torch.Tensor

    try:
        _load_module("prepare", spec["prepare_py"])
        train = _load_module("train", spec["train_py"])
        build = getattr(train, "build_model", None)
        if not callable(build):
            return {"status": "crash", "reason": "train.py has no build_model(run)"}
        model = build(run)
        if not isinstance(model, torch.nn.Module):
            return {"status": "crash", "reason": f"build_model returned "
                                                 f"{type(model).__name__}, not a torch.nn.Module"}
        model.load_state_dict(_load_weights(torch, spec["model_pt"]), strict=True)
        model.to(device)
        model.eval()
        params = sum(int(p.numel()) for p in model.parameters())
    except BaseException as e:  # SystemExit too: untrusted code must not end the evaluator
        return {"status": "crash", "reason": f"loading the model failed: {_last_line(e)}"}

    try:
        _check_snapshot(snapshot, "after building the model", strict_new)
        _check_modes(torch, "after building the model")
        if torch.Tensor is not tensor_type:
            raise Rejected("torch.Tensor was replaced")
        guard = _Guard(torch, model, tokenizer.vocab_size)
        with torch.no_grad():
            probe_diff = causality_probe(torch, np, guard, probe_tokens, settings, device,
                                         PROBE_TOLERANCE[profile], rng)
        _check_snapshot(snapshot, "after the causality probe", strict_new)
        _check_modes(torch, "after the causality probe")
        t_eval = time.time()
        val_bpb = trusted.evaluate_bpb(guard, spec["val_bin"], tokenizer.token_bytes,
                                       settings["batch_size"], settings["seq_len"], spec["device"],
                                       settings["n_windows"])
        _check_snapshot(snapshot, "after evaluation", strict_new)
        _check_modes(torch, "after evaluation")
    except Rejected as e:
        return {"status": "rejected", "reason": str(e), "params": params}
    except BaseException as e:
        return {"status": "crash", "reason": f"evaluation failed: {_last_line(e)}",
                "params": params}
    if not isinstance(val_bpb, float) or not math.isfinite(val_bpb) or val_bpb <= 0:
        return {"status": "rejected", "reason": f"evaluation gave val_bpb {val_bpb!r}",
                "params": params}
    return {"status": "ok", "val_bpb": val_bpb, "params": params, "probe_max_diff": probe_diff,
            "eval_s": round(time.time() - t_eval, 3), "total_s": round(time.time() - t0, 3)}


def _last_line(e: BaseException) -> str:
    lines = [line.strip() for line in f"{type(e).__name__}: {e}".splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:500]


def _write_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: evaluate_child.py <eval.json>", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    os.unlink(argv[0])
    nonce, result_path = spec.pop("nonce"), spec.pop("result_path")
    try:
        result = evaluate(spec)
    except Exception:  # the trusted side failed: say so, with the traceback in the log
        traceback.print_exc()
        result = {"status": "error", "reason": "the evaluator itself failed (see the eval log)"}
    result["nonce"] = nonce
    _write_json(result_path, result)
    if result["status"] == "ok":
        print(f"evaluation: ok val_bpb {result['val_bpb']:.6f} (probe max relative change "
              f"{result['probe_max_diff']:.2g}, eval {result['eval_s']:.1f} s, "
              f"child {result['total_s']:.1f} s)", flush=True)
    else:
        print(f"evaluation: {result['status']} ({result.get('reason', '')})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

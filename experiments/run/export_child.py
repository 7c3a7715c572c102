"""UNTRUSTED-side export: turn the candidate's trained model into data for the evaluator.

    python -I experiments/run/export_child.py <spec.json> [--go-fd N]

The harness runs this inside the training sandbox (the candidate's code runs here, so
nothing here is trusted), with cwd = a directory holding the candidate's train.py, a copy
of prepare.py, run.json and model.pt. spec.json: {"train_py", "prepare_py", "run_config",
"model_pt", "out_dir", "batch_size", "seq_len"}. It builds the model with
`train.build_model(prepare.run_config(run_config))`, loads model.pt with
`torch.load(weights_only=True)` + `load_state_dict(strict=True)`, and writes
out_dir/graph.json + out_dir/weights.safetensors (experiments/run/model_graph.py). Exit 0 on
success; on failure one line `export failed: <reason>` and exit 3.

With `--go-fd N` the harness starts this child together with the training child: it loads
torch and the exporter, then blocks on descriptor N until the harness writes b"g" (model.pt
is in place; the export's time limit runs from then). EOF without a go: nothing to export,
exit 4. The candidate's code is loaded only after the go, when the training child is gone.

Only experiments/run/model_graph.py needs to sit next to this file: it is loaded by path.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

EXIT_FAILED = 3
EXIT_ABORTED = 4


def _load_module(name: str, path) -> object:
    spec = importlib.util.spec_from_file_location(name, str(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _model_graph():
    if "model_graph" not in sys.modules:
        _load_module("model_graph", Path(__file__).resolve().with_name("model_graph.py"))
    return sys.modules["model_graph"]


def export(spec: dict) -> dict:
    """Build, load and export the candidate's model; model_graph.export_model's summary."""
    import torch

    model_graph = _model_graph()
    sys.path.insert(0, str(Path(spec["train_py"]).resolve().parent))  # as `python train.py` has
    prepare = _load_module("prepare", spec["prepare_py"])
    train = _load_module("train", spec["train_py"])
    model = train.build_model(prepare.run_config(spec["run_config"]))
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"build_model returned {type(model).__name__}, not a torch.nn.Module")
    state = torch.load(spec["model_pt"], map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model_graph.export_model(model, batch_size=int(spec["batch_size"]),
                                    seq_len=int(spec["seq_len"]), out_dir=spec["out_dir"])


def _warm_up() -> bool:
    """Export a tiny model of our own: the first export in a process pays about a second
    of one-time set-up (lazy imports, tracing machinery), which this moves before the go,
    beside training. Best effort (False on failure): it changes nothing after the go."""
    import tempfile

    import torch
    import torch.nn.functional as F

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(8, 8)
            self.proj = torch.nn.Linear(8, 8, bias=False)

        def forward(self, idx):
            x = F.rms_norm(self.embed(idx), (8,))
            q = x.view(1, 8, 2, 4).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, q, q, is_causal=True).transpose(1, 2)
            return self.proj(F.relu(y.reshape(1, 8, 8)).square()).softmax(-1)

    try:
        with tempfile.TemporaryDirectory() as out:
            _model_graph().export_model(Tiny(), batch_size=1, seq_len=8, out_dir=out)
        return True
    except Exception:
        return False


def _wait_for_go(fd: int) -> bool:
    """Load what every export needs, then block until the harness's go (True) or EOF."""
    import numpy  # noqa: F401  (prepare.py's own imports, loaded after the go)
    import tiktoken  # noqa: F401
    _warm_up()
    try:
        return os.read(fd, 1) == b"g"
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    go_fd = None
    if len(argv) == 3 and argv[1] == "--go-fd" and argv[2].isdigit():
        argv, go_fd = argv[:1], int(argv[2])
    if len(argv) != 1:
        print("usage: export_child.py <spec.json> [--go-fd N]", file=sys.stderr)
        return 2
    if go_fd is not None and not _wait_for_go(go_fd):
        print("export aborted: no trained model to export", flush=True)
        return EXIT_ABORTED
    try:
        with open(argv[0], encoding="utf-8") as f:
            spec = json.load(f)
        summary = export(spec)
    except BaseException as e:  # SystemExit too: the candidate's code must not pick the exit
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = lines[0] if type(e).__name__ == "ExportError" and lines else \
            f"{type(e).__name__}: {lines[0] if lines else ''}"
        print(f"export failed: {reason[:500]}", flush=True)
        return EXIT_FAILED
    print(f"export: {summary['n_nodes']} nodes, {len(summary['ops'])} operators, "
          f"{summary['weight_bytes']} weight bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

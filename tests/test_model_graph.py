"""The model-as-data format (experiments/run/model_graph.py) and the untrusted export child.

Exports of the real base genome must reproduce the eager logits and pass the trusted
loader; every catalogue edit of it must too (slow). Hand-made hostile graphs and weight
files must be refused by `load_graph` with GraphRejected before anything runs.
"""
import copy
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from experiments.run import model_graph as mg
from experiments.agents.catalogue import build_catalogue
from genome import train

REPO = Path(__file__).resolve().parent.parent
VOCAB, B, T = 64, 2, 32


def genome_model(module=train, seed=0):
    """The cpu-profile model of a genome module with small random weights everywhere (the
    zero-initialised projections would hide most of the network)."""
    torch.manual_seed(seed)
    model = module.build_model(SimpleNamespace(profile="cpu", vocab_size=VOCAB, seq_len=T))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def load(directory, **overrides):
    kwargs = dict(vocab_size=VOCAB, batch_size=B, seq_len=T, device="cpu") | overrides
    return mg.load_graph(directory, **kwargs)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(directory, eager model) of the base genome's export."""
    directory = tmp_path_factory.mktemp("base")
    model = genome_model()
    summary = mg.export_model(model, batch_size=B, seq_len=T, out_dir=directory)
    assert summary["n_nodes"] > 100 and summary["weight_bytes"] > 0
    assert "aten.scaled_dot_product_attention.default" in summary["ops"]
    return directory, model


@pytest.fixture
def hostile(exported, tmp_path):
    """A writable copy of the base export: (directory, graph dict, save(graph))."""
    directory = tmp_path / "graph"
    shutil.copytree(exported[0], directory)
    graph = json.loads((directory / mg.GRAPH_FILE).read_text())

    def save(g):
        (directory / mg.GRAPH_FILE).write_text(json.dumps(g))

    return directory, graph, save


def node(graph, op=None, target=None):
    return next(n for n in graph["nodes"] if (op is None or n["op"] == op)
                and (target is None or n.get("target") == target))


# ---------------------------------------------------------------------------------------------
# Honest exports


def test_base_genome_graph_gives_the_eager_logits(exported):
    directory, model = exported
    graph = load(directory)
    idx = torch.randint(0, VOCAB, (B, T))
    with torch.no_grad():
        expected = model(idx)
    logits = graph(idx)
    assert type(logits) is torch.Tensor and logits.shape == (B, T, VOCAB)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    # A smaller last batch is padded inside and cut back out.
    torch.testing.assert_close(graph(idx[:1]), expected[:1], atol=1e-5, rtol=0)
    assert graph.params == sum(p.numel() for p in model.parameters()) + 2 * model.cos.numel()


def test_graph_holds_no_state_and_ignores_train_mode(exported):
    graph = load(exported[0])
    idx = torch.randint(0, VOCAB, (B, T))
    first = graph(idx)
    graph.train()
    assert torch.equal(graph(idx), first) and graph.training is False


def test_weights_file_holds_exactly_the_placeholders(exported):
    directory, _ = exported
    graph = json.loads((directory / mg.GRAPH_FILE).read_text())
    names = {n["weight"] for n in graph["nodes"] if n["op"] == "placeholder" and n["weight"]}
    assert set(load_file(directory / mg.WEIGHTS_FILE)) == names
    kinds = [n["kind"] for n in graph["nodes"] if n["op"] == "placeholder"]
    assert kinds.count("user_input") == 1 and kinds.count("buffer") == 2  # rotary cos, sin


def test_allowlist_is_pure_functional_core_aten():
    assert len(mg.ALLOWED_OPS) >= 20
    for target in mg.ALLOWED_OPS:
        namespace, name, overload = target.split(".")
        assert namespace == "aten" and not name.endswith("_") and "out" not in overload, target
        op = getattr(getattr(torch.ops.aten, name), overload)
        assert not op._schema.is_mutable, target
        if target != mg.SDPA:
            assert torch.Tag.core in op.tags, target
            assert torch.Tag.nondeterministic_seeded not in op.tags, target
    for word in ("rand", "normal", "bernoulli", "dropout", "multinomial", "uniform", "empty",
                 "copy_", "set_", "resize", "exponential", "randperm"):
        assert not any(word in t.split(".")[1] for t in mg.ALLOWED_OPS), word


class Returns(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.table, self.how = nn.Embedding(VOCAB, VOCAB), how

    def forward(self, idx):
        return self.how(self.table(idx), idx)


@pytest.mark.parametrize("how, reason", [
    (lambda x, idx: (x, x), "returns 2 outputs"),
    (lambda x, idx: torch.rand_like(x) + x, "the evaluator does not allow"),
    (lambda x, idx: nn.functional.dropout(x, 0.5, training=True), "the evaluator does not allow"),
])
def test_export_refuses_what_the_evaluator_would_refuse(tmp_path, how, reason):
    with pytest.raises(mg.ExportError, match=reason):
        mg.export_model(Returns(how), batch_size=B, seq_len=T, out_dir=tmp_path)


def test_export_refuses_buffer_mutation(tmp_path):
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(VOCAB, VOCAB)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, idx):
            self.calls.add_(1)
            return self.table(idx) + self.calls

    with pytest.raises(mg.ExportError, match="mutates a buffer"):
        mg.export_model(Counter(), batch_size=B, seq_len=T, out_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# Hostile graphs: refused by load_graph, before anything runs


def _set_target(target):
    def edit(g):
        node(g, "call_function", "aten.mm.default")["target"] = target
    return edit


def _forward_ref(g):
    calls = [n for n in g["nodes"] if n["op"] == "call_function"]
    calls[0]["args"][0] = {"ref": calls[5]["name"]}


def _self_ref(g):
    n = node(g, "call_function", "aten.mm.default")
    n["args"][0] = {"ref": n["name"]}


def _extra_input(g):
    g["nodes"].insert(0, {"name": "secret", "op": "placeholder", "kind": "user_input",
                          "weight": None, "dtype": "int64", "shape": [B, T]})


def _input_placeholder(**changes):
    def edit(g):
        node(g, "placeholder")  # there are placeholders
        ui = next(n for n in g["nodes"] if n.get("kind") == "user_input")
        ui.update(changes)
        g["input"].update({k: v for k, v in changes.items() if k in ("dtype", "shape")})
    return edit


def _sdpa_dropout(g):
    node(g, "call_function", mg.SDPA)["args"][4] = {"float": 0.1}


def _sdpa_dropout_kwarg(g):
    n = node(g, "call_function", mg.SDPA)
    del n["args"][4:]
    n["kwargs"]["dropout_p"] = {"float": 0.5}


def _second_output(g):
    g["nodes"].append(dict(g["nodes"][-1], name="output2"))


def _tagged(value):
    def edit(g):
        node(g, "call_function", "aten.view.default")["args"][1] = value
    return edit


def _device_positional(g):
    node(g, "call_function", "aten.view.default")["args"][1] = {"device": "cpu"}


def _weight_declared(**changes):
    def edit(g):
        next(n for n in g["nodes"] if n.get("kind") == "parameter").update(changes)
    return edit


def _duplicate_name(g):
    calls = [n for n in g["nodes"] if n["op"] == "call_function"]
    calls[1]["name"] = calls[0]["name"]


HOSTILE_GRAPHS = {
    "rand": (_set_target("aten.rand.default"), "is not allowed"),
    "bernoulli": (_set_target("aten.bernoulli.default"), "is not allowed"),
    "in_place": (_set_target("aten.add_.Tensor"), "is not allowed"),
    "out_overload": (_set_target("aten.mm.out"), "is not allowed"),
    "exec": (_set_target("builtins.exec"), "is not allowed"),
    "prims": (_set_target("prims.xyz.default"), "is not allowed"),
    "python_callable": (_set_target("torch.nn.functional.relu"), "is not allowed"),
    "empty": (_set_target("aten.empty.memory_format"), "is not allowed"),
    "not_a_string": (_set_target(["aten", "mm"]), "is not allowed"),
    "forward_ref": (_forward_ref, "not an earlier node"),
    "self_ref": (_self_ref, "not an earlier node"),
    "duplicate_name": (_duplicate_name, "duplicate name"),
    "extra_input": (_extra_input, "2 user inputs"),
    "input_dtype": (_input_placeholder(dtype="int32"), "graph input is"),
    "input_shape": (_input_placeholder(shape=[B, T + 1]), "graph input is"),
    "placeholder_dtype": (lambda g: next(n for n in g["nodes"] if n.get("kind") == "user_input")
                          .update(dtype="float32"), "the user input is float32"),
    "sdpa_dropout": (_sdpa_dropout, "dropout_p 0.1"),
    "sdpa_dropout_kwarg": (_sdpa_dropout_kwarg, "dropout_p 0.5"),
    "second_output": (_second_output, "comes after the output node"),
    "no_output": (lambda g: g["nodes"].pop(), "no output node"),
    "unknown_top_key": (lambda g: g.update(code="print(1)"), "graph.json: keys"),
    "unknown_node_key": (lambda g: node(g, "call_function").update(hook="x"), "keys"),
    "unknown_tag": (_tagged({"pickle": "gASV"}), "bad value"),
    "two_tags": (_tagged({"int": 1, "str": "x"}), "one tag"),
    "bare_value": (_tagged([B * T, 8]), "one tag"),
    "bool_as_int": (_tagged({"int": True}), "bad value"),
    "device_positional": (_device_positional, "bad value"),
    "too_deep": (_tagged({"list": [{"list": [{"list": [{"list": [{"list": []}]}]}]}]}),
                 "bad value"),
    "format": (lambda g: g.update(format="loopy-graph/0"), "format"),
    "unknown_kind": (_weight_declared(kind="module"), "unknown placeholder kind"),
    "weight_shape": (_weight_declared(shape=[1, 2]), "the graph declares"),
    "weight_dtype": (_weight_declared(dtype="float16"), "the graph declares"),
    "missing_weight_in_file": (_weight_declared(weight="not.in.file"), "missing"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_GRAPHS))
def test_hostile_graph_is_rejected(hostile, monkeypatch, name):
    directory, graph, save = hostile
    edit, reason = HOSTILE_GRAPHS[name]
    edit(graph)
    save(graph)
    ran = []
    monkeypatch.setattr(mg.ModelGraph, "__call__", lambda *a: ran.append(1))
    with pytest.raises(mg.GraphRejected, match=reason):
        load(directory)
    assert not ran


def test_oversized_graph_json_is_rejected_unread(hostile):
    directory, _, _ = hostile
    with open(directory / mg.GRAPH_FILE, "wb") as f:
        f.truncate(mg.MAX_GRAPH_BYTES + 1)  # sparse: no 32 MiB written
    with pytest.raises(mg.GraphRejected, match="over the limit"):
        load(directory)


def test_too_many_nodes_is_rejected(hostile, monkeypatch):
    monkeypatch.setattr(mg, "MAX_NODES", 10)
    with pytest.raises(mg.GraphRejected, match="over the limit of 10"):
        load(hostile[0])


@pytest.mark.parametrize("text, reason", [
    ('{"format": NaN}', "not valid JSON"),
    ("[" * 100_000, "not valid JSON"),
    ("[]", "must hold a JSON object"),
    ("\xff", "not valid JSON"),
])
def test_malformed_json_is_rejected(hostile, text, reason):
    (hostile[0] / mg.GRAPH_FILE).write_bytes(text.encode("latin-1"))
    with pytest.raises(mg.GraphRejected, match=reason):
        load(hostile[0])


def test_symlinked_graph_is_rejected(hostile, tmp_path):
    directory = hostile[0]
    (directory / mg.GRAPH_FILE).rename(tmp_path / "elsewhere.json")
    os.symlink(tmp_path / "elsewhere.json", directory / mg.GRAPH_FILE)
    with pytest.raises(mg.GraphRejected, match="not a regular file"):
        load(directory)


def _rewrite_weights(directory, change):
    weights = load_file(directory / mg.WEIGHTS_FILE)
    change(weights)
    save_file(weights, str(directory / mg.WEIGHTS_FILE))


@pytest.mark.parametrize("change, reason", [
    (lambda w: w.update(extra=torch.zeros(3)), "extra tensors \\['extra'\\]"),
    (lambda w: w.pop("head.weight"), "missing \\['head.weight'\\]"),
    (lambda w: w.update({"head.weight": torch.zeros(VOCAB, 7)}), "weight head.weight is"),
    (lambda w: w.update({"head.weight": w["head.weight"].double()}), "weight head.weight is"),
])
def test_weights_that_do_not_match_the_graph_are_rejected(hostile, change, reason):
    _rewrite_weights(hostile[0], change)
    with pytest.raises(mg.GraphRejected, match=reason):
        load(hostile[0])


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_weights_are_rejected_and_never_unpickled(hostile, tmp_path):
    marker = tmp_path / "unpickled"
    (hostile[0] / mg.WEIGHTS_FILE).write_bytes(pickle.dumps({"head.weight": _Boom(marker)}))
    with pytest.raises(mg.GraphRejected, match="not a valid safetensors file"):
        load(hostile[0])
    torch.save({"head.weight": torch.zeros(2)}, hostile[0] / mg.WEIGHTS_FILE)  # zip + pickle
    with pytest.raises(mg.GraphRejected, match="not a valid safetensors file"):
        load(hostile[0])
    assert not marker.exists()


def test_weights_over_the_limit_are_rejected(hostile):
    with pytest.raises(mg.GraphRejected, match="over the limit of 1000"):
        load(hostile[0], max_weight_bytes=1000)


@pytest.mark.parametrize("how, reason", [
    (lambda x, idx: x[:, :-1], r"logits of shape \(2, 31, 64\)"),
    (lambda x, idx: x[..., :VOCAB - 1], r"logits of shape \(2, 32, 63\)"),
    (lambda x, idx: x * float("nan"), "non-finite logits"),
    (lambda x, idx: x + float("inf"), "non-finite logits"),
    (lambda x, idx: idx + 1, "not floating-point logits"),
])
def test_bad_outputs_are_rejected_when_the_graph_runs(tmp_path, how, reason):
    mg.export_model(Returns(how), batch_size=B, seq_len=T, out_dir=tmp_path)
    graph = load(tmp_path)
    with pytest.raises(mg.GraphRejected, match=reason):
        graph(torch.randint(0, VOCAB, (B, T)))


def test_wrong_call_input_is_refused(exported):
    graph = load(exported[0])
    for bad in (torch.zeros(B, T, dtype=torch.int32), torch.zeros(B + 1, T, dtype=torch.int64),
                torch.zeros(B, T + 1, dtype=torch.int64)):
        with pytest.raises(ValueError):
            graph(bad)


# ---------------------------------------------------------------------------------------------
# The export child (untrusted side), as the harness runs it


def _export_workspace(tmp_path, train_source):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "train.py").write_text(train_source)
    shutil.copyfile(REPO / "genome" / "prepare.py", ws / "prepare.py")
    run = {"device": "cpu", "profile": "cpu", "budget_kind": "tokens", "budget_value": 1000,
           "seed": 0, "out_dir": str(ws), "train_bin": str(ws / "train.bin"),
           "vocab_size": VOCAB, "bos_id": 0, "seq_len": T, "threads": 1}
    (ws / "run.json").write_text(json.dumps(run))
    torch.save(genome_model().state_dict(), ws / "model.pt")
    spec = {"train_py": str(ws / "train.py"), "prepare_py": str(ws / "prepare.py"),
            "run_config": str(ws / "run.json"), "model_pt": str(ws / "model.pt"),
            "out_dir": str(ws / "export"), "batch_size": B, "seq_len": T}
    (ws / "spec.json").write_text(json.dumps(spec))
    # The child sees model_graph.py next to it and nothing else of the checkout.
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("export_child.py", "model_graph.py"):
        shutil.copyfile(REPO / "experiments" / "run" / name, tools / name)
    done = subprocess.run([sys.executable, "-I", str(tools / "export_child.py"),
                           str(ws / "spec.json")], cwd=ws, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    return ws, done


def test_export_child_exports_the_trained_model(tmp_path, exported):
    ws, done = _export_workspace(tmp_path, (REPO / "genome" / "train.py").read_text())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "export: " in done.stdout
    idx = torch.randint(0, VOCAB, (B, T))
    torch.testing.assert_close(load(ws / "export")(idx), load(exported[0])(idx))


def test_export_child_failure_is_one_clear_line(tmp_path):
    honest = "        if targets is None:\n            return logits\n"
    source = (REPO / "genome" / "train.py").read_text()
    assert honest in source
    source = source.replace(honest, "        if targets is None:\n"
                                    "            return logits + torch.rand_like(logits)\n")
    ws, done = _export_workspace(tmp_path, source)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "export failed: the graph uses aten." in done.stdout, done.stdout
    assert "which the evaluator does not allow" in done.stdout
    assert not (ws / "export" / mg.GRAPH_FILE).exists()


# ---------------------------------------------------------------------------------------------
# Every edit the mutate catalogue can make of the base genome exports and passes the loader


@pytest.mark.slow
def test_every_catalogue_edit_exports_and_loads(tmp_path):
    source = (REPO / "genome" / "train.py").read_text()
    catalogue = build_catalogue(source, profile="cpu")
    assert len(catalogue) > 30
    failures = []
    for n, (key, edit) in enumerate(sorted(catalogue.items())):
        edited = edit.apply(source)
        assert edited is not None, key
        path = tmp_path / f"train_edit_{n}.py"
        path.write_text(edited)
        spec = importlib.util.spec_from_file_location(f"train_edit_{n}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = genome_model(module)
        out = tmp_path / f"export_{n}"
        try:
            mg.export_model(model, batch_size=B, seq_len=T, out_dir=out)
            idx = torch.randint(0, VOCAB, (B, T))
            with torch.no_grad():
                expected = model(idx)
            torch.testing.assert_close(load(out)(idx), expected, atol=1e-4, rtol=1e-4)
        except Exception as e:  # collect all, report together
            failures.append(f"{key}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


def test_graph_json_is_plain_tagged_data(exported):
    graph = json.loads((exported[0] / mg.GRAPH_FILE).read_text())
    assert graph["format"] == mg.FORMAT and graph["input"] == {"dtype": "int64", "shape": [B, T]}
    tags = set()

    def walk(value):
        (tag, inner), = value.items()
        tags.add(tag)
        if tag in ("list", "tuple"):
            for v in inner:
                walk(v)

    for n in copy.deepcopy(graph["nodes"]):
        for v in n.get("args", []) + list(n.get("kwargs", {}).values()):
            walk(v)
    assert tags <= {"ref", "int", "float", "bool", "none", "str", "dtype", "device", "layout",
                    "memory_format", "list", "tuple"}
    assert {"ref", "int", "float", "list"} <= tags


def test_export_child_warm_up_exports_its_own_model():
    """The export child's warm-up (before its go) must really export, or it saves nothing."""
    from experiments.run import export_child
    assert export_child._warm_up() is True

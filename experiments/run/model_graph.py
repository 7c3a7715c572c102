"""The model as data: a graph of standard ATen operators (JSON) plus weights (safetensors).

A candidate's trained model crosses from the untrusted sandbox to the trusted evaluator in
this form only, so the evaluator never imports, executes or unpickles anything the candidate
wrote. Two sides, one format:

- `export_model(model, ...)` (UNTRUSTED side, in the sandbox): torch.export with a static
  (batch_size, seq_len) int64 input, decomposed to core ATen (scaled_dot_product_attention
  kept whole, so one graph runs on CUDA, ROCm, MPS and CPU), written as
  `graph.json` + `weights.safetensors`.
- `load_graph(dir, ...)` (TRUSTED side): validates everything and fails closed with
  `GraphRejected`: size limits, a strict schema, an allowlist of pure, deterministic,
  functional ATen operators, references to earlier nodes only, one int64 input of the
  evaluation shape, one output, and weights that match the declared placeholders exactly.
  The returned `ModelGraph` interprets the nodes in order with `torch.ops.aten`; it holds no
  state and draws no random numbers, so it is a pure function of its input.

graph.json ("loopy-graph/1"):
    {"format": "loopy-graph/1", "torch_version": str,
     "input": {"dtype": "int64", "shape": [B, T]},
     "nodes": [node, ...]}
    node: {"name", "op": "placeholder", "kind": "user_input" | "parameter" | "buffer" |
           "constant", "weight": str | null, "dtype": str, "shape": [int, ...]}
        | {"name", "op": "call_function", "target": "aten.<op>.<overload>" | "getitem",
           "args": [value, ...], "kwargs": {str: value}}
        | {"name", "op": "output", "args": [{"ref": name}]}
    value: {"ref": node name} | {"int": n} | {"float": x | "inf" | "-inf" | "nan"}
        | {"bool": b} | {"none": null} | {"str": s} | {"dtype": name} | {"device": s}
        | {"layout": name} | {"memory_format": name} | {"list": [value...]}
        | {"tuple": [value...]}
    "getitem" picks element i of a multi-output operator's result (args: [ref, int]).

No torch import at module level: the harness imports this module without torch.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

FORMAT = "loopy-graph/1"
GRAPH_FILE = "graph.json"
WEIGHTS_FILE = "weights.safetensors"
MAX_GRAPH_BYTES = 32 * 2**20
MAX_WEIGHT_BYTES = 8 * 2**30
MAX_NODES = 50_000
MAX_DEPTH = 4  # nesting of list/tuple values (a list of lists of ints is depth 2)
GETITEM = "getitem"
SDPA = "aten.scaled_dot_product_attention.default"

# Pure, deterministic, functional core ATen operators. The first entries of each family (to
# the `|` comment) are what the base genome and every mutate-catalogue edit of it export to
# (tests/test_model_graph.py checks this); the rest are close neighbours an edit plausibly
# produces (biases, layer norm, softmax, dtype casts, masks). Every entry reads only its
# tensor arguments and returns a fresh result or a view (no in-place `_` variants, no `out=`
# overloads), draws no random numbers, does no I/O, and has a shape fixed by the graph.
# Left out on purpose: random ops (rand*, normal, bernoulli, dropout, multinomial, ...),
# uninitialised memory (empty*, whose contents could leak other data), data-dependent shapes
# (nonzero, masked_select, unique, item), scatter/index_put (racy with duplicate indices on
# GPUs), as_strided (can reach storage outside a view), and anything outside `aten`.
ALLOWED_OPS = frozenset({
    # Views, copies and layout: move values around, no arithmetic.
    "aten.alias.default", "aten.view.default", "aten.permute.default", "aten.slice.Tensor",
    "aten.clone.default", "aten.cat.default", "aten.split_with_sizes.default",  # |
    "aten.expand.default", "aten.select.int", "aten.squeeze.dims", "aten.unsqueeze.default",
    "aten.repeat.default", "aten.constant_pad_nd.default", "aten.slice_scatter.default",
    "aten.select_scatter.default", "aten._to_copy.default",
    # Constants: values fixed by the arguments (created on the evaluation device).
    "aten.full.default", "aten.full_like.default", "aten.scalar_tensor.default",
    "aten.arange.start_step",
    # Lookups: rows of a weight by index (indices are bounds-checked by the kernels).
    "aten.embedding.default",  # |
    "aten.index_select.default", "aten.gather.default", "aten.index.Tensor",
    # Elementwise arithmetic, math and activations.
    "aten.add.Tensor", "aten.add.Scalar", "aten.sub.Tensor", "aten.mul.Tensor",
    "aten.div.Tensor", "aten.pow.Tensor_Scalar", "aten.rsqrt.default", "aten.tanh.default",
    "aten.relu.default", "aten.gelu.default", "aten.sigmoid.default",  # |
    "aten.sub.Scalar", "aten.mul.Scalar", "aten.div.Scalar", "aten.div.Tensor_mode",
    "aten.neg.default", "aten.abs.default", "aten.pow.Tensor_Tensor", "aten.sqrt.default",
    "aten.reciprocal.default", "aten.exp.default", "aten.log.default", "aten.sin.default",
    "aten.cos.default", "aten.erf.default", "aten.maximum.default", "aten.minimum.default",
    "aten.clamp.default", "aten.where.self", "aten.leaky_relu.default",
    "aten.remainder.Scalar", "aten.remainder.Tensor",
    # Comparisons and logic (masks).
    "aten.eq.Tensor", "aten.eq.Scalar", "aten.ne.Tensor", "aten.ne.Scalar", "aten.lt.Tensor",
    "aten.lt.Scalar", "aten.le.Tensor", "aten.le.Scalar", "aten.gt.Tensor", "aten.gt.Scalar",
    "aten.ge.Tensor", "aten.ge.Scalar", "aten.logical_not.default", "aten.logical_and.default",
    "aten.logical_or.default", "aten.bitwise_and.Tensor", "aten.bitwise_or.Tensor",
    # Reductions over fixed dimensions (mixing along the sequence is what the probe checks).
    "aten.mean.dim",  # |
    "aten.sum.dim_IntList", "aten.amax.default", "aten.var.correction", "aten.cumsum.default",
    # Matrix products, normalisation, softmax and attention (SDPA only with dropout_p == 0).
    "aten.mm.default", SDPA,  # |
    "aten.bmm.default", "aten.addmm.default", "aten._softmax.default",
    "aten._log_softmax.default", "aten.native_layer_norm.default",
})

DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
          "uint8", "bool")
LAYOUTS = ("strided",)
MEMORY_FORMATS = ("contiguous_format", "preserve_format")
# safetensors' dtype names, for checking a file's header against the declared dtypes
SAFETENSORS_DTYPES = {"F32": "float32", "F64": "float64", "F16": "float16",
                      "BF16": "bfloat16", "I64": "int64", "I32": "int32", "I16": "int16",
                      "I8": "int8", "U8": "uint8", "BOOL": "bool"}
PLACEHOLDER_KINDS = ("user_input", "parameter", "buffer", "constant")
# Export-only assertions with no users: dropped, they check what the graph already fixes.
DROPPED_OPS = frozenset({"aten._assert_tensor_metadata.default"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
_WEIGHT = re.compile(r"[A-Za-z0-9_.\-]{1,500}")


class ExportError(Exception):
    """The model cannot be exported as a graph of allowed operators; the message says why."""


class GraphRejected(Exception):
    """An exported graph breaks the format or the evaluation contract; the message says how."""


class GraphRunError(Exception):
    """A valid graph failed while running (an operator raised, memory ran out, ...)."""


# ---------------------------------------------------------------------------------------------
# Export (untrusted side)


def export_model(model, *, batch_size: int, seq_len: int, out_dir) -> dict:
    """Write model as out_dir/graph.json + out_dir/weights.safetensors; a summary dict.

    The graph is specialised to int64 input of shape (batch_size, seq_len). Raises
    ExportError with a human reason when the model cannot be exported in this format.
    """
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    model = model.to("cpu").eval()
    example = torch.zeros((batch_size, seq_len), dtype=torch.int64)
    try:
        with torch.no_grad():
            program = torch.export.export(model, (example,), strict=False)
        table = torch.export.default_decompositions()
        del table[torch.ops.aten.scaled_dot_product_attention.default]  # kept whole
        program = program.run_decompositions(table)
    except Exception as e:
        raise ExportError(f"torch.export failed: {_first_line(e)}") from e

    sig = program.graph_signature
    if sig.buffers_to_mutate or sig.user_inputs_to_mutate:
        raise ExportError("the forward pass mutates a buffer or its input; the evaluated "
                          "model must be a pure function of the tokens")
    outputs = list(sig.output_specs)
    if len(outputs) != 1 or outputs[0].kind.name != "USER_OUTPUT":
        raise ExportError(f"the forward pass returns {len(outputs)} outputs; "
                          "it must return one tensor of logits")

    specs = {s.arg.name: s for s in sig.input_specs}
    kinds = {"USER_INPUT": "user_input", "PARAMETER": "parameter", "BUFFER": "buffer",
             "CONSTANT_TENSOR": "constant"}
    nodes, weights, ops = [], {}, {}
    for node in program.graph.nodes:
        if node.op == "placeholder":
            spec = specs[node.name]
            kind = kinds.get(spec.kind.name)
            if kind is None:
                raise ExportError(f"input {node.name} is a {spec.kind.name}, which the graph "
                                  "format cannot hold")
            if kind == "user_input":
                tensor, weight = example, None
            else:
                weight = spec.target
                if not _WEIGHT.fullmatch(weight):
                    raise ExportError(f"weight name {weight[:80]!r} is not allowed")
                source = program.state_dict if weight in program.state_dict else program.constants
                tensor = source[weight]
                if not isinstance(tensor, torch.Tensor):
                    raise ExportError(f"{weight} is a {type(tensor).__name__}, not a tensor")
                weights[weight] = tensor.detach().to("cpu").contiguous().clone()
            nodes.append({"name": node.name, "op": "placeholder", "kind": kind, "weight": weight,
                          "dtype": _dtype_name(tensor.dtype, node.name),
                          "shape": [int(d) for d in tensor.shape]})
        elif node.op == "call_function":
            target = _target_name(node.target)
            if target in DROPPED_OPS and not node.users:
                continue
            if target != GETITEM and target not in ALLOWED_OPS:
                raise ExportError(f"the graph uses {target} (node {node.name}), which the "
                                  "evaluator does not allow")
            ops[target] = ops.get(target, 0) + 1
            nodes.append({"name": node.name, "op": "call_function", "target": target,
                          "args": [_encode(a, node.name) for a in node.args],
                          "kwargs": {k: _encode(v, node.name) for k, v in node.kwargs.items()}})
        elif node.op == "output":
            (value,) = node.args
            value = value[0] if isinstance(value, (tuple, list)) and len(value) == 1 else value
            if not isinstance(value, torch.fx.Node):
                raise ExportError("the forward pass must return one tensor of logits")
            nodes.append({"name": node.name, "op": "output", "args": [{"ref": value.name}]})
        else:
            raise ExportError(f"the graph holds a {node.op} node ({node.name}), which the "
                              "graph format cannot hold")

    graph = {"format": FORMAT, "torch_version": str(torch.__version__),
             "input": {"dtype": "int64", "shape": [batch_size, seq_len]}, "nodes": nodes}
    out.mkdir(parents=True, exist_ok=True)
    (out / GRAPH_FILE).write_text(json.dumps(graph, allow_nan=False), encoding="utf-8")
    save_file(weights, str(out / WEIGHTS_FILE))
    return {"n_nodes": len(nodes), "ops": dict(sorted(ops.items())),
            "weight_bytes": sum(t.numel() * t.element_size() for t in weights.values())}


def _target_name(target) -> str:
    import operator

    import torch

    if target is operator.getitem:
        return GETITEM
    if isinstance(target, torch._ops.OpOverload):
        return str(target)  # "aten.mm.default"
    return getattr(target, "__name__", None) or repr(target)


def _dtype_name(dtype, where: str) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ExportError(f"{where} has dtype {name}, which the graph format cannot hold")
    return name


def _encode(value, where: str):
    """One argument as a tagged JSON value; ExportError for anything else."""
    import torch

    if isinstance(value, torch.fx.Node):
        return {"ref": value.name}
    if value is None:
        return {"none": None}
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"float": value if math.isfinite(value) else str(value)}  # "inf", "-inf", "nan"
    if isinstance(value, str):
        return {"str": value}
    if isinstance(value, torch.dtype):
        return {"dtype": _dtype_name(value, where)}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if isinstance(value, (list, tuple)):
        return {"list" if isinstance(value, list) else "tuple": [_encode(v, where) for v in value]}
    raise ExportError(f"node {where} has an argument of type {type(value).__name__}, which "
                      "the graph format cannot hold")


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]


# ---------------------------------------------------------------------------------------------
# Load and run (trusted side)


class _Ref:
    """A decoded reference to the value of an earlier node, by index."""
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


def load_graph(directory, *, vocab_size: int, batch_size: int, seq_len: int, device,
               max_weight_bytes: int = MAX_WEIGHT_BYTES) -> "ModelGraph":
    """Validate directory/graph.json + weights.safetensors; a ModelGraph on device.

    Raises GraphRejected with a reason for anything outside the format or the contract.
    """
    import torch

    directory = Path(directory)
    graph = _read_json(directory / GRAPH_FILE)
    _keys(graph, {"format", "torch_version", "input", "nodes"}, "graph.json")
    if graph["format"] != FORMAT:
        raise GraphRejected(f"graph.json has format {str(graph['format'])[:40]!r}, "
                            f"expected {FORMAT!r}")
    if not isinstance(graph["torch_version"], str) or len(graph["torch_version"]) > 100:
        raise GraphRejected("graph.json: bad torch_version")
    expected_input = {"dtype": "int64", "shape": [batch_size, seq_len]}
    if graph["input"] != expected_input:
        raise GraphRejected(f"graph input is {_short(graph['input'])}, expected int64 of shape "
                            f"[{batch_size}, {seq_len}]")
    raw_nodes = graph["nodes"]
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise GraphRejected("graph.json: nodes must be a non-empty list")
    if len(raw_nodes) > MAX_NODES:
        raise GraphRejected(f"graph has {len(raw_nodes)} nodes, over the limit of {MAX_NODES}")

    index: dict[str, int] = {}
    nodes, placeholders, user_inputs, output = [], [], [], None
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) \
                or not _NAME.fullmatch(raw["name"]):
            raise GraphRejected(f"node {i}: missing or bad name")
        name = raw["name"]
        if name in index:
            raise GraphRejected(f"node {name}: duplicate name")
        if output is not None:
            raise GraphRejected(f"node {name} comes after the output node")
        op = raw.get("op")
        if op == "placeholder":
            _keys(raw, {"name", "op", "kind", "weight", "dtype", "shape"}, f"node {name}")
            node = _placeholder(raw)
            placeholders.append((i, node))
            if node["kind"] == "user_input":
                user_inputs.append(i)
            nodes.append(("placeholder", None, None, None))
        elif op == "call_function":
            _keys(raw, {"name", "op", "target", "args", "kwargs"}, f"node {name}")
            nodes.append(("call", *_call(torch, raw, index)))
        elif op == "output":
            _keys(raw, {"name", "op", "args"}, f"node {name}")
            args = raw["args"]
            if not (isinstance(args, list) and len(args) == 1):
                raise GraphRejected("the output node must name exactly one value")
            ref = _decode(args[0], index, name, 0)
            if not isinstance(ref, _Ref):
                raise GraphRejected("the output node must name exactly one value")
            output = ref.index
            nodes.append(("output", None, None, None))
        else:
            raise GraphRejected(f"node {name}: unknown op {_short(op)}")
        index[name] = i
    if output is None:
        raise GraphRejected("graph has no output node")
    if len(user_inputs) != 1:
        raise GraphRejected(f"graph has {len(user_inputs)} user inputs, expected exactly one")
    ui = dict(placeholders)[user_inputs[0]]
    if ui["dtype"] != "int64" or ui["shape"] != [batch_size, seq_len] or ui["weight"] is not None:
        raise GraphRejected(f"the user input is {ui['dtype']} of shape {ui['shape']}, expected "
                            f"int64 of shape [{batch_size}, {seq_len}]")
    if nodes[output][0] == "placeholder":
        raise GraphRejected("the output must be computed, not an input")

    weights = _load_weights(torch, directory / WEIGHTS_FILE, placeholders, max_weight_bytes,
                            device)
    return ModelGraph(nodes, weights, user_inputs[0], output, vocab_size=vocab_size,
                      batch_size=batch_size, seq_len=seq_len, device=device)


def _read_json(path: Path):
    try:
        st = os.lstat(path)
    except OSError:
        raise GraphRejected(f"{path.name} is missing") from None
    if not os.path.isfile(path) or os.path.islink(path):
        raise GraphRejected(f"{path.name} is not a regular file")
    if st.st_size > MAX_GRAPH_BYTES:
        raise GraphRejected(f"{path.name} is {st.st_size} bytes, over the limit of "
                            f"{MAX_GRAPH_BYTES}")
    with open(path, "rb") as f:
        raw = f.read(MAX_GRAPH_BYTES + 1)
    if len(raw) > MAX_GRAPH_BYTES:
        raise GraphRejected(f"{path.name} is over the limit of {MAX_GRAPH_BYTES} bytes")

    def no_constant(token):
        raise ValueError(f"non-standard JSON constant {token}")

    try:
        graph = json.loads(raw.decode("utf-8"), parse_constant=no_constant)
    except (ValueError, RecursionError) as e:
        raise GraphRejected(f"{path.name} is not valid JSON: {_first_line(e)}") from None
    if not isinstance(graph, dict):
        raise GraphRejected(f"{path.name} must hold a JSON object")
    return graph


def _keys(obj: dict, expected: set, where: str) -> None:
    if not isinstance(obj, dict) or set(obj) != expected:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise GraphRejected(f"{where}: keys {_short(got)}, expected {sorted(expected)}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _placeholder(raw: dict) -> dict:
    name, kind, weight = raw["name"], raw["kind"], raw["weight"]
    if kind not in PLACEHOLDER_KINDS:
        raise GraphRejected(f"node {name}: unknown placeholder kind {_short(kind)}")
    if kind == "user_input":
        if weight is not None:
            raise GraphRejected(f"node {name}: a user input names no weight")
    elif not (isinstance(weight, str) and _WEIGHT.fullmatch(weight)):
        raise GraphRejected(f"node {name}: missing or bad weight name")
    if raw["dtype"] not in DTYPES:
        raise GraphRejected(f"node {name}: unknown dtype {_short(raw['dtype'])}")
    shape = raw["shape"]
    if not (isinstance(shape, list) and len(shape) <= 8 and all(
            type(d) is int and 0 <= d < 2**40 for d in shape)):
        raise GraphRejected(f"node {name}: bad shape {_short(shape)}")
    return {"kind": kind, "weight": weight, "dtype": raw["dtype"], "shape": shape}


def _call(torch, raw: dict, index: dict) -> tuple:
    """(callable or GETITEM, decoded args, decoded kwargs) of one call_function node."""
    name, target = raw["name"], raw["target"]
    args, kwargs = raw["args"], raw["kwargs"]
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise GraphRejected(f"node {name}: args must be a list and kwargs an object")
    args = [_decode(a, index, name, 0) for a in args]
    for key, value in kwargs.items():
        if not _NAME.fullmatch(key):
            raise GraphRejected(f"node {name}: bad keyword {_short(key)}")
    kwargs = {k: _decode(v, index, name, 0, device_ok=(k == "device")) for k, v in kwargs.items()}
    if target == GETITEM:
        if kwargs or len(args) != 2 or not isinstance(args[0], _Ref) or type(args[1]) is not int:
            raise GraphRejected(f"node {name}: getitem takes a node and an int")
        return GETITEM, args, kwargs
    if not isinstance(target, str) or target not in ALLOWED_OPS:
        raise GraphRejected(f"node {name}: operator {_short(target)} is not allowed")
    _, op_name, overload = target.split(".")
    try:
        op = getattr(getattr(torch.ops.aten, op_name), overload)
    except (AttributeError, RuntimeError):
        raise GraphRejected(f"node {name}: operator {target} does not exist in this "
                            "torch") from None
    # Belt and braces: the allowlist is reviewed, and the schema must agree it is pure.
    seeded = torch.Tag.nondeterministic_seeded in op.tags and target != SDPA  # dropout: below
    if op._schema.is_mutable or seeded:
        raise GraphRejected(f"node {name}: operator {target} mutates or draws random numbers")
    if any(a.name == "device" and a.kwarg_only for a in op._schema.arguments):
        kwargs["device"] = None  # always created on the evaluation device (set when run)
    if target == SDPA:
        dropout = args[4] if len(args) > 4 else kwargs.get("dropout_p", 0.0)
        if type(dropout) not in (int, float) or dropout != 0:
            raise GraphRejected(f"node {name}: scaled_dot_product_attention with dropout_p "
                                f"{_short(dropout)}; only 0 is allowed")
    return op, args, kwargs


def _decode(value, index: dict, where: str, depth: int, device_ok: bool = False):
    """A tagged JSON value as a Python value (_Ref for node references)."""
    import torch

    if not isinstance(value, dict) or len(value) != 1:
        raise GraphRejected(f"node {where}: every value must be an object with one tag")
    (tag, v), = value.items()
    if tag == "ref":
        if not isinstance(v, str) or v not in index:
            raise GraphRejected(f"node {where}: reference to {_short(v)}, which is not an "
                                "earlier node")
        return _Ref(index[v])
    if tag == "int" and type(v) is int and abs(v) < 2**63:
        return v
    if tag == "float":
        if type(v) in (int, float):
            try:
                number = float(v)
            except OverflowError:  # an int of hundreds of digits
                number = math.inf
            if math.isfinite(number):
                return number
        if v in ("inf", "-inf", "nan"):
            return float(v)
    if tag == "bool" and type(v) is bool:
        return v
    if tag == "none" and v is None:
        return None
    if tag == "str" and isinstance(v, str) and len(v) <= 100:
        return v
    if tag == "dtype" and v in DTYPES:
        return getattr(torch, v)
    if tag == "device" and device_ok and isinstance(v, str) and len(v) <= 40:
        return None  # replaced by the evaluation device when the node runs
    if tag == "layout" and v in LAYOUTS:
        return getattr(torch, v)
    if tag == "memory_format" and v in MEMORY_FORMATS:
        return getattr(torch, v)
    if tag in ("list", "tuple") and isinstance(v, list) and depth < MAX_DEPTH:
        items = [_decode(x, index, where, depth + 1) for x in v]
        return items if tag == "list" else tuple(items)
    raise GraphRejected(f"node {where}: bad value {_short(value)}")


def _load_weights(torch, path: Path, placeholders: list, max_bytes: int, device) -> dict:
    """{node index: tensor on device} for every weight placeholder, checked against the file."""
    from safetensors import safe_open

    try:
        st = os.lstat(path)
    except OSError:
        raise GraphRejected(f"{path.name} is missing") from None
    if not os.path.isfile(path) or os.path.islink(path):
        raise GraphRejected(f"{path.name} is not a regular file")
    if st.st_size > max_bytes:
        raise GraphRejected(f"{path.name} is {st.st_size} bytes, over the limit of {max_bytes}")
    declared = {node["weight"]: (i, node) for i, node in placeholders
                if node["kind"] != "user_input"}
    if len(declared) != sum(1 for _, n in placeholders if n["kind"] != "user_input"):
        raise GraphRejected("two placeholders name the same weight")
    weights = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            present = set(f.keys())
            if present != set(declared):
                extra, missing = sorted(present - set(declared)), sorted(set(declared) - present)
                raise GraphRejected(f"{path.name} does not match the graph: extra tensors "
                                    f"{_short(extra)}, missing {_short(missing)}")
            for name, (i, node) in declared.items():
                piece = f.get_slice(name)
                shape, dtype = list(piece.get_shape()), SAFETENSORS_DTYPES.get(piece.get_dtype())
                if shape != node["shape"] or dtype != node["dtype"]:
                    raise GraphRejected(f"weight {name} is {dtype} {shape}, the graph declares "
                                        f"{node['dtype']} {node['shape']}")
            for name, (i, node) in declared.items():
                weights[i] = f.get_tensor(name).to(device)
    except GraphRejected:
        raise
    except Exception as e:  # a corrupt or foreign file (e.g. a pickle): not safetensors
        raise GraphRejected(f"{path.name} is not a valid safetensors file: "
                            f"{_first_line(e)}") from None
    return weights


class ModelGraph:
    """A validated graph bound to its weights on one device; call it with token ids.

    `graph(idx)` maps int64 (b, seq_len) token ids, b <= batch_size, to logits
    (b, seq_len, >= vocab_size). Holds no state between calls and draws no random numbers.
    `eval()` / `train()` / `training` exist so that metric code written for nn.Modules
    accepts it; they change nothing.
    """

    training = False

    def __init__(self, nodes, weights, input_index, output_index, *, vocab_size, batch_size,
                 seq_len, device):
        import torch

        self.nodes, self.weights = nodes, weights
        self.input_index, self.output_index = input_index, output_index
        self.vocab_size, self.batch_size, self.seq_len = vocab_size, batch_size, seq_len
        self.device = torch.device(device)
        self.params = sum(int(t.numel()) for t in weights.values())
        self.n_nodes = len(nodes)
        # Free each intermediate right after its last use: frees[i] = nodes done after node i.
        last = {}
        for i, (_, _, args, kwargs) in enumerate(nodes):
            for j in _refs(args) + _refs(kwargs):
                last[j] = i
        self.frees = [[] for _ in nodes]
        for j, (kind, *_rest) in enumerate(nodes):
            if kind == "call" and j != output_index:
                self.frees[last.get(j, j)].append(j)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, idx):
        import torch

        B, T = self.batch_size, self.seq_len
        if type(idx) is not torch.Tensor or idx.dtype != torch.int64 or idx.dim() != 2 \
                or idx.shape[1] != T or not 1 <= idx.shape[0] <= B:
            raise ValueError(f"expected int64 token ids of shape (<= {B}, {T})")
        rows = idx.shape[0]
        idx = idx.to(self.device)
        if rows < B:  # the graph's shapes are static: pad with copies of the last row
            idx = torch.cat([idx, idx[-1:].expand(B - rows, T)])
        env = [None] * len(self.nodes)
        env[self.input_index] = idx
        for i, w in self.weights.items():
            env[i] = w
        with torch.inference_mode():
            try:
                for i, (kind, fn, args, kwargs) in enumerate(self.nodes):
                    if kind == "call":
                        a, k = _fill(args, env), _fill(kwargs, env)
                        if fn is GETITEM:
                            if not isinstance(a[0], (list, tuple)):
                                raise TypeError("getitem of a single tensor")
                            env[i] = a[0][a[1]]
                        else:
                            if "device" in k:  # the only device a graph may use
                                k["device"] = self.device
                            if k.get("pin_memory"):
                                k["pin_memory"] = False
                            env[i] = fn(*a, **k)
                    for j in self.frees[i]:
                        env[j] = None
                if self.device.type == "cuda":  # kernel errors surface here, not later
                    torch.cuda.synchronize(self.device)
            except Exception as e:
                raise GraphRunError(f"the graph failed at node {i}: {_first_line(e)}") from None
            out = env[self.output_index]
        if type(out) is not torch.Tensor or not out.is_floating_point():
            raise GraphRejected(f"the graph returned {type(out).__name__} "
                                f"{getattr(out, 'dtype', '')}, not floating-point logits")
        shape = tuple(out.shape)
        if len(shape) != 3 or shape[:2] != (B, T) or shape[2] < self.vocab_size:
            raise GraphRejected(f"the graph returned logits of shape {shape}, expected "
                                f"({B}, {T}, >={self.vocab_size})")
        # float32, as the metric computes: float64 logits past float32's range are inf here
        out = out[:rows].float()
        low, high = torch.aminmax(out)  # NaN propagates; 15x faster than isfinite().all()
        if not (math.isfinite(float(low)) and math.isfinite(float(high))):
            raise GraphRejected("the graph returned non-finite logits")
        return out


def _refs(value) -> list:
    if isinstance(value, _Ref):
        return [value.index]
    if isinstance(value, (list, tuple)):
        return [j for v in value for j in _refs(v)]
    if isinstance(value, dict):
        return [j for v in value.values() for j in _refs(v)]
    return []


def _fill(value, env):
    """value with every _Ref replaced by the node's computed value."""
    if isinstance(value, _Ref):
        return env[value.index]
    if isinstance(value, list):
        return [_fill(v, env) for v in value]
    if isinstance(value, tuple):
        return tuple(_fill(v, env) for v in value)
    if isinstance(value, dict):
        return {k: _fill(v, env) for k, v in value.items()}
    return value

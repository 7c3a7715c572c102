"""TRUSTED evaluation child: score one exported candidate model, or reject it with a reason.

    python -I experiments/run/evaluate_child.py <eval.json>

The harness runs this in a sandboxed child process that can read val.bin, the tokenizer
and the exported graph, but no candidate code. Its bytes are part of the genome id,
together with genome/prepare.py: the evaluation settings and the causality probe below
define what a score means.

What it trusts: this file, experiments/run/model_graph.py (next to it), the genome's
prepare.py (loaded by path from the spec), torch, numpy, safetensors, and the data files.
What it does not trust: everything in graph_dir (graph.json + weights.safetensors, written
in the candidate's sandbox). That directory is only ever read as data by
`model_graph.load_graph`, which validates it against an allowlist of pure ATen operators;
nothing the candidate wrote is imported, executed or unpickled here.

Steps:
1. Read the spec: from the pipe `--fd N` (the harness's way: the nonce and the probe seed
   never touch a file), or from eval.json, which it then deletes.
2. Load the trusted prepare.py and the tokenizer; with `go_fd`, wait for the harness's
   go on that pipe (the child starts while the export still runs; EOF means there is
   nothing to evaluate); load and validate the graph (a GraphRejected is status
   `rejected` with its reason).
3. Score val_bpb with the trusted `prepare.evaluate_bpb` on the fixed validation windows.
   The metric calls the graph through `_ProbedScorer`, which returns the graph's logits
   unchanged (so the score is exactly evaluate_bpb's) and, on every scoring batch (a
   PROBE_FRACTION of them, drawn with the secret seed), runs the causality probe on it:
   each row keeps its tokens up to a cut, gets other real validation text after it, and
   the rows are shuffled (cuts are dealt from a shuffled deck of every position, so the
   256 validation rows cover each one);
   each row's logits up to its cut must equal those of the scoring pass. Rows whose windows
   overlap are cut at one common position of the token file (`probe_cuts`), so no row can
   find its own replaced future in another row's kept text.
4. With spec "test": {"seed", "n_windows"}, also score the held-out test split
   (`prepare.test_bpb`, windows drawn with that seed), probed the same way, and reject a
   model whose val_bpb beats its test_bpb by more than MAX_VAL_TEST_GAP. The harness asks
   for CHECK_WINDOWS test windows in every evaluation, the full set for a verification.
5. Write the result JSON (status ok | rejected | crash | error, val_bpb, test_bpb, params,
   probe_batches, probe_max_diff, eval_s, reason, the nonce) to the path eval.json named,
   atomically. `error` means the evaluator itself failed, never the candidate.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

# Evaluation settings per hardware profile (never chosen by train.py). 256 windows of 256
# tokens give a stable CPU score in a few seconds on 2 cores. The exported graph has the
# static input shape (batch_size, seq_len) of its profile.
EVAL_SETTINGS = {
    "cpu": {"seq_len": 256, "batch_size": 16, "n_windows": 256},
    "mps": {"seq_len": 1024, "batch_size": 8, "n_windows": 512},
    "cuda": {"seq_len": 2048, "batch_size": 32, "n_windows": 2048},
}
# Causality probe: absolute tolerance on logits that must not change (an honest model's
# differ by nothing on CPU, by rounding on GPUs); a peek under it gains at most that many
# nats a token.
PROBE_TOLERANCE = {"cpu": 1e-3, "mps": 2e-2, "cuda": 2e-2}
# The fixed validation windows are public, so a program can carry their text (a lookup
# table in its weights). Every evaluation also scores a few random held-out test windows:
# a model this much better on validation than on test is rejected.
MAX_VAL_TEST_GAP = 0.10  # honest val - test: -0.025 to +0.06 at 64 windows (docs/LOG.md);
# every point of room here is validation text a model may carry unseen in one evaluation
CHECK_WINDOWS = 64
# A score past this is no model (swarm.records.MAX_BPB: records refuse it too).
MAX_BPB = 64.0
# Every scoring batch is probed: a probe catches a peek at position t only when a row's cut
# is just before t, so coverage (CutDeck) is what keeps a model that peeks at a few positions
# from passing.
PROBE_FRACTION = 1.0  # of the scoring batches, drawn from the secret probe seed
MIN_PROBE_BATCHES = 2


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


class Rejected(Exception):
    """The candidate breaks the evaluation contract: no score, a reason."""


def _load_module(name: str, path) -> object:
    spec = importlib.util.spec_from_file_location(name, str(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _model_graph():
    """experiments/run/model_graph.py: the package's module where there is one, else by path
    (`python -I` puts neither the script's directory nor the checkout on sys.path)."""
    if __package__:
        from experiments.run import model_graph
        return model_graph
    return _load_module("loopy_model_graph", Path(__file__).resolve().with_name("model_graph.py"))


def probe_plan(n_batches: int, rng) -> set:
    """Indices of the scoring batches that get a causality probe: PROBE_FRACTION, at least 2."""
    k = min(n_batches, max(MIN_PROBE_BATCHES, round(n_batches * PROBE_FRACTION)))
    return {int(i) for i in rng.choice(n_batches, size=k, replace=False)}


class CutDeck:
    """Probe cuts 0..seq_len-2 dealt without replacement, shuffled afresh when spent.

    A probe catches a model that reads one later position t only in a row whose cut lies
    before t and at or after the peeking position; with one fixed pair that is one cut
    value. Independent draws miss a given value in 256 rows with probability
    (1 - 1/255)^256, about 37 %; a deck deals every value once in each seq_len-1 rows, so
    the 256 probed validation rows catch every fixed peek for certain."""

    def __init__(self, seq_len: int, rng):
        self.size, self.rng, self.cards = max(1, seq_len - 1), rng, []

    def deal(self) -> int:
        if not self.cards:
            self.cards = [int(c) for c in self.rng.permutation(self.size)]
        return self.cards.pop()


def probe_cuts(starts, seq_len: int, rng, deck: CutDeck | None = None):
    """Per row of a batch whose windows start at `starts`, the last position the probe keeps:
    -1 (the whole row is replaced) .. seq_len-1 (nothing is); dealt from `deck` (a fresh
    one drawn from rng when none is given).

    A lone window gets a cut in 0..seq_len-2. Windows that overlap share text, so one row's
    later tokens could sit in another row's kept prefix and be read from there; overlapping
    windows therefore form a cluster cut at one common position A of the token file: every
    token the probe keeps in the cluster lies at or before A, every one it replaces after.
    A is dealt as the cut of one of the cluster's rows, drawn at random.
    """
    import numpy as np

    deck = deck or CutDeck(seq_len, rng)
    starts = np.asarray(starts, dtype=np.int64)
    cuts = np.empty(len(starts), dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    first = 0
    while first < len(order):
        last, end = first + 1, starts[order[first]] + seq_len  # a window spans s..s+seq_len
        while last < len(order) and starts[order[last]] <= end:
            end = max(end, starts[order[last]] + seq_len)
            last += 1
        cluster = order[first:last]
        anchor = cluster[int(rng.integers(len(cluster)))]
        at = int(starts[anchor]) + deck.deal()
        cuts[cluster] = np.clip(at - starts[cluster], -1, seq_len - 1)
        first = last
    return cuts


class _ProbedScorer:
    """What the trusted metric calls instead of the graph: the graph's own logits, and on
    the planned batches a causality probe of that very batch (raises Rejected).

    `starts` are the metric's window starts in `tokens`, in the order it scores them; every
    batch is checked against them, so the probe knows where each row's text comes from.
    """

    training = False

    def __init__(self, graph, tokens, starts, plan: set, tolerance: float, rng, what: str):
        self.graph, self.tokens, self.starts, self.plan = graph, tokens, starts, plan
        self.tolerance, self.rng, self.what = tolerance, rng, what
        self.calls = self.rows = self.probed = 0
        self.worst = 0.0
        self.deck = None  # dealt cuts, per scorer: its rows cover every cut value

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, x):
        import numpy as np

        batch, starts = self.calls, self.starts[self.rows:self.rows + len(x)]
        self.calls, self.rows = self.calls + 1, self.rows + len(x)
        T = x.shape[1]
        expected = np.stack([self.tokens[s:s + T] for s in starts]) if len(starts) else None
        if len(starts) != len(x) or not np.array_equal(x.cpu().numpy(), expected):
            raise RuntimeError(f"the {self.what} metric scored windows other than expected")
        logits = self.graph(x)
        if batch in self.plan:
            self._probe(batch, x, logits, starts)
            self.probed += 1
        return logits

    def _probe(self, batch: int, x, logits, starts) -> None:
        import numpy as np
        import torch

        rows, T = x.shape
        rng, tokens = self.rng, self.tokens
        self.deck = self.deck or CutDeck(T, rng)
        cuts = probe_cuts(starts, T, rng, self.deck)
        # Replacement text comes from elsewhere in the file, never from this batch's span.
        low, high = int(starts.min()), int(starts.max()) + T + 1
        left, right = max(0, low - T + 1), max(0, len(tokens) - T + 1 - high)
        draws = rng.integers(0, left + right if left + right else len(tokens) - T + 1, size=rows)
        changed = x.cpu().numpy().copy()
        for r in range(rows):
            other = int(draws[r]) if left + right == 0 or draws[r] < left else \
                high + int(draws[r]) - left
            changed[r, cuts[r] + 1:] = tokens[other + cuts[r] + 1:other + T]
        perm = rng.permutation(rows)
        if rows > 1 and (perm == np.arange(rows)).all():
            perm = np.roll(perm, 1)  # every probe moves rows
        out = self.graph(torch.from_numpy(changed[perm]).to(x.device))
        out = out[torch.from_numpy(np.argsort(perm)).to(out.device)]  # back in scoring order
        keep = (torch.arange(T)[None, :] <= torch.from_numpy(cuts)[:, None]).to(out.device)
        # An absolute tolerance, which nothing in the logits can widen (one scaled by their
        # size could: a huge logit in a column the metric never counts let any peek pass).
        diff = torch.sub(logits.float(), out.float()).abs_().amax(dim=-1)
        diff = diff.masked_fill(~keep, 0).amax(1)
        self.worst = max(self.worst, float(diff.max()))
        bad = torch.nonzero(diff > self.tolerance).flatten()
        if len(bad):
            r = int(bad[0])
            raise Rejected(f"causality probe ({self.what} batch {batch}): row {r}'s logits at "
                           f"positions <= {int(cuts[r])} changed by {float(diff[r]):.3g} when "
                           "only later tokens and the other rows of the batch changed")

    def check_done(self) -> None:
        if self.probed != len(self.plan) or self.rows != len(self.starts):
            raise RuntimeError(f"the {self.what} metric scored {self.rows} of "
                               f"{len(self.starts)} windows; {self.probed} of "
                               f"{len(self.plan)} planned probes ran")


def evaluate(spec: dict) -> dict:
    """The evaluation proper; returns the result dict (without the nonce)."""
    import numpy as np
    import torch

    model_graph = _model_graph()
    trusted = _load_module("loopy_trusted_prepare", spec["trusted_prepare"])
    profile, device = spec["profile"], spec["device"]
    settings = EVAL_SETTINGS[profile]
    B, T = settings["batch_size"], settings["seq_len"]
    if device == "cpu":
        torch.set_num_threads(int(spec["threads"]))
    if device == "cuda":  # the graph is float32: TF32 matmuls, as training uses
        torch.set_float32_matmul_precision("high")
    tokenizer = trusted.load_tokenizer(spec["tokenizer"])
    rng = np.random.default_rng(int(spec["probe_seed"]))
    if spec.get("go_fd") is not None:
        _wait_for_go(int(spec["go_fd"]))
    try:
        graph = model_graph.load_graph(
            spec["graph_dir"], vocab_size=tokenizer.vocab_size, batch_size=B, seq_len=T,
            device=device,
            max_weight_bytes=int(spec.get("max_weight_bytes", model_graph.MAX_WEIGHT_BYTES)))
    except model_graph.GraphRejected as e:
        return {"status": "rejected", "reason": str(e)}
    except Exception as e:  # the candidate's files broke the loader: theirs, not ours
        return {"status": "rejected", "reason": f"the exported model cannot be loaded: "
                                                f"{type(e).__name__}: {_first_line(e)}"}

    def scorer(bin_path, starts, what: str) -> _ProbedScorer:
        tokens = np.memmap(bin_path, dtype=trusted.TOKEN_DTYPE, mode="r")
        return _ProbedScorer(graph, tokens, starts, probe_plan(math.ceil(len(starts) / B), rng),
                             PROBE_TOLERANCE[profile], rng, what)

    def n_tokens(bin_path) -> int:
        return os.path.getsize(bin_path) // np.dtype(trusted.TOKEN_DTYPE).itemsize

    result = {"params": graph.params}
    t_eval = time.time()
    scorers = []
    try:
        n_windows = settings["n_windows"]
        starts = trusted.val_window_starts(n_tokens(spec["val_bin"]), T, n_windows)
        scorers.append(scorer(spec["val_bin"], starts, "validation"))
        val_bpb = trusted.evaluate_bpb(scorers[-1], spec["val_bin"], tokenizer.token_bytes, B, T,
                                       device, n_windows)
        scorers[-1].check_done()
        test = spec.get("test")
        if test is not None:
            n_windows, seed = int(test["n_windows"]), int(test["seed"])
            starts = trusted.test_window_starts(n_tokens(spec["test_bin"]), T, n_windows, seed)
            scorers.append(scorer(spec["test_bin"], starts, "test"))
            test_bpb = trusted.test_bpb(scorers[-1], spec["test_bin"], tokenizer.token_bytes, B,
                                        T, device, n_windows, seed)
            scorers[-1].check_done()
    except (Rejected, model_graph.GraphRejected) as e:
        return {**result, "status": "rejected", "reason": str(e)}
    except model_graph.GraphRunError as e:
        return {**result, "status": "crash", "reason": str(e)}
    except Exception as e:  # whatever the graph's output did to the metric: no score
        return {**result, "status": "crash", "reason": f"scoring the graph failed: "
                                                        f"{type(e).__name__}: {_first_line(e)}"}
    scores = {"val_bpb": val_bpb} | ({"test_bpb": test_bpb} if test is not None else {})
    if test is not None and val_bpb < test_bpb - MAX_VAL_TEST_GAP:
        return {**result, "status": "rejected",
                "reason": f"val_bpb {val_bpb:.4f} is {test_bpb - val_bpb:.3f} better than on "
                          f"held-out test windows ({test_bpb:.4f}): the model carries the "
                          f"validation text (an honest model scores within a few hundredths)"}
    for name, value in scores.items():
        if not isinstance(value, float) or not math.isfinite(value) or not 0 < value <= MAX_BPB:
            return {**result, "status": "rejected", "reason": f"evaluation gave {name} {value!r}"}
    return {**result, "status": "ok", **scores,
            "probe_batches": sum(s.probed for s in scorers),
            "probe_max_diff": max(s.worst for s in scorers),
            "eval_s": round(time.time() - t_eval, 3)}


class Aborted(Exception):
    """The harness closed the go pipe without a go: there is nothing to evaluate."""


def _wait_for_go(fd: int) -> None:
    """Block until the harness says the graph is in place (b"g"), or abort on EOF.

    The harness starts this child while the export still runs, so that the imports and
    the tokenizer load overlap the export instead of following it."""
    try:
        go = os.read(fd, 1)
    finally:
        os.close(fd)
    if go != b"g":
        raise Aborted


def _not_dumpable() -> None:
    """Neither ptrace nor /proc/<pid>/mem of this process for other processes of its user:
    it may wait beside an untrusted export child. Linux only; elsewhere a no-op."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass


def _write_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _read_spec_from(fd: int) -> dict:
    """The spec the harness writes first on the go pipe: 8 ASCII digits of length, JSON."""
    def read_exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = os.read(fd, n - len(out))
            if not chunk:
                raise EOFError("the harness closed the spec pipe early")
            out += chunk
        return out
    spec = json.loads(read_exactly(int(read_exactly(8))))
    spec["go_fd"] = fd
    return spec


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--fd":
        read_spec = lambda: _read_spec_from(int(argv[1]))  # noqa: E731
    elif len(argv) == 1:
        def read_spec():
            with open(argv[0], encoding="utf-8") as f:
                spec = json.load(f)
            os.unlink(argv[0])
            return spec
    else:
        print("usage: evaluate_child.py <eval.json> | --fd <spec and go pipe>", file=sys.stderr)
        return 2
    _not_dumpable()
    spec = read_spec()
    nonce, result_path = spec.pop("nonce"), spec.pop("result_path")
    try:
        result = evaluate(spec)
    except Aborted:
        print("evaluation: nothing to evaluate (the export did not succeed)", flush=True)
        return 0
    except Exception:  # the trusted side failed: say so, with the traceback in the log
        traceback.print_exc()
        result = {"status": "error", "reason": "the evaluator itself failed (see the eval log)"}
    result["nonce"] = nonce
    _write_json(result_path, result)
    if result["status"] == "ok":
        test = f", test_bpb {result['test_bpb']:.6f}" if "test_bpb" in result else ""
        print(f"evaluation: ok val_bpb {result['val_bpb']:.6f}{test} ({result['probe_batches']} "
              f"batches probed, max change {result['probe_max_diff']:.2g}, "
              f"eval {result['eval_s']:.1f} s)", flush=True)
    else:
        print(f"evaluation: {result['status']} ({result.get('reason', '')})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A synthetic trainer: a hidden fitness landscape over train.py's text, for simulations and
swarm tests. It trains nothing, and says so: its arena is `synthetic/<budget>/sim` and every
result's reason starts with "synthetic".

The landscape scores a source by how it differs from the base genome:

- *Settings* (the `NAME = literal` constants and the node's own profile entries, found by
  experiments/agents/literals.py, as the catalogue finds them) that differ from the base are
  features `NAME = value`. Each setting is a knob drawn from a hash of (landscape seed,
  NAME): about 45% are live, the rest barely matter. A positive number has a smooth effect,
  a bowl in log(value / base value) with its hidden optimum (so x0.7 that helped may help
  again, until it overshoots); any other value (a bool, a string, a zero) gets its own draw
  around the knob's bias.
- *Code lines* added or removed (comments, docstrings and layout ignored) each have an effect
  drawn from a hash of (landscape seed, line): mostly neutral or harmful, some helpful.
- A few features crash (drawn from the same hashes), and a large total harm counts as a
  diverged run (a crash).
- Gains add with mild diminishing returns (`cap * (1 - exp(-gain / cap))`), harms add
  linearly. Then noise: `sigma * (sqrt(rho) * z(run_seed) + sqrt(1 - rho) * z(run_seed,
  change))`, so the same change and run_seed always give the same score (comments and layout
  do not count, as with real seeded runs), and two sources run with the same seed share part
  of their noise (paired comparisons).

`true_bpb(source)` is the noise-free score, for benchmarks and tests.
"""
from __future__ import annotations

import ast
import bisect
import hashlib
import io
import math
import random
import re
import threading
import time
import tokenize
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from experiments.agents.literals import format_value, locate_settings
from swarm.records import result_map

LABEL = "synthetic"
_BUDGET_RE = re.compile(r"^(time|tokens):[1-9][0-9]{0,12}$")
_PROFILES = ("cpu", "cuda", "mps")
_TOKENS_PER_S = 7200.0            # the CPU profile's measured throughput, for plausible numbers
_GAIN_CAP = 0.08                  # diminishing returns: total gain approaches this
_DIVERGED = 0.25                  # total harm beyond this is a diverged (crashed) run
_MASK = "_V_"                     # stands for a setting's value when comparing code lines


@dataclass
class SyntheticResult:
    """Mirrors experiments.run.harness.ExperimentResult (same fields, same record map)."""
    status: str                   # ok | crash
    val_bpb: float | None
    train_s: float
    total_s: float
    tokens: int
    steps: int
    params: int
    peak_mem_mb: float
    reason: str
    log_tail: str = ""
    isolation: list[str] = field(default_factory=lambda: ["synthetic: no code was run"])
    arena: str = ""

    def to_record_result(self) -> dict:
        """PROTOCOL.md's `result` map (swarm.records.result_map); `reason` is kept for ok
        results too: it says synthetic."""
        return result_map(self.status, val_bpb=self.val_bpb, train_s=self.train_s,
                          total_s=self.total_s, tokens=self.tokens, steps=self.steps,
                          params=self.params, peak_mem_mb=self.peak_mem_mb, reason=self.reason)


def _unit(*parts: object) -> random.Random:
    """A generator seeded from a stable hash of `parts` (not Python's salted hash())."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8", "replace"), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@dataclass
class _Landscape:
    effect: float                 # change in val_bpb (negative: better)
    crash: str | None             # the feature that crashes the run, if any


def _docstring_lines(body: list[ast.stmt], out: set[int]) -> set[int]:
    """Lines of bare string statements (docstrings), found by walking statements only."""
    for node in body:
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            out.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        for attr in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, attr, None)
            if isinstance(inner, list):
                _docstring_lines(inner, out)
    return out


def _normalise(line: str, spans: list[tuple[int, int]]) -> str:
    """A code line with setting values masked, its comment dropped, whitespace collapsed."""
    for a, b in sorted(spans, reverse=True):
        line = line[:a] + _MASK + line[b:]
    try:
        for tok in tokenize.generate_tokens(io.StringIO(line).readline):
            if tok.type == tokenize.COMMENT:
                line = line[:tok.start[1]]
                break
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass      # a line of a longer statement: the comments seen so far are handled
    return " ".join(line.split())


@dataclass
class _Parsed:
    values: dict                  # (scope, NAME) -> value, for this node's profile
    raw: Counter                  # raw line -> count
    line_spans: dict              # line number -> [(start col, end col)] of setting values
    lines: list[str]
    skip: set[int]                # docstring line numbers

    def code_lines(self, wanted: Counter) -> Counter:
        """Normalised code lines among the raw lines in `wanted` (the changed ones)."""
        out = Counter()
        todo = Counter(wanted)
        for number, line in enumerate(self.lines, 1):
            if todo.get(line, 0) <= 0:
                continue
            todo[line] -= 1
            if number in self.skip:
                continue
            norm = _normalise(line, self.line_spans.get(number, []))
            if norm:
                out[norm] += 1
        return out


def _parse_budget(budget: str) -> tuple[str, int]:
    if not isinstance(budget, str) or not _BUDGET_RE.match(budget):
        raise ValueError(f"budget {budget!r} is not 'time:<seconds>' or 'tokens:<n>'")
    kind, value = budget.split(":")
    return kind, int(value)


class SyntheticTrainer:
    """Scores train.py sources on a hidden landscape; see the module docstring."""

    def __init__(self, seed: int, sigma: float = 0.003, base_bpb: float = 1.9, *,
                 base_source: str | None = None, budget: str = "tokens:300000",
                 profile: str = "cpu", delay_s: float = 0.0, pair_corr: float = 0.5,
                 live_share: float = 0.45):
        if base_source is None:
            from genome import base_train_source
            base_source = base_train_source()
        self.seed = int(seed)
        self.sigma = float(sigma)
        self.base_bpb = float(base_bpb)
        self.budget = budget
        self.budget_kind, self.budget_value = _parse_budget(budget)
        self.profile = profile
        self.delay_s = max(0.0, float(delay_s))
        self.pair_corr = min(1.0, max(0.0, float(pair_corr)))
        self.live_share = live_share
        self.arena = f"{LABEL}/{budget}/sim"
        self.label = f"{LABEL} trainer (hidden landscape {self.seed}, no training)"
        self._cache: dict[str, _Parsed | None] = {}
        base = self._parse(base_source)
        if base is None:
            raise ValueError("the base genome does not parse")
        self._base = base
        self._base_values = base.values

    # -- the landscape -------------------------------------------------------------------

    def _parse(self, source: str) -> _Parsed | None:
        cached = self._cache.get(source)
        if cached is not None or source in self._cache:
            return cached
        parsed = self._parse_uncached(source)
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[source] = parsed
        return parsed

    def _parse_uncached(self, source: str) -> _Parsed | None:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None
        settings = locate_settings(source, tree) or []
        lines = source.split("\n")
        starts = [0]
        for line in lines:
            starts.append(starts[-1] + len(line) + 1)
        values, spans = {}, {}
        for s in settings:
            row = bisect.bisect_right(starts, s.start) - 1
            if "\n" not in s.text:
                spans.setdefault(row + 1, []).append((s.start - starts[row],
                                                      s.end - starts[row]))
            # a node's score depends on its own profile's entries only
            if len(s.scope) >= 2 and s.scope[-1] in _PROFILES and s.scope[-1] != self.profile:
                continue
            values[(s.scope, s.name)] = s.value
        return _Parsed(values, Counter(lines), spans, lines, _docstring_lines(tree.body, set()))

    def _knob(self, name: str) -> tuple[bool, float, float, float]:
        """(live, curvature, log-optimum, bias) of a setting: fixed per landscape seed."""
        r = _unit(self.seed, "knob", name)
        live = r.random() < self.live_share
        if live:
            return True, r.uniform(0.01, 0.05), r.gauss(0.0, 0.6), r.gauss(-0.004, 0.006)
        return False, r.uniform(0.0, 0.004), 0.0, abs(r.gauss(0.002, 0.003))

    def _setting_effect(self, name: str, old: object, new: object) -> _Landscape:
        live, curve, optimum, bias = self._knob(name)
        try:
            shown = format_value(new)
        except ValueError:
            shown = repr(new)
        r = _unit(self.seed, "value", name, shown)
        crash = f"{name} = {shown}" if r.random() < 0.03 else None
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                      for v in (old, new))
        if numeric:
            x = math.log(new / old)
            effect = curve * ((x - optimum) ** 2 - optimum ** 2) + r.gauss(0.0, 0.0007)
            if abs(x) > 2.5 and r.random() < 0.5:
                crash = crash or f"{name} = {shown} (loss diverged)"
        else:
            effect = bias + r.gauss(0.0, 0.004 if live else 0.002)
        return _Landscape(effect, crash)

    def _line_effect(self, line: str, added: bool) -> _Landscape:
        r = _unit(self.seed, "line", "+" if added else "-", line)
        u = r.random()
        if u < (0.05 if added else 0.02):
            return _Landscape(0.0, f"{'added' if added else 'removed'} line: {line[:80]}")
        if u < 0.25:
            return _Landscape(-abs(r.gauss(0.0, 0.006)), None)        # helps
        if u < 0.60:
            return _Landscape(r.gauss(0.0, 0.0005), None)             # neutral
        return _Landscape(abs(r.gauss(0.0, 0.01)), None)             # harms

    def _features(self, source: str) -> tuple[list[_Landscape], str] | None:
        """The landscape features of a source, and a digest naming what changed (so that
        the noise of a run depends on the change, not on comments or layout)."""
        parsed = self._parse(source)
        if parsed is None:
            return None
        values, base = parsed.values, self._base
        out, names = [], []
        for key in sorted(set(values) | set(self._base_values), key=repr):
            old, new = self._base_values.get(key), values.get(key)
            if key in values and key in self._base_values and _same_value(old, new):
                continue
            name = key[1]
            names.append(repr((key, new if key in values else "<removed>")))
            if key not in values:
                out.append(self._line_effect(f"removed setting {name}", added=False))
            elif key not in self._base_values:
                out.append(self._line_effect(f"new setting {name} = {new!r}", added=True))
            else:
                out.append(self._setting_effect(name, old, new))
        added = parsed.code_lines(parsed.raw - base.raw)
        removed = base.code_lines(base.raw - parsed.raw)
        for line, n in sorted((added - removed).items()):
            out += [self._line_effect(line, added=True)] * n
            names.append(repr(("+", line, n)))
        for line, n in sorted((removed - added).items()):
            out += [self._line_effect(line, added=False)] * n
            names.append(repr(("-", line, n)))
        digest = hashlib.sha256("\n".join(names).encode("utf-8", "replace")).hexdigest()
        return out, digest

    def _score(self, source: str) -> tuple[float | None, str, str]:
        """(noise-free val_bpb, '', change digest) or (None, why it crashes, '')."""
        if not isinstance(source, str):
            return None, "synthetic crash: not a train.py source", ""
        found = self._features(source)
        if found is None:
            return None, "synthetic crash: train.py does not parse", ""
        features, digest = found
        crashes = [f.crash for f in features if f.crash]
        if crashes:
            return None, f"synthetic crash: {crashes[0]}", ""
        gain = sum(-f.effect for f in features if f.effect < 0)
        harm = sum(f.effect for f in features if f.effect > 0)
        if harm > _DIVERGED:
            return None, "synthetic crash: loss diverged", ""
        return self.base_bpb - _GAIN_CAP * (1 - math.exp(-gain / _GAIN_CAP)) + harm, "", digest

    def _times(self) -> tuple[int, float]:
        if self.budget_kind == "tokens":
            return self.budget_value, self.budget_value / _TOKENS_PER_S
        return int(self.budget_value * _TOKENS_PER_S), float(self.budget_value)

    def _crashed(self, why: str, source: str) -> SyntheticResult:
        _, train_s = self._times()
        return SyntheticResult("crash", None, train_s=round(train_s, 1),
                               total_s=round(train_s + 5.0, 1), tokens=0, steps=0, params=0,
                               peak_mem_mb=0.0, reason=why,
                               log_tail=f"{why}\n(no training happened)", arena=self.arena)

    def true_bpb(self, source: str) -> float | None:
        """The noise-free score of a source; None if it would crash."""
        return self._score(source)[0]

    # -- running -------------------------------------------------------------------------

    def _noise(self, change: str, run_seed: int) -> float:
        shared = _unit(self.seed, "noise", run_seed).gauss(0.0, 1.0)
        own = _unit(self.seed, "noise", run_seed, change).gauss(0.0, 1.0)
        return self.sigma * (math.sqrt(self.pair_corr) * shared
                             + math.sqrt(1 - self.pair_corr) * own)

    def _size(self, source: str) -> tuple[int, int]:
        """(parameters, tokens per step) from DEPTH/WIDTH/... when present, else defaults."""
        parsed = self._parse(source)
        values = parsed.values if parsed is not None else {}
        by_name = {name: v for (_, name), v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        depth = int(by_name.get("DEPTH", 4))
        width = int(by_name.get("WIDTH", 128))
        ratio = float(by_name.get("MLP_RATIO", 4))
        params = int(depth * (4 + 2 * ratio) * width * width + 2 * 8192 * width)
        per_step = int(by_name.get("BATCH_SIZE", 4) * by_name.get("SEQ_LEN", 256)
                       * by_name.get("GRAD_ACCUM", 1))
        return max(params, 1), max(per_step, 1)

    def run(self, source: str, *, run_seed: int | None = None, seed: int | None = None,
            progress: Callable | None = None, cancel: threading.Event | None = None
            ) -> SyntheticResult:
        """One synthetic experiment. `seed` is accepted as another name for `run_seed` (the
        loop's Trainer protocol); `delay_s` of waiting stands in for training, reporting
        `progress(fraction, loss)` and stopping early when `cancel` is set."""
        run_seed = run_seed if run_seed is not None else (seed if seed is not None else 0)
        steps = 10
        for i in range(steps if self.delay_s else 0):
            if cancel is not None and cancel.wait(self.delay_s / steps):
                return self._crashed("synthetic run cancelled", source)
            if cancel is None:
                time.sleep(self.delay_s / steps)
            if progress is not None:
                progress((i + 1) / steps, None)
        true, why, change = self._score(source)
        if true is None:
            return self._crashed(why, source)
        params, per_step = self._size(source)
        tokens, train_s = self._times()
        common = dict(train_s=round(train_s, 1), total_s=round(train_s + 5.0, 1),
                      arena=self.arena)
        val = true + self._noise(change, run_seed)
        steps = max(1, tokens // per_step)
        return SyntheticResult(
            "ok", round(val, 6), tokens=tokens, steps=steps, params=params,
            peak_mem_mb=round(200.0 + params * 16 / 2**20, 1),
            reason=f"synthetic result: hidden landscape {self.seed}, no training",
            log_tail=f"---\nval_bpb:          {val:.6f}  (synthetic)\n", **common)


def _same_value(a: object, b: object) -> bool:
    if type(a) is not type(b) and not all(isinstance(v, (int, float)) and not isinstance(
            v, bool) for v in (a, b)):
        return False
    return a == b

"""The default proposer: catalogue edits chosen by a model of the history (no LLM, no key,
no network).

`MutateAgent` proposes one catalogue edit (experiments/agents/catalogue.py) of the parent,
or a stack of several, whichever a Bayesian model of the history's val_bpb deltas expects
to gain the most:

- *The model* is additive over settings: each contributes f(value), zero at the base
  genome's value. A positive number moves along a quadratic in log(value / base value), a
  curvature all settings share plus its own (the base is tuned: moving far tends to hurt; a
  x2 that hurt makes x0.5 likely to help; a kept x1.4 makes another x1.4 worth a try until
  the bowl turns up). Any other value (a bool, a string, a zero) has its own effect around
  its setting's mean and the mean of all such changes. A result counts on every parent once
  its parent's values are known (a parent this agent has proposed on, else the base's).
- *The prior* says the base genome is tuned: the shared bowl is steep and a setting's own
  curvature only bends it a little, and changing a discrete choice is expected to hurt. So a
  node with no history tries small moves (x0.7, x1.4) first, then x2 and toggles, and far
  moves (x50, x100) last; each result then reorders the rest. (A prior that let the spread
  grow as fast as the expected harm put the farthest moves first: on the real genome that
  spent 20 edits on toggles and x50s, none kept; see docs/BENCHMARKS.md.)
- *Lucky parents.* Every delta on a parent is measured against the same single measurement
  of that parent, so each parent gets an offset, and a kept child's measured delta sets its
  own offset as a parent: a parent kept on a lucky run is known to be hard to beat, and the
  agent aims higher there.
- *What to run.* Every untried edit, and every stack of two to four measured edits that
  promises at least half the keep bar, is scored by the true gain the loop would keep,
  E[gain x 1{measured delta clears the bar}], the bar read off the history (between the
  largest kept and the smallest discarded delta). Untried edits are uncertain, so they get
  explored; edits measured neutral or harmful score nothing and are not run again on later
  parents; small gains that each stay under the noise are stacked into one change that
  clears it.
- *Crashes.* A value that crashed alone is not proposed again, a crashed stack's blame goes
  to the values most likely to crash, and untried values carry the history's crash rate
  (higher for moves beyond x4.5).
- An edit or stack already tried on this parent is never proposed again for it; edits
  tagged with the brief's topic come first (`general` takes every edit). When a parent has
  nothing promising left, wider stacks follow (of edits expected to help, measured or not,
  however small the gain); when those are gone too, Optuna's TPE over the settings takes
  over on that parent (`then`; on the synthetic landscapes mutate alone ran out after a
  median of 110 experiments, and the hand-over kept the lineage improving: see
  docs/BENCHMARKS.md). Without `then`, the agent says the parent is exhausted
  (`Proposal.exhausted`), and the loop moves on to other parents or waits for news.

Descriptions start with `[key]` (a stack joins its keys with `&`: swarm.descriptions), so the
key travels with the record and peers' agents learn from it too. `RandomAgent` is the
benchmark's control: a uniform choice among the same applicable, untried, on-topic edits,
with no use of history.
"""
from __future__ import annotations

import itertools
import math
import random
import statistics
from dataclasses import dataclass

import numpy as np

from experiments.agents.base import GENOME_DIR, Brief, Proposal, Tried, exhausted, \
    failed, usable_history, validate_catalogue_edit
from experiments.agents.catalogue import Edit, Setting, build_catalogue, edit_in_topic, \
    locate_settings
from experiments.agents.edit_keys import applied_value, code_values, first_values, is_number, \
    is_positive, parse_key, same_value, value_label
from swarm.descriptions import MAX_EDIT_KEY_CHARS, edit_desc, is_stack, stack_key

MAX_STACK = 4              # settings changed at once, at most
STACK_FROM = 8             # stacks are drawn from this many best-predicted edits
STACK_FROM_WIDE = 10       # ... and from this many once a parent has nothing else left
MAX_OPTIONS = 50           # options tried in turn when the best ones do not apply
FAILED = ("crash", "timeout", "rejected")
CURVATURE = 3.0            # prior mean of the shared curvature, in typical effects per u^2
DISCRETE_HARM = 1.5        # prior mean effect of changing a discrete choice, in typical effects
U_MAX = 1.5                # |log(value / base value)| the settings model extrapolates to


def _default_base_source() -> str | None:
    try:
        return (GENOME_DIR / "train.py").read_text(encoding="utf-8")
    except OSError:
        return None


# ---------------------------------------------------------------------------
# The model.

@dataclass
class _Noise:
    bar: float        # a child is kept when its delta is below -bar
    tau: float        # the error of one measurement (a child's, or its parent's)
    scale: float      # typical size of an edit's true effect


def _noise(history: list[Tried]) -> _Noise:
    """Noise levels read off the history, in the arena's own units.

    The keep bar lies between the smallest discarded delta and the largest kept one. A delta
    is the difference of two measurements; with the loop's bar at two noise deviations, one
    measurement's error is about bar / 2.5 (between bar / 2 for independent runs and
    bar / 2.8 for runs that share a seed)."""
    deltas = _deltas(history)
    kept = [d for t, d in deltas if t.status == "kept"]
    done = [d for t, d in deltas if t.status == "discarded"]
    singles = [d for t, d in deltas if isinstance(t.edit_key, str) and not is_stack(t.edit_key)]
    spread = statistics.median(abs(d) for d in singles) if singles else None
    low = -min(done) if done else None              # the bar is at least this
    high = -max(kept) if kept else None             # and below this
    if low is not None and high is not None and 0 < low < high:
        bar = (low + high) / 2
    elif high is not None and high > 0:
        bar = min(high, spread or high)
    elif low is not None and low > 0:
        bar = max(low, (spread or low) * 0.8)
    else:
        bar = spread if spread else 0.01
    bar = max(bar, 1e-9)
    tau = bar / 2.5
    if len(singles) >= 2:
        scale = math.sqrt(max(statistics.pvariance(singles) - 2 * tau * tau, tau * tau))
    else:
        scale = 2 * bar
    return _Noise(bar, tau, scale)


def _deltas(history: list[Tried]) -> list[tuple[Tried, float]]:
    """The results with a usable delta, each clipped to 30 typical deltas: one absurd
    number (a broken run, a peer's lie) must not swing the model."""
    found = [(t, float(t.delta)) for t in history
             if is_number(t.delta) and abs(t.delta) < 1e6 and t.status in ("kept", "discarded")]
    if not found:
        return []
    limit = 30 * max(statistics.median(abs(d) for _, d in found), 1e-12)
    return [(t, min(max(d, -limit), limit)) for t, d in found]


class _SettingsModel:
    """Bayesian linear model of deltas: val_bpb = sum over settings of f(value) + the
    measurement's error; see the module docstring. Parameters, each with a Gaussian prior:

      ("b", T), ("c", T)   slope and curvature of f in u = log(value / base value)
      ("C",)               the curvature all settings share (moving a tuned value far
                           tends to hurt, whichever it is)
      ("T",), ("t", T)     the mean effect of a non-numeric value, over all settings and
                           for setting T
      ("v", T, label)      that value's own effect, around its setting's mean
      ("r", T, label)      a number's own effect, off its setting's curve (real curves are
                           not exactly quadratic)
      ("p", parent)        minus the error of the parent's measurement
    """

    def __init__(self, base: dict[str, object], steps: dict[str, float], noise: _Noise):
        self.base = base
        self.steps = steps
        self.noise = noise
        self.rows: list[tuple[dict, float, float]] = []

    def features(self, target: str, value: object) -> dict[tuple, float]:
        base = self.base.get(target, _MISSING)
        if base is not _MISSING and same_value(value, base):
            return {}
        if is_positive(base) and is_positive(value):
            # a setting the catalogue moves in big steps (x100 for an epsilon) counts in
            # those steps, and the curve is not trusted far out: else the farthest moves
            # would always look the most promising (the most uncertain)
            u = math.log(value / base) / max(1.0, self.steps.get(target, 1.0))
            u = min(max(u, -U_MAX), U_MAX)
            return {("b", target): u, ("c", target): u * u, ("C",): u * u,
                    ("r", target, value_label(value)): 1.0}
        return {("T",): 1.0, ("t", target): 1.0, ("v", target, value_label(value)): 1.0}

    def change(self, parts: list[tuple[str, object, object]]) -> dict[tuple, float]:
        """Features of moving each (target, old, new)."""
        out: dict[tuple, float] = {}
        for target, old, new in parts:
            for sign, value in ((1.0, new), (-1.0, old)):
                for k, v in self.features(target, value).items():
                    out[k] = out.get(k, 0.0) + sign * v
        return out

    def add(self, x: dict[tuple, float], y: float, var: float) -> None:
        if math.isfinite(y):
            self.rows.append((x, y, var))

    def _prior(self, k: tuple) -> tuple[float, float]:
        n = self.noise
        s = n.scale
        if k[0] == "b":
            return 0.0, (2 * s) ** 2
        if k[0] == "c":
            return 0.0, (0.5 * s) ** 2
        if k[0] == "C":
            # the base genome is tuned: moving a value far tends to hurt (a bowl around it)
            return CURVATURE * s, s * s
        if k[0] == "T":
            # and so does changing one of its discrete choices (a toggle, a norm, a cap)
            return DISCRETE_HARM * s, s * s
        if k[0] == "t":
            return 0.0, s * s
        if k[0] == "v":
            return 0.0, (0.7 * s) ** 2
        if k[0] == "r":
            return 0.0, (0.5 * s) ** 2
        return 0.0, n.tau ** 2

    def fit(self, extra: list[dict[tuple, float]]) -> None:
        """Posterior mean and covariance over every parameter the rows or `extra` name."""
        names = sorted({k for x, _, _ in self.rows for k in x}
                       | {k for x in extra for k in x}, key=repr)
        self.index = {k: i for i, k in enumerate(names)}
        p = len(names)
        prior = [self._prior(k) for k in names]
        precision = np.diag([1.0 / v for _, v in prior]) if p else np.zeros((0, 0))
        rhs = np.array([m / v for m, v in prior]) if p else np.zeros(0)
        if self.rows and p:
            X = np.zeros((len(self.rows), p))
            for r, (x, _, _) in enumerate(self.rows):
                for k, v in x.items():
                    X[r, self.index[k]] = v
            w = np.array([1.0 / var for _, _, var in self.rows])
            y = np.array([y for _, y, _ in self.rows])
            precision = precision + (X * w[:, None]).T @ X
            rhs = rhs + X.T @ (w * y)
        self.cov = np.linalg.inv(precision) if p else np.zeros((0, 0))
        self.mean = self.cov @ rhs if p else np.zeros(0)

    def prior_var(self, x: dict[tuple, float]) -> float:
        """A change's variance before any result."""
        return sum(v * v * self._prior(k)[1] for k, v in x.items())

    def vector(self, x: dict[tuple, float]) -> np.ndarray:
        a = np.zeros(len(self.index))
        for k, v in x.items():
            if k in self.index:
                a[self.index[k]] = v
        return a

    def predict(self, x: dict[tuple, float]) -> tuple[float, float]:
        """(mean, variance) of a change's true delta."""
        a = self.vector(x)
        return float(a @ self.mean), float(max(a @ self.cov @ a, 0.0))


_MISSING = object()


@dataclass
class Prediction:
    """The model's belief about one edit of the parent."""
    mean: float          # predicted true delta of val_bpb (negative: better)
    sd: float            # its uncertainty
    crash_p: float       # chance the run crashes
    measured: bool       # the history has run this value, or pinned down its setting's curve


@dataclass
class Assessment:
    """What the agent believes about a parent, from the history (see `MutateAgent.assess`)."""
    bar: float                        # a child is kept when its delta is below -bar
    noise: float                      # the error of one measurement
    offset: float                     # the parent's offset: minus its measurement's error
    offset_sd: float
    predictions: dict[str, Prediction]

    def kept_gain(self, mean: float, var: float, crash_p: float) -> float:
        """E[true gain x 1{kept}] of a change with a predicted delta ~ N(mean, var): it is
        kept when delta + the parent's offset + its own error clears the bar."""
        sd = math.sqrt(var + self.offset_sd ** 2 + self.noise ** 2)
        z = (-self.bar - mean - self.offset) / sd
        cdf = 0.5 * math.erfc(-z / math.sqrt(2))
        pdf = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return (1 - crash_p) * (-mean * cdf + var / sd * pdf)


@dataclass
class _Fitted:
    assessment: Assessment
    model: _SettingsModel
    changes: dict[str, dict[tuple, float]]      # edit key -> its features on the parent


@dataclass
class _Option:
    edits: list[Edit]
    key: str
    value: float


class _Crashes:
    """Which values crash, by (setting, value), from runs that went fine and runs that
    crashed. A crashed stack's blame is shared among its values in proportion to how
    likely each is to crash (so a value that keeps turning up in crashed stacks takes the
    blame, whatever one report said), and a value that crashed alone and never ran fine is
    not tried again: crashes tend to repeat (a shape that does not fit, a divergence).
    A value nobody ran carries the history's crash rate, counted apart for far moves (beyond
    x4.5 or /4.5 of the value before), which diverge more often: 30% to start, else 5%.
    The parents' own values ran fine: they never crash."""

    FAR = 1.5

    def __init__(self) -> None:
        self.ok: set[tuple[str, str]] = set()        # ran fine at least once
        self.safe: set[tuple[str, str]] = set()      # a parent's values
        self.runs: list[tuple[list[tuple[str, str]], bool]] = []
        self.far: set[tuple[str, str]] = set()
        self.counts = {False: [0.5, 10.0], True: [1.5, 5.0]}   # far? -> [crashes, runs]
        self.p: dict[tuple[str, str], float] = {}    # crash chance, once settled
        self.oks: dict[tuple[str, str], int] = {}    # runs that went fine, by value

    def _far(self, old: object, new: object) -> bool:
        return is_positive(old) and is_positive(new) and abs(math.log(new / old)) > self.FAR

    def _add(self, parts: list[tuple], crashed: bool) -> list[tuple[str, str]]:
        states = [(target, value_label(new)) for target, _, new in parts]
        self.far.update(st for st, (_, old, new) in zip(states, parts) if self._far(old, new))
        if len(parts) == 1:
            c = self.counts[self._far(parts[0][1], parts[0][2])]
            c[0] += crashed
            c[1] += 1
        self.runs.append((states, crashed))
        return states

    def ran(self, parts: list[tuple]) -> None:
        self.ok.update(self._add(parts, False))

    def failed(self, parts: list[tuple]) -> None:
        self._add(parts, True)

    def _base(self, state: tuple[str, str]) -> float:
        crashes, runs = self.counts[state in self.far]
        return min(crashes / runs, 0.9)

    def settle(self) -> None:
        """Share out the blame of crashed runs (a few rounds of expectation-maximisation)."""
        oks: dict[tuple[str, str], int] = {}
        for states, crashed in self.runs:
            for st in states if not crashed else ():
                oks[st] = oks.get(st, 0) + 1
        failed = [[st for st in states if st not in self.safe]
                  for states, crashed in self.runs if crashed]
        failed = [f for f in failed if f]
        p = {st: self._base(st) for f in failed for st in f}
        for _ in range(8):
            blame = dict.fromkeys(p, 0.0)
            for f in failed:
                total = sum(p[st] for st in f)
                for st in f:
                    blame[st] += p[st] / total if total > 0 else 1 / len(f)
            p = {st: (self._base(st) + blame[st]) / (1 + blame[st] + oks.get(st, 0))
                 for st in p}
        for f in failed:
            if len(f) == 1 and f[0] not in self.ok:
                p[f[0]] = 1.0
        self.p, self.oks = p, oks

    def chance(self, target: str, old: object, new: object) -> float:
        state = (target, value_label(new))
        if state in self.safe:
            return 0.0
        if state in self.p:
            return self.p[state]
        base = self.counts[self._far(old, new)]
        return min(base[0] / base[1], 0.9) / (1 + self.oks.get(state, 0))


# ---------------------------------------------------------------------------
# Helpers shared with RandomAgent.

def _typical_steps(catalogue: dict[str, Edit]) -> dict[str, float]:
    """Per setting, the median |log(new / old)| of its numeric catalogue edits."""
    moves: dict[str, list[float]] = {}
    for e in catalogue.values():
        if is_positive(e.old_value) and is_positive(e.new_value) and e.old_value != e.new_value:
            moves.setdefault(e.target, []).append(abs(math.log(e.new_value / e.old_value)))
    return {t: max(statistics.median(m), 1e-3) for t, m in moves.items()}


def _tried_here(history: list[Tried], parent_id: str) -> set[str]:
    return {t.edit_key for t in history
            if isinstance(t, Tried) and t.parent_id == parent_id and t.edit_key}


def _candidates(catalogue: dict[str, Edit], topic: str, exclude: set[str]) -> list[Edit]:
    """Untried edits in the topic; if the topic is exhausted, untried edits of any topic."""
    fresh = [e for k, e in catalogue.items() if k not in exclude]
    on_topic = [e for e in fresh if edit_in_topic(e, topic)]
    return on_topic or fresh


def _exhausted(topic: str) -> Proposal:
    return exhausted(f"every catalogue edit for topic {topic} was already tried on this "
                     "parent")


def _propose_edit(parent_source: str, edit: Edit, settings: list[Setting]) -> Proposal:
    new = edit.apply(parent_source, settings)
    desc = edit_desc(edit.key, edit.desc)
    if new is None:
        return failed(f"edit {edit.key} does not apply", desc, edit.key)
    return validate_catalogue_edit(parent_source, Proposal(new, desc, edit.key))


def _propose_stack(parent_source: str, edits: list[Edit], key: str,
                   settings: list[Setting]) -> Proposal:
    source = edits[0].apply(parent_source, settings)
    for edit in edits[1:]:
        source = edit.apply(source) if source is not None else None
    desc = edit_desc(key, "; ".join(e.desc for e in edits))
    if source is None:
        return failed(f"edits {key} do not apply together", desc, key)
    return validate_catalogue_edit(parent_source, Proposal(source, desc, key))


# ---------------------------------------------------------------------------
# The agent.

class MutateAgent:
    name = "mutate"

    def __init__(self, *, base_source: str | None = None, profile: str | None = None,
                 combine_p: float = 1.0, max_stack: int = MAX_STACK,
                 then: str | None = "tpe"):
        """`combine_p`: the chance that stacks of edits compete with single edits while the
        parent still has untried single edits (once it has none, stacks are all that is
        left); `max_stack`: the most edits in one stack; `then`: the Optuna sampler ("tpe",
        "cmaes", experiments/agents/optuna_agent.py) that proposes on a parent where this
        agent has nothing left (None: say the parent is exhausted)."""
        self.profile = profile
        self.then = then
        self._then_agent = None
        self.base_source = base_source if base_source is not None else _default_base_source()
        self.combine_p = combine_p
        self.max_stack = max(1, int(max_stack))
        base_settings = (locate_settings(self.base_source)
                         if self.base_source is not None else None)
        self._base_values = first_values(base_settings or [], profile)
        self._steps: dict[str, float] = {}
        if self.base_source is not None and base_settings is not None:
            base_catalogue = build_catalogue(self.base_source, base_settings, profile)
            self._base_values.update(code_values(base_catalogue))
            self._steps = _typical_steps(base_catalogue)
        self._values_at: dict[str, dict[str, object]] = {}   # parent id -> its settings
        self._parts_memo: dict[tuple, list[tuple] | None] = {}
        self._change_memo: dict[tuple, dict] = {}

    def propose(self, parent_source: str, brief: Brief, history: list[Tried], *,
                parent_id: str, rng: random.Random) -> Proposal:
        if not isinstance(parent_source, str):
            return failed("no parent source")
        history = usable_history(history)
        settings = locate_settings(parent_source)
        if settings is None:
            return failed("the parent train.py does not parse")
        catalogue = build_catalogue(parent_source, settings, self.profile)
        tried = _tried_here(history, parent_id)
        singles = _candidates(catalogue, brief.topic, tried)
        pool = [e for e in catalogue.values() if edit_in_topic(e, brief.topic)] or \
            list(catalogue.values())
        found = self._assess(settings, catalogue, singles + pool, history, parent_id)
        stacks_allowed = not singles or rng.random() < self.combine_p
        options = self._options(found, singles, pool if stacks_allowed else [], tried)
        if not options:
            # Every single edit and every promising stack was tried here: move on to wider
            # stacks (edits expected to help, however little) before giving up on it.
            options = self._stacks(found, pool, tried, wide=True)
        if not options:
            return self._then(parent_source, brief, history, parent_id, rng)
        jitter = {id(o): rng.random() for o in options}
        options.sort(key=lambda o: (-o.value, jitter[id(o)]))
        proposal = None
        for option in options[:MAX_OPTIONS]:   # a stack may not apply: try the next
            if len(option.edits) == 1:
                proposal = _propose_edit(parent_source, option.edits[0], settings)
            else:
                proposal = _propose_stack(parent_source, option.edits, option.key, settings)
            if proposal.ok:
                return proposal
        return proposal

    def _then(self, parent_source: str, brief: Brief, history: list[Tried], parent_id: str,
              rng: random.Random) -> Proposal:
        """Nothing left on this parent: the `then` sampler's proposal, else exhausted."""
        if not self.then:
            return _exhausted(brief.topic)
        if self._then_agent is None:
            from experiments.agents.optuna_agent import OptunaAgent
            self._then_agent = OptunaAgent(self.then, base_source=self.base_source,
                                           profile=self.profile, max_moves=self.max_stack)
        return self._then_agent.propose(parent_source, brief, history, parent_id=parent_id,
                                        rng=rng)

    def assess(self, parent_source: str, history: list[Tried], *,
               parent_id: str) -> Assessment | None:
        """What the agent believes about the parent's catalogue edits, from the history:
        the keep bar, the parent's offset, and each edit's predicted delta. None if the
        parent does not parse."""
        settings = locate_settings(parent_source) if isinstance(parent_source, str) else None
        if settings is None:
            return None
        catalogue = build_catalogue(parent_source, settings, self.profile)
        history = usable_history(history)
        return self._assess(settings, catalogue, list(catalogue.values()), history,
                            parent_id).assessment

    def _assess(self, settings: list[Setting], catalogue: dict[str, Edit], edits: list[Edit],
                history: list[Tried], parent_id: str) -> _Fitted:
        current = first_values(settings, self.profile)
        current.update(code_values(catalogue))
        if len(self._values_at) > 10000:
            self._values_at.clear()
            self._parts_memo.clear()
            self._change_memo.clear()
        self._values_at[parent_id] = current
        model, crashes, noise = self._model(history)
        edits_by_key = {e.key: e for e in edits}
        changes = {key: model.change([(e.target, current[e.target], e.new_value)])
                   for key, e in edits_by_key.items()
                   if e.target in current and e.new_value is not None}
        model.fit(list(changes.values()) + [{("p", parent_id): 1.0}])
        i = model.index[("p", parent_id)]
        predictions = {}
        for key, x in changes.items():
            e = edits_by_key[key]
            mean, var = model.predict(x)
            state = (e.target, value_label(e.new_value))
            measured = (state in crashes.ok or state in crashes.safe
                        or (is_positive(e.new_value) and var <= 0.5 * model.prior_var(x)))
            predictions[key] = Prediction(mean, math.sqrt(var), crashes.chance(
                e.target, current[e.target], e.new_value), measured)
        assessment = Assessment(noise.bar, noise.tau, float(model.mean[i]),
                                math.sqrt(max(float(model.cov[i, i]), 0.0)), predictions)
        return _Fitted(assessment, model, changes)

    # -- reading the history ---------------------------------------------------------------

    def _parts(self, t: Tried) -> list[tuple] | None:
        """(setting, old, new) of each setting a tried key changed on its parent, whose
        values are known if this agent proposed on it (else the base genome's)."""
        memo = (t.edit_key, t.parent_id, t.parent_id in self._values_at)
        if memo in self._parts_memo:
            return self._parts_memo[memo]
        parsed = parse_key(t.edit_key)
        values = self._values_at.get(t.parent_id, self._base_values)
        out: list[tuple] | None = []
        for target, op, x in parsed or ():
            new = applied_value(op, x, values[target]) if target in values else None
            if new is None:
                out = None
                break
            out.append((target, values[target], new))
        if len(self._parts_memo) > 50_000:
            self._parts_memo.clear()
            self._change_memo.clear()
        self._parts_memo[memo] = out if parsed is not None else None
        return self._parts_memo[memo]

    def _change(self, model: _SettingsModel, t: Tried, parts: list[tuple]) -> dict:
        """The model's features of a tried change (they only depend on its parts)."""
        memo = (t.edit_key, t.parent_id, t.parent_id in self._values_at)
        if memo not in self._change_memo:
            self._change_memo[memo] = model.change(parts)
        return self._change_memo[memo]

    def _model(self, history: list[Tried]) -> tuple[_SettingsModel, _Crashes, _Noise]:
        """The model with the history's results in it (not yet fitted), what crashed, and
        the noise levels."""
        noise = _noise(history)
        model = _SettingsModel(self._base_values, self._steps, noise)
        crashes = _Crashes()
        # parents this agent has seen, by their settings: to find which kept child became
        # which parent (its measurement is that parent's offset)
        by_state = {}
        for pid, values in self._values_at.items():
            by_state.setdefault(_state_key(values), pid)
            crashes.safe.update((t, value_label(v)) for t, v in values.items())
        failed_runs = [parts for t in history if t.status in FAILED
                       for parts in [self._parts(t)] if parts is not None]
        for t, delta in _deltas(history):
            parts = self._parts(t)
            if parts is None:
                continue
            crashes.ran(parts)
            x = dict(self._change(model, t, parts))
            x[("p", t.parent_id)] = x.get(("p", t.parent_id), 0.0) + 1.0
            var = noise.tau ** 2
            child = None
            if t.status == "kept" and t.parent_id in self._values_at:
                after = dict(self._values_at[t.parent_id])
                after.update({target: new for target, _, new in parts})
                child = by_state.get(_state_key(after))
            if child is not None and child != t.parent_id:
                # this run's error is the child's offset as a parent: no separate error
                x[("p", child)] = x.get(("p", child), 0.0) - 1.0
                var = (noise.tau * 0.05) ** 2
            model.add(x, delta, var)
        for parts in failed_runs:
            crashes.failed(parts)
        crashes.settle()
        return model, crashes, noise

    # -- choosing --------------------------------------------------------------------------

    def _options(self, found: _Fitted, singles: list[Edit], pool: list[Edit],
                 tried: set[str]) -> list[_Option]:
        """Proposals worth running, each with its value (expected kept gain)."""
        a = found.assessment
        options = []
        for e in singles:
            guess = a.predictions.get(e.key)
            if guess is None:         # an edit the model cannot place: worth a look
                options.append(_Option([e], e.key, 0.0))
            elif guess.crash_p < 1.0:
                options.append(_Option([e], e.key, a.kept_gain(
                    guess.mean, guess.sd ** 2, guess.crash_p)))
        return options + self._stacks(found, pool, tried)

    def _stacks(self, found: _Fitted, pool: list[Edit], tried: set[str],
                wide: bool = False) -> list[_Option]:
        """Stacks of promising edits, one per setting: every set of two to `max_stack` of
        the best-predicted few (among edits whose value the history has measured, or whose
        setting's curve it has pinned down) that the model expects to clear at least half
        the bar. `wide`: once nothing else is left on the parent, stacks of the
        `STACK_FROM_WIDE` best-predicted edits expected to help, measured or not, however
        small the gain (still ranked by it)."""
        a, model = found.assessment, found.model
        best: dict[str, Edit] = {}
        for e in pool:
            guess = a.predictions.get(e.key)
            if guess is None or guess.mean >= 0 or guess.crash_p >= 0.5 or (
                    not guess.measured and not wide):
                continue
            if e.target not in best or guess.mean < a.predictions[best[e.target].key].mean:
                best[e.target] = e
        ranked = sorted(best.values(), key=lambda e: a.predictions[e.key].mean)[
            :STACK_FROM_WIDE if wide else STACK_FROM]
        vectors = {e.key: model.vector(found.changes[e.key]) for e in ranked}
        out = []
        for size in range(2, min(self.max_stack, len(ranked)) + 1):
            for chosen in itertools.combinations(ranked, size):
                key = stack_key(sorted(c.key for c in chosen))
                if len(key) > MAX_EDIT_KEY_CHARS or key in tried:
                    continue
                x = sum(vectors[c.key] for c in chosen)
                mean = float(x @ model.mean)
                if mean > -a.bar / 2 and not wide:
                    continue     # below the noise: not worth a run
                var = float(max(x @ model.cov @ x, 0.0))
                survive = math.prod(1 - a.predictions[c.key].crash_p for c in chosen)
                out.append(_Option(list(chosen), key, a.kept_gain(mean, var, 1 - survive)))
        return out


def _state_key(values: dict[str, object]) -> tuple:
    return tuple(sorted((k, value_label(v)) for k, v in values.items()))


class RandomAgent:
    """Uniform over applicable, untried, on-topic catalogue edits: the benchmark's control."""
    name = "random"

    def __init__(self, *, profile: str | None = None) -> None:
        self.profile = profile

    def propose(self, parent_source: str, brief: Brief, history: list[Tried], *,
                parent_id: str, rng: random.Random) -> Proposal:
        if not isinstance(parent_source, str):
            return failed("no parent source")
        settings = locate_settings(parent_source)
        if settings is None:
            return failed("the parent train.py does not parse")
        catalogue = build_catalogue(parent_source, settings, self.profile)
        candidates = _candidates(catalogue, brief.topic,
                                 _tried_here([t for t in history or []], parent_id))
        if not candidates:
            return _exhausted(brief.topic)
        return _propose_edit(parent_source, rng.choice(candidates), settings)


__all__ = ["Assessment", "MutateAgent", "Prediction", "RandomAgent"]

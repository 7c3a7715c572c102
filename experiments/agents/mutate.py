"""The default proposer: catalogue edits steered by history (no model, no key, no network).

`MutateAgent` picks one catalogue edit (experiments/agents/catalogue.py) for the parent by
Thompson sampling on the val_bpb deltas the history reports:

- relative steps of a numeric setting (`MATRIX_LR*0.7`, `DEPTH+1`) are scored by a line
  search: a Bayesian quadratic of val_bpb in the setting's log value, fitted to every result
  whose parent's value is known. A x2 that hurt makes x0.5 likely to help; a kept x0.7 makes
  another x0.7 worth trying until the curve turns up;
- other edits (`WEIGHT_DECAY=0.1`, `QK_NORM=False`) are scored along family -> setting ->
  key: each level's mean is shrunk towards the level above, so a kind of edit that keeps
  helping (or crashing) moves its untried members, and untried keys stay uncertain, so
  they get explored. A crash, timeout or rejection counts as a large positive delta;
- an edit key already tried on this parent is never proposed again for it, and keys that
  crashed before come last;
- edits tagged with the brief's topic come first (`general` takes every edit);
- with probability `combine_p`, or once single edits are exhausted on this parent, it
  proposes two promising edits together: edits kept elsewhere that the parent lacks, and
  near misses on this parent (they lowered val_bpb, but not past the noise bar). A relative
  edit such as `x2` kept elsewhere counts as present once its setting differs from the base
  genome, so lineages do not compound it by accident.

Descriptions start with `[key]`, so the key travels with the record and peers' agents learn
from it too. `RandomAgent` is the benchmark's control: a uniform choice among the same
applicable, untried, on-topic edits, with no other use of history.
"""
from __future__ import annotations

import hashlib
import math
import random
import re
import statistics
from collections import defaultdict

from experiments.agents.base import GENOME_DIR, Brief, Proposal, Tried, static_screen, \
    failed, validate_proposal
from experiments.agents.catalogue import Edit, Setting, build_catalogue, edit_in_topic, \
    family_of_key, for_profile, key_target, locate_settings

def _default_base_source() -> str | None:
    try:
        return (GENOME_DIR / "train.py").read_text(encoding="utf-8")
    except OSError:
        return None


class _Stats:
    """Thompson sampling on val_bpb deltas, shrunk along family -> setting -> key.

    Every tried edit with a key is one observation: its delta, or for a crash, timeout or
    rejection a penalty of +3 typical deltas. The typical delta (median |delta|) sets the
    noise scale, so nothing depends on the arena's units. Each level's mean is shrunk
    towards the level above by pseudo-observations: a family (all learning rates) needs
    several results before it moves away from the overall mean, while one result of a
    setting or key counts as much as its prior. A key is scored by a draw from
    N(its mean, scale^2 / (n + 1)) and the lowest draw wins: untried keys are uncertain, so
    they get explored, and edits that helped on earlier parents come first."""

    FAMILY_PSEUDO = 5.0

    def __init__(self, history: list[Tried], prior_strength: float = 1.0):
        self.k = prior_strength
        deltas = [t.delta for t in history if isinstance(t, Tried) and t.edit_key
                  and isinstance(t.delta, (int, float)) and math.isfinite(t.delta)]
        self.scale = max(statistics.median(abs(d) for d in deltas), 1e-6) if deltas else 0.01
        self.sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.crashed: set[str] = set()
        observed = []
        for t in history:
            if not isinstance(t, Tried) or not t.edit_key:
                continue
            if isinstance(t.delta, (int, float)) and math.isfinite(t.delta):
                y = t.delta
            elif t.status in ("crash", "timeout", "rejected"):
                y = 3 * self.scale
                self.crashed.add(t.edit_key)
            else:
                continue
            observed.append(y)
            for level in self._levels(t.edit_key):
                c = self.sums[level]
                c[0] += y
                c[1] += 1.0
        self.prior = statistics.fmean(observed) if observed else 0.0

    @staticmethod
    def _levels(key: str) -> tuple[str, str, str]:
        return ("f:" + family_of_key(key), "t:" + key_target(key), "k:" + key)

    def _shrunk(self, level: str, prior: float, k: float) -> tuple[float, float]:
        total, n = self.sums.get(level, (0.0, 0.0))
        return (total + k * prior) / (n + k), n

    def sample(self, edit: Edit, rng: random.Random) -> float:
        """A draw of the edit's delta (lower is better)."""
        family, _ = self._shrunk("f:" + edit.family, self.prior, self.FAMILY_PSEUDO)
        target, _ = self._shrunk("t:" + edit.target, family, self.k)
        mean, n = self._shrunk("k:" + edit.key, target, self.k)
        return rng.gauss(mean, self.scale / math.sqrt(n + self.k))


_RELATIVE_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\*([0-9.]+(?:e-?[0-9]+)?)|([+-][0-9]+))$")


class _LineSearch:
    """Per numeric setting, a Bayesian quadratic of val_bpb in the setting's log value
    u = log(value / base value): f(u) = b * u + c * u^2. A step x from a parent at u0 measures
    f(u0 + x) - f(u0) = b * x + c * (2 * u0 * x + x^2), which is linear in (b, c), so results
    from any parent count once its value is known. Thus a x2 that hurt makes x0.5 likely to
    help, and after a kept x0.7 another x0.7 is worth a try until the bowl turns up again.

    Prior: no slope, mild curvature (moving a tuned knob costs a little), both wide; the
    noise scale is the history's typical delta. Thompson sampling draws one curve per
    setting and scores every step on it."""

    def __init__(self, scale: float):
        self.scale = scale
        self.points: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        self._draws: dict[str, tuple[float, float]] = {}

    @staticmethod
    def features(u: float, x: float) -> tuple[float, float]:
        return x, 2 * u * x + x * x

    def add(self, target: str, u: float, x: float, y: float) -> None:
        if all(math.isfinite(v) for v in (u, x, y)) and x != 0:
            self.points[target].append((*self.features(u, x), y))

    def _posterior(self, target: str) -> tuple[list[float], list[list[float]]]:
        s2 = self.scale ** 2
        prior_var = 16 * s2
        # precision matrix and right-hand side for w = (b, c), prior mean (0, 2 * scale)
        p11, p12, p22 = 1 / prior_var, 0.0, 1 / prior_var
        r1, r2 = 0.0, 2 * self.scale / prior_var
        for f1, f2, y in self.points.get(target, ()):
            p11 += f1 * f1 / s2
            p12 += f1 * f2 / s2
            p22 += f2 * f2 / s2
            r1 += f1 * y / s2
            r2 += f2 * y / s2
        det = p11 * p22 - p12 * p12
        cov = [[p22 / det, -p12 / det], [-p12 / det, p11 / det]]
        mean = [cov[0][0] * r1 + cov[0][1] * r2, cov[1][0] * r1 + cov[1][1] * r2]
        return mean, cov

    def sample(self, target: str, u: float, x: float, rng: random.Random) -> float:
        """A draw of the delta of step x from a parent at u."""
        if target not in self._draws:
            (m1, m2), ((a, b), (_, d)) = self._posterior(target)
            l11 = math.sqrt(max(a, 0.0))
            l21 = b / l11 if l11 > 0 else 0.0
            l22 = math.sqrt(max(d - l21 * l21, 0.0))
            z1, z2 = rng.gauss(0, 1), rng.gauss(0, 1)
            self._draws[target] = (m1 + l11 * z1, m2 + l21 * z1 + l22 * z2)
        slope, curve = self._draws[target]
        f1, f2 = self.features(u, x)
        return slope * f1 + curve * f2


def _positive(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _first_values(settings: list[Setting], profile: str | None) -> dict[str, object]:
    """Each setting's value (its first occurrence among those the node may edit)."""
    out: dict[str, object] = {}
    for s in for_profile(settings, profile):
        out.setdefault(s.name, s.value)
    return out


def _tried_here(history: list[Tried], parent_id: str) -> set[str]:
    return {t.edit_key for t in history
            if isinstance(t, Tried) and t.parent_id == parent_id and t.edit_key}


def _candidates(catalogue: dict[str, Edit], topic: str, exclude: set[str]) -> list[Edit]:
    """Untried edits in the topic; if the topic is exhausted, untried edits of any topic."""
    fresh = [e for k, e in catalogue.items() if k not in exclude]
    on_topic = [e for e in fresh if edit_in_topic(e, topic)]
    return on_topic or fresh


def _exhausted(topic: str) -> Proposal:
    return failed(f"every catalogue edit for topic {topic} was already tried on this parent")


_screened: dict[str, bool] = {}


def _check(parent_source: str, proposal: Proposal) -> Proposal:
    """validate_proposal, screening the parent once instead of every child: catalogue edits
    only rewrite literal values (or swap one activation call), which the static screen does
    not look at, so a child passes exactly when its parent does."""
    digest = hashlib.sha256(parent_source.encode("utf-8", "replace")).hexdigest()
    if digest not in _screened:
        if len(_screened) > 1024:
            _screened.clear()
        _screened[digest] = static_screen(parent_source)[0]
    return validate_proposal(parent_source, proposal, screen=not _screened[digest])


def _propose_edit(parent_source: str, edit: Edit, settings: list[Setting]) -> Proposal:
    new = edit.apply(parent_source, settings)
    desc = describe(edit.key, edit.desc)
    if new is None:
        return failed(f"edit {edit.key} does not apply", desc, edit.key)
    return _check(parent_source, Proposal(new, desc, edit.key))


def describe(key: str, text: str) -> str:
    """`[key] text`: the key travels in the record's description, where peers' mutate agents
    (and experiments.loop.edit_key_of) read it back."""
    return f"[{key}] {text}"


class MutateAgent:
    name = "mutate"

    def __init__(self, *, base_source: str | None = None, profile: str | None = None,
                 combine_p: float = 0.2, prior_strength: float = 1.0):
        self.profile = profile
        self.base_source = base_source if base_source is not None else _default_base_source()
        self.combine_p = combine_p
        self.prior_strength = prior_strength
        self._base_settings = (locate_settings(self.base_source)
                               if self.base_source is not None else None)
        self._base_values = _first_values(self._base_settings or [], profile)
        self._values_at: dict[str, dict[str, object]] = {}   # parent id -> its settings

    def propose(self, parent_source: str, brief: Brief, history: list[Tried], *,
                parent_id: str, rng: random.Random) -> Proposal:
        if not isinstance(parent_source, str):
            return failed("no parent source")
        history = [t for t in (history or []) if isinstance(t, Tried)]
        settings = locate_settings(parent_source)
        if settings is None:
            return failed("the parent train.py does not parse")
        catalogue = build_catalogue(parent_source, settings, self.profile)
        current = _first_values(settings, self.profile)
        if len(self._values_at) > 10000:
            self._values_at.clear()
        self._values_at[parent_id] = current
        tried = _tried_here(history, parent_id)
        candidates = _candidates(catalogue, brief.topic, tried)
        stats = _Stats(history, self.prior_strength)
        lines = self._line_model(history, current, stats)
        if candidates and rng.random() >= self.combine_p:
            return self._single(parent_source, settings, candidates, stats, lines, rng)
        combo = self._combination(parent_source, settings, catalogue, history, parent_id,
                                  tried, stats.scale, rng)
        if combo is not None:
            return combo
        if candidates:
            return self._single(parent_source, settings, candidates, stats, lines, rng)
        return _exhausted(brief.topic)

    def _line_model(self, history: list[Tried], current: dict[str, object],
                    stats: _Stats) -> tuple[_LineSearch, dict[str, float]]:
        """The line-search model from results of relative steps (x2, x0.7, +1), and the
        current parent's position u per setting. A result counts when its parent's value is
        known: a parent this agent has seen, or any parent while no lineage in the history
        has kept a change of that setting (it still has the base genome's value)."""
        model = _LineSearch(stats.scale)
        moved = {key_target(t.edit_key) for t in history if t.status == "kept" and t.edit_key}

        def origin(target: str) -> float | None:
            base = self._base_values.get(target)
            return base if _positive(base) else None

        here = {t: math.log(v / origin(t)) for t, v in current.items()
                if _positive(v) and origin(t) is not None}
        for t in history:
            m = _RELATIVE_KEY.match(t.edit_key or "")
            if not m or m.group(1) not in here:
                continue
            target = m.group(1)
            if t.parent_id in self._values_at:
                value = self._values_at[t.parent_id].get(target)
            elif target not in moved:
                value = self._base_values.get(target)
            else:
                continue
            if not _positive(value):
                continue
            if m.group(2):
                x = math.log(float(m.group(2)))
            else:
                new = value + int(m.group(3))
                if new <= 0:
                    continue
                x = math.log(new / value)
            u = math.log(value / origin(target))
            if isinstance(t.delta, (int, float)) and math.isfinite(t.delta):
                model.add(target, u, x, t.delta)
            elif t.status in ("crash", "timeout", "rejected"):
                model.add(target, u, x, 3 * stats.scale)
        return model, here

    def _single(self, parent_source: str, settings: list[Setting], candidates: list[Edit],
                stats: _Stats, lines: tuple[_LineSearch, dict[str, float]],
                rng: random.Random) -> Proposal:
        model, here = lines

        def draw(edit: Edit) -> float:
            if edit.relative and edit.step is not None and edit.target in here:
                return model.sample(edit.target, here[edit.target], edit.step, rng)
            return stats.sample(edit, rng)

        # keys that crashed, timed out or were rejected before come last: such failures
        # tend to repeat (a setting that diverges, a shape that does not fit)
        ranked = sorted(candidates, key=lambda e: (e.key in stats.crashed, draw(e)))
        for edit in ranked[:5]:
            proposal = _propose_edit(parent_source, edit, settings)
            if proposal.ok:
                return proposal
        return proposal

    # -- combination -----------------------------------------------------------------------

    def _untouched(self, target: str, settings: list[Setting]) -> bool:
        """Whether the parent still has the base genome's values for this setting."""
        if self._base_settings is None:
            return False
        base = {(s.scope, s.name): s.value for s in self._base_settings if s.name == target}
        here = {(s.scope, s.name): s.value for s in settings if s.name == target}
        return bool(here) and here == base

    def _combination(self, parent_source: str, settings: list[Setting],
                     catalogue: dict[str, Edit], history: list[Tried], parent_id: str,
                     tried: set[str], scale: float, rng: random.Random) -> Proposal | None:
        """Two promising edits at once: edits kept elsewhere that the parent lacks, and near
        misses on this parent (they lowered val_bpb by more than half a typical delta, but
        not past the noise bar: two of them together may clear it)."""
        promise: dict[str, float] = {}
        for t in history:
            if not t.edit_key or "&" in t.edit_key or t.edit_key not in catalogue:
                continue
            edit = catalogue[t.edit_key]
            gain = -t.delta if isinstance(t.delta, (int, float)) and t.delta < 0 else 0.0
            near_miss = (t.status == "discarded" and gain > scale / 2
                         and t.parent_id == parent_id)
            # a relative edit kept elsewhere is already in the parent once its setting moved
            kept_missing = t.status == "kept" and (not edit.relative or self._untouched(
                edit.target, settings))
            if near_miss or kept_missing:
                promise[t.edit_key] = max(promise.get(t.edit_key, 0.0), gain)
        pool = [catalogue[k] for k in promise]
        if len(pool) < 2:
            return None
        weights = [promise[e.key] + 1e-4 for e in pool]
        for _ in range(12):
            first, second = rng.choices(pool, weights)[0], rng.choices(pool, weights)[0]
            if first.target == second.target:
                continue
            key = "&".join(sorted((first.key, second.key)))
            if key in tried:
                continue
            once = first.apply(parent_source, settings)
            twice = second.apply(once) if once is not None else None
            if twice is None:
                continue
            desc = describe(key, f"{first.desc}; {second.desc}")
            proposal = _check(parent_source, Proposal(twice, desc, key))
            if proposal.ok:
                return proposal
        return None


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


__all__ = ["MutateAgent", "RandomAgent"]

"""Field-standard search over train.py's settings: Optuna's TPE and CMA-ES, with the swarm's
records as the trial database (`--agent optuna:tpe`, `--agent optuna:cmaes`).

*The search space* is what the mutate catalogue (catalogue.py) knows how to edit, read off
the base genome for the node's profile, one dimension per setting:

- a positive float the catalogue scales (`MATRIX_LR*0.5` ... `*2`): a log range two
  catalogue steps either way (x0.25 .. x4 for the learning rates);
- a positive float the catalogue sets from a list (`ROPE_BASE=1000` ... `=500000`): the
  range the list spans (log when it spans more than x3);
- everything else (ints, bools, strings, lists with a zero in them, which turns a feature
  off): the values the catalogue offers, for ints those two steps away (`DEPTH` 2..6,
  `WIDTH` 64..192 in multiples of the heads), plus any value a record has used.

*Trials* are rebuilt from the history the loop gives the agent on every proposal, so there is
no database server and no state to lose: each record (the node's own and its peers') is a
trial whose parameters are its settings, derived along its lineage (its parent's values, read
from a source this agent has seen or derived the same way, with its `[key]` applied; records
whose key no catalogue agent wrote, such as an LLM's code edit, keep their parent's settings
and are parents like any other, not trials), and whose value is its measured val_bpb. A run
that crashed counts as the worst value seen. Runs that live peers announce (status
`running`) are pending trials: TPE treats them with Optuna's constant liar, CMA-ES keeps its
draw away from them, so parallel nodes spread out.

*TPE* is `optuna.samplers.TPESampler` on an in-memory study rebuilt from those trials.
*CMA-ES* is the `cmaes` optimizer that `optuna.samplers.CmaEsSampler` runs, replayed from the
trials in history order (a generation per population of records) in the unit cube of the
space (choices by their order): CmaEsSampler keeps its optimizer pickled inside its own
storage, which a study rebuilt from records does not have, and it samples categorical
settings at random; the replay keeps the real evolution path and covariance.

*A proposal* is an edit of the parent the loop chose: the sampled configuration is compared
with the parent's settings, and the largest moves (in the unit cube) are applied, at most
`max_moves` of them and as many as fit in a key the rest of the system reads (80 chars):
`[EMBED_LR=0.0136&MATRIX_LR=0.0291] ...`. So it stays one normal lineage step, every other
change the parent carries (code edits by other agents included) stays, and the mutate
agents of peers learn from it like from their own keys. The trial recorded is what ran, not
the raw draw. Deterministic given the rng the loop passes.
"""
from __future__ import annotations

import math
import random
import statistics
import warnings
from dataclasses import dataclass, field

import numpy as np

from experiments.agents.base import GENOME_DIR, Brief, Proposal, Tried, clean_line, \
    exhausted, failed, usable_history, validate_catalogue_edit
from experiments.agents.catalogue import HEAD_NAMES, WIDTH_NAMES, build_catalogue, \
    edit_in_topic, format_value, locate_settings, set_values
from experiments.agents.edit_keys import CODE_TARGETS, applied_value, code_values, \
    first_values, parse_key, same_value, value_label
from swarm.descriptions import MAX_EDIT_KEY_CHARS, edit_desc, stack_key

SAMPLERS = ("tpe", "cmaes")
MAX_MOVES = 4              # settings one proposal changes, at most (as mutate's stacks)
MAX_TRIALS = 2000          # the newest records the study is rebuilt from
DRAWS = 8                  # draws per proposal and width before the parent counts as
WIDEN = (1, 2, 4)          # exhausted: when a sampler has closed in on the parent and draws
                           # only what was tried there, its moves are made 2x, then 4x wider
STEPS = 2                  # the space reaches this many catalogue steps from the base
SIGNIFICANT = 3            # significant digits a sampled float is written with
FAILED = ("crash", "timeout")


def _float(v: object) -> bool:
    return isinstance(v, float) and math.isfinite(v)


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _round(v: float) -> float:
    return float(f"{v:.{SIGNIFICANT}g}")


@dataclass
class Dim:
    """One setting of the search space: a float range, or an ordered list of choices."""
    name: str
    base: object
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    labels: dict = field(default_factory=dict, repr=False)   # label -> choice

    def __post_init__(self):
        self.labels = {value_label(c): c for c in self.choices}

    @property
    def continuous(self) -> bool:
        return not self.choices

    def _x(self, v: float) -> float:
        return math.log(v) if self.log else v

    def unit(self, v: object) -> float | None:
        """v's coordinate in [0, 1]; None where v is not a value of this dimension."""
        if self.continuous:
            if not _num(v) or (self.log and v <= 0):
                return None
            lo, hi = self._x(self.low), self._x(self.high)
            return min(max((self._x(v) - lo) / (hi - lo), 0.0), 1.0)
        label = value_label(v)
        if label not in self.labels:
            return None
        return (list(self.labels).index(label) + 0.5) / len(self.labels)

    def at(self, u: float) -> object:
        """The value at coordinate u (clipped to the cube)."""
        u = min(max(float(u), 0.0), 1.0)
        if self.continuous:
            lo, hi = self._x(self.low), self._x(self.high)
            x = lo + u * (hi - lo)
            return _round(math.exp(x) if self.log else x)
        return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]

    def with_value(self, v: object) -> "Dim":
        """This dimension, with v among its choices (a value a record used)."""
        if self.continuous or value_label(v) in self.labels:
            return self
        if not (isinstance(v, (bool, int, float, str, type(None))) and
                (not _num(self.base) or _num(v))):
            return self
        choices = list(self.choices) + [v]
        if all(_num(c) for c in choices):
            choices.sort()
        return Dim(self.name, self.base, tuple(choices))

    # Optuna's view: a float distribution, or a categorical one over the values' labels
    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution
        if self.continuous:
            return FloatDistribution(self.low, self.high, log=self.log)
        return CategoricalDistribution(list(self.labels))

    def param(self, v: object) -> object | None:
        if self.continuous:
            return min(max(float(v), self.low), self.high) if _num(v) and \
                (v > 0 or not self.log) else None
        label = value_label(v)
        return label if label in self.labels else None

    def from_param(self, p: object) -> object:
        return _round(float(p)) if self.continuous else self.labels[p]


def search_space(base_source: str, profile: str | None = None, steps: int = STEPS
                 ) -> dict[str, Dim]:
    """The dimensions the catalogue knows for `base_source` (see the module docstring)."""
    settings = locate_settings(base_source)
    if settings is None:
        return {}
    catalogue = build_catalogue(base_source, settings, profile)
    current = first_values(settings, profile)
    current.update(code_values(catalogue))
    groups: dict[str, list] = {}
    for e in catalogue.values():
        groups.setdefault(e.target, []).append(e)
    dims: dict[str, Dim] = {}
    for target, edits in groups.items():
        base = current.get(target)
        news = [e.new_value for e in edits if e.new_value is not None]
        if base is None or not news:
            continue
        relative = all(e.relative for e in edits)
        if _float(base) and base > 0 and all(_num(n) and n > 0 for n in news):
            if relative:
                lo = min(min(n / base for n in news), 1.0) ** steps
                hi = max(max(n / base for n in news), 1.0) ** steps
                dims[target] = Dim(target, base, low=base * lo, high=base * hi, log=True)
            else:
                lo, hi = min(news + [base]), max(news + [base])
                if hi > lo:
                    dims[target] = Dim(target, base, low=float(lo), high=float(hi),
                                       log=hi / lo > 3)
            continue
        values = [base] + news
        if relative and isinstance(base, int) and not isinstance(base, bool) and steps > 1:
            values += _two_steps(base_source, edits, target, profile)
        seen, choices = set(), []
        for v in values:
            if value_label(v) not in seen:
                seen.add(value_label(v))
                choices.append(v)
        if all(_num(c) for c in choices):
            choices.sort()
        if len(choices) > 1:
            dims[target] = Dim(target, base, tuple(choices))
    return dims


def _two_steps(source: str, edits: list, target: str, profile: str | None) -> list:
    """Values of `target` one more catalogue step beyond each of `edits`."""
    out = []
    for e in edits:
        child = e.apply(source)
        if child is None:
            continue
        for e2 in build_catalogue(child, profile=profile).values():
            if e2.target == target and e2.relative and e2.new_value is not None:
                out.append(e2.new_value)
    return out


def _valid(values: dict[str, object]) -> bool:
    """Widths still split into the heads (even head sizes of 16 or more), as the catalogue's
    own heads edits require."""
    width = next((values[n] for n in WIDTH_NAMES if n in values), None)
    heads = next((values[n] for n in HEAD_NAMES if n in values), None)
    if not (_num(width) and _num(heads)) or heads <= 0:
        return True
    return width % (2 * heads) == 0 and width // heads >= 16


@dataclass
class Trials:
    """The history as trials: (settings, val_bpb) done, settings pending, keys tried here."""
    done: list[tuple[dict, float]]
    pending: list[dict]
    tried_here: set[str]


class OptunaAgent:
    """`optuna:tpe` or `optuna:cmaes`; see the module docstring."""

    def __init__(self, sampler: str = "tpe", *, base_source: str | None = None,
                 profile: str | None = None, max_moves: int = MAX_MOVES,
                 max_trials: int = MAX_TRIALS, startup_trials: int = 10,
                 multivariate: bool = True, sigma0: float = 1 / 6,
                 popsize: int | None = None, pick: str = "largest", steps: int = STEPS):
        """`startup_trials`: TPE's random start (Optuna's default, 10); `multivariate`:
        TPE's joint model of the settings; `sigma0`, `popsize`: CMA-ES's initial step (in
        the unit cube; Optuna's default, 1/6) and population (None: 4 + 3 ln(dims))."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: use one of {SAMPLERS}")
        self.sampler = sampler
        self.name = f"optuna:{sampler}"
        self.profile = profile
        self.max_moves = max(1, int(max_moves))
        self.max_trials = max(1, int(max_trials))
        self.startup_trials = max(0, int(startup_trials))
        self.multivariate = bool(multivariate)
        self.sigma0 = float(sigma0)
        self.popsize = popsize
        self.pick = pick
        self.steps = steps
        if base_source is None:
            try:
                base_source = (GENOME_DIR / "train.py").read_text(encoding="utf-8")
            except OSError:
                base_source = None
        self.base_source = base_source
        self.space: dict[str, Dim] = {}
        self.base_values: dict[str, object] = {}
        if base_source is not None:
            self._set_base(base_source)
        self._seen: dict[str, dict[str, object]] = {}     # parent id -> its settings

    def _set_base(self, source: str) -> None:
        settings = locate_settings(source)
        if settings is None:
            return
        self.space = search_space(source, self.profile, self.steps)
        self.base_values = first_values(settings, self.profile)
        self.base_values.update(code_values(build_catalogue(source, settings, self.profile)))

    # -- the trials ------------------------------------------------------------------------

    def trials(self, history: list[Tried], parent_id: str) -> Trials:
        """The history as trials (see the module docstring), oldest first."""
        derived: dict[str, dict] = {}
        scores: dict[str, float] = {}
        done: list[tuple[dict, float]] = []
        crashed: list[dict] = []
        pending: list[dict] = []
        here: set[str] = set()
        for t in history[-self.max_trials:] if len(history) > self.max_trials else history:
            if t.parent_id == parent_id and t.edit_key:
                here.add(t.edit_key)
            before = self._seen.get(t.parent_id) or derived.get(t.parent_id) or \
                self.base_values
            after = _apply_key(before, t.edit_key)
            if isinstance(t.record_id, str) and t.record_id:
                derived[t.record_id] = self._seen.get(t.record_id) or after or before
            if after is None:
                continue
            if t.status == "running":
                pending.append(after)
            elif t.status in FAILED:
                crashed.append(after)
            elif t.status in ("kept", "discarded"):
                value = t.val_bpb if _num(t.val_bpb) else (
                    scores.get(t.parent_id, 0.0) + t.delta if _num(t.delta) else None)
                if value is None:
                    continue
                if isinstance(t.record_id, str) and t.record_id:
                    scores[t.record_id] = value
                done.append((after, float(value)))
        done = _clip_values(done)
        if crashed and done:
            worst = max(v for _, v in done)
            done += [(c, worst) for c in crashed]
        return Trials(done, pending, here)

    # -- proposing -------------------------------------------------------------------------

    def propose(self, parent_source: str, brief: Brief, history: list[Tried], *,
                parent_id: str, rng: random.Random) -> Proposal:
        if not isinstance(parent_source, str):
            return failed("no parent source")
        settings = locate_settings(parent_source)
        if settings is None:
            return failed("the parent train.py does not parse")
        if not self.space:
            self._set_base(parent_source)
        catalogue = build_catalogue(parent_source, settings, self.profile)
        here = first_values(settings, self.profile)
        here.update(code_values(catalogue))
        if len(self._seen) > 10000:
            self._seen.clear()
        self._seen[parent_id] = here
        found = self.trials(usable_history(history), parent_id)
        dims = dict(self.space)
        for values in [here] + [v for v, _ in found.done] + found.pending:
            for name, dim in dims.items():
                if name in values:
                    dims[name] = dim.with_value(values[name])
        movable = [d for d in dims.values() if d.name in here and (
            brief.topic == "general" or any(edit_in_topic(e, brief.topic)
                                            for e in catalogue.values()
                                            if e.target == d.name))]
        movable = movable or [d for d in dims.values() if d.name in here]
        if not movable:
            return exhausted("no setting of the search space in this parent")
        seed = rng.randrange(1, 2**31 - 1)
        draws = self._tpe(dims, found, seed) if self.sampler == "tpe" else \
            self._cma(dims, found, seed)
        avoid = found.tried_here     # the loop lists the peers' runs on this parent there
        best, best_room = None, -1.0
        for widen in WIDEN:
            for _, sample in zip(range(DRAWS), draws):
                if widen > 1:
                    sample = _widened(dims, sample, here, widen)
                moves = self._choose(movable, sample, here, avoid, rng)
                if not moves:
                    continue
                after = dict(here)
                after.update({name: new for name, _, new in moves})
                room = _room(dims, after, found.pending)
                if room > best_room:
                    best, best_room = moves, room
                if self.sampler == "tpe" or not found.pending:
                    break   # TPE spreads by its constant liar; CMA-ES looks at a few draws
            if best is not None:
                break
        if best is None:
            return exhausted(f"{self.name} drew nothing new on this parent in "
                             f"{DRAWS * len(WIDEN)} draws, {max(WIDEN)}x wider at the end")
        return self._write(parent_source, settings, catalogue, best)

    def _choose(self, dims: list[Dim], sample: dict, here: dict, avoid: set[str],
                rng: random.Random) -> list[tuple]:
        """Moves from the parent's values to the sample's: the largest (or, with
        `pick="random"`, a random few), as many as fit, skipping a set already tried on
        this parent by starting one move further down; [] if every set was."""
        moves = _moves_from({d.name: d for d in dims}, sample, here, len(dims))
        if self.pick == "random":
            rng.shuffle(moves)
        for start in range(len(moves)):
            chosen: list[tuple] = []
            for move in moves[start:]:
                if len(chosen) >= self.max_moves:
                    break
                if len(_key_of(chosen + [move])) <= MAX_EDIT_KEY_CHARS:
                    chosen.append(move)
            after = dict(here)
            after.update({name: new for name, _, new in chosen})
            if chosen and _key_of(chosen) not in avoid and _valid(after):
                return chosen
        return []

    def _write(self, parent_source: str, settings, catalogue, moves: list[tuple]
               ) -> Proposal:
        source = parent_source
        values = {name: new for name, _, new in moves if name not in CODE_TARGETS}
        if values:
            source = set_values(parent_source, values, settings, self.profile)
        for name, _, new in moves:
            if name in CODE_TARGETS and source is not None:
                edit = catalogue.get(f"{name}={new}")
                source = edit.apply(source) if edit is not None else None
        key = _key_of(moves)
        text = "; ".join(f"{name} {_show(old)} -> {_show(new)}"
                         for name, old, new in sorted(moves))
        desc = clean_line(edit_desc(key, f"{text} ({self.name})"))
        if source is None:
            return failed(f"the values {key} cannot be written into this parent", desc, key)
        return validate_catalogue_edit(parent_source, Proposal(source, desc, key))

    # -- the samplers ----------------------------------------------------------------------

    def _tpe(self, dims: dict[str, Dim], found: Trials, seed: int):
        """Draws of Optuna's TPE on a study rebuilt from the trials; each draw stays in the
        study as a running trial, so the next one (constant liar) goes elsewhere."""
        import optuna
        from optuna.trial import TrialState, create_trial
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        distributions = {name: d.distribution() for name, d in dims.items()}

        def params(values: dict) -> dict:
            out = {}
            for name, d in dims.items():
                p = d.param(values.get(name, d.base))
                out[name] = p if p is not None else d.param(d.base)
            return {k: v for k, v in out.items() if v is not None}

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=self.startup_trials, constant_liar=True,
                multivariate=self.multivariate, warn_independent_sampling=False)
            study = optuna.create_study(direction="minimize", sampler=sampler)
            trials = [create_trial(params=params(v), distributions=distributions, value=y)
                      for v, y in found.done]
            trials += [create_trial(params=params(v), distributions=distributions,
                                    state=TrialState.RUNNING) for v in found.pending]
            study.add_trials(trials)
            while True:
                trial = study.ask(distributions)
                yield {name: dims[name].from_param(p) for name, p in trial.params.items()}

    def _cma(self, dims: dict[str, Dim], found: Trials, seed: int):
        """Draws of CMA-ES replayed from the trials (see the module docstring)."""
        from cmaes import CMA
        names = sorted(dims)

        def point(values: dict) -> np.ndarray:
            out = []
            for name in names:
                u = dims[name].unit(values.get(name, dims[name].base))
                if u is None:
                    u = dims[name].unit(dims[name].base)
                out.append(0.5 if u is None else u)
            return np.array(out)

        mean = point(self.base_values)
        n = len(names)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer = CMA(mean=mean, sigma=self.sigma0, bounds=np.array([[0.0, 1.0]] * n),
                            seed=seed, population_size=self.popsize, n_max_resampling=10 * n)
        size = optimizer.population_size
        solutions = [(point(v), y) for v, y in found.done]
        for i in range(0, len(solutions) - size + 1, size):
            optimizer.tell(solutions[i:i + size])
        while True:
            x = optimizer.ask()
            yield {name: dims[name].at(u) for name, u in zip(names, x)}


def _apply_key(values: dict, key: str | None) -> dict | None:
    """The settings after a catalogue agent's key on `values`; None if it cannot be read."""
    parts = parse_key(key)
    if parts is None:
        return None
    out = dict(values)
    for target, op, x in parts:
        old = values.get(target)
        new = x if op == "=" else (applied_value(op, x, old) if old is not None else None)
        if new is None:
            return None
        out[target] = new
    return out


def _clip_values(done: list[tuple[dict, float]]) -> list[tuple[dict, float]]:
    """Scores beyond 30 typical deviations from the median are clipped to it: one absurd
    number (a broken run, a peer's lie) must not be the model's whole idea of good."""
    if len(done) < 3:
        return done
    med = statistics.median(v for _, v in done)
    spread = max(statistics.median(abs(v - med) for _, v in done), 1e-9)
    lo, hi = med - 30 * spread, med + 30 * spread
    return [(x, min(max(v, lo), hi)) for x, v in done]


def _moves_from(dims: dict[str, Dim], sample: dict, here: dict, limit: int) -> list[tuple]:
    """(name, old, new) for each setting the sample moves, largest move first."""
    moves = []
    for name, d in dims.items():
        if name not in here or name not in sample:
            continue
        old, new = here[name], sample[name]
        if same_value(old, new) or value_label(old) == value_label(new):
            continue
        uo, un = d.unit(old), d.unit(new)
        size = abs(un - uo) if uo is not None and un is not None else 1.0
        moves.append((size, name, old, new))
    moves.sort(key=lambda m: (-m[0], m[1]))
    return [(name, old, new) for _, name, old, new in moves[:limit]]


def _widened(dims: dict[str, Dim], sample: dict, here: dict, factor: float) -> dict:
    """The sample's move from the parent's values, `factor` times as long (unit cube)."""
    out = dict(sample)
    for name, d in dims.items():
        if name not in here or name not in sample:
            continue
        uo, un = d.unit(here[name]), d.unit(sample[name])
        if uo is not None and un is not None and un != uo:
            out[name] = d.at(uo + factor * (un - uo))
    return out


def _key_of(moves: list[tuple]) -> str:
    """`A=1&B="x"`, sorted by setting: the same change always has the same key (code targets
    as the catalogue writes them: `activation=gelu`)."""
    parts = []
    for name, _, new in sorted(moves):
        parts.append(f"{name}={new}" if name in CODE_TARGETS else f"{name}={_show(new)}")
    return stack_key(parts)


def _show(v: object) -> str:
    """A value as keys and descriptions write it (ints stay ints: `DEPTH=5`)."""
    try:
        return format_value(_round(v) if _float(v) else v)
    except ValueError:
        return value_label(v)


def _room(dims: dict[str, Dim], values: dict, pending: list[dict]) -> float:
    """Distance (unit cube) from the nearest pending trial: how far apart parallel nodes
    stay."""
    if not pending:
        return 0.0

    def coords(v: dict) -> list[float]:
        out = []
        for name, d in sorted(dims.items()):
            u = d.unit(v.get(name, d.base))
            out.append(u if u is not None else 0.5)
        return out

    mine = np.array(coords(values))
    return float(min(np.linalg.norm(mine - np.array(coords(p))) for p in pending))


__all__ = ["Dim", "OptunaAgent", "SAMPLERS", "Trials", "search_space"]

"""The mutate agent's catalogue: real, topic-tagged edits of genome/train.py.

An edit names one *setting* of train.py - an UPPER_CASE constant `NAME = literal  # comment`,
or an entry of the same name in a per-profile dict (`PROFILES = {"cpu": dict(DEPTH=4, ...)}`,
keys matched case-insensitively) - or one code pattern (the MLP activation), and rewrites only
the literal text of the value, so the comment on the line and everything else stay as they were
(literals.py finds the settings and writes the values).

The catalogue is built from the source it will edit: rules match setting names (`*_LR`,
`DEPTH`, `WEIGHT_DECAY`, ...), so a constant train.py lacks simply has no edits, and a renamed
constant keeps its edits as long as a rule still matches it. An edit of a setting that appears
in several profiles changes every profile's value the same way (x2, +1, = 0.1); given the
node's `profile`, only that profile's entries (and module constants) are edited, since a cpu
node's result says nothing about the cuda profile. Flat dicts are data tables, not knobs.

Keys are stable strings (`MATRIX_LR*2`, `WEIGHT_DECAY=0.1`, `DEPTH+1`, `activation=gelu`): the
same key means the same change, which is what the history and combinations rely on. A stack of
edits joins its keys with `&` (swarm.descriptions).
"""
from __future__ import annotations

import ast
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Callable

from experiments.agents.literals import Setting, format_value, locate_settings, parse_source, \
    splice
from swarm.descriptions import is_stack

TOPICS = ("optimizer", "architecture", "schedule", "init", "efficiency", "general")


def _same(a: object, b: object) -> bool:
    """Whether two literal values are one value (an edit that gives this changes nothing)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------------------
# Edits.

Transform = Callable[[Setting, list[Setting]], object]   # new value, or None: leave as is


@dataclass(frozen=True)
class Edit:
    key: str                  # stable: "MATRIX_LR*2"
    family: str               # kind of edit, shared by similar settings: "lr", "depth", ...
    target: str               # the setting (upper case) or code target ("activation")
    topics: frozenset[str]
    desc: str                 # one line, says what changes and from what to what
    relative: bool            # a change relative to the current value (x2, +1)
    _changes: Callable[[str, list[Setting] | None], str | None] = field(repr=False,
                                                                       compare=False)
    old_value: object = None   # the target's value (first occurrence) before and after the
    new_value: object = None   # edit, where it was built: what a model of settings reads

    def apply(self, source: str, settings: list[Setting] | None = None) -> str | None:
        """The edited source, or None where this edit does not apply to `source`."""
        return self._changes(source, settings)


def _setting_edit(key: str, family: str, target: str, topics: frozenset[str], relative: bool,
                  transform: Transform, describe: Callable[[object, object], str],
                  settings: list[Setting], profile: str | None) -> Edit | None:
    """An edit of every occurrence of `target`; None if it would change nothing here."""

    def changes(ss: list[Setting]) -> list[tuple[Setting, str]]:
        out = []
        for s in ss:
            if s.name != target:
                continue
            new = transform(s, ss)
            if new is None or _same(new, s.value):
                continue
            try:
                out.append((s, format_value(new, s.text)))
            except ValueError:
                continue
        return out

    here = changes(settings)
    if not here:
        return None
    first = here[0][0]
    scopes = {s.scope for s, _ in here}
    new_first = transform(first, settings)
    desc = describe(first.value, new_first)
    if len(scopes) > 1:
        desc += f" (in {len(scopes)} profiles)"

    def apply(source: str, ss: list[Setting] | None) -> str | None:
        ss = locate_settings(source) if ss is None else ss
        if ss is None:
            return None
        todo = changes(for_profile(ss, profile))
        return splice(source, todo) if todo else None

    return Edit(key, family, target, topics, desc, relative, apply, first.value, new_first)


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _show(v: object) -> str:
    try:
        return format_value(v)
    except ValueError:
        return repr(v)


def _fmt_factor(f: float) -> str:
    return f"{f:g}"


def _scale(factor: float, minimum: float = 0.0, quantum: Callable | None = None) -> Transform:
    def t(s: Setting, ss: list[Setting]) -> object:
        v = s.value
        if not _num(v) or v <= 0:
            return None
        new = v * factor
        if isinstance(v, int):
            q = quantum(s, ss) if quantum else 1
            new = max(int(minimum), q, int(round(new / q)) * q)
            return int(new)
        return float(f"{max(new, minimum):.4g}")
    return t


def _add(n: int, minimum: int = 1) -> Transform:
    def t(s: Setting, ss: list[Setting]) -> object:
        if not isinstance(s.value, int) or isinstance(s.value, bool):
            return None
        new = s.value + n
        return new if new >= minimum else None
    return t


def _set(value: object) -> Transform:
    def t(s: Setting, ss: list[Setting]) -> object:
        v = s.value
        if isinstance(value, bool) or isinstance(v, bool):
            return value if isinstance(v, bool) and isinstance(value, bool) else None
        if _num(value):
            if v is None and value == 0:
                return None
            if not (_num(v) or v is None):
                return None
            if isinstance(v, int) and isinstance(value, float) and value.is_integer():
                return int(value)
            return float(value) if isinstance(v, float) else value
        if isinstance(value, tuple):
            return value if isinstance(v, tuple) and len(v) == len(value) else None
        if isinstance(value, str):
            return value if isinstance(v, str) else None
        return None
    return t


def _in_scope(ss: list[Setting], scope: tuple[str, ...], names: tuple[str, ...]) -> object:
    """The value of the first of `names` in `scope`, else at module level, else None."""
    for where in (scope, ()):
        for s in ss:
            if s.scope == where and s.name in names and _num(s.value):
                return s.value
    return None


HEAD_NAMES = ("N_HEAD", "N_HEADS", "NUM_HEADS", "HEADS")
WIDTH_NAMES = ("WIDTH", "N_EMBD", "N_EMBED", "D_MODEL", "MODEL_DIM", "DIM", "EMBED_DIM",
               "HIDDEN_SIZE", "HIDDEN_DIM")


def _width_quantum(s: Setting, ss: list[Setting]) -> int:
    """Widths stay a multiple of heads * 8, so every head keeps an even size (rotary)."""
    heads = _in_scope(ss, s.scope, HEAD_NAMES)
    if isinstance(heads, int) and heads > 0:
        return heads * 8
    return 64 if s.value >= 512 else 16


def _heads(factor: float) -> Transform:
    def t(s: Setting, ss: list[Setting]) -> object:
        v = s.value
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            return None
        new = int(v * factor)
        if new < 1 or new == v:
            return None
        width = _in_scope(ss, s.scope, WIDTH_NAMES)
        if isinstance(width, int) and (width % (2 * new) or width // new < 16):
            return None     # heads must split the width into even head sizes of 16+
        return new
    return t


def _multiple_of(q: int) -> Callable:
    return lambda s, ss: q


def _guarded(source: str, name: str) -> bool:
    """Whether train.py tests the setting before use (`if NAME:` ...), so 0 turns it off."""
    return re.search(rf"(?i)\bif\s+(not\s+)?[\w.\[\]\"']*{name}\b|{name}[\"'\]]?\s*(>|!=|is\b)",
                     source) is not None


# ---------------------------------------------------------------------------
# Rules: which settings get which edits.

@dataclass(frozen=True)
class Rule:
    family: str
    pattern: str                      # regex on the upper-cased setting name
    topics: tuple[str, ...]
    make: Callable[[str, object, str], list[tuple[str, Transform, bool]]]
    #       (name, current value, source) -> [(key suffix, transform, relative)]


def _scales(*factors: float, minimum: float = 0.0, quantum=None):
    def make(name, value, source):
        if not _num(value) or value <= 0:
            return []
        return [(f"*{_fmt_factor(f)}", _scale(f, minimum, quantum), True) for f in factors]
    return make


def _values(*values: object, off_needs_guard: bool = False):
    def make(name, value, source):
        out = []
        for v in values:
            if off_needs_guard and v == 0 and not (value in (0, None)
                                                   or _guarded(source, name)):
                continue
            out.append((f"={_show(v)}", _set(v), False))
        return out
    return make


def _steps(*deltas: int, minimum: int = 1):
    def make(name, value, source):
        if not isinstance(value, int) or isinstance(value, bool):
            return []
        return [(f"{d:+d}", _add(d, minimum), True) for d in deltas]
    return make


def _betas(name, value, source):
    if not (isinstance(value, tuple) and len(value) == 2 and all(_num(b) for b in value)):
        return []
    b1, b2 = value
    pairs = [(x, b2) for x in (0.8, 0.9, 0.95)] + [(b1, y) for y in (0.95, 0.99, 0.999)]
    return [(f"={_show((float(a), float(b)))}", _set((float(a), float(b))), False)
            for a, b in pairs]


def _beta_scalar(name, value, source):
    choices = (0.8, 0.9, 0.95) if name.endswith("1") else (0.95, 0.99, 0.999)
    return _values(*choices)(name, value, source)


def _toggle(name, value, source):
    if not isinstance(value, bool):
        return []
    return [(f"={not value}", _set(not value), False)]


def _warmup_steps(name, value, source):
    if not isinstance(value, int) or isinstance(value, bool):
        return []
    return _values(0)(name, value, source) + (_scales(0.5, 2.0)(name, value, source)
                                              if value > 0 else [])


_choices_memo: tuple[str, dict[str, set[str]]] = ("", {})


def _string_uses(source: str) -> dict[str, set[str]]:
    """For each name (upper case), the strings train.py compares it with (`NAME == "post"`)
    and the keys of the dicts it is looked up in (`ACTIVATIONS[ACTIVATION]`). One walk of
    the tree per source (memoised: the catalogue asks once per string setting)."""
    global _choices_memo
    if _choices_memo[0] == source and source:
        return _choices_memo[1]
    uses: dict[str, set[str]] = {}
    tree = parse_source(source)
    if tree is None:
        return uses

    def setting_name(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return node.id.upper()
        if isinstance(node, ast.Attribute):
            return node.attr.upper()
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            return str(node.slice.value).upper()
        return None

    def strings(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [e.value for e in node.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        return []

    tables = {}
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name) and isinstance(stmt.value, ast.Dict)):
            tables[stmt.targets[0].id] = [k.value for k in stmt.value.keys
                                          if isinstance(k, ast.Constant)
                                          and isinstance(k.value, str)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            found = [v for side in sides for v in strings(side)]
            for side in sides:
                name = setting_name(side)
                if name:
                    uses.setdefault(name, set()).update(found)
        elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
              and node.value.id in tables):
            name = setting_name(node.slice)
            if name:
                uses.setdefault(name, set()).update(tables[node.value.id])
    _choices_memo = (source, uses)
    return uses


def _choices_in_source(name: str, source: str) -> list[str]:
    """The string values train.py offers for a setting: what it compares the setting with,
    the keys of a dict it is looked up in, and quoted words in the setting's own comment
    (`ACTIVATION = "relu2"  # "relu2" | "gelu" | "silu"`)."""
    found = set(_string_uses(source).get(name, ()))
    m = re.search(rf"(?m)^{re.escape(name)}\s*(?::[^=]*)?=[^#\n]*#(.*)$", source)
    if m:
        found.update(re.findall(r"[\"']([A-Za-z0-9_.-]{1,32})[\"']", m.group(1)))
    return sorted(f for f in found
                  if 0 < len(f) <= 32 and re.fullmatch(r"[A-Za-z0-9_.-]+", f))


def _choice(name, value, source):
    if not isinstance(value, str):
        return []
    return [(f"={_show(c)}", _set(c), False) for c in _choices_in_source(name, source)
            if c != value]


# Never edited by the generic rules: they are not research knobs (or the harness owns them).
_NOT_KNOBS = re.compile(r"SEED|EVAL|VAL|BUDGET|LOG|PRINT|VOCAB|SEQ_LEN|BLOCK_SIZE|CONTEXT|"
                        r"DEVICE|PROFILE|PATH|DIR|FILE|TIME|SECONDS|ITER|SAVE|CHECKPOINT|"
                        r"STEPS?$|VERSION|PORT|THREAD|WORKER")
# Never turned on for these profiles: torch.compile warms up before the first batch, and on a
# CPU that takes longer than the harness's start-up grace, so such a run can only time out.
_CANNOT_START = {"cpu": re.compile(r"COMPILE")}


def _hint_topics(name: str) -> tuple[str, ...]:
    hints = (("efficiency", r"COMPILE|DTYPE|BF16|FP16|AMP|FUSED|FLASH|CHECKPOINTING"),
             ("init", r"INIT|ZERO"),
             ("optimizer", r"LR|BETA|MOMENTUM|DECAY|MUON|ADAM|CLIP|NESTEROV|EPS"),
             ("schedule", r"WARM|SCHEDULE|COOLDOWN|ANNEAL"),
             ("architecture", r"NORM|TIE|ACT|BIAS|ROPE|ROTARY|ATTN|HEAD|LAYER|MLP|WINDOW|"
                              r"GATE|RESID|SKIP|EMBED"))
    return tuple(t for t, pattern in hints if re.search(pattern, name)) or ("general",)


RULES: tuple[Rule, ...] = (
    Rule("lr", r"(^|_)(LR|LEARNING_RATE)$", ("optimizer",), _scales(0.5, 0.7, 1.4, 2.0)),
    Rule("betas", r"(^|_)BETAS$", ("optimizer",), _betas),
    Rule("betas", r"(^|_)BETA[12]$", ("optimizer",), _beta_scalar),
    Rule("momentum", r"MOMENTUM$", ("optimizer",), _values(0.85, 0.9, 0.95, 0.98)),
    Rule("weight_decay", r"(^|_)(WEIGHT_DECAY|WD)$", ("optimizer",), _values(0.0, 0.01, 0.1)),
    Rule("adam_eps", r"^(ADAM_)?EPS$|ADAM_EPS", ("optimizer",), _values(1e-10, 1e-8, 1e-6)),
    Rule("grad_clip", r"GRAD_CLIP|CLIP_GRAD|MAX_GRAD_NORM|GRAD_NORM", ("optimizer",),
         _values(0.0, 0.5, 1.0, 2.0, off_needs_guard=True)),
    Rule("newton_schulz", r"NS_STEPS|NEWTON_SCHULZ|MUON_STEPS|ORTHO_STEPS",
         ("optimizer", "efficiency"), _values(3, 4, 5, 6)),
    Rule("warmup", r"WARMUP_(RATIO|FRAC|FRACTION)$", ("schedule",),
         _values(0.0, 0.02, 0.05, 0.1)),
    Rule("warmup", r"WARMUP_(STEPS|ITERS)$", ("schedule",), _warmup_steps),
    Rule("warmdown", r"(WARMDOWN|COOLDOWN|DECAY)_(RATIO|FRAC|FRACTION)$", ("schedule",),
         _values(0.2, 0.35, 0.5, 0.65, 0.8)),
    Rule("final_lr", r"FINAL_LR_(FRAC|RATIO)|MIN_LR_(FRAC|RATIO)", ("schedule",),
         _values(0.0, 0.05, 0.1)),
    Rule("batch", r"BATCH_SIZE$|^BATCH$|BATCH_TOKENS$", ("schedule", "efficiency"),
         _scales(0.5, 2.0, minimum=1)),
    Rule("grad_accum", r"GRAD_ACCUM", ("efficiency",), _steps(+1, -1)),
    Rule("depth", r"^(DEPTH|N_LAYERS?|NUM_LAYERS|LAYERS)$", ("architecture",), _steps(+1, -1)),
    Rule("width", r"^(" + "|".join(WIDTH_NAMES) + r")$", ("architecture", "efficiency"),
         _scales(0.75, 1.25, quantum=_width_quantum)),
    Rule("width", r"ASPECT_RATIO$", ("architecture", "efficiency"),
         _scales(0.75, 1.25, quantum=_multiple_of(8))),
    Rule("heads", r"^(" + "|".join(HEAD_NAMES) + r")$", ("architecture",),
         lambda n, v, s: [("*2", _heads(2), True), ("*0.5", _heads(0.5), True)]),
    Rule("heads", r"HEAD_DIM$", ("architecture",),
         _scales(0.5, 2.0, minimum=16, quantum=_multiple_of(8))),
    Rule("mlp_ratio", r"MLP_RATIO|MLP_MULT|FFN_MULT|MLP_EXPANSION|FF_MULT", ("architecture",),
         _values(2, 3, 4)),
    Rule("rotary", r"(ROPE|ROTARY)_(BASE|THETA)$", ("architecture",),
         _values(1000, 10000, 100000, 500000)),
    Rule("softcap", r"SOFTCAP", ("architecture",), _values(0, 15, 30, 50, off_needs_guard=True)),
    Rule("dropout", r"DROPOUT", ("architecture",), _values(0.0, 0.1)),
    Rule("init", r"INIT", ("init",), lambda n, v, s: (_toggle(n, v, s) if isinstance(v, bool)
                                                      else _scales(0.5, 0.7, 1.4, 2.0)(n, v, s))),
    Rule("activation", r"ACTIVATION|^ACT$|_ACT$", ("architecture",), _choice),
    Rule("qk_norm", r"QK_NORM", ("architecture",), _toggle),
    Rule("tied_embeddings", r"TIE", ("architecture", "efficiency"), _toggle),
    Rule("norm", r"NORM", ("architecture",),
         lambda n, v, s: _toggle(n, v, s) or _choice(n, v, s)),
)

# Generic rules for settings no named rule matches (the genome may grow new knobs).
GENERIC_TOGGLE = "toggle"
GENERIC_CHOICE = "choice"
GENERIC_SCALE = "other"


def _rule_for(name: str) -> Rule | None:
    for rule in RULES:
        if re.search(rule.pattern, name):
            return rule
    return None


# ---------------------------------------------------------------------------
# Code edits: patterns in the model code rather than settings.

_ACTIVATIONS = {
    "relu2": re.compile(r"(?P<ns>\bF|\btorch\.nn\.functional|\btorch)\.relu\((?P<x>[\w.\[\]]+)\)"
                        r"\s*(?:\.square\(\)|\*\*\s*2\b|\.pow\(2\))"),
    "gelu": re.compile(r"(?P<ns>\bF|\btorch\.nn\.functional)\.gelu\((?P<x>[\w.\[\]]+)"
                       r"(?:\s*,\s*approximate\s*=\s*[\"'](?:tanh|none)[\"'])?\)"),
    "silu": re.compile(r"(?P<ns>\bF|\btorch\.nn\.functional)\.silu\((?P<x>[\w.\[\]]+)\)"),
}


def _activation_text(kind: str, ns: str, x: str) -> str:
    ns = "torch.nn.functional" if ns == "torch" else ns
    return {"relu2": f"{ns}.relu({x}).square()", "gelu": f"{ns}.gelu({x})",
            "silu": f"{ns}.silu({x})"}[kind]


def _activation_edits(source: str) -> list[Edit]:
    present = [k for k, rx in _ACTIVATIONS.items() if rx.search(source)]
    if len(present) != 1:
        return []        # none, or several kinds in use: not one clear MLP activation
    current = present[0]
    edits = []
    for kind in _ACTIVATIONS:
        if kind == current:
            continue

        def apply(src: str, _ss, kind=kind) -> str | None:
            rx = _ACTIVATIONS[current]
            new = rx.sub(lambda m: _activation_text(kind, m.group("ns"), m.group("x")), src)
            return new if new != src else None

        edits.append(Edit(f"activation={kind}", "activation", "activation",
                          frozenset({"architecture"}),
                          f"MLP activation {current} -> {kind}", False, apply,
                          old_value=current, new_value=kind))
    return edits


# ---------------------------------------------------------------------------
# The catalogue.

def _describe(name: str, suffix: str) -> Callable[[object, object], str]:
    def d(old: object, new: object) -> str:
        what = {"*": f"x{suffix[1:]}", "+": suffix, "-": suffix}.get(suffix[0], "set")
        return f"{name} {what}: {_show(old)} -> {_show(new)}"
    return d


def for_profile(settings: list[Setting], profile: str | None) -> list[Setting]:
    """The settings a node running `profile` may edit: module constants and its own profile's
    entries (a cpu node's result says nothing about the cuda profile). None: all of them."""
    if not profile:
        return settings
    return [s for s in settings if len(s.scope) < 2 or s.scope[-1] == profile]


def build_catalogue(source: str, settings: list[Setting] | None = None,
                    profile: str | None = None) -> dict[str, Edit]:
    """Every catalogue edit that changes `source`, by key. Empty if it does not parse.

    With `profile`, entries of other hardware profiles are left alone."""
    if settings is None:
        settings = locate_settings(source)
    if settings is None:
        return {}
    settings = for_profile(settings, profile)
    first: dict[str, Setting] = {}
    for s in settings:
        first.setdefault(s.name, s)
    edits: dict[str, Edit] = {}
    for name, s in first.items():
        rule = _rule_for(name)
        if rule is not None:
            family, topics, specs = rule.family, rule.topics, rule.make(name, s.value, source)
        elif _NOT_KNOBS.search(name):
            continue
        elif isinstance(s.value, bool):
            if not s.value and profile in _CANNOT_START and _CANNOT_START[profile].search(name):
                continue
            family, topics, specs = GENERIC_TOGGLE, _hint_topics(name), _toggle(name, s.value,
                                                                                source)
        elif isinstance(s.value, str):
            family, topics, specs = GENERIC_CHOICE, _hint_topics(name), _choice(name, s.value,
                                                                                source)
        elif isinstance(s.value, float) and s.value > 0:
            family, topics, specs = GENERIC_SCALE, _hint_topics(name), \
                _scales(0.5, 2.0)(name, s.value, source)
        else:
            continue
        for suffix, transform, relative in specs:
            key = name + suffix
            edit = _setting_edit(key, family, name, frozenset(topics) | {"general"}, relative,
                                 transform, _describe(name, suffix), settings, profile)
            if edit is not None:
                edits[key] = edit
    if any(_rule_for(name) is not None and _rule_for(name).family == "activation"
           for name in first):
        return edits     # the activation is a setting: the code stays as it is
    for edit in _activation_edits(source):
        edits[edit.key] = dataclasses.replace(edit, topics=edit.topics | {"general"})
    return edits


def set_values(source: str, values: dict[str, object], settings: list[Setting] | None = None,
               profile: str | None = None) -> str | None:
    """`source` with each named setting set to its value: every occurrence the node may edit
    (module constants and its own profile's entries), written like an `=` catalogue edit (an
    int setting stays an int, a float a float, the comment stays where it was). None if the
    source does not parse, a value cannot be written there, or nothing changes."""
    ss = locate_settings(source) if settings is None else settings
    if ss is None:
        return None
    todo = []
    for s in for_profile(ss, profile):
        if s.name not in values:
            continue
        new = _set(values[s.name])(s, ss)
        if new is None:
            return None
        if _same(new, s.value):
            continue
        try:
            todo.append((s, format_value(new, s.text)))
        except ValueError:
            return None
    return splice(source, todo) if todo else None


def key_target(key: str) -> str:
    """The setting (or code target) an edit key names: `MATRIX_LR*2` -> `MATRIX_LR`."""
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", key or "")
    return m.group(0) if m else ""


def family_of_key(key: str) -> str:
    """The family of any edit key, also one made on another parent; '' for unknown keys."""
    if not key:
        return ""
    if is_stack(key):
        return "combination"
    target = key_target(key)
    if target == "activation":
        return "activation"
    rule = _rule_for(target)
    if rule is not None:
        return rule.family
    rest = key[len(target):]
    if rest in ("=True", "=False"):
        return GENERIC_TOGGLE
    if rest.startswith('="') or rest.startswith("='"):
        return GENERIC_CHOICE
    return GENERIC_SCALE if rest.startswith("*") else ""


def edit_in_topic(edit: Edit, topic: str) -> bool:
    """`general` (and any topic the catalogue does not know) takes every edit."""
    if topic not in TOPICS or topic == "general":
        return True
    return topic in edit.topics

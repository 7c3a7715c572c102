"""Edit keys read back into setting values: what the catalogue agents (mutate.py,
optuna_agent.py) share.

A key names a change of train.py's settings (`MATRIX_LR*0.7`, `DEPTH-1`,
`QK_NORM=False`, `activation=gelu`; a stack joins its keys with `&`, as
swarm.descriptions writes it). An agent that learns from the history reads each key
back into the values it gave the parent's settings, and names values the same way
whoever wrote them (50 and 50.0 are one value).
"""
from __future__ import annotations

import ast
import math
import re

from experiments.agents.catalogue import Edit, Setting, for_profile, format_value
from swarm.descriptions import stack_parts

CODE_TARGETS = ("activation",)   # catalogue targets that are code patterns, not settings

# --------------------------------------------------------------------------- values


def is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_positive(v: object) -> bool:
    return is_number(v) and v > 0


def same_value(a: object, b: object) -> bool:
    if is_number(a) and is_number(b):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-15)
    return type(a) is type(b) and a == b


_labels: dict[object, str] = {}


def value_label(v: object) -> str:
    """A value as the model names it: 50 and 50.0 are the same value (a key says `=50`
    where the edit writes 50.0 into a float setting)."""
    key = (type(v), v)
    try:
        return _labels[key]
    except (KeyError, TypeError):
        pass
    try:
        out = format_value(float(v) if is_number(v) else v)
    except ValueError:
        out = repr(v)[:64]
    try:
        if len(_labels) > 50_000:
            _labels.clear()
        _labels[key] = out
    except TypeError:
        pass              # an unhashable value: not remembered
    return out


def first_values(settings: list[Setting], profile: str | None) -> dict[str, object]:
    """Each setting's value (its first occurrence among those the node may edit)."""
    out: dict[str, object] = {}
    for s in for_profile(settings, profile):
        out.setdefault(s.name, s.value)
    return out


def code_values(catalogue: dict[str, Edit]) -> dict[str, object]:
    """The state of the code targets (the MLP activation in use), from their edits."""
    return {e.target: e.old_value for e in catalogue.values()
            if e.target in CODE_TARGETS and e.old_value is not None}


# --------------------------------------------------------------------------- keys

_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,63})(\*|\+|-|=)(.{1,64})$")


def parse_key(key: object) -> list[tuple[str, str, object]] | None:
    """`MATRIX_LR*0.7&QK_NORM=False` -> [("MATRIX_LR", "*", 0.7), ("QK_NORM", "=", False)];
    `DEPTH-1` -> [("DEPTH", "+", -1)]. None for a key this agent cannot read (another
    agent's, garbage), or one that names a setting twice."""
    if not isinstance(key, str) or not key or len(key) > 400:
        return None
    out = []
    for part in stack_parts(key):
        m = _PART.match(part)
        if not m:
            return None
        target, op, rest = m.groups()
        if op == "=":
            try:
                value = ast.literal_eval(rest)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                if not re.fullmatch(r"[A-Za-z0-9_.-]+", rest):
                    return None
                value = rest               # a code edit: activation=gelu
            if not isinstance(value, (int, float, str, bool, tuple, type(None))):
                return None
            out.append((target, "=", value))
            continue
        try:
            x = float(rest) if op == "*" else int(rest)
        except ValueError:
            return None
        if op == "*" and not (math.isfinite(x) and x > 0):
            return None
        out.append((target, "+", -x if op == "-" else x) if op != "*" else (target, "*", x))
    if len({t for t, _, _ in out}) != len(out):
        return None
    return out


def applied_value(op: str, x: object, old: object) -> object:
    """The value a key part gives a setting that had `old`; None if it cannot apply."""
    if op == "=":
        return x
    if op == "*":
        if not is_positive(old):
            return None
        new = old * x
        return max(1, int(round(new))) if isinstance(old, int) else new
    if isinstance(old, int) and not isinstance(old, bool):
        return old + x
    return None

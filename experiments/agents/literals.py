"""train.py's settings as literal values: where each one is in the source, and how to
write a new value in its place.

A setting is an UPPER_CASE constant `NAME = literal  # comment`, or an entry of a
per-profile dict (`PROFILES = {"cpu": dict(DEPTH=4, ...)}`); a flat dict is a data table,
not a knob. Only the literal text of a value is rewritten, so the comment on the line and
everything else stay as they were. The catalogue (catalogue.py) builds its edits on this,
and the synthetic landscape (experiments/simulation/synthetic.py) reads settings with it.
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

# ---------------------------------------------------------------------------
# Locating settings: spans of literal values in the source.

_NOT_LITERAL = object()
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONSTANT_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_MAX_DICT_DEPTH = 3


@dataclass(frozen=True)
class Setting:
    """One literal value in train.py: a module constant or a (per-profile) dict entry."""
    name: str                 # upper-cased: DEPTH for `DEPTH = 4` and for `"depth": 4`
    scope: tuple[str, ...]    # () at module level, ("PROFILES", "cpu") inside a nested dict
    value: object             # the evaluated literal
    start: int                # character offsets of the value expression in the source
    end: int
    text: str                 # the value's source text


def literal_value(node: ast.AST) -> object:
    """The value of a small literal expression (numbers, strings, bools, None, tuples,
    2**19 or 64 * 2048 style arithmetic), or _NOT_LITERAL."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool,
                                                                   type(None))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = literal_value(node.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
        return _NOT_LITERAL
    if isinstance(node, ast.BinOp):
        a, b = literal_value(node.left), literal_value(node.right)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
            return _NOT_LITERAL
        try:
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(node.op, ast.Div):
                return a / b
            if isinstance(node.op, ast.FloorDiv):
                return a // b
            if isinstance(node.op, ast.Pow) and abs(b) <= 64 and abs(a) <= 1e6:
                return a ** b
        except (ZeroDivisionError, OverflowError):
            return _NOT_LITERAL
        return _NOT_LITERAL
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [literal_value(e) for e in node.elts]
        if any(i is _NOT_LITERAL for i in items) or len(items) > 16:
            return _NOT_LITERAL
        return tuple(items)
    return _NOT_LITERAL


class _Offsets:
    """Converts ast's (line, UTF-8 byte column) positions to character offsets."""

    def __init__(self, source: str):
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def __call__(self, lineno: int, col_bytes: int) -> int:
        line = self.lines[lineno - 1] if lineno - 1 < len(self.lines) else ""
        return self.starts[lineno - 1] + len(line.encode("utf-8")[:col_bytes].decode(
            "utf-8", errors="ignore"))


def _dict_items(node: ast.AST):
    """(key, value node) pairs of a dict literal or a dict(...) call with str keys."""
    if isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values):
            if isinstance(k, ast.Constant) and isinstance(k.value, str):
                yield k.value, v
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
          and node.func.id == "dict" and not node.args):
        for kw in node.keywords:
            if kw.arg is not None:
                yield kw.arg, kw.value


def _is_dict(node: ast.AST) -> bool:
    return isinstance(node, ast.Dict) or (isinstance(node, ast.Call)
                                          and isinstance(node.func, ast.Name)
                                          and node.func.id == "dict")


_last_parse: tuple[str | None, ast.Module | None] = (None, None)


def parse_source(source: str) -> ast.Module | None:
    """ast.parse, or None if it does not parse. The last tree is kept: the catalogue reads
    the same source several times in a row (read-only use of the tree)."""
    global _last_parse
    if _last_parse[0] == source:
        return _last_parse[1]
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError, TypeError):
        tree = None
    _last_parse = (source, tree)
    return tree


def locate_settings(source: str, tree: ast.Module | None = None) -> list[Setting] | None:
    """Every literal setting of a train.py source, in source order; None if it does not parse."""
    if tree is None:
        tree = parse_source(source)
        if tree is None:
            return None
    offset = _Offsets(source)
    found: list[Setting] = []

    def add(name: str, scope: tuple[str, ...], node: ast.AST) -> None:
        value = literal_value(node)
        if value is _NOT_LITERAL or getattr(node, "end_lineno", None) is None:
            return
        start = offset(node.lineno, node.col_offset)
        end = offset(node.end_lineno, node.end_col_offset)
        found.append(Setting(name.upper(), scope, value, start, end, source[start:end]))

    def entry(key: str, scope: tuple[str, ...], node: ast.AST, depth: int) -> None:
        """A dict entry: a nested dict (a profile) or a setting named by its key."""
        if _is_dict(node):
            if depth < _MAX_DICT_DEPTH:
                for k, v in _dict_items(node):
                    entry(k, scope + (key,), v, depth + 1)
        elif _NAME_RE.match(key):
            add(key, scope, node)

    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = stmt.target, stmt.value
        else:
            continue
        if not (isinstance(target, ast.Name) and _CONSTANT_RE.match(target.id)):
            continue
        if _is_dict(value):
            # Only a dict of dicts holds settings (PROFILES = {"cpu": dict(DEPTH=4, ...)});
            # a flat dict is a data table (peak flops by GPU name), not a knob.
            for key, v in _dict_items(value):
                if _is_dict(v):
                    entry(key, (target.id,), v, 1)
        else:
            add(target.id, (), value)
    return found


# ---------------------------------------------------------------------------
# Writing values back as literals.

def format_value(value: object, like: str = "") -> str:
    """A Python literal for `value`, in the style of the text it replaces (`like`)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        m = re.fullmatch(r"\s*2\s*\*\*\s*\d+\s*", like)
        if m and value > 0 and value & (value - 1) == 0:
            return f"2**{value.bit_length() - 1}"
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return repr(float(f"{value:.4g}"))     # 0.014, 1e-08, 10000.0
    if isinstance(value, str):
        quote = "'" if like.lstrip()[:1] == "'" and '"' in value else '"'
        body = value.replace("\\", "\\\\").replace(quote, "\\" + quote)
        return quote + body + quote
    if isinstance(value, tuple):
        inner = ", ".join(format_value(v) for v in value)
        open_, close = ("[", "]") if like.lstrip().startswith("[") else ("(", ")")
        return open_ + inner + ("," if len(value) == 1 and open_ == "(" else "") + close
    raise ValueError(f"cannot write {type(value).__name__} as a literal")


def _keep_comment_column(source: str, start: int, end: int, new: str) -> str:
    """Replace source[start:end] by `new`, keeping an inline comment where it was."""
    line_end = source.find("\n", end)
    line_end = len(source) if line_end < 0 else line_end
    rest = source[end:line_end]
    m = re.match(r"( +)#", rest)
    if m and "\n" not in source[start:end]:
        pad = max(min(2, len(m.group(1))), len(m.group(1)) - (len(new) - (end - start)))
        return source[:start] + new + " " * pad + rest[len(m.group(1)):] + source[line_end:]
    return source[:start] + new + source[end:]


def splice(source: str, changes: list[tuple[Setting, str]]) -> str:
    """Write new value texts into the source, last span first so offsets stay valid."""
    for setting, text in sorted(changes, key=lambda c: c[0].start, reverse=True):
        source = _keep_comment_column(source, setting.start, setting.end, text)
    return source

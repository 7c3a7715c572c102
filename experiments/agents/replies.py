"""Reading an LLM's reply: the new train.py and a one-line description.

Models answer in many shapes; all of these are understood:

- the whole file in a fenced block (```python ... ```, or ~~~), the brief's requested form;
- the whole file bare, with no fence;
- a unified diff (fenced as diff/patch or bare), applied exactly with swarm.patch.apply_patch,
  and, when a model got the hunk line numbers wrong, by finding each hunk's old lines in the
  parent instead (they must occur exactly once);
- `<think>...</think>` reasoning before the answer is skipped.

The description is a `DESCRIPTION: ...` line outside the code if there is one, else the first
line of prose. Anything that is not a whole train.py (a fragment, a diff of another file)
gives a failure with its reason; the shared checks (parses, differs, static check) come after,
in base.validate_proposal.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

_FENCE = re.compile(r"^(?P<fence>```+|~~~+)[ \t]*(?P<lang>[\w+.-]*)[^\n]*\n(?P<body>.*?)"
                    r"^(?P=fence)[ \t]*$", re.S | re.M)
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_DESC = re.compile(r"^[\s>*_#-]*DESCRIPTION[*_]*\s*:[*_]*\s*(?P<text>.+)$", re.I | re.M)
_DIFF_START = re.compile(r"^(--- |\+\+\+ |@@ |diff --git )", re.M)
_MIN_SHARE = 0.3                 # a reply under 30% of the parent's size is a fragment


@dataclass
class ParsedReply:
    source: str | None
    desc: str
    failure: str | None = None


def _looks_like_diff(text: str) -> bool:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return False
    has_hunk = any(ln.startswith("@@") for ln in lines)
    headed = lines[0].startswith(("--- ", "diff --git ", "Index: ", "+++ "))
    return has_hunk and (headed or lines[0].startswith("@@"))


def _diff_paths_ok(diff: str) -> str | None:
    """A reason if the diff names any file other than train.py."""
    for m in re.finditer(r"^(?:---|\+\+\+) (\S+)", diff, re.M):
        path = m.group(1)
        if path != "/dev/null" and not re.fullmatch(r"(?:[ab]/)?(?:genome/)?train\.py", path):
            return f"the diff changes {path[:80]}, not train.py"
    return None


def _apply_leniently(parent: str, diff: str) -> str | None:
    """Apply hunks by content: each hunk's old lines (context and removed) must occur once
    in the parent after the previous hunk. Hunk headers' numbers and counts are ignored."""
    hunks: list[list[tuple[str, str]]] = []
    for line in diff.split("\n"):
        if line.startswith("@@"):
            hunks.append([])
        elif not hunks or line.startswith(("--- ", "+++ ", "diff --git", "index ", "\\ ")):
            continue
        elif line[:1] in (" ", "-", "+"):
            hunks[-1].append((line[0], line[1:]))
        elif line == "":
            hunks[-1].append((" ", ""))
        else:
            return None
    if not hunks:
        return None
    lines = parent.split("\n")
    out: list[str] = []
    pos = 0
    for hunk in hunks:
        while hunk and hunk[-1] == (" ", ""):    # trailing blank lines a model added
            hunk.pop()
        old = [t for tag, t in hunk if tag != "+"]
        new = [t for tag, t in hunk if tag != "-"]
        if not old:
            return None                          # pure insertion with no anchor: ambiguous
        stripped = [ln.rstrip() for ln in lines]
        want = [ln.rstrip() for ln in old]
        hits = [i for i in range(pos, len(lines) - len(old) + 1)
                if stripped[i:i + len(old)] == want]
        if len(hits) != 1:
            return None
        start = hits[0]
        out += lines[pos:start] + new
        pos = start + len(old)
    return "\n".join(out + lines[pos:])


def _apply_diff(parent: str, diff: str) -> tuple[str | None, str | None]:
    """(new source, None) or (None, reason)."""
    bad_path = _diff_paths_ok(diff)
    if bad_path:
        return None, bad_path
    try:
        from swarm.patch import PatchError, apply_patch
    except ImportError:
        PatchError, apply_patch = ValueError, None
    text = diff if diff.endswith("\n") else diff + "\n"
    if apply_patch is not None and text.lstrip().startswith(("--- ", "diff --git")):
        try:
            return apply_patch(parent, text.lstrip()), None
        except PatchError:
            pass
    new = _apply_leniently(parent, diff)
    if new is None:
        return None, "the diff does not apply to the parent train.py"
    return new, None


def _whole_file(parent: str, code: str) -> str | None:
    """A reason if `code` is not a whole train.py (a fragment or not Python)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None      # validate_proposal reports the syntax error precisely
    if len(code) < _MIN_SHARE * len(parent):
        return "the reply holds a fragment, not the whole train.py"
    try:
        parent_defs = {n.name for n in ast.parse(parent).body
                       if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    defs = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    if "build_model" in parent_defs and "build_model" not in defs:
        return "the reply's train.py lacks build_model()"
    return None


def _prose_description(text: str) -> str:
    for line in text.splitlines():
        line = line.strip().strip("#>*_ -").strip()
        if line and not line.startswith(("```", "~~~")):
            return line
    return ""


def parse_reply(reply: str, parent: str) -> ParsedReply:
    """The new train.py and its description from an LLM reply (see the module docstring)."""
    if not isinstance(reply, str) or not reply.strip():
        return ParsedReply(None, "", "empty reply")
    text = _THINK.sub("", reply).replace("\r\n", "\n")
    blocks = [(m.group("lang").lower(), m.group("body")) for m in _FENCE.finditer(text)]
    prose = _FENCE.sub("", text)
    m = _DESC.search(prose)
    desc = m.group("text").strip().strip("*_`").strip() if m else _prose_description(prose)

    diffs = [b for lang, b in blocks if lang in ("diff", "patch") or _looks_like_diff(b)]
    code = [b for lang, b in blocks if lang in ("python", "py", "python3", "")
            and not _looks_like_diff(b)]
    if code:
        best = max(code, key=len)
        why = _whole_file(parent, best)
        if why is None:
            return ParsedReply(best, desc)
        if not diffs:
            return ParsedReply(None, desc, why)
    if diffs:
        new, why = _apply_diff(parent, max(diffs, key=len))
        return ParsedReply(new, desc, why)
    if blocks:
        return ParsedReply(None, desc, "the reply holds no Python code block")
    # No fences: the reply is the file itself, a bare diff, or nothing usable.
    if _DIFF_START.search(text) and _looks_like_diff(text[_DIFF_START.search(text).start():]):
        new, why = _apply_diff(parent, text[_DIFF_START.search(text).start():])
        return ParsedReply(new, desc, why)
    body = _DESC.sub("", text).strip("\n")
    try:
        ast.parse(body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ParsedReply(None, desc, "the reply holds no train.py (no code block, no diff)")
    why = _whole_file(parent, body)
    return ParsedReply(None if why else body + "\n", desc if m else "", why)

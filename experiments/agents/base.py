"""What every proposer shares: the Agent protocol, its inputs and output, and the checks.

An agent gets the parent's train.py, the brief (genome/program.md + genome/topics/<topic>.md)
and what was already tried, and returns a Proposal: a new train.py and a one-line description,
or a failure with its reason. Agents never raise for bad agent output (an LLM that answers
nonsense, a CLI agent that hangs): `validate_proposal` turns anything unusable into a failed
proposal, and the research loop goes on.
"""
from __future__ import annotations

import ast
import hashlib
import random
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

MAX_DESC_CHARS = 500            # PROTOCOL.md: desc at most 500 chars
MAX_SOURCE_BYTES = 1 << 20      # a first cut; static_check applies the real size limit
STATUSES = ("kept", "discarded", "crash", "rejected", "timeout")
GENOME_DIR = Path(__file__).resolve().parents[2] / "genome"


@dataclass
class Brief:
    topic: str
    text: str                   # genome/program.md + genome/topics/<topic>.md


@dataclass
class Tried:
    edit_key: str | None        # catalogue key when a catalogue agent made it, else None
    desc: str
    parent_id: str
    status: str                 # kept | discarded | crash | rejected | timeout | running
    delta: float | None         # child val_bpb - parent val_bpb (negative is better)
    # Where the history knows them (ResearchLoop's does): the record's own id (hex), which
    # is the parent_id of the records built on it, and its measured val_bpb. Agents that
    # model settings -> val_bpb (the Optuna agents) follow lineages and read absolute scores
    # with them; agents that only read deltas ignore them.
    record_id: str | None = None
    val_bpb: float | None = None


@dataclass
class Proposal:
    source: str | None
    desc: str
    edit_key: str | None = None
    failure: str | None = None  # set: a failed proposal, and this is why
    exhausted: bool = False     # a failure that says: nothing left to try on this parent
                                # (until the history changes); the loop moves on, no retry

    @property
    def ok(self) -> bool:
        return self.failure is None and self.source is not None


class Agent(Protocol):
    name: str

    def propose(self, parent_source: str, brief: Brief, history: list[Tried], *,
                parent_id: str, rng: random.Random) -> Proposal: ...


def failed(reason: str, desc: str = "", edit_key: str | None = None,
           exhausted: bool = False) -> Proposal:
    return Proposal(None, clean_line(desc), edit_key, clean_line(reason) or "failed",
                    exhausted=bool(exhausted))


def exhausted(reason: str) -> Proposal:
    """The failure an agent returns when it has nothing left to propose on this parent."""
    return failed(reason, exhausted=True)


# ---------------------------------------------------------------------------
# Briefs.

def load_brief(topic: str, genome_dir: Path | str | None = None) -> Brief:
    """The brief genome.program_brief builds: program.md plus the topic's file (a topic
    without a file gets the standing brief and a line naming it). ValueError for a
    malformed topic name."""
    from genome import program_brief
    return Brief(topic, program_brief(topic, genome_dir))


# ---------------------------------------------------------------------------
# Checks shared by every agent.

def clean_line(text: object, limit: int = MAX_DESC_CHARS) -> str:
    """One printable line of at most `limit` characters (untrusted text from agents/peers)."""
    if not isinstance(text, str):
        return ""
    chars = (" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)
    line = " ".join("".join(chars).split())
    if len(line) > limit:
        line = line[:limit - 3].rstrip() + "..."
    return line


def static_screen(source: str) -> tuple[bool, str]:
    """experiments.run.static_check when it is installed; the harness runs it again regardless."""
    try:
        from experiments.run.static_check import check_source
    except ImportError:
        return True, ""
    try:
        ok, reason = check_source(source)
    except Exception as exc:   # a checker bug must not take the loop down: fail closed
        return False, f"static check error: {type(exc).__name__}"
    return bool(ok), str(reason or "")


def _code_part(line: str) -> str:
    """A line without its comment and spaces (roughly: a '#' inside quotes keeps the line)."""
    if "'" not in line and '"' not in line:
        line = line.split("#", 1)[0]
    return "".join(line.split())


def _maybe_cosmetic(old: str, new: str) -> bool:
    """Cheap gate before the exact AST comparison: could the change be comments/layout only?"""
    old_lines, new_lines = old.splitlines(), new.splitlines()
    removed = set(old_lines) - set(new_lines)
    added = set(new_lines) - set(old_lines)
    return ({_code_part(ln) for ln in removed} - {""}) == ({_code_part(ln) for ln in added}
                                                           - {""})


def usable_source(parent_source: str, proposal: Proposal) -> tuple[str | None, str]:
    """The proposal's train.py with CRLF line ends made LF, if it passes the cheap checks
    (present, not too large, no control characters, not the parent's); else (None, why).
    The first half of `validate_proposal`, for callers that look before the costly half."""
    src = proposal.source
    if not isinstance(src, str) or not src.strip():
        return None, "agent returned no train.py"
    if len(src.encode("utf-8", errors="replace")) > MAX_SOURCE_BYTES:
        return None, "train.py is too large"
    if any(unicodedata.category(c) == "Cc" and c not in "\t\n\r\f" for c in src):
        return None, "garbage: control characters in train.py"
    src = src.replace("\r\n", "\n")
    if src == parent_source or src.rstrip("\n") == parent_source.rstrip("\n"):
        return None, "identical to the parent: no change"
    return src, ""


def validate_proposal(parent_source: str, proposal: object, *, screen: bool = True) -> Proposal:
    """The proposal if it is a usable new train.py, else a failed proposal saying why.

    `screen=False` skips the static AST screen: only for callers that know the verdict is
    the parent's (the catalogue rewrites literal values, nothing the screen looks at)."""
    if not isinstance(proposal, Proposal):
        return failed("agent returned nothing")
    desc = clean_line(proposal.desc)
    key = proposal.edit_key if isinstance(proposal.edit_key, str) else None
    key = clean_line(key, 200) or None
    if proposal.failure is not None:
        return failed(str(proposal.failure), desc, key, proposal.exhausted is True)
    src, why_not = usable_source(parent_source, proposal)
    if src is None:
        return failed(why_not, desc, key)
    try:
        tree = ast.parse(src)
    except SyntaxError as exc:
        return failed(f"does not parse: line {exc.lineno}: {exc.msg}", desc, key)
    except (ValueError, RecursionError, MemoryError) as exc:
        return failed(f"does not parse: {type(exc).__name__}", desc, key)
    if _maybe_cosmetic(parent_source, src):
        try:
            if ast.dump(tree) == ast.dump(ast.parse(parent_source)):
                return failed("only comments or layout changed", desc, key)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            pass
    ok, reason = static_screen(src) if screen else (True, "")
    if not ok:
        return failed(f"static check: {reason or 'rejected'}", desc, key)
    return Proposal(src, desc or "(no description)", key)


_screened: dict[str, bool] = {}


def validate_catalogue_edit(parent_source: str, proposal: Proposal) -> Proposal:
    """validate_proposal, screening the parent once instead of every child: catalogue edits
    only rewrite literal values (or swap one activation call), which the static screen does
    not look at, so a child passes exactly when its parent does."""
    digest = hashlib.sha256(parent_source.encode("utf-8", "replace")).hexdigest()
    if digest not in _screened:
        if len(_screened) > 1024:
            _screened.clear()
        _screened[digest] = static_screen(parent_source)[0]
    return validate_proposal(parent_source, proposal, screen=not _screened[digest])


def usable_history(history: object) -> list[Tried]:
    """History entries an agent can read: a Tried with a parent id and a key (or none)."""
    if not isinstance(history, (list, tuple)):
        return []
    return [t for t in history if isinstance(t, Tried) and isinstance(t.parent_id, str)
            and (t.edit_key is None or isinstance(t.edit_key, str))]


# ---------------------------------------------------------------------------
# History digest for LLM agents.

def _fmt_delta(delta: float | None) -> str:
    return "   n/a " if delta is None else f"{delta:+.4f}"


def history_digest(history: list[Tried], limit: int = 40) -> str:
    """A compact text digest: kept / discarded / failed edits with their deltas.

    Kept edits first (best first), then near misses, then failures; descriptions come from
    peers, so each is cut to one short line."""
    if not history:
        return "Nothing has been tried yet in this topic: you are first.\n"
    groups = {"kept": [], "discarded": [], "failed": [], "running": []}
    for t in history:
        if not isinstance(t, Tried):
            continue
        group = t.status if t.status in ("kept", "discarded", "running") else "failed"
        groups[group].append(t)
    for g in ("kept", "discarded"):
        groups[g].sort(key=lambda t: (t.delta is None, t.delta if t.delta is not None else 0))
    per = max(1, limit // 3)
    lines = ["What was already tried (delta = child val_bpb - parent val_bpb; negative is "
             "better):"]
    titles = {"kept": "Kept (improved on the parent)",
              "discarded": "Discarded (no clear gain)",
              "failed": "Failed (crash / timeout / rejected)",
              "running": "Being tried right now by other nodes (pick something else)"}
    for g in ("kept", "discarded", "failed", "running"):
        items = groups[g]
        if not items:
            continue
        lines.append(f"\n{titles[g]}: {len(items)}")
        shown = items[:per] if g != "failed" else items[-per:]
        for t in shown:
            tag = t.status if g in ("failed", "running") else _fmt_delta(t.delta)
            key = f" [{clean_line(t.edit_key, 60)}]" if t.edit_key else ""
            lines.append(f"  {tag:>8}{key} {clean_line(t.desc, 120)}")
        if len(items) > len(shown):
            lines.append(f"  ... and {len(items) - len(shown)} more")
    return "\n".join(lines) + "\n"

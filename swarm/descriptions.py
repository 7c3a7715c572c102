"""The text conventions peers read meaning from: one writer and one reader for each.

Free text carries meaning in three places: an experiment's `desc`, its result's
`reason`, and an announce's `working_on`. Every node must write and read these the
same way, so each convention has its home here and nowhere else
(docs/PROTOCOL.md states them for other implementations):

- `baseline seed=N`: a run of the unchanged genome with seed N.
- `[key] text`: an edit with a key (the catalogue's, `MATRIX_LR*2`); a stack of
  edits joins its keys with `&` (`EMBED_LR*2&DEPTH+1`).
- `verify <16 hex>: text`: a re-run of the claim whose id starts with those digits.
- `port of <64 hex> from <arena>: text`: another arena's edit tried in this one.
- `merge <8 hex> into <8 hex>: text`, `merge of <64 hex> (a claim) into <8 hex>: text`:
  a three-way merge of a sibling's edit.
- `interrupted: ...` (a result's reason): a run a kill cut short; it measured nothing.
- `<parent hex> [#<program digest>] <desc>` (an announce's `working_on`): what a
  node runs now.

Readers take any text, hostile included, and return None rather than raise. Pure
functions of strings: no store, no network, nothing of experiments/.
"""
from __future__ import annotations

import re
from typing import Iterable

# --------------------------------------------------------------------------- baselines

BASELINE_RE = re.compile(r"baseline seed=(\d+)")     # the whole description


def baseline_desc(seed: int) -> str:
    """`baseline seed=N`: the description of a run of the unchanged genome."""
    return f"baseline seed={seed}"


def baseline_seed(desc: str | None) -> int | None:
    """The seed N of a `baseline seed=N` description, else None."""
    m = BASELINE_RE.fullmatch(desc or "")
    if m is None:
        return None
    try:
        return int(m.group(1))
    except ValueError:   # more digits than Python converts: no record holds that many
        return None


# --------------------------------------------------------------------------- edit keys

MAX_EDIT_KEY_CHARS = 80
EDIT_KEY_RE = re.compile(rf"^\[([^\]]{{1,{MAX_EDIT_KEY_CHARS}}})\]")
STACK_SEPARATOR = "&"


def edit_desc(key: str, text: str) -> str:
    """`[key] text`: the key travels in the record's description, so that every peer's
    agent learns from the edit (`edit_key_of` reads it back)."""
    return f"[{key}] {text}"


def edit_key_of(desc: str | None) -> str | None:
    """The key of a `[key] text` description (1 to MAX_EDIT_KEY_CHARS characters, no
    `]`), else None."""
    m = EDIT_KEY_RE.match(desc or "")
    return m.group(1) if m else None


def stack_key(keys: Iterable[str]) -> str:
    """The key of a stack of edits, in the order given: `A*2&B+1`."""
    return STACK_SEPARATOR.join(keys)


def stack_parts(key: str) -> list[str]:
    """The keys a stack's key joins (one for a single edit)."""
    return key.split(STACK_SEPARATOR)


def is_stack(key: str) -> bool:
    """Whether a key names a stack of several edits."""
    return STACK_SEPARATOR in key


# --------------------------------------------------------------------------- re-runs

VERIFY_RE = re.compile(r"^verify ([0-9a-f]{16}): ")


def verify_desc(claim_id: bytes, claim_desc: str) -> str:
    """`verify <claim id prefix>: <claim's description>`: what a re-run is announced as."""
    return f"verify {claim_id.hex()[:16]}: {claim_desc}"


def verify_target(desc: str | None) -> str | None:
    """The claim id prefix (16 hex) of a `verify <prefix>: ...` description, else None."""
    m = VERIFY_RE.match(desc or "")
    return m.group(1) if m else None


# --------------------------------------------------------------------------- crossovers

# searched anywhere in a description: a merge that carries a port carries its original
PORT_RE = re.compile(r"\bport of ([0-9a-f]{64})\b")


def port_desc(donor_id: bytes, arena: str, donor_desc: str) -> str:
    """`port of <donor id> from <its arena>: <its description>`."""
    return f"port of {donor_id.hex()} from {arena}: {donor_desc}"


def ported_id(desc: str | None) -> bytes | None:
    """The id of the original a description says it ports, else None."""
    m = PORT_RE.search(desc or "")
    return bytes.fromhex(m.group(1)) if m else None


def merge_desc(parent_id: bytes, donor_id: bytes, donor_desc: str, verified: bool) -> str:
    """A verified donor is the merge's second parent, named by a short prefix; a donor
    that is only a claim is no parent, so its whole id is named here."""
    if verified:
        return f"merge {donor_id.hex()[:8]} into {parent_id.hex()[:8]}: {donor_desc}"
    return f"merge of {donor_id.hex()} (a claim) into {parent_id.hex()[:8]}: {donor_desc}"


# --------------------------------------------------------------------------- interrupted runs

INTERRUPTED_REASON = "interrupted: the node stopped during this run"


def is_interrupted(reason: str | None) -> bool:
    """Whether a result's reason says a kill cut the run short (it measured nothing)."""
    return (reason or "").startswith("interrupted")


# --------------------------------------------------------------------------- working_on

WORKING_ON_RE = re.compile(r"^([0-9a-f]{64}) (?:#([0-9a-f]{16}) )?(.*)$", re.S)
MAX_WORKING_ON = 1000


def working_on(parent_id: bytes, desc: str, program: str | None = None) -> str:
    """What an announce says a node is running: `<parent hex> <description>`, or, for an
    edit, `<parent hex> #<program digest> <description>` so that nodes on other parents
    can tell when they are about to run the same program."""
    tag = f"#{program} " if program else ""
    return f"{parent_id.hex()} {tag}{desc}"[:MAX_WORKING_ON]


def parse_working_on(text: str | None) -> tuple[bytes, str] | None:
    """(parent, description) of an announce's `working_on`; None if it is not ours."""
    m = WORKING_ON_RE.match(text or "")
    return (bytes.fromhex(m.group(1)), m.group(3)) if m else None


def announced_program(text: str | None) -> str | None:
    """The program digest an announce's `working_on` carries, if any."""
    m = WORKING_ON_RE.match(text or "")
    return m.group(2) if m else None

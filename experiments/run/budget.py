"""Training budgets and arena strings.

A budget is either wall-clock training seconds (`time:300`, autoresearch's rule: it
rewards faster code) or training tokens (`tokens:300000`: hardware independent and
exactly reproducible on CPU with a fixed seed). Users write budgets the short way:

    parse_budget("60s")      -> Budget("time", 60)
    parse_budget("1.5m")     -> Budget("time", 90)
    parse_budget("300ktok")  -> Budget("tokens", 300000)
    parse_budget("2Mtok")    -> Budget("tokens", 2000000)
    str(Budget("time", 60))  -> "time:60"    (the arena part; parse_budget accepts it too)

The *arena* of a result is `<dataset>/<budget>/<hardware class>`, e.g.
`embedded/tokens:300000/cpu`; scores are only compared inside one arena. Arena strings
come from peers, so `parse_arena` validates every part and raises ValueError otherwise.

A downloaded dataset's part carries the digest of the data a node prepared
(`genome.prepare.data_digest`: tokenizer, train, val and test token files), e.g.
`climbmix.0123456789abcdef/time:300/nvidia-h100-80gb`: nodes whose mirrors served other
bytes never compare scores. The embedded corpus is pinned by SHA256SUMS in the repository
(and so by the genome id), so its arenas carry no digest. The hardware part is
`experiments.run.hardware.arena_class`: per card for time budgets, shared for token budgets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

BUDGET_KINDS = ("time", "tokens")
# Bounds keep arena strings short and budgets meaningful: 1 s .. 1 day, 1 .. 10^12 tokens.
MAX_SECONDS = 86_400
MAX_TOKENS = 10**12
DEFAULT_BUDGETS = {"cuda": "300s", "mps": "300s", "cpu": "300ktok"}

_MAX_TEXT = 32  # longer budget text is rejected before any parsing
_SHORT = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]+)")
_CANONICAL = re.compile(r"(time|tokens):([1-9]\d{0,12})")  # no leading zeros: one spelling
_TIME_UNITS = {"s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60, "h": 3600}
_TOKEN_UNITS = {"tok": 1, "ktok": 10**3, "mtok": 10**6, "gtok": 10**9}
# Dataset names and hardware classes: lowercase slugs (they appear in gossip topics' arenas).
_SLUG = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_DATA_DIGEST = re.compile(r"[0-9a-f]{16}")  # genome.prepare.DATA_DIGEST_CHARS hex chars


@dataclass(frozen=True)
class Budget:
    """`kind` is "time" (value in whole seconds) or "tokens" (value in tokens)."""

    kind: str
    value: int

    def __post_init__(self):
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"budget kind must be 'time' or 'tokens', not {self.kind!r}")
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise ValueError(f"budget value must be an integer, not {self.value!r}")
        limit = MAX_SECONDS if self.kind == "time" else MAX_TOKENS
        if not 1 <= self.value <= limit:
            unit = "seconds" if self.kind == "time" else "tokens"
            raise ValueError(f"budget of {self.value} {unit} is outside 1..{limit}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"

    def describe(self) -> str:
        """Human form: '60 s' or '300k tokens'."""
        if self.kind == "time":
            return f"{self.value} s"
        for factor, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
            if self.value % factor == 0:
                return f"{self.value // factor}{suffix} tokens"
        return f"{self.value} tokens"


def parse_budget(text: str) -> Budget:
    """'60s' | '5m' | '1.5m' | '2h' | '300ktok' | '2Mtok' | '300000tok' | 'time:60' | 'tokens:N'."""
    if not isinstance(text, str):
        raise ValueError(f"budget must be a string like '60s' or '300ktok', "
                         f"not {type(text).__name__}")
    raw = text.strip()
    if not raw or len(raw) > _MAX_TEXT:
        raise ValueError(f"budget {text[:_MAX_TEXT]!r} is not like '60s', '5m' or '300ktok'")
    canonical = _CANONICAL.fullmatch(raw)
    if canonical:
        return Budget(canonical.group(1), int(canonical.group(2)))
    short = _SHORT.fullmatch(raw.lower())
    if not short:
        raise ValueError(f"budget {raw!r} is not like '60s', '5m' or '300ktok' "
                         f"(a number, then s/m/h for seconds or tok/ktok/Mtok for tokens)")
    number, unit = short.groups()
    if unit in _TIME_UNITS:
        kind, factor, what = "time", _TIME_UNITS[unit], "seconds"
    elif unit in _TOKEN_UNITS:
        kind, factor, what = "tokens", _TOKEN_UNITS[unit], "tokens"
    else:
        raise ValueError(f"budget {raw!r} has unknown unit {unit!r} "
                         f"(use s, m, h for time or tok, ktok, Mtok for tokens)")
    try:
        amount = Decimal(number) * factor
    except InvalidOperation:  # the regex admits only plain decimals; kept for safety
        raise ValueError(f"budget {raw!r} has an unreadable number") from None
    if amount != amount.to_integral_value():
        raise ValueError(f"budget {raw!r} is {amount} {what}: it must be a whole number")
    return Budget(kind, int(amount))


def default_budget(device: str) -> Budget:
    """300 s on GPUs (autoresearch's rule); 300k tokens on CPU, where wall-clock is too noisy."""
    if device not in DEFAULT_BUDGETS:
        raise ValueError(f"unknown device {device!r}: expected one of {sorted(DEFAULT_BUDGETS)}")
    return parse_budget(DEFAULT_BUDGETS[device])


@dataclass(frozen=True)
class Arena:
    dataset: str  # the whole dataset part, with its data digest if it has one
    budget: Budget
    hardware: str

    def __str__(self) -> str:
        return f"{self.dataset}/{self.budget}/{self.hardware}"

    @property
    def dataset_name(self) -> str:
        """'climbmix' for 'climbmix.0123456789abcdef'; the dataset part itself otherwise."""
        return self.dataset[:-17] if self.data_digest else self.dataset

    @property
    def data_digest(self) -> str | None:
        """The digest of the data the scores were measured on, for downloaded datasets."""
        name, dot, digest = self.dataset.rpartition(".")
        return digest if dot and name and _DATA_DIGEST.fullmatch(digest) else None


def _check_slug(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SLUG.fullmatch(value):
        raise ValueError(f"{what} {str(value)[:80]!r} must be 1-64 chars of a-z 0-9 . _ - "
                         f"starting with a letter or digit")
    return value


def make_arena(dataset: str, budget: Budget | str, hw_class: str,
               data_digest: str | None = None) -> str:
    """'embedded', Budget('tokens', 300000), 'cpu' -> 'embedded/tokens:300000/cpu';
    'climbmix', '5m', 'nvidia-h100-80gb', '0123456789abcdef' ->
    'climbmix.0123456789abcdef/time:300/nvidia-h100-80gb'."""
    if isinstance(budget, str):
        budget = parse_budget(budget)
    if not isinstance(budget, Budget):
        raise ValueError(f"budget must be a Budget or a budget string, not {type(budget).__name__}")
    _check_slug(dataset, "dataset")
    if data_digest is not None:
        if not isinstance(data_digest, str) or not _DATA_DIGEST.fullmatch(data_digest):
            raise ValueError(f"data digest {str(data_digest)[:40]!r} must be 16 hex chars")
        if "." in dataset:
            raise ValueError(f"dataset {dataset!r} already has a '.' (a digest?)")
        dataset = f"{dataset}.{data_digest}"
    arena = Arena(_check_slug(dataset, "dataset"), budget, _check_slug(hw_class, "hardware class"))
    return str(arena)


def parse_arena(text: str) -> Arena:
    """The inverse of make_arena; raises ValueError on anything that is not exactly an arena."""
    if not isinstance(text, str) or len(text) > 200:
        raise ValueError("arena must be a string of at most 200 chars")
    parts = text.split("/")
    if len(parts) != 3:
        raise ValueError(f"arena {text[:80]!r} is not <dataset>/<budget>/<hardware class>")
    dataset, budget_text, hardware = parts
    if not _CANONICAL.fullmatch(budget_text):
        raise ValueError(f"arena budget {budget_text[:40]!r} is not 'time:<s>' or 'tokens:<n>'")
    return Arena(_check_slug(dataset, "dataset"), parse_budget(budget_text),
                 _check_slug(hardware, "hardware class"))

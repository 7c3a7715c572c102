"""Budgets and arena strings: every accepted spelling, and clear errors on everything else."""
import pytest
from hypothesis import given, strategies as st

from experiments.run.budget import (Arena, Budget, default_budget, make_arena, parse_arena,
                                parse_budget)


@pytest.mark.parametrize("text, kind, value", [
    ("60s", "time", 60), ("5m", "time", 300), ("1.5m", "time", 90), ("2h", "time", 7200),
    ("90 s", "time", 90), (" 10min ", "time", 600), ("300ktok", "tokens", 300_000),
    ("2Mtok", "tokens", 2_000_000), ("2mtok", "tokens", 2_000_000),
    ("300000tok", "tokens", 300_000),
    ("1.5ktok", "tokens", 1500), ("1Gtok", "tokens", 10**9), ("time:60", "time", 60),
    ("tokens:300000", "tokens", 300_000),
])
def test_parse_budget_forms(text, kind, value):
    assert parse_budget(text) == Budget(kind, value)


def test_budget_str_is_the_arena_part():
    assert str(parse_budget("60s")) == "time:60"
    assert str(parse_budget("300ktok")) == "tokens:300000"
    assert parse_budget(str(parse_budget("2Mtok"))) == Budget("tokens", 2_000_000)


@pytest.mark.parametrize("text, words", [
    ("", "not like"), ("60", "not like"), ("abc", "not like"), ("60x", "unknown unit"),
    ("-5s", "not like"), ("1.5s", "whole number"), ("0.5tok", "whole number"),
    ("0s", "outside"), ("0tok", "outside"), ("2d", "unknown unit"), ("time:0", "not like"),
    ("time:060", "not like"), ("tokens:-1", "not like"), ("1e3tok", "not like"),
    ("100000h", "outside"), ("9" * 40, "not like"), ("nan s", "not like"), ("5 m tok", "not like"),
])
def test_parse_budget_rejects_with_a_clear_message(text, words):
    with pytest.raises(ValueError, match=words):
        parse_budget(text)


@pytest.mark.parametrize("value", [None, 60, 1.5, b"60s", ["60s"]])
def test_parse_budget_rejects_non_strings(value):
    with pytest.raises(ValueError, match="must be a string"):
        parse_budget(value)


def test_budget_validates_itself():
    with pytest.raises(ValueError):
        Budget("steps", 10)
    with pytest.raises(ValueError):
        Budget("time", 1.5)
    with pytest.raises(ValueError):
        Budget("time", True)
    assert Budget("tokens", 300_000).describe() == "300k tokens"
    assert Budget("time", 60).describe() == "60 s"


def test_default_budgets():
    assert default_budget("cpu") == Budget("tokens", 300_000)
    assert default_budget("cuda") == Budget("time", 300)
    assert default_budget("mps") == Budget("time", 300)
    with pytest.raises(ValueError, match="unknown device"):
        default_budget("tpu")


def test_make_and_parse_arena():
    arena = make_arena("embedded", parse_budget("300ktok"), "cpu")
    assert arena == "embedded/tokens:300000/cpu"
    assert make_arena("climbmix", "5m", "nvidia-h100-80gb") == "climbmix/time:300/nvidia-h100-80gb"
    assert parse_arena(arena) == Arena("embedded", Budget("tokens", 300_000), "cpu")
    gpu = "climbmix/time:300/nvidia-h100-80gb"
    assert str(parse_arena(gpu)) == gpu


@pytest.mark.parametrize("text", [
    "", "embedded", "embedded/tokens:300000", "embedded/tokens:300000/cpu/extra",
    "embedded/300ktok/cpu", "Embedded/time:60/cpu", "embedded/time:60/", "/time:60/cpu",
    "emb edded/time:60/cpu", "embedded/time:60/cpu\n", "x" * 300, "../time:60/cpu",
    "embedded/time:0060/cpu",
])
def test_parse_arena_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_arena(text)


def test_make_arena_rejects_bad_parts():
    with pytest.raises(ValueError, match="dataset"):
        make_arena("a/b", "60s", "cpu")
    with pytest.raises(ValueError, match="hardware class"):
        make_arena("embedded", "60s", "CPU 1")
    with pytest.raises(ValueError, match="Budget"):
        make_arena("embedded", 60, "cpu")


@given(st.text(max_size=40))
def test_parse_budget_never_fails_otherwise(text):
    try:
        budget = parse_budget(text)
    except ValueError:
        return
    assert parse_budget(str(budget)) == budget


@given(st.text(max_size=80))
def test_parse_arena_round_trips_or_raises(text):
    try:
        arena = parse_arena(text)
    except ValueError:
        return
    assert str(arena) == text


DIGEST = "0123456789abcdef"


def test_downloaded_data_puts_its_digest_in_the_arena():
    arena = make_arena("climbmix", "5m", "nvidia-h100-80gb", DIGEST)
    assert arena == f"climbmix.{DIGEST}/time:300/nvidia-h100-80gb"
    parsed = parse_arena(arena)
    assert str(parsed) == arena
    assert (parsed.dataset, parsed.dataset_name, parsed.data_digest) == (
        f"climbmix.{DIGEST}", "climbmix", DIGEST)
    plain = parse_arena("embedded/tokens:300000/cpu")  # the embedded corpus: no digest
    assert (plain.dataset_name, plain.data_digest) == ("embedded", None)
    assert make_arena("embedded", "300ktok", "cpu", None) == "embedded/tokens:300000/cpu"
    assert parse_arena("my.data/time:60/cpu").data_digest is None  # a dot alone is no digest
    # the swarm's record validator accepts what make_arena makes
    from swarm.records import ARENA_RE
    assert ARENA_RE.fullmatch(arena) and ARENA_RE.fullmatch(
        make_arena("climbmix", "2Mtok", "cuda-fp16", DIGEST))


@pytest.mark.parametrize("digest", ["0123", DIGEST.upper(), DIGEST + "0", "x" * 16, 12])
def test_make_arena_rejects_bad_digests(digest):
    with pytest.raises(ValueError, match="digest"):
        make_arena("climbmix", "5m", "cuda", digest)


def test_a_digest_is_added_once():
    with pytest.raises(ValueError, match="already has"):
        make_arena(f"climbmix.{DIGEST}", "5m", "cuda", DIGEST)

"""swarm/descriptions.py: each text convention peers read meaning from is written by one
function and read back by one, here and nowhere else; readers take hostile text (over-long,
unicode, one convention dressed as another) without raising or being fooled."""
import re
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from swarm import descriptions as d

REPO = Path(__file__).resolve().parent.parent
PARENT = bytes(range(32))
CLAIM = bytes(range(100, 132))
PROGRAM = "0123456789abcdef"


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("seed", [0, 1, 7, 123_456_789, 2 ** 53 - 1, 10 ** 30])
def test_baseline_seeds_round_trip(seed):
    assert d.baseline_seed(d.baseline_desc(seed)) == seed


@pytest.mark.parametrize("key", ["MATRIX_LR*2", "DEPTH+1", "activation=gelu", 'NAME="a b"',
                                 "EMBED_LR*2&DEPTH+1", "K" * d.MAX_EDIT_KEY_CHARS, "λ*2"])
def test_edit_keys_round_trip(key):
    assert d.edit_key_of(d.edit_desc(key, "what it changes")) == key


def test_stacks_join_and_split_their_keys():
    keys = ["A*2", "B+1", "C=False"]
    assert d.stack_key(keys) == "A*2&B+1&C=False"
    assert d.stack_parts(d.stack_key(keys)) == keys
    assert d.is_stack(d.stack_key(keys)) and not d.is_stack("A*2")
    assert d.stack_parts("A*2") == ["A*2"]


def test_verify_descriptions_name_the_claim_prefix():
    text = d.verify_desc(CLAIM, "[A*2] a")
    assert text == f"verify {CLAIM.hex()[:16]}: [A*2] a"
    assert d.verify_target(text) == CLAIM.hex()[:16]


def test_ports_name_their_original():
    text = d.port_desc(CLAIM, "climbmix/time:300/cpu", "[A*2] a")
    assert text == f"port of {CLAIM.hex()} from climbmix/time:300/cpu: [A*2] a"
    assert d.ported_id(text) == CLAIM


def test_merges_name_their_donor():
    verified = d.merge_desc(PARENT, CLAIM, "[A*2] a", verified=True)
    claim = d.merge_desc(PARENT, CLAIM, "[A*2] a", verified=False)
    assert verified == f"merge {CLAIM.hex()[:8]} into {PARENT.hex()[:8]}: [A*2] a"
    assert claim == f"merge of {CLAIM.hex()} (a claim) into {PARENT.hex()[:8]}: [A*2] a"
    assert d.ported_id(claim) is None and d.edit_key_of(claim) is None


def test_a_merge_of_a_port_carries_its_original():
    inner = d.port_desc(CLAIM, "other/arena", "x")
    assert d.ported_id(d.merge_desc(PARENT, bytes(32), inner, verified=True)) == CLAIM


def test_interrupted_runs_are_told_by_their_reason():
    assert d.is_interrupted(d.INTERRUPTED_REASON)
    for reason in (None, "", "crashed", "timeout: interrupted by the budget"):
        assert not d.is_interrupted(reason)


@pytest.mark.parametrize("program", [None, PROGRAM])
@pytest.mark.parametrize("desc", ["[A*2] a", d.baseline_desc(3), d.verify_desc(CLAIM, "x"),
                                  "ünïcödé ✓ 漢字", "# not a program tag", ""])
def test_working_on_round_trips(desc, program):
    text = d.working_on(PARENT, desc, program)
    assert d.parse_working_on(text) == (PARENT, desc)
    assert d.announced_program(text) == program


# --------------------------------------------------------------------------- hostile text

READERS = (d.baseline_seed, d.edit_key_of, d.verify_target, d.ported_id, d.is_interrupted,
           d.parse_working_on, d.announced_program)


@given(st.text(max_size=2000))
def test_readers_never_raise(text):
    for read in READERS:
        read(text)


@given(st.text(max_size=600).filter(lambda s: not re.match(r"#[0-9a-f]{16} ", s)))
def test_any_description_survives_an_announce(desc):
    assert d.parse_working_on(d.working_on(PARENT, desc)) == (PARENT, desc)
    assert d.parse_working_on(d.working_on(PARENT, desc, PROGRAM)) == (PARENT, desc)


def test_readers_take_none_and_empty_text():
    for read in READERS:
        assert read(None) in (None, False)
        assert read("") in (None, False)


def test_over_long_text_is_refused_not_fatal():
    assert d.baseline_seed("baseline seed=" + "9" * 5000) is None   # past int()'s digit cap
    assert d.edit_key_of("[" + "K" * (d.MAX_EDIT_KEY_CHARS + 1) + "] x") is None
    assert d.verify_target("verify " + "a" * 17 + ": x") is None
    assert d.ported_id("port of " + "a" * 65) is None
    long = d.working_on(PARENT, "x" * 5000, PROGRAM)
    assert len(long) == d.MAX_WORKING_ON
    assert d.parse_working_on(long)[1] == ("x" * 5000)[:d.MAX_WORKING_ON - 65 - 18]


@pytest.mark.parametrize("text", ["baseline seed=", "baseline seed=-1", "baseline seed=1.0",
                                  " baseline seed=1", "baseline seed=1 ", "Baseline seed=1",
                                  "baseline  seed=1", "baseline seed=1\n",
                                  "[A*2] baseline seed=1", "baseline seed=1; [A*2] x",
                                  "verify 0123456789abcdef: baseline seed=1"])
def test_only_a_whole_baseline_description_is_a_baseline(text):
    assert d.baseline_seed(text) is None


def test_a_second_convention_inside_a_description_is_not_read():
    assert d.edit_key_of("[baseline seed=1] x") == "baseline seed=1"
    assert d.baseline_seed("[baseline seed=1] x") is None
    assert d.verify_target("[A*2] verify 0123456789abcdef: x") is None
    assert d.edit_key_of(d.verify_desc(CLAIM, "[A*2] a")) is None
    assert d.verify_target("verify 0123456789ABCDEF: x") is None     # ids are lower-case hex
    assert d.ported_id("support of " + CLAIM.hex()) is None
    assert d.edit_key_of("[A*2] x]") == "A*2" and d.edit_key_of("[A]B] x") == "A"
    assert d.is_interrupted("[A*2] interrupted") is False


def test_announces_that_are_not_ours_parse_to_nothing():
    for text in ("presence only", PARENT.hex(), PARENT.hex().upper() + " x",
                 PARENT.hex()[:-1] + " x", "x " + PARENT.hex() + " y"):
        assert d.parse_working_on(text) is None and d.announced_program(text) is None
    # a program tag must be 16 lower-case hex digits, else it is part of the description
    text = f"{PARENT.hex()} #0123456789ABCDEF x"
    assert d.parse_working_on(text) == (PARENT, "#0123456789ABCDEF x")
    assert d.announced_program(text) is None


# --------------------------------------------------------------------------- one home

# Writers and readers of the conventions outside swarm/descriptions.py: string literals
# that spell a convention, and regexes that parse one.
ELSEWHERE = re.compile("|".join([
    r"""["']\^?baseline seed=""",                  # baseline_desc / baseline_seed
    r"""f["']\[\{[^}]*key\}\]""",                  # edit_desc
    r"""r["']\^\\\[\(""",                          # edit_key_of
    r"""verify \{[^}]*\[:16\]""",                  # verify_desc
    r"""\^verify """,                              # verify_target
    r"""\bport of \{|port of \(\[0-9a-f\]""",     # port_desc / ported_id
    r"""["']merge (of )?\{""",                     # merge_desc
    r"""["']interrupted""",                        # INTERRUPTED_REASON / is_interrupted
    r"""\[0-9a-f\]\{64\}\) """,                    # the working_on regex
    r"""["']&["']""",                              # stack_key / stack_parts / is_stack
]))


def test_every_convention_has_one_home():
    found = []
    for root in ("experiments", "swarm"):
        for path in sorted((REPO / root).rglob("*.py")):
            if path == REPO / "swarm" / "descriptions.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if ELSEWHERE.search(line):
                    found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)

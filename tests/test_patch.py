"""swarm.patch: round trips, strictness against malformed patches, git/patch interop, merge3."""
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.patch import (MergeConflict, PatchError, apply_patch, make_patch, merge3,
                         parse_patch, patch_paths, split_lines)

BASE = "".join(f"line {i}\n" for i in range(1, 21))


def edit(text: str, **changes) -> str:
    """Replace `line N` by a new value (None deletes it)."""
    lines = split_lines(text)
    for key, value in sorted(changes.items(), key=lambda kv: -int(kv[0][1:])):
        n = int(key[1:]) - 1
        if value is None:
            del lines[n]
        else:
            lines[n] = value
    return "".join(lines)


# ---------------------------------------------------------------------------
# making and applying


def test_equal_texts_give_empty_patch_and_empty_patch_is_identity():
    assert make_patch(BASE, BASE) == ""
    assert apply_patch(BASE, "") == BASE


def test_patch_format_matches_diff_conventions():
    new = edit(BASE, l2="two\n", l19="nineteen\nextra\n")
    patch = make_patch(BASE, new)
    assert patch.splitlines()[:3] == ["--- a/train.py", "+++ b/train.py", "@@ -1,5 +1,5 @@"]
    assert "@@ -16,5 +16,6 @@" in patch
    assert " line 1\n-line 2\n+two\n line 3\n" in patch
    assert apply_patch(BASE, patch) == new


@pytest.mark.parametrize("old,new", [
    ("", "a\nb\n"),
    ("a\nb\n", ""),
    ("a\nb", "a\nb\n"),            # add the final newline
    ("a\nb\n", "a\nb"),            # drop it
    ("a\nb", "a\nc"),              # both lack it
    ("x", "y"),
    ("a\r\nb\r\n", "a\r\nc\r\n"),  # \r is content
    ("a\n\n\nb\n", "a\n\nb\n"),
    ("a\x0cb\n\u2028c\n", "a\x0cb\n\u2028d\n"),  # only \n splits lines
    (BASE, "new first\n" + BASE),
    (BASE, BASE + "new last\n"),
    (BASE, BASE.replace("line 10\n", "")),
])
def test_round_trip_edge_cases(old, new):
    assert apply_patch(old, make_patch(old, new)) == new


lines = st.lists(st.sampled_from(["a\n", "b\n", "c\n", "\n", "  x = 1\n", "d\r\n"]),
                 max_size=40)


@settings(max_examples=400, deadline=None)
@given(lines, lines, st.booleans(), st.booleans(), st.sampled_from(["e", "a", "  x = 1"]))
def test_round_trip_property(old_lines, new_lines, old_tail, new_tail, tail):
    old = "".join(old_lines) + (tail if old_tail else "")
    new = "".join(new_lines) + (tail if new_tail else "")
    patch = make_patch(old, new)
    assert apply_patch(old, patch) == new
    assert (patch == "") == (old == new)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200), st.text(max_size=200))
def test_round_trip_property_arbitrary_text(old, new):
    assert apply_patch(old, make_patch(old, new)) == new


def test_accepts_git_preamble_genome_path_and_timestamps():
    new = edit(BASE, l5="five\n")
    body = make_patch(BASE, new).split("\n", 2)[2]
    git = ("diff --git a/genome/train.py b/genome/train.py\nindex 1234567..89abcde 100644\n"
           "--- a/genome/train.py\n+++ b/genome/train.py\n" + body)
    assert apply_patch(BASE, git) == new
    stamped = ("--- a/train.py\t2024-01-01 00:00:00.000000000 +0000\n"
               "+++ b/train.py\t2024-01-01 00:00:01.000000000 +0000\n" + body)
    assert apply_patch(BASE, stamped) == new


# ---------------------------------------------------------------------------
# strictness: each malformed or mismatched patch fails with a precise reason

GOOD = make_patch(BASE, edit(BASE, l10="ten\n"))


@pytest.mark.parametrize("bad,reason", [
    (GOOD.replace(" line 9\n", " line 9 \n"), "hunk 1: line 9 is"),
    (GOOD.replace("@@ -7,7 +7,7 @@", "@@ -8,7 +8,7 @@"), "hunk 1: line 8 is"),   # offset
    (GOOD.replace("@@ -7,7 +7,7 @@", "@@ -7,8 +7,8 @@"), "truncated"),
    (GOOD.replace("@@ -7,7 +7,7 @@", "@@ -7,6 +7,6 @@"), "expected '--- a/<path>'"),
    (GOOD.replace("@@ -7,7 +7,7 @@", "@@ -7,7 +9,7 @@"), "new range starts at line 9"),
    (GOOD.replace("@@ -7,7 +7,7 @@", "@@ -7 +7 @@@"), "malformed hunk header"),
    (GOOD.replace("@@ -7,7 +7,7 @@", "@@ -" + "9" * 5000 + ",7 +7,7 @@"),
     "malformed hunk header"),
    (GOOD.replace(" line 8\n", "line 8\n"), "expected a hunk line"),
    (GOOD.replace(" line 8\n", "\n"), "expected a hunk line"),        # stripped blank context
    (GOOD.replace("a/train.py", "a/other.py").replace("b/train.py", "b/other.py"),
     "expected one of"),
    (GOOD.replace("+++ b/train.py", "+++ b/train2.py"), "renames"),
    (GOOD.replace("--- a/train.py", "--- train.py"), "does not start with 'a/'"),
    (GOOD.replace("--- a/train.py", "--- /dev/null"), "creates or deletes"),
    (GOOD.replace("--- a/train.py", '--- "a/train.py"'), "quoted"),
    (GOOD + GOOD.replace("train.py", "genome/train.py"), "exactly one"),
    (GOOD + "trailing garbage\n", "expected '--- a/<path>'"),
    (GOOD[:-1], "does not end with a newline"),
    (GOOD.replace("+ten\n", "+ten\n\\ No newline at end of file\n"), "lacks a newline"),
    (GOOD + "\\ No newline at end of file\n" * 2, "stray"),
    ("--- a/train.py\n+++ b/train.py\n", "has no hunks"),
    ("diff --git a/train.py b/train.py\nold mode 100644\nnew mode 100755\n",
     "unsupported git change"),
    ("diff --git a/train.py b/train.py\nBinary files a/train.py and b/train.py differ\n",
     "unsupported git change"),
    ("diff --git a/train.py b/train.py\nwhatever\n" + GOOD, "unexpected git header"),
    ("diff --git a/x.py b/y.py\n" + GOOD, "cannot read paths"),
    ("some preamble text\n" + GOOD, "expected '--- a/<path>'"),
])
def test_rejects_malformed_or_mismatched(bad, reason):
    with pytest.raises(PatchError, match=reason.replace("(", r"\(").replace("[", r"\[")):
        apply_patch(BASE, bad)


def test_rejects_wrong_base_and_past_end():
    patch = make_patch(BASE, edit(BASE, l20="twenty\n"))
    with pytest.raises(PatchError, match="past end of file|line 20 is"):
        apply_patch(BASE.replace("line 20\n", ""), patch)
    with pytest.raises(PatchError, match="file has 3 lines"):
        apply_patch("a\nb\nc\n", patch)


def test_rejects_overlapping_hunks():
    a = make_patch(BASE, edit(BASE, l3="three\n"))
    hunk = a.split("\n", 2)[2]
    with pytest.raises(PatchError, match="inside or before the previous hunk"):
        apply_patch(BASE, a + hunk)


def test_paths_restriction_can_be_lifted():
    patch = make_patch("a\n", "b\n", path="docs/notes.md")
    with pytest.raises(PatchError):
        apply_patch("a\n", patch)
    assert apply_patch("a\n", patch, paths=None) == "b\n"


def test_patch_paths():
    two = make_patch("a\n", "b\n", "genome/train.py") + make_patch("c\n", "d\n", "x/y.py")
    assert patch_paths(two) == ["genome/train.py", "x/y.py"]
    created = "--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+x\n"
    assert patch_paths(created) == ["new.py"]
    renamed = ("diff --git a/a.py b/a.py\nsimilarity index 90%\nrename from a.py\n"
               "rename to b.py\n")
    assert patch_paths(renamed) == ["a.py", "b.py"]
    assert patch_paths("") == []
    with pytest.raises(PatchError):
        patch_paths("not a patch\n")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parser_only_raises_patch_error(text):
    try:
        parse_patch(text)
        apply_patch(BASE, text)
    except PatchError:
        pass


# ---------------------------------------------------------------------------
# interop with git apply and patch -p1


def _git_env(tmp: Path) -> dict:
    return {"GIT_CONFIG_GLOBAL": str(tmp / "gitconfig"), "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(tmp), "PATH": "/usr/bin:/bin"}


INTEROP_CASES = [
    (BASE, edit(BASE, l1="first\n", l20=None)),
    (BASE, edit(BASE, l5="5\n", l6=None, l15="fifteen\nand more\n")),
    ("a\nb", "a\nb\nc\n"),
    ("a\nb\nc\n", "a\nB"),
    ("x\ny\n", "z\n"),
    ("", "new file content\n"),
]


@pytest.mark.skipif(not (shutil.which("git") and shutil.which("patch")),
                    reason="needs git and patch")
@pytest.mark.parametrize("old,new", INTEROP_CASES)
def test_git_apply_and_patch_accept_our_patches(tmp_path, old, new):
    patch = make_patch(old, new, path="genome/train.py")
    env = _git_env(tmp_path)
    for tool in (["git", "apply", "--whitespace=nowarn"], ["patch", "-p1", "--quiet"]):
        work = tmp_path / tool[0]
        (work / "genome").mkdir(parents=True)
        (work / "genome" / "train.py").write_bytes(old.encode())
        (work / "edit.diff").write_bytes(patch.encode())
        if tool[0] == "git":
            subprocess.run(["git", "init", "-q"], cwd=work, check=True, env=env)
            done = subprocess.run(tool + ["edit.diff"], cwd=work, env=env,
                                  capture_output=True, text=True)
        else:
            done = subprocess.run(tool + ["-i", "edit.diff"], cwd=work, env=env,
                                  capture_output=True, text=True)
        assert done.returncode == 0, done.stderr + done.stdout
        assert (work / "genome" / "train.py").read_bytes() == new.encode()


@pytest.mark.skipif(not shutil.which("git"), reason="needs git")
@pytest.mark.parametrize("old,new", INTEROP_CASES[:5])
def test_we_apply_git_diff_output(tmp_path, old, new):
    env = _git_env(tmp_path)
    (tmp_path / "genome").mkdir()
    target = tmp_path / "genome" / "train.py"
    target.write_bytes(old.encode())
    for cmd in (["git", "init", "-q"], ["git", "add", "."]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env)
    target.write_bytes(new.encode())
    diff = subprocess.run(["git", "diff", "--no-color", "--no-ext-diff"], cwd=tmp_path,
                          check=True, env=env, capture_output=True).stdout.decode()
    assert diff.startswith("diff --git a/genome/train.py b/genome/train.py\nindex ")
    assert apply_patch(old, diff) == new
    assert patch_paths(diff) == ["genome/train.py"]


# ---------------------------------------------------------------------------
# three-way merge


def test_merge3_combines_separate_edits():
    ours = edit(BASE, l2="ours two\n")
    theirs = edit(BASE, l18="theirs eighteen\n", l19=None)
    assert merge3(BASE, ours, theirs) == edit(BASE, l2="ours two\n",
                                              l18="theirs eighteen\n", l19=None)


def test_merge3_takes_identical_edits_once():
    both = edit(BASE, l7="seven\n")
    assert merge3(BASE, both, both) == both


def test_merge3_adjacent_insertions_at_end():
    assert merge3("a\n", "a\nb\n", "a\n") == "a\nb\n"
    with pytest.raises(MergeConflict):
        merge3("a\n", "a\nb\n", "a\nc\n")


def test_merge3_adjacent_line_edits_merge_line_by_line():
    ours = edit(BASE, l10="ours ten\n")
    theirs = edit(BASE, l11="theirs eleven\n")
    assert merge3(BASE, ours, theirs) == edit(BASE, l10="ours ten\n", l11="theirs eleven\n")
    assert merge3(BASE, theirs, ours) == merge3(BASE, ours, theirs)


def test_merge3_adjacent_edits_touching_one_line_twice_conflict():
    ours = edit(BASE, l10="ours ten\n", l11="ours eleven\n")
    theirs = edit(BASE, l11="theirs eleven\n")
    with pytest.raises(MergeConflict):
        merge3(BASE, ours, theirs)
    with pytest.raises(MergeConflict):   # one side also deletes a line: not one for one
        merge3(BASE, edit(BASE, l10="ours ten\n", l12=None), theirs)


def test_merge3_conflict_names_region():
    with pytest.raises(MergeConflict) as info:
        merge3(BASE, edit(BASE, l10="ours\n"), edit(BASE, l10="theirs\n"))
    assert info.value.conflicts == [(9, 10)]
    assert "base lines 10-10" in str(info.value)


@settings(max_examples=200, deadline=None)
@given(lines, lines)
def test_merge3_one_sided_property(base_lines, other_lines):
    base, other = "".join(base_lines), "".join(other_lines)
    assert merge3(base, other, base) == other
    assert merge3(base, base, other) == other
    assert merge3(base, other, other) == other

"""Unified diffs of train.py, in pure Python: make, apply strictly, list paths, merge.

Patches are the genes of the swarm: every experiment record carries the unified diff
of `train.py` against its first parent, and anyone rebuilds a record's source by
applying the patches along its ancestry. Both ends must therefore agree byte for byte:

- `make_patch` writes `--- a/<path>` / `+++ b/<path>` headers, 3 lines of context,
  and `\\ No newline at end of file` markers, so `apply_patch(old, make_patch(old, new))
  == new` for any texts, and the output is accepted by `git apply` and `patch -p1`.
- `apply_patch` is strict: no fuzz, no offsets. Every hunk must start exactly where its
  header says and every context and removed line must match exactly; otherwise it raises
  `PatchError` saying which hunk and line failed. A patch from a peer is untrusted input.
- Lines are split on `\\n` only (a `\\r` is part of a line's content), as git does.
- `parse_patch` is the one reader of unified diffs: applying, record validation and the
  static screen (experiments/run/static_check.py) all see the same structure, so no
  patch can mean one thing to the screen and another to the code that applies it.

`merge3` is a line-based three-way merge (the classic diff3 scheme: regions where the
base is unchanged on both sides are kept, a region changed on one side takes that side,
a region changed identically on both sides is taken once, anything else conflicts).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher

CONTEXT_LINES = 3
NO_NEWLINE = "\\ No newline at end of file"
MAX_PATCH_BYTES = 128 * 1024  # PROTOCOL.md's limit on a record's patch
MAX_SOURCE_BYTES = 128 * 1024  # the largest train.py that runs (the static screen's limit)
# Paths a train.py patch may name: the record format uses `train.py`, exports and
# hand-made patches at the repository root use `genome/train.py`.
TRAIN_PATHS = ("train.py", "genome/train.py")

# Digit counts are bounded: int() of a huge digit string is slow or raises ValueError.
_HUNK_HEADER = re.compile(r"@@ -(\d{1,9})(?:,(\d{1,9}))? \+(\d{1,9})(?:,(\d{1,9}))? @@(?: .*)?")
# git extended header lines that carry no content change we could apply.
_GIT_UNSUPPORTED = ("old mode ", "new mode ", "deleted file mode ", "new file mode ",
                    "copy from ", "copy to ", "rename from ", "rename to ",
                    "similarity index ", "dissimilarity index ", "Binary files ",
                    "GIT binary patch")
# git writes the data of a binary patch after this line: `literal N` / `delta N` lines,
# base85 lines (a length letter, then base85 digits) and blank lines
_GIT_BINARY = "GIT binary patch"
_GIT_BINARY_DATA = re.compile(r"(?:literal|delta) \d{1,20}"
                              r"|[A-Za-z][0-9A-Za-z!#$%&()*+;<=>?@^_`{|}~-]*|")


class PatchError(ValueError):
    """A patch that cannot be parsed or does not apply; the message says exactly why.

    `path` is the header text at fault when the patch names a file in a way the parser
    cannot read (quoted, without its a/ or b/ prefix, an ambiguous `diff --git` line):
    callers that allow only some paths report it as a path they do not allow.
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class MergeConflict(ValueError):
    """Both sides changed the same region of the base differently.

    `conflicts` lists the conflicting regions as (base_start, base_end) line ranges,
    0-based and end-exclusive.
    """

    def __init__(self, conflicts: list[tuple[int, int]]):
        self.conflicts = conflicts
        where = ", ".join(f"base lines {a + 1}-{b}" if b > a else f"after base line {a}"
                          for a, b in conflicts)
        super().__init__(f"merge conflict in {len(conflicts)} region(s): {where}")


def split_lines(text: str) -> list[str]:
    """Split on `\\n` only, keeping the newlines; the last line may lack one."""
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


# ---------------------------------------------------------------------------
# The structure parse_patch reads and format_patch writes


@dataclass
class Hunk:
    old_start: int  # 1-based as written; 0 with old_len 0 means "insert at the top"
    old_len: int
    new_start: int
    new_len: int
    lines: list[tuple[str, str]] = field(default_factory=list)  # (" "|"-"|"+", line)


@dataclass
class FilePatch:
    old_path: str | None  # None for /dev/null
    new_path: str | None
    hunks: list[Hunk] = field(default_factory=list)
    git_extras: list[str] = field(default_factory=list)  # unsupported git header lines


# ---------------------------------------------------------------------------
# Making a patch


def _common_length(same, limit: int) -> int:
    """The largest k <= limit with same(k), for a monotone `same` (binary search: each
    probe is one list comparison in C instead of a Python loop over lines)."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if same(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _opcodes(a: list[str], b: list[str]) -> list[tuple[str, int, int, int, int]]:
    """difflib opcodes, with the common head and tail split off first: an edit of a few
    lines in a long file then costs a scan instead of a quadratic match."""
    limit = min(len(a), len(b))
    head = _common_length(lambda k: a[:k] == b[:k], limit)
    tail = _common_length(lambda k: a[len(a) - k:] == b[len(b) - k:], limit - head)
    codes = []
    if head:
        codes.append(("equal", 0, head, 0, head))
    middle = SequenceMatcher(None, a[head:len(a) - tail], b[head:len(b) - tail],
                             autojunk=False).get_opcodes()
    codes += [(tag, i1 + head, i2 + head, j1 + head, j2 + head)
              for tag, i1, i2, j1, j2 in middle]
    if tail:
        codes.append(("equal", len(a) - tail, len(a), len(b) - tail, len(b)))
    return codes


def _grouped(codes, n: int):
    """Change clusters with up to `n` lines of context (difflib's grouping rule)."""
    codes = list(codes)
    if codes[0][0] == "equal":
        tag, i1, i2, j1, j2 = codes[0]
        codes[0] = tag, max(i1, i2 - n), i2, max(j1, j2 - n), j2
    if codes[-1][0] == "equal":
        tag, i1, i2, j1, j2 = codes[-1]
        codes[-1] = tag, i1, min(i2, i1 + n), j1, min(j2, j1 + n)
    group = []
    for tag, i1, i2, j1, j2 in codes:
        if tag == "equal" and i2 - i1 > 2 * n:
            group.append((tag, i1, min(i2, i1 + n), j1, min(j2, j1 + n)))
            yield group
            group = []
            i1, j1 = max(i1, i2 - n), max(j1, j2 - n)
        group.append((tag, i1, i2, j1, j2))
    if group and not (len(group) == 1 and group[0][0] == "equal"):
        yield group


def make_patch(old: str, new: str, path: str = "train.py") -> str:
    """Unified diff from `old` to `new` with `a/<path>` / `b/<path>` headers; "" if equal."""
    if old == new:
        return ""
    return make_patch_lines(split_lines(old), split_lines(new), path)


def make_patch_lines(a: list[str], b: list[str], path: str = "train.py") -> str:
    """`make_patch` on texts already split by `split_lines`."""
    if a == b:
        return ""
    hunks = []
    for group in _grouped(_opcodes(a, b), CONTEXT_LINES):
        a0, a1 = group[0][1], group[-1][2]
        b0, b1 = group[0][3], group[-1][4]
        # as diff writes a range: 1-based, except that an empty one names the line before
        hunk = Hunk(a0 + 1 if a1 > a0 else a0, a1 - a0, b0 + 1 if b1 > b0 else b0, b1 - b0)
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                hunk.lines += [(" ", line) for line in a[i1:i2]]
                continue
            hunk.lines += [("-", line) for line in a[i1:i2]]
            hunk.lines += [("+", line) for line in b[j1:j2]]
        hunks.append(hunk)
    return format_patch([FilePatch(path, path, hunks)])


def _range(start: int, length: int) -> str:
    """A hunk range as diff writes it: `,length` omitted when 1."""
    return str(start) if length == 1 else f"{start},{length}"


def format_patch(files: list[FilePatch]) -> str:
    """Unified diff text of file patches, in `make_patch`'s form: `diff --git` and the
    git header lines are not written, so `format_patch(parse_patch(p))` applies exactly as
    `p` does whenever `p` has no `git_extras`."""
    out: list[str] = []
    for fp in files:
        out.append(f"--- {'a/' + fp.old_path if fp.old_path is not None else '/dev/null'}\n")
        out.append(f"+++ {'b/' + fp.new_path if fp.new_path is not None else '/dev/null'}\n")
        for hunk in fp.hunks:
            out.append(f"@@ -{_range(hunk.old_start, hunk.old_len)} "
                       f"+{_range(hunk.new_start, hunk.new_len)} @@\n")
            for tag, line in hunk.lines:
                out.append(tag + line)
                if line[-1:] != "\n":
                    out.append("\n" + NO_NEWLINE + "\n")
    return "".join(out)


# ---------------------------------------------------------------------------
# Parsing


def _strip_prefix(header_value: str, prefix: str, lineno: int) -> str | None:
    """`a/x\\t<timestamp>` -> `x`; `/dev/null` -> None. The a/ or b/ prefix is required."""
    value = header_value.split("\t", 1)[0]
    if value == "/dev/null":
        return None
    if value.startswith('"'):
        raise PatchError(f"line {lineno}: quoted paths are not supported", value)
    if not value.startswith(prefix) or len(value) == len(prefix):
        raise PatchError(f"line {lineno}: path {value!r} does not start with {prefix!r}", value)
    return value[len(prefix):]


def _git_header_paths(rest: str, lineno: int) -> tuple[str, str]:
    """Paths of `diff --git a/X b/X`; only the unambiguous same-path form is accepted."""
    if rest.startswith('"'):
        raise PatchError(f"line {lineno}: quoted paths are not supported", rest)
    n = (len(rest) - 5) // 2
    path = rest[2:2 + n]
    if n <= 0 or rest != f"a/{path} b/{path}":
        raise PatchError(f"line {lineno}: cannot read paths from 'diff --git {rest}'", rest)
    return path, path


def parse_patch(patch: str) -> list[FilePatch]:
    """Parse a unified diff (optionally with `diff --git` headers) into file patches.

    Strict: every line must belong to a header or a hunk, and hunk line counts must
    match their headers exactly. Raises PatchError on anything else.
    """
    lines = patch.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        raise PatchError("patch does not end with a newline")
    files: list[FilePatch] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        git_paths = None
        extras: list[str] = []
        if line.startswith("diff --git "):
            git_paths = _git_header_paths(line[len("diff --git "):], i + 1)
            i += 1
            while i < len(lines) and not lines[i].startswith(("--- ", "diff --git ")):
                extra = lines[i]
                if extra.startswith("index "):
                    pass
                elif extra == _GIT_BINARY:
                    extras.append(extra)
                    while i + 1 < len(lines) and _GIT_BINARY_DATA.fullmatch(lines[i + 1]):
                        i += 1  # the binary data: no applicable content
                elif extra.startswith(_GIT_UNSUPPORTED):
                    extras.append(extra)
                else:
                    raise PatchError(f"line {i + 1}: unexpected git header line {extra!r}")
                i += 1
            if i >= len(lines) or lines[i].startswith("diff --git "):
                # a header-only section: a mode change, rename or binary patch
                if not extras:
                    raise PatchError(f"line {i}: git section without a change")
                files.append(FilePatch(git_paths[0], git_paths[1], [], extras))
                continue
            line = lines[i]
        if not line.startswith("--- "):
            raise PatchError(f"line {i + 1}: unexpected line {line[:80]!r} "
                             f"(expected '--- a/<path>')")
        if i + 1 >= len(lines) or not lines[i + 1].startswith("+++ "):
            raise PatchError(f"line {i + 2}: '---' header without a '+++' header after it "
                             f"(expected '+++ b/<path>')")
        old_path = _strip_prefix(line[4:], "a/", i + 1)
        new_path = _strip_prefix(lines[i + 1][4:], "b/", i + 2)
        if old_path is None and new_path is None:
            raise PatchError(f"line {i + 1}: both paths are /dev/null", "/dev/null")
        if git_paths is not None and (old_path or git_paths[0]) != git_paths[0]:
            raise PatchError(f"line {i + 1}: path differs from the 'diff --git' line")
        fp = FilePatch(old_path, new_path, [], extras)
        i += 2
        while i < len(lines) and lines[i].startswith("@@"):
            hunk, i = _parse_hunk(lines, i)
            fp.hunks.append(hunk)
        if not fp.hunks:
            raise PatchError(f"line {i + 1}: file section for {new_path or old_path!r} "
                             f"has no hunks")
        files.append(fp)
    return files


def _parse_hunk(lines: list[str], i: int) -> tuple[Hunk, int]:
    m = _HUNK_HEADER.fullmatch(lines[i])
    if not m:
        raise PatchError(f"line {i + 1}: malformed hunk header {lines[i][:80]!r}")
    old_len = int(m.group(2)) if m.group(2) is not None else 1
    new_len = int(m.group(4)) if m.group(4) is not None else 1
    hunk = Hunk(int(m.group(1)), old_len, int(m.group(3)), new_len)
    if old_len == 0 and new_len == 0:
        raise PatchError(f"line {i + 1}: empty hunk")
    if (old_len > 0 and hunk.old_start == 0) or (new_len > 0 and hunk.new_start == 0):
        raise PatchError(f"line {i + 1}: hunk range starts at line 0 but is not empty")
    header_line = i + 1
    i += 1
    seen_old = seen_new = 0
    while seen_old < old_len or seen_new < new_len:
        if i >= len(lines):
            raise PatchError(f"hunk at line {header_line}: truncated, shorter than its header "
                             f"says ({seen_old}/{old_len} old, {seen_new}/{new_len} new lines)")
        text = lines[i]
        tag, body = text[:1], text[1:] + "\n"
        if tag == " ":
            seen_old += 1
            seen_new += 1
        elif tag == "-":
            seen_old += 1
        elif tag == "+":
            seen_new += 1
        else:
            raise PatchError(f"line {i + 1}: expected a hunk line (' ', '-', '+'), "
                             f"got {text[:80]!r}")
        if seen_old > old_len or seen_new > new_len:
            raise PatchError(f"hunk at line {header_line}: longer than its header says")
        i += 1
        if i < len(lines) and lines[i] == NO_NEWLINE:
            body = body[:-1]
            i += 1
        hunk.lines.append((tag, body))
    if i < len(lines) and lines[i] == NO_NEWLINE:
        raise PatchError(f"line {i + 1}: stray '{NO_NEWLINE}'")
    return hunk, i


def patch_paths(patch: str) -> list[str]:
    """Every path a patch touches (without a/ b/ prefixes), in order of appearance."""
    out: list[str] = []
    for fp in parse_patch(patch):
        for path in (fp.old_path, fp.new_path):
            if path is not None and path not in out:
                out.append(path)
        for extra in fp.git_extras:
            for key in ("rename from ", "rename to ", "copy from ", "copy to "):
                if extra.startswith(key) and extra[len(key):] not in out:
                    out.append(extra[len(key):])
    return out


# ---------------------------------------------------------------------------
# Applying


def _single_file(patch: str, paths: tuple[str, ...] | None) -> FilePatch:
    files = parse_patch(patch)
    if len(files) != 1:
        raise PatchError(f"patch changes {len(files)} files, expected exactly one")
    fp = files[0]
    if fp.git_extras:
        raise PatchError(f"unsupported git change: {fp.git_extras[0]!r}")
    if fp.old_path is None or fp.new_path is None:
        raise PatchError("patch creates or deletes a file")
    if fp.old_path != fp.new_path:
        raise PatchError(f"patch renames {fp.old_path!r} to {fp.new_path!r}")
    if paths is not None and fp.old_path not in paths:
        raise PatchError(f"patch changes {fp.old_path!r}, expected one of {list(paths)}")
    return fp


def apply_patch_lines(old: list[str], patch: str,
                      paths: tuple[str, ...] | None = TRAIN_PATHS) -> list[str]:
    """`apply_patch` on a list of lines (as `split_lines` gives); saves re-splitting."""
    if patch == "":
        return list(old)
    fp = _single_file(patch, paths)
    out: list[str] = []
    # where lines without a final newline landed in `out`: each must end up last
    unterminated: list[int] = []
    old_last_open = bool(old) and not old[-1].endswith("\n")
    pos = 0  # next unconsumed line of old, 0-based

    def copy_old(upto: int) -> None:
        if old_last_open and pos < len(old) <= upto:
            unterminated.append(len(out) + len(old) - 1 - pos)
        out.extend(old[pos:upto])

    for n, hunk in enumerate(fp.hunks, 1):
        # 0-based index of the first old line the hunk covers; an empty range names the
        # line before it (0: the top of the file)
        start = hunk.old_start - 1 if hunk.old_len else hunk.old_start
        if start < pos:
            raise PatchError(f"hunk {n}: starts at line {hunk.old_start}, "
                             f"inside or before the previous hunk")
        if start > len(old):
            raise PatchError(f"hunk {n}: starts at line {hunk.old_start} "
                             f"but the file has {len(old)} lines")
        copy_old(start)
        pos = start
        expected_new = len(out) + 1 if hunk.new_len else len(out)
        if hunk.new_start != expected_new:
            raise PatchError(f"hunk {n}: new range starts at line {hunk.new_start}, "
                             f"expected {expected_new}")
        for tag, line in hunk.lines:
            if tag != "+":
                if pos >= len(old):
                    raise PatchError(f"hunk {n}: expects line {pos + 1} {line!r} "
                                     f"past end of file")
                if old[pos] != line:
                    raise PatchError(f"hunk {n}: line {pos + 1} is {old[pos]!r}, "
                                     f"patch expects {line!r}")
                pos += 1
                if tag == "-":
                    continue
            if not line.endswith("\n"):
                unterminated.append(len(out))
            out.append(line)
    copy_old(len(old))
    for k in unterminated:
        if k != len(out) - 1:
            raise PatchError(f"line {k + 1} of the result lacks a newline but is not last")
    return out


def apply_patch(old: str, patch: str, paths: tuple[str, ...] | None = TRAIN_PATHS) -> str:
    """Apply a single-file unified diff to `old` exactly; raise PatchError if it fails.

    `paths` limits which file the patch may name (default: train.py or genome/train.py;
    None accepts any). An empty patch means "no change".
    """
    return "".join(apply_patch_lines(split_lines(old), patch, paths))


# ---------------------------------------------------------------------------
# Three-way merge


def _stable_regions(base: list[str], ours: list[str], theirs: list[str]):
    """Ranges of base unchanged on both sides: (base0, base1, ours0, ours1, theirs0, theirs1)."""
    a = SequenceMatcher(None, base, ours, autojunk=False).get_matching_blocks()
    b = SequenceMatcher(None, base, theirs, autojunk=False).get_matching_blocks()
    ia = ib = 0
    regions = []
    while ia < len(a) and ib < len(b):
        a_base, a_other, a_len = a[ia]
        b_base, b_other, b_len = b[ib]
        lo, hi = max(a_base, b_base), min(a_base + a_len, b_base + b_len)
        if lo < hi:
            oa = a_other + (lo - a_base)
            ob = b_other + (lo - b_base)
            regions.append((lo, hi, oa, oa + hi - lo, ob, ob + hi - lo))
        if a_base + a_len < b_base + b_len:
            ia += 1
        else:
            ib += 1
    # the sentinel: everything after the last stable region is compared as one chunk
    regions.append((len(base), len(base), len(ours), len(ours), len(theirs), len(theirs)))
    return regions


def _merge_line_by_line(b: list[str], o: list[str], t: list[str]) -> list[str] | None:
    """Both sides replaced the same lines one for one (settings on adjacent lines, say):
    merge per line when no line was changed differently on both sides, else None."""
    if not len(b) == len(o) == len(t):
        return None
    out = []
    for line_b, line_o, line_t in zip(b, o, t):
        if line_o == line_t or line_t == line_b:
            out.append(line_o)
        elif line_o == line_b:
            out.append(line_t)
        else:
            return None
    return out


def merge3(base: str, ours: str, theirs: str) -> str:
    """Line-based three-way merge of two edits of `base`; raise MergeConflict on overlap."""
    b, o, t = split_lines(base), split_lines(ours), split_lines(theirs)
    out: list[str] = []
    conflicts: list[tuple[int, int]] = []
    ib = io = it = 0
    for b0, b1, o0, o1, t0, t1 in _stable_regions(b, o, t):
        chunk_b, chunk_o, chunk_t = b[ib:b0], o[io:o0], t[it:t0]
        if chunk_o == chunk_t:
            out.extend(chunk_o)
        elif chunk_o == chunk_b:
            out.extend(chunk_t)
        elif chunk_t == chunk_b:
            out.extend(chunk_o)
        elif (merged := _merge_line_by_line(chunk_b, chunk_o, chunk_t)) is not None:
            out.extend(merged)
        else:
            conflicts.append((ib, b0))
        out.extend(b[b0:b1])
        ib, io, it = b1, o1, t1
    if conflicts:
        raise MergeConflict(conflicts)
    return "".join(out)

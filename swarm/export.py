"""Export a lineage for people and their tools.

- `export_patch`: the whole chain squashed into one unified diff of `genome/train.py`
  (headers `a/genome/train.py`, `b/genome/train.py`) that `git apply` and `patch -p1`
  apply at the repository root, giving the record's train.py byte for byte.
- `export_source`: the record's train.py itself.
- `export_series`: one mail per step in `git am` mbox format: subject = topic and
  description, author = the peer id, date = the record's time, and in the message
  val_bpb before and after, the arena, the record id and who verified the step.
  Steps that leave train.py unchanged (baseline runs) have nothing to apply and are
  left out.
- `export_tsv`: autoresearch's `results.tsv` (`commit val_bpb memory_gb status
  description`): the lineage's steps and the genome's baseline runs are `keep`, other
  experiments tried on top of them in the same arena are `discard` (ran, not kept) or
  `crash`.
- `log_lines`: a plain-text listing of the lineage and the arena's recent results.

Scores and vouching come from their one home each: the genome's own score in an arena
is swarm.conventions.root_score (what the scoreboard uses too), at the arena's `seed`;
who verified a step is the caller's `verified_by`, normally a TrustPolicy's (this node's
view: itself and the peers it trusts).

Everything here reads the store and the lineage cache; nothing touches the network.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from email.header import Header
from email.utils import format_datetime
from typing import Callable, Iterable

from swarm.conventions import ARENA_SEED, baseline_runs, root_score
from swarm.lineage import Lineage
from swarm.patch import make_patch, make_patch_lines
from swarm.records import Record

EXPORT_PATH = "genome/train.py"
# autoresearch's five columns, then this step's val and held-out test deltas
TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\tval_delta\ttest_delta"
# the fixed date git format-patch writes on its "From <sha>" separator lines
_MBOX_FROM_DATE = "Mon Sep 17 00:00:00 2001"
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

VerifiedBy = Callable[[bytes], list[str]]  # record id -> who vouches for it (TrustPolicy)


def _one_line(text: str) -> str:
    """Text safe for one terminal line, mail header or TSV cell."""
    return _UNPRINTABLE.sub(" ", text or "").strip()


def _fmt_bpb(value: float | None) -> str:
    return f"{value:.6f}" if value is not None else "n/a"


def export_source(lineage: Lineage, record_id: bytes) -> str:
    """The record's train.py."""
    return lineage.source_of(record_id)


def export_patch(lineage: Lineage, record_id: bytes) -> str:
    """One diff of genome/train.py from the genome to the record ("" if identical)."""
    return make_patch(lineage.base_source, lineage.source_of(record_id), EXPORT_PATH)


def baseline_bpb(lineage: Lineage, arena: str, seed: int = ARENA_SEED,
                 authors: Iterable[bytes] | None = None) -> float | None:
    """The genome's own score in `arena` (swarm.conventions.root_score), from the baselines
    of `authors` and ours (the node's and its trusted peers', as its scoreboard counts
    them), or of everyone when None."""
    runs = baseline_runs(lineage.store.children(lineage.root_id, authors=authors), arena)
    return root_score(runs, seed)


class _ParentScores:
    """val_bpb of a record's first parent; the genome's score read once per arena."""

    def __init__(self, lineage: Lineage, seed: int, authors: Iterable[bytes] | None = None):
        self.lineage, self.seed, self.authors = lineage, seed, authors
        self._roots: dict[str, float | None] = {}

    def root(self, arena: str) -> float | None:
        if arena not in self._roots:
            self._roots[arena] = baseline_bpb(self.lineage, arena, self.seed, self.authors)
        return self._roots[arena]

    def of(self, record: Record) -> float | None:
        parent = record.parents[0]
        if parent == self.lineage.root_id:
            return self.root(record.arena)
        stored = self.lineage.store.get(parent)
        return stored.val_bpb if stored is not None else None


def _subject(text: str) -> str:
    """A Subject header value, RFC 2047-encoded when it is not plain ASCII."""
    if text.isascii():
        return text
    return Header(text, "utf-8", header_name="Subject").encode()


def export_series(lineage: Lineage, record_id: bytes, *, verified_by: VerifiedBy,
                  seed: int = ARENA_SEED, baseline_authors: Iterable[bytes] | None = None
                  ) -> str:
    """The lineage as a `git am` mbox, one patch per step that changes train.py."""
    parent_bpb = _ParentScores(lineage, seed, baseline_authors).of
    chain = lineage.chain(record_id)
    steps = []
    before = lineage.lines_of(lineage.root_id)
    for record in chain:
        after = lineage.lines_of(record.id)
        diff = make_patch_lines(before, after, EXPORT_PATH)
        if diff:
            steps.append((record, diff))
        before = after
    mails = []
    for n, (record, diff) in enumerate(steps, 1):
        peer = record.author_peer_id
        when = datetime.fromtimestamp(record.t / 1000, tz=timezone.utc)
        subject = f"[PATCH {n}/{len(steps)}] {record.topic}: {_one_line(record.desc)}"
        prev = parent_bpb(record)
        now = record.val_bpb
        change = f" ({now - prev:+.6f})" if prev is not None and now is not None else ""
        verifiers = verified_by(record.id)
        message = [
            f"val_bpb: {_fmt_bpb(prev)} -> {_fmt_bpb(now)}{change} in {record.arena}",
            f"status: {record.status}",
            f"verified by: {', '.join(verifiers) if verifiers else 'nobody yet'}",
            f"agent: {_one_line(record.agent)}",
            "",
            f"Loopy-Record: {record.id_hex}",
            *(f"Loopy-Parent: {p.hex()}" for p in record.parents),
            f"Loopy-Author: {peer}",
        ]
        mails.append("".join([
            f"From {record.id_hex[:40]} {_MBOX_FROM_DATE}\n",
            f"From: {peer} <{peer}@loopy.invalid>\n",
            f"Date: {format_datetime(when)}\n",
            f"Subject: {_subject(subject)}\n",
            "MIME-Version: 1.0\n",
            "Content-Type: text/plain; charset=UTF-8\n",
            "Content-Transfer-Encoding: 8bit\n",
            "\n",
            "\n".join(message), "\n",
            "---\n",
            diff,
            "-- \n",
            "loopy\n",
            "\n",
        ]))
    return "".join(mails)


def test_delta(lineage: Lineage, record_id: bytes) -> float | None:
    """The record's gain on held-out test windows: the median, over the attestations that
    measured it, of (record - its parent) on the same test windows. None if none did."""
    deltas = sorted(r.result["test_bpb"] - r.result["test_parent_bpb"]
                    for r in lineage.store.attestations_for(record_id)
                    if r.result and "test_bpb" in r.result and "test_parent_bpb" in r.result)
    return deltas[len(deltas) // 2] if deltas else None


def _fmt_delta(value: float | None) -> str:
    return f"{value:+.6f}" if value is not None else ""


def _tsv_row(lineage: Lineage, parents: _ParentScores, record: Record, status: str) -> str:
    ok = record.status == "ok"
    bpb = record.val_bpb if ok else 0.0
    mem_mb = (record.result or {}).get("peak_mem_mb", 0.0) if ok else 0.0
    desc = _one_line(record.desc).replace("\t", " ")
    parent = parents.of(record)
    val_delta = record.val_bpb - parent if ok and parent is not None else None
    return (f"{record.id_hex[:7]}\t{bpb:.6f}\t{mem_mb / 1024:.1f}\t{status}\t{desc}\t"
            f"{_fmt_delta(val_delta)}\t{_fmt_delta(test_delta(lineage, record.id))}")


def export_tsv(lineage: Lineage, record_id: bytes, attempts: bool = True, *,
               seed: int = ARENA_SEED, baseline_authors: Iterable[bytes] | None = None) -> str:
    """autoresearch's results.tsv for the lineage, oldest first.

    Lineage steps are `keep` (`crash` if a step itself failed). With `attempts`, the
    other experiments built on a step in the same arena are listed too: `discard` if
    they ran, `crash` if they crashed, timed out or were rejected; unchanged runs of the
    genome itself (baselines) are `keep`.
    """
    chain = lineage.chain(record_id)
    on_chain = {r.id for r in chain}
    arena = chain[-1].arena
    parents = _ParentScores(lineage, seed, baseline_authors)
    rows = [(r.t, r.id, _tsv_row(lineage, parents, r, "keep" if r.status == "ok" else "crash"))
            for r in chain]
    if attempts:
        for parent in [lineage.root_id] + [r.id for r in chain]:
            for child in lineage.store.children(parent):
                if child.id in on_chain or child.arena != arena or child.parents[0] != parent:
                    continue
                if child.status != "ok":
                    status = "crash"
                elif parent == lineage.root_id and child.patch == "":
                    status = "keep"  # a baseline run of the genome: where the lineage starts
                else:
                    status = "discard"
                rows.append((child.t, child.id, _tsv_row(lineage, parents, child, status)))
    rows.sort()
    return "\n".join([TSV_HEADER] + [row for _, _, row in rows]) + "\n"


def log_lines(lineage: Lineage, record_id: bytes, *, verified_by: VerifiedBy, recent: int = 10,
              seed: int = ARENA_SEED, baseline_authors: Iterable[bytes] | None = None
              ) -> list[str]:
    """A terminal listing: the lineage step by step, then the arena's latest results."""
    chain = lineage.chain(record_id)
    head = chain[-1]
    lines = [f"lineage of {head.id_hex[:12]} in {head.arena}: {len(chain)} steps",
             f"{'step':>4}  {'record':7}  {'val_bpb':>9}  {'change':>9}  {'test chg':>9}  "
             f"{'topic':12}  {'author':8}  {'verified':>8}  description"]
    prev = baseline_bpb(lineage, head.arena, seed, baseline_authors)
    if prev is not None:
        lines.append(f"{0:>4}  {'genome':7}  {prev:>9.6f}  {'':>9}  {'':>9}  {'':12}  {'':8}  "
                     f"{'':>8}  baseline")
    for n, record in enumerate(chain, 1):
        now = record.val_bpb
        change = f"{now - prev:+.6f}" if now is not None and prev is not None else ""
        bpb = f"{now:.6f}" if now is not None else record.status
        test = _fmt_delta(test_delta(lineage, record.id))
        lines.append(f"{n:>4}  {record.id_hex[:7]}  {bpb:>9}  {change:>9}  {test:>9}  "
                     f"{record.topic:12.12}  {record.author_peer_id[-8:]:8}  "
                     f"{len(verified_by(record.id)):>8}  {_one_line(record.desc)[:80]}")
        prev = now if now is not None else prev
    latest = lineage.store.experiments(arena=head.arena, limit=recent) if recent else []
    if latest:
        lines.append("")
        lines.append(f"latest {len(latest)} results in {head.arena}:")
        for record in reversed(latest):
            bpb = f"{record.val_bpb:.6f}" if record.val_bpb is not None else ""
            lines.append(f"  {record.id_hex[:7]}  {bpb:>9}  {record.status:8}  "
                         f"{record.topic:12.12}  {record.author_peer_id[-8:]:8}  "
                         f"{_one_line(record.desc)[:80]}")
    return lines

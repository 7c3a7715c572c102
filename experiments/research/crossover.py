"""Work found elsewhere, tried here: merges of sibling improvements, ports from other arenas.

- A *merge* combines the parent we build on with another kept record of our arena that
  is neither its ancestor nor its descendant: a three-way merge of train.py against their
  common ancestor. With a donor we count as verified it is a two-parent experiment
  `[parent, donor]`, kept (like any merge) only if it beats the better of its parents by
  the noise. With a donor that is only a claim, it is a single-parent experiment on our
  parent naming the donor: we try the idea and trust our own run, never the claim.
  A conflict means no merge; it is logged and not tried again.
  Many nodes exploring one parent in parallel find several independent improvements;
  merging them is how a swarm climbs faster than one node's chain of single steps.
- A *port* tries an edit that improved another arena (another GPU type, budget or dataset)
  here, as an ordinary experiment on our parent: the donor's own step (its patch against
  its first parent) merged onto our parent, its description pointing to the original
  (`port of <id> from <arena>`). Another arena's score says nothing about ours: the port
  is judged by our run alone, and the donor needs no verification, only an author who is
  not a known liar.

Nothing here trains or talks to the network: it reads the store and builds sources.
"""
from __future__ import annotations

from collections.abc import Container
from contextlib import ExitStack
from dataclasses import dataclass

from experiments.agents.base import clean_line
from experiments.research.scoreboard import Candidate, Scoreboard, ScoreRules
from swarm import descriptions
from swarm.lineage import Lineage, LineageError
from swarm.patch import MergeConflict, PatchError, merge3
from swarm.records import Record
from swarm.store import Store
from swarm.trust import TrustPolicy

MAX_DONORS = 8          # donors examined per attempt: each costs a three-way merge
MAX_WALK = 10_000       # first-parent steps when looking for a common ancestor


@dataclass
class Crossover:
    kind: str                   # merge | port
    parents: list[bytes]        # [our parent] for a port, [our parent, donor] for a merge
    source: str
    desc: str
    donor: Record
    gain: float                 # the donor's improvement where it was measured (< 0: better)


def merge_desc(parent_id: bytes, donor: Record, verified: bool) -> str:
    """swarm.descriptions.merge_desc, cleaned as the loop records it, so that announces
    compare equal."""
    return clean_line(descriptions.merge_desc(parent_id, donor.id, donor.desc, verified))


def port_desc(donor: Record) -> str:
    """swarm.descriptions.port_desc, cleaned as the loop records it, so that announces
    compare equal."""
    return clean_line(descriptions.port_desc(donor.id, donor.arena, donor.desc))


def ported_ids(records: list[Record]) -> set[bytes]:
    """Ids of the originals that these experiments port."""
    out = set()
    for r in records:
        original = descriptions.ported_id(r.desc)
        if original is not None:
            out.add(original)
    return out


class CrossoverFinder:
    """Finds the most promising merge or port for a parent, or None."""

    def __init__(self, *, store: Store, lineage: Lineage, scores: Scoreboard,
                 trust: TrustPolicy, root_id: bytes, rules: ScoreRules):
        self.store, self.lineage, self.scores, self.trust = store, lineage, scores, trust
        self.root_id, self.rules = root_id, rules
        self.failed: set[tuple[bytes, bytes]] = set()    # (parent, donor): conflicts
        self._ports_cache: tuple[int, list[tuple[float, Record]]] | None = None

    # -- merges ----------------------------------------------------------------

    def merge(self, parent: Candidate, tried: Container[str], busy: set[str]) -> Crossover | None:
        """Our parent merged with the kept record whose branch gained most since their
        common ancestor.

        A donor we count as verified gives a two-parent merge record. A donor that is only
        a claim, by an author we trust (we reproduced their claims before) and not refuted
        by anyone we trust, gives a single-parent experiment that names it in its
        description: we try the idea on our own parent and judge it by our own run, without
        building on the claim. Strangers' claims wait for verification, or a liar with
        many fresh keys could spend every node's runs on his inventions.

        `tried`: programs not to run again (run in the arena, or running elsewhere);
        `busy`: descriptions that other live nodes announce on this parent now."""
        if parent.record is None:
            return None       # on the root a "merge" would only re-run the donor
        sigma = self.scores.sigma()
        if sigma is None:
            return None
        reps = self.trust.reputations()
        mine = self.store.ancestors(parent.id) | {parent.id}
        claims = []
        for r in self.store.experiments(arena=self.scores.arena, ok_below=float("inf")):
            if r.id in mine or (parent.id, r.id) in self.failed or \
                    not self.scores.is_kept(r, sigma):
                continue
            if self.trust.my_verdict(r) == "refuted" or self.trust.is_liar(r.author, reps) or \
                    self.trust.trusted_refuters(r, reps):
                continue
            verified = self.trust.is_verified(r, reps)
            if not verified and r.author != self.trust.me and \
                    reps.get(r.author, 0.0) < self.trust.rules.trust_threshold:
                continue      # a stranger's claim is re-run first: fresh keys cost runs
            claims.append((r, verified))
        claims.sort(key=lambda c: (c[0].val_bpb, c[0].id))
        donors = []
        for r, verified in claims[:3 * MAX_DONORS]:
            if parent.id in self.store.ancestors(r.id) or not self.lineage.is_buildable(r.id):
                continue      # a descendant of our parent already contains it
            base = self._common_ancestor(r, mine)
            if base is None:
                continue
            base_score = self.scores.score_of(base)
            gain = r.val_bpb - base_score if base_score is not None else 0.0
            donors.append((gain, r.id, r, base, verified))
        donors.sort(key=lambda d: (d[0], d[1]))
        for gain, donor_id, donor, base, verified in donors[:MAX_DONORS]:
            desc = merge_desc(parent.id, donor, verified)
            if desc in busy:
                continue
            source = self._merged(parent.id, donor_id, base, donor_id)
            if source is None or source in tried:
                continue
            parents = [parent.id, donor_id] if verified else [parent.id]
            return Crossover("merge", parents, source, desc, donor, gain)
        return None

    def _common_ancestor(self, donor: Record, mine: set[bytes]) -> bytes | None:
        """The first ancestor on the donor's first-parent chain that is ours too (the
        genome root at the latest); None if the chain is incomplete."""
        current = donor.parents[0]
        for _ in range(MAX_WALK):
            if current in mine or current == self.root_id:
                return current
            record = self.store.get(current)
            if record is None or record.kind != "experiment":
                return None
            current = record.parents[0]
        return None

    def _merged(self, parent_id: bytes, donor_id: bytes, base_id: bytes,
                failed_key: bytes, port: bool = False) -> str | None:
        """merge3 of (base, parent, donor); None (remembered) on a conflict, or when the
        result is our parent's source (nothing new), or, for a merge, the donor's (the donor
        itself, already run here). A port may equal its donor: that ran elsewhere."""
        try:
            base = self.lineage.source_of(base_id)
            ours = self.lineage.source_of(parent_id)
            theirs = self.lineage.source_of(donor_id)
            merged = merge3(base, ours, theirs)
        except (MergeConflict, LineageError, PatchError):
            self.failed.add((parent_id, failed_key))
            return None
        if merged == ours or (merged == theirs and not port):
            self.failed.add((parent_id, failed_key))
            return None
        return merged

    # -- ports -----------------------------------------------------------------

    def port(self, parent: Candidate, arena: str, tried: Container[str],
             busy: set[str]) -> Crossover | None:
        """The most improving edit of another arena not yet ported into `arena`."""
        done = ported_ids(self.store.experiments(arena=arena))
        reps = self.trust.reputations()
        for gain, donor in self._port_donors(arena):
            if donor.id in done or (parent.id, donor.id) in self.failed:
                continue
            if self.trust.is_liar(donor.author, reps):
                continue
            desc = port_desc(donor)
            if desc in busy:
                continue
            source = self._merged(parent.id, donor.id, donor.parents[0], donor.id,
                                  port=True)
            if source is None or source in tried:
                continue
            return Crossover("port", [parent.id], source, desc, donor, gain)
        return None

    def _port_donors(self, arena: str) -> list[tuple[float, Record]]:
        """Kept edits of every other arena (by that arena's own noise), most gain first.
        Cached until the store holds more experiments."""
        count = self.store.count("experiment")
        if self._ports_cache is not None and self._ports_cache[0] == count:
            return self._ports_cache[1]
        boards: dict[str, Scoreboard] = {}
        found = []
        with ExitStack() as stack:    # each board reads its arena's baselines once
            for r in self.store.experiments():
                if r.arena == arena or not r.patch or r.status != "ok":
                    continue
                if r.arena not in boards:
                    boards[r.arena] = Scoreboard(self.store, self.lineage, self.root_id,
                                                 r.arena, self.rules, trusted=lambda _r: True)
                    stack.enter_context(boards[r.arena].consistent())
                board = boards[r.arena]
                if board.is_kept(r) and self.lineage.is_buildable(r.id):
                    found.append((board.delta(r), r))
        found.sort(key=lambda d: (d[0], d[1].id))
        self._ports_cache = (count, found)
        return found

"""Whom a node believes: verification state and per-peer reputation ("don't trust, replicate").

A record counts as *verified* for this node when
  - this node made it, or reproduced it itself (its own attestation says so), or
  - at least `k` distinct *trusted* peers (not the author) attest it reproduced and
    no trusted peer refuted it,
and this node has not refuted it, and its author is not a known liar.

Reputation is derived from this node's own attestations, never from what peers
say about each other: an author gains `REWARD` for each claim of theirs this
node reproduced and loses `PENALTY` (much more) for each one it refuted, and a
verifier with a positive reputation loses `DISSENT` for each record (in its own
arena) that it ever attested with the verdict opposite to our newest one (a
trusted key that refutes honest claims, or vouches for false ones, is no longer
trusted once we checked one of them ourselves; honest verifiers disagree now
and then near the noise, so this costs less than a refutation, and strangers,
who have no reputation to lose, are not tallied at all). Only attestations made
in the record's own arena count, for anything. A peer
is trusted as a verifier once its reputation reaches `trust_threshold`, so keys
this node never checked (a thousand fresh Sybil keys vouching for each other)
count for nothing. An author whose reputation falls below `liar_threshold` is a
liar: their records stop counting as verified (and so stop being parents)
unless this node reproduced that very record itself.

Keys the operator names as their own machines (`TrustRules.operator_keys`, the
`trust_peer` setting) count as this node: their records are verified without a re-run,
their baselines count and their attestations are trusted. Nothing a peer sends can add a
key there: only the operator's own configuration does.

Derived state is recomputed from the store's attestations, so it survives any
crash with the records themselves; the peers table keeps a copy for display.
"""
from __future__ import annotations

from dataclasses import dataclass

from swarm.identity import peer_id_from_public_key
from swarm.records import Record
from swarm.store import Store

REWARD = 1.0
PENALTY = 5.0
DISSENT = 0.5
OPERATOR_REPUTATION = 1e6   # the operator's own machines: beyond what any peer earns


@dataclass
class TrustRules:
    k: int = 2                      # trusted attestations that make a record verified
    trust_threshold: float = 1.0    # reputation a verifier needs to count
    liar_threshold: float = -4.0    # below this an author's claims count for nothing
    operator_keys: frozenset = frozenset()  # public keys of the operator's other nodes


@dataclass(frozen=True)
class TrustedAuthors:
    """This node and the peers it trusts, as a predicate on author keys (and the keys, so
    that a store query can filter by them)."""
    me: bytes
    peers: frozenset

    def __call__(self, author: bytes) -> bool:
        return author == self.me or author in self.peers

    def keys(self) -> list[bytes]:
        return [self.me, *sorted(self.peers)]


class TrustPolicy:
    def __init__(self, store: Store, me: bytes, rules: TrustRules | None = None):
        self.store, self.me = store, me
        self.rules = rules or TrustRules()

    # -- reputation -----------------------------------------------------------

    def trusted_author(self, reps: dict[bytes, float] | None = None) -> "TrustedAuthors":
        """An `author -> bool` for whose measurements count as the arena's own (baselines:
        its noise and the genome's score): this node's, and peers' who earned our trust.
        Reputations are read once per call (`reps`: already read)."""
        threshold = self.rules.trust_threshold
        reps = self.reputations() if reps is None else reps
        return TrustedAuthors(self.me, frozenset(
            a for a, rep in reps.items() if rep >= threshold))

    def reputations(self) -> dict[bytes, float]:
        """Author public key -> reputation, from this node's own verdicts."""
        rep: dict[bytes, float] = {}
        for author, verdict, n in self.store.verdict_counts(self.me):
            rep[author] = rep.get(author, 0.0) + (REWARD * n if verdict == "reproduced"
                                                  else -PENALTY * n)
        for verifier, n in self.store.dissent_counts(self.me):
            if rep.get(verifier, 0.0) > 0:  # only what we gave can be taken back
                rep[verifier] -= DISSENT * n
        for key in self.rules.operator_keys - {self.me}:
            rep[key] = OPERATOR_REPUTATION
        return rep

    def reputation(self, author: bytes) -> float:
        if author == self.me:
            return float("inf")
        return self.reputations().get(author, 0.0)

    def is_liar(self, author: bytes, reps: dict[bytes, float] | None = None) -> bool:
        """`reps`: reputations already read (a scan over many records reads them once)."""
        if author == self.me:
            return False
        reps = self.reputations() if reps is None else reps
        return reps.get(author, 0.0) < self.rules.liar_threshold

    def save_reputations(self) -> None:
        """Copy the derived reputations into the peers table (for status and dashboard)."""
        for author, rep in self.reputations().items():
            peer_id = peer_id_from_public_key(author)
            if self.store.peer(peer_id) is None:
                self.store.upsert_peer(peer_id)
            self.store.set_reputation(peer_id, rep)

    # -- verification ---------------------------------------------------------

    def my_verdict(self, record: Record) -> str | None:
        return self.my_verdict_on(record.id, record.author)

    def my_verdict_on(self, record_id: bytes, author: bytes) -> str | None:
        """What this node itself found: `reproduced` for its own records (and the operator's
        other nodes'), else its newest attestation's verdict on the record, or None if it
        never re-ran it."""
        if author == self.me or author in self.rules.operator_keys:
            return "reproduced"
        if self.me in self.store.who_refuted(record_id):
            return "refuted"
        if self.me in self.store.who_reproduced(record_id):
            return "reproduced"
        return None

    def trusted_attesters(self, record: Record, reps: dict[bytes, float] | None = None
                          ) -> list[bytes]:
        """Trusted peers (not the author, not us) whose newest verdict says reproduced."""
        return self.trusted_among(record, self.store.who_reproduced(record.id), reps)

    def trusted_refuters(self, record: Record, reps: dict[bytes, float] | None = None
                         ) -> list[bytes]:
        """Trusted peers whose newest verdict says the record did not reproduce."""
        return self.trusted_among(record, self.store.who_refuted(record.id), reps)

    def trusted_among(self, record: Record, verifiers: list[bytes],
                      reps: dict[bytes, float] | None) -> list[bytes]:
        """The verifiers that count: trusted, and neither the author nor us."""
        reps = self.reputations() if reps is None else reps
        return [v for v in verifiers if v not in (record.author, self.me)
                and reps.get(v, 0.0) >= self.rules.trust_threshold]

    def doubted_authors(self, reps: dict[bytes, float] | None = None) -> dict[bytes, int]:
        """Author -> how many of their claims peers we trust refuted. Only ever used to
        put claims later in the re-run queue or to not build on them before they are
        verified, never to accept one: a trusted peer who lies here can slow us down, not
        mislead us, and it loses our trust once we check one of them (`DISSENT`)."""
        reps = self.reputations() if reps is None else reps
        out: dict[bytes, int] = {}
        for peer, rep in reps.items():
            if rep < self.rules.trust_threshold or peer == self.me:
                continue
            for author, verdict, n in self.store.verdict_counts(peer):
                if verdict == "refuted" and author != self.me:
                    out[author] = out.get(author, 0) + n
        return out

    def is_verified(self, record: Record, reps: dict[bytes, float] | None = None) -> bool:
        """Ours or reproduced by us; else k trusted reproductions and no trusted refutation
        (a veto only ever removes a record, so a trusted peer cannot add a lie with it)."""
        mine = self.my_verdict(record)
        if mine is not None:
            return mine == "reproduced"
        reps = self.reputations() if reps is None else reps
        if reps.get(record.author, 0.0) < self.rules.liar_threshold:
            return False
        if self.trusted_refuters(record, reps):
            return False
        return len(self.trusted_attesters(record, reps)) >= self.rules.k

    def verified_by(self, record: Record) -> list[str]:
        """Who vouches for the record, as this node counts it: 'self' and/or peer ids."""
        mine = self.my_verdict(record)
        if mine == "refuted":
            return []
        out = ["self"] if mine == "reproduced" else []
        out += [peer_id_from_public_key(v) for v in self.trusted_attesters(record)]
        return out

    def predicate(self):
        """A `Record -> bool` for the scoreboard, with reputations read once per call site."""
        reps = self.reputations()
        return lambda record: self.is_verified(record, reps)

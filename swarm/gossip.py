"""Gossipsub for Loopy records: topics, validators, pacing, and punishing bad peers.

Topics (PROTOCOL.md): `loopy/1/<G>/<topic>` per research topic, where
experiments and attestations travel, and `loopy/1/<G>/heads`, which every node
joins and which carries announces. `G` is the 16-hex genome id.

What this module adds on top of py-libp2p's gossipsub, and why:

- `RecordValidator`: decode + verify (an injected `validate(data, topic)`),
  then check that the record's genome and kind/topic belong on the gossip
  topic it came on, then admit it under the per-forwarder and per-author
  record limits (`swarm.ratelimit`) and the storage budgets for strangers'
  records (`swarm.admission`). It never raises: an exception escaping a
  py-libp2p topic validator takes the whole node down, and any peer can send
  garbage.
- `forgive_ignored`: py-libp2p 0.8.1 knows only accept and reject, and a
  rejected message costs its forwarder score and is remembered as invalid. A
  valid record over a rate limit is neither: this gives it gossipsub's IGNORE
  (dropped, not forwarded, not scored, free to arrive again later).
- `PeerGuard`: counts rejected records per forwarding peer (gossip and sync)
  and strikes for floods that go on over the record limits, reads
  gossipsub's own score, and bans a peer that keeps misbehaving: pubsub
  blacklist, peerstore addresses dropped, and the connection closed (py-libp2p's
  blacklist alone only resets the pubsub stream).
- `Gossip`: gossipsub v1.1/v1.2 with strict signing, a 1 s heartbeat, spam
  limits sized for this workload, scoring that punishes invalid messages,
  content-addressed message ids (the same record published twice is one
  message), paced publishing (py-libp2p drops an RPC when a peer's 32-slot
  outbound queue is full), and subscription readers that drain promptly and
  skip our own publishes.
- py-libp2p's own costs and races that we contain are in `swarm.pubsub_fixes`.
"""
from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

import libp2p.pubsub.pubsub as libp2p_pubsub_module
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import ScoreParams, TopicScoreParams

from swarm.conventions import GENOME_RE, TOPIC_RE
from swarm.pubsub_fixes import cache_by_message_id, idontwant_only_for_large, running_service
from swarm.ratelimit import RecordRateLimit

log = logging.getLogger("loopy.swarm.gossip")

GOSSIP_PROTOCOLS = [PROTOCOL_ID_V12, PROTOCOL_ID_V11]
TOPIC_PREFIX = "loopy/1"
HEADS = "heads"
RESEARCH_KINDS = ("experiment", "attestation")
MAX_ENVELOPE = 192 * 1024


HEARTBEAT_S = 1
# py-libp2p counts messages per *forwarder* per topic: a relay passes on many
# authors' records, so the limit must sit well above any one author's rate.
SPAM_LIMIT_PER_TOPIC_S = 500.0
PUBLISH_RATE_PER_S = 100.0  # our own publishes, well under the spam limit
PACE_QUEUE_LEN = 12  # wait while any peer's outbound queue (32 slots) is this full
PACE_MAX_WAIT_S = 5.0
# ... but not for a queue that did not shrink for this long: its peer does not keep up (it
# is busy, stuck, or will not read: anyone can connect and never read), and waiting would
# only stall our own publishes, and the research loop that awaits them, for PACE_MAX_WAIT_S
# each (docs/LOG.md, 2026-12-03: what a flood made of such waits).
# Such a peer gets what fits in its queue; py-libp2p drops the rest for it alone, and
# IHAVE gossip and sync repair it. A healthy peer takes a queued RPC in milliseconds.
PACE_STALL_S = 0.25
SUBSCRIPTION_BUFFER = 1024  # py-libp2p's default of 32 drops on a burst


# --------------------------------------------------------------------------- topics

def valid_topic(topic: str) -> bool:
    """A research topic name: 1-32 chars of a-z 0-9 -."""
    return isinstance(topic, str) and TOPIC_RE.fullmatch(topic) is not None


def valid_genome(genome: str) -> bool:
    return isinstance(genome, str) and GENOME_RE.fullmatch(genome) is not None


def topic_name(genome: str, topic: str) -> str:
    """The gossip topic of a research topic (or `heads`) in swarm `genome`."""
    if not valid_genome(genome):
        raise ValueError(f"genome id must be 16 hex chars, got {genome!r}")
    if not valid_topic(topic):
        raise ValueError(f"topic must be 1-32 chars of a-z 0-9 -, got {topic!r}")
    return f"{TOPIC_PREFIX}/{genome}/{topic}"


def heads_topic(genome: str) -> str:
    return topic_name(genome, HEADS)


def parse_topic(name: str) -> tuple[str, str] | None:
    """`(genome, topic)` of a gossip topic name, or None when it is not ours."""
    if not isinstance(name, str):
        return None
    parts = name.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != TOPIC_PREFIX:
        return None
    genome, topic = parts[2], parts[3]
    if not valid_genome(genome) or not valid_topic(topic):
        return None
    return genome, topic


def placement_error(record: Any, gossip_topic: str, genome: str) -> str:
    """Why `record` does not belong on `gossip_topic` of swarm `genome` ("" if it does).

    Experiments and attestations travel on research topics (an experiment on
    its own topic; an attestation names no topic, so any research topic
    will do), announces on `heads`.
    """
    parsed = parse_topic(gossip_topic)
    if parsed is None:
        return "not a loopy topic"
    topic_genome, topic = parsed
    body = record.body
    if topic_genome != genome or body.get("genome") != genome:
        return "wrong genome"
    kind = record.kind
    if topic == HEADS:
        return "" if kind == "announce" else f"{kind} on heads topic"
    if kind not in RESEARCH_KINDS:
        return f"{kind} on research topic"
    if kind == "experiment" and body.get("topic") != topic:
        return "experiment topic does not match gossip topic"
    return ""


def gossip_topic_for(record: Any, genome: str, topic_of_target: Callable[[bytes], str | None]
                     = lambda _id: None, default_topic: str = "general") -> str:
    """The gossip topic a record is published on.

    Announces go to `heads`, experiments to their own topic, attestations to
    the topic of the experiment they verify (looked up by `topic_of_target`),
    else `default_topic`.
    """
    if record.kind == "announce":
        return heads_topic(genome)
    if record.kind == "experiment":
        return topic_name(genome, record.body["topic"])
    if record.kind == "attestation":
        topic = topic_of_target(record.body.get("target", b"")) or default_topic
        return topic_name(genome, topic)
    raise ValueError(f"cannot gossip a record of kind {record.kind!r}")


# --------------------------------------------------------------------------- peer guard

class _Ledger:
    """Exponentially decaying per-peer counter (half-life `half_life_s`)."""

    def __init__(self, half_life_s: float, clock: Callable[[], float]) -> None:
        self.rate = math.log(2) / half_life_s
        self.clock = clock
        self._value: dict[str, tuple[float, float]] = {}

    def add(self, peer: str, amount: float = 1.0) -> float:
        now = self.clock()
        self._value[peer] = (self.value(peer) + amount, now)
        if len(self._value) > 10_000:  # bounded under a peer-id flood
            for old, _ in sorted(self._value.items(), key=lambda kv: kv[1][1])[:5_000]:
                del self._value[old]
        return self._value[peer][0]

    def value(self, peer: str) -> float:
        if peer not in self._value:
            return 0.0
        amount, at = self._value[peer]
        return amount * math.exp(-self.rate * max(0.0, self.clock() - at))

    def forget(self, peer: str) -> None:
        self._value.pop(peer, None)


class PeerGuard:
    """Decides which peers are misbehaving and bans them for a while.

    `report(peer, reason)` is called for every invalid record a peer sent us
    (over gossip or sync), and once per `RecordLimits.drops_per_strike` valid
    records dropped for a flood it is to blame for; once the decayed count
    reaches `max_rejects` the peer is banned for `ban_s`. Plain functions: the
    actual disconnect happens in `Gossip`'s enforcement task, which drains
    `pending_bans()`.
    """

    def __init__(self, *, max_rejects: float = 5.0, half_life_s: float = 300.0,
                 ban_s: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_rejects = max_rejects
        self.ban_s = ban_s
        self.clock = clock
        self.rejects = _Ledger(half_life_s, clock)
        self._banned_until: dict[str, float] = {}
        self._pending: list[str] = []
        self.wakeup = trio.Event()

    def report(self, peer: str, reason: str) -> bool:
        """Count one invalid record from `peer`; True when this report bans it."""
        count = self.rejects.add(peer)
        log.debug("rejected record from %s (%s), count %.1f", peer, reason, count)
        # round(): the count decays between reports; a burst of 5 counts as 5
        if round(count, 1) >= self.max_rejects and not self.is_banned(peer):
            self.ban(peer, f"{count:.0f} invalid records, last: {reason}")
            return True
        return False

    def ban(self, peer: str, reason: str) -> None:
        if self.is_banned(peer):
            return
        log.warning("banning peer %s for %.0f s: %s", peer, self.ban_s, reason)
        self._banned_until[peer] = self.clock() + self.ban_s
        self._pending.append(peer)
        self.wakeup.set()

    def is_banned(self, peer: str) -> bool:
        until = self._banned_until.get(peer)
        return until is not None and until > self.clock()

    def banned(self) -> list[str]:
        return [p for p in self._banned_until if self.is_banned(p)]

    def pending_bans(self) -> list[str]:
        """Bans not yet enforced; clears the list."""
        out, self._pending = self._pending, []
        self.wakeup = trio.Event()
        return out

    def expired_bans(self) -> list[str]:
        """Bans whose time is up; forgets them (and their reject count)."""
        now = self.clock()
        out = [p for p, until in self._banned_until.items() if until <= now]
        for peer in out:
            del self._banned_until[peer]
            self.rejects.forget(peer)
        return out


# --------------------------------------------------------------------------- validator

ValidateFn = Callable[[bytes, str], "tuple[Any | None, str]"]


class RecordValidator:
    """The synchronous gossipsub topic validator for one node. Never raises.

    Invalid records are rejected and reported to the `guard`. Valid records
    over a rate limit (`limit`; `is_known(record id)` says which records our
    store already has, so that replays do not use up their author's allowance)
    are dropped as IGNORE: `ignored` then names the message for
    `forgive_ignored`. Our own publishes are never limited.
    Accepted records are remembered (bounded) by message id so the reader
    does not decode and verify them a second time.
    """

    def __init__(self, validate: ValidateFn, genome: str, guard: PeerGuard, my_id: ID, *,
                 limit: RecordRateLimit | None = None,
                 is_known: Callable[[bytes], bool] = lambda _id: False,
                 admit: Callable[[Any, str], Any] | None = None) -> None:
        self.validate = validate
        self.genome = genome
        self.guard = guard
        self.my_id = my_id
        self.limit = limit or RecordRateLimit()
        self.is_known = is_known
        # admit(record, forwarder) -> None, or why not (a storage budget): IGNORE too
        self.admit = admit
        self.accepted: OrderedDict[bytes, Any] = OrderedDict()
        self.forwarders: OrderedDict[bytes, str] = OrderedDict()  # message id -> peer
        self.storage_dropped = 0
        self.rejected = 0
        self.rate_limited = 0
        self.ignored: tuple[bytes, ID, str] | None = None  # (message id, forwarder, topic)

    def __call__(self, forwarder: ID, msg: Any) -> bool:
        self.ignored = None
        try:
            reason, record = self._check(msg)
        except Exception as error:  # never into py-libp2p: it would crash the node
            reason, record = f"validator error: {type(error).__name__}", None
        if record is not None:
            if forwarder != self.my_id and not self._admit(forwarder, record, msg):
                return False
            mid = message_id(msg)
            self.accepted[mid] = record
            try:
                self.forwarders[mid] = forwarder.to_base58()
            except Exception:
                pass
            while len(self.accepted) > 4096:
                self.accepted.popitem(last=False)
            while len(self.forwarders) > 4096:
                self.forwarders.popitem(last=False)
            return True
        self.rejected += 1
        try:
            if forwarder != self.my_id:
                self.guard.report(forwarder.to_base58(), reason)
        except Exception:  # a broken peer id must not escape either
            log.debug("could not report peer %r", forwarder, exc_info=True)
        return False

    def _admit(self, forwarder: ID, record: Any, msg: Any) -> bool:
        """Whether a valid record is within the limits; if not, mark it IGNORE."""
        try:
            peer = forwarder.to_base58()
            drop = self.limit.admit_gossip(peer, record.author_peer_id,
                                           new=not self.is_known(record.id))
            if drop is None and self.admit is not None:
                drop = self.admit(record, peer)  # a storage budget: nobody's fault
                self.storage_dropped += drop is not None
            if drop is None:
                return True
            if drop.strike:
                self.guard.report(peer, f"sustained flood: {drop.reason}")
        except Exception:  # a limiter bug is ours, not the peer's: drop, blame no one
            log.debug("rate limit check failed", exc_info=True)
        self.rate_limited += 1
        self.ignored = (message_id(msg), forwarder, list(msg.topicIDs)[0])
        return False

    def take_ignored(self, forwarder: ID, topic: str) -> bytes | None:
        """The message id of the validation just done if it was an IGNORE of a message
        from `forwarder` on `topic` (and forget it), else None."""
        ignored, self.ignored = self.ignored, None
        if ignored is not None and ignored[1] == forwarder and ignored[2] == topic:
            return ignored[0]
        return None

    def _check(self, msg: Any) -> tuple[str, Any]:
        topics = list(msg.topicIDs)
        if len(topics) != 1:
            return "message must carry exactly one topic", None
        data = bytes(msg.data)
        # cheapest checks first: size and topic before any decoding, and decoding
        # checks the signature before the patch is parsed (records.decode_envelope)
        if len(data) > MAX_ENVELOPE:
            return "envelope too large", None
        parsed = parse_topic(topics[0])
        if parsed is None or parsed[0] != self.genome:
            return "not a topic of this swarm", None
        record, reason = self.validate(data, topics[0])
        if record is None:
            return reason or "invalid record", None
        misplaced = placement_error(record, topics[0], self.genome)
        if misplaced:
            return misplaced, None
        return "", record


def message_id(msg: Any) -> bytes:
    """Content-addressed message id: the same record on the same topic is one message."""
    h = hashlib.sha256()
    for topic in msg.topicIDs:
        h.update(topic.encode("utf-8", "replace") + b"\x00")
    h.update(b"\xff")
    h.update(msg.data)
    return h.digest()


# --------------------------------------------------------------------------- router

def score_params() -> ScoreParams:
    """Scoring where each invalid message costs its forwarder 5 points.

    First deliveries earn a little (at most +10), so an honest relay that
    once forwards something odd is not cut off. About 4 invalid messages put
    a peer under the gossip threshold (no gossip to or from it), about 8
    under the publish threshold: py-libp2p then drops its messages before
    validation, so `Gossip` bans a peer whose score falls under the publish
    threshold. Co-location (P7) stays off: home networks and test machines
    put many honest nodes behind one IP.
    """
    return ScoreParams(
        p2_first_message_deliveries=TopicScoreParams(weight=0.5, cap=20.0, decay=0.99),
        p4_invalid_messages=TopicScoreParams(weight=5.0, cap=1000.0, decay=0.995),
        p5_behavior_penalty_weight=1.0,
        p5_behavior_penalty_threshold=10.0,
        p5_behavior_penalty_decay=0.99,
        gossip_threshold=-20.0,
        publish_threshold=-40.0,
        graylist_threshold=-80.0,
        accept_px_threshold=0.0,
    )


def forgive_ignored(pubsub: Pubsub, router: GossipSub, validator: RecordValidator) -> None:
    """Give the validator's rate-limit drops gossipsub's IGNORE semantics.

    py-libp2p 0.8.1 turns a False validator result into a ValidationError: the
    message is remembered as invalid (its validation cache, 300 s), and
    `push_msg` then calls `scorer.on_invalid_message(forwarder, topic)`, which
    costs the forwarder 5 points (8 such drops would get an honest but bursty
    relay banned). Both happen synchronously right after our validator
    returns, with no checkpoint between, so the scorer hook knows that the
    failure it hears about is the IGNORE the validator just recorded: it skips
    the penalty and drops the cached verdict, so the same record may still
    arrive (from anyone) once the limit allows it. Real rejections are scored
    as before.
    """
    scorer = router.scorer
    if scorer is None:  # no scoring: nothing penalises a drop
        return
    penalise = scorer.on_invalid_message

    def on_invalid_message(peer: ID, topic: str) -> None:
        ignored = validator.take_ignored(peer, topic)
        if ignored is None:
            penalise(peer, topic)
            return
        cache = pubsub.validation_cache
        cache.cache.pop(ignored, None)
        if ignored in cache.access_order:
            cache.access_order.remove(ignored)

    scorer.on_invalid_message = on_invalid_message  # type: ignore[method-assign]


def build_router() -> GossipSub:
    return GossipSub(
        protocols=GOSSIP_PROTOCOLS,
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=HEARTBEAT_S,
        heartbeat_initial_delay=0.1,
        gossip_window=3,
        gossip_history=5,
        score_params=score_params(),
        spam_protection_enabled=True,
        max_messages_per_topic_per_second=SPAM_LIMIT_PER_TOPIC_S,
    )


# --------------------------------------------------------------------------- gossip

@dataclass
class _Pacer:
    """Token bucket for our own publishes."""
    rate: float
    burst: float
    tokens: float = 0.0
    at: float = 0.0

    def delay(self, now: float) -> float:
        """Seconds to wait before the next publish (and take its token)."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Gossip:
    """A running gossipsub on one host (built by `open_gossip`)."""

    def __init__(self, host: IHost, pubsub: Pubsub, router: GossipSub, *, genome: str,
                 validator: RecordValidator, guard: PeerGuard,
                 on_record: Callable[[Any, str], None]) -> None:
        self.host = host
        self.pubsub = pubsub
        self.router = router
        self.genome = genome
        self.validator = validator
        self.guard = guard
        self.on_record = on_record
        self.my_id = host.get_id()
        self.topics: list[str] = []
        self.received = 0
        self._pacer = _Pacer(rate=PUBLISH_RATE_PER_S, burst=PUBLISH_RATE_PER_S / 2,
                             tokens=PUBLISH_RATE_PER_S / 2, at=time.monotonic())
        self._publish_lock = trio.Lock()
        self._queue_seen: dict[Any, tuple[int, float]] = {}  # peer -> (length, since)

    # -- reading
    async def _read(self, subscription: Any, topic: str) -> None:
        my_id = self.my_id.to_bytes()
        async for msg in subscription:
            mid = message_id(msg)
            record = self.validator.accepted.pop(mid, None)
            forwarder = self.validator.forwarders.pop(mid, None)
            if msg.from_id == my_id:
                continue  # our own publish, already stored by publish()
            if record is None:  # evicted from the cache under a burst: check again
                record, _ = self.validator.validate(bytes(msg.data), topic)
                if record is None or placement_error(record, topic, self.genome):
                    continue
            self.received += 1
            try:
                self.on_record(record, forwarder or ID(msg.from_id).to_base58())
            except Exception:  # a storage hiccup must not stop the reader
                log.exception("storing a gossiped record failed")

    # -- publishing
    async def publish(self, gossip_topic: str, envelope: bytes) -> None:
        """Publish one envelope, paced so that no peer queue overflows."""
        if len(envelope) > MAX_ENVELOPE:
            raise ValueError("envelope exceeds 192 KiB")
        async with self._publish_lock:
            await trio.sleep(self._pacer.delay(time.monotonic()))
            await self._wait_queues_drain()
            await self.pubsub.publish(gossip_topic, envelope)

    async def _wait_queues_drain(self) -> None:
        """Wait (at most PACE_MAX_WAIT_S) while a peer's outbound queue is nearly full, so
        that a burst of our own publishes does not overflow it; never for a queue that has
        not shrunk for PACE_STALL_S (see there)."""
        with trio.move_on_after(PACE_MAX_WAIT_S):
            while self._queues_draining():
                await trio.sleep(0.005)

    def _queues_draining(self) -> bool:
        """Whether a peer's queue is nearly full and still shrinking (or newly full)."""
        now = trio.current_time()
        seen, self._queue_seen = self._queue_seen, {}
        draining = False
        for peer, queue in list(self.pubsub.peer_queues.items()):
            length = len(queue)
            if length < PACE_QUEUE_LEN:
                continue
            before = seen.get(peer)
            if before is None or length < before[0]:
                before = (length, now)      # newly full, or it took something
            self._queue_seen[peer] = before
            draining |= now - before[1] < PACE_STALL_S
        return draining

    # -- peers
    def peer_topics(self) -> dict[str, set[str]]:
        """Peer id -> the loopy topics (short names) it subscribes to, as far as we know."""
        out: dict[str, set[str]] = {}
        for name, peers in list(self.pubsub.peer_topics.items()):
            parsed = parse_topic(name)
            if parsed is None or parsed[0] != self.genome:
                continue
            for peer in peers:
                out.setdefault(peer.to_base58(), set()).add(parsed[1])
        return out

    def score(self, peer: str) -> float:
        names = [topic_name(self.genome, t) for t in self.topics]
        try:
            return float(self.router.scorer.score(ID.from_base58(peer), names))
        except Exception:
            return 0.0

    def mesh_size(self, topic: str) -> int:
        return len(self.router.mesh.get(topic_name(self.genome, topic), ()))

    # -- enforcement
    async def _enforce(self) -> None:
        """Apply bans: blacklist, forget addresses, close connections; lift old ones."""
        while True:
            with trio.move_on_after(1.0):
                await self.guard.wakeup.wait()
            for peer in self._scored_out():
                self.guard.ban(peer, "gossipsub score under the publish threshold")
            for peer in self.guard.pending_bans():
                await self._cut_off(peer)
            for peer in self.guard.expired_bans():
                self.pubsub.remove_from_blacklist(ID.from_base58(peer))
            # A banned peer may dial us again: close it again.
            connected = {p.to_base58() for p in self.host.get_connected_peers()}
            for peer in connected & set(self.guard.banned()):
                await self._cut_off(peer)

    def _scored_out(self) -> list[str]:
        """Peers whose messages gossipsub already refuses (score under publish threshold)."""
        scorer = self.router.scorer
        names = [topic_name(self.genome, t) for t in self.topics]
        threshold = scorer.params.publish_threshold
        out = []
        for peer in list(self.pubsub.peers):
            try:
                if scorer.score(peer, names) < threshold:
                    out.append(peer.to_base58())
            except Exception:
                continue
        return [p for p in out if not self.guard.is_banned(p)]

    async def _cut_off(self, peer: str) -> None:
        try:
            peer_id = ID.from_base58(peer)
        except Exception:
            return
        self.pubsub.add_to_blacklist(peer_id)
        try:
            self.host.get_peerstore().clear_addrs(peer_id)
        except Exception:
            log.debug("could not clear addrs of %s", peer, exc_info=True)
        with trio.move_on_after(5.0):
            try:
                await self.host.disconnect(peer_id)
            except Exception:  # already gone, or a half-closed connection
                log.debug("disconnect %s failed", peer, exc_info=True)


@asynccontextmanager
async def open_gossip(host: IHost, *, genome: str, topics: Iterable[str], validate: ValidateFn,
                      on_record: Callable[[Any, str], None],
                      guard: PeerGuard | None = None, limit: RecordRateLimit | None = None,
                      is_known: Callable[[bytes], bool] = lambda _id: False,
                      admit: Callable[[Any, str], Any] | None = None
                      ) -> AsyncIterator[Gossip]:
    """Run gossipsub on a running `host`, subscribed to `topics` plus `heads`.

    `validate(data, gossip_topic)` decodes and verifies an envelope and
    returns `(record, "")` or `(None, reason)`; `on_record(record, peer id)`
    receives every valid record heard from others within the `limit` (default
    limits if None), with the peer that handed it to us (its author's peer id
    when that is not known); `is_known(record id)`: whether the store already
    has a record; `admit(record, forwarder)`: None to accept a valid record
    within the limits, else a `Drop` (a storage budget: swarm.admission), which
    is an IGNORE like a rate-limit drop.
    """
    if not valid_genome(genome):
        raise ValueError(f"genome id must be 16 hex chars, got {genome!r}")
    short_topics = sorted({t for t in topics if t != HEADS})
    for topic in short_topics:
        topic_name(genome, topic)  # raises on a bad name
    guard = guard or PeerGuard()
    # py-libp2p reads this module constant when it creates a subscription channel.
    libp2p_pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = max(
        SUBSCRIPTION_BUFFER, libp2p_pubsub_module.SUBSCRIPTION_CHANNEL_SIZE)
    router = build_router()
    pubsub = Pubsub(host, router, strict_signing=True, msg_id_constructor=message_id,
                    seen_ttl=300)
    validator = RecordValidator(validate, genome, guard, host.get_id(), limit=limit,
                                is_known=is_known, admit=admit)
    forgive_ignored(pubsub, router, validator)
    idontwant_only_for_large(router)
    cache_by_message_id(router, message_id)
    gossip = Gossip(host, pubsub, router, genome=genome, validator=validator, guard=guard,
                    on_record=on_record)
    async with running_service(pubsub, "pubsub"), running_service(router, "gossipsub"):
        await pubsub.wait_until_ready()
        async with trio.open_nursery() as nursery:
            for topic in [HEADS] + short_topics:
                name = topic_name(genome, topic)
                pubsub.set_topic_validator(name, validator, is_async_validator=False)
                subscription = await pubsub.subscribe(name)
                nursery.start_soon(gossip._read, subscription, name)
            gossip.topics = [HEADS] + short_topics
            nursery.start_soon(gossip._enforce)
            try:
                yield gossip
            finally:
                nursery.cancel_scope.cancel()


def jittered(seconds: float, spread: float = 0.2) -> float:
    """`seconds` +- `spread` (fraction), so that many nodes do not act in lockstep."""
    return seconds * (1.0 + random.uniform(-spread, spread))

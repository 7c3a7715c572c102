"""The swarm node's networking, composed: host + gossip + sync + discovery.

This is the one entry point `node.py` uses::

    async with open_swarm_node(identity, store, genome=genome_id(), topics=["optimizer"],
                               listen="/ip4/0.0.0.0/tcp/4011",
                               bootstrap=["/ip4/1.2.3.4/tcp/4011/p2p/12D3Koo..."]) as net:
        net.peer_id                 # our libp2p peer id (== identity.peer_id)
        net.listen_addrs()          # ["/ip4/127.0.0.1/tcp/4011/p2p/12D3Koo...", ...]
        net.connected_peers()       # [PeerStatus(peer_id, addrs, topics, last_seen, score)]
        await net.publish(record)   # store it, gossip it on the topic its kind says
        await net.announce(arena=..., working_on="...", head=best_id)  # and every minute
        await net.sync_now()        # catch up with every connected peer right away
        await net.connect(addr)     # dial one peer multiaddr now

or, as a trio service: `await nursery.start(serve_swarm, identity, store, ...)`
which returns the `SwarmNode` once it listens and runs until cancelled.

What happens underneath:

- every valid record heard on gossip or fetched by sync is verified
  (`records.decode_envelope`, with our genome id) and inserted into the store;
  announces also teach discovery the author's addresses;
- on each new connection, and every `sync_interval` seconds with a few
  connected peers, the node asks for heads in its topics, fetches the ones it
  lacks and then their missing ancestors (the store's wanted list) in batches
  of at most 256;
- valid records beyond the per-minute limits (`swarm.ratelimit`: per
  forwarding peer and per author over gossip, per author over sync) are
  dropped without blame and counted per peer (`connected_peers()`,
  `rate_limit.counts()`); pass `rate_limit=RecordRateLimit(RecordLimits(...))`
  to change the limits;
- what the node stores of strangers' records (authors it does not trust) is
  budgeted in bytes per sending peer, per author and for all strangers
  together (`swarm.admission`: the store grows by at most 160 MiB in an hour
  of attack); records whose parents or target it lacks wait in a bounded
  quarantine (`swarm.quarantine`) until those arrive; every `retention.interval_s`
  the strangers' records nothing it protects needs are pruned beyond a quota
  (`swarm.retention`); the peers it trusts are re-read from its own
  attestations (`swarm.trust`) every `MAINTAIN_S`;
- the sync server answers `heads` from an index kept up to date insert by
  insert (`swarm.heads`) and shares its streams and bytes fairly
  (`swarm.sync`); a catch-up pulls at most 32 MiB of answers;
- a peer whose records keep failing verification (gossip or sync), that
  keeps flooding over the record limits, or whose gossipsub score falls
  under the publish threshold is banned for an hour: blacklisted,
  disconnected, never redialled;
- discovery keeps bootstrap peers connected, redials peers that went away
  with exponential backoff, and remembers every peer in the store's peers
  table, so a restarted node rejoins without bootstrap addresses; it never
  dials private, loopback or link-local addresses learned from strangers
  unless it listens on that network itself or `lan=True` (or `mdns=True`).

The store is used from the trio thread only (it owns one SQLite connection).
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.peer.id import ID

from swarm import records as rec
from swarm import retention
from swarm.admission import Admission, Ingest, StorageBudgets
from swarm.discovery import Discovery, dialable, parse_peer_addr, strip_p2p
from swarm.gossip import (HEADS, Gossip, PeerGuard, gossip_topic_for, jittered, open_gossip,
                          placement_error, valid_topic)
from swarm.heads import HeadsIndex
from swarm.host import DEFAULT_LISTEN, host_addrs, open_host
from swarm.quarantine import Quarantine, QuarantineLimits
from swarm.ratelimit import RecordRateLimit
from swarm.retention import RetentionPolicy
from swarm.sync import MAX_CATCH_UP_BYTES, PROTOCOL_ID, SyncServer, catch_up, open_session
from swarm.trust import TrustPolicy, TrustRules

log = logging.getLogger("loopy.swarm.network")

SYNC_INTERVAL_S = 30.0
ANNOUNCE_INTERVAL_S = 60.0
SYNC_PEERS_PER_ROUND = 3
# A periodic round asks peers that finished a catch-up with us before (within this long)
# first, and one other: picked at random among all connected peers, a handful of honest
# peers among many Sybil connections that do not serve sync are almost never asked
# (docs/LOG.md, 2026-12-03, slow-sync).
SYNC_PROVEN_S = 3600.0
MAX_SYNC_PROVEN = 1024
MAX_PARALLEL_CATCH_UPS = 2
MAX_RECORDS_PER_CATCH_UP = 100_000
MAX_SYNC_HEADS = 30_000
CATCH_UP_DEADLINE_S = 300.0  # one catch-up, whatever the peer does
MAINTAIN_S = 30.0  # refresh trust, expire quarantined records and wanted ids


@dataclass(frozen=True)
class PeerStatus:
    peer_id: str
    addrs: list[str]
    topics: list[str]      # loopy topics it subscribes to ("heads" included)
    last_seen: float       # unix seconds: connection or last record authored
    score: float           # its gossipsub score as we see it
    dropped_forwarded: int = 0  # valid records it relayed to us over its forwarder limit
    dropped_authored: int = 0   # valid records it signed over its author limits (any relay)


def record_validator(genome: str) -> Callable[[bytes, str], tuple[Any, str]]:
    """`validate(data, gossip_topic)` built on `records.decode_envelope`; never raises."""
    def validate(data: bytes, _topic: str | None = None) -> tuple[Any, str]:
        try:
            return rec.decode_envelope(data, genome=genome, now_ms=rec.now_ms()), ""
        except rec.RecordError as error:
            return None, error.reason
        except Exception as error:  # a decoder bug must not reach libp2p
            log.exception("decode_envelope raised")
            return None, f"decoder error: {type(error).__name__}"
    return validate


class StorePeerBook:
    """The discovery peer book on top of the store's peers table."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def load_peers(self) -> list[tuple[str, list[str]]]:
        return [(p.peer_id, list(p.addrs)) for p in self.store.peers()]

    def save_peer(self, peer_id: str, addrs: list[str], last_seen_ms: int) -> None:
        self.store.upsert_peer(peer_id, addrs, last_seen_ms)


class _Notifee(INotifee):
    """Connection events from the libp2p swarm into the node."""

    def __init__(self, node: "SwarmNode") -> None:
        self.node = node

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self.node._on_connected(conn.muxed_conn.peer_id.to_base58())

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self.node._on_disconnected(conn.muxed_conn.peer_id.to_base58())

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Any) -> None:
        pass


class SwarmNode:
    """A running swarm node (see the module docstring); build it with `open_swarm_node`."""

    def __init__(self, identity: Any, store: Any, host: Any, *, genome: str,
                 topics: Sequence[str], guard: PeerGuard, discovery: Discovery,
                 validate: Callable[[bytes, str], tuple[Any, str]],
                 sync_interval: float, announce_interval: float,
                 rate_limit: RecordRateLimit | None = None,
                 budgets: StorageBudgets | None = None,
                 quarantine: QuarantineLimits | None = None,
                 retention_policy: RetentionPolicy | None = None,
                 trust_rules: TrustRules | None = None) -> None:
        self.identity = identity
        self.store = store
        self.host = host
        self.genome = genome
        self.topics = list(topics)
        self.guard = guard
        self.rate_limit = rate_limit or RecordRateLimit()
        self.discovery = discovery
        self.validate = validate
        self.sync_interval = sync_interval
        self.announce_interval = announce_interval
        self.peer_id: str = host.get_id().to_base58()
        self.gossip: Gossip | None = None
        self.sync_server = SyncServer(heads_for=self._heads_for, get_records=self._get_records,
                                      is_banned=guard.is_banned)
        # storage under a Sybil flood: budgets for strangers, quarantine, retention
        self.trust = TrustPolicy(store, identity.public_key, trust_rules)
        self.trusted: frozenset[bytes] = frozenset({identity.public_key})
        self.admission = Admission(budgets, trusted=lambda author: author in self.trusted)
        self.quarantine = Quarantine(quarantine)
        self.ingest = Ingest(store, self.admission, self.quarantine)
        self.retention = retention_policy or RetentionPolicy()
        self.heads = HeadsIndex(store, limit=MAX_SYNC_HEADS)
        self.last_prune: retention.PruneReport | None = None
        self.refresh_trust()
        self.records_from_gossip = 0
        self.records_from_sync = 0
        self.catch_ups = 0
        self._last_seen: dict[str, float] = {}
        self._catching_up: set[str] = set()
        self._synced_at: dict[str, float] = {}  # peer -> when a catch-up with it finished
        self._catch_up_slots = trio.Semaphore(MAX_PARALLEL_CATCH_UPS)
        self._sync_requests, self._sync_queue = trio.open_memory_channel[str](256)
        self._announce_state: dict[str, Any] | None = None
        self._announce_changed = trio.Event()

    # ------------------------------------------------------------------ public API

    def listen_addrs(self) -> list[str]:
        """Our addresses, each with `/p2p/<peer id>`."""
        return host_addrs(self.host)

    def connected_peers(self) -> list[PeerStatus]:
        peer_topics = self.gossip.peer_topics() if self.gossip else {}
        out = []
        for peer_id in self.host.get_connected_peers():
            key = peer_id.to_base58()
            try:
                addrs = [str(a) for a in self.host.get_peerstore().addrs(peer_id)]
            except Exception:
                addrs = []
            forwarded, authored = self.rate_limit.dropped_from(key)
            out.append(PeerStatus(
                peer_id=key, addrs=addrs, topics=sorted(peer_topics.get(key, ())),
                last_seen=self._last_seen.get(key, 0.0),
                score=self.gossip.score(key) if self.gossip else 0.0,
                dropped_forwarded=forwarded, dropped_authored=authored))
        return sorted(out, key=lambda p: p.peer_id)

    async def publish(self, record: Any) -> None:
        """Store `record` (idempotent) and gossip it: announces on `heads`, experiments
        on their topic, attestations on the topic of the record they verify."""
        topic = gossip_topic_for(record, self.genome, self._topic_of)
        # py-libp2p silently drops a local publish its validator refuses: say so instead
        checked, reason = self.validate(record.envelope, topic)
        reason = reason or (placement_error(checked, topic, self.genome) if checked else "")
        if checked is None or reason:
            raise ValueError(f"refusing to publish an invalid record: {reason}")
        self.store.insert(checked, local=checked.author == self.identity.public_key)
        assert self.gossip is not None
        await self.gossip.publish(topic, record.envelope)

    async def announce(self, *, arena: str, working_on: str = "",
                       head: bytes | None = None) -> Any:
        """Publish an announce now, and repeat it every `announce_interval` seconds."""
        self._announce_state = {"arena": arena, "working_on": working_on, "head": head}
        record = self._make_announce()
        await self.publish(record)
        self._announce_changed.set()
        return record

    async def sync_now(self) -> int:
        """Catch up with every connected peer now; returns the number of records stored."""
        before = self.records_from_sync
        async with trio.open_nursery() as nursery:
            for peer_id in self.host.get_connected_peers():
                nursery.start_soon(self._catch_up_with, peer_id.to_base58())
        return self.records_from_sync - before

    async def connect(self, addr: str) -> str:
        """Dial a peer multiaddr (with `/p2p/<id>`) now; returns its peer id."""
        info = self.discovery.add_explicit(addr)  # the caller chose it: always dialable
        with trio.fail_after(15):
            await self.host.connect(info)
        return info.peer_id.to_base58()

    def refresh_trust(self) -> None:
        """Re-read whom we trust (us, and authors whose claims we reproduced up to the
        trust threshold): their records bypass the storage budgets and are never
        pruned, and what they reference is `needed`."""
        rules = self.trust.rules
        reps = self.trust.reputations()
        self.trusted = frozenset({self.identity.public_key} | {
            author for author, rep in reps.items() if rep >= rules.trust_threshold})
        self.store.trusted_authors = self.trusted

    def prune_now(self, now_ms: int | None = None) -> "retention.PruneReport":
        """Delete strangers' records nothing we protect needs, beyond the quota."""
        self.refresh_trust()
        report = retention.prune(self.store, keep_authors=self.trusted,
                                 policy=self.retention, now_ms=now_ms)
        self.last_prune = report
        return report

    def storage_status(self) -> dict[str, Any]:
        """Counters of what the node stored, dropped, quarantined and pruned, and of its
        sync server (for `status --json`, logs and benchmarks)."""
        q, server = self.quarantine, self.sync_server
        prune = self.last_prune
        return {
            "strangers_admitted": self.admission.admitted,
            "strangers_charged_bytes": self.admission.charged,
            "strangers_budget_left_bytes": int(self.admission.budget_left()),
            "dropped": dict(self.admission.dropped),
            "gossip_storage_dropped": self.gossip.validator.storage_dropped
            if self.gossip else 0,
            "quarantine": {"records": len(q), "bytes": q.bytes, "added": q.stats.added,
                           "released": q.stats.released, "expired": q.stats.expired,
                           "evicted": q.stats.evicted},
            "wanted": self.store.wanted_count(),
            "trusted_authors": len(self.trusted),
            "last_prune": None if prune is None else {
                "deleted": prune.deleted, "freed_bytes": prune.freed_bytes,
                "unprotected_bytes": prune.unprotected_bytes},
            "sync_server": {"served": server.served, "refused": server.refused,
                            "preempted": server.preempted, "timed_out": server.timed_out,
                            "open_streams": sum(server._open.values())},
        }

    # ------------------------------------------------------------------ records in

    def _on_gossip(self, record: Any, forwarder: str) -> None:
        self.records_from_gossip += 1
        author = record.author_peer_id
        self._last_seen[author] = time.time()
        # the gossip validator charged the storage budgets already
        self.ingest.offer(record, forwarder, admitted=True)
        if record.kind == "announce":
            self.discovery.note_addrs(author, list(record.addrs))

    def _store_synced(self, records: list[Any], peer: str = "") -> int:
        """Store a verified sync batch, less what its authors' sync limits and the storage
        budgets drop (they are not the serving peer's fault, so not reported: a later
        sync asks again); records whose parents we lack go to quarantine. Returns how
        many records were stored (quarantined ones released by the batch included)."""
        admitted = [r for r in records if self.rate_limit.admit_synced(r.author_peer_id) is None]
        stored = self.ingest.offer_many(admitted, peer)
        self.records_from_sync += stored
        return stored

    # ------------------------------------------------------------------ serving sync

    def _heads_for(self, topics: Sequence[str]) -> list[bytes]:
        """Experiment heads in `topics` (all topics if empty), then the attestations of
        experiments in them: what a late joiner needs, besides ancestors it can ask for.
        From the heads index (swarm.heads), kept up to date insert by insert."""
        wanted_topics = sorted({t for t in topics if valid_topic(t) and t != HEADS})
        return self.heads.answer(wanted_topics)

    def _get_records(self, ids: Sequence[bytes]) -> list[bytes]:
        out = []
        for record_id in ids:
            record = self.store.get(record_id)
            if record is not None:
                out.append(record.envelope)
        return out

    def _topic_of(self, record_id: bytes) -> str | None:
        record = self.store.get(record_id) if isinstance(record_id, bytes) else None
        return record.topic if record is not None and record.kind == "experiment" else None

    # ------------------------------------------------------------------ connections

    def _on_connected(self, peer: str) -> None:
        self._last_seen[peer] = time.time()
        self.discovery.on_connected(peer)
        try:
            self._sync_requests.send_nowait(peer)
        except trio.WouldBlock:
            pass  # the periodic round will get to it

    def _on_disconnected(self, peer: str) -> None:
        self._last_seen[peer] = time.time()
        self.discovery.on_disconnected(peer)

    # ------------------------------------------------------------------ background tasks

    async def _catch_up_with(self, peer: str) -> None:
        if peer in self._catching_up or self.guard.is_banned(peer):
            return
        self._catching_up.add(peer)
        try:
            async with self._catch_up_slots:
                with trio.fail_after(CATCH_UP_DEADLINE_S):
                    async with open_session(self.host, ID.from_base58(peer)) as session:
                        result = await catch_up(
                            session, self.topics, missing=self.ingest.unknown,
                            wanted=self.store.wanted, verify=lambda env: self.validate(env, ""),
                            store=lambda records: self._store_synced(records, peer),
                            report=lambda reason: self.guard.report(peer, f"sync: {reason}"),
                            on_missed=self.store.missed,
                            keep_going=lambda: self.admission.budget_left() >= 1 << 20,
                            max_records=MAX_RECORDS_PER_CATCH_UP,
                            max_bytes=MAX_CATCH_UP_BYTES)
            self.catch_ups += 1
            self._synced_at.pop(peer, None)
            self._synced_at[peer] = time.monotonic()
            while len(self._synced_at) > MAX_SYNC_PROVEN:
                del self._synced_at[next(iter(self._synced_at))]
            if result.stored:
                log.info("synced %d records from %s", result.stored, peer)
            self.discovery.remember(peer)
        except Exception as error:  # the peer left, refused, timed out, or sent garbage
            log.debug("catch-up with %s failed: %r", peer, error)
        finally:
            self._catching_up.discard(peer)

    async def _sync_on_connect(self) -> None:
        async with trio.open_nursery() as nursery:
            async for peer in self._sync_queue:
                nursery.start_soon(self._catch_up_with, peer)

    def _periodic_sync_peers(self, peers: Sequence[str]) -> list[str]:
        """Whom a periodic round asks: up to SYNC_PEERS_PER_ROUND - 1 peers a catch-up
        finished with within SYNC_PROVEN_S, and one other (so new peers get their turn);
        random among each kind, the rest of the round filled from either."""
        now = time.monotonic()
        peers = list(peers)
        random.shuffle(peers)
        proven = [p for p in peers
                  if p in self._synced_at and now - self._synced_at[p] < SYNC_PROVEN_S]
        known = set(proven)
        others = [p for p in peers if p not in known]
        chosen = proven[:SYNC_PEERS_PER_ROUND - 1] + others[:1]
        rest = [p for p in proven + others if p not in chosen]
        return chosen + rest[:SYNC_PEERS_PER_ROUND - len(chosen)]

    async def _sync_periodically(self) -> None:
        while True:
            await trio.sleep(jittered(self.sync_interval))
            peers = [p.to_base58() for p in self.host.get_connected_peers()]
            async with trio.open_nursery() as nursery:
                for peer in self._periodic_sync_peers(peers):
                    nursery.start_soon(self._catch_up_with, peer)

    async def _maintain(self) -> None:
        """Every MAINTAIN_S: whom we trust, expired quarantine and wanted ids; every
        `retention.interval_s`: prune."""
        last_prune = time.monotonic()
        while True:
            await trio.sleep(jittered(MAINTAIN_S))
            try:
                self.refresh_trust()
                self.quarantine.expire()
                self.store.expire_wanted()
                if time.monotonic() - last_prune >= self.retention.interval_s:
                    last_prune = time.monotonic()
                    self.prune_now()
            except Exception:  # a storage hiccup must not stop the node
                log.exception("store maintenance failed")

    def _make_announce(self) -> Any:
        state = self._announce_state or {}
        addrs = [a for a in self.listen_addrs() if dialable(strip_p2p(a))][:rec.MAX_LIST_LEN]
        return rec.make_announce(self.identity, genome=self.genome, topics=self.topics,
                                 arena=state["arena"], working_on=state["working_on"],
                                 addrs=addrs, head=state["head"])

    async def _announce_periodically(self) -> None:
        while True:
            with trio.move_on_after(jittered(self.announce_interval)):
                await self._announce_changed.wait()
                self._announce_changed = trio.Event()
                continue
            if self._announce_state is not None:
                try:
                    await self.publish(self._make_announce())
                except rec.RecordError as error:
                    log.warning("cannot announce: %s", error.reason)


@asynccontextmanager
async def open_swarm_node(identity: Any, store: Any, *, genome: str, topics: Sequence[str],
                          listen: str = DEFAULT_LISTEN, bootstrap: Sequence[str] = (),
                          mdns: bool = False, lan: bool = False,
                          validate: Callable[[bytes, str], tuple[Any, str]] | None = None,
                          sync_interval: float = SYNC_INTERVAL_S,
                          announce_interval: float = ANNOUNCE_INTERVAL_S,
                          target_peers: int = 8,
                          guard: PeerGuard | None = None,
                          rate_limit: RecordRateLimit | None = None,
                          budgets: StorageBudgets | None = None,
                          quarantine: QuarantineLimits | None = None,
                          retention_policy: RetentionPolicy | None = None,
                          trust_rules: TrustRules | None = None
                          ) -> AsyncIterator[SwarmNode]:
    """Run a swarm node for the duration of the block (see the module docstring).

    `identity`: a `NodeIdentity` (its seed keys the host); `store`: a `Store`;
    `genome`: the 16-hex genome id; `topics`: research topics to join (`heads`
    is always joined); `validate(data, topic)` defaults to
    `records.decode_envelope` with our genome id; `rate_limit` to
    `RecordRateLimit()` with the default `RecordLimits` (see swarm.ratelimit for
    why they never cut honest traffic); `budgets`, `quarantine` and
    `retention_policy`: what it stores of strangers' records (swarm.admission,
    swarm.quarantine, swarm.retention); `trust_rules`: whom it trusts (swarm.trust);
    `lan=True` lets discovery dial private, loopback and link-local addresses peers
    announce (swarm.discovery).
    """
    topics = sorted({t for t in topics if t != HEADS})
    for topic in topics:
        if not valid_topic(topic):
            raise ValueError(f"topic must be 1-32 chars of a-z 0-9 -, got {topic!r}")
    for addr in bootstrap:
        parse_peer_addr(addr)  # fail early, with the address in the message
    validate = validate or record_validator(genome)
    guard = guard or PeerGuard()
    async with open_host(identity.seed, listen, mdns=mdns) as host:
        discovery = Discovery(host, bootstrap=bootstrap, peer_book=StorePeerBook(store),
                              is_banned=guard.is_banned, target_peers=target_peers,
                              lan=lan or mdns)
        node = SwarmNode(identity, store, host, genome=genome, topics=topics, guard=guard,
                         discovery=discovery, validate=validate, sync_interval=sync_interval,
                         announce_interval=announce_interval, rate_limit=rate_limit,
                         budgets=budgets, quarantine=quarantine,
                         retention_policy=retention_policy, trust_rules=trust_rules)
        host.set_stream_handler(PROTOCOL_ID, node.sync_server.handle_stream)
        notifee = _Notifee(node)
        try:
            async with open_gossip(host, genome=genome, topics=topics, validate=validate,
                                   on_record=node._on_gossip, guard=guard,
                                   limit=node.rate_limit, is_known=node.ingest.known,
                                   admit=node.ingest.admit) as gossip:
                node.gossip = gossip
                host.get_network().register_notifee(notifee)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(node._sync_on_connect)
                        nursery.start_soon(node._sync_periodically)
                        nursery.start_soon(node._announce_periodically)
                        nursery.start_soon(node._maintain)
                        await nursery.start(discovery.run)
                        try:
                            yield node
                        finally:
                            nursery.cancel_scope.cancel()
                finally:
                    host.get_network().remove_notifee(notifee)
        finally:
            node.ingest.close()
            node.heads.close()


async def serve_swarm(identity: Any, store: Any, *, genome: str, topics: Sequence[str],
                      listen: str = DEFAULT_LISTEN, bootstrap: Sequence[str] = (),
                      task_status: Any = trio.TASK_STATUS_IGNORED, **options: Any) -> None:
    """`open_swarm_node` as a trio service: `node = await nursery.start(serve_swarm, ...)`."""
    async with open_swarm_node(identity, store, genome=genome, topics=topics, listen=listen,
                               bootstrap=bootstrap, **options) as node:
        task_status.started(node)
        await trio.sleep_forever()

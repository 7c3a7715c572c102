"""swarm.ratelimit and its use in gossip and sync: records accepted per minute per peer.

The buckets and the validator run on an injected clock (no sleeps); two tests use real
libp2p nodes on 127.0.0.1 to check that py-libp2p treats a rate-limit drop as IGNORE
(no score penalty, no cached invalid verdict) and that sync's limit holds records back
without blaming the serving peer.
"""
import random
import time

import pytest
import trio

from libp2p.peer.id import ID
from libp2p.pubsub.pubsub import ValidationCache, ValidationResult

from swarm import gossip as gossip_mod
from swarm import records as rec
from swarm.discovery import parse_peer_addr
from swarm.gossip import PeerGuard, RecordValidator, forgive_ignored, message_id
from swarm.identity import NodeIdentity
from swarm.network import record_validator
from swarm.ratelimit import (AUTHOR_OVER, FORWARDER_OVER, MAX_TRACKED, RateLimiter,
                             RecordLimits, RecordRateLimit)
from swarm.sync import FrameReader, SyncServer, encode_frame

from live_swarm import (G, ROOT, TOPIC, in_mesh, raw_publisher, subscribed, swarm_node,
                        wait_for)

ARENA = "embedded/tokens:300000/cpu"


def experiment(identity, i=0, parent=ROOT):
    return rec.make_experiment(identity, genome=G, parents=[parent], topic="optimizer",
                               arena=ARENA, patch="", desc=f"edit {i}", agent="mutate",
                               result={"status": "ok", "val_bpb": 1.5 + i / 1000})


class Msg:
    """What the validator reads of a py-libp2p message."""

    def __init__(self, record, topic=TOPIC):
        self.data = record.envelope if hasattr(record, "envelope") else record
        self.topicIDs = [topic]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def peer():
    return ID.from_base58(NodeIdentity.generate().peer_id)


def validator_with(limits, clock, guard=None, is_known=lambda _id: False):
    me = peer()
    guard = guard or PeerGuard()
    limit = RecordRateLimit(limits, clock=clock)
    return RecordValidator(record_validator(G), G, guard, me, limit=limit,
                           is_known=is_known), guard, me


# --------------------------------------------------------------------------- buckets

def test_bucket_gives_a_burst_then_refills_at_its_rate():
    clock = Clock()
    bucket = RateLimiter(rate=2.0, burst=5.0, clock=clock)
    assert [bucket.allow("p") for _ in range(7)] == [True] * 5 + [False] * 2
    assert bucket.allow("q")  # another key has its own bucket
    clock.now += 1.0  # two tokens back
    assert bucket.tokens("p") == pytest.approx(2.0)
    assert bucket.tokens("p") == pytest.approx(2.0)  # looking takes nothing
    assert [bucket.allow("p") for _ in range(3)] == [True, True, False]
    clock.now += 1000.0  # never more than the burst
    assert bucket.tokens("p") == 5.0
    clock.now -= 10.0  # a clock that steps back does not mint tokens
    assert bucket.tokens("p") == 5.0


def test_bucket_table_stays_bounded_under_a_key_flood():
    clock = Clock()
    bucket = RateLimiter(rate=0.0, burst=1.0, clock=clock, max_keys=100)
    assert bucket.allow("flooder") and not bucket.allow("flooder")
    for i in range(1000):
        clock.now += 0.001
        bucket.allow(f"sybil-{i}")
        assert not bucket.allow("flooder")  # always the freshest: never forgotten
    assert len(bucket._buckets) <= 101


def test_limits_refuse_nonsense():
    with pytest.raises(ValueError):
        RecordLimits(author_burst=0)
    with pytest.raises(ValueError):
        RecordLimits(forwarder_per_min=-1)
    with pytest.raises(ValueError):
        RecordLimits(drops_per_strike=0)
    with pytest.raises(ValueError):
        RateLimiter(rate=1.0, burst=0.5)


# --------------------------------------------------------------------------- honest traffic

def swarm_traffic(nodes, seconds, rng, run_s=300.0):
    """(time, author) of what `nodes` honest nodes publish in `seconds`: per run an announce
    at the start, the experiment at the end, an attestation in one run of five, and an
    announce every 60 s (docs/SCALING.md's model)."""
    events = []
    for n in range(nodes):
        author = f"node-{n}"
        start = rng.uniform(0, run_s)
        t = start
        while t < seconds:
            events.append((t, author))
            events.append((t + run_s - 1, author))
            if rng.random() < 0.2:
                events.append((t + run_s - 0.5, author))
            t += run_s
        t = rng.uniform(0, 60)
        while t < seconds:
            events.append((t, author))
            t += 60.0
    return events


def test_honest_traffic_through_a_single_relay_is_never_dropped():
    rng = random.Random(3)
    clock = Clock()
    limit = RecordRateLimit(clock=clock)
    # A leaf whose one peer hands it everything, for an hour: 100 GPU nodes (5-minute
    # runs), a CPU node (75 s runs), a synthetic bench node (4 s runs, the fastest the
    # scaling bench goes), and a node publishing a backlog of 80 records at once.
    events = swarm_traffic(100, 3600, rng)
    events += [(t, "cpu") for t, _ in swarm_traffic(1, 3600, rng, run_s=75.0)]
    events += [(t, "synthetic") for t, _ in swarm_traffic(1, 3600, rng, run_s=4.0)]
    events += [(1800 + k / 100, "backlog") for k in range(80)]
    for t, author in sorted(events):
        clock.now = t
        assert limit.admit_gossip("relay", author) is None, (t, author)
    assert limit.dropped == 0 and limit.counts() == {"forwarder": {}, "author": {},
                                                     "sync_author": {}}


def test_a_thousand_node_swarm_through_one_relay_is_never_dropped():
    clock = Clock()
    limit = RecordRateLimit(clock=clock)
    events = swarm_traffic(1000, 600, random.Random(5))
    assert len(events) / 600 > 20  # about 21 records a second (SCALING.md)
    for t, author in sorted(events):
        clock.now = t
        assert limit.admit_gossip("relay", author) is None
    assert limit.dropped == 0


def test_a_late_joiner_syncs_a_whole_history_at_once():
    clock = Clock()
    limit = RecordRateLimit(clock=clock)
    # a day of a 100-node swarm (35,000 records, 350 per author), then a GPU node's
    # month (about 10,000 records): all within the sync allowance at once
    for n in range(100):
        assert all(limit.admit_synced(f"node-{n}") is None for _ in range(350))
    assert all(limit.admit_synced("gpu-month") is None for _ in range(10_000))
    assert limit.dropped == 0
    # the fastest CPU node's month (40,000) takes minutes, not forever
    admitted = sum(limit.admit_synced("cpu-month") is None for _ in range(40_000))
    assert admitted == 20_000
    clock.now += 600
    assert sum(limit.admit_synced("cpu-month") is None for _ in range(20_000)) == 20_000


# --------------------------------------------------------------------------- floods

def test_a_flooding_forwarder_is_cut_off_while_another_gets_through():
    clock = Clock()
    limits = RecordLimits(forwarder_burst=10, forwarder_per_min=60)
    validator, guard, _ = validator_with(limits, clock)
    flooder, relay = peer(), peer()
    sybils = [experiment(NodeIdentity.generate(), i) for i in range(50)]  # 50 fresh keys
    accepted = [validator(flooder, Msg(r)) for r in sybils]
    assert accepted == [True] * 10 + [False] * 40
    honest = [experiment(NodeIdentity.generate(), 100 + i) for i in range(5)]
    assert all(validator(relay, Msg(r)) for r in honest)
    assert validator.rate_limited == 40 and validator.rejected == 0
    assert guard.rejects.value(flooder.to_base58()) == 0  # a drop is not a reject
    flooder_id = flooder.to_base58()
    assert validator.limit.dropped_from(flooder_id) == (40, 0)
    assert validator.limit.counts()["forwarder"] == {flooder_id: 40}
    clock.now += 5.0  # one record a second comes back
    more = [experiment(NodeIdentity.generate(), 200 + i) for i in range(8)]
    assert [validator(flooder, Msg(r)) for r in more] == [True] * 5 + [False] * 3


def test_a_flood_signed_by_one_author_is_cut_off_whoever_relays_it():
    clock = Clock()
    limits = RecordLimits(author_burst=10, author_per_min=0, drops_per_strike=1)
    validator, guard, _ = validator_with(limits, clock)
    liar, honest = NodeIdentity.generate(), NodeIdentity.generate()
    relays = [peer() for _ in range(3)]
    flood = [experiment(liar, i) for i in range(30)]
    accepted = [validator(relays[i % 3], Msg(r)) for i, r in enumerate(flood)]
    assert sum(accepted) == 10 and accepted[:10] == [True] * 10
    assert validator.limit.counts()["author"] == {liar.peer_id: 20}
    # the relays are not to blame, even at one strike per drop
    assert all(guard.rejects.value(r.to_base58()) == 0 for r in relays)
    # an honest author's records still get through the same relays
    assert all(validator(r, Msg(experiment(honest, 50 + i))) for i, r in enumerate(relays))
    # the liar sending his own flood straight to us is to blame
    liar_id = ID.from_base58(liar.peer_id)
    assert validator(liar_id, Msg(experiment(liar, 99))) is False
    assert guard.rejects.value(liar.peer_id) == pytest.approx(1.0)


def test_a_sustained_flood_earns_strikes_until_banned_but_a_burst_does_not():
    clock = Clock()
    limits = RecordLimits(forwarder_burst=5, forwarder_per_min=60, drops_per_strike=10)
    validator, guard, _ = validator_with(limits, clock, PeerGuard(clock=clock))
    bursty, flooder = peer(), peer()
    authors = [NodeIdentity.generate() for _ in range(8)]
    # a one-off burst of 14 over the limit: one strike, which fades
    for i in range(19):
        validator(bursty, Msg(experiment(authors[i % 8], i)))
    assert guard.rejects.value(bursty.to_base58()) == pytest.approx(1.0)
    # 50 over the limit (5 strikes) within seconds: banned
    for i in range(55):
        clock.now += 0.01
        validator(flooder, Msg(experiment(authors[i % 8], 1000 + i)))
    assert guard.is_banned(flooder.to_base58())
    assert not guard.is_banned(bursty.to_base58())


def test_replays_of_known_records_do_not_use_up_their_authors_allowance():
    clock = Clock()
    author = NodeIdentity.generate()
    old = [experiment(author, i) for i in range(10)]
    known = {r.id for r in old}
    limits = RecordLimits(author_burst=2, author_per_min=0)
    validator, _, _ = validator_with(limits, clock, is_known=lambda rid: rid in known)
    mallory = peer()
    assert all(validator(mallory, Msg(r)) for r in old)  # replayed: no new records
    fresh = [experiment(author, 100 + i) for i in range(3)]
    assert [validator(peer(), Msg(r)) for r in fresh] == [True, True, False]


def test_our_own_publishes_are_never_limited():
    clock = Clock()
    limits = RecordLimits(forwarder_burst=1, author_burst=1, author_per_min=0,
                          forwarder_per_min=0)
    validator, _, me = validator_with(limits, clock)
    mine = NodeIdentity.generate()
    assert all(validator(me, Msg(experiment(mine, i))) for i in range(20))
    assert validator.rate_limited == 0


def test_a_broken_limiter_drops_without_raising_or_blaming():
    class Broken:
        def admit_gossip(self, *args, **kwargs):
            raise RuntimeError("limiter bug")

    guard = PeerGuard()
    validator = RecordValidator(record_validator(G), G, guard, peer(), limit=Broken())
    sender = peer()
    assert validator(sender, Msg(experiment(NodeIdentity.generate()))) is False
    assert validator.ignored is not None and validator.rejected == 0
    assert guard.rejects.value(sender.to_base58()) == 0


# --------------------------------------------------------------------------- IGNORE

def test_forgive_ignored_skips_the_penalty_and_the_cached_verdict():
    clock = Clock()
    validator, _, _ = validator_with(RecordLimits(author_burst=1, author_per_min=0), clock)
    router = gossip_mod.build_router()

    class FakePubsub:
        validation_cache = ValidationCache()

    forgive_ignored(FakePubsub, router, validator)
    sender, author = peer(), NodeIdentity.generate()
    assert validator(sender, Msg(experiment(author, 1)))
    over = Msg(experiment(author, 2))
    # what py-libp2p's push_msg does on False: cache the verdict, then score it
    assert validator(sender, over) is False
    FakePubsub.validation_cache.put(message_id(over), ValidationResult(False, time.time()))
    router.scorer.on_invalid_message(sender, TOPIC)
    assert router.scorer.invalid_messages[sender][TOPIC] == 0
    assert FakePubsub.validation_cache.get(message_id(over)) is None
    # a real rejection is still scored
    assert validator(sender, Msg(b"garbage")) is False
    router.scorer.on_invalid_message(sender, TOPIC)
    assert router.scorer.invalid_messages[sender][TOPIC] == 1
    # an ignore is forgiven once, and only for the peer and topic it was for
    assert validator(sender, Msg(experiment(author, 3))) is False
    router.scorer.on_invalid_message(peer(), TOPIC)
    router.scorer.on_invalid_message(sender, TOPIC)
    assert router.scorer.invalid_messages[sender][TOPIC] == 2


# --------------------------------------------------------------------------- sync requests

class FakeStream:
    """Reads come from `chunks`, then end of stream; writes are collected."""

    def __init__(self, chunks=()):
        self.chunks = list(chunks)
        self.written = b""

    async def read(self, n=None):
        await trio.lowlevel.checkpoint()
        return self.chunks.pop(0) if self.chunks else b""

    async def write(self, data):
        self.written += data

    async def close(self):
        pass

    async def reset(self):
        pass


async def ask(server, peer_id, *requests):
    stream = FakeStream([encode_frame(r) for r in requests])
    await server.serve(stream, peer_id)
    reader, replies = FrameReader(FakeStream([stream.written])), []
    while (reply := await reader.read_frame()) is not None:
        replies.append(reply)
    return replies


async def test_sync_server_limits_costly_heads_requests_harder_than_gets():
    clock = Clock()
    head = bytes(32)
    server = SyncServer(heads_for=lambda topics: [head], get_records=lambda ids: [],
                        limiter=RateLimiter(10.0, 100.0, clock),
                        heads_limiter=RateLimiter(1 / 3, 10.0, clock))
    heads, get = {"op": "heads", "topics": []}, {"op": "get", "ids": [head]}
    replies = await ask(server, "greedy", *[heads] * 12)
    assert replies == [{"heads": [head]}] * 10 + [{"error": "rate limited"}]
    assert await ask(server, "greedy", *[get] * 5) == [{"records": []}] * 5
    assert await ask(server, "polite", heads) == [{"heads": [head]}]
    clock.now += 3.0  # one heads request every 3 s
    assert await ask(server, "greedy", heads, heads) == [{"heads": [head]},
                                                         {"error": "rate limited"}]
    # the default: ten at once, far above one per catch-up
    assert SyncServer(heads_for=list, get_records=list).heads_limiter.burst == 10


# --------------------------------------------------------------------------- live nodes

async def test_a_live_flood_is_ignored_not_scored_and_counted_per_peer(tmp_path):
    liar, honest = NodeIdentity.generate(), NodeIdentity.generate()
    limit = RecordRateLimit(RecordLimits(author_burst=5, author_per_min=0))
    async with swarm_node(tmp_path / "b", rate_limit=limit) as b, \
            swarm_node(tmp_path / "a", bootstrap=b.listen_addrs(), identity=honest) as a, \
            raw_publisher(liar.seed) as (host, pubsub):
        await host.connect(parse_peer_addr(b.listen_addrs()[0]))
        await wait_for(lambda: subscribed(b, liar.peer_id) and subscribed(a, b.peer_id))
        await wait_for(lambda: in_mesh(pubsub.router, b) and in_mesh(a.gossip.router, b))
        flood = [experiment(liar, i) for i in range(30)]

        def seen():  # flood records b's validator has decided on
            return sum(b.store.has(r.id) for r in flood) + b.gossip.validator.rate_limited

        for i, record in enumerate(flood):
            # one at a time: py-libp2p drops RPCs when a peer's outbound queue is full
            await pubsub.publish(TOPIC, record.envelope)
            await wait_for(lambda: seen() > i)
        assert b.gossip.validator.rate_limited == 25
        assert sum(b.store.has(r.id) for r in flood) == 5
        # IGNORE: no invalid-message penalty, no cached invalid verdict, no ban
        liar_id = ID.from_base58(liar.peer_id)
        assert sum(b.gossip.router.scorer.invalid_messages[liar_id].values()) == 0
        assert b.gossip.score(liar.peer_id) >= 0
        assert all(v.is_valid for v in b.gossip.pubsub.validation_cache.cache.values())
        assert not b.guard.is_banned(liar.peer_id) and b.gossip.validator.rejected == 0
        status = {p.peer_id: p for p in b.connected_peers()}
        assert (status[liar.peer_id].dropped_authored,
                status[liar.peer_id].dropped_forwarded) == (25, 0)
        assert status[a.peer_id].dropped_authored == status[a.peer_id].dropped_forwarded == 0
        # another peer's records still get through
        record = experiment(honest, 77)
        await a.publish(record)
        await wait_for(lambda: b.store.has(record.id))


async def test_sync_holds_back_an_author_over_its_limit_without_blaming_the_server(tmp_path):
    clock = Clock()
    author = NodeIdentity.generate()
    history = [experiment(author, i) for i in range(20)]
    limit = RecordRateLimit(RecordLimits(sync_author_burst=8, sync_author_per_min=480),
                            clock=clock)
    async with swarm_node(tmp_path / "a") as a:
        for record in history:
            a.store.insert(record)
        async with swarm_node(tmp_path / "d", bootstrap=a.listen_addrs(), rate_limit=limit,
                              sync_interval=3600) as d:
            await wait_for(lambda: d.catch_ups >= 1)
            assert sum(d.store.has(r.id) for r in history) == 8
            assert d.guard.rejects.value(a.peer_id) == 0  # the server did nothing wrong
            assert limit.counts()["sync_author"][author.peer_id] >= 12
            for _ in range(3):
                clock.now += 1.0  # 8 tokens back
                await d.sync_now()
            assert all(d.store.has(r.id) for r in history)
            assert d.guard.rejects.value(a.peer_id) == 0


def test_drop_reasons_name_the_limit():
    clock = Clock()
    limit = RecordRateLimit(RecordLimits(forwarder_burst=1, forwarder_per_min=0,
                                         author_burst=1, author_per_min=0), clock=clock)
    assert limit.admit_gossip("f", "a") is None
    assert limit.admit_gossip("f", "b").reason == FORWARDER_OVER
    assert limit.admit_gossip("g", "a").reason == AUTHOR_OVER
    assert limit.admit_gossip("g", "a", new=False) is None  # known: the author is not charged


def test_drop_counters_stay_bounded():
    clock = Clock()
    limit = RecordRateLimit(RecordLimits(author_burst=1, author_per_min=0), clock=clock)
    for i in range(MAX_TRACKED + 10):
        limit.admit_gossip(f"relay-{i % 7}", f"author-{i}")
        limit.admit_gossip(f"relay-{i % 7}", f"author-{i}")
    assert len(limit.dropped_authored) <= MAX_TRACKED
    assert limit.dropped == MAX_TRACKED + 10

"""A fair sync server (issue 18, point 3): per-peer and global budgets, slow-stream
deadlines, streams that give way to an honest newcomer when many peer ids or a few slow
streams hold the cap, and a bound on what one malicious server pushes per catch-up.

Most tests use fake streams on trio's mock clock; one runs real libp2p on 127.0.0.1.
"""
import hashlib
import random

import pytest
import trio

from swarm import records as rec
from swarm import sync
from swarm.host import open_host
from swarm.identity import NodeIdentity
from swarm.network import open_swarm_node
from swarm.ratelimit import RateLimiter
from swarm.store import Store
from swarm.sync import MAX_CATCH_UP_BYTES, MAX_FRAME, PROTOCOL_ID, SyncServer, catch_up, \
    encode_frame

G = "0123456789abcdef"
ROOT = hashlib.sha256(b"base train.py").digest()
ARENA = "embedded/tokens:300000/cpu"
LOOP = "/ip4/127.0.0.1/tcp/0"


class FakeStream:
    """Reads come from `chunks`, then EOF or (with `hang`) nothing ever; with
    `hang_writes` the peer never takes what we write."""

    def __init__(self, chunks=(), hang=False, hang_writes=False):
        self.chunks = list(chunks)
        self.hang = hang
        self.hang_writes = hang_writes
        self.written = bytearray()
        self.closed = False
        self.was_reset = False

    async def read(self, n=None):
        await trio.lowlevel.checkpoint()
        if self.chunks:
            return self.chunks.pop(0)
        if self.hang:
            await trio.sleep_forever()
        return b""

    async def write(self, data):
        if self.hang_writes:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        self.written += data

    async def close(self):
        self.closed = True

    async def reset(self):
        self.was_reset = True


def rid(n):
    return n.to_bytes(32, "big")


def replies_of(stream):
    out, data = [], bytes(stream.written)
    while data:
        length = shift = 0
        while True:
            byte, data = data[0], data[1:]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        out.append(sync.decode_body(data[:length]))
        data = data[length:]
    return out


def server_with(n_records=10, trio_clock=False, **kw):
    records = {rid(i): b"env-%d" % i for i in range(n_records)}
    server = SyncServer(heads_for=lambda topics: list(records),
                        get_records=lambda ids: [records[i] for i in ids if i in records], **kw)
    if trio_clock:  # buckets refill with trio's (mock) clock, as deadlines run on it
        for name in ("limiter", "heads_limiter", "global_limiter", "global_heads_limiter",
                     "bytes_limiter", "global_bytes_limiter", "stream_limiter"):
            getattr(server, name).clock = trio.current_time
    return server


HONEST = [encode_frame({"op": "heads", "topics": []}),
          encode_frame({"op": "get", "ids": [rid(1), rid(2)]})]


async def test_an_honest_peer_is_served_while_many_peer_ids_hold_slow_streams(autojump_clock):
    server = server_with(trio_clock=True)
    stop = trio.Event()

    async def sybil(n):  # holds a stream that never asks, opens another when it is reset
        rng = random.Random(n)
        while not stop.is_set():
            stream = FakeStream(hang=True, hang_writes=n % 2 == 0)
            if n % 3 == 0:  # some ask once, then never read the answer
                stream.chunks = [encode_frame({"op": "get", "ids": [rid(n)]})]
            await server.serve(stream, f"sybil-{n}")
            await trio.sleep(rng.uniform(0.5, 2))

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for n in range(300):
                nursery.start_soon(sybil, n)
            await trio.sleep(3)
            # the cap is full (give or take streams that are giving way right now)
            assert sum(server._open.values()) >= server.max_streams - 8
            waits = []
            for attempt in range(20):  # honest catch-ups, one after the other
                honest = FakeStream(list(HONEST))
                start = trio.current_time()
                await server.serve(honest, f"honest-{attempt % 3}")
                waits.append(trio.current_time() - start)
                assert replies_of(honest) == [{"heads": [rid(i) for i in range(10)]},
                                              {"records": [b"env-1", b"env-2"]}]
                assert honest.closed and not honest.was_reset
                await trio.sleep(random.Random(attempt).uniform(0.5, 5))
                assert sum(server._open.values()) <= server.max_streams + 2
            stop.set()
            nursery.cancel_scope.cancel()
    assert max(waits) < 0.1  # each one served at once, never queued behind the slow ones
    assert server.preempted >= 20 and server.refused > 0


async def test_slow_streams_are_reset_at_their_deadlines(autojump_clock):
    server = server_with()
    silent = FakeStream(hang=True)
    start = trio.current_time()
    await server.serve(silent, "silent")
    assert silent.was_reset and sync.FIRST_REQUEST_S <= trio.current_time() - start < 6
    not_reading = FakeStream([HONEST[0]], hang=True, hang_writes=True)
    start = trio.current_time()
    await server.serve(not_reading, "not-reading")
    assert not_reading.was_reset
    assert sync.WRITE_TIMEOUT_S <= trio.current_time() - start < sync.WRITE_TIMEOUT_S + 1

    class Dribble(FakeStream):  # a request every 9 s, forever: the stream deadline ends it
        async def read(self, n=None):
            await trio.sleep(9)
            return HONEST[1]

    dribble = Dribble()
    start = trio.current_time()
    await server.serve(dribble, "dribbler")
    assert dribble.was_reset and trio.current_time() - start <= sync.STREAM_DEADLINE_S + 1
    assert server._open == {} and server.timed_out == 3


async def test_one_peer_holds_at_most_its_share_of_streams(autojump_clock):
    server = server_with()
    streams = []
    async with trio.open_nursery() as nursery:
        for _ in range(20):
            stream = FakeStream(hang=True)
            streams.append(stream)
            nursery.start_soon(server.serve, stream, "greedy")
        await trio.sleep(0.5)
        assert server._open == {"greedy": server.max_streams_per_peer}
        honest = FakeStream(list(HONEST))
        await server.serve(honest, "honest")
        assert len(replies_of(honest)) == 2
    assert sum(s.was_reset for s in streams) == 20 and server._open == {}


async def test_global_budgets_bound_what_many_peer_ids_get_together():
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    server = server_with(
        global_limiter=RateLimiter(100.0, 400.0, clock, max_keys=1),
        global_heads_limiter=RateLimiter(2.0, 20.0, clock, max_keys=1))
    answered = 0
    for n in range(1000):  # a thousand peer ids, each within its own allowance
        stream = FakeStream([HONEST[0]])
        await server.serve(stream, f"sybil-{n}")
        answered += "heads" in replies_of(stream)[0]
    assert answered == 20  # the global heads burst; the node answered no more
    now[0] += 2.0  # 200 requests' worth of budget comes back
    gets = 0
    for n in range(1000):
        stream = FakeStream([HONEST[1]] * 3)
        await server.serve(stream, f"sybil-{n}")
        gets += sum("records" in r for r in replies_of(stream))
    assert gets == 200  # what the shared bucket held: the flood's cost has a ceiling
    now[0] += 10.0  # budgets refill with time
    stream = FakeStream(list(HONEST))
    await server.serve(stream, "honest")
    assert [list(r) for r in replies_of(stream)] == [["heads"], ["records"]]


async def test_bytes_answered_are_budgeted_per_peer():
    now = [0.0]
    big = {rid(i): bytes([i]) * (100 * 1024) for i in range(10)}
    server = SyncServer(heads_for=lambda t: [], get_records=lambda ids: [big[i] for i in ids],
                        bytes_limiter=RateLimiter(1 << 20, 2 << 20, lambda: now[0]))
    ask = encode_frame({"op": "get", "ids": list(big)})
    stream = FakeStream([ask] * 5)
    await server.serve(stream, "hungry")
    replies = replies_of(stream)
    assert [list(r) for r in replies] == [["records"], ["records"], ["error"]]
    other = FakeStream([ask])
    await server.serve(other, "other")
    assert list(replies_of(other)[0]) == ["records"]


# --------------------------------------------------------------------------- catch-up bound

class Pusher:
    """A malicious server: every head it names is a maximum-size record it will send."""

    def __init__(self, n, size=190 * 1024):
        self.records = {rid(i): rid(i) + bytes(size) for i in range(n)}

    async def heads(self, topics):
        return list(self.records)

    async def get(self, ids):
        return sync.bounded_records(self.records[i] for i in ids if i in self.records)


class Toy:
    def __init__(self, record_id):
        self.id = record_id


async def test_a_malicious_server_pushes_at_most_the_catch_up_bound():
    pusher = Pusher(400)  # 400 records of 190 KiB: 74 MiB on offer
    stored = []
    result = await catch_up(pusher, [], missing=lambda ids: [i for i in ids],
                            wanted=lambda: [], verify=lambda env: (Toy(env[:32]), ""),
                            store=lambda records: stored.extend(records) or len(records))
    assert result.received_bytes <= MAX_CATCH_UP_BYTES + MAX_FRAME
    assert result.received_bytes >= MAX_CATCH_UP_BYTES
    assert len(stored) < 200


async def test_a_catch_up_stops_when_the_storage_budget_is_spent():
    pusher = Pusher(2000, size=1000)
    calls = []
    result = await catch_up(pusher, [], missing=lambda ids: list(ids), wanted=lambda: [],
                            verify=lambda env: (Toy(env[:32]), ""),
                            store=lambda records: calls.append(len(records)) or 0,
                            keep_going=lambda: False)
    assert calls == [256] and result.requested == 256


async def test_only_wanted_ids_a_peer_was_asked_for_count_as_missed():
    wanted_ids = [rid(1000 + i) for i in range(300)]
    for max_bytes, expected in ((1 << 20, 0), (MAX_CATCH_UP_BYTES, 300)):
        missed = []
        await catch_up(Pusher(10), [], missing=lambda ids: list(ids),
                       wanted=lambda: wanted_ids, verify=lambda env: (Toy(env[:32]), ""),
                       store=len, on_missed=missed.extend, max_bytes=max_bytes)
        assert sorted(missed) == wanted_ids[:expected]


# --------------------------------------------------------------------------- live nodes

def experiment(identity, i, parent):
    return rec.make_experiment(identity, genome=G, parents=[parent], topic="optimizer",
                               arena=ARENA, patch="", desc=f"edit {i}", agent="mutate",
                               result={"status": "ok", "val_bpb": 1.5 + i / 1000})


async def test_a_late_joiner_syncs_while_slow_streams_hold_the_server(tmp_path):
    """Node A's sync server has 4 stream slots; an attacker host keeps all of them busy
    with streams that never ask anything (re-opening each one the moment it is reset).
    A late joiner still gets A's whole history within seconds."""
    author = NodeIdentity.generate()
    records, parent = [], ROOT
    for i in range(40):
        records.append(experiment(author, i, parent if i % 4 else ROOT))
        parent = records[-1].id
    store_a = Store.open(tmp_path / "a", root_id=ROOT)
    store_d = Store.open(tmp_path / "d", root_id=ROOT)
    store_a.insert_many(records)
    try:
        with trio.fail_after(60):
            async with open_swarm_node(NodeIdentity.generate(), store_a, genome=G,
                                       topics=["optimizer"], listen=LOOP) as a:
                a.sync_server.max_streams = 4
                a.sync_server.max_streams_per_peer = 4
                attacker_key = NodeIdentity.generate()
                async with open_host(attacker_key.seed, LOOP) as evil:
                    from swarm.discovery import parse_peer_addr
                    info = parse_peer_addr(a.listen_addrs()[0])
                    await evil.connect(info)
                    stop = trio.Event()
                    opened = [0]

                    async def hold():
                        while not stop.is_set():
                            try:
                                stream = await evil.new_stream(info.peer_id, [PROTOCOL_ID])
                                opened[0] += 1
                                await stream.read(1)  # until A resets it
                            except Exception:
                                pass
                            await trio.sleep(0.05)

                    async with trio.open_nursery() as nursery:
                        for _ in range(6):
                            nursery.start_soon(hold)
                        with trio.fail_after(10):
                            while sum(a.sync_server._open.values()) < 4:
                                await trio.sleep(0.05)
                        await trio.sleep(1.5)
                        async with open_swarm_node(NodeIdentity.generate(), store_d, genome=G,
                                                   topics=["optimizer"], listen=LOOP,
                                                   bootstrap=a.listen_addrs()) as d:
                            with trio.fail_after(20):
                                while not all(store_d.has(r.id) for r in records):
                                    await trio.sleep(0.05)
                            assert d.records_from_sync == len(records)
                        stop.set()
                        nursery.cancel_scope.cancel()
                assert opened[0] >= 4 and a.sync_server.preempted >= 1
    finally:
        store_a.close()
        store_d.close()


@pytest.fixture(autouse=True)
def _quiet_libp2p(caplog):
    caplog.set_level("ERROR", logger="libp2p")

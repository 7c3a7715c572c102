"""swarm.sync: framing against hostile input, server limits, and the catch-up policy.

No sockets: a `FakeStream` stands in for a libp2p stream. Timeouts run on
trio's mock clock (pytest-trio's `autojump_clock`).
"""
import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm import sync
from swarm.sync import (MAX_FRAME, MAX_GET_IDS, FrameError, FrameReader, RateLimiter,
                        SyncServer, SyncSession, catch_up, encode_frame, encode_varint)


class FakeStream:
    """Reads come from `chunks` (then EOF, or a hang if `hang`); writes are collected."""

    def __init__(self, chunks=(), hang=False):
        self.chunks = list(chunks)
        self.hang = hang
        self.written = bytearray()
        self.closed = False
        self.was_reset = False
        self.reads = 0

    async def read(self, n=None):
        self.reads += 1
        await trio.lowlevel.checkpoint()
        if self.chunks:
            chunk = self.chunks.pop(0)
            if n is not None and len(chunk) > n:
                self.chunks.insert(0, chunk[n:])
                chunk = chunk[:n]
            return chunk
        if self.hang:
            await trio.sleep_forever()
        return b""

    async def write(self, data):
        await trio.lowlevel.checkpoint()
        self.written += data

    async def close(self):
        self.closed = True

    async def reset(self):
        self.was_reset = True


def frames_in(data: bytes) -> list[dict]:
    """Decode every frame a server wrote (independently of FrameReader); fails the test
    on anything malformed."""
    out, data = [], bytes(data)
    while data:
        length = shift = 0
        while True:
            byte = data[0]
            data = data[1:]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        assert 0 < length <= MAX_FRAME and len(data) >= length
        message = msgpack.unpackb(data[:length], raw=False)
        assert isinstance(message, dict)
        out.append(message)
        data = data[length:]
    return out


def rid(n: int) -> bytes:
    return n.to_bytes(32, "big")


def make_server(records=None, heads=None, **kw):
    records = records or {}
    return SyncServer(heads_for=lambda topics: list(heads or []),
                      get_records=lambda ids: [records[i] for i in ids if i in records], **kw)


async def serve(server, *chunks, peer="peer"):
    stream = FakeStream(chunks)
    await server.serve(stream, peer)
    return stream, frames_in(stream.written)


# --------------------------------------------------------------------------- framing

@given(st.integers(min_value=0, max_value=2 ** 63))
def test_varint_round_trip(value):
    async def run():
        return await FrameReader(FakeStream([encode_varint(value)])).read_varint(2 ** 64)
    assert trio.run(run) == value


def test_encode_frame_refuses_oversized_messages():
    with pytest.raises(ValueError):
        encode_frame({"records": [b"x" * MAX_FRAME]})


async def test_oversized_prefix_is_refused_before_reading_the_body():
    stream = FakeStream([encode_varint(MAX_FRAME + 1)], hang=True)
    with pytest.raises(FrameError, match="limit"):
        await FrameReader(stream).read_frame(MAX_FRAME)
    stream = FakeStream([encode_varint(2 ** 62)])
    with pytest.raises(FrameError):
        await FrameReader(stream).read_frame(MAX_FRAME)


@pytest.mark.parametrize("data, match", [
    (b"\x85", "prefix"),                        # stream ends inside the prefix
    (b"\xff" * 12, "limit|too long"),           # endless prefix
    (encode_varint(10) + b"abc", "inside"),     # truncated body
    (encode_varint(0), "empty"),
    (encode_varint(3) + b"\xc1\xc1\xc1", "msgpack"),  # reserved byte
    (encode_varint(2) + msgpack.packb([1]), "not a map"),
    (encode_varint(1) + b"\x01", "not a map"),
])
async def test_reader_rejects_malformed_frames(data, match):
    with pytest.raises(FrameError, match=match):
        await FrameReader(FakeStream([data])).read_frame(MAX_FRAME)


async def test_reader_reassembles_frames_split_across_reads():
    data = encode_frame({"op": "heads", "topics": ["a"]}) + encode_frame({"op": "get", "ids": []})
    chunks = [data[i:i + 3] for i in range(0, len(data), 3)]
    reader = FrameReader(FakeStream(chunks))
    assert await reader.read_frame() == {"op": "heads", "topics": ["a"]}
    assert await reader.read_frame() == {"op": "get", "ids": []}
    assert await reader.read_frame() is None


# --------------------------------------------------------------------------- server

async def test_server_answers_heads_get_and_unknown_op():
    records = {rid(1): b"env-1", rid(2): b"env-2"}
    server = make_server(records, heads=[rid(1), rid(2)])
    stream, replies = await serve(
        server,
        encode_frame({"op": "heads", "topics": ["optimizer"]}),
        encode_frame({"op": "get", "ids": [rid(2), rid(9), rid(1)]}),
        encode_frame({"op": "gossip-me-everything"}))
    assert replies == [{"heads": [rid(1), rid(2)]}, {"records": [b"env-2", b"env-1"]},
                       {"error": "unknown op"}]
    assert stream.closed


@pytest.mark.parametrize("request_", [
    {"op": "get", "ids": [rid(1)] * (MAX_GET_IDS + 1)},
    {"op": "get", "ids": [b"short"]},
    {"op": "get", "ids": "not a list"},
    {"op": "get"},
    {"op": "heads", "topics": [1, 2]},
    {"op": "heads", "topics": ["x" * 33]},
    {"op": 7},
    {"no": "op"},
])
async def test_server_refuses_malformed_requests(request_):
    server = make_server({rid(1): b"env"}, heads=[rid(1)])
    stream, replies = await serve(server, encode_frame(request_),
                                  encode_frame({"op": "heads", "topics": []}))
    assert replies == [{"error": "bad request"}]  # and nothing after it
    assert stream.closed


async def test_server_bounds_responses_to_one_mebibyte():
    big = {rid(i): bytes([i]) * (190 * 1024) for i in range(10)}
    server = make_server(big)
    stream, replies = await serve(server, encode_frame({"op": "get", "ids": list(big)}))
    records = replies[0]["records"]
    assert 0 < len(records) < 10
    assert records == [big[rid(i)] for i in range(len(records))]
    assert len(stream.written) <= MAX_FRAME + 4


async def test_server_refuses_oversized_request_prefix():
    stream, replies = await serve(make_server(), encode_varint(sync.MAX_REQUEST_FRAME + 1))
    assert replies == [{"error": "bad request"}]


async def test_server_rate_limits_per_peer():
    clock_now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=3.0, clock=lambda: clock_now[0])
    server = make_server(heads=[rid(1)], limiter=limiter)
    ask = encode_frame({"op": "heads", "topics": []})
    _, replies = await serve(server, *[ask] * 5, peer="greedy")
    assert replies[:3] == [{"heads": [rid(1)]}] * 3
    assert replies[3:] == [{"error": "rate limited"}]
    _, replies = await serve(server, ask, peer="polite")  # another peer is unaffected
    assert replies == [{"heads": [rid(1)]}]
    clock_now[0] += 2.0  # tokens come back with time
    _, replies = await serve(server, ask, ask, ask, peer="greedy")
    assert replies == [{"heads": [rid(1)]}] * 2 + [{"error": "rate limited"}]


async def test_server_refuses_banned_peers_and_too_many_streams():
    server = make_server(heads=[rid(1)], is_banned=lambda peer: peer == "mallory")
    stream, replies = await serve(server, encode_frame({"op": "heads", "topics": []}),
                                  peer="mallory")
    assert replies == [] and stream.was_reset
    server._open["busy"] = server.max_streams_per_peer
    stream, replies = await serve(server, encode_frame({"op": "heads", "topics": []}),
                                  peer="busy")
    assert replies == [] and stream.was_reset


async def test_server_gives_up_on_a_silent_peer(autojump_clock):
    server = make_server()
    stream = FakeStream([encode_varint(100) + b"partial"], hang=True)
    start = trio.current_time()
    await server.serve(stream, "slowloris")
    # a new stream's first request is due within FIRST_REQUEST_S; past it the stream is
    # reset, with no goodbye written to a peer that may not be reading
    assert sync.FIRST_REQUEST_S <= trio.current_time() - start < sync.FIRST_REQUEST_S + 1
    assert frames_in(stream.written) == []
    assert stream.was_reset and server._open == {} and server.timed_out == 1


async def test_server_resets_a_stream_that_goes_quiet_after_a_request(autojump_clock):
    server = make_server(heads=[rid(1)])
    stream = FakeStream([encode_frame({"op": "heads", "topics": []})], hang=True)
    start = trio.current_time()
    await server.serve(stream, "dawdler")
    assert frames_in(stream.written) == [{"heads": [rid(1)]}]
    assert sync.READ_TIMEOUT_S <= trio.current_time() - start < sync.READ_TIMEOUT_S + 1
    assert stream.was_reset and server._open == {}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_random_bytes_never_crash_the_server(chunks):
    server = make_server({rid(1): b"env"}, heads=[rid(1)])
    stream = FakeStream(chunks)
    trio.run(server.serve, stream, "fuzzer")
    for reply in frames_in(stream.written):  # whatever it wrote is well-formed
        assert set(reply) <= {"heads", "records", "error"}
    assert stream.closed or stream.was_reset
    assert server._open == {}


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1) | st.floats()
    | st.text(max_size=40) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5), max_leaves=30))
def test_random_msgpack_values_never_crash_the_server(value):
    server = make_server({rid(1): b"env"}, heads=[rid(1)])
    body = msgpack.packb({"op": "get", "ids": value} if isinstance(value, list) else value)
    stream = FakeStream([encode_varint(len(body)) + body])
    trio.run(server.serve, stream, "fuzzer")
    for reply in frames_in(stream.written):
        assert set(reply) <= {"heads", "records", "error"}


# --------------------------------------------------------------------------- client

class ScriptedPeer:
    """A SyncSession whose stream is served by an in-process SyncServer."""

    def __init__(self, server):
        self.server = server

    async def heads(self, topics):
        return sync.parse_heads(self.server.answer(sync.Request("heads", topics=tuple(topics))))

    async def get(self, ids):
        return sync.parse_records(self.server.answer(sync.Request("get", ids=tuple(ids))))


class Toy:
    """A toy record: id + b"valid" is well signed, anything else is not."""

    def __init__(self, record_id):
        self.id = record_id


class LocalStore:
    """What catch_up needs of our side: ids we have, ids we want, verify and store."""

    def __init__(self, parents):
        self.parents = parents  # id -> parent ids (the DAG of this toy swarm)
        self.have = set()
        self.reports = []

    def missing(self, ids):
        return [i for i in ids if i not in self.have]

    def wanted(self):
        return [p for i in self.have for p in self.parents.get(i, ()) if p not in self.have]

    @staticmethod
    def verify(envelope):
        if envelope[32:] != b"valid":
            return None, "bad signature"
        return Toy(envelope[:32]), ""

    def store(self, records):
        self.have.update(r.id for r in records)

    def run(self, peer, topics=()):
        return catch_up(peer, list(topics), missing=self.missing, wanted=self.wanted,
                        verify=self.verify, store=self.store, report=self.reports.append)


async def test_catch_up_fetches_heads_then_ancestors():
    # a chain 1 <- 2 <- ... <- 600 plus 100 leaves on record 300
    parents = {rid(i): [rid(i - 1)] for i in range(2, 601)}
    parents.update({rid(1000 + i): [rid(300)] for i in range(100)})
    heads = [rid(600)] + [rid(1000 + i) for i in range(100)]
    envelopes = {i: i + b"valid" for i in list(parents) + [rid(1)]}
    ours = LocalStore(parents)
    result = await ours.run(ScriptedPeer(make_server(envelopes, heads=heads)), ["optimizer"])
    assert ours.have == set(envelopes)
    assert result.stored == len(envelopes) and result.rejected == 0 and ours.reports == []


async def test_catch_up_refuses_unrequested_and_invalid_records_and_ends():
    parents = {rid(2): [rid(1)], rid(3): [rid(99)]}  # nobody has rid(99)

    class Liar(SyncServer):
        def answer(self, request):
            if request.op == "get":
                return {"records": [i + b"valid" for i in request.ids if i != rid(99)]
                        + [rid(50) + b"valid", rid(2) + b"forged"]}
            return super().answer(request)

    server = Liar(heads_for=lambda t: [rid(2), rid(3)], get_records=lambda ids: [])
    ours = LocalStore(parents)
    result = await ours.run(ScriptedPeer(server))
    assert ours.have == {rid(1), rid(2), rid(3)}  # never the unrequested rid(50)
    assert result.rejected == len(ours.reports) > 0
    assert set(ours.reports) == {"record not requested", "bad signature"}


async def test_catch_up_against_a_withholding_peer_terminates():
    ours = LocalStore({rid(2): [rid(1)]})
    result = await ours.run(ScriptedPeer(make_server({}, heads=[rid(i) for i in range(2, 2000)])))
    assert result.stored == 0 and result.requested == 1998


async def test_session_talks_to_server_over_a_duplex_pipe():
    records = {rid(1): b"env-1"}
    server = make_server(records, heads=[rid(1)])
    to_server_send, to_server_recv = trio.open_memory_channel(100)
    to_client_send, to_client_recv = trio.open_memory_channel(100)

    class End:
        def __init__(self, send, recv):
            self.send, self.recv = send, recv

        async def read(self, n=None):
            try:
                return await self.recv.receive()
            except trio.EndOfChannel:
                return b""

        async def write(self, data):
            await self.send.send(bytes(data))

        async def close(self):
            await self.send.aclose()

        async def reset(self):
            await self.send.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve, End(to_client_send, to_server_recv), "client")
        session = SyncSession(End(to_server_send, to_client_recv))
        assert await session.heads(["optimizer"]) == [rid(1)]
        assert await session.get([rid(1), rid(2)]) == [b"env-1"]
        with pytest.raises(FrameError, match="unknown op"):
            sync.parse_records(await session.request({"op": "nope"}))
        await session.stream.close()

"""`/loopy/sync/1.0.0`: request/response record sync for late joiners and healed partitions.

Wire format (PROTOCOL.md): every message is an unsigned-varint length prefix
followed by a msgpack map, at most 1 MiB.

    {"op": "heads", "topics": [str, ...]}  ->  {"heads": [id, ...]}
    {"op": "get", "ids": [id, ...]}        ->  {"records": [envelope, ...]}   (<= 256 ids)
    anything else with a str op            ->  {"error": "unknown op"}

A stream carries up to `MAX_REQUESTS_PER_STREAM` request/response pairs in
turn, so one catch-up needs one stream. Both sides treat the other as
hostile: prefixes above the limit are refused before any body is read,
every read has a deadline, msgpack is decoded with strict limits and every
field is type-checked; a malformed request gets `{"error": ...}` and the
stream is closed. Servers rate-limit requests per peer (`heads`, the
costly one, harder) and cap concurrent streams; responses never exceed 1 MiB
(a `get` answer carries fewer records, and the client asks again for the rest).

Fairness (the server's budgets, per peer and for all peers together):
- requests, `heads` requests and bytes answered: a token bucket per peer, and one
  shared by all peers that caps what a flood of peer ids can cost the node's thread;
  new streams: a bucket per peer;
- deadlines: a stream must send its first request within `FIRST_REQUEST_S`, each next
  one within `READ_TIMEOUT_S`, take each answer within `WRITE_TIMEOUT_S`, and be done
  within `STREAM_DEADLINE_S`; a stream past a deadline is reset (no goodbye is written to
  a peer that is not reading);
- at most `max_streams_per_peer` streams per peer and `max_streams` in all. When all
  are taken, a new stream takes the place of one that waits on its peer (for a request,
  or to take an answer) for `PREEMPT_AFTER_S` or more, from a peer holding at least one
  stream more than the newcomer: of the peers holding the most streams, a stream that
  never asked anything, else the one that has waited longest. A few slow streams, or
  many peer ids with one each, cannot hold the cap against an honest peer, whose streams
  wait on it only for a round trip between requests.
The client bounds a catch-up: at most `max_records` records and `max_bytes` bytes of
answers (32 MiB: what one malicious server can push per catch-up), only records it asked
for, and ids a peer did not have are reported (`on_missed`) so the store asks again only
after a back-off.

Layout: framing (`encode_frame`, `read_frame`), message checks
(`parse_request`, `parse_heads`, `parse_records`), the server
(`SyncServer.handle_stream`), the client (`SyncSession`) and the catch-up
policy (`catch_up`). Nothing here touches the store directly: callers inject
`heads_for`, `get_records`, `missing`, `wanted`, `verify` and `store`.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import trio

from swarm.ratelimit import RateLimiter  # per-peer request buckets (tests import it here)

log = logging.getLogger("loopy.swarm.sync")

PROTOCOL_ID = "/loopy/sync/1.0.0"
MAX_FRAME = 1 << 20  # 1 MiB, PROTOCOL.md
MAX_REQUEST_FRAME = 64 * 1024  # requests are small: 256 ids are ~9 KiB
MAX_GET_IDS = 256
MAX_TOPICS = 64
MAX_HEADS = 30_000  # 30,000 ids of 34 msgpack bytes stay under 1 MiB
MAX_REQUESTS_PER_STREAM = 64
ID_LEN = 32
READ_TIMEOUT_S = 10.0       # the next request, once a stream answered one
REQUEST_TIMEOUT_S = 30.0    # the client: one request and its answer
FIRST_REQUEST_S = 5.0       # a new stream's first request
WRITE_TIMEOUT_S = 10.0      # the peer takes one answer (1 MiB: at least 100 KiB/s)
STREAM_DEADLINE_S = 60.0    # a whole stream (64 requests); a catch-up opens another
# A stream waiting on its peer this long may give way to a newcomer. Short: peer ids
# that re-open streams as fast as they are reset keep every slot younger than this only
# by opening max_streams / PREEMPT_AFTER_S streams a second (1,280, each peer id at most
# one a second), while a just-opened stream is not pushed out before its first request
# could arrive. (At 1 s a few hundred ids kept an honest newcomer out for good.)
PREEMPT_AFTER_S = 0.05
MAX_CATCH_UP_BYTES = 32 << 20  # of answers, per catch-up
CUT_SHORT_BYTES = MAX_FRAME - 192 * 1024  # an answer this full stopped at the size cap
_RESPONSE_SLACK = 64  # map header, key and array header of a response


class FrameError(Exception):
    """The other side sent something that is not a valid sync message."""


class Stream(Protocol):
    """What sync needs of a libp2p stream (a fake one in tests)."""

    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


# --------------------------------------------------------------------------- framing

def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_frame(message: dict, max_size: int = MAX_FRAME) -> bytes:
    """Length prefix + msgpack map. Raises ValueError if the body exceeds `max_size`."""
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > max_size:
        raise ValueError(f"sync message of {len(body)} bytes exceeds {max_size}")
    return encode_varint(len(body)) + body


class FrameReader:
    """Buffered reads from a stream; a libp2p read may return fewer bytes than asked."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def _fill(self) -> bool:
        chunk = await self.stream.read(65536)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    async def read_varint(self, max_value: int) -> int | None:
        """The next varint, or None on a clean end of stream before its first byte."""
        value = 0
        for index in range(10):
            if not self._buffer and not await self._fill():
                if index == 0:
                    return None
                raise FrameError("stream ended inside a length prefix")
            byte = self._buffer[0]
            del self._buffer[0]
            value |= (byte & 0x7F) << (7 * index)
            if value > max_value:
                raise FrameError(f"message length over the {max_value} byte limit")
            if not byte & 0x80:
                return value
        raise FrameError("length prefix too long")

    async def read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if not await self._fill():
                raise FrameError("stream ended inside a message")
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def read_frame(self, max_size: int = MAX_FRAME) -> dict | None:
        """The next message as a dict, None at a clean end of stream."""
        length = await self.read_varint(max_size)
        if length is None:
            return None
        if length == 0:
            raise FrameError("empty message")
        return decode_body(await self.read_exact(length))


def decode_body(body: bytes) -> dict:
    """A msgpack map from untrusted bytes, or FrameError."""
    try:
        # unpackb bounds every length by len(body); raw=False refuses bad UTF-8
        message = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as error:  # msgpack raises many types on garbage
        raise FrameError(f"bad msgpack: {type(error).__name__}") from None
    if not isinstance(message, dict):
        raise FrameError("message is not a map")
    return message


# --------------------------------------------------------------------------- messages

@dataclass(frozen=True)
class Request:
    op: str
    topics: tuple[str, ...] = ()
    ids: tuple[bytes, ...] = ()


def _id_list(value: Any, limit: int, what: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > limit:
        raise FrameError(f"{what} must be a list of at most {limit} ids")
    if not all(isinstance(i, bytes) and len(i) == ID_LEN for i in value):
        raise FrameError(f"{what} must hold 32-byte ids")
    return tuple(value)


def parse_request(message: dict) -> Request:
    """A checked request; FrameError if malformed. Unknown ops come back as-is."""
    op = message.get("op")
    if not isinstance(op, str) or len(op) > 64:
        raise FrameError("op must be a short string")
    if op == "heads":
        topics = message.get("topics", [])
        if not isinstance(topics, list) or len(topics) > MAX_TOPICS:
            raise FrameError(f"topics must be a list of at most {MAX_TOPICS}")
        if not all(isinstance(t, str) and 0 < len(t) <= 32 for t in topics):
            raise FrameError("topics must be short strings")
        return Request("heads", topics=tuple(topics))
    if op == "get":
        return Request("get", ids=_id_list(message.get("ids"), MAX_GET_IDS, "ids"))
    return Request(op)


def parse_heads(message: dict) -> list[bytes]:
    if "error" in message:
        raise FrameError(f"peer answered error: {str(message['error'])[:100]}")
    return list(_id_list(message.get("heads"), MAX_HEADS, "heads"))


def parse_records(message: dict) -> list[bytes]:
    if "error" in message:
        raise FrameError(f"peer answered error: {str(message['error'])[:100]}")
    records = message.get("records")
    if not isinstance(records, list) or len(records) > MAX_GET_IDS:
        raise FrameError(f"records must be a list of at most {MAX_GET_IDS}")
    if not all(isinstance(r, bytes) for r in records):
        raise FrameError("records must be byte strings")
    return records


def bounded_records(envelopes: Iterable[bytes], limit: int = MAX_FRAME) -> list[bytes]:
    """As many envelopes, in order, as fit in one response of at most `limit` bytes."""
    out, size = [], _RESPONSE_SLACK
    for envelope in envelopes:
        cost = len(envelope) + 5  # bin32 header
        if size + cost > limit:
            break
        out.append(envelope)
        size += cost
    return out


def bounded_heads(ids: Iterable[bytes]) -> list[bytes]:
    out = []
    for head in ids:
        if len(out) >= MAX_HEADS:
            break
        if isinstance(head, bytes) and len(head) == ID_LEN:
            out.append(head)
    return out


# --------------------------------------------------------------------------- server

@dataclass
class _Slot:
    """One open stream: whom it serves and since when it waits on its peer."""
    peer: str
    opened: float
    waiting_since: float | None
    scope: Any = None
    preempted: bool = False
    requests: int = 0  # read so far


@dataclass
class SyncServer:
    """Answers sync requests from a store, through injected callables.

    `heads_for(topics) -> ids` (empty topics: every topic), `get_records(ids)
    -> envelopes` (only those we have, in order). `is_banned(peer)` refuses
    streams from banned peers. Budgets and deadlines: see the module docstring.
    """
    heads_for: Callable[[Sequence[str]], Sequence[bytes]]
    get_records: Callable[[Sequence[bytes]], Sequence[bytes]]
    is_banned: Callable[[str], bool] = lambda peer: False
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(rate=10.0, burst=100.0))
    # `heads` is the costly answer: every topic's heads plus their attestations. The
    # heads index (swarm.heads) keeps it cheap across inserts, but a list of 30,000 ids
    # is still 1 MiB to send. An honest peer asks once per catch-up, about every 30 s;
    # 10 at once and then one every 3 s keeps one peer from stalling us.
    heads_limiter: RateLimiter = field(
        default_factory=lambda: RateLimiter(rate=1 / 3, burst=10.0))
    # All peers together: what the node's one thread can give sync without stalling
    # its research (a `heads` answer from the index costs about a millisecond, a `get`
    # a few; at these rates sync takes at most about a third of a core). A bucket every
    # peer shares can be drained by enough peer ids, so these are a ceiling on the cost
    # of a flood, far above what honest peers ask (one catch-up each per 30 s), not a
    # way to share: per-peer buckets, the stream caps and deadlines do that.
    global_limiter: RateLimiter = field(
        default_factory=lambda: RateLimiter(rate=200.0, burst=1000.0, max_keys=1))
    global_heads_limiter: RateLimiter = field(
        default_factory=lambda: RateLimiter(rate=50.0, burst=200.0, max_keys=1))
    # Bytes answered: 4 MiB/s per peer (a late joiner pulls 100,000 records of 5 KiB in
    # two minutes), 32 MiB/s for all peers.
    bytes_limiter: RateLimiter = field(
        default_factory=lambda: RateLimiter(rate=4 * 2 ** 20, burst=32 * 2 ** 20))
    global_bytes_limiter: RateLimiter = field(
        default_factory=lambda: RateLimiter(rate=32 * 2 ** 20, burst=128 * 2 ** 20,
                                            max_keys=1))
    # New streams per peer: a catch-up needs one or two.
    stream_limiter: RateLimiter = field(
        default_factory=lambda: RateLimiter(rate=1.0, burst=16.0))
    max_streams_per_peer: int = 4
    max_streams: int = 64
    first_request_s: float = FIRST_REQUEST_S
    read_timeout_s: float = READ_TIMEOUT_S
    write_timeout_s: float = WRITE_TIMEOUT_S
    stream_deadline_s: float = STREAM_DEADLINE_S
    preempt_after_s: float = PREEMPT_AFTER_S
    served: int = 0
    refused: int = 0
    preempted: int = 0
    timed_out: int = 0
    _open: dict[str, int] = field(default_factory=dict)
    _slots: list[_Slot] = field(default_factory=list)

    async def handle_stream(self, stream: Any) -> None:
        """py-libp2p stream handler: never raises, always closes the stream."""
        try:
            peer = stream.muxed_conn.peer_id.to_base58()
        except Exception:
            peer = "?"
        await self.serve(stream, peer)

    def _victim(self, newcomer: str) -> _Slot | None:
        """The stream that gives way to a newcomer when every slot is taken, or None."""
        now = trio.current_time()
        mine = self._open.get(newcomer, 0)
        best, best_key = None, None
        for slot in self._slots:
            if slot.preempted or slot.waiting_since is None:
                continue
            waited = now - slot.waiting_since
            count = self._open.get(slot.peer, 0)
            if waited < self.preempt_after_s or count < mine + 1:
                continue
            key = (count, slot.requests == 0, waited)  # idle since it opened: first
            if best_key is None or key > best_key:
                best, best_key = slot, key
        return best

    async def serve(self, stream: Stream, peer: str) -> None:
        if (self.is_banned(peer) or self._open.get(peer, 0) >= self.max_streams_per_peer
                or not self.stream_limiter.allow(peer)):
            self.refused += 1
            await _reset(stream)
            return
        if sum(self._open.values()) >= self.max_streams:
            victim = self._victim(peer)
            if victim is None:
                self.refused += 1
                await _reset(stream)
                return
            victim.preempted = True
            victim.scope.cancel()
            self.preempted += 1
        now = trio.current_time()
        slot = _Slot(peer, now, now)
        self._slots.append(slot)
        self._open[peer] = self._open.get(peer, 0) + 1
        clean = False
        try:
            with trio.CancelScope(deadline=now + self.stream_deadline_s) as scope:
                slot.scope = scope
                clean = await self._answer_requests(stream, peer, slot)
            if scope.cancelled_caught and not slot.preempted:
                self.timed_out += 1
        except Exception as error:  # a broken connection or a bug: never into libp2p
            log.debug("sync stream from %s ended: %r", peer, error)
        finally:
            self._slots.remove(slot)
            self._open[peer] -= 1
            if not self._open[peer]:
                del self._open[peer]
            with trio.move_on_after(2.0, shield=True):
                if clean:
                    await _close(stream)
                else:  # a deadline passed, or it gave way: no goodbye to a slow peer
                    await _reset(stream)

    async def _answer_requests(self, stream: Stream, peer: str, slot: _Slot) -> bool:
        """Serve requests in turn; True when the stream may be closed gracefully, False
        when it must be reset (a read or write deadline passed)."""
        reader = FrameReader(stream)
        for n in range(MAX_REQUESTS_PER_STREAM):
            slot.waiting_since = trio.current_time()
            try:
                with trio.fail_after(self.first_request_s if n == 0 else self.read_timeout_s):
                    message = await reader.read_frame(MAX_REQUEST_FRAME)
                if message is None:
                    return True
                request = parse_request(message)
            except trio.TooSlowError:
                self.timed_out += 1
                log.debug("sync stream from %s: no request in time", peer)
                return False
            except FrameError as error:
                log.debug("bad sync request from %s: %s", peer, error)
                return await self._say(stream, slot, {"error": "bad request"})
            slot.waiting_since = None
            slot.requests += 1
            if not (self.limiter.allow(peer) and self.global_limiter.allow("*")) or (
                    request.op == "heads" and not (self.heads_limiter.allow(peer)
                                                   and self.global_heads_limiter.allow("*"))):
                return await self._say(stream, slot, {"error": "rate limited"})
            frame = encode_frame(self.answer(request))
            if not (self.bytes_limiter.take(peer, len(frame))
                    and self.global_bytes_limiter.take("*", len(frame))):
                return await self._say(stream, slot, {"error": "rate limited"})
            if not await self._say(stream, slot, frame):
                return False
            self.served += 1
        return True

    async def _say(self, stream: Stream, slot: _Slot, message: dict | bytes) -> bool:
        """Write a frame within the write deadline; False (reset the stream) if the peer
        does not take it in time."""
        frame = message if isinstance(message, bytes) else encode_frame(message)
        slot.waiting_since = trio.current_time()
        try:
            with trio.fail_after(self.write_timeout_s):
                await stream.write(frame)
        except trio.TooSlowError:
            self.timed_out += 1
            return False
        slot.waiting_since = None
        return True

    def answer(self, request: Request) -> dict:
        if request.op == "heads":
            return {"heads": bounded_heads(self.heads_for(list(request.topics)))}
        if request.op == "get":
            return {"records": bounded_records(self.get_records(list(request.ids)))}
        return {"error": "unknown op"}


async def _close(stream: Stream) -> None:
    try:
        await stream.close()
    except Exception:
        await _reset(stream)


async def _reset(stream: Stream) -> None:
    try:
        await stream.reset()
    except Exception:
        pass


# --------------------------------------------------------------------------- client

class SyncSession:
    """Requests to one peer over one stream (see `open_session`)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.reader = FrameReader(stream)
        self.requests = 0

    async def request(self, message: dict) -> dict:
        if self.requests >= MAX_REQUESTS_PER_STREAM:
            raise FrameError("request budget of this stream used up")
        self.requests += 1
        with trio.fail_after(REQUEST_TIMEOUT_S):
            await self.stream.write(encode_frame(message, MAX_REQUEST_FRAME))
            reply = await self.reader.read_frame(MAX_FRAME)
        if reply is None:
            raise FrameError("peer closed the stream")
        return reply

    async def heads(self, topics: Sequence[str]) -> list[bytes]:
        return parse_heads(await self.request({"op": "heads", "topics": list(topics)}))

    async def get(self, ids: Sequence[bytes]) -> list[bytes]:
        if len(ids) > MAX_GET_IDS:
            raise ValueError(f"at most {MAX_GET_IDS} ids per get")
        return parse_records(await self.request({"op": "get", "ids": list(ids)}))


@asynccontextmanager
async def open_session(host: Any, peer_id: Any) -> AsyncIterator[SyncSession]:
    """A sync stream to a connected peer, closed (or reset) on the way out."""
    with trio.fail_after(REQUEST_TIMEOUT_S):
        stream = await host.new_stream(peer_id, [PROTOCOL_ID])
    try:
        yield SyncSession(stream)
    finally:
        with trio.move_on_after(2.0, shield=True):
            await _close(stream)


# --------------------------------------------------------------------------- catch-up

@dataclass
class CatchUpResult:
    heads: int = 0
    requested: int = 0
    stored: int = 0
    rejected: int = 0
    received_bytes: int = 0   # envelope bytes the peer's answers carried
    missed: int = 0           # wanted ids the peer did not send


async def catch_up(session: SyncSession, topics: Sequence[str], *,
                   missing: Callable[[Sequence[bytes]], Sequence[bytes]],
                   wanted: Callable[[], Sequence[bytes]],
                   verify: Callable[[bytes], "tuple[Any | None, str]"],
                   store: Callable[[list[Any]], Any],
                   report: Callable[[str], Any] = lambda reason: None,
                   on_missed: Callable[[list[bytes]], Any] = lambda ids: None,
                   keep_going: Callable[[], bool] = lambda: True,
                   max_records: int = 100_000,
                   max_bytes: int = MAX_CATCH_UP_BYTES) -> CatchUpResult:
    """Fetch what the peer has and we lack: its heads, then their missing ancestors.

    `missing(ids)` -> those not in our store; `wanted()` -> ids our store
    references but lacks (parents, targets); `verify(envelope)` -> `(record,
    "")` or `(None, reason)` (a record has `.id`); `store(records)` keeps a
    verified batch (one transaction for the store) and may return how many it stored.
    Invalid records and records we did not ask for are refused and
    `report`ed. Each id is asked for at most twice (a second time only when a
    response left it out; ids an answer full to the 1 MiB cap left out are asked
    next and not counted), so the loop ends even against a peer that withholds
    records. Wanted ids the peer did not send go to
    `on_missed` at the end (the store then asks again only after a back-off).
    The catch-up stops after `max_records` ids asked for or `max_bytes` of answers
    (what one malicious server can push), and when a batch stored nothing while
    `keep_going()` says our storage budget is spent.
    """
    result = CatchUpResult()
    heads = await session.heads(topics)
    result.heads = len(heads)
    todo = list(dict.fromkeys(missing(heads)))
    asked: dict[bytes, int] = {}
    from_wanted: set[bytes] = set()
    received: set[bytes] = set()
    answered = 0
    try:
        while result.requested < max_records and answered < max_bytes:
            if not todo:
                todo = [i for i in dict.fromkeys(missing(list(wanted()))) if i not in asked]
                from_wanted.update(todo)
                if not todo:
                    break
            batch = [i for i in todo[:MAX_GET_IDS] if asked.get(i, 0) < 2]
            todo = todo[MAX_GET_IDS:]
            if not batch:
                continue
            for i in batch:
                asked[i] = asked.get(i, 0) + 1
            result.requested += len(batch)
            envelopes = await session.get(batch)
            size = sum(len(e) for e in envelopes)
            answered += size
            result.received_bytes = answered
            requested, got, verified = set(batch), set(), []
            for envelope in envelopes:
                record, reason = verify(envelope)
                if record is not None and record.id not in requested:
                    record, reason = None, "record not requested"
                if record is None:
                    result.rejected += 1
                    report(reason)
                    continue
                if record.id not in got:
                    verified.append(record)
                    got.add(record.id)
            received |= got
            if verified:
                stored = store(verified)
                stored = len(verified) if not isinstance(stored, int) else stored
                result.stored += stored
                if not stored and not keep_going():
                    break  # our storage budget is spent: fetching more is wasted
            if envelopes and len(got) < len(batch):
                left_out = [i for i in batch if i not in got]
                if size >= CUT_SHORT_BYTES:
                    # full to the size cap: an honest answer, not a refusal; what it left
                    # out comes next and is not counted as asked (max_bytes bounds this)
                    for i in left_out:
                        asked[i] -= 1
                    todo = left_out + todo
                else:  # a response cut short otherwise: ask once more at the end
                    todo.extend(i for i in left_out if asked[i] < 2)
    finally:
        missed = [i for i in from_wanted if i in asked and i not in received]
        result.missed = len(missed)
        if missed:
            on_missed(missed)
    return result

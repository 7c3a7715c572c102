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
costly one, harder) and cap concurrent streams; responses never exceed 1 MiB (a `get` answer carries fewer records,
and the client asks again for the rest).

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
READ_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0
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
class SyncServer:
    """Answers sync requests from a store, through injected callables.

    `heads_for(topics) -> ids` (empty topics: every topic), `get_records(ids)
    -> envelopes` (only those we have, in order). `is_banned(peer)` refuses
    streams from banned peers.
    """
    heads_for: Callable[[Sequence[str]], Sequence[bytes]]
    get_records: Callable[[Sequence[bytes]], Sequence[bytes]]
    is_banned: Callable[[str], bool] = lambda peer: False
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(rate=10.0, burst=100.0))
    # `heads` is the costly answer: every topic's heads plus their attestations, about
    # 1.5 s of CPU on the node's one thread at 20,000 records when the answer cache
    # misses (any insert invalidates it). An honest peer asks once per catch-up, about
    # every 30 s; 10 at once and then one every 3 s keeps one peer from stalling us.
    heads_limiter: RateLimiter = field(
        default_factory=lambda: RateLimiter(rate=1 / 3, burst=10.0))
    max_streams_per_peer: int = 4
    max_streams: int = 64
    served: int = 0
    _open: dict[str, int] = field(default_factory=dict)

    async def handle_stream(self, stream: Any) -> None:
        """py-libp2p stream handler: never raises, always closes the stream."""
        try:
            peer = stream.muxed_conn.peer_id.to_base58()
        except Exception:
            peer = "?"
        await self.serve(stream, peer)

    async def serve(self, stream: Stream, peer: str) -> None:
        if (self.is_banned(peer) or self._open.get(peer, 0) >= self.max_streams_per_peer
                or sum(self._open.values()) >= self.max_streams):
            await _reset(stream)
            return
        self._open[peer] = self._open.get(peer, 0) + 1
        try:
            with trio.move_on_after(REQUEST_TIMEOUT_S * 4):
                await self._answer_requests(stream, peer)
        except Exception as error:  # a broken connection or a bug: never into libp2p
            log.debug("sync stream from %s ended: %r", peer, error)
        finally:
            self._open[peer] -= 1
            if not self._open[peer]:
                del self._open[peer]
            with trio.move_on_after(2.0, shield=True):
                await _close(stream)

    async def _answer_requests(self, stream: Stream, peer: str) -> None:
        reader = FrameReader(stream)
        for _ in range(MAX_REQUESTS_PER_STREAM):
            try:
                with trio.fail_after(READ_TIMEOUT_S):
                    message = await reader.read_frame(MAX_REQUEST_FRAME)
                if message is None:
                    return
                request = parse_request(message)
            except (FrameError, trio.TooSlowError) as error:
                log.debug("bad sync request from %s: %s", peer, error)
                await _write_quietly(stream, {"error": "bad request"})
                return
            if not self.limiter.allow(peer) or (
                    request.op == "heads" and not self.heads_limiter.allow(peer)):
                await _write_quietly(stream, {"error": "rate limited"})
                return
            with trio.fail_after(REQUEST_TIMEOUT_S):
                await stream.write(encode_frame(self.answer(request)))
            self.served += 1

    def answer(self, request: Request) -> dict:
        if request.op == "heads":
            return {"heads": bounded_heads(self.heads_for(list(request.topics)))}
        if request.op == "get":
            return {"records": bounded_records(self.get_records(list(request.ids)))}
        return {"error": "unknown op"}


async def _write_quietly(stream: Stream, message: dict) -> None:
    with trio.move_on_after(READ_TIMEOUT_S):
        try:
            await stream.write(encode_frame(message))
        except Exception:
            pass


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


async def catch_up(session: SyncSession, topics: Sequence[str], *,
                   missing: Callable[[Sequence[bytes]], Sequence[bytes]],
                   wanted: Callable[[], Sequence[bytes]],
                   verify: Callable[[bytes], "tuple[Any | None, str]"],
                   store: Callable[[list[Any]], Any],
                   report: Callable[[str], Any] = lambda reason: None,
                   max_records: int = 100_000) -> CatchUpResult:
    """Fetch what the peer has and we lack: its heads, then their missing ancestors.

    `missing(ids)` -> those not in our store; `wanted()` -> ids our store
    references but lacks (parents, targets); `verify(envelope)` -> `(record,
    "")` or `(None, reason)` (a record has `.id`); `store(records)` keeps a
    verified batch (one transaction for the store).
    Invalid records and records we did not ask for are refused and
    `report`ed. Each id is asked for at most twice (a second time only when a
    response left it out), so the loop ends even against a peer that
    withholds records.
    """
    result = CatchUpResult()
    heads = await session.heads(topics)
    result.heads = len(heads)
    todo = list(dict.fromkeys(missing(heads)))
    asked: dict[bytes, int] = {}
    while result.requested < max_records:
        if not todo:
            todo = [i for i in dict.fromkeys(missing(list(wanted()))) if asked.get(i, 0) < 2]
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
        if verified:
            store(verified)
            result.stored += len(verified)
        # A response cut short by the size cap: ask again for what it left out.
        if envelopes and len(got) < len(batch):
            todo.extend(i for i in batch if i not in got and asked[i] < 2)
    return result

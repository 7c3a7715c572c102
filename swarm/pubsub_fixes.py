"""py-libp2p 0.8.1's pubsub, made cheaper and safer where it costs us or fails.

Each function contains one measured problem of the pinned py-libp2p (pyproject.toml
pins it; tests/test_network.py checks each hook still exists, so an upgrade that
moves one fails a test instead of silently bringing the cost back):

- `drop_tasks_after_stop` / `running_service`: a shutdown race that ended a whole
  node (a benchmark worker with 16 nodes) with "Nursery is closed to new arrivals";
- `idontwant_only_for_large`: an IDONTWANT notice to every mesh peer for every
  message, however small;
- `cache_by_message_id`: a message cache keyed by sender + seqno while the rest of
  pubsub uses our content ids;
- `cached_sender_record`: our signed peer record rebuilt for every RPC sent;
- `read_rpc_buffered`: every inbound RPC read a byte at a time for its length prefix;
- `survive_undecodable_rpcs`: an inbound RPC that is not protobuf ended the whole node.

Together with yamux's batched window updates (swarm/host.py) they cut the CPU per
gossiped record of an in-process swarm by about two thirds (docs/SCALING.md).
"""
from __future__ import annotations

import contextvars
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from google.protobuf.message import DecodeError
import libp2p.pubsub.gossipsub as libp2p_gossipsub_module
import libp2p.pubsub.pubsub as libp2p_pubsub_module
from libp2p.abc import IHost
from libp2p.exceptions import ParseError
from libp2p.io.exceptions import IncompleteReadError, MessageTooLarge
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.mcache import CacheEntry
from libp2p.tools.anyio_service import LifecycleError, background_trio_service
from libp2p.pubsub.pubsub import Pubsub
from libp2p.utils.varint import decode_uvarint

log = logging.getLogger("loopy.swarm.pubsub_fixes")


IDONTWANT_MIN_BYTES = 1024  # go-libp2p's IDontWantMessageThreshold
_forwarding_size: contextvars.ContextVar[int] = contextvars.ContextVar("forwarding_size",
                                                                       default=0)


def idontwant_only_for_large(router: GossipSub, min_bytes: int = IDONTWANT_MIN_BYTES) -> None:
    """Send gossipsub v1.2 IDONTWANT only for messages of at least `min_bytes`.

    py-libp2p 0.8.1 sends one to every v1.2 mesh peer for every message it forwards,
    whatever its size; go-libp2p does so only from 1 KiB. For our records (an
    announce is a few hundred bytes) the notice costs about what the message it
    saves: a control RPC with a signed peer record, per mesh peer. Measured in the
    32-node scaling bench's profile: 26 of the 41 s spent forwarding messages.
    """
    forward, emit = router.publish, router._emit_idontwant_for_message

    async def publish(msg_forwarder: ID, pubsub_msg: Any) -> None:
        token = _forwarding_size.set(pubsub_msg.ByteSize())
        try:
            await forward(msg_forwarder, pubsub_msg)
        finally:
            _forwarding_size.reset(token)

    async def emit_if_large(msg_id: bytes, topic_ids: Any) -> None:
        if _forwarding_size.get() >= min_bytes:
            await emit(msg_id, topic_ids)

    router.publish = publish  # type: ignore[method-assign]
    router._emit_idontwant_for_message = emit_if_large  # type: ignore[method-assign]


def cache_by_message_id(router: GossipSub, message_id: Callable[[Any], bytes]) -> None:
    """Key gossipsub's message cache by our message ids, as the rest of pubsub is.

    py-libp2p 0.8.1's MessageCache keys messages by sender + seqno whatever
    `msg_id_constructor` says, while the seen-cache and IWANT replies use our
    content ids. So an IHAVE advertised ids no peer ever recognises as seen: each
    one drew an IWANT and a resend of a message the peer already had.
    """
    cache = router.mcache

    def put(msg: Any) -> None:
        mid = message_id(msg)
        if mid in cache.msgs:
            return
        cache.msgs[mid] = msg
        cache.history[0].append(CacheEntry(mid, msg.topicIDs))

    cache.put = put  # type: ignore[method-assign]


SENDER_RECORD_TTL_S = 5.0
_sender_records: "weakref.WeakKeyDictionary[Any, tuple[float, bytes]]" = \
    weakref.WeakKeyDictionary()
_build_sender_record = libp2p_pubsub_module.env_to_send_in_RPC


def cached_sender_record(host: IHost) -> tuple[bytes, bool]:
    """py-libp2p's `env_to_send_in_RPC`, reused for SENDER_RECORD_TTL_S per host.

    Pubsub attaches our signed peer record to every RPC it sends, and building it
    lists and re-parses the host's addresses each time (half a millisecond): 29 s of
    a 534 s profile of 16 nodes. Our listen addresses do not change while a node
    runs; a newly observed address reaches peers within the TTL.
    """
    now = time.monotonic()
    hit = _sender_records.get(host)
    if hit is not None and hit[0] > now:
        return hit[1], False
    envelope, fresh = _build_sender_record(host)
    _sender_records[host] = (now + SENDER_RECORD_TTL_S, envelope)
    return envelope, fresh


# Both modules imported the function by name; replace it where they look it up.
libp2p_pubsub_module.env_to_send_in_RPC = cached_sender_record
libp2p_gossipsub_module.env_to_send_in_RPC = cached_sender_record


RPC_READ_CHUNK = 64 * 1024   # one stream read serves several small RPCs
_VARINT_MAX_BYTES = 10       # a 64-bit uvarint
_read_buffers: "weakref.WeakKeyDictionary[Any, bytearray]" = weakref.WeakKeyDictionary()


async def read_rpc_buffered(stream: Any, max_length: int) -> bytes:
    """py-libp2p's `read_varint_prefixed_bytes_limited`, reading the stream in chunks.

    Pubsub reads each inbound RPC's length prefix one byte per stream read, and each
    read goes through the stream's state lock, yamux's lock and several debug
    f-strings: most of the CPU of receiving a small record. Here one read of up to
    RPC_READ_CHUNK bytes is kept in a per-stream buffer and serves the prefixes and
    bodies of the RPCs it holds. Only pubsub's own read loop calls this, one per
    stream, so nothing else reads the buffered bytes. Same errors, same limit: a
    prefix over `max_length` is refused before its body is read.
    """
    if max_length <= 0:
        raise ValueError("max_length must be greater than 0")
    buf = _read_buffers.get(stream)
    if buf is None:
        buf = _read_buffers[stream] = bytearray()
    while True:  # the length prefix
        end = next((i for i in range(min(len(buf), _VARINT_MAX_BYTES)) if buf[i] < 0x80),
                   None)
        if end is not None:
            break
        if len(buf) >= _VARINT_MAX_BYTES:
            raise ParseError("Varint decoding error: integer exceeds maximum size of 64 bits")
        await _fill(stream, buf, "Stream ended while reading varint length prefix")
    length = decode_uvarint(bytes(buf[:end + 1]))
    if length > max_length:
        raise MessageTooLarge(f"Message length {length} exceeds maximum allowed {max_length}")
    start, stop = end + 1, end + 1 + length
    while len(buf) < stop:
        await _fill(stream, buf, f"Incomplete message: expected {length}, "
                                 f"got {len(buf) - start}")
    data = bytes(buf[start:stop])
    del buf[:stop]
    return data


async def _fill(stream: Any, buf: bytearray, why: str) -> None:
    chunk = await stream.read(RPC_READ_CHUNK)
    if not chunk:
        raise IncompleteReadError(why)
    buf += chunk


# pubsub imported the reader by name; replace it where pubsub looks it up.
libp2p_pubsub_module.read_varint_prefixed_bytes_limited = read_rpc_buffered


_pubsub_stream_handler = Pubsub.stream_handler


async def survive_undecodable_rpcs(self: Pubsub, stream: Any) -> None:
    """Pubsub's stream handler, treating an RPC that does not decode like a bad prefix.

    py-libp2p 0.8.1 catches its own ParseError on a pubsub stream but not protobuf's
    DecodeError, which rose through the connection's task, failed the host's Swarm
    service and ended the node: any peer could stop a node by sending one length-
    prefixed RPC that is not protobuf. (One CI run hit it without an attacker: py-libp2p
    can interleave the yamux frames of two writes to one stream when the first is larger
    than the send window, as the 300 KiB message of a network test is.) Now the stream
    is reset and the peer dropped from pubsub, as for a ParseError.
    """
    try:
        await _pubsub_stream_handler(self, stream)
    except DecodeError as error:
        peer_id = stream.muxed_conn.peer_id
        log.debug("undecodable pubsub RPC from %s (%s): stream reset", peer_id, error)
        try:
            await stream.reset()
        except Exception:  # already gone: nothing left to reset
            pass
        self._handle_dead_peer(peer_id)


# Pubsub registers `self.stream_handler` with the host when it is built.
Pubsub.stream_handler = survive_undecodable_rpcs  # type: ignore[method-assign]


def drop_tasks_after_stop(manager: Any, name: str) -> None:
    """Make a py-libp2p service manager drop, not raise on, tasks scheduled as it stops.

    py-libp2p 0.8.1 races at shutdown: pubsub's `continuously_read_stream` runs
    in a swarm connection's task, not in pubsub's, and checks
    `manager.is_running` before `manager.run_task(push_msg, ...)`. Between the
    manager's nursery closing and `is_running` turning False, that call raises
    `RuntimeError: Nursery is closed to new arrivals` (and after it,
    `LifecycleError`) in the connection's task, which fails the host's Swarm
    service and ends the whole node with it. A task that arrives once the
    service stops could not have run anyway, so it is dropped.
    """
    schedule = manager._schedule_task

    def schedule_unless_stopped(task: Any) -> None:
        try:
            schedule(task)
        except (RuntimeError, LifecycleError) as error:
            log.debug("%s stopping: dropped task %s (%s)", name, task, error)

    manager._schedule_task = schedule_unless_stopped


@asynccontextmanager
async def running_service(service: Any, name: str) -> AsyncIterator[Any]:
    """`background_trio_service(service)` with `drop_tasks_after_stop` applied."""
    async with background_trio_service(service) as manager:
        drop_tasks_after_stop(manager, name)
        yield manager

"""The libp2p host: TCP + noise + yamux, keyed by the node's own ed25519 seed.

PROTOCOL.md fixes the transport: TCP, `/noise` only, `/yamux/1.0.0`, ed25519
peer keys. py-libp2p's defaults differ in ways that matter (docs: NOTES-libp2p):

- `new_host()` accepts `/plaintext/2.0.0`, `/secio/1.0.0` and TLS inbound
  unless `sec_opt` is given, so we always pass noise alone;
- it offers mplex next to yamux unless `muxer_opt` is given;
- it logs warnings bare and unthrottled to stderr (`tame_libp2p_logging`);
- its yamux sends a WINDOW_UPDATE frame after every read of a stream by default
  (`PY_YAMUX_RELEASE_ON_READ=1`), and pubsub read each message's length prefix a
  byte at a time (now in chunks: swarm/pubsub_fixes.py): most frames on a gossip
  connection were window updates. We turn
  that off (unless the environment sets it), which gives go-yamux's batching: an
  update once half the window is consumed. Measured (`bench/bench_gossip.py
  --quick --sizes 10 25`, idle 2-core VM, two runs each): CPU per record 278 / 255
  -> 190 / 180 ms at 10 nodes and 903 / 844 -> 566 / 690 ms at 25; catching up on
  10,000 records unchanged (4.1 against 4.4 s).

The host's key is built from the same 32-byte seed as the node's record
signing key, so the libp2p peer id and a record's `author` name one party
(`peer_id_from_public_key` maps one to the other).

`open_host` is the async context manager every other part uses; it listens
before it yields and closes the host on the way out under a shielded,
time-limited cancel scope, so a cancelled node still releases its sockets.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import multiaddr
import trio

# Importing libp2p runs its own logging set-up (propagate off, level WARNING):
# import it first, then tame it.
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.utils.address_validation import expand_wildcard_address

log = logging.getLogger("loopy.swarm.host")

# Read by py-libp2p's yamux on every read (see the module docstring).
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")

DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/4011"
CLOSE_TIMEOUT_S = 5.0
LIBP2P_LOG_EVERY_S = 30.0  # one copy of a repeated libp2p message per this many seconds


class _ThrottledForwarder(logging.Handler):
    """Forwards libp2p records to our own logger, at most one per call site per window.

    py-libp2p logs the same warning for every dropped message, mostly as
    f-strings (so the text differs each time: the key is the logging call's
    file and line); a hostile peer could otherwise fill the terminal, or the
    disk, with them.
    """

    def __init__(self, target: logging.Logger, every_s: float) -> None:
        super().__init__()
        self.target = target
        self.every_s = every_s
        self._last: dict[tuple[str, int], float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.pathname, record.lineno)
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self.every_s:
            return
        if len(self._last) > 1024:  # bounded: forget the oldest half
            for old in sorted(self._last, key=self._last.get)[:512]:
                del self._last[old]
        self._last[key] = now
        self.target.handle(record)


def tame_libp2p_logging(level: int = logging.ERROR, every_s: float = LIBP2P_LOG_EVERY_S) -> None:
    """Route py-libp2p's log records through `loopy.libp2p`, at `level`, throttled.

    Idempotent. `LIBP2P_DEBUG` (libp2p's own switch) still wins when set, so a
    developer can turn its debug output back on.
    """
    lib = logging.getLogger("libp2p")
    forwarder = _ThrottledForwarder(logging.getLogger("loopy.libp2p"), every_s)
    if not os.environ.get("LIBP2P_DEBUG"):
        lib.setLevel(level)
        # Some libp2p modules set their own logger to INFO; the handler's level
        # catches those and any that do so after this call.
        forwarder.setLevel(level)
        for name, child in list(logging.root.manager.loggerDict.items()):
            if (name.startswith("libp2p.") and isinstance(child, logging.Logger)
                    and logging.NOTSET < child.level < level):
                child.setLevel(logging.NOTSET)
    for handler in list(lib.handlers):
        if isinstance(handler, _ThrottledForwarder):
            lib.removeHandler(handler)
    lib.addHandler(forwarder)
    lib.propagate = False


def key_pair_from_seed(seed: bytes) -> KeyPair:
    """The libp2p ed25519 key pair of a 32-byte seed (the node identity's seed)."""
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != 32:
        raise ValueError("an ed25519 seed is 32 bytes")
    return create_new_key_pair(bytes(seed))


def peer_id_from_public_key(public_key: bytes) -> str:
    """The base58 libp2p peer id of a raw 32-byte ed25519 public key (a record author)."""
    if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != 32:
        raise ValueError("an ed25519 public key is 32 bytes")
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(bytes(public_key))).to_base58()


def parse_listen(listen: str) -> multiaddr.Multiaddr:
    """Validate a TCP listen multiaddr such as `/ip4/0.0.0.0/tcp/4011`."""
    try:
        addr = multiaddr.Multiaddr(listen)
    except Exception as error:  # multiaddr raises several unrelated types
        raise ValueError(f"bad listen multiaddr {listen!r}: {error}") from None
    protocols = [p.name for p in addr.protocols()]
    if len(protocols) != 2 or protocols[0] not in ("ip4", "ip6") or protocols[1] != "tcp":
        raise ValueError(f"listen multiaddr must be /ip4|ip6/<addr>/tcp/<port>, got {listen!r}")
    return addr


def build_host(seed: bytes, listen: str = DEFAULT_LISTEN, *, mdns: bool = False) -> IHost:
    """A host that speaks only noise and yamux over TCP (not yet listening)."""
    tame_libp2p_logging()
    key_pair = key_pair_from_seed(seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
        listen_addrs=[parse_listen(listen)],
        enable_mDNS=mdns,
    )


def host_addrs(host: IHost) -> list[str]:
    """The host's addresses, each ending in `/p2p/<peer id>`.

    A wildcard listen address (`/ip4/0.0.0.0/...`) is expanded into the
    machine's interface addresses, which others can dial.
    """
    peer = host.get_id().to_base58()
    out = []
    for addr in host.get_addrs():
        transport = multiaddr.Multiaddr(str(addr).split("/p2p/")[0])
        for concrete in _expand_wildcard(transport):
            text = f"{concrete}/p2p/{peer}"
            if text not in out:
                out.append(text)
    return out


def _expand_wildcard(addr: multiaddr.Multiaddr) -> list[multiaddr.Multiaddr]:
    try:
        ip = addr.value_for_protocol("ip4")
    except Exception:
        ip = None
    if ip != "0.0.0.0":
        return [addr]
    try:
        port = int(addr.value_for_protocol("tcp"))
        return list(expand_wildcard_address(addr, port=port)) or [addr]
    except Exception:  # interface enumeration is best effort
        return [addr]


class ListenError(OSError):
    """The host cannot listen on its address; the message says why."""


class _NoListenFailureLog(logging.Filter):
    """open_host raises ListenError with the reason: py-libp2p's own error line about it
    would only say the same thing twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to start TCP listener")


_TCP_LOG = logging.getLogger("libp2p.transport.tcp.tcp")
_TCP_LOG.addFilter(_NoListenFailureLog())


def _bind_failure(addr: multiaddr.Multiaddr) -> str:
    """Why a plain socket cannot bind `addr` (py-libp2p logs its own reason at debug)."""
    family = "ip6" if addr.protocols()[0].name == "ip6" else "ip4"
    ip, port = addr.value_for_protocol(family), int(addr.value_for_protocol("tcp"))
    try:
        with socket.socket(socket.AF_INET6 if family == "ip6" else socket.AF_INET) as probe:
            probe.bind((ip, port))
    except OSError as e:
        return e.strerror or str(e)
    return "py-libp2p could not start its listener"


@asynccontextmanager
async def open_host(
    seed: bytes, listen: str = DEFAULT_LISTEN, *, mdns: bool = False
) -> AsyncIterator[IHost]:
    """Run a listening host for the duration of the block; always closes it.

    ListenError when it cannot listen (a port in use, an address not this machine's):
    py-libp2p's `listen` only logs that and carries on with no listener."""
    host = build_host(seed, listen, mdns=mdns)
    addr = parse_listen(listen)
    listening = False
    async with host.run(listen_addrs=[addr]):
        try:
            listening = bool(host.get_network().listeners)
            if listening:
                log.debug("host %s listening on %s", host.get_id(), host_addrs(host))
                yield host
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await host.close()
    if not listening:
        raise ListenError(f"cannot listen on {listen}: {_bind_failure(addr)}")

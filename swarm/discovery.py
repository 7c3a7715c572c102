"""Finding and keeping peers: bootstrap addresses, a persisted peer book, mDNS.

- `bootstrap`: multiaddrs with a `/p2p/<peer id>` suffix; always kept
  connected (redialled with exponential backoff when they go away).
- The peer book: every peer we were connected to is remembered with its
  dialable addresses and last-seen time (`PeerBook`, backed by the store), so
  a restarted node rejoins without any bootstrap address.
- Addresses heard in announces (`note_addrs`) join the candidates.
- Below `target_peers` connections, candidates are dialled, most recently
  seen first; each failure doubles that peer's wait (1 s up to 10 min, with
  jitter), a success resets it.
- mDNS (py-libp2p's zeroconf) is off by default: it binds every interface,
  which tests and many users do not want. With `--mdns` the peers it finds
  land in the host's peerstore, and the dial loop picks them up from there.

Banned peers (see `gossip.PeerGuard`) are never dialled.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import multiaddr
import trio

from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

log = logging.getLogger("loopy.swarm.discovery")

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 600.0
DIAL_TIMEOUT_S = 10.0
TICK_S = 1.0
MAX_CANDIDATES = 1000
MAX_ADDRS_PER_PEER = 8


class PeerBook(Protocol):
    """Where known peers persist (the store's peers table)."""

    def load_peers(self) -> list[tuple[str, list[str]]]: ...

    def save_peer(self, peer_id: str, addrs: list[str], last_seen_ms: int) -> None: ...


def parse_peer_addr(text: str) -> PeerInfo:
    """`/ip4/1.2.3.4/tcp/4011/p2p/12D3...` -> PeerInfo; ValueError when it is not one."""
    try:
        addr = multiaddr.Multiaddr(text)
        info = info_from_p2p_addr(addr)
    except Exception as error:  # multiaddr and libp2p raise assorted types
        raise ValueError(f"not a peer multiaddr (need /p2p/<id>): {text!r}: {error}") from None
    if not info.addrs or not all(str(a) for a in info.addrs):
        raise ValueError(f"peer multiaddr has no transport address: {text!r}")
    return info


def dialable(addr: str) -> bool:
    """A TCP address someone else could dial (not 0.0.0.0, not port 0)."""
    try:
        parts = multiaddr.Multiaddr(addr).protocols()
        names = [p.name for p in parts]
        ma = multiaddr.Multiaddr(addr)
        if names[:2] not in (["ip4", "tcp"], ["ip6", "tcp"]):
            return False
        host = ma.value_for_protocol(names[0])
        port = int(ma.value_for_protocol("tcp"))
    except Exception:
        return False
    return host not in ("0.0.0.0", "::") and 0 < port < 65536


def strip_p2p(addr: str) -> str:
    return addr.split("/p2p/")[0]


@dataclass
class _Candidate:
    peer_id: ID
    addrs: list[multiaddr.Multiaddr]
    pinned: bool = False  # bootstrap: always kept connected
    failures: int = 0
    next_try: float = 0.0
    last_seen: float = 0.0


class Discovery:
    """Keeps the host connected: a plain state object plus the `run` loop."""

    def __init__(self, host: IHost, *, bootstrap: Iterable[str] = (),
                 peer_book: PeerBook | None = None,
                 is_banned: Callable[[str], bool] = lambda peer: False,
                 target_peers: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.peer_book = peer_book
        self.is_banned = is_banned
        self.target_peers = target_peers
        self.clock = clock
        self.my_id = host.get_id()
        self.candidates: dict[str, _Candidate] = {}
        self.dials = 0
        self.failed_dials = 0
        for text in bootstrap:
            info = parse_peer_addr(text)
            self._add(info.peer_id, info.addrs, pinned=True)
        if peer_book is not None:
            for peer, addrs in peer_book.load_peers():
                self.note_addrs(peer, addrs)

    # -- plain state updates
    def _add(self, peer_id: ID, addrs: Iterable[multiaddr.Multiaddr], pinned: bool = False,
             ) -> _Candidate | None:
        if peer_id == self.my_id:
            return None
        key = peer_id.to_base58()
        candidate = self.candidates.get(key)
        if candidate is None:
            if len(self.candidates) >= MAX_CANDIDATES and not pinned:
                return None
            candidate = self.candidates[key] = _Candidate(peer_id, [])
        candidate.pinned |= pinned
        for addr in addrs:
            if addr not in candidate.addrs and len(candidate.addrs) < MAX_ADDRS_PER_PEER:
                candidate.addrs.append(addr)
        return candidate

    def note_addrs(self, peer: str, addrs: Iterable[str]) -> None:
        """Remember dialable addresses of `peer` (from an announce or the peer book)."""
        try:
            peer_id = ID.from_base58(peer)
        except Exception:
            return
        parsed = []
        for text in addrs:
            if isinstance(text, str) and dialable(strip_p2p(text)):
                try:
                    parsed.append(multiaddr.Multiaddr(strip_p2p(text)))
                except Exception:
                    continue
        if parsed:
            self._add(peer_id, parsed)

    def on_connected(self, peer: str) -> None:
        candidate = self.candidates.get(peer)
        if candidate is not None:
            candidate.failures = 0
            candidate.last_seen = self.clock()

    def on_disconnected(self, peer: str) -> None:
        """A peer went away: try it again soon, then back off if it stays away."""
        candidate = self.candidates.get(peer)
        if candidate is not None:
            candidate.last_seen = self.clock()
            candidate.next_try = self.clock() + BACKOFF_BASE_S

    def remember(self, peer: str) -> None:
        """Persist a connected peer's dialable addresses (from identify) in the peer book."""
        try:
            peer_id = ID.from_base58(peer)
            addrs = [str(a) for a in self.host.get_peerstore().addrs(peer_id)]
        except Exception:
            return
        addrs = [a for a in dict.fromkeys(strip_p2p(a) for a in addrs) if dialable(a)]
        if not addrs:
            return
        self.note_addrs(peer, addrs)
        if self.peer_book is not None:
            try:
                self.peer_book.save_peer(peer, addrs[:MAX_ADDRS_PER_PEER], int(time.time() * 1000))
            except Exception:
                log.warning("could not save peer %s", peer, exc_info=True)

    def due(self, connected: set[str]) -> list[_Candidate]:
        """Candidates to dial now: pinned ones always, others while under target."""
        now = self.clock()
        self._absorb_peerstore(connected)
        ready = [c for key, c in self.candidates.items()
                 if key not in connected and c.next_try <= now and c.addrs
                 and not self.is_banned(key)]
        pinned = [c for c in ready if c.pinned]
        others = sorted((c for c in ready if not c.pinned), key=lambda c: -c.last_seen)
        room = max(0, self.target_peers - len(connected) - len(pinned))
        return pinned + others[:room]

    def _absorb_peerstore(self, connected: set[str]) -> None:
        """Peers mDNS (or identify) put in the peerstore become candidates too."""
        if len(connected) >= self.target_peers:
            return
        try:
            peerstore = self.host.get_peerstore()
            for peer_id in peerstore.peers_with_addrs():
                key = peer_id.to_base58()
                if key in self.candidates or key in connected or peer_id == self.my_id:
                    continue
                addrs = [a for a in peerstore.addrs(peer_id) if dialable(str(a))]
                if addrs:
                    self._add(peer_id, addrs)
        except Exception:
            log.debug("reading the peerstore failed", exc_info=True)

    def _failed(self, candidate: _Candidate) -> None:
        candidate.failures += 1
        wait = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(candidate.failures, 20))
        candidate.next_try = self.clock() + wait * random.uniform(0.8, 1.2)

    # -- the loop
    async def dial(self, candidate: _Candidate) -> bool:
        self.dials += 1
        candidate.next_try = self.clock() + DIAL_TIMEOUT_S  # no second dial meanwhile
        try:
            with trio.fail_after(DIAL_TIMEOUT_S):
                await self.host.connect(PeerInfo(candidate.peer_id, list(candidate.addrs)))
        except Exception as error:  # unreachable, refused, handshake failed, timeout
            self.failed_dials += 1
            self._failed(candidate)
            log.debug("dial %s failed (%d): %r", candidate.peer_id, candidate.failures, error)
            return False
        self.on_connected(candidate.peer_id.to_base58())
        return True

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Dial due candidates every second, forever."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                connected = {p.to_base58() for p in self.host.get_connected_peers()}
                for candidate in self.due(connected):
                    nursery.start_soon(self.dial, candidate)
                await trio.sleep(TICK_S)

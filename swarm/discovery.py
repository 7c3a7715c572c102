"""Finding and keeping peers: bootstrap addresses, a persisted peer book, mDNS.

- `bootstrap`: multiaddrs with a `/p2p/<peer id>` suffix; always kept
  connected (redialled with exponential backoff when they go away). They, and
  addresses passed to `SwarmNode.connect`, are *explicit*: the user chose them,
  so they are always dialled, whatever their network, and never forgotten.
- The peer book: every peer we were connected to is remembered with its
  dialable addresses and last-seen time (`PeerBook`, backed by the store), so
  a restarted node rejoins without any bootstrap address.
- Addresses heard in announces (`note_addrs`) join the candidates.
- Below `target_peers` connections, candidates are dialled, most recently
  seen first, one address per dial.
- mDNS (py-libp2p's zeroconf) is off by default: it binds every interface,
  which tests and many users do not want. With `--mdns` the peers it finds
  land in the host's peerstore, and the dial loop picks them up from there.

Careful with what strangers say (every address not given by the user is a
stranger's claim, even a signed one: a fresh key costs nothing):

- **Which addresses are dialled** (`DialPolicy`): TCP over a literal IPv4 or
  IPv6 address (no DNS name: it could resolve anywhere). Public addresses,
  yes. Private (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7), loopback
  (127/8, ::1) and link-local (169.254/16, fe80::/10) ones only when the node
  itself listens on that very block (a node listening on 127.0.0.1 dials
  127.x; a wildcard listen address such as 0.0.0.0 counts as public only), or
  with `lan=True` (`loopy start --lan`; `--mdns` implies it). Unspecified
  (0/8, ::), multicast (224/4, ff00::/8) and reserved (240/4) ones, never.
  IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
- **The guard covers libp2p's own dialers too.** py-libp2p dials from its
  peerstore on its own (gossipsub peer exchange, `new_stream` to a peer not
  connected, its auto-connector), and identify fills the peerstore with
  whatever a peer claims. `Discovery` wraps the host network's `dial_peer` so
  that any dial first drops the peer's addresses the policy refuses, and it
  stops py-libp2p's auto-connector (discovery is the one dialer, so its
  backoff and eviction hold).
- **Bounded**: at most `MAX_ADDRS_PER_PEER` addresses per peer (a new one
  pushes out the one refreshed longest ago), `MAX_CANDIDATES` peers in all,
  of which at most `MAX_STRANGERS` we were never connected to (a new stranger
  pushes out a stranger whose dials failed, else the one heard from longest
  ago; peers we were connected to go only when the table is full, least
  recently seen first). Explicit addresses are never pushed out.
- **Stale addresses expire**: an address heard from a stranger (an announce,
  the peerstore, identify) lives `LEARNED_TTL_S` unless heard again; one the
  node connected through, or read from the peer book, `CONFIRMED_TTL_S`.
- **Unreachable addresses are evicted**: each failed dial doubles that
  address's wait (1 s up to 10 min, with jitter; a success resets it);
  `MAX_FAILURES_LEARNED` failures in a row evict a learned address
  (`MAX_FAILURES_CONFIRMED` one that worked before), and a peer we never
  reached is dropped after `MAX_STRANGER_FAILURES` failed dials. An evicted
  address is not re-learned from strangers for `FORGET_S` (unless the peer
  connects meanwhile).

Banned peers (see `gossip.PeerGuard`) are never dialled.
"""
from __future__ import annotations

import ipaddress
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
MAX_CANDIDATES = 512          # peers remembered in all (explicit ones may add to it)
MAX_STRANGERS = 128           # of which never connected to
MAX_ADDRS_PER_PEER = 8
LEARNED_TTL_S = 30 * 60.0     # a stranger's address lives this long unless heard again
CONFIRMED_TTL_S = 7 * 24 * 3600.0  # one we connected through, or from the peer book
MAX_FAILURES_LEARNED = 3      # failed dials in a row that evict a learned address
MAX_FAILURES_CONFIRMED = 12   # ... one that worked before (about 45 minutes of backoff)
MAX_STRANGER_FAILURES = 6     # failed dials that drop a peer we never reached
FORGET_S = 3600.0             # an evicted address is not re-learned for this long
MAX_FORGOTTEN = 4096
MAX_ABSORB_PER_TICK = 16      # peerstore peers taken in per tick
PEERSTORE_TTL_S = 120         # the TTL py-libp2p's connect gives addresses

_BLOCKS: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = [
    (scope, ipaddress.ip_network(net)) for scope, net in [
        ("unspecified", "0.0.0.0/8"), ("unspecified", "::/128"),
        ("loopback", "127.0.0.0/8"), ("loopback", "::1/128"),
        ("private", "10.0.0.0/8"), ("private", "172.16.0.0/12"),
        ("private", "192.168.0.0/16"), ("private", "100.64.0.0/10"),
        ("private", "fc00::/7"),
        ("link-local", "169.254.0.0/16"), ("link-local", "fe80::/10"),
        ("multicast", "224.0.0.0/4"), ("multicast", "ff00::/8"),
        ("reserved", "240.0.0.0/4"),
    ]]
LOCAL_SCOPES = ("private", "loopback", "link-local")  # dialled with --lan or when we listen there


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


def address_scope(addr: Any) -> tuple[str, Any]:
    """(scope, block) of a multiaddr's IP: ("public", None), ("private", 10.0.0.0/8), ...

    ("none", None) when it has no literal IPv4/IPv6 address (a DNS name, junk).
    """
    try:
        ma = addr if isinstance(addr, multiaddr.Multiaddr) else multiaddr.Multiaddr(
            strip_p2p(str(addr)))
        first = ma.protocols()[0].name
        if first not in ("ip4", "ip6"):
            return "none", None
        ip = ipaddress.ip_address(ma.value_for_protocol(first))
    except Exception:
        return "none", None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for scope, block in _BLOCKS:
        if ip.version == block.version and ip in block:
            return scope, block
    return "public", None


class DialPolicy:
    """Which addresses learned from strangers a node may dial (see the module docstring)."""

    def __init__(self, own_addrs: Iterable[Any] = (), *, lan: bool = False) -> None:
        self.lan = lan
        self.own_blocks = set()
        for addr in own_addrs:
            scope, block = address_scope(addr)
            if scope in LOCAL_SCOPES:
                self.own_blocks.add(block)

    def permits(self, addr: Any) -> bool:
        text = strip_p2p(str(addr))
        if not dialable(text):
            return False
        scope, block = address_scope(text)
        if scope == "public":
            return True
        if scope in LOCAL_SCOPES:
            return self.lan or block in self.own_blocks
        return False


@dataclass
class _Addr:
    addr: multiaddr.Multiaddr
    expires: float              # clock time; inf for explicit ones
    explicit: bool = False      # given by the user: always dialled, never evicted
    confirmed: bool = False     # we connected through it (or the peer book has it)
    failures: int = 0           # failed dials in a row
    next_try: float = 0.0
    heard: float = 0.0          # clock time it was last learned or confirmed


@dataclass
class _Candidate:
    peer_id: ID
    entries: dict[str, _Addr] = field(default_factory=dict)  # canonical text -> entry
    pinned: bool = False  # bootstrap: always kept connected
    proven: bool = False  # we were connected to it (or it is in the peer book)
    failures: int = 0     # failed dials in a row, any address
    next_try: float = 0.0
    last_seen: float = 0.0
    heard: float = 0.0    # clock time we last learned anything about it
    dialing: bool = False

    @property
    def addrs(self) -> list[multiaddr.Multiaddr]:
        return [e.addr for e in self.entries.values()]


class Discovery:
    """Keeps the host connected: a plain state object plus the `run` loop."""

    def __init__(self, host: IHost, *, bootstrap: Iterable[str] = (),
                 peer_book: PeerBook | None = None,
                 is_banned: Callable[[str], bool] = lambda peer: False,
                 target_peers: int = 8, lan: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.peer_book = peer_book
        self.is_banned = is_banned
        self.target_peers = target_peers
        self.clock = clock
        self.my_id = host.get_id()
        try:
            own = [str(a) for a in host.get_addrs()]
        except Exception:
            own = []
        self.policy = DialPolicy(own, lan=lan)
        self.candidates: dict[str, _Candidate] = {}
        self.explicit: set[tuple[str, str]] = set()  # (peer, canonical address)
        self.forgotten: dict[tuple[str, str], float] = {}  # (peer, address) -> until
        self.dials = 0
        self.failed_dials = 0
        self.evicted = 0
        self._install_dial_guard()
        for text in bootstrap:
            self.add_explicit(text, pinned=True)
        if peer_book is not None:
            for peer, addrs in peer_book.load_peers():
                self._learn(peer, addrs, confirmed=True)

    # -- what may be dialled
    def may_dial(self, peer: str, addr: Any) -> bool:
        text = _canonical(addr)
        return text is not None and ((peer, text) in self.explicit or self.policy.permits(text))

    def add_explicit(self, text: str, pinned: bool = False) -> PeerInfo:
        """A peer address the user gave (bootstrap, `connect`): always dialable."""
        info = parse_peer_addr(text)
        key = info.peer_id.to_base58()
        if info.peer_id == self.my_id:
            return info
        candidate = self._candidate(info.peer_id, explicit=True)
        if candidate is None:  # unreachable: explicit candidates are always made
            return info
        candidate.pinned |= pinned
        for addr in info.addrs:
            canon = _canonical(addr)
            if canon is None:
                continue
            self.explicit.add((key, canon))
            entry = candidate.entries.get(canon)
            if entry is None:
                entry = candidate.entries[canon] = _Addr(addr, float("inf"))
            entry.explicit = True
            entry.expires = float("inf")
        return info

    # -- plain state updates
    def note_addrs(self, peer: str, addrs: Iterable[str]) -> None:
        """Remember dialable addresses `peer` claims (an announce): a stranger's word."""
        self._learn(peer, addrs)

    def _learn(self, peer: str, addrs: Iterable[Any], *, confirmed: bool = False,
               proven: bool = False) -> _Candidate | None:
        try:
            peer_id = ID.from_base58(peer) if isinstance(peer, str) else peer
            key = peer_id.to_base58()
        except Exception:
            return None
        if peer_id == self.my_id:
            return None
        now = self.clock()
        fresh: list[tuple[str, multiaddr.Multiaddr]] = []
        for text in list(addrs)[:64]:
            canon = _canonical(text) if isinstance(text, (str, multiaddr.Multiaddr)) else None
            if canon is None or not self.may_dial(key, canon):
                continue
            if not proven and not confirmed and self.forgotten.get((key, canon), 0.0) > now:
                continue
            if canon not in (c for c, _ in fresh):
                fresh.append((canon, multiaddr.Multiaddr(canon)))
                if len(fresh) >= MAX_ADDRS_PER_PEER:
                    break
        if not fresh:
            return None
        candidate = self._candidate(peer_id, proven=proven or confirmed)
        if candidate is None:
            return None
        candidate.proven |= proven or confirmed
        candidate.heard = now
        ttl = CONFIRMED_TTL_S if confirmed else LEARNED_TTL_S
        for canon, addr in fresh:
            entry = candidate.entries.get(canon)
            if entry is None:
                if len(candidate.entries) >= MAX_ADDRS_PER_PEER and not self._make_room(
                        candidate, now):
                    continue
                entry = candidate.entries[canon] = _Addr(addr, now + ttl)
            entry.heard = now
            entry.confirmed |= confirmed
            if not entry.explicit:
                entry.expires = max(entry.expires, now + ttl)
        return candidate

    def _candidate(self, peer_id: ID, *, proven: bool = False, explicit: bool = False,
                   ) -> _Candidate | None:
        """The candidate for `peer_id`, made (pushing another out if full) if need be."""
        key = peer_id.to_base58()
        candidate = self.candidates.get(key)
        if candidate is not None:
            return candidate
        if not explicit:
            evictable = [c for c in self.candidates.values() if _evictable(c)]
            strangers = [c for c in evictable if not c.proven]
            if not proven and len(strangers) >= MAX_STRANGERS:
                if not self._evict_one(strangers):
                    return None
            elif len(self.candidates) >= MAX_CANDIDATES:
                # a stranger only ever pushes out a stranger
                if not self._evict_one(strangers or (evictable if proven else [])):
                    return None
        candidate = self.candidates[key] = _Candidate(peer_id, heard=self.clock())
        return candidate

    def _evict_one(self, pool: list[_Candidate]) -> bool:
        """Drop the least useful candidate of `pool`: dials failed first, then the oldest."""
        pool = [c for c in pool if not c.dialing] or pool
        if not pool:
            return False
        worst = min(pool, key=lambda c: (c.failures == 0, max(c.last_seen, c.heard)))
        if worst.failures:  # it failed us: do not take it back from the next stranger
            for canon in list(worst.entries):
                self._forget(worst, canon)
        self._drop(worst)
        self.evicted += 1
        return True

    def _make_room(self, candidate: _Candidate, now: float) -> bool:
        """Push out the address of `candidate` heard longest ago (never an explicit one)."""
        old = [(c, e) for c, e in candidate.entries.items()
               if not e.explicit and e.heard < now]
        if not old:
            return False
        canon, _ = min(old, key=lambda item: (item[1].failures == 0, item[1].confirmed,
                                              item[1].heard))
        del candidate.entries[canon]
        return True

    def _forget(self, candidate: _Candidate, canon: str) -> None:
        key = candidate.peer_id.to_base58()
        candidate.entries.pop(canon, None)
        self.forgotten.pop((key, canon), None)
        self.forgotten[(key, canon)] = self.clock() + FORGET_S
        while len(self.forgotten) > MAX_FORGOTTEN:
            del self.forgotten[next(iter(self.forgotten))]
        self.evicted += 1
        if not candidate.entries and not candidate.pinned:
            self._drop(candidate)

    def _drop(self, candidate: _Candidate) -> None:
        """Remove `candidate` (not a newer one of the same peer made while it was dialled)."""
        key = candidate.peer_id.to_base58()
        if self.candidates.get(key) is candidate:
            del self.candidates[key]

    def expire(self) -> None:
        """Drop addresses not heard of within their TTL, and peers left without any."""
        now = self.clock()
        for key in list(self.candidates):
            candidate = self.candidates[key]
            for canon in [c for c, e in candidate.entries.items()
                          if not e.explicit and e.expires <= now]:
                del candidate.entries[canon]
            if not candidate.entries and not candidate.pinned:
                del self.candidates[key]
        if self.forgotten and next(iter(self.forgotten.values())) <= now:
            self.forgotten = {k: t for k, t in self.forgotten.items() if t > now}

    def on_connected(self, peer: str) -> None:
        candidate = self.candidates.get(peer)
        if self.forgotten:
            self.forgotten = {k: t for k, t in self.forgotten.items() if k[0] != peer}
        if candidate is not None:
            candidate.failures = 0
            candidate.proven = True
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
        candidate = self._learn(peer, addrs, proven=True)
        if candidate is None:
            return
        candidate.last_seen = self.clock()
        best = [str(e.addr) for e in sorted(candidate.entries.values(), key=_rank)]
        if self.peer_book is not None and best:
            try:
                self.peer_book.save_peer(peer, best[:MAX_ADDRS_PER_PEER],
                                         int(time.time() * 1000))
            except Exception:
                log.warning("could not save peer %s", peer, exc_info=True)

    def due(self, connected: set[str]) -> list[_Candidate]:
        """Candidates to dial now: pinned ones always, others while under target."""
        self.expire()
        now = self.clock()
        self._absorb_peerstore(connected)
        ready = [c for key, c in self.candidates.items()
                 if key not in connected and c.next_try <= now and c.entries
                 and not c.dialing and not self.is_banned(key)]
        pinned = [c for c in ready if c.pinned]
        others = sorted((c for c in ready if not c.pinned),
                        key=lambda c: (not c.proven, -c.last_seen, -c.heard))
        room = max(0, self.target_peers - len(connected) - len(pinned))
        return pinned + others[:room]

    def _absorb_peerstore(self, connected: set[str]) -> None:
        """Peers mDNS (or identify, or peer exchange) put in the peerstore become
        candidates too, as strangers, a few per tick."""
        if len(connected) >= self.target_peers:
            return
        taken = 0
        try:
            peerstore = self.host.get_peerstore()
            for peer_id in peerstore.peers_with_addrs():
                key = peer_id.to_base58()
                if key in self.candidates or key in connected or peer_id == self.my_id:
                    continue
                addrs = [str(a) for a in peerstore.addrs(peer_id)]
                if self._learn(key, addrs) is not None:
                    taken += 1
                    if taken >= MAX_ABSORB_PER_TICK:
                        return
        except Exception:
            log.debug("reading the peerstore failed", exc_info=True)

    # -- dialling
    def _pick(self, candidate: _Candidate) -> tuple[str, _Addr] | None:
        """The address to dial next: ready ones first, best ranked."""
        if not candidate.entries:
            return None
        now = self.clock()
        return min(candidate.entries.items(),
                   key=lambda item: (item[1].next_try > now, _rank(item[1])))

    def _failed(self, candidate: _Candidate, canon: str, entry: _Addr) -> None:
        now = self.clock()
        entry.failures += 1
        candidate.failures += 1
        limit = MAX_FAILURES_CONFIRMED if entry.confirmed else MAX_FAILURES_LEARNED
        if not entry.explicit and entry.failures >= limit:
            self._forget(candidate, canon)
        else:
            wait = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(entry.failures, 20))
            entry.next_try = now + wait * random.uniform(0.8, 1.2)
        if (not candidate.proven and not candidate.pinned
                and candidate.failures >= MAX_STRANGER_FAILURES
                and not any(e.explicit for e in candidate.entries.values())):
            for other in list(candidate.entries):
                self._forget(candidate, other)
            self._drop(candidate)
        candidate.next_try = min((e.next_try for e in candidate.entries.values()),
                                 default=now + BACKOFF_MAX_S)

    def _prepare_peerstore(self, peer_id: ID, addr: multiaddr.Multiaddr) -> None:
        """Leave exactly `addr` for libp2p to dial (it would pick its own otherwise)."""
        try:
            self.host.get_peerstore().clear_addrs(peer_id)
        except Exception:
            pass
        unblock = getattr(self.host.get_network(), "unblock_peer", None)
        if unblock is not None:  # our own backoff replaces libp2p's negative cache
            try:
                unblock(peer_id)
            except Exception:
                pass

    async def dial(self, candidate: _Candidate) -> bool:
        picked = self._pick(candidate)
        if picked is None:
            return False
        canon, entry = picked
        key = candidate.peer_id.to_base58()
        if candidate.peer_id in self.host.get_connected_peers():
            self.on_connected(key)
            return True
        self.dials += 1
        candidate.dialing = True
        candidate.next_try = self.clock() + DIAL_TIMEOUT_S  # no second dial meanwhile
        try:
            self._prepare_peerstore(candidate.peer_id, entry.addr)
            with trio.fail_after(DIAL_TIMEOUT_S):
                await self.host.connect(PeerInfo(candidate.peer_id, [entry.addr]))
        except Exception as error:  # unreachable, refused, handshake failed, timeout
            self.failed_dials += 1
            try:  # connect left the address there: it must not come back as news
                self.host.get_peerstore().clear_addrs(candidate.peer_id)
            except Exception:
                pass
            self._failed(candidate, canon, entry)
            log.debug("dial %s at %s failed (%d): %r", key, canon, entry.failures, error)
            return False
        finally:
            candidate.dialing = False
        now = self.clock()
        entry.failures, entry.next_try, entry.heard = 0, 0.0, now
        entry.confirmed = True
        if not entry.explicit:
            entry.expires = max(entry.expires, now + CONFIRMED_TTL_S)
        self.on_connected(key)
        return True

    # -- the guard on libp2p's own dials
    def _install_dial_guard(self) -> None:
        """Make every dial of this host's network drop addresses `may_dial` refuses."""
        try:
            network = self.host.get_network()
        except Exception:
            return
        if getattr(network, "_loopy_dial_guard", None) is None:
            for name in ("dial_peer", "dial_peer_replacement"):
                original = getattr(network, name, None)
                if original is not None:
                    setattr(network, name, _guarded(network, original))
        network._loopy_dial_guard = self  # the newest Discovery of this host decides

    def scrub(self, peer_id: ID) -> None:
        """Remove from the peerstore the addresses of `peer_id` we may not dial."""
        try:
            peerstore = self.host.get_peerstore()
            addrs = list(peerstore.addrs(peer_id))
        except Exception:
            return
        key = peer_id.to_base58()
        keep = [a for a in addrs if self.may_dial(key, a)]
        if len(keep) != len(addrs):
            log.debug("not dialling %d addresses of %s", len(addrs) - len(keep), key)
            peerstore.clear_addrs(peer_id)
            if keep:
                peerstore.add_addrs(peer_id, keep, PEERSTORE_TTL_S)

    async def _stop_libp2p_autoconnect(self) -> None:
        connector = getattr(self.host.get_network(), "auto_connector", None)
        if connector is not None and getattr(connector, "_started", True):
            try:
                await connector.stop()
            except Exception:
                log.debug("could not stop the libp2p auto-connector", exc_info=True)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Dial due candidates every second, forever."""
        async with trio.open_nursery() as nursery:
            await self._stop_libp2p_autoconnect()
            task_status.started()
            while True:
                await self._stop_libp2p_autoconnect()  # in case libp2p started it late
                connected = {p.to_base58() for p in self.host.get_connected_peers()}
                for candidate in self.due(connected):
                    nursery.start_soon(self.dial, candidate)
                await trio.sleep(TICK_S)


def _guarded(network: Any, original: Callable) -> Callable:
    async def dial(peer_id: ID, *args: Any, **kwargs: Any) -> Any:
        guard = getattr(network, "_loopy_dial_guard", None)
        if guard is not None:
            guard.scrub(peer_id)
        return await original(peer_id, *args, **kwargs)
    return dial


def _canonical(addr: Any) -> str | None:
    try:
        text = strip_p2p(str(addr))
        return str(multiaddr.Multiaddr(text)) if text else None
    except Exception:
        return None


def _evictable(candidate: _Candidate) -> bool:
    return not candidate.pinned and not any(e.explicit for e in candidate.entries.values())


def _rank(entry: _Addr) -> tuple:
    """Better addresses sort first: explicit, confirmed, fewest failures, heard last."""
    return (not entry.explicit, not entry.confirmed, entry.failures, -entry.heard)

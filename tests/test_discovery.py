"""swarm.discovery under attack: poisoned announces, stale and unreachable addresses,
strangers steering dials to private networks. Real libp2p only on 127.0.0.1; every other
address a test "dials" is intercepted before any socket is opened."""
import multiaddr
import pytest
import trio

from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

import node as node_cli
from experiments.research.settings import Settings, load_settings
from swarm import discovery as disc
from swarm import records as rec
from swarm.discovery import DialPolicy, Discovery, address_scope
from swarm.host import open_host
from swarm.identity import NodeIdentity

from live_swarm import LOOP, connected, swarm_node, wait_for

ARENA = "embedded/tokens:300000/cpu"


def new_peer() -> str:
    return NodeIdentity.generate().peer_id


def public_addr(i: int) -> str:
    return f"/ip4/203.0.{113 + i // 60000 % 3}.{i % 250 + 1}/tcp/{4000 + i % 60000}"


NOT_PUBLIC = [  # what a stranger may never make a node listening on 0.0.0.0 dial
    "/ip4/10.{a}.{b}.1/tcp/4011", "/ip4/172.{c}.{b}.9/tcp/22", "/ip4/192.168.{a}.{b}/tcp/80",
    "/ip4/100.{d}.0.{b}/tcp/4011", "/ip6/fd00::{a}:{b}/tcp/4011", "/ip6/fc12::{b}/tcp/1",
    "/ip4/127.{a}.0.{b}/tcp/4011", "/ip6/::1/tcp/{port}", "/ip4/169.254.{a}.{b}/tcp/4011",
    "/ip6/fe80::{a}/tcp/4011", "/ip4/0.0.0.0/tcp/{port}", "/ip4/0.{a}.0.1/tcp/4011",
    "/ip6/::/tcp/4011", "/ip4/224.0.0.{b}/tcp/4011", "/ip6/ff02::{b}/tcp/4011",
    "/ip4/255.255.255.255/tcp/4011", "/ip4/240.{a}.0.1/tcp/4011",
    "/ip6/::ffff:10.0.{a}.{b}/tcp/4011", "/ip6/::ffff:127.0.0.1/tcp/{port}",
    "/dns4/router.lan/tcp/80", "/dns4/localhost/tcp/{port}",
]


def not_public_addr(i: int) -> str:
    template = NOT_PUBLIC[i % len(NOT_PUBLIC)]
    return template.format(a=i % 256, b=i // 7 % 250 + 1, c=16 + i % 16, d=64 + i % 64,
                           port=1024 + i)


def poison(n: int) -> list[str]:
    """n addresses, one in four public (documentation ranges: nothing real answers)."""
    return [public_addr(i) if i % 4 == 0 else not_public_addr(i) for i in range(n)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakePeerstore:
    def __init__(self) -> None:
        self.book: dict[ID, list] = {}

    def addrs(self, peer_id):
        if peer_id not in self.book:
            raise KeyError(peer_id)
        return list(self.book[peer_id])

    def add_addrs(self, peer_id, addrs, ttl=0):
        known = self.book.setdefault(peer_id, [])
        known.extend(a for a in addrs if a not in known)

    def clear_addrs(self, peer_id):
        self.book.pop(peer_id, None)

    def peers_with_addrs(self):
        return [p for p, a in self.book.items() if a]


class FakeNetwork:
    """libp2p's swarm as far as discovery sees it: `dial_peer` dials what the peerstore
    holds (py-libp2p does the same), recording it instead."""

    def __init__(self, host) -> None:
        self.host = host

    async def dial_peer(self, peer_id):
        addrs = self.host.peerstore.addrs(peer_id) if peer_id in self.host.peerstore.book \
            else []
        if not addrs:
            raise SwarmException("no addresses")
        for addr in addrs:
            self.host.dialled.append((peer_id.to_base58(), str(addr)))
            if str(addr) in self.host.reachable:
                self.host.connected.add(peer_id)
                return []
        raise SwarmException("refused")

    def unblock_peer(self, peer_id):
        pass


class FakeHost:
    def __init__(self, listen: str = "/ip4/0.0.0.0/tcp/4011", reachable=()) -> None:
        self.id = ID.from_base58(new_peer())
        self.listen = multiaddr.Multiaddr(listen)
        self.peerstore = FakePeerstore()
        self.network = FakeNetwork(self)
        self.dialled: list[tuple[str, str]] = []
        self.reachable = set(reachable)
        self.connected: set[ID] = set()

    def get_id(self):
        return self.id

    def get_addrs(self):
        return [self.listen]

    def get_peerstore(self):
        return self.peerstore

    def get_network(self):
        return self.network

    def get_connected_peers(self):
        return list(self.connected)

    async def connect(self, info):
        self.peerstore.add_addrs(info.peer_id, info.addrs)
        await self.network.dial_peer(info.peer_id)


class FakeBook:
    def __init__(self, peers=()) -> None:
        self.peers = list(peers)
        self.saved: dict[str, list[str]] = {}

    def load_peers(self):
        return self.peers

    def save_peer(self, peer_id, addrs, last_seen_ms):
        self.saved[peer_id] = list(addrs)


async def dial_rounds(discovery, clock, rounds, step=10.0):
    for _ in range(rounds):
        for candidate in discovery.due(set()):
            await discovery.dial(candidate)
        clock.now += step


def entries(discovery):
    return sum(len(c.entries) for c in discovery.candidates.values())


# --------------------------------------------------------------------------- the policy

def test_address_scopes():
    for addr, scope in [
        ("/ip4/8.8.8.8/tcp/1", "public"), ("/ip4/203.0.113.5/tcp/1", "public"),
        ("/ip6/2001:db8::1/tcp/1", "public"), ("/ip4/172.32.0.1/tcp/1", "public"),
        ("/ip4/100.128.0.1/tcp/1", "public"),
        ("/ip4/10.1.2.3/tcp/1", "private"), ("/ip4/172.31.255.1/tcp/1", "private"),
        ("/ip4/192.168.0.1/tcp/1", "private"), ("/ip4/100.64.0.1/tcp/1", "private"),
        ("/ip6/fd12::1/tcp/1", "private"), ("/ip6/::ffff:192.168.1.1/tcp/1", "private"),
        ("/ip4/127.0.0.1/tcp/1", "loopback"), ("/ip4/127.9.9.9/tcp/1", "loopback"),
        ("/ip6/::1/tcp/1", "loopback"), ("/ip4/169.254.1.1/tcp/1", "link-local"),
        ("/ip6/fe80::1/tcp/1", "link-local"), ("/ip4/0.0.0.0/tcp/1", "unspecified"),
        ("/ip4/0.1.2.3/tcp/1", "unspecified"), ("/ip6/::/tcp/1", "unspecified"),
        ("/ip4/224.0.0.1/tcp/1", "multicast"), ("/ip6/ff02::1/tcp/1", "multicast"),
        ("/ip4/255.255.255.255/tcp/1", "reserved"), ("/dns4/example.com/tcp/1", "none"),
        ("junk", "none"), (f"/ip4/10.0.0.1/tcp/1/p2p/{new_peer()}", "private"),
    ]:
        assert address_scope(addr)[0] == scope, addr


def test_dial_policy_follows_own_listen_networks_and_the_lan_flag():
    wildcard = DialPolicy(["/ip4/0.0.0.0/tcp/4011", "/ip6/::/tcp/4011"])
    assert wildcard.permits("/ip4/8.8.8.8/tcp/4011")
    assert wildcard.permits(f"/ip4/8.8.8.8/tcp/4011/p2p/{new_peer()}")
    for addr in poison(400):
        if address_scope(addr)[0] != "public":
            assert not wildcard.permits(addr), addr
    assert not wildcard.permits("/ip4/8.8.8.8/tcp/0")
    assert not wildcard.permits("/ip4/8.8.8.8/udp/4011")

    loopback = DialPolicy(["/ip4/127.0.0.1/tcp/5555"])
    assert loopback.permits("/ip4/127.0.0.1/tcp/4011") and loopback.permits("/ip4/127.3.0.1/tcp/1")
    assert not loopback.permits("/ip6/::1/tcp/4011")       # another network
    assert not loopback.permits("/ip4/10.0.0.1/tcp/4011")
    assert not loopback.permits("/ip4/192.168.1.1/tcp/4011")

    home = DialPolicy(["/ip4/192.168.1.5/tcp/4011"])
    assert home.permits("/ip4/192.168.7.7/tcp/4011")
    assert not home.permits("/ip4/10.0.0.1/tcp/4011")
    assert not home.permits("/ip4/127.0.0.1/tcp/4011")

    lan = DialPolicy(["/ip4/0.0.0.0/tcp/4011"], lan=True)
    for addr in ["/ip4/10.0.0.1/tcp/1", "/ip4/192.168.1.1/tcp/1", "/ip4/127.0.0.1/tcp/1",
                 "/ip6/fe80::1/tcp/1", "/ip4/169.254.0.9/tcp/1", "/ip6/fd00::1/tcp/1"]:
        assert lan.permits(addr), addr
    for addr in ["/ip4/0.0.0.0/tcp/1", "/ip4/224.0.0.1/tcp/1", "/ip6/ff02::1/tcp/1",
                 "/ip4/255.255.255.255/tcp/1", "/dns4/router.lan/tcp/80"]:
        assert not lan.permits(addr), addr


def test_lan_is_a_setting_and_a_start_flag():
    assert Settings().lan is False
    assert load_settings({"lan": True}, environ={}).lan is True
    assert load_settings({}, environ={"LOOPY_LAN": "1"}).lan is True
    args = node_cli.build_parser().parse_args(["start", "--lan"])
    assert load_settings(vars(args), environ={}).lan is True
    args = node_cli.build_parser().parse_args(["start"])
    assert load_settings(vars(args), environ={}).lan is False


# --------------------------------------------------------------------------- poisoning

async def test_discovery_poisoning_stays_bounded_and_dials_no_private_address():
    clock = FakeClock()
    host = FakeHost()  # listens on 0.0.0.0: public addresses only
    honest = new_peer()
    honest_addr = public_addr(999_999)
    book = FakeBook([(honest, [honest_addr, "/ip4/10.0.0.2/tcp/4011"])])
    discovery = Discovery(host, peer_book=book, clock=clock, target_peers=64)
    assert [str(a) for a in discovery.candidates[honest].addrs] == [honest_addr]

    # one stranger announces 1,000 addresses (64 per announce, the record limit)
    stranger = new_peer()
    addrs = poison(1000)
    for i in range(0, len(addrs), rec.MAX_LIST_LEN):
        discovery.note_addrs(stranger, addrs[i:i + rec.MAX_LIST_LEN])
    kept = [str(a) for a in discovery.candidates[stranger].addrs]
    assert len(kept) == disc.MAX_ADDRS_PER_PEER
    assert all(address_scope(a)[0] == "public" for a in kept)

    # 1,000 fresh keys announce a public address and a handful of private ones each
    sybils = [new_peer() for _ in range(1000)]
    for i, peer in enumerate(sybils):
        clock.now += 0.01
        discovery.note_addrs(peer, [public_addr(i)] + [not_public_addr(i + k) for k in range(5)])
    strangers = [c for c in discovery.candidates.values() if not c.proven]
    assert len(strangers) <= disc.MAX_STRANGERS
    assert len(discovery.candidates) <= disc.MAX_CANDIDATES
    assert entries(discovery) <= disc.MAX_STRANGERS * disc.MAX_ADDRS_PER_PEER + 1
    assert honest in discovery.candidates  # a peer from the peer book is not pushed out
    assert sybils[-1] in discovery.candidates  # the table still takes newcomers
    assert sybils[0] not in discovery.candidates  # ... by pushing out old strangers

    # what peer exchange or identify put in the peerstore is filtered the same way
    for i in range(200):
        peer_id = ID.from_base58(new_peer())
        host.peerstore.add_addrs(peer_id, [multiaddr.Multiaddr(not_public_addr(i)),
                                           multiaddr.Multiaddr(public_addr(5000 + i))])

    # dial everything due, repeatedly: nothing answers
    await dial_rounds(discovery, clock, rounds=300)
    assert host.dialled, "the public addresses were tried"
    not_public = [(p, a) for p, a in host.dialled if address_scope(a)[0] != "public"]
    assert not_public == []
    # each unreachable address is tried a few times, then evicted
    per_addr = {}
    for pair in host.dialled:
        per_addr[pair] = per_addr.get(pair, 0) + 1
    assert max(per_addr.values()) <= disc.MAX_FAILURES_CONFIRMED
    assert max(n for (p, _), n in per_addr.items() if p != honest) <= disc.MAX_FAILURES_LEARNED
    # every unreachable stranger's address was evicted (the peer book's lasts longer)
    assert set(discovery.candidates) <= {honest}

    # libp2p's own dials (peer exchange, new_stream) go through the same guard
    px_peer = ID.from_base58(new_peer())
    before = len(host.dialled)
    with pytest.raises(SwarmException):
        await host.connect(PeerInfo(px_peer, [multiaddr.Multiaddr("/ip4/192.168.1.1/tcp/80"),
                                              multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/22")]))
    assert host.dialled[before:] == []


# --------------------------------------------------------------------------- staleness

def test_addresses_not_announced_again_expire():
    clock = FakeClock()
    discovery = Discovery(FakeHost(), clock=clock)
    peer, addr = new_peer(), public_addr(1)
    discovery.note_addrs(peer, [addr])
    clock.now += disc.LEARNED_TTL_S - 10
    discovery.note_addrs(peer, [addr])  # re-announced: lives on
    clock.now += disc.LEARNED_TTL_S - 10
    discovery.expire()
    assert peer in discovery.candidates
    clock.now += 20
    discovery.expire()
    assert peer not in discovery.candidates
    assert discovery.due(set()) == []


def test_a_new_address_set_replaces_the_old_one_within_the_per_peer_cap():
    clock = FakeClock()
    discovery = Discovery(FakeHost(), clock=clock)
    peer = new_peer()
    old = [public_addr(i) for i in range(disc.MAX_ADDRS_PER_PEER)]
    new = [public_addr(100 + i) for i in range(disc.MAX_ADDRS_PER_PEER)]
    discovery.note_addrs(peer, old)
    clock.now += 60
    discovery.note_addrs(peer, new)
    assert sorted(str(a) for a in discovery.candidates[peer].addrs) == sorted(new)


async def test_unreachable_addresses_back_off_then_are_evicted_and_not_relearned():
    clock = FakeClock()
    host = FakeHost()
    discovery = Discovery(host, clock=clock)
    peer, addr = new_peer(), public_addr(7)
    discovery.note_addrs(peer, [addr])
    waits = []
    for _ in range(disc.MAX_FAILURES_LEARNED):
        (candidate,) = discovery.due(set())
        assert not await discovery.dial(candidate)
        if peer in discovery.candidates:
            waits.append(candidate.next_try - clock.now)
            assert discovery.due(set()) == []  # backing off
            clock.now = candidate.next_try
    assert len(waits) == disc.MAX_FAILURES_LEARNED - 1 and waits[1] > 1.3 * waits[0]
    assert peer not in discovery.candidates
    assert [a for _, a in host.dialled] == [addr] * disc.MAX_FAILURES_LEARNED
    discovery.note_addrs(peer, [addr])  # announced again: still forgotten
    assert peer not in discovery.candidates
    clock.now += disc.FORGET_S + 1
    discovery.note_addrs(peer, [addr])
    assert peer in discovery.candidates
    # a connection clears the memory of failures at once
    other, other_addr = new_peer(), public_addr(8)
    discovery.note_addrs(other, [other_addr])
    for _ in range(disc.MAX_FAILURES_LEARNED):
        clock.now += 60
        (candidate,) = [c for c in discovery.due(set()) if c.peer_id.to_base58() == other]
        await discovery.dial(candidate)
    assert other not in discovery.candidates
    discovery.on_connected(other)
    discovery.note_addrs(other, [other_addr])
    assert other in discovery.candidates


async def test_a_reachable_address_is_kept_and_confirmed():
    clock = FakeClock()
    peer, good, bad = new_peer(), public_addr(1), public_addr(2)
    host = FakeHost(reachable=[good])
    discovery = Discovery(host, clock=clock)
    discovery.note_addrs(peer, [bad, good])
    for _ in range(3):
        for candidate in discovery.due(set()):
            await discovery.dial(candidate)
        clock.now += 10
    assert ID.from_base58(peer) in host.connected
    entry = discovery.candidates[peer].entries[good]
    assert entry.confirmed and entry.failures == 0
    clock.now += disc.LEARNED_TTL_S * 2
    discovery.expire()
    assert good in discovery.candidates[peer].entries  # confirmed: a long life
    assert bad not in discovery.candidates[peer].entries


async def test_explicit_addresses_are_dialled_whatever_their_network_and_never_evicted():
    clock = FakeClock()
    host = FakeHost()
    boot = new_peer()
    discovery = Discovery(host, bootstrap=[f"/ip4/10.0.0.7/tcp/4011/p2p/{boot}"], clock=clock)
    for _ in range(disc.MAX_FAILURES_CONFIRMED + 3):
        (candidate,) = discovery.due(set())
        assert not await discovery.dial(candidate)
        clock.now = candidate.next_try
    assert boot in discovery.candidates and discovery.candidates[boot].pinned
    assert {a for _, a in host.dialled} == {"/ip4/10.0.0.7/tcp/4011"}
    # a stranger claiming the same private network for itself is still refused
    discovery.note_addrs(new_peer(), ["/ip4/10.0.0.8/tcp/4011"])
    assert list(discovery.candidates) == [boot]


def test_the_peer_book_keeps_only_addresses_the_node_would_dial():
    host, book = FakeHost(), FakeBook()
    discovery = Discovery(host, peer_book=book, clock=FakeClock())
    peer = new_peer()
    claimed = ["/ip4/192.168.1.4/tcp/4011", public_addr(3), "/ip4/127.0.0.1/tcp/4011",
               "/ip6/fe80::1/tcp/4011", "/dns4/example.com/tcp/4011"]
    host.peerstore.add_addrs(ID.from_base58(peer), [multiaddr.Multiaddr(a) for a in claimed])
    discovery.remember(peer)  # identify told us these; we are connected to the peer
    assert book.saved == {peer: [public_addr(3)]}
    assert discovery.candidates[peer].proven
    # a restarted node reads the book through the same filter
    stale = FakeBook([(peer, claimed)])
    again = Discovery(FakeHost(), peer_book=stale, clock=FakeClock())
    assert [str(a) for a in again.candidates[peer].addrs] == [public_addr(3)]


# --------------------------------------------------------------------------- real libp2p

async def test_libp2p_dials_skip_private_addresses_strangers_gave(monkeypatch):
    boot = new_peer()
    async with open_host(NodeIdentity.generate().seed, LOOP) as host:
        network = host.get_network()
        dialled = []

        async def fake_dial(addr, peer_id, source=None):  # nothing leaves the machine
            dialled.append(str(addr))
            raise SwarmException(f"refused (test): {addr}")

        monkeypatch.setattr(network, "_dial_addr_single_attempt", fake_dial)
        discovery = Discovery(host, bootstrap=[f"/ip4/10.9.9.9/tcp/4011/p2p/{boot}"])
        assert discovery.policy.permits("/ip4/127.0.0.1/tcp/9")  # we listen on loopback

        # peer exchange hands over a stranger's signed record: libp2p dials it at once
        stranger = ID.from_base58(new_peer())
        bad = ["/ip4/10.0.0.1/tcp/4011", "/ip4/192.168.1.1/tcp/80", "/ip4/169.254.1.1/tcp/1",
               "/ip6/fe80::1/tcp/1", "/ip4/224.0.0.1/tcp/1", "/ip4/172.16.0.1/tcp/22"]
        with pytest.raises(Exception):
            await host.connect(PeerInfo(stranger, [multiaddr.Multiaddr(a) for a in bad]))
        assert dialled == []
        with pytest.raises(Exception):
            await host.connect(PeerInfo(stranger, [multiaddr.Multiaddr(a) for a in bad]
                                        + [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/9")]))
        assert set(dialled) == {"/ip4/127.0.0.1/tcp/9"}

        # the user's bootstrap address is dialled, private or not
        dialled.clear()
        (candidate,) = [c for c in discovery.due(set()) if c.pinned]
        assert not await discovery.dial(candidate)
        assert set(dialled) == {"/ip4/10.9.9.9/tcp/4011"}

        # discovery is the one dialer: libp2p's auto-connector is stopped
        async with trio.open_nursery() as nursery:
            await nursery.start(discovery.run)
            assert not network.auto_connector._started
            nursery.cancel_scope.cancel()


async def test_a_node_on_loopback_finds_peers_on_loopback_through_announces(tmp_path):
    async with swarm_node(tmp_path / "a", lan=True, sync_interval=3600) as a, \
            swarm_node(tmp_path / "b", bootstrap=a.listen_addrs(), sync_interval=3600) as b, \
            swarm_node(tmp_path / "c", bootstrap=a.listen_addrs(), sync_interval=3600) as c:
        assert a.discovery.policy.lan and not b.discovery.policy.lan
        await wait_for(lambda: connected(b, a) and connected(c, a), timeout=20)
        assert not connected(b, c)
        await c.announce(arena=ARENA, working_on="")
        # b learns c's 127.0.0.1 address from the announce (relayed by a) and dials it:
        # b listens on 127.0.0.1 itself, so loopback addresses are fair game
        await wait_for(lambda: connected(b, c), timeout=20)
        assert c.peer_id in b.discovery.candidates
        assert all(address_scope(a)[0] == "loopback"
                   for a in b.discovery.candidates[c.peer_id].addrs)

"""swarm.host: noise-only, yamux, the node key as the host key, clean start and stop."""
import logging
import socket

import multiaddr
import pytest
import trio

from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from swarm import host as swarm_host
from swarm.identity import NodeIdentity

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def _port(addr: str) -> int:
    return int(multiaddr.Multiaddr(addr).value_for_protocol("tcp"))


async def test_host_uses_node_key_listens_and_releases_port():
    identity = NodeIdentity.generate()
    async with swarm_host.open_host(identity.seed, LOOPBACK) as host:
        assert host.get_id().to_base58() == identity.peer_id
        assert swarm_host.peer_id_from_public_key(identity.public_key) == identity.peer_id
        addrs = swarm_host.host_addrs(host)
        assert addrs and all(a.endswith("/p2p/" + identity.peer_id) for a in addrs)
        port = _port(addrs[0])
        assert port != 0
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_host_closes_when_cancelled():
    identity = NodeIdentity.generate()
    ports = []

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        async with swarm_host.open_host(identity.seed, LOOPBACK) as host:
            ports.append(_port(swarm_host.host_addrs(host)[0]))
            task_status.started()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        nursery.cancel_scope.cancel()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ports[0]), timeout=2).close()


async def test_noise_dialer_connects_but_plaintext_dialer_is_refused():
    server_id, client_id = NodeIdentity.generate(), NodeIdentity.generate()
    async with swarm_host.open_host(server_id.seed, LOOPBACK) as server:
        target = PeerInfo(server.get_id(), server.get_addrs())

        # A plaintext-only host (py-libp2p's own insecure transport) cannot get in.
        key_pair = create_new_key_pair()
        plaintext = new_host(
            key_pair=key_pair,
            sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
            muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
        )
        async with plaintext.run(listen_addrs=[multiaddr.Multiaddr(LOOPBACK)]):
            with pytest.raises(Exception):
                with trio.fail_after(15):
                    await plaintext.connect(target)
            assert server.get_id() not in plaintext.get_connected_peers()
            await plaintext.close()
        assert server.get_connected_peers() == []

        # Our own noise host does.
        async with swarm_host.open_host(client_id.seed, LOOPBACK) as client:
            with trio.fail_after(15):
                await client.connect(target)
            assert server.get_id() in client.get_connected_peers()


def test_parse_listen_accepts_tcp_only():
    assert str(swarm_host.parse_listen("/ip4/0.0.0.0/tcp/4011")) == "/ip4/0.0.0.0/tcp/4011"
    for bad in ["", "garbage", "/ip4/1.2.3.4", "/ip4/1.2.3.4/udp/1", "/ip4/1.2.3.4/tcp/1/ws"]:
        with pytest.raises(ValueError):
            swarm_host.parse_listen(bad)


def test_key_and_peer_id_helpers_refuse_bad_lengths():
    with pytest.raises(ValueError):
        swarm_host.key_pair_from_seed(b"short")
    with pytest.raises(ValueError):
        swarm_host.peer_id_from_public_key(b"\x01" * 31)


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_libp2p_logging_is_tamed_and_throttled():
    # (pytest's caplog also hooks non-propagating loggers, so collect by hand)
    swarm_host.tame_libp2p_logging(every_s=60)
    lib = logging.getLogger("libp2p")
    assert lib.getEffectiveLevel() >= logging.ERROR
    assert not lib.propagate
    collected = _ListHandler()
    ours = logging.getLogger("loopy.libp2p")
    ours.addHandler(collected)
    try:
        child = logging.getLogger("libp2p.pubsub.gossipsub")
        for i in range(50):
            child.warning("Rate limit exceeded for peer %s", "x")  # below ERROR: dropped
            child.error(f"fail to deliver message {i}")  # one call site, varying text
    finally:
        ours.removeHandler(collected)
    assert len(collected.records) == 1
    assert collected.records[0].levelno == logging.ERROR


def test_yamux_batches_window_updates_unless_the_environment_says_otherwise(monkeypatch):
    """py-libp2p's default sends a WINDOW_UPDATE after every read (most frames on a gossip
    connection); swarm.host turns it off. The knob is read per call: if a py-libp2p
    upgrade renames it, this fails rather than the cost silently coming back."""
    from libp2p.stream_muxer.yamux import yamux

    assert not yamux._yamux_release_on_read()
    monkeypatch.setenv("PY_YAMUX_RELEASE_ON_READ", "1")  # a user's own setting wins
    assert yamux._yamux_release_on_read()

"""Helpers for tests that run real swarm nodes on 127.0.0.1: nodes, a raw gossipsub
publisher, and waiting on a condition (never on a fixed sleep)."""
import hashlib
from contextlib import asynccontextmanager

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from swarm import gossip as gossip_mod
from swarm.gossip import message_id, topic_name
from swarm.host import open_host
from swarm.identity import NodeIdentity
from swarm.network import open_swarm_node
from swarm.store import Store

G = "0123456789abcdef"
ROOT = hashlib.sha256(b"base train.py").digest()
LOOP = "/ip4/127.0.0.1/tcp/0"
TOPIC = topic_name(G, "optimizer")


@asynccontextmanager
async def swarm_node(home, topics=("optimizer",), bootstrap=(), identity=None, **options):
    """A node of genome G on a store at home, listening on a free loopback port."""
    store = Store.open(home, root_id=ROOT)
    try:
        async with open_swarm_node(identity or NodeIdentity.generate(), store, genome=G,
                                   topics=topics, listen=LOOP, bootstrap=bootstrap,
                                   **options) as node:
            yield node
    finally:
        store.close()


@asynccontextmanager
async def raw_publisher(seed, topic=TOPIC):
    """A gossipsub peer on `topic` with no validators and no limits of its own: it sends
    whatever it is told to."""
    async with open_host(seed, LOOP) as host:
        router = gossip_mod.build_router()
        pubsub = Pubsub(host, router, strict_signing=True, msg_id_constructor=message_id)
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            await pubsub.subscribe(topic)
            yield host, pubsub


async def wait_for(predicate, timeout=15.0, poll=0.02):
    """Return once predicate() holds; fail after timeout seconds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(poll)


def connected(a, b) -> bool:
    """a holds a connection to b (a node, or anything with a peer_id)."""
    return b.peer_id in {p.peer_id for p in a.connected_peers()}


def subscribed(node, peer, topic="optimizer") -> bool:
    """node sees peer (another node, or its peer id) connected and subscribed to topic."""
    peer_id = getattr(peer, "peer_id", peer)
    return any(p.peer_id == peer_id and topic in p.topics for p in node.connected_peers())


def in_mesh(router, peer, topic=TOPIC) -> bool:
    """peer (a node, or its peer id) is in a gossipsub router's mesh for topic (a full
    topic name): the router forwards what it gets on topic to that peer."""
    peer_id = getattr(peer, "peer_id", peer)
    return ID.from_base58(peer_id) in router.mesh.get(topic, ())

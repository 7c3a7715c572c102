"""A live flood of valid records from fresh keys (real libp2p on 127.0.0.1): the storage
budget for strangers holds on the node that receives it, what it drops is an IGNORE (not
stored, not forwarded to the next node, no penalty for the sender), and records of an
author the node trusts still get through."""
from swarm import records as rec
from swarm.admission import StorageBudgets
from swarm.discovery import parse_peer_addr
from swarm.identity import NodeIdentity

from live_swarm import (G, ROOT, TOPIC, in_mesh, raw_publisher, subscribed, swarm_node,
                        wait_for)

ARENA = "embedded/tokens:300000/cpu"


def experiment(identity, i, size=1000):
    patch = "".join(f"+x_{i}_{j} = {'y' * 40}\n" for j in range(size // 50))
    patch = f"--- a/train.py\n+++ b/train.py\n@@ -0,0 +1,{size // 50} @@\n" + patch
    return rec.make_experiment(identity, genome=G, parents=[ROOT], topic="optimizer",
                               arena=ARENA, patch=patch, desc=f"flood {i}", agent="mutate",
                               result={"status": "ok", "val_bpb": 1.0})


async def test_a_live_flood_from_fresh_keys_stays_within_the_budget_and_is_not_relayed(
        tmp_path):
    budgets = StorageBudgets(strangers_per_hour=0, strangers_burst=64 * 1024)
    flooder, friend = NodeIdentity.generate(), NodeIdentity.generate()
    async with swarm_node(tmp_path / "b", budgets=budgets, sync_interval=3600) as b, \
            swarm_node(tmp_path / "c", bootstrap=b.listen_addrs(), sync_interval=3600) as c, \
            swarm_node(tmp_path / "a", bootstrap=b.listen_addrs(), identity=friend,
                       sync_interval=3600) as a, \
            raw_publisher(flooder.seed) as (host, pubsub):
        # b reproduced one of a's claims: a is a peer b trusts
        claim = experiment(friend, -1)
        b.store.insert(claim)
        b.store.insert(rec.make_attestation(b.identity, genome=G, target=claim.id,
                                            arena=ARENA, verdict="reproduced",
                                            result={"status": "ok", "val_bpb": 1.0}),
                       local=True)
        b.refresh_trust()
        assert friend.public_key in b.trusted
        await host.connect(parse_peer_addr(b.listen_addrs()[0]))
        await wait_for(lambda: subscribed(b, flooder.peer_id) and subscribed(c, b.peer_id)
                       and subscribed(a, b.peer_id))
        # b relays to c, and the flooder's and a's publishes reach b, once meshes form
        await wait_for(lambda: in_mesh(b.gossip.router, c) and in_mesh(pubsub.router, b)
                       and in_mesh(a.gossip.router, b))
        flood = [experiment(NodeIdentity.generate(), i) for i in range(120)]
        validator = b.gossip.validator

        def decided():
            return sum(b.store.has(r.id) for r in flood) + validator.storage_dropped

        for i, record in enumerate(flood):  # one fresh key per record
            await pubsub.publish(TOPIC, record.envelope)
            await wait_for(lambda: decided() > i)
        stored = [r for r in flood if b.store.has(r.id)]
        assert 0 < len(stored) < 30 and validator.storage_dropped == len(flood) - len(stored)
        assert b.admission.charged <= budgets.strangers_burst
        # a trusted author's record is never held back by the strangers' budget
        mine = experiment(friend, 1)
        await a.publish(mine)
        await wait_for(lambda: b.store.has(mine.id) and c.store.has(mine.id))
        # what b dropped it did not relay: c gets exactly what b kept (c's one path is b,
        # which never forwards what it ignored)
        await wait_for(lambda: all(c.store.has(r.id) for r in stored))
        assert {r.id for r in flood if c.store.has(r.id)} == {r.id for r in stored}
        # and the flooder is not punished for valid records (IGNORE, not REJECT)
        assert not b.guard.is_banned(flooder.peer_id) and validator.rejected == 0
        assert b.gossip.score(flooder.peer_id) >= 0
        status = b.storage_status()
        assert status["gossip_storage_dropped"] == validator.storage_dropped
        assert status["strangers_charged_bytes"] == b.admission.charged

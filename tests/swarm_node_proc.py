"""A swarm node in its own process, for multi-process tests (not a test module).

    python tests/swarm_node_proc.py HOME [--bootstrap ADDR ...] [--topic optimizer]

Prints JSON lines on stdout: first `{"peer_id": ..., "listen": [...]}` once
listening, then `{"record": <hex id>}` for every experiment that reaches its
store (its own included). Reads commands on stdin, one per line:
`publish <n>` (sign and publish experiment number n), `peers` (answers
`{"peers": [...]}`). SIGTERM and SIGINT stop it cleanly; SIGKILL is the test.
"""
import argparse
import hashlib
import json
import signal
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swarm import records as rec  # noqa: E402
from swarm.identity import NodeIdentity  # noqa: E402
from swarm.network import open_swarm_node  # noqa: E402
from swarm.store import Store  # noqa: E402

GENOME = "0123456789abcdef"
ROOT = hashlib.sha256(b"base train.py").digest()


def say(message: dict) -> None:
    print(json.dumps(message), flush=True)


async def report_records(store: Store) -> None:
    seen: set[bytes] = set()
    while True:
        for record in store.experiments():
            if record.id not in seen:
                seen.add(record.id)
                say({"record": record.id_hex})
        await trio.sleep(0.05)


async def obey(node, identity: NodeIdentity, topic: str) -> None:
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line:
            return  # the test went away: keep running until a signal
        words = line.split()
        if words[:1] == ["publish"] and len(words) == 2:
            record = rec.make_experiment(
                identity, genome=GENOME, parents=[ROOT], topic=topic,
                arena="embedded/tokens:300000/cpu", patch="", desc=f"edit {words[1]}",
                agent="mutate", result={"status": "ok", "val_bpb": 1.5})
            await node.publish(record)
        elif words == ["peers"]:
            say({"peers": [p.peer_id for p in node.connected_peers()]})


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("home")
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--topic", default="optimizer")
    args = parser.parse_args()
    identity = NodeIdentity.load_or_create(args.home)
    store = Store.open(args.home, root_id=ROOT)
    try:
        async with open_swarm_node(identity, store, genome=GENOME, topics=[args.topic],
                                   listen="/ip4/127.0.0.1/tcp/0", bootstrap=args.bootstrap,
                                   sync_interval=2.0) as node:
            say({"peer_id": node.peer_id, "listen": node.listen_addrs()})
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(report_records, store)
                    nursery.start_soon(obey, node, identity, args.topic)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break
    finally:
        store.close()


if __name__ == "__main__":
    trio.run(main)

"""Measure what one record costs a node: bytes on the wire, CPU per hop, bytes in the store.

    python bench/wire_costs.py            # prints a JSON summary and a markdown table
    python bench/wire_costs.py --records 100 --rate 4

The inputs of docs/SCALING.md's projections, measured on loopback:

1. Envelope sizes of typical records, made the way the loop makes them: an experiment
   carrying a real `mutate` catalogue edit of the base genome (its patch, a full result
   map), an attestation of it, an announce (working_on, head, two addresses).
2. CPU per record per node: three node processes in a line, A -> B -> C (B relays; sync
   and periodic announces off). A publishes `--records` experiment records at `--rate`
   per second; each process's CPU (from /proc) over the publishing window, minus what it
   spends idle (measured for 10 s first), divided by the records. B's share is a relay's
   (receive, verify, store, forward), C's a leaf's (receive, verify, store), A's a
   publisher's (sign, store, send). A node in a real mesh receives each record from
   several peers; the in-process swarm figures in BENCHMARKS.md include that.
3. Store growth per record: the SQLite file (WAL checkpointed) before and after inserting
   a few thousand such records, per record.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from experiments.agents.base import load_brief  # noqa: E402
from experiments.agents.mutate import MutateAgent  # noqa: E402
from experiments.simulation.synthetic import SyntheticTrainer  # noqa: E402
from genome import base_train_source, genome_id, genome_root_id  # noqa: E402
from swarm import records as rec  # noqa: E402
from swarm.descriptions import working_on  # noqa: E402
from swarm.identity import NodeIdentity  # noqa: E402
from swarm.patch import make_patch  # noqa: E402
from swarm.store import Store  # noqa: E402

ARENA = "embedded/tokens:300000/cpu"


def sample_records(count: int, seed: int = 0) -> list:
    """Experiments (real catalogue edits), attestations and announces, as a loop makes them."""
    rng = random.Random(seed)
    base = base_train_source()
    agent = MutateAgent(base_source=base, profile="cpu")
    brief = load_brief("general")
    trainer = SyntheticTrainer(0, base_source=base)
    authors = [NodeIdentity.generate() for _ in range(8)]
    root = genome_root_id()
    out = []
    parent = root
    while len(out) < count:
        proposal = agent.propose(base, brief, [], parent_id=parent.hex(),
                                 rng=random.Random(rng.random()))
        if not proposal.ok:
            continue
        result = trainer.run(proposal.source, seed=0).to_record_result()
        result["reason"] = ""
        author = rng.choice(authors)
        exp = rec.make_experiment(author, genome=genome_id(), parents=[root], topic="general",
                                  arena=ARENA, patch=make_patch(base, proposal.source),
                                  desc=proposal.desc, agent="mutate", result=result)
        verifier = rng.choice([a for a in authors if a is not author])
        att = rec.make_attestation(verifier, genome=genome_id(), target=exp.id, arena=ARENA,
                                   verdict="reproduced" if result["status"] == "ok"
                                   else "refuted", result=result)
        ann = rec.make_announce(author, genome=genome_id(), topics=["general"], arena=ARENA,
                                working_on=working_on(root, proposal.desc),
                                addrs=["/ip4/203.0.113.7/tcp/4011",
                                       "/ip6/2001:db8::7/tcp/4011"], head=exp.id)
        out += [exp, att, ann]
    return out[:count]


def sizes(records: list) -> dict:
    by_kind: dict[str, list[int]] = {}
    for r in records:
        by_kind.setdefault(r.kind, []).append(len(r.envelope))
    return {k: {"mean": sum(v) / len(v), "max": max(v), "min": min(v)}
            for k, v in by_kind.items()}


def store_growth(records: list, work: Path) -> float:
    """Bytes on disk per stored record (experiments and attestations; announces replace)."""
    import sqlite3
    (work / "growth").mkdir(parents=True)
    store = Store.open(work / "growth", root_id=genome_root_id())
    db = work / "growth" / "store.sqlite"

    def size() -> int:
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        return sum(f.stat().st_size for f in (work / "growth").iterdir() if f.is_file())
    kept = [r for r in records if r.kind != "announce"]
    half = len(kept) // 2
    store.insert_many(kept[:half])
    before = size()
    store.insert_many(kept[half:])
    after = size()
    store.close()
    return (after - before) / (len(kept) - half)


NODE = r"""
import json, sys, time, hashlib, logging, trio
sys.path.insert(0, {repo!r})
logging.getLogger("libp2p").setLevel(logging.ERROR)
from swarm import records as rec
from swarm.identity import NodeIdentity
from swarm.network import open_swarm_node
from swarm.store import Store
from genome import genome_id, genome_root_id
async def main():
    identity = NodeIdentity(hashlib.sha256({name!r}.encode()).digest())
    store = Store.open({home!r}, root_id=genome_root_id())
    async with open_swarm_node(identity, store, genome=genome_id(), topics=["general"],
                               listen="/ip4/127.0.0.1/tcp/{port}", bootstrap={bootstrap!r},
                               sync_interval=3600, announce_interval=3600,
                               target_peers=1) as node:
        got = [0]
        original = node.gossip.on_record
        def on_record(r, origin):
            got[0] += 1
            original(r, origin)
        node.gossip.on_record = on_record
        print(json.dumps({{"addr": node.listen_addrs()[0]}}), flush=True)
        stdin = trio.wrap_file(sys.stdin)
        while True:
            line = (await stdin.readline()).strip()
            if not line or line == "stop":
                break
            if line.startswith("publish "):
                _, path, rate = line.split()
                envs = [bytes.fromhex(h) for h in json.load(open(path))]
                for env in envs:
                    r = rec.decode_envelope(env, genome=genome_id())
                    await node.publish(r)
                    await trio.sleep(1 / float(rate))
                print(json.dumps({{"published": len(envs)}}), flush=True)
            if line == "count":
                print(json.dumps({{"got": got[0], "peers": len(node.connected_peers())}}),
                      flush=True)
trio.run(main)
"""


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hop_costs(records: int, rate: float, work: Path) -> dict:
    """A -> B -> C on loopback, each its own process: CPU per record per node."""
    import socket

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def spawn(name, bootstrap):
        code = NODE.format(repo=str(REPO), name=f"wire-costs/{name}", home=str(work / name),
                           port=free_port(), bootstrap=bootstrap)
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1)
        return proc, json.loads(proc.stdout.readline())["addr"]

    for name in "abc":
        (work / name).mkdir(parents=True)
    b, addr_b = spawn("b", [])
    c, _ = spawn("c", [addr_b])
    a, _ = spawn("a", [addr_b])
    procs = {"publisher (A)": a, "relay (B)": b, "leaf (C)": c}
    try:
        time.sleep(8)   # connect, meshes form over a few heartbeats
        t0 = {k: proc_cpu_s(p.pid) for k, p in procs.items()}
        time.sleep(10)
        idle = {k: (proc_cpu_s(p.pid) - t0[k]) / 10 for k, p in procs.items()}
        batch = [r.envelope.hex() for r in sample_records(records * 3)
                 if r.kind == "experiment"][:records]
        path = work / "batch.json"
        path.write_text(json.dumps(batch))
        t1 = {k: proc_cpu_s(p.pid) for k, p in procs.items()}
        w1 = time.monotonic()
        a.stdin.write(f"publish {path} {rate}\n")
        a.stdin.flush()
        json.loads(a.stdout.readline())
        time.sleep(3)   # the last records cross two hops
        wall = time.monotonic() - w1
        cpu = {k: proc_cpu_s(p.pid) - t1[k] for k, p in procs.items()}
        c.stdin.write("count\n")
        c.stdin.flush()
        got = json.loads(c.stdout.readline())
        per_record = {k: 1000 * (cpu[k] - idle[k] * wall) / len(batch) for k in procs}
        return {"records": len(batch), "rate_per_s": rate, "delivered_to_leaf": got["got"],
                "cpu_ms_per_record": per_record,
                "idle_cpu_percent": {k: 100 * v for k, v in idle.items()}}
    finally:
        for p in procs.values():
            try:
                p.stdin.write("stop\n")
                p.stdin.flush()
                p.wait(timeout=20)
            except Exception:
                p.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=150, help="records A publishes")
    ap.add_argument("--rate", type=float, default=3.0, help="records per second")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loopy-wire-"))
    sample = sample_records(600)
    out = {"load_before": os.getloadavg()[0], "envelope_bytes": sizes(sample),
           "store_bytes_per_record": store_growth(sample_records(3000, seed=1), work),
           "hops": hop_costs(args.records, args.rate, work),
           "load_after": os.getloadavg()[0]}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

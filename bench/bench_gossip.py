"""Benchmark the swarm's networking on loopback: gossip spread, sync catch-up, idle cost.

    python bench/bench_gossip.py             # everything, writes docs/BENCHMARKS.md
    python bench/bench_gossip.py --quick     # smaller sizes, prints only

Measures, all on 127.0.0.1 with real stores (SQLite, fsync on):

1. Propagation: N nodes (10, 25, 50) in one process, a random sparse graph
   (each node dials 3 random earlier ones), sync off; records published from
   random nodes, each one 0.5 s after the previous one reached every node
   (or after 20 s): this measures the latency of a record into a quiet
   swarm, not throughput, and so does not depend on how fast the shared
   process works through a backlog. `cpu_ms_per_record` is the process CPU
   per record, all nodes together, which bounds throughput. Per record: the
   latency of every delivery and the time until the last node has it (p50,
   p99); the delivery ratio (deliveries seen / deliveries expected) within
   30 s of the last publish. The stores live on tmpfs when /dev/shm exists:
   with N nodes in one process, N fsyncs per record (about 9 ms each on this
   VM's disk) would measure the disk, not the network; `fsync_ms` reports
   what one insert costs on disk.
2. Late-joiner catch-up: one node holds 1,000 / 10,000 records (a lineage:
   a chain of improvements with failed tries hanging off it, plus
   attestations); a fresh node connects and syncs; time until it has all.
3. Idle node: a node process with one peer, after a warm-up: CPU share and
   RSS over 30 s, and whether torch got imported (it must not).

One process hosts all nodes of (1) and (2), so they share its 2 cores: the
numbers are a floor on a real deployment, where each node has its own CPU.
Results go between `<!-- bench_gossip -->` markers in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from swarm import records as rec  # noqa: E402
from swarm.identity import NodeIdentity  # noqa: E402
from swarm.network import serve_swarm  # noqa: E402
from swarm.store import Store  # noqa: E402

GENOME = "0123456789abcdef"
ROOT = hashlib.sha256(b"base train.py").digest()
ARENA = "embedded/tokens:300000/cpu"
LOOP = "/ip4/127.0.0.1/tcp/0"
MARK_BEGIN, MARK_END = "<!-- bench_gossip -->", "<!-- /bench_gossip -->"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def experiment(identity, i, parent=ROOT, status="ok"):
    result = {"status": "ok", "val_bpb": 1.5 - i / 1e6} if status == "ok" else {
        "status": "crash", "reason": "nan loss"}
    return rec.make_experiment(identity, genome=GENOME, parents=[parent], topic="optimizer",
                               arena=ARENA, patch="", desc=f"edit {i}", agent="mutate",
                               result=result)


def lineage(n: int, seed: int = 1) -> list:
    """n records shaped like a swarm's history: 1 in 20 an improvement on the chain,
    the rest tries on a recent chain member, and 1 in 50 an attestation."""
    rng = random.Random(seed)
    authors = [NodeIdentity.generate() for _ in range(8)]
    chain, out = [], []
    for i in range(n):
        author = rng.choice(authors)
        if i % 50 == 25 and chain:
            out.append(rec.make_attestation(author, genome=GENOME, target=rng.choice(chain).id,
                                            arena=ARENA, verdict="reproduced",
                                            result={"status": "ok", "val_bpb": 1.5}))
        elif i % 20 == 0 or not chain:
            record = experiment(author, i, chain[-1].id if chain else ROOT)
            chain.append(record)
            out.append(record)
        else:
            parent = rng.choice(chain[-10:]).id
            out.append(experiment(author, i, parent, rng.choice(["ok", "crash"])))
    return out


async def start_nodes(nursery, tmp: Path, n: int, **options) -> list:
    nodes = []
    for i in range(n):
        store = Store.open(tmp / f"n{i}", root_id=ROOT)
        node = await nursery.start(lambda task_status, store=store: serve_swarm(
            NodeIdentity.generate(), store, genome=GENOME, topics=["optimizer"], listen=LOOP,
            task_status=task_status, **options))
        nodes.append(node)
    return nodes


async def wait_for(predicate, timeout: float, poll: float = 0.02) -> bool:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(poll)
        return True
    return False


# --------------------------------------------------------------------------- 1

async def propagation(n: int, records: int, tmp: Path, seed: int = 7,
                      budget_s: float = 120.0) -> dict:
    rng = random.Random(seed)
    arrivals: dict[bytes, dict[int, float]] = {}
    async with trio.open_nursery() as nursery:
        nodes = await start_nodes(nursery, tmp, n, sync_interval=3600, announce_interval=3600)
        for index, node in enumerate(nodes):
            original = node._on_gossip

            def hook(record, origin, index=index, original=original):
                arrivals.setdefault(record.id, {}).setdefault(index, time.monotonic())
                original(record, origin)
            node.gossip.on_record = hook
        t0 = time.monotonic()
        edges = [(i, j) for i in range(1, n) for j in rng.sample(range(i), min(3, i))]
        async with trio.open_nursery() as dialing:
            limit = trio.CapacityLimiter(8)

            async def dial(i, j):
                async with limit:
                    await nodes[i].connect(nodes[j].listen_addrs()[0])
            for i, j in edges:
                dialing.start_soon(dial, i, j)
        await wait_for(lambda: all(any("optimizer" in p.topics for p in node.connected_peers())
                                   for node in nodes), 60)
        await trio.sleep(3)  # a few heartbeats: meshes settle
        connect_s = time.monotonic() - t0
        cpu_idle, wall_idle = time.process_time(), time.monotonic()
        await trio.sleep(5)  # nothing published: what the nodes cost just being there
        idle_cpu_percent = 100 * (time.process_time() - cpu_idle) / (time.monotonic()
                                                                       - wall_idle)
        published: dict[bytes, tuple[int, float]] = {}
        cpu0 = time.process_time()
        stop_at = time.monotonic() + budget_s
        for k in range(records):
            if time.monotonic() > stop_at:
                break
            author = rng.randrange(n)
            record = experiment(nodes[author].identity, k)
            published[record.id] = (author, time.monotonic())
            await nodes[author].publish(record)
            await wait_for(lambda: len(arrivals.get(record.id, {})) >= n - 1, 20)
            await trio.sleep(0.5)
        records = len(published)
        expected = records * (n - 1)
        await wait_for(lambda: sum(len(arrivals.get(r, {})) for r in published) >= expected, 30)
        cpu_ms_per_record = 1000 * (time.process_time() - cpu0) / records
        nursery.cancel_scope.cancel()
    for node in nodes:
        node.store.close()
    latencies, spread = [], []
    delivered = 0
    for record_id, (author, sent) in published.items():
        times = [t - sent for i, t in arrivals.get(record_id, {}).items() if i != author]
        delivered += len(times)
        latencies.extend(times)
        if len(times) == n - 1:
            spread.append(max(times))
    return {"nodes": n, "records": records, "connect_s": connect_s,
            "delivery_ratio": delivered / expected,
            "latency_p50_ms": 1000 * percentile(latencies, 50),
            "latency_p99_ms": 1000 * percentile(latencies, 99),
            "all_nodes_p50_ms": 1000 * percentile(spread, 50),
            "all_nodes_p99_ms": 1000 * percentile(spread, 99),
            "reached_all": len(spread), "idle_cpu_percent": idle_cpu_percent,
            "cpu_ms_per_record": cpu_ms_per_record}


def insert_ms_on_disk(tmp: Path, count: int = 50) -> float:
    """What one store insert (one fsync'd transaction) costs on this disk."""
    me = NodeIdentity.generate()
    sample = [experiment(me, i) for i in range(count)]
    store = Store.open(tmp / "fsync-probe", root_id=ROOT)
    try:
        start = time.perf_counter()
        for record in sample:
            store.insert(record)
        return 1000 * (time.perf_counter() - start) / count
    finally:
        store.close()


# --------------------------------------------------------------------------- 2

async def catch_up(count: int, tmp: Path) -> dict:
    t0 = time.monotonic()
    history = lineage(count)
    build_s = time.monotonic() - t0
    async with trio.open_nursery() as nursery:
        (holder,) = await start_nodes(nursery, tmp / "holder", 1, sync_interval=3600)
        holder.store.insert_many(history)
        (joiner,) = await start_nodes(nursery, tmp / "joiner", 1, sync_interval=3600)
        start = time.monotonic()
        await joiner.connect(holder.listen_addrs()[0])
        done = await wait_for(lambda: joiner.records_from_sync >= len(history), 600, 0.05)
        elapsed = time.monotonic() - start
        missing = len(history) - joiner.records_from_sync
        nursery.cancel_scope.cancel()
    holder.store.close()
    joiner.store.close()
    return {"records": len(history), "seconds": elapsed, "complete": done and not missing,
            "records_per_s": len(history) / elapsed, "build_s": build_s}


# --------------------------------------------------------------------------- 3

def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


IDLE_NODE = """
import sys, trio, hashlib
sys.path.insert(0, {repo!r})
from swarm.identity import NodeIdentity
from swarm.network import open_swarm_node
from swarm.store import Store
async def main():
    identity = NodeIdentity.load_or_create({home!r})  # creates the home folder
    store = Store.open({home!r}, root_id=hashlib.sha256(b"base train.py").digest())
    async with open_swarm_node(identity, store,
                               genome={genome!r}, topics=["optimizer"],
                               listen="/ip4/127.0.0.1/tcp/0", bootstrap={bootstrap!r}) as node:
        print(node.listen_addrs()[0], "torch" in sys.modules, flush=True)
        await trio.sleep_forever()
trio.run(main)
"""


def idle(tmp: Path, seconds: float) -> dict:
    def spawn(name, bootstrap):
        code = IDLE_NODE.format(repo=str(REPO), home=str(tmp / name), genome=GENOME,
                                bootstrap=bootstrap)
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        addr, torch_loaded = proc.stdout.readline().split()
        return proc, addr, torch_loaded == "True", time.monotonic() - started

    peer, addr, _, _ = spawn("peer", [])
    node, _, torch_loaded, startup_s = spawn("node", [addr])
    try:
        time.sleep(5)  # connect, first sync, meshes
        cpu0, wall0 = _proc_cpu_s(node.pid), time.monotonic()
        time.sleep(seconds)
        cpu = (_proc_cpu_s(node.pid) - cpu0) / (time.monotonic() - wall0)
        return {"cpu_percent": 100 * cpu, "rss_mb": _proc_rss_mb(node.pid),
                "torch_loaded": torch_loaded, "startup_s": startup_s, "seconds": seconds}
    finally:
        for proc in (node, peer):
            proc.terminate()
            proc.wait(timeout=15)


# --------------------------------------------------------------------------- report

def _ms(value: float) -> str:
    return "n/a" if value != value else f"{value:.0f}"  # NaN: no record reached all


def render(results: dict) -> str:
    lines = [MARK_BEGIN, "## Gossip and sync (`bench/bench_gossip.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}, py-libp2p 0.8.1, "
             "loopback only. All nodes of a row share one process (and its cores), so "
             "these are floors for real deployments. Load average "
             f"{results['load_before'][0]:.1f} before and {results['load_after'][0]:.1f} "
             "after (other jobs shared the machine).", "",
             "Propagation (random sparse graph, each node dials 3 others; records from "
             "random nodes, each 0.5 s after the previous one reached all nodes; sync off; "
             "stores on "
             f"{results['stores_on']}, where an fsync'd insert on disk costs "
             f"{results['fsync_ms']:.1f} ms):", "",
             "| nodes | records | delivery ratio | reached every node | per-delivery "
             "p50 / p99 (ms) | to all nodes p50 / p99 (ms) | process CPU per record (ms) "
             "| process CPU with no records flowing |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["propagation"]:
        lines.append(f"| {row['nodes']} | {row['records']} | {row['delivery_ratio']:.3f} | "
                     f"{row['reached_all']} | "
                     f"{row['latency_p50_ms']:.0f} / {row['latency_p99_ms']:.0f} | "
                     f"{_ms(row['all_nodes_p50_ms'])} / {_ms(row['all_nodes_p99_ms'])} | "
                     f"{row['cpu_ms_per_record']:.0f} | {row['idle_cpu_percent']:.0f} % |")
    lines += ["", "Idle CPU is of one core. What a record costs is py-libp2p's per-RPC work "
              "(noise framing, yamux frames, and a signed peer record verified on every "
              "RPC received), about 10 ms of CPU per node per record. swarm/host.py and "
              "swarm/pubsub_fixes.py turn off four of py-libp2p's costs: a yamux window "
              "update after every read, an IDONTWANT notice to every mesh peer for every "
              "message however small, rebuilding our signed peer record for every RPC "
              "sent, and one stream read per byte of each RPC's length prefix. Together "
              "they cut this figure by about two thirds (quick runs at 10 and 25 nodes; "
              "the last one alone by 12 to 19 %). "
              "One Python process runs on one core: when all nodes' share of a record "
              "exceeds what that core (shared with other jobs) gives in the 20 s window, "
              "the row measures a saturated process, not the network; "
              "sync, off in this test, delivers the rest within one sync interval. Each "
              "real node runs in its own process (see the idle node below).",
              "", "Late joiner catch-up over `/loopy/sync/1.0.0` (one peer holds a lineage "
              "of experiments and attestations; verify + store included):", "",
              "| records | seconds | records/s | complete |", "|---|---|---|---|"]
    for row in results["catch_up"]:
        lines.append(f"| {row['records']:,} | {row['seconds']:.1f} | "
                     f"{row['records_per_s']:.0f} | {'yes' if row['complete'] else 'NO'} |")
    idle_row = results["idle"]
    lines += ["", f"Idle node (one peer, {idle_row['seconds']:.0f} s after a 5 s warm-up): "
              f"CPU {idle_row['cpu_percent']:.1f} % of one core, RSS "
              f"{idle_row['rss_mb']:.0f} MB, start-up to listening "
              f"{idle_row['startup_s']:.1f} s, torch imported: "
              f"{'YES' if idle_row['torch_loaded'] else 'no'}.", "", MARK_END]
    return "\n".join(lines)


def write_report(section: str, path: Path) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if MARK_BEGIN in text and MARK_END in text:
        before = text[:text.index(MARK_BEGIN)]
        after = text[text.index(MARK_END) + len(MARK_END):]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, print only")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--records", type=int, default=20)
    parser.add_argument("--catch-up", type=int, nargs="*", default=None)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    sizes = args.sizes or ([5, 10] if args.quick else [10, 25, 50])
    catch_up_sizes = args.catch_up or ([200] if args.quick else [1_000, 10_000])
    results: dict = {"propagation": [], "catch_up": [], "load_before": os.getloadavg()}
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory() as tmp_name, \
            tempfile.TemporaryDirectory(dir=shm) as fast_name:
        tmp, fast = Path(tmp_name), Path(fast_name)
        results["fsync_ms"] = insert_ms_on_disk(tmp)
        results["stores_on"] = "tmpfs" if shm else "disk"
        for n in sizes:
            row = trio.run(propagation, n, args.records, fast / f"prop{n}")
            print(json.dumps(row), flush=True)
            results["propagation"].append(row)
        for count in catch_up_sizes:
            row = trio.run(catch_up, count, tmp / f"catch{count}")
            print(json.dumps(row), flush=True)
            results["catch_up"].append(row)
        results["idle"] = idle(tmp / "idle", 5.0 if args.quick else args.idle_seconds)
        print(json.dumps(results["idle"]), flush=True)
    results["load_after"] = os.getloadavg()
    section = render(results)
    print(section)
    if not args.quick:
        write_report(section, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

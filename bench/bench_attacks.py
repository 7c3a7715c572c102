"""Benchmark: honest research while attackers squat, copy, flood, stall and poison (issue 18).

    python bench/bench_attacks.py                 # every attack, writes docs/BENCHMARKS.md
    python bench/bench_attacks.py --attacks none,flood-valid --duration 60 --no-write
    python bench/bench_attacks.py --nodes 3 --duration 15 --scale 0.05 --no-write  # smoke

The honest swarm is `bench/scaling.py`'s: real nodes (a `ResearchLoop` with the `mutate`
agent over its own SQLite store, joined by the libp2p layer exactly as node.py joins
them), the synthetic trainer waiting `--delay` seconds a run (+-20 %), each node
bootstrapping to 3 earlier ones, all on 127.0.0.1, the nodes spread over `--procs` worker
processes. Every configuration starts the same swarm afresh (same keys, same graph, same
agent seeds) and runs it for `--duration` seconds of wall time: once with no attacker
(`none`, `--baseline-runs` times, to see the run-to-run noise), then once per attack with
one attacker process doing it from its own libp2p hosts:

- `squat-1`: one key announces the arena's seed-0 baseline forever (re-announced every
  20 s, its `t` 9 minutes ahead).
- `squat-1000`: 1,000 keys re-announce every 60 s: baseline seeds 0-249, the edits the
  `mutate` agent proposes first on the genome root (what honest nodes run first), the
  honest nodes' own current `working_on` texts, and their programs on a made-up parent.
- `copy`: every honest announce is copied at once with a key that sorts before every
  honest key and a `t` 1 ms earlier than the original's.
- `flood-valid`: valid, buildable experiments (a `train.py` patch adding junk lines, a
  poor score) from 1,000 fresh keys on the honest arena and topic, 25 % small (1 KiB
  patch) and 75 % large (96 KiB), from 2 attacker peers connected to every honest node.
- `flood-orphan`: the same, but each record's parent is a random id nobody has.
- `fake-claims` (not in the issue's list): 1,000 fresh keys each claim a made-up
  improvement (val_bpb 0.5, a new one-line program on the genome root), a fifth of the
  flood rate, from 2 attacker peers: what a re-run queue ordered by claimed score would
  spend every re-run on.
- `slow-sync`: 20 attacker peers, each connected to every honest node, hold 4 sync
  streams each there (80 > the server's cap of 64): half never send a request, half send
  a one-id `get` every 9 s; every reset stream is reopened 1 s later.
- `slow-gossip` (not in the issue's list): 3 attacker peers connected to every honest
  node subscribe to every topic and never read their gossip streams, and a fourth gives
  the honest nodes something to relay to them (4 large presence announces a second).
- `discovery`: 1,000 keys announce (every 60 s) 64 addresses each: a TCP listener of the
  attacker's that accepts and says nothing (the victim of steered dials), closed ports on
  127.0.0.0/8, the honest nodes' own addresses (under the attacker's peer ids), and
  private, link-local and CGNAT addresses a node on 127.0.0.1 must never dial. The
  attacker reaches the swarm through one honest node. Dials off 127.0.0.1 are counted and
  refused by the bench (nothing leaves the machine).

What is reported per configuration (docs/BENCHMARKS.md, between `<!-- bench_attacks -->`):

- progress: the mean, over honest nodes, of the true (noise-free) improvement of the
  record each node's scoreboard holds as its best verified (true val_bpb of the base
  minus that record's), after the same wall time, as a share of the mean of the no-attack
  runs; also runs completed (baselines, edits, re-runs) and kept edits.
- store growth: the bytes of attacker records in each honest node's store at the end
  (body + envelope + 3 KiB a row, as admission counts them; largest node) and the
  strangers' bytes admitted (charged to the budgets: attackers' and not-yet-trusted
  honest peers' records together), against the bound `strangers_burst + strangers_per_hour
  * hours` (swarm/admission.py), and the database files' size.
- peak memory: the peak RSS (VmHWM) of the honest worker processes, each hosting
  nodes/procs nodes, and the largest quarantine.
- stopped / tracebacks: a loop that raised or returned, log records with a traceback
  (or at ERROR) from any logger in an honest worker, and "Traceback" in its stderr.

The attacker runs on the same cores as the honest nodes, so its own CPU (reported) is
taken from them: on a real network it would be the attacker's machine's.
"""
from __future__ import annotations

import argparse
import contextvars
import hashlib
import json
import logging
import os
import platform
import queue
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for path in (str(REPO), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)

import trio  # noqa: E402

import scaling  # noqa: E402  (the honest swarm: nodes, keys, graph, events)
from benchdoc import cpu_name, write_section  # noqa: E402
from genome import genome_id, genome_root_id  # noqa: E402
from swarm import records as rec  # noqa: E402
from swarm.admission import StorageBudgets  # noqa: E402
from swarm.descriptions import baseline_desc, edit_desc, working_on  # noqa: E402
from swarm.identity import NodeIdentity  # noqa: E402
from swarm.store import STORED_ROW_OVERHEAD, STORE_FILE  # noqa: E402

NAME = "bench_attacks"
ATTACKS = ("none", "squat-1", "squat-1000", "copy", "flood-valid", "flood-orphan",
           "fake-claims", "slow-sync", "slow-gossip", "discovery")
LOOP_ADDR = "/ip4/127.0.0.1/tcp/0"
GOAL = 0.9              # honest progress under attack, as a share of the no-attack runs
SAMPLE_S = 10.0         # workers report their stores this often
LARGE_SHARE = 0.75      # of flood records with a 96 KiB patch (the rest 1 KiB)
SQUAT_T_AHEAD_MS = 9 * 60 * 1000   # an author's t may run 10 minutes ahead


def emit(**fields) -> None:
    print(json.dumps(fields, default=str), flush=True)


def attack_key(attack: str, index: int) -> NodeIdentity:
    return NodeIdentity(hashlib.sha256(f"loopy-bench-attacks/{attack}/{index}".encode())
                        .digest())


def honest_keys(landscape: int, n: int) -> list[NodeIdentity]:
    return [scaling.node_identity(landscape, i) for i in range(n)]


# =========================================================================== honest workers

class Catcher(logging.Handler):
    """Counts log records that carry a traceback, and those at ERROR or above; and why
    catch-ups failed (swarm.network logs that at DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.tracebacks = 0
        self.errors = Counter()    # logger name -> records at ERROR or above
        self.catch_up_failures = Counter()   # error type -> catch-ups (any peer)
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            if record.msg.startswith("catch-up with") and record.args:
                error = record.args[-1]
                cause = error.__cause__ or error.__context__
                why = f"{type(error).__name__}" + (f" ({type(cause).__name__}: "
                                                  f"{' '.join(str(cause).split())[:90]})"
                                                  if cause else "")
                self.catch_up_failures[why] += 1
            return
        if record.levelno >= logging.ERROR:
            self.errors[record.name] += 1
        if not record.exc_info or record.exc_info[1] is None:
            return
        self.tracebacks += 1
        if len(self.first) < 5:
            exc = record.exc_info[1]
            self.first.append(" ".join(f"{record.name}: {record.getMessage()[:160]} "
                                       f"({type(exc).__name__}: {str(exc)[:120]})".split()))


_CATCH_UP = contextvars.ContextVar("bench_catch_up", default=None)


def _count_catch_ups() -> None:
    """Mark, in the task that runs it, each catch-up that ended without an error."""
    import swarm.network as network
    original = network.catch_up

    async def counted(*args, **kwargs):
        result = await original(*args, **kwargs)
        box = _CATCH_UP.get()
        if box is not None:
            box["ok"] = True
        return result
    network.catch_up = counted


def _watch_node(net, honest_ids: set[str], stats: dict) -> None:
    """Count catch-ups with honest peers (tried, finished) and dials by address scope;
    refuse every dial off 127.0.0.1 (the bench never leaves the machine)."""
    from swarm.discovery import address_scope
    original = net._catch_up_with

    async def catch_up_with(peer: str) -> None:
        if peer in net._catching_up or net.guard.is_banned(peer) or peer not in honest_ids:
            return await original(peer)
        box = {"ok": False}
        token = _CATCH_UP.set(box)
        started = time.monotonic()
        try:
            await original(peer)
        finally:
            _CATCH_UP.reset(token)
            stats["catch_ups_tried"] += 1
            if box["ok"]:
                stats["catch_ups_done"] += 1
                stats["catch_up_s"].append(time.monotonic() - started)
    net._catch_up_with = catch_up_with

    gossip = net.gossip
    drain = gossip._wait_queues_drain

    async def timed_drain() -> None:
        """How long our own publishes wait for peers' outbound queues, and whose."""
        full = [p.to_base58() for p, q in list(gossip.pubsub.peer_queues.items())
                if len(q) >= 12]
        started = time.monotonic()
        await drain()
        waited = time.monotonic() - started
        stats["publish_wait_s"] += waited
        if waited >= 1.0:
            stats["publish_waits_over_1s"] += 1
            stats["full_queues_honest"] += sum(p in honest_ids for p in full)
            stats["full_queues_other"] += sum(p not in honest_ids for p in full)
    gossip._wait_queues_drain = timed_drain

    network = net.host.get_network()
    dial = network._dial_addr_single_attempt

    async def guarded(addr, peer_id, *args, **kwargs):
        scope = address_scope(addr)[0]
        stats["dials"][scope] = stats["dials"].get(scope, 0) + 1
        if scope != "loopback":
            raise OSError(f"bench: dial of {addr} refused (not loopback)")
        return await dial(addr, peer_id, *args, **kwargs)
    network._dial_addr_single_attempt = guarded


def _time_steps(loop, stats: dict) -> None:
    """Wall time of the loop's steps, and how much of it was training (the rest is the
    loop's own work and its waits: deciding, reading the store, publishing)."""
    step, trainer = loop.step, loop.trainer
    run = trainer.run
    stats.update(steps=0, step_s=0.0, train_s=0.0)

    def timed_run(*args, **kwargs):
        started = time.monotonic()
        try:
            return run(*args, **kwargs)
        finally:
            stats["train_s"] += time.monotonic() - started

    async def timed_step():
        started = time.monotonic()
        try:
            return await step()
        finally:
            stats["steps"] += 1
            stats["step_s"] += time.monotonic() - started
    trainer.run = timed_run
    loop.step = timed_step


def store_stats(store, honest: set[bytes]) -> dict:
    """Bytes and records in the store, the attackers' (authors not honest) apart."""
    rows = store._conn.execute(
        "SELECT author, count(*), coalesce(sum(length(body) + length(envelope)), 0) "
        "FROM records GROUP BY author").fetchall()
    out = {"records": 0, "bytes": 0, "attack_records": 0, "attack_bytes": 0}
    for author, count, size in rows:
        cost = size + count * STORED_ROW_OVERHEAD
        out["records"] += count
        out["bytes"] += cost
        if bytes(author) not in honest:
            out["attack_records"] += count
            out["attack_bytes"] += cost
    for key, suffix in (("db_bytes", ""), ("wal_bytes", "-wal")):
        f = store.path.parent / (STORE_FILE + suffix)
        out[key] = f.stat().st_size if f.exists() else 0
    return out


def rerun_targets(loop, honest: set[bytes]) -> dict:
    """The node's re-runs (its attestations) of honest peers' claims and of attackers'."""
    rows = loop.store._conn.execute(
        "SELECT r.author FROM attestations a JOIN records r ON r.id = a.target "
        "WHERE a.verifier = ?", (loop.identity.public_key,)).fetchall()
    attackers = sum(bytes(author) not in honest for (author,) in rows)
    return {"honest": len(rows) - attackers, "attackers": attackers}


def _vm(field: str, pid: int | str = "self") -> float:
    """VmRSS / VmHWM of a process in MiB (nan when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


async def worker_main(spec: dict) -> None:
    """Host some honest nodes: build them, wait for `go`, run until `stop`, report."""
    from experiments.research.swarm_link import announce_policy
    from swarm.network import open_swarm_node

    catcher = Catcher()
    logging.getLogger().addHandler(catcher)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("loopy.swarm.network").setLevel(logging.DEBUG)
    _count_catch_ups()
    landscape, delay = spec["landscape"], spec["delay"]
    work = Path(spec["work"])
    honest = {bytes.fromhex(k) for k in spec["honest"]}
    honest_ids = set(spec["honest_ids"])
    truth = scaling.Truth(landscape)
    latencies: list[float] = []
    published = [0]
    loops, nets, stats, stopped = {}, {}, {}, {}
    lines = trio.wrap_file(sys.stdin)
    async with AsyncExitStack() as stack:
        for i in spec["nodes"]:
            loop = scaling.build_loop(work / f"n{i}", landscape, i, 0, delay)
            loops[i] = loop
            net = await stack.enter_async_context(open_swarm_node(
                loop.identity, loop.store, genome=loop.genome, topics=[scaling.TOPIC],
                listen=f"/ip4/127.0.0.1/tcp/{spec['ports'][i]}",
                bootstrap=spec["bootstrap"][i], target_peers=scaling.TARGET_PEERS))
            nets[i] = net
            stats[i] = {"catch_ups_tried": 0, "catch_ups_done": 0, "catch_up_s": [],
                        "dials": {}, "publish_wait_s": 0.0, "publish_waits_over_1s": 0,
                        "full_queues_honest": 0, "full_queues_other": 0}
            scaling._join(loop, net, i, latencies, published)
            _watch_node(net, honest_ids, stats[i])
            _time_steps(loop, stats[i])
        deadline = time.time() + 120
        while time.time() < deadline and not all(
                any("heads" in p.topics for p in nets[i].connected_peers())
                or not spec["bootstrap"][i] for i in loops):
            await trio.sleep(0.5)
        await trio.sleep(5)    # a few heartbeats: gossip meshes form, first syncs end
        emit(ev="ready")
        line = await lines.readline()
        if not line.startswith("go"):
            return
        cpu0 = time.process_time()
        starts = {i: loop.store.count() for i, loop in loops.items()}

        async def serve(i: int, loop, wait_s: float) -> None:
            await trio.sleep(wait_s)
            try:
                await loop.serve()
                stopped[i] = f"serve() returned: {loop.stop_reason or 'no reason'}"
            except Exception:
                stopped[i] = traceback.format_exc()[-1500:]
            emit(ev="stopped", node=i, why=stopped[i])

        async def sample() -> None:
            while True:
                await trio.sleep(SAMPLE_S)
                for i, loop in loops.items():
                    s = store_stats(loop.store, honest)
                    q = nets[i].quarantine
                    emit(ev="sample", node=i, t=time.time(), attack_bytes=s["attack_bytes"],
                         db_bytes=s["db_bytes"] + s["wal_bytes"],
                         charged=nets[i].admission.charged,
                         quarantine_bytes=q.bytes, quarantine=len(q),
                         wanted=loop.store.wanted_count(), rss_mb=_vm("VmRSS"))

        async with trio.open_nursery() as nursery:
            stagger = random.Random(f"stagger/{landscape}")
            for i, loop in loops.items():
                scaling._report(loop, i, truth)
                nursery.start_soon(serve, i, loop, stagger.uniform(0, min(2.0, delay / 2)))
            nursery.start_soon(scaling._poll_best, loops, truth, max(2.0, delay))
            nursery.start_soon(sample)
            await lines.readline()      # "stop", or EOF when the parent died
            nursery.cancel_scope.cancel()
        nodes = {}
        for i, loop in loops.items():
            net = nets[i]
            hints = announce_policy(loop).hints()
            disc = net.discovery
            best = truth.best_of(loop)
            nodes[i] = {
                "best_true": best, "base_true": truth.base,
                "store": store_stats(loop.store, honest), "store_before": starts[i],
                "storage": net.storage_status(),
                "hints": len(hints), "attack_hints": sum(h.author not in honest for h in hints),
                "reruns": rerun_targets(loop, honest),
                "live_announces": len(loop.store.live_announces(0)),
                "candidates": len(disc.candidates),
                "stranger_candidates": sum(not c.proven for c in disc.candidates.values()),
                "max_addrs": max((len(c.entries) for c in disc.candidates.values()), default=0),
                "evicted": disc.evicted, "failed_dials": disc.failed_dials,
                "honest_peers": sum(p.peer_id in honest_ids for p in net.connected_peers()),
                "peers": len(net.connected_peers()),
                "banned": sum(net.guard.is_banned(p) for p in honest_ids),
                "stopped": stopped.get(i),
                **{k: v for k, v in stats[i].items()},
            }
        emit(ev="final", nodes=nodes, cpu_s=time.process_time() - cpu0,
             vmhwm_mb=_vm("VmHWM"), log_tracebacks=catcher.tracebacks,
             catch_up_failures=dict(catcher.catch_up_failures),
             log_errors=dict(catcher.errors), first_tracebacks=catcher.first)
    scaling.close_loops(loops.values())


# =========================================================================== the attacker

@asynccontextmanager
async def raw_peer(seed: bytes, topics: list[str], read: bool = True):
    """A libp2p host with gossipsub and no validators or limits of its own; every topic
    subscribed and drained (messages go to `peer.inbox` when one is set). `read=False`:
    it never reads what peers send it on their gossip streams (a stuck reader)."""
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    from swarm import gossip as gossip_mod
    from swarm.host import open_host

    async with open_host(seed, LOOP_ADDR) as host:
        router = gossip_mod.build_router()
        pubsub = Pubsub(host, router, strict_signing=True,
                        msg_id_constructor=gossip_mod.message_id)
        if not read:
            async def never_read(_stream) -> None:
                await trio.sleep_forever()
            pubsub.continuously_read_stream = never_read
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            peer = RawPeer(host, pubsub)
            async with trio.open_nursery() as nursery:
                for topic in topics:
                    sub = await pubsub.subscribe(topic)
                    nursery.start_soon(peer.drain, sub)
                yield peer
                nursery.cancel_scope.cancel()


class RawPeer:
    def __init__(self, host, pubsub) -> None:
        self.host, self.pubsub = host, pubsub
        self.inbox = None   # a trio send channel, or None: messages are dropped

    async def drain(self, sub) -> None:
        while True:
            msg = await sub.get()
            if self.inbox is not None:
                try:
                    self.inbox.send_nowait(bytes(msg.data))
                except trio.WouldBlock:
                    pass

    async def connect(self, addr: str) -> bool:
        from swarm.discovery import parse_peer_addr
        try:
            with trio.fail_after(15):
                await self.host.connect(parse_peer_addr(addr))
            return True
        except Exception:
            return False


class Attacker:
    """One attack, from one process (see the module docstring)."""

    def __init__(self, spec: dict) -> None:
        from experiments.simulation.synthetic import SyntheticTrainer
        from swarm.gossip import heads_topic, topic_name
        self.spec = spec
        self.attack = spec["attack"]
        self.scale = spec["scale"]
        self.genome = genome_id()
        self.root = genome_root_id()
        self.arena = SyntheticTrainer(spec["landscape"], base_source=scaling.BASE).arena
        self.heads = heads_topic(self.genome)
        self.research = topic_name(self.genome, scaling.TOPIC)
        self.honest = {bytes.fromhex(k) for k in spec["honest"]}
        self.count = Counter()
        self.rng = random.Random(f"attacker/{self.attack}")
        self.keys = max(1, int(round(1000 * self.scale)))

    def n(self, full: int, least: int = 1) -> int:
        return max(least, int(round(full * self.scale)))

    async def publish(self, peer: RawPeer, topic: str, record) -> None:
        try:
            await peer.pubsub.publish(topic, record.envelope)
            self.count["published"] += 1
            self.count["published_bytes"] += len(record.envelope)
        except Exception as error:
            self.count[f"publish failed: {type(error).__name__}"] += 1

    def announce(self, key: NodeIdentity, working_on: str = "", addrs=(), t=None,
                 head=None, arena=None):
        return rec.make_announce(key, genome=self.genome, topics=[scaling.TOPIC],
                                 arena=arena or self.arena, working_on=working_on,
                                 addrs=list(addrs), head=head, t=t)

    @staticmethod
    async def pace(start: float, i: int, per_s: float) -> None:
        """Sleep until item `i` of a round begun at `start` is due (`per_s` a second)."""
        await trio.sleep_until(start + (i + 1) / per_s)

    # -- runs ---------------------------------------------------------------

    async def main(self, lines) -> None:
        addrs = self.spec["addrs"]
        async with AsyncExitStack() as stack:
            peers = []
            n_peers = {"slow-sync": self.n(20, 2), "slow-gossip": self.n(4, 2),
                       "flood-valid": 2, "flood-orphan": 2,
                       "fake-claims": 2}.get(self.attack, 1)
            for p in range(n_peers):
                peers.append(await stack.enter_async_context(raw_peer(
                    hashlib.sha256(f"attacker-peer/{self.attack}/{p}".encode()).digest(),
                    [self.heads, self.research], read=self.attack != "slow-gossip" or p == 0)))
            entry = addrs[:1] if self.attack == "discovery" else addrs
            async with trio.open_nursery() as nursery:
                for peer in peers:
                    for addr in entry:
                        nursery.start_soon(self._connect, peer, addr)
            await trio.sleep(2.0)   # meshes and subscriptions
            prepared = await self.prepare()
            emit(ev="ready", peers=len(peers), connected=self.count["connected"])
            line = await lines.readline()
            if not line.startswith("go"):
                return
            cpu0 = time.process_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(getattr(self, "run_" + self.attack.replace("-", "_")),
                                   peers, prepared)
                await lines.readline()   # "stop", or EOF
                nursery.cancel_scope.cancel()
            emit(ev="final", counts=dict(self.count), cpu_s=time.process_time() - cpu0)

    async def _connect(self, peer: RawPeer, addr: str) -> None:
        if await peer.connect(addr):
            self.count["connected"] += 1

    async def prepare(self):
        if self.attack == "squat-1000":
            return await trio.to_thread.run_sync(self._mutate_proposals)
        if self.attack == "copy":
            return self._low_keys()
        return None

    # squatting --------------------------------------------------------------

    def _mutate_proposals(self) -> list[str]:
        """`working_on` texts of the edits the mutate agent proposes first on the root."""
        from experiments.agents import load_brief, make_agent
        from experiments.research.programs import program_digest
        agent = make_agent("mutate", base_source=scaling.BASE)
        brief = load_brief(scaling.TOPIC)
        out: dict[str, None] = {}
        for k in range(self.n(120, 4)):
            try:
                p = agent.propose(scaling.BASE, brief, [], parent_id=self.root.hex(),
                                  rng=random.Random(k))
            except Exception:
                continue
            if getattr(p, "failure", None) is None and getattr(p, "source", None):
                out[working_on(self.root, p.desc, program_digest(p.source))] = None
        return list(out)

    async def run_squat_1(self, peers, _prepared) -> None:
        key = attack_key("squat-1", 0)
        text = working_on(self.root, baseline_desc(0))
        while True:
            await self.publish(peers[0], self.heads, self.announce(
                key, text, t=rec.now_ms() + SQUAT_T_AHEAD_MS))
            await trio.sleep(20)

    async def run_squat_1000(self, peers, proposals: list[str]) -> None:
        seen: list[str] = []     # honest working_on texts, newest last
        send, receive = trio.open_memory_channel(1024)
        peers[0].inbox = send

        async def watch():
            async for data in receive:
                record = self._decode(data)
                if record is not None and record.kind == "announce" and \
                        record.author in self.honest and record.working_on:
                    if record.working_on not in seen:
                        seen.append(record.working_on)
                        del seen[:-200]

        fake_parent = hashlib.sha256(b"a parent nobody has").hexdigest()
        quarter = max(1, self.keys // 4)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            while True:
                start = trio.current_time()
                for i in range(self.keys):
                    await self.pace(start, i, self.keys / 60.0)
                    kind, j = i % 4, i // 4
                    if kind == 0:
                        text = working_on(self.root, baseline_desc(j % max(quarter, 250)))
                    elif kind == 1 and proposals:
                        text = proposals[j % len(proposals)]
                    elif kind == 2 and seen:
                        text = seen[-1 - j % len(seen)]
                    elif kind == 3 and seen:
                        program = seen[-1 - j % len(seen)].split(" ", 2)
                        tag = program[1] if len(program) > 2 and program[1].startswith("#") \
                            else "#" + os.urandom(8).hex()
                        text = f"{fake_parent} {tag} squat {i}"
                    else:
                        text = working_on(self.root, baseline_desc(j))
                    await self.publish(peers[0], self.heads, self.announce(
                        attack_key("squat-1000", i), text,
                        t=rec.now_ms() + SQUAT_T_AHEAD_MS))
                await trio.sleep_until(start + 60.0)

    # copying ------------------------------------------------------------------

    def _low_keys(self) -> list[NodeIdentity]:
        """Keys whose public key sorts before every honest key."""
        lowest = min(self.honest)
        out, i = [], 0
        while len(out) < 16 and i < 200_000:
            key = attack_key("copy", i)
            if key.public_key < lowest:
                out.append(key)
            i += 1
        return out

    async def run_copy(self, peers, low_keys: list[NodeIdentity]) -> None:
        send, receive = trio.open_memory_channel(1024)
        peers[0].inbox = send
        mine: dict[bytes, NodeIdentity] = {}
        last: dict[bytes, str] = {}
        async for data in receive:
            record = self._decode(data)
            if record is None or record.kind != "announce" or record.author not in self.honest \
                    or not record.working_on or last.get(record.author) == record.working_on:
                continue
            last[record.author] = record.working_on
            key = mine.setdefault(record.author, low_keys[len(mine) % len(low_keys)])
            self.count["copied"] += 1
            await self.publish(peers[0], self.heads, self.announce(
                key, record.working_on, t=record.t - 1, head=record.head, arena=record.arena))

    def _decode(self, data: bytes):
        try:
            return rec.decode_envelope(data, genome=self.genome)
        except Exception:
            return None

    # flooding -----------------------------------------------------------------

    def _flood_record(self, i: int, orphan: bool):
        from swarm.patch import make_patch
        large = self.rng.random() < LARGE_SHARE
        lines = (96 if large else 1) * 1024 // 64
        junk = "".join(f"junk_{i}_{j} = '{'x' * 44}'\n" for j in range(lines))
        parent = os.urandom(32) if orphan else self.root
        patch = make_patch(scaling.BASE, scaling.BASE + "\n" + junk)
        return rec.make_experiment(
            attack_key("flood", i % self.keys), genome=self.genome, parents=[parent],
            topic=scaling.TOPIC, arena=self.arena, patch=patch,
            desc=edit_desc("junk", f"flood {i}"),
            agent="mutate", result={"status": "ok", "val_bpb": 9.0 + i * 1e-9,
                                    "train_s": 1.0, "total_s": 1.0})

    async def _flood(self, peers, orphan: bool) -> None:
        rate = self.spec["flood_rate"]
        i = 0
        while True:   # bounded by the parent's "stop"
            start = trio.current_time()
            for _ in range(int(rate)):
                record = self._flood_record(i, orphan)
                await self.publish(peers[i % len(peers)], self.research, record)
                i += 1
            self.count["flooded"] = i
            await trio.sleep_until(start + 1.0)

    async def run_flood_valid(self, peers, _prepared) -> None:
        await self._flood(peers, orphan=False)

    async def run_flood_orphan(self, peers, _prepared) -> None:
        await self._flood(peers, orphan=True)

    async def run_fake_claims(self, peers, _prepared) -> None:
        from swarm.patch import make_patch
        rate = max(1.0, self.spec["flood_rate"] / 5)
        i = 0
        while True:   # bounded by the parent's "stop"
            start = trio.current_time()
            for _ in range(int(rate)):
                source = scaling.BASE + f"\nfake_{i} = {i}\n"
                record = rec.make_experiment(
                    attack_key("claims", i % self.keys), genome=self.genome,
                    parents=[self.root], topic=scaling.TOPIC, arena=self.arena,
                    patch=make_patch(scaling.BASE, source), desc=edit_desc("fake", f"claim {i}"),
                    agent="mutate", result={"status": "ok", "val_bpb": 0.5 + i * 1e-9,
                                            "train_s": 1.0, "total_s": 1.0})
                await self.publish(peers[i % len(peers)], self.research, record)
                i += 1
            self.count["flooded"] = i
            await trio.sleep_until(start + 1.0)

    # slow sync ------------------------------------------------------------------

    async def run_slow_sync(self, peers, _prepared) -> None:
        from libp2p.peer.id import ID
        targets = [ID.from_base58(a.rsplit("/p2p/", 1)[1]) for a in self.spec["addrs"]]
        async with trio.open_nursery() as nursery:
            for p, peer in enumerate(peers):
                for target in targets:
                    for s in range(4):
                        nursery.start_soon(self._hold_stream, peer, target, (p + s) % 2 == 0)

    async def _hold_stream(self, peer: RawPeer, target, silent: bool) -> None:
        from swarm.sync import PROTOCOL_ID, FrameReader, encode_frame
        await trio.sleep(self.rng.uniform(0, 2))
        while True:
            opened = trio.current_time()
            try:
                with trio.fail_after(10):
                    stream = await peer.host.new_stream(target, [PROTOCOL_ID])
                self.count["streams_opened"] += 1
                reader = FrameReader(stream)
                while True:
                    if silent:
                        data = await stream.read(1)   # until the server resets it
                        if not data:
                            break
                    else:
                        await stream.write(encode_frame({"op": "get",
                                                         "ids": [os.urandom(32)]}))
                        await reader.read_frame()
                        self.count["slow_requests"] += 1
                        await trio.sleep(9.0)
            except Exception as error:
                self.count["streams_reset"] += 1
                self.count[f"stream error: {type(error).__name__}"] += 1
            self.count["stream_s"] += trio.current_time() - opened
            await trio.sleep(1.0)

    async def run_slow_gossip(self, peers, _prepared) -> None:
        """Peers 1.. are connected, subscribed and never read: what honest nodes send them
        piles up. Peer 0 gives the honest nodes something to relay to them: 4 large
        presence announces a second from fresh keys (6.5 KiB, under the 8 KiB a node keeps
        of a stranger's announce; their addresses are DNS names, which nobody dials)."""
        filler = "presence " * 110
        addrs = [f"/dns4/{'x' * 1000}.invalid/tcp/{k + 1}" for k in range(5)]
        i = 0
        while True:
            start = trio.current_time()
            for k in range(4):
                await self.publish(peers[0], self.heads, self.announce(
                    attack_key("slow-gossip", i % self.keys), filler[:990], addrs=addrs))
                i += 1
            await trio.sleep_until(start + 1.0)

    # discovery --------------------------------------------------------------------

    async def run_discovery(self, peers, _prepared) -> None:
        victims = Counter()

        async def victim(stream) -> None:
            victims["connections"] += 1
            self.count["victim_connections"] = victims["connections"]
            with trio.move_on_after(15):
                try:
                    await stream.receive_some(1024)   # say nothing, hold it
                    await trio.sleep(15)
                except Exception:
                    pass
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, victim, 0,
                                                    host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            closed = scaling.free_ports(8)
            honest = [a.split("/p2p/")[0] for a in self.spec["addrs"]]
            rng = random.Random("discovery")
            never = ("10.{}.{}.{}", "192.168.{}.{}", "172.16.{}.{}", "169.254.{}.{}",
                     "100.64.{}.{}")
            while True:
                start = trio.current_time()
                for i in range(self.keys):
                    await self.pace(start, i, self.keys / 60.0)
                    addrs = [f"/ip4/127.0.0.1/tcp/{port}"]
                    addrs += [f"/ip4/127.0.{rng.randrange(256)}.{rng.randrange(1, 255)}/tcp/{c}"
                              for c in closed]
                    addrs += honest
                    while len(addrs) < rec.MAX_LIST_LEN:
                        ip = never[len(addrs) % len(never)].format(
                            *(rng.randrange(1, 255) for _ in range(3)))
                        addrs.append(f"/ip4/{ip}/tcp/4011")
                    await self.publish(peers[0], self.heads, self.announce(
                        attack_key("discovery", i), "", addrs=addrs[:rec.MAX_LIST_LEN]))
                self.count["announce_rounds"] += 1
                await trio.sleep_until(start + 60.0)


async def attacker_main(spec: dict) -> None:
    logging.getLogger().setLevel(logging.CRITICAL)
    await Attacker(spec).main(trio.wrap_file(sys.stdin))


# =========================================================================== the parent

class Child:
    """A worker or the attacker: a process fed a JSON spec, read as JSON lines."""

    def __init__(self, role: str, tag, spec: dict, events: queue.Queue, log: Path) -> None:
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, __file__, f"--{role}"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True, bufsize=1)
        self.log, self.tag = log, tag
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        threading.Thread(target=scaling._pump, args=(self.proc, tag, events),
                         daemon=True).start()

    def say(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def end(self) -> None:
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tracebacks(self) -> int:
        try:
            return self.log.read_text(errors="replace").count("Traceback (most recent")
        except OSError:
            return 0


def _wait_for(events: queue.Queue, kind: str, tags: set, deadline: float) -> dict:
    got = {}
    while len(got) < len(tags):
        ev = events.get(timeout=max(1.0, deadline - time.time()))
        if ev.get("ev") == kind and ev["worker"] in tags:
            got[ev["worker"]] = ev
        elif ev.get("ev") == "exit" and ev["worker"] in tags and ev["worker"] not in got:
            raise RuntimeError(f"{ev['worker']} exited before '{kind}'")
    return got


def run_config(attack: str, args, work: Path, label: str) -> dict:
    """The honest swarm for `args.duration` s, with `attack` going on (or none)."""
    n, landscape = args.nodes, args.landscape
    work.mkdir(parents=True)
    keys = honest_keys(landscape, n)
    ports = scaling.free_ports(n)
    addrs = [f"/ip4/127.0.0.1/tcp/{ports[i]}/p2p/{keys[i].peer_id}" for i in range(n)]
    graph = random.Random(f"graph/{landscape}/{n}")
    bootstrap = [[addrs[j] for j in graph.sample(range(i), min(scaling.DEGREE, i))]
                 for i in range(n)]
    events: queue.Queue = queue.Queue()
    base_spec = {"landscape": landscape, "delay": args.delay, "ports": ports,
                 "bootstrap": bootstrap, "work": str(work),
                 "honest": [k.public_key.hex() for k in keys],
                 "honest_ids": [k.peer_id for k in keys]}
    groups = [list(range(n))[p::args.procs] for p in range(min(args.procs, n))]
    workers = [Child("worker", g, dict(base_spec, nodes=nodes), events,
                     work / f"worker-{g}.log") for g, nodes in enumerate(groups)]
    attacker = None
    children = list(workers)
    try:
        _wait_for(events, "ready", set(range(len(workers))), time.time() + 240)
        if attack != "none":
            attacker = Child("attacker", "attacker", dict(
                base_spec, attack=attack, addrs=addrs, scale=args.scale,
                flood_rate=args.flood_rate), events, work / "attacker.log")
            children.append(attacker)
            _wait_for(events, "ready", {"attacker"}, time.time() + 240)
        load0 = os.getloadavg()[0]
        cpu0 = {c.tag: _cpu_s(c.proc.pid) for c in children}
        t0 = time.time()
        for c in children:
            c.say(f"go {t0}")
        runs, yields, stopped = Counter(), 0, {}
        kept = 0
        per_node_runs = Counter()
        peak = {"attack_bytes": 0, "db_bytes": 0, "charged": 0, "quarantine_bytes": 0,
                "quarantine": 0, "wanted": 0}
        rss = {c.tag: 0.0 for c in workers}
        stop_at = t0 + args.duration
        next_rss = 0.0
        while time.time() < stop_at:
            if time.time() >= next_rss:
                next_rss = time.time() + 2.0
                for c in workers:
                    rss[c.tag] = max(rss[c.tag], _vm("VmRSS", c.proc.pid) or 0.0)
            try:
                ev = events.get(timeout=0.5)
            except queue.Empty:
                continue
            kind = ev.get("ev")
            if kind == "exit":
                raise RuntimeError(f"{ev['worker']} died during the run (see {work})")
            if kind == "run" and ev.get("status") != "interrupted":
                runs[ev["kind"]] += 1
                per_node_runs[ev["node"]] += 1
                kept += bool(ev.get("kept")) and ev["kind"] == "experiment"
            elif kind == "yield":
                yields += 1
            elif kind == "stopped":
                stopped[ev["node"]] = ev["why"]
            elif kind == "sample":
                for key in peak:
                    peak[key] = max(peak[key], ev.get(key) or 0)
        wall = time.time() - t0
        cpu = {c.tag: _cpu_s(c.proc.pid) - cpu0[c.tag] for c in children}
        load1 = os.getloadavg()[0]
        if attacker is not None:
            attacker.say("stop")
        for c in workers:
            c.say("stop")
        finals = _wait_for(events, "final", {c.tag for c in children}, time.time() + 180)
    finally:
        for c in children:
            c.say("stop")
        for c in children:
            c.end()
    nodes = {int(i): node for f in (finals[c.tag] for c in workers)
             for i, node in f["nodes"].items()}
    gains = [node["base_true"] - node["best_true"] for node in nodes.values()
             if node["best_true"] is not None]
    budgets = StorageBudgets()
    hours = args.duration / 3600
    row = {
        "attack": attack, "label": label, "wall_s": wall, "load": (load0, load1),
        "runs": sum(runs.values()), "kinds": dict(runs), "kept": kept, "yields": yields,
        "min_node_runs": min(per_node_runs.get(i, 0) for i in range(n)),
        "gain": statistics.mean(gains) if gains else 0.0,
        "swarm_best": min((node["best_true"] for node in nodes.values()
                           if node["best_true"] is not None), default=None),
        "base": next(iter(nodes.values()))["base_true"],
        "attack_bytes": max(node["store"]["attack_bytes"] for node in nodes.values()),
        "attack_records": max(node["store"]["attack_records"] for node in nodes.values()),
        "charged": max(node["storage"]["strangers_charged_bytes"] for node in nodes.values()),
        "db_bytes": max(node["store"]["db_bytes"] + node["store"]["wal_bytes"]
                        for node in nodes.values()),
        "peak": peak, "bound": budgets.max_growth_bytes(hours),
        "rss_mb": max(finals[c.tag]["vmhwm_mb"] for c in workers),
        "rss_polled_mb": max(rss.values()),
        "nodes_per_proc": max(len(g) for g in groups),
        "stopped": {**stopped, **{i: node["stopped"] for i, node in nodes.items()
                                  if node["stopped"]}},
        "log_tracebacks": sum(finals[c.tag]["log_tracebacks"] for c in workers),
        "catch_up_failures": sum((Counter(finals[c.tag]["catch_up_failures"])
                                  for c in workers), Counter()),
        "log_errors": sum((Counter(finals[c.tag]["log_errors"]) for c in workers), Counter()),
        "first_tracebacks": [e for c in workers for e in finals[c.tag]["first_tracebacks"]][:6],
        "stderr_tracebacks": sum(c.tracebacks() for c in workers),
        "cpu_cores": {str(k): v / wall for k, v in cpu.items()},
        "attacker": finals["attacker"]["counts"] if attacker is not None else {},
        "nodes": nodes,
    }
    honest_cpu = sum(v for k, v in cpu.items() if k != "attacker")
    row["cpu_per_run_s"] = honest_cpu / max(1, row["runs"])
    row["notes"] = notes(row)
    return row


def _sum(nodes: dict, *path) -> float:
    total = 0
    for node in nodes.values():
        value = node
        for key in path:
            value = value.get(key, 0) if isinstance(value, dict) else 0
        total += value or 0
    return total


def notes(row: dict) -> str:
    """What the defences did, per attack (sums over honest nodes)."""
    nodes, a = row["nodes"], row["attacker"]
    dropped = Counter()
    for node in nodes.values():
        dropped.update(node["storage"]["dropped"])
    parts = []
    attack = row["attack"]
    tried, done = _sum(nodes, "catch_ups_tried"), _sum(nodes, "catch_ups_done")
    if attack.startswith("squat") or attack == "copy":
        parts.append(f"{_sum(nodes, 'attack_hints'):.0f} attacker hints honoured at the end "
                     f"(of {_sum(nodes, 'hints'):.0f}); {row['yields']} runs yielded")
        if a.get("copied"):
            parts.append(f"{a['copied']} announces copied")
    if attack.startswith("flood"):
        parts.append(f"{a.get('flooded', 0)} records sent; dropped for budgets "
                     f"{sum(dropped.values())}; peak quarantine "
                     f"{row['peak']['quarantine']} records / "
                     f"{row['peak']['quarantine_bytes'] / 2**20:.1f} MiB, peak wanted "
                     f"{row['peak']['wanted']}")
    if attack == "fake-claims":
        parts.append(f"{a.get('flooded', 0)} claims sent; honest re-runs of honest peers' "
                     f"claims {sum(n['reruns']['honest'] for n in nodes.values())}, of the "
                     f"attacker's {sum(n['reruns']['attackers'] for n in nodes.values())}")
    if attack in ("slow-gossip", "flood-valid", "flood-orphan"):
        parts.append(f"honest publishes waited {_sum(nodes, 'publish_wait_s'):.0f} s for "
                     f"full peer queues ({_sum(nodes, 'publish_waits_over_1s'):.0f} waits over "
                     f"1 s)")
    if attack == "slow-sync":
        server = Counter()
        for node in nodes.values():
            server.update({k: v for k, v in node["storage"]["sync_server"].items()
                           if k != "open_streams"})
        parts.append(f"{a.get('streams_opened', 0)} slow streams opened; servers reset "
                     f"{server['timed_out']} on deadlines, preempted {server['preempted']}, "
                     f"refused {server['refused']}")
    if attack == "discovery":
        dials = Counter()
        for node in nodes.values():
            dials.update(node["dials"])
        parts.append(f"victim got {a.get('victim_connections', 0)} connections; dials "
                     + ", ".join(f"{k} {v}" for k, v in sorted(dials.items()))
                     + f"; candidates max {max(n['candidates'] for n in nodes.values())} "
                     f"(strangers {max(n['stranger_candidates'] for n in nodes.values())}), "
                     f"addresses per peer max {max(n['max_addrs'] for n in nodes.values())}; "
                     f"honest peers per node min "
                     f"{min(n['honest_peers'] for n in nodes.values())}")
    parts.append(f"honest catch-ups finished {done:.0f}/{tried:.0f}")
    return "; ".join(parts)


# =========================================================================== report

def mib(x: float) -> str:
    return f"{x / 2 ** 20:.1f}"


def outside_training(row: dict) -> float:
    """The share of the honest loops' step time not spent training (mean over nodes)."""
    shares = [1 - n["train_s"] / n["step_s"] for n in row["nodes"].values() if n["step_s"]]
    return statistics.mean(shares) if shares else float("nan")


def verdict(row: dict, progress: float) -> str:
    missed = []
    if row["attack"] != "none" and not progress >= GOAL:
        missed.append("progress")
    if not (row["attack_bytes"] <= row["bound"] and row["charged"] <= row["bound"]):
        missed.append("store")
    if row["stopped"]:
        missed.append("stopped")
    if row["log_tracebacks"] or row["stderr_tracebacks"]:
        missed.append("traceback")
    return "ok" if not missed else "MISSED: " + ", ".join(missed)


def render(meta: dict, rows: list[dict]) -> str:
    """The section of docs/BENCHMARKS.md; `meta`: the run's settings, date, load, time."""
    ref = [r for r in rows if r["attack"] == "none"]

    def mean(key):
        return statistics.mean(r[key] for r in ref) if ref else float("nan")
    ref_gain, ref_runs, ref_kept, ref_rss, ref_cpu = (
        mean(k) for k in ("gain", "runs", "kept", "rss_mb", "cpu_per_run_s"))

    def share(x, of):
        return f"{100 * x / of:.0f} %" if of else "-"
    m = meta
    lines = [f"<!-- {NAME} -->", "## Under attack (`bench/bench_attacks.py`)", "",
             f"Measured {m['date']} on {m['cpu']} ({m['machine']}, {m['cores']} cores shared "
             f"with other jobs: load average {m['load'][0]:.1f} before, {m['load'][1]:.1f} "
             f"after), Python {m['python']}, py-libp2p 0.8.1, loopback only; "
             f"{m['wall_s'] / 60:.0f} min in all.", "",
             f"{m['nodes']} honest nodes (`bench/scaling.py`'s swarm: `mutate` agent, "
             f"synthetic landscape {m['landscape']}, runs of {m['delay']:g} s +-20 %, "
             f"{m['procs']} worker processes), each configuration a fresh swarm (same keys, "
             f"graph and agent seeds) run for {m['duration']:g} s of wall time; attacks at "
             f"scale {m['scale']:g} ({max(1, round(1000 * m['scale']))} keys where the "
             f"attack has 1,000), floods at {m['flood_rate']:g} records/s "
             f"({100 * LARGE_SHARE:.0f} % with a 96 KiB patch). **Load**: the machine's load "
             "average when the configuration started and ended (other jobs share it; the "
             "no-attack runs are spread over the whole run). **Progress**: the mean over "
             "honest nodes of the true improvement (base minus true val_bpb) of the record "
             "each holds as its best verified, as a share of the no-attack runs' mean (the "
             "goal: 90 %); runs and kept edits are all honest nodes' in the same wall time. "
             "**Outside training**: the share of the honest loops' time not spent in the "
             "trainer (deciding, reading the store, publishing). **Honest CPU per run**: "
             "the CPU time of all honest processes over the runs they completed (what "
             "the attack costs them, whatever the load). **Store growth**: the "
             "attacker's records in the fullest honest store (body + envelope + 3 KiB a "
             "row) and, in brackets, the strangers' bytes that node admitted (the attacker's "
             "and honest peers' it does not trust yet), against the bound 32 MiB + 128 MiB/h "
             f"x {m['duration']:g} s = "
             f"{mib(StorageBudgets().max_growth_bytes(m['duration'] / 3600))} MiB; "
             "**database**: the largest store's files, its write-ahead log included (up "
             "to 64 MiB of it, reused after each checkpoint). **Memory**: peak RSS "
             f"(VmHWM) of the fullest honest process ({m['nodes_per_proc']} node(s) each). "
             "**Errors**: honest loops that stopped / log records with a traceback in the "
             "honest processes / tracebacks on their stderr.", "",
             "| attack | load | progress | runs | kept edits | outside training | honest CPU "
             "per run | store growth, MiB | database, MiB | memory, MiB | errors | attacker "
             "CPU (cores) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        progress = r["gain"] / ref_gain if ref_gain else float("nan")
        errors = f"{len(r['stopped'])} / {r['log_tracebacks']} / {r['stderr_tracebacks']}"
        cpu = r["cpu_cores"].get("attacker")
        lines.append(
            f"| {r['label']} | {r['load'][0]:.1f}-{r['load'][1]:.1f} "
            f"| {100 * progress:.0f} % | {r['runs']} ({share(r['runs'], ref_runs)}) "
            f"| {r['kept']} ({share(r['kept'], ref_kept)}) "
            f"| {100 * outside_training(r):.0f} % "
            f"| {r['cpu_per_run_s']:.2f} s ({share(r['cpu_per_run_s'], ref_cpu)}) "
            f"| {mib(r['attack_bytes'])} ({mib(r['charged'])}) | {mib(r['db_bytes'])} "
            f"| {r['rss_mb']:.0f} ({share(r['rss_mb'], ref_rss)}) | {errors} "
            f"| {'-' if cpu is None else f'{cpu:.2f}'} | {verdict(r, progress)} |")
    lines += ["", "What the attacks did and what the defences did (sums over honest nodes):",
              ""]
    for r in rows:
        lines.append(f"- **{r['label']}**: {r['notes']}.")
        if r["first_tracebacks"]:
            lines.append("  First tracebacks logged: " + "; ".join(
                f"`{e}`" for e in r["first_tracebacks"][:3]) + ".")
        if r["log_errors"]:
            lines.append("  Log records at ERROR (no traceback), by logger: " + ", ".join(
                f"{k} {v}" for k, v in sorted(r["log_errors"].items())) + ".")
        for node, why in list(r["stopped"].items())[:2]:
            lines.append(f"  Node {node} stopped: `{why.strip().splitlines()[-1][:200]}`.")
    if m.get("notes"):
        lines += ["", Path(m["notes"]).read_text().strip()]
    lines.append(f"<!-- /{NAME} -->")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attacks", default=",".join(ATTACKS),
                    help=f"comma-separated, of: {', '.join(ATTACKS)}")
    ap.add_argument("--nodes", type=int, default=8, help="honest nodes")
    ap.add_argument("--duration", type=float, default=150.0, help="seconds per configuration")
    ap.add_argument("--delay", type=float, default=4.0, help="seconds per synthetic run")
    ap.add_argument("--landscape", type=int, default=0)
    ap.add_argument("--procs", type=int, default=8,
                    help="honest worker processes (default: one per node)")
    ap.add_argument("--baseline-runs", type=int, default=3,
                    help="no-attack runs, spread over the run (load drift, noise)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="attack size: 1,000 keys at 1, and so on")
    ap.add_argument("--flood-rate", type=float, default=10.0,
                    help="flood records a second (both floods)")
    ap.add_argument("--notes", help="a markdown file appended to the written section")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", help="also dump the raw rows to this file (after each one)")
    ap.add_argument("--from-json", metavar="JSON",
                    help="render (and write) the section from an earlier --json dump")
    ap.add_argument("--keep", action="store_true", help="keep the nodes' homes and logs")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--attacker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker or args.attacker:
        spec = json.loads(sys.stdin.readline())
        fn = worker_main if args.worker else attacker_main
        if os.environ.get("LOOPY_PROFILE_WORKER"):   # where a child's CPU goes
            import cProfile
            cProfile.runctx("trio.run(fn, spec)", globals(), {"fn": fn, "spec": spec},
                            f"{os.environ['LOOPY_PROFILE_WORKER']}.{os.getpid()}")
        else:
            trio.run(fn, spec)
        return 0
    if args.from_json:   # re-render an earlier run (say, with --notes added)
        saved = json.loads(Path(args.from_json).read_text())
        meta = dict(saved["meta"], notes=args.notes or saved["meta"].get("notes"))
        text = render(meta, saved["rows"])
        print(text)
        if not args.no_write:
            write_section(NAME, text)
        return 0
    attacks = [a for a in args.attacks.split(",") if a]
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        ap.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    # no-attack runs spread over the whole run (first, last, between): the machine's load
    # from other jobs drifts, and every attack is compared with their mean
    plan: list[tuple[str, str]] = [(a, a) for a in attacks if a != "none"]
    nones = args.baseline_runs if "none" in attacks else 0
    for k in range(nones):
        at = 0 if k == 0 else round(k * len(plan) / (nones - 1)) + k if nones > 1 else 0
        plan.insert(min(at, len(plan)), ("none", f"none (run {k + 1})"))
    load0 = os.getloadavg()
    t_start = time.time()
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "machine": platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "nodes": args.nodes, "landscape": args.landscape, "delay": args.delay,
            "procs": min(args.procs, args.nodes), "duration": args.duration,
            "scale": args.scale, "flood_rate": args.flood_rate, "notes": args.notes,
            "nodes_per_proc": -(-args.nodes // min(args.procs, args.nodes))}
    work = Path(tempfile.mkdtemp(prefix="loopy-attacks-",
                                 dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    rows: list[dict] = []

    def dump() -> None:
        if args.json:
            meta.update(load=(load0[0], os.getloadavg()[0]), wall_s=time.time() - t_start)
            Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, default=str,
                                                  indent=1))
    try:
        for k, (attack, label) in enumerate(plan):
            t0 = time.time()
            row = run_config(attack, args, work / f"{k}-{attack}", label)
            rows.append(row)
            print(json.dumps({key: row[key] for key in (
                "label", "runs", "kept", "gain", "swarm_best", "yields", "attack_bytes",
                "charged", "db_bytes", "rss_mb", "stopped", "log_tracebacks", "log_errors",
                "stderr_tracebacks", "first_tracebacks", "cpu_cores", "attacker", "notes")},
                default=str), f"[{time.time() - t0:.0f} s]", flush=True)
            dump()
            if not args.keep:   # a store under flood takes tens of MiB of memory
                for child in (work / f"{k}-{attack}").glob("n*"):
                    shutil.rmtree(child, ignore_errors=True)
        meta.update(load=(load0[0], os.getloadavg()[0]), wall_s=time.time() - t_start)
        dump()
        text = render(meta, rows)
        print(text)
        if not args.no_write:
            write_section(NAME, text)
    except BaseException:
        args.keep = True
        dump()
        raise
    finally:
        if args.keep:
            print(f"kept the nodes' homes and the logs in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

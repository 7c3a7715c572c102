"""Benchmark: does a swarm of N nodes research N times faster? (issue 8)

    python bench/scaling.py                        # the full run, writes docs/BENCHMARKS.md
    python bench/scaling.py --sizes 2,4 --landscapes 0 --no-write      # a smoke run
    python bench/scaling.py --network ideal --landscapes 0-11 --no-write  # algorithm only
    python bench/scaling.py --network ideal --sizes 16 --landscapes 0-11 --no-write \
        --references earlier.json --speculate-share 1    # a setting against the same T1s

Every node is real: a `ResearchLoop` (the `--agent`, `mutate` by default, the noise-aware scoreboard,
verification and trust) over its own SQLite store and key, joined to the others by the
libp2p network layer (`swarm/network.py`: gossipsub, sync, discovery) exactly as `node.py`
joins them: the loop publishes what it records, announces what it runs, and skips what
other live nodes announce. Training is the synthetic trainer (`experiments/simulation/synthetic.py`: a
hidden landscape with noise, labelled synthetic everywhere), each run waiting `delay` seconds
(+-20 % jitter, as real runs vary) so that gossip costs what it would next to real training.
Each node bootstraps to 3 random earlier nodes (a sparse graph; discovery may add a few).
Nodes run in `--procs` worker processes (2 on this 2-core machine).

What is measured, per landscape seed:

- the *target*: a lone node is run `--reference-reps` times (different agent seeds) for up
  to `--reference-cap` runs; the target is the median, over those runs, of the true
  (noise-free) val_bpb of its best record after `--reference-runs` runs, and T1 is the
  median number of runs those lone nodes needed to reach it (baselines count as runs). A
  lone node has no one to gossip with, so these runs need no network and no delay.
- for each N: the time until the swarm's best verified score reaches the target, where a
  node's score is the true val_bpb of the record its own scoreboard holds as its best
  verified (its own runs, its own re-runs, or k trusted attestations), and the swarm's is
  the lowest over its honest nodes. Time is counted in runs of one node (wall seconds /
  `delay`), so T1 / T_N is the wall-clock speedup at equal per-node experiment time; it
  includes everything that is not training (proposals, gossip, verification, the shared
  CPU). True scores are used so that a bigger swarm gains nothing from luckier noise.
- experiments: runs completed by the whole swarm until the target (baselines, edits and
  re-runs); duplicates: runs whose (parent, resulting source) pair, or baseline seed,
  another node had already run (the issue's definition); same program: edits whose
  resulting source another edit had, on any parent (what the loop now refuses);
  verification share: re-runs / all runs.
- why runs are not on the frontier: for every edit, whether its parent was the best kept
  claim the swarm had (fresh), or a better claim existed that the node had not yet heard
  of (gossip delay), had heard of but not verified (verification lag), or had verified but
  left for a diverse parent on purpose (exploration).

`--network ideal` runs the same loops over a perfect bus in lockstep rounds (records
arrive at the end of each round, announces at once): the algorithm without the network.
The default writes the results between `<!-- bench_scaling -->` markers in
docs/BENCHMARKS.md and a plot to docs/bench_scaling.png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import queue
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from experiments.agents import load_brief, make_agent  # noqa: E402
from experiments.research.loop import LoopConfig, ResearchLoop  # noqa: E402
from experiments.research.programs import program_digest  # noqa: E402
from experiments.research.scoreboard import is_baseline, keep_rules  # noqa: E402
from experiments.simulation.synthetic import SyntheticTrainer  # noqa: E402
from genome import base_train_source, genome_id, genome_root_id  # noqa: E402
from swarm.descriptions import (announced_program, is_interrupted, parse_working_on,  # noqa: E402
                                verify_target)
from swarm.identity import NodeIdentity  # noqa: E402
from swarm.lineage import Lineage, LineageError  # noqa: E402
from swarm.store import Store  # noqa: E402
from swarm.trust import TrustRules  # noqa: E402

BENCHMARKS = REPO / "docs" / "BENCHMARKS.md"
PLOT = REPO / "docs" / "bench_scaling.png"
BEGIN, END = "<!-- bench_scaling -->", "<!-- /bench_scaling -->"
TOPIC = "general"
SIGMA = 0.003            # the synthetic trainer's default noise
JITTER = 0.2             # each run takes delay * U(0.8, 1.2)
DEGREE = 3               # each node bootstraps to this many earlier nodes
TARGET_PEERS = 4         # and discovery keeps it at about this many (the default is 8)
BASE = base_train_source()
CATEGORIES = ("fresh", "unheard", "unverified", "explore")


def node_identity(landscape: int, index: int) -> NodeIdentity:
    """Fixed keys, so that a rerun builds the same swarm."""
    return NodeIdentity(hashlib.sha256(f"loopy-bench-scaling/{landscape}/{index}".encode())
                        .digest())


def default_delay(n: int) -> float:
    """Seconds of simulated training per run: long enough that N nodes' gossip and loop
    work (measured: tens of ms of CPU per record per node in py-libp2p) stay a small part
    of what 2 shared cores give."""
    return max(4.0, 2.0 * n)


class PacedTrainer:
    """The synthetic trainer, taking `delay` * U(1 - JITTER, 1 + JITTER) seconds a run."""

    def __init__(self, landscape: int, delay: float, rng: random.Random):
        self.inner = SyntheticTrainer(landscape, sigma=SIGMA, base_source=BASE)
        self.arena, self.label = self.inner.arena, self.inner.label
        self.delay, self.rng = delay, rng

    def run(self, source, *, seed, progress=None, cancel=None):
        self.inner.delay_s = self.delay * self.rng.uniform(1 - JITTER, 1 + JITTER) \
            if self.delay else 0.0
        return self.inner.run(source, seed=seed, progress=progress, cancel=cancel)


# --verify-share, --merge-share and --speculate-share change these for every node
LOOP_OPTIONS = {"verify_share": LoopConfig().verify_share,
                "merge_share": LoopConfig().merge_share,
                "speculate_share": LoopConfig().speculate_share}


# the speedup the one-night target asks of N = 16 nodes: 0.6 N (issue 21)
GOAL = 0.6

# --agent: the agent every node (and every lone reference) runs
AGENT = ["mutate"]


def build_loop(home: Path, landscape: int, index: int, rep: int, delay: float,
               operator_of: int = 0) -> ResearchLoop:
    """One node; `operator_of`: the swarm's size when one operator runs every node, so
    that each lists the others' keys as its own machines (the `trust_peer` setting)."""
    home.mkdir(parents=True, exist_ok=True)
    root = genome_root_id()
    store = Store.open(home, root_id=root)
    rng = random.Random(f"{landscape}/{index}/{rep}")
    return ResearchLoop(
        store=store, lineage=Lineage(store, BASE, root),
        identity=node_identity(landscape, index), genome=genome_id(), root_id=root,
        trainer=PacedTrainer(landscape, delay, random.Random(rng.random())),
        agent=make_agent(AGENT[0], base_source=BASE, profile="cpu"), brief=load_brief(TOPIC),
        config=LoopConfig(topic=TOPIC, rules=keep_rules(operator_nodes=operator_of),
                          **LOOP_OPTIONS,
                          trust=TrustRules(operator_keys=frozenset(
                              node_identity(landscape, j).public_key
                              for j in range(operator_of) if j != index))),
        home=home, rng=rng)


# --------------------------------------------------------------------------- measuring

class Truth:
    """Noise-free scores of records, cached by id."""

    def __init__(self, landscape: int):
        self.trainer = SyntheticTrainer(landscape, sigma=SIGMA, base_source=BASE)
        self.base = self.trainer.true_bpb(BASE)
        self.cache: dict[bytes, float | None] = {}

    def best_of(self, loop: ResearchLoop) -> float | None:
        """True val_bpb of what the node's scoreboard holds as its best verified record."""
        best = loop.scores.best()
        if best is None:
            return None
        if best.record is None:
            return self.base
        if best.id not in self.cache:
            try:
                self.cache[best.id] = self.trainer.true_bpb(loop.lineage.source_of(best.id))
            except LineageError:
                return None
        return self.cache[best.id]


def classify_parent(loop: ResearchLoop, parent) -> tuple[str, float | None]:
    """How an edit's parent relates to the best kept claim this node has heard of:
    ('fresh' | 'unverified' | 'explore', the best claim's measured score)."""
    with loop.scores.consistent():
        sigma = loop.scores.sigma()
        claims = [r for r in loop.store.experiments(arena=loop.arena)
                  if loop.scores.is_kept(r, sigma)]
        best = min(claims, key=lambda r: (r.val_bpb, r.id)) if claims else None
        if best is None or parent is None or best.id == parent.id or \
                (math.isfinite(parent.val_bpb) and parent.val_bpb <= best.val_bpb):
            return "fresh", best.val_bpb if best else None
        return ("explore" if loop.trust.is_verified(best) else "unverified"), best.val_bpb


def run_keys(loop: ResearchLoop) -> list[list]:
    """(parent, source digest, baseline seed or '') of each run this node made."""
    out = []
    for r in loop.store.experiments(arena=loop.arena, local=True):
        if is_interrupted((r.result or {}).get("reason")):
            continue
        try:
            source = loop.lineage.source_of(r.id)
        except LineageError:
            continue
        seed = is_baseline(r)
        out.append([r.parents[0].hex(), program_digest(source),
                    "" if seed is None else str(seed)])
    return out


def lineage_depth(loop: ResearchLoop) -> int:
    """Kept steps from the genome root to what the node holds as its best (first parents)."""
    best = loop.scores.best()
    depth, rid = 0, best.id if best is not None else loop.root_id
    while rid != loop.root_id:
        depth += 1
        rid = loop.store.get(rid).parents[0]
    return depth


def close_loops(loops) -> None:
    for loop in loops:
        loop.store.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarise_runs(keys: list[list], attestations: int, kinds: Counter) -> dict:
    seen = Counter(tuple(k) for k in keys)
    programs = Counter(k[1] for k in keys if not k[2])   # edits only: baselines repeat
    runs = len(keys) + attestations
    return {"runs": runs, "duplicates": sum(c - 1 for c in seen.values()),
            "same_program": sum(c - 1 for c in programs.values()),
            "attestations": attestations, "kinds": dict(kinds)}


# --------------------------------------------------------------------------- ideal network

async def ideal_swarm(base: Path, n: int, landscape: int, rep: int, max_rounds: int,
                      target: float | None, trust_all: bool = False,
                      operator: bool = False) -> dict:
    """N loops over a perfect bus in lockstep rounds: each round every node runs once (in
    a shuffled order); announces reach the others at once, records at the end of the round.
    `trust_all`: every node trusts every peer: it builds on every claim at once, re-runs
    nothing and counts every peer's baseline seeds (what verification and trust cost,
    as an upper bound). `operator`: one operator runs every node and lists the others'
    keys (`trust_peer`): the product's own path to what `trust_all` bounds. Returns the
    curve of the swarm's best true score per round and the run statistics."""
    loops = [build_loop(base / f"n{i}", landscape, i, rep, 0.0, n if operator else 0)
             for i in range(n)]
    for loop in loops if trust_all else ():
        loop.scores.trusted = lambda record: True
        loop.pending_claim = lambda: None
        loop.scores.baseline_authors = None
    truth = Truth(landscape)
    working: dict[int, tuple[bytes, str] | None] = {}
    programs: dict[int, str | None] = {}
    pending = []
    categories: Counter = Counter()
    global_best = [math.inf]   # the best kept claim published before this round
    for i, loop in enumerate(loops):
        async def announce(text, i=i):
            working[i] = parse_working_on(text)
            programs[i] = announced_program(text)

        async def publish(record):
            pending.append(record)
        loop.announce, loop.publish = announce, publish
        loop.busy = lambda i=i: _announced(loops, working, i)
        # firm hints come from peers this node trusts, as swarm_link's policy has it:
        # a seed a stranger runs never counts as coming (its baseline would not count)
        loop.firm_busy = loop.busy if trust_all else \
            (lambda i=i: _announced(loops, working, i, trusted_only=True))
        loop.running_programs = lambda i=i: {p for j, p in programs.items() if j != i and p}
        loop.verifiers = lambda i=i: _verifying(
            {loops[j].identity.public_key: w for j, w in working.items() if j != i and w})
        _watch_parents(loop, lambda cat, known: categories.update(
            ["unheard" if cat == "fresh" and known is not None and
             global_best[0] < known - 1e-12 else cat]))
    curve, kinds, reached, runs_at = [], Counter(), None, None
    order_rng = random.Random(f"order/{landscape}/{n}/{rep}")
    runs = 0
    try:
        for rnd in range(max_rounds):
            working.clear()
            programs.clear()
            order = list(range(n))
            order_rng.shuffle(order)
            for i in order:
                outcome = await loops[i].step()
                kinds[outcome.kind] += 1
                runs += outcome.kind != "no-proposal"
            for record in pending:
                for loop in loops:
                    if record.author != loop.identity.public_key:
                        loop.store.insert(record)
                if record.kind == "experiment" and record.val_bpb is not None and \
                        loops[0].scores.is_kept(record):
                    global_best[0] = min(global_best[0], record.val_bpb)
            pending.clear()
            scores = [s for s in (truth.best_of(loop) for loop in loops) if s is not None]
            curve.append(min(scores) if scores else None)
            if target is not None and curve[-1] is not None and curve[-1] <= target:
                reached, runs_at = rnd + 1, runs
                break
        keys = [k for loop in loops for k in run_keys(loop)]
        attestations = sum(loop.store.attestation_count(loop.identity.public_key)
                           for loop in loops)
        depth = lineage_depth(loops[0])
    finally:
        close_loops(loops)
    out = summarise_runs(keys, attestations, kinds)
    out.update(curve=curve, rounds=reached, runs_at_target=runs_at,
               categories=dict(categories), depth=depth)
    return out


def _announced(loops: list, working: dict, i: int, trusted_only: bool = False
               ) -> set[tuple[bytes, str]]:
    """What the other nodes announce they run now (the bus's `busy`); `trusted_only`: only
    the peers node `i` trusts (its `firm_busy`)."""
    trusted = loops[i].trust.trusted_author() if trusted_only else (lambda key: True)
    return {w for j, w in working.items()
            if j != i and w and trusted(loops[j].identity.public_key)}


def _verifying(working: dict[bytes, tuple[bytes, str]]) -> dict[str, set[bytes]]:
    """verifiers_from_announces for the ideal bus: claim id prefix -> re-running nodes."""
    out: dict[str, set[bytes]] = {}
    for author, (_parent, desc) in working.items():
        target = verify_target(desc)
        if target:
            out.setdefault(target, set()).add(author)
    return out


def _watch_parents(loop: ResearchLoop, note) -> None:
    """Classify each parent the loop chooses (see classify_parent)."""
    choose = loop.choose_parent

    def watched():
        parent = choose()
        if parent is not None:
            note(*classify_parent(loop, parent))
        return parent
    loop.choose_parent = watched


def crossing(curve: list, target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v is not None and v <= target), None)


def load_references(path: str) -> dict[int, dict]:
    """The lone-node references of an earlier run's --json dump, by landscape."""
    try:
        refs = json.loads(Path(path).read_text())["refs"]
        out = {int(land): ref for land, ref in refs.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SystemExit(f"--references {path}: not a scaling.py --json dump ({e})")
    for land, ref in out.items():
        if not isinstance(ref, dict) or not all(k in ref for k in ("target", "t1", "base")):
            raise SystemExit(f"--references {path}: landscape {land} has no target / t1")
    return out


def reference(landscape: int, reps: int, runs: int, cap: int, work: Path) -> dict:
    """Lone nodes: the target (median true best after `runs` runs) and T1."""
    curves = []
    for rep in range(reps):
        result = trio.run(ideal_swarm, work / f"ref-{landscape}-{rep}", 1, landscape,
                          1000 + rep, cap, None)
        curves.append(result["curve"])
    target = statistics.median(c[min(runs, len(c)) - 1] for c in curves)
    times = [crossing(c, target) for c in curves]
    t1 = statistics.median(t if t is not None else cap for t in times)
    return {"landscape": landscape, "target": target, "t1": t1, "times": times,
            "base": Truth(landscape).base, "runs": runs}


# --------------------------------------------------------------------------- libp2p swarm

def free_ports(count: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def libp2p_swarm(n: int, landscape: int, delay: float, procs: int, cap_rounds: float,
                 target: float, work: Path, extra_rounds: float = 0.0) -> dict:
    """Run N real nodes in `procs` worker processes until the target or `cap_rounds`."""
    ports = free_ports(n)
    addrs = [f"/ip4/127.0.0.1/tcp/{ports[i]}/p2p/{node_identity(landscape, i).peer_id}"
             for i in range(n)]
    graph_rng = random.Random(f"graph/{landscape}/{n}")
    bootstrap = [[addrs[j] for j in graph_rng.sample(range(i), min(DEGREE, i))]
                 for i in range(n)]
    groups = [list(range(n))[p::procs] for p in range(min(procs, n))]
    events: queue.Queue = queue.Queue()
    workers = []
    for g, nodes in enumerate(groups):
        spec = {"nodes": nodes, "landscape": landscape, "delay": delay, "ports": ports,
                "bootstrap": bootstrap, "work": str(work), "rep": 0, "agent": AGENT[0]}
        log = open(work.parent / f"worker-{n}-{landscape}-{g}.log", "w")
        proc = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        log.close()   # the child has its own handle
        proc.stdin.write(json.dumps(spec) + "\n")
        proc.stdin.flush()
        threading.Thread(target=_pump, args=(proc, g, events), daemon=True).start()
        workers.append(proc)
    try:
        ready = 0
        setup_deadline = time.time() + 180
        while ready < len(workers):
            ev = events.get(timeout=max(1.0, setup_deadline - time.time()))
            if ev.get("ev") == "ready":
                ready += 1
            elif ev.get("ev") == "exit":
                raise RuntimeError(f"worker {ev['worker']} died during setup")
        t0 = time.time()
        for proc in workers:
            proc.stdin.write(f"go {t0}\n")
            proc.stdin.flush()
        best: dict[int, float] = {}
        starts, runs, reached, stop_at = [], [], None, t0 + cap_rounds * delay
        yields = 0
        kept_claims: list[tuple[float, float]] = []     # (time, measured score) of kept edits
        while time.time() < stop_at:
            try:
                ev = events.get(timeout=0.5)
            except queue.Empty:
                continue
            kind = ev.get("ev")
            if kind == "exit":
                raise RuntimeError(f"worker {ev['worker']} died")
            if kind == "best" and ev["true"] is not None:
                best[ev["node"]] = ev["true"]
                if reached is None and min(best.values()) <= target:
                    reached = ev["t"]
                    stop_at = min(stop_at, time.time() + extra_rounds * delay)
            elif kind == "run":
                runs.append(ev)
                if ev.get("kept"):
                    kept_claims.append((ev["t"], ev["val"]))
            elif kind == "start":
                starts.append(ev)
            elif kind == "yield":
                yields += 1
        for proc in workers:
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        finals = []
        while len(finals) < len(workers):
            ev = events.get(timeout=120)
            if ev.get("ev") == "final":
                finals.append(ev)
            elif ev.get("ev") == "exit" and not any(f["worker"] == ev["worker"]
                                                    for f in finals):
                raise RuntimeError(f"worker {ev['worker']} died before reporting")
    finally:
        for proc in workers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    t_end = reached if reached is not None else None
    done = [r for r in runs if t_end is None or r["t"] <= t_end]
    kinds = Counter(r["kind"] for r in runs)
    keys = [k for f in finals for k in f["keys"]]
    out = summarise_runs(keys, sum(f["attestations"] for f in finals), kinds)
    categories = Counter()
    for s in starts:
        cat = s["cat"]
        if cat == "fresh":
            heard = [v for t, v in kept_claims if t < s["t"]]
            if heard and s["known"] is not None and min(heard) < s["known"] - 1e-12:
                cat = "unheard"
            elif heard and s["known"] is None:
                cat = "unheard"
        categories[cat] += 1
    latencies = [x for f in finals for x in f["latencies"]]
    out.update(rounds=(reached - t0) / delay if reached is not None else None,
               runs_at_target=len([r for r in done if r["kind"] != "no-proposal"])
               if reached is not None else None,
               categories=dict(categories), wall_s=time.time() - t0,
               latency_p50_s=percentile(latencies, 50),
               latency_p99_s=percentile(latencies, 99),
               cpu_s=sum(f["cpu_s"] for f in finals), delay=delay, yields=yields,
               records_sent=sum(f["published"] for f in finals),
               peers=statistics.mean(p for f in finals for p in f["peers"]))
    return out


def _pump(proc, worker: int, events: queue.Queue) -> None:
    for line in proc.stdout:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        ev["worker"] = worker
        events.put(ev)
    events.put({"ev": "exit", "worker": worker})


# --------------------------------------------------------------------------- worker

def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


async def worker_main(spec: dict) -> None:
    """Host some of the swarm's nodes: build them, wait for `go`, run until `stop`."""
    import logging
    from contextlib import AsyncExitStack

    from swarm.network import open_swarm_node

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    landscape, delay = spec["landscape"], spec["delay"]
    AGENT[0] = spec["agent"]
    work = Path(spec["work"])
    truth = Truth(landscape)
    latencies: list[float] = []
    published = [0]
    loops: dict[int, ResearchLoop] = {}
    nets = {}
    lines = trio.wrap_file(sys.stdin)
    async with AsyncExitStack() as stack:
        for i in spec["nodes"]:
            loop = build_loop(work / f"n{i}", landscape, i, spec["rep"], delay)
            loops[i] = loop
            net = await stack.enter_async_context(open_swarm_node(
                loop.identity, loop.store, genome=loop.genome, topics=[TOPIC],
                listen=f"/ip4/127.0.0.1/tcp/{spec['ports'][i]}",
                bootstrap=spec["bootstrap"][i], target_peers=TARGET_PEERS))
            nets[i] = net
            _join(loop, net, i, latencies, published)
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
        latencies.clear()
        async with trio.open_nursery() as nursery:
            stagger = random.Random(f"stagger/{landscape}")
            for i, loop in loops.items():
                _report(loop, i, truth)
                # nodes never start in the same instant: this lets each hear the first
                # announces of those before it (which baseline seed they run)
                nursery.start_soon(_serve_after, loop, stagger.uniform(0, min(2.0, delay / 2)))
            nursery.start_soon(_poll_best, loops, truth, max(2.0, delay))
            await lines.readline()      # "stop", or EOF when the parent died
            nursery.cancel_scope.cancel()
        emit(ev="final", keys=[k for loop in loops.values() for k in run_keys(loop)],
             attestations=sum(loop.store.attestation_count(loop.identity.public_key)
                              for loop in loops.values()),
             latencies=latencies, cpu_s=time.process_time() - cpu0,
             published=published[0], peers=[len(nets[i].connected_peers()) for i in loops])
    close_loops(loops.values())


def _join(loop: ResearchLoop, net, index: int, latencies: list, published: list) -> None:
    """What node.py does (experiments.research.swarm_link.connect_to_swarm), plus counters."""
    from experiments.research.swarm_link import connect_to_swarm

    connect_to_swarm(loop, net)

    async def publish(record) -> None:
        published[0] += 1
        await net.publish(record)
    loop.publish = publish
    original = net.gossip.on_record

    def on_record(record, origin):
        if record.kind != "announce":
            latencies.append(time.time() - record.t / 1000)
        original(record, origin)
    net.gossip.on_record = on_record


def _report(loop: ResearchLoop, index: int, truth: Truth) -> None:
    """Runs, parent choices and best-score changes go to the parent as events."""
    last = [None]

    def check_best():
        score = truth.best_of(loop)
        if score is not None and score != last[0]:
            last[0] = score
            emit(ev="best", node=index, t=time.time(), true=score)
    loop.check_best = check_best

    def on_event(kind, data):
        if kind == "proposal-failed" and str(data.get("reason", "")).startswith("yielded"):
            emit(ev="yield", node=index, t=time.time())
        if kind in ("finished", "verified"):
            status = data.get("status")
            emit(ev="run", node=index, t=time.time(),
                 kind="verification" if kind == "verified" else (
                     "baseline" if (data.get("desc") or "").startswith("baseline") else
                     "experiment"),
                 kept=bool(data.get("kept")), val=data.get("val_bpb"), status=status)
            check_best()
    loop.on_event = on_event

    def note(cat, known):
        emit(ev="start", node=index, t=time.time(), cat=cat, known=known)
    _watch_parents(loop, note)


async def _serve_after(loop: ResearchLoop, wait_s: float) -> None:
    await trio.sleep(wait_s)
    await loop.serve()


async def _poll_best(loops: dict, truth: Truth, every: float) -> None:
    """Claims can become verified between a node's own runs (trusted attestations)."""
    while True:
        await trio.sleep(every)
        for loop in loops.values():
            loop.check_best()


# --------------------------------------------------------------------------- report

def parse_list(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def aggregate(rows: list[dict], refs: dict) -> dict:
    """Per N over landscapes: speedup = sum T1 / sum T_N (censored runs count at the cap)."""
    t1 = sum(refs[r["landscape"]]["t1"] for r in rows)
    tn = sum(r["rounds"] if r["rounds"] is not None else r["cap"] for r in rows)
    runs = sum(r["runs_at_target"] or r["runs"] for r in rows)
    total = sum(r["runs"] for r in rows)
    cats = Counter()
    for r in rows:
        cats.update(r["categories"])
    edits = sum(cats.values()) or 1
    lat = [r["latency_p50_s"] for r in rows if r.get("latency_p50_s") is not None]
    return {"speedup": t1 / tn if tn else None, "t1": t1 / len(rows), "tn": tn / len(rows),
            "censored": sum(r["rounds"] is None for r in rows),
            "runs_at_target": runs / len(rows),
            "duplicates": sum(r["duplicates"] for r in rows) / max(1, total),
            "same_program": sum(r.get("same_program", 0) for r in rows) / max(1, total),
            "verification": sum(r["attestations"] for r in rows) / max(1, total),
            "categories": {c: cats.get(c, 0) / edits for c in CATEGORIES},
            "latency_p50_s": statistics.median(lat) if lat else None,
            "landscapes": len(rows),
            "cpu_cores": (statistics.mean(r["cpu_s"] / r["wall_s"] for r in rows)
                          if all("cpu_s" in r for r in rows) else None)}


def distinct(refs: dict, of) -> str:
    """The distinct values `of(reference)` takes over the references, as "a/b"."""
    return "/".join(map(str, sorted({of(ref) for ref in refs.values()})))


def loop_settings(args) -> str:
    """The loop settings every node ran with, as the written section names them."""
    text = (f"loop settings verify_share {args.verify_share}, merge_share "
            f"{args.merge_share}, speculate_share {args.speculate_share}, keep bar "
            f"k = {keep_rules().noise_k}")
    if args.trust_all:
        text += "; every claim trusted, nothing re-run (`--trust-all`)"
    if args.operator:
        text += ("; one operator's nodes, each listing the others as `trust_peer`, with "
                 "their keep rule (`--operator`)")
    return text


def render(args, refs: dict, results: dict, wall_s: float, load: tuple, ideal: dict) -> str:
    head = (f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
            f"{os.cpu_count()} cores shared with other jobs (load average "
            f"{load[0][0]:.1f} before, {load[1][0]:.1f} after), Python "
            f"{platform.python_version()}, py-libp2p 0.8.1, loopback; {wall_s / 60:.0f} min.")
    lines = [BEGIN, "## Scaling: N nodes against one (`bench/scaling.py`)", "", head, "",
             f"Synthetic trainer (hidden landscapes {', '.join(map(str, args.landscapes))}, "
             f"noise sigma {SIGMA}), `{args.agent}` agent, {loop_settings(args)}. Target "
             "per landscape: the median true val_bpb a lone node "
             # a reused dump without "runs" predates them: taken at --reference-runs
             f"reaches in {distinct(refs, lambda r: r.get('runs', args.reference_runs))} "
             f"runs ({distinct(refs, lambda r: len(r.get('times', ())))} lone nodes); T1 "
             "= the median runs they needed for it. Time is in runs of one node (wall "
             "seconds / the run's delay), so the speedup T1 / T_N is wall-clock at equal "
             "per-node experiment time. Each run waits `delay` seconds (+-20 %); the delay "
             "grows with N so that gossip stays a small share of the shared CPU.", ""]
    lines += ["| N | landscapes | delay (s) | time to target (runs of one node) | speedup | "
              "goal | runs to target (all nodes) | duplicated runs / same program | re-runs "
              "(verification) "
              "| edits: fresh / unheard / unverified / explore | gossip latency p50 | CPU "
              "used (cores) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    mean_t1 = statistics.mean(r["t1"] for r in refs.values())
    lines.append(f"| 1 | {len(refs)} | - | {mean_t1:.1f} | 1.00 | | {mean_t1:.1f} | 0 % | "
                 "0 % | | | |")
    for n, agg in results.items():
        cats = agg["categories"]
        goal = f">= {GOAL * n:.1f}: {'met' if agg['speedup'] >= GOAL * n else 'MISSED'}"
        cens = f" ({agg['censored']} not reached)" if agg["censored"] else ""
        lat = f"{agg['latency_p50_s']:.2f} s" if agg["latency_p50_s"] is not None else "-"
        cores = f"{agg['cpu_cores']:.2f}" if agg.get("cpu_cores") is not None else "-"
        lines.append(
            f"| {n} | {agg['landscapes']} | {agg['delay']:.0f} | {agg['tn']:.1f}{cens} | "
            f"{agg['speedup']:.2f} | "
            f"{goal if n == 16 else ''} | {agg['runs_at_target']:.0f} | "
            f"{100 * agg['duplicates']:.1f} / {100 * agg['same_program']:.1f} % | "
            f"{100 * agg['verification']:.0f} % | {' / '.join(f'{100 * cats[c]:.0f}' for c in CATEGORIES)} % | {lat} | {cores} |")
    lines += ["", "Per landscape (target, T1, lone-node times; then T_N for each N, "
              "'>' where the swarm had not reached the target by the cap):", "",
              "| landscape | target (base) | T1 (lone nodes) | " +
              " | ".join(f"N={n}" for n in results) + " |",
              "|---|---|---|" + "---|" * len(results)]
    for land, ref in refs.items():
        cells = []
        for n in results:
            row = next((r for r in results[n]["rows"] if r["landscape"] == land), None)
            cells.append("-" if row is None else (f"{row['rounds']:.1f}" if row["rounds"]
                                                  is not None else f"> {row['cap']:.0f}"))
        lines.append(f"| {land} | {ref['target']:.4f} ({ref['base']:.4f}) | {ref['t1']:.0f} "
                     f"({', '.join(str(t) if t else '-' for t in ref['times'])}) | "
                     + " | ".join(cells) + " |")
    if ideal:
        lines += ["", "The same loops over a perfect bus in lockstep rounds (`--network "
                  "ideal`: no gossip delay, no CPU contention), to separate the algorithm "
                  "from the network:", "",
                  "| N | landscapes | speedup | runs to target | duplicated runs / same "
                  "program | re-runs |",
                  "|---|---|---|---|---|---|"]
        for n, agg in ideal.items():
            lines.append(f"| {n} | {agg['landscapes']} | {agg['speedup']:.2f} | "
                         f"{agg['runs_at_target']:.0f} | {100 * agg['duplicates']:.1f} / "
                         f"{100 * agg['same_program']:.1f} % | "
                         f"{100 * agg['verification']:.0f} % |")
    lines += ["", "![speedup against N](bench_scaling.png)", ""]
    if args.notes:
        lines += [Path(args.notes).read_text().strip(), ""]
    lines.append(END)
    return "\n".join(lines)


def plot(results: dict, ideal: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ns = [1] + list(results)
    top = max(ns)
    ax.plot([1, top], [1, top], color="#999", linestyle="--", label="linear (N)")
    ax.plot([1, top], [GOAL, GOAL * top], color="#bbb", linestyle=":", label=f"goal ({GOAL} N)")
    ax.plot(ns, [1.0] + [results[n]["speedup"] for n in results], marker="o",
            label="libp2p swarm")
    if ideal:
        ax.plot([1] + list(ideal), [1.0] + [ideal[n]["speedup"] for n in ideal], marker="s",
                label="perfect bus (lockstep)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("nodes N")
    ax.set_ylabel("speedup to the lone node's target")
    ax.set_title("Loopy swarm scaling (synthetic trainer)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def write_section(text: str) -> None:
    doc = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    BENCHMARKS.write_text(doc)


def cap_rounds(t1: float, n: int) -> float:
    """How long a swarm may try: long enough to measure a speedup down to about N / 3."""
    return min(1.5 * t1, math.ceil(3 * t1 / n) + 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2,4,8,16,32", help="swarm sizes (N=1 is the reference)")
    ap.add_argument("--landscapes", default="0,1", help="landscape seeds, e.g. 0,1 or 0-11")
    ap.add_argument("--network", choices=("libp2p", "ideal"), default="libp2p")
    ap.add_argument("--ideal-landscapes", default="",
                    help="also run the perfect-bus swarm on these landscapes (libp2p mode)")
    ap.add_argument("--procs", type=int, default=2, help="worker processes for the nodes")
    ap.add_argument("--delay", type=float, default=0.0,
                    help="seconds per run for every N (default: max(4, 2 N))")
    ap.add_argument("--big-landscapes", type=int, default=1,
                    help="N >= 32 runs on only this many of the landscapes (time)")
    ap.add_argument("--agent", default="mutate",
                    help="the agent of every node and lone reference (mutate, optuna:tpe, ...)")
    ap.add_argument("--reference-runs", type=int, default=40)
    ap.add_argument("--reference-reps", type=int, default=3)
    ap.add_argument("--reference-cap", type=int, default=60)
    ap.add_argument("--references", metavar="JSON",
                    help="reuse the lone-node targets and T1 of an earlier --json dump, so "
                         "that two settings are compared against the same references (their "
                         "noise alone moves the speedup by about 1.5 at 4 landscapes)")
    ap.add_argument("--verify-share", type=float, default=LoopConfig().verify_share,
                    help="the loop's verify_share for every node (ideal network only)")
    ap.add_argument("--merge-share", type=float, default=LoopConfig().merge_share,
                    help="ideal network only: merge_share for every node and lone reference")
    ap.add_argument("--speculate-share", type=float, default=LoopConfig().speculate_share,
                    help="ideal network only: speculate_share for every node and lone reference")
    ap.add_argument("--trust-all", action="store_true",
                    help="ideal network only: no verification, every claim trusted")
    ap.add_argument("--operator", action="store_true",
                    help="ideal network only: one operator runs every node, each listing "
                         "the others as trust_peer")
    ap.add_argument("--notes", help="a markdown file appended to the written section")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the nodes' homes (debugging)")
    ap.add_argument("--json", help="also dump raw results to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(sys.stdin.readline())
        if os.environ.get("LOOPY_PROFILE_WORKER"):   # where a worker's CPU goes
            import cProfile
            cProfile.runctx("trio.run(worker_main, spec)", globals(), {"spec": spec},
                            f"{os.environ['LOOPY_PROFILE_WORKER']}.{os.getpid()}")
        else:
            trio.run(worker_main, spec)
        return 0
    args.landscapes = parse_list(args.landscapes)
    if (args.operator or args.trust_all) and args.network != "ideal":
        raise SystemExit("--operator and --trust-all are for --network ideal")
    try:
        make_agent(args.agent, base_source=BASE)   # a bad spec fails here, not in a worker
    except ValueError as e:
        raise SystemExit(f"--agent: {e}")
    AGENT[0] = args.agent
    LOOP_OPTIONS.update(verify_share=args.verify_share, merge_share=args.merge_share,
                        speculate_share=args.speculate_share)
    sizes = parse_list(args.sizes)
    load0 = os.getloadavg()
    t_start = time.time()
    work = Path(tempfile.mkdtemp(prefix="loopy-scaling-",
                                 dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    refs: dict[int, dict] = {}
    results: dict[int, dict] = {}
    ideal: dict[int, dict] = {}
    try:
        ideal_lands = parse_list(args.ideal_landscapes) if args.network == "libp2p" else []
        reused = load_references(args.references) if args.references else {}
        for land in sorted(set(args.landscapes) | set(ideal_lands)):
            refs[land] = reused.get(land) or reference(
                land, args.reference_reps, args.reference_runs, args.reference_cap, work)
            print(f"landscape {land}: target {refs[land]['target']:.4f} (base "
                  f"{refs[land]['base']:.4f}), lone nodes reach it after "
                  f"{refs[land]['times']} runs: T1 = {refs[land]['t1']}", flush=True)
        for n in sizes:
            rows = []
            lands = args.landscapes[:args.big_landscapes] if n >= 32 else args.landscapes
            for land in lands:
                ref = refs[land]
                cap = cap_rounds(ref["t1"], n)
                t0 = time.time()
                if args.network == "ideal":
                    row = trio.run(ideal_swarm, work / f"ideal-{land}-{n}", n, land, 0,
                                   int(math.ceil(cap)), ref["target"], args.trust_all,
                                   args.operator)
                    delay = 0.0
                else:
                    delay = args.delay or default_delay(n)
                    row = libp2p_swarm(n, land, delay, args.procs, cap, ref["target"],
                                       work / f"p2p-{land}-{n}")
                row.update(landscape=land, cap=cap, n=n)
                rows.append(row)
                shown = f"{row['rounds']:.1f}" if row["rounds"] is not None else f"> {cap}"
                print(f"N={n} landscape {land}: target after {shown} runs-of-one-node "
                      f"(T1 {ref['t1']}), {row['runs']} runs, {row['duplicates']} duplicated, "
                      f"{row.get('same_program', 0)} same program, "
                      f"{row['attestations']} re-runs, parents {row['categories']}, "
                      + (f"gossip p50 {row['latency_p50_s']}, cpu {row['cpu_s']:.0f} s "
                         f"of {row['wall_s']:.0f} s, {row['yields']} yielded, "
                         if args.network == "libp2p" else "")
                      + f"[{time.time() - t0:.0f} s]", flush=True)
            results[n] = dict(aggregate(rows, refs), rows=rows,
                              delay=args.delay or (default_delay(n)
                                                   if args.network == "libp2p" else 0.0))
            print(f"N={n}: speedup {results[n]['speedup']:.2f}", flush=True)
            if ideal_lands:
                irows = []
                for land in ideal_lands:
                    cap = cap_rounds(refs[land]["t1"], n)
                    row = trio.run(ideal_swarm, work / f"ideal-{land}-{n}", n, land, 0,
                                   int(math.ceil(cap)), refs[land]["target"])
                    row.update(landscape=land, cap=cap, n=n)
                    irows.append(row)
                ideal[n] = aggregate(irows, refs)
                print(f"N={n} perfect bus: speedup {ideal[n]['speedup']:.2f}", flush=True)
        wall = time.time() - t_start
        if args.json:
            Path(args.json).write_text(json.dumps({"refs": refs, "results": results,
                                                   "ideal": ideal}, default=str, indent=1))
        refs_shown = {land: refs[land] for land in args.landscapes}
        text = render(args, refs_shown, results, wall, (load0, os.getloadavg()), ideal)
        print(text)
        if not args.no_write and args.network == "libp2p":
            plot(results, ideal, PLOT)
            write_section(text)
    except BaseException as exc:
        args.keep = True     # a failed run keeps its workers' logs and the nodes' stores
        if args.json:        # and the sizes it finished
            Path(args.json).write_text(json.dumps(
                {"refs": refs, "results": results, "ideal": ideal,
                 "error": f"{type(exc).__name__}: {exc}"}, default=str, indent=1))
        raise
    finally:
        if args.keep:
            print(f"kept the nodes' homes and the workers' logs in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

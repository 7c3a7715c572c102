"""Benchmark: two real-genome nodes of one core each against one node of one core.

    python bench/real_pair.py --minutes 10          # 10 min the pair, then 10 min alone
    python bench/real_pair.py --minutes 2 --budget 50ktok --no-write   # a smoke run

Both setups run `node.py start` (the real node: harness, sandbox, mutate agent,
verification, libp2p on 127.0.0.1) on the real genome on CPU, for the same wall time:

- pair: node A pinned to core 0, node B pinned to core 1 (B bootstraps to A);
- lone: node C pinned to core 1, offline (core 1: where other jobs of this machine, pinned
  to core 0, do not reach; if they load core 0, the pair is the one handicapped).

Each node process is pinned with `taskset`; the harness sizes training threads from the
process's CPU affinity (`experiments.run.hardware.cpu_threads`), so every training child runs
on 1 thread, and children inherit the pin. The data (tokenizer, tokenised corpus) is
prepared once and copied into every node's home, so no setup counts against a node.

The result compares kept edits (beating their parent by more than the arena's noise), the
best verified val_bpb (as any node of the setup counts it) and runs per setup. Other jobs
share this machine: the load average is sampled every 15 s and reported, since a busy
machine slows training (scores are not affected: the budget is in tokens).
Results go between `<!-- bench_real_pair -->` markers in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BENCHMARKS = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- bench_real_pair -->", "<!-- /bench_real_pair -->"
TOPIC = "general"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_template(work: Path, dataset: str) -> Path:
    """Prepare the data once (in a template home) for every node to copy."""
    from genome.prepare import prepare_data
    template = work / "template"
    prepare_data(template, dataset)
    return template / "data"


def node_home(work: Path, name: str, data: Path) -> Path:
    home = work / name
    home.mkdir(parents=True)
    shutil.copytree(data, home / "data")
    return home


def peer_id(home: Path) -> str:
    out = subprocess.run([sys.executable, str(REPO / "node.py"), "id", "--home", str(home)],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return out.stdout.strip().splitlines()[-1]


def start_node(home: Path, core: int, minutes: float, budget: str, *, listen: str | None,
               bootstrap: str | None) -> subprocess.Popen:
    cmd = ["taskset", "-c", str(core), sys.executable, str(REPO / "node.py"), "start",
           "--home", str(home), "--topic", TOPIC, "--trainer", "genome", "--device", "cpu",
           "--budget", budget, "--until", f"{minutes * 60:.0f}s", "--plain"]
    if listen is None:
        cmd.append("--offline")
    else:
        cmd += ["--listen", listen]
    if bootstrap:
        cmd += ["--bootstrap", bootstrap]
    log = open(home / "node.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def wait_listening(home: Path, timeout_s: float = 120.0) -> None:
    """Until the node's log says it listens (importing torch takes a while on a busy core)."""
    deadline = time.time() + timeout_s
    log = home / "node.log"
    while time.time() < deadline:
        if log.exists() and "listening on" in log.read_text(errors="replace"):
            return
        time.sleep(0.5)


def sample_load(stop: threading.Event, out: list) -> None:
    while not stop.is_set():
        out.append(os.getloadavg()[0])
        stop.wait(15)


def run_setup(name: str, nodes: list[dict], minutes: float) -> dict:
    """Start the nodes, wait until they stop on their own (--until), then read the stores."""
    loads: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_load, args=(stop, loads), daemon=True)
    sampler.start()
    t0 = time.time()
    procs = []
    try:
        for spec in nodes:
            procs.append(start_node(**spec, minutes=minutes))
            if spec["listen"] is not None:
                wait_listening(spec["home"])   # listening before the next node dials it
        for proc in procs:
            try:
                proc.wait(timeout=minutes * 60 + 300)   # a run in flight finishes or is cut
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        stop.set()
    wall = time.time() - t0
    result = read_setup([spec["home"] for spec in nodes])
    result.update(name=name, wall_s=wall, load_mean=statistics.mean(loads) if loads else None,
                  load_max=max(loads) if loads else None, nodes=len(nodes))
    return result


def read_setup(homes: list[Path]) -> dict:
    """Runs, kept edits and best verified score over the setup's stores."""
    from experiments.research.scoreboard import Scoreboard, is_baseline
    from genome import base_train_source, genome_root_id
    from swarm.identity import NodeIdentity
    from swarm.lineage import Lineage
    from swarm.store import Store
    from swarm.trust import TrustPolicy

    root = genome_root_id()
    kept, best, runs, sigma, root_score, durations = {}, None, [], None, None, []
    for home in homes:
        store = Store.open(home, root_id=root)
        try:
            arena = store.get_meta("node.arena")
            me = NodeIdentity.load_or_create(home).public_key
            trust = TrustPolicy(store, me)
            scores = Scoreboard(store, Lineage(store, base_train_source(), root), root, arena,
                                trusted=trust.is_verified)
            with scores.consistent():
                sigma = scores.sigma()
                root_score = scores.root_score()
                for r in store.experiments(arena=arena):
                    if scores.is_kept(r, sigma):
                        kept[r.id_hex] = {"desc": r.desc, "val_bpb": r.val_bpb,
                                          "delta": scores.delta(r)}
                mine = store.experiments(arena=arena, local=True)
                for r in mine:
                    kind = "baseline" if is_baseline(r) is not None else "edit"
                    runs.append({"kind": kind, "status": r.status, "val_bpb": r.val_bpb})
                    durations.append((r.result or {}).get("total_s", 0.0))
                runs += [{"kind": "verification"}] * store.attestation_count(me)
                found = scores.best()
                if found is not None and (best is None or found.val_bpb < best["val_bpb"]):
                    best = {"val_bpb": found.val_bpb, "id": found.id.hex(),
                            "desc": found.record.desc if found.record else "genome root"}
        finally:
            store.close()
    count = {k: sum(1 for r in runs if r["kind"] == k)
             for k in ("baseline", "edit", "verification")}
    return {"kept": kept, "best": best, "runs": count, "sigma": sigma,
            "root_score": root_score,
            "crashes": sum(1 for r in runs if r.get("status") not in (None, "ok")),
            "mean_run_s": statistics.mean(durations) if durations else None}


def render(results: list[dict], args, load0, load1) -> str:
    lines = [BEGIN, "## Real genome: two 1-core nodes against one (`bench/real_pair.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')}: `node.py start` on the real genome, CPU, "
             f"budget {args.budget}, {args.minutes:g} min per setup, each node pinned to one "
             f"core (training on 1 thread). Load average {load0:.1f} before, {load1:.1f} "
             "after; other jobs shared the 2 cores throughout.", "",
             "| setup | nodes | wall (min) | load avg (mean / max) | runs: baseline / edit / "
             "re-run | crashed | mean run (s) | kept edits | best verified val_bpb | root "
             "val_bpb | sigma |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        best = f"{r['best']['val_bpb']:.4f}" if r["best"] else "-"
        lines.append(
            f"| {r['name']} | {r['nodes']} | {r['wall_s'] / 60:.1f} | "
            f"{r['load_mean'] or 0:.1f} / {r['load_max'] or 0:.1f} | "
            f"{r['runs']['baseline']} / {r['runs']['edit']} / {r['runs']['verification']} | "
            f"{r['crashes']} | {r['mean_run_s'] or 0:.0f} | {len(r['kept'])} | {best} | "
            f"{r['root_score'] if r['root_score'] is None else format(r['root_score'], '.4f')}"
            f" | {r['sigma'] if r['sigma'] is None else format(r['sigma'], '.4f')} |")
    for r in results:
        for rid, k in sorted(r["kept"].items(), key=lambda kv: kv[1]["val_bpb"]):
            lines.append(f"- {r['name']} kept `{k['desc']}`: {k['val_bpb']:.4f} "
                         f"({k['delta']:+.4f} against its parent)")
    lines += ["", END]
    return "\n".join(lines)


def write_section(text: str) -> None:
    doc = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    BENCHMARKS.write_text(doc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="wall time per setup")
    ap.add_argument("--budget", default="300ktok", help="per-run training budget")
    ap.add_argument("--dataset", default="embedded")
    ap.add_argument("--order", choices=("pair-first", "lone-first"), default="pair-first")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", help="also dump raw results to this file")
    args = ap.parse_args()
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("needs taskset and 2 cores", file=sys.stderr)
        return 2
    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="loopy-real-pair-"))
    try:
        data = prepare_template(work, args.dataset)
        port = free_port()
        a, b, c = (node_home(work, name, data) for name in ("a", "b", "c"))
        addr_a = f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id(a)}"
        common = {"budget": args.budget}
        pair = ("pair (2 nodes x 1 core)", [
            dict(home=a, core=0, listen=f"/ip4/127.0.0.1/tcp/{port}", bootstrap=None, **common),
            dict(home=b, core=1, listen="/ip4/127.0.0.1/tcp/0", bootstrap=addr_a, **common)])
        lone = ("lone (1 node x 1 core)", [
            dict(home=c, core=1, listen=None, bootstrap=None, **common)])
        setups = [pair, lone] if args.order == "pair-first" else [lone, pair]
        results = []
        for name, nodes in setups:
            print(f"running {name} for {args.minutes:g} min", flush=True)
            results.append(run_setup(name, nodes, args.minutes))
            print(json.dumps(results[-1], indent=1, default=str), flush=True)
        text = render(results, args, load0, os.getloadavg()[0])
        print(text)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        if not args.no_write:
            write_section(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

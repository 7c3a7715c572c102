"""Benchmark of the web dashboard on a store with thousands of experiments.

Builds a node home with 5,000 signed experiments (by default) in one arena: baseline
runs, a tree of edits by 8 authors over 3 topics (kept, discarded, crashed), this
node's and peers' attestations (reproduced and refuted) and announces. Then it
measures, with the dashboard serving over HTTP on 127.0.0.1:

- each JSON route and /best.patch: the first answer after the store changed (the
  arena is scored again), and a repeated answer (cached until the store changes);
- the page in headless Chromium, driven through chromedriver's W3C HTTP API: time from
  navigation to the first complete drawing of chart, lineage and tables (fetches
  included), and the time to redraw the chart for the colour and axis toggles;
- `loopy plot` for the same arena.

Goal: the page renders in under a second.

    python bench/bench_dashboard.py                    # writes docs/BENCHMARKS.md
    python bench/bench_dashboard.py --experiments 1000 --no-write

Results replace only the section between `<!-- bench_dashboard -->` markers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments.views.arena_view import read_arena  # noqa: E402
from experiments.views.dashboard import start_dashboard  # noqa: E402
from experiments.views.plot import plot_progress  # noqa: E402
from experiments.research.scoreboard import Scoreboard, ScoreRules  # noqa: E402
from genome import base_train_source, genome_id, genome_root_id  # noqa: E402
from swarm.descriptions import baseline_desc, edit_desc  # noqa: E402
from swarm.identity import NodeIdentity  # noqa: E402
from swarm.lineage import Lineage  # noqa: E402
from swarm.patch import make_patch  # noqa: E402
from swarm.records import make_announce, make_attestation, make_experiment  # noqa: E402
from swarm.store import Store  # noqa: E402
from swarm.trust import TrustPolicy  # noqa: E402

ARENA = "synthetic/tokens:300000/sim"
TOPICS = ("general", "optimizer", "architecture")
MARK = "bench_dashboard"
GOAL_MS = 1000.0


def result(rng: random.Random, val: float | None) -> dict:
    out = {"status": "ok" if val is not None else "crash", "train_s": 300.0,
           "total_s": 330.0, "tokens": 300000, "steps": 100, "params": 1_000_000,
           "peak_mem_mb": 900.0, "reason": "synthetic benchmark"}
    if val is not None:
        out["val_bpb"] = round(val, 6)
    else:
        out["reason"] = "synthetic benchmark: crashed"
    return out


def build_store(home: Path, experiments: int, seed: int = 0) -> dict:
    """A node home whose store holds `experiments` experiments in ARENA."""
    rng = random.Random(seed)
    me = NodeIdentity.load_or_create(home)
    authors = [me] + [NodeIdentity.generate() for _ in range(7)]
    liar = authors[-1]
    root = genome_root_id()
    base = base_train_source()
    gid = genome_id()
    t = int(time.time() * 1000) - experiments * 60_000
    sources = {root: base}
    kept: list[tuple[float, bytes]] = []   # (val, id) a node would build on
    records = []
    sigma = 0.002
    for s in range(3):
        t += 60_000
        r = make_experiment(me, genome=gid, parents=[root], topic="general", arena=ARENA,
                            patch="", desc=baseline_desc(s), agent="mutate",
                            result=result(rng, 1.9 + rng.gauss(0, sigma)), t=t)
        records.append((r, True))
    root_val = records[0][0].val_bpb
    vals = {root: root_val}
    for n in range(experiments - 3):
        t += 60_000
        author = rng.choice(authors)
        if kept and rng.random() < 0.9:
            top = sorted(kept)[:5]
            parent = (top[0] if rng.random() < 0.7 else rng.choice(top))[1]
        else:
            parent = root
        old = sources[parent]
        new = old + f"# edit {n}: {rng.choice(['lr', 'depth', 'warmup', 'init'])}\n"
        topic = rng.choice(TOPICS)
        crashed = rng.random() < 0.04
        if author is liar and not crashed:
            val = vals[parent] - 0.02               # a claim that will not reproduce
        else:
            val = None if crashed else vals[parent] + rng.gauss(0.002, 0.003)
        r = make_experiment(author, genome=gid, parents=[parent], topic=topic, arena=ARENA,
                            patch=make_patch(old, new), agent="mutate",
                            desc=edit_desc(f"EDIT_{n}", f"{topic} tweak number {n} on "
                                                             f"{parent.hex()[:8]}"),
                            result=result(rng, val), t=t)
        records.append((r, author is me))
        if val is not None:
            sources[r.id], vals[r.id] = new, r.val_bpb
            if ScoreRules().beats(r.val_bpb - vals[parent], sigma) and author is not liar:
                kept.append((r.val_bpb, r.id))
    # attestations: this node re-ran some claims; peers vouch for each other
    attest = []
    for r, _ in records[3:]:
        if r.author == me.public_key or r.status != "ok" or rng.random() > 0.3:
            continue
        t += 1000
        verdict = "refuted" if r.author == liar.public_key else "reproduced"
        attest.append(make_attestation(me, genome=gid, target=r.id, arena=ARENA,
                                       verdict=verdict, result=result(rng, r.val_bpb), t=t))
        for peer in rng.sample(authors[1:-1], 2):
            if peer.public_key != r.author:
                attest.append(make_attestation(peer, genome=gid, target=r.id, arena=ARENA,
                                               verdict="reproduced",
                                               result=result(rng, r.val_bpb), t=t))
    announces = [make_announce(a, genome=gid, topics=[rng.choice(TOPICS)], arena=ARENA,
                               working_on="", t=t) for a in authors[1:]]
    with Store.open(home, root_id=root) as store:
        for i in range(0, len(records), 500):
            for local in (True, False):
                store.insert_many([r for r, mine in records[i:i + 500] if mine == local],
                                  local=local)
        store.insert_many(attest)
        store.insert_many(announces)
        store.set_meta("node.arena", ARENA)
        for a in authors[1:]:
            store.upsert_peer(a.peer_id, ["/ip4/127.0.0.1/tcp/4011"], t)
        count = store.count()
    return {"experiments": len(records), "attestations": len(attest), "records": count,
            "authors": len(authors)}


def http_get(url: str) -> tuple[float, float, int]:
    """(wall ms, CPU ms of this process: the server's threads and the client, size)."""
    start, cpu = time.perf_counter(), time.process_time()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
    return ((time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000,
            len(body))


def touch_store(home: Path) -> None:
    """What a running node does all the time: commit a record."""
    with Store.open(home, root_id=genome_root_id()) as store:
        store.upsert_peer("bench-touch", [], int(time.time() * 1000))


# -- chromedriver's W3C API, with urllib -------------------------------------------


class Browser:
    def __init__(self, driver: str, chromium: str, profile: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([driver, f"--port={self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                self._call("GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={profile}"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())["value"]

    def go(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def js(self, script: str):
        return self._call("POST", f"/session/{self.session}/execute/sync",
                          {"script": script, "args": []})

    def close(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def load_page(browser: "Browser", url: str) -> tuple[float, float, int]:
    """Navigate and wait for the first complete drawing: (first ms, drawing ms, points)."""
    browser.go(url)
    deadline = time.time() + 60
    while browser.js("return document.body.dataset.ready || ''") != "1":
        if time.time() > deadline:
            raise RuntimeError("the page did not finish drawing in 60 s")
        time.sleep(0.02)
    return (float(browser.js("return document.body.dataset.firstRenderMs")),
            float(browser.js("return document.body.dataset.renderMs")),
            browser.js("return document.querySelectorAll('#chart .pt').length"))


def measure_page(url: str, changed, loads: int = 3) -> dict:
    """Page loads right after the store changed (`changed()`: the server scores the arena
    again) and with the server's answers cached; then chart redraws."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        return {"skipped": "chromium and chromedriver are not installed"}
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(driver, chromium, Path(profile))
        try:
            cold, warm = [], []
            for _ in range(loads):
                changed()
                cold.append(load_page(browser, url))
            for _ in range(loads):
                warm.append(load_page(browser, url))
            toggles = {}
            for name, selector in (("colour by author", "[data-colour=author]"),
                                   ("x axis over time", "[data-x=t]"),
                                   ("colour by status", "[data-colour=status]")):
                toggles[name] = browser.js(
                    "const t = performance.now();"
                    f"document.querySelector('{selector}').click();"
                    "document.getElementById('chart').getBBox();"
                    "document.body.getBoundingClientRect();"
                    "return performance.now() - t;")
            nodes = browser.js("return document.querySelectorAll('#lineage .node').length")
        finally:
            browser.close()
    return {"cold": cold, "warm": warm, "points": warm[-1][2], "toggles": toggles,
            "tree_nodes": nodes}


def fmt_ms(wall: float, cpu: float | None = None) -> str:
    return f"{wall:,.1f} ms" + (f" (CPU {cpu:,.1f} ms)" if cpu is not None else "")


def run(experiments: int) -> tuple[list[list[str]], dict, dict]:
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        start = time.perf_counter()
        built = build_store(home, experiments)
        print(f"built {built} in {time.perf_counter() - start:.1f} s", flush=True)

        # the view itself, in process
        root = genome_root_id()
        with Store.open(home, root_id=root) as store:
            lineage = Lineage(store, base_train_source(), root)
            trust = TrustPolicy(store, NodeIdentity.load_or_create(home).public_key)
            board = Scoreboard(store, lineage, root, ARENA, ScoreRules(), trust.is_verified)
            t0, c0 = time.perf_counter(), time.process_time()
            view = read_arena(board, trust)
            view_ms = ((time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000)
            t0, c0 = time.perf_counter(), time.process_time()
            plot_progress(view, Path(tmp) / "progress.png")
            plot_ms = ((time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000)
        counts = view.counts()

        with start_dashboard(home, port=0) as dashboard:
            base = dashboard.url.rstrip("/")
            routes = ["/api/experiments", "/api/lineage", "/api/peers", "/api/status",
                      "/best.patch"]
            cold = {r: http_get(base + r) for r in routes}   # the first request computes
            warm = {r: [http_get(base + r) for _ in range(5)] for r in routes}
            changed = []
            for _ in range(3):
                touch_store(home)
                changed.append(http_get(base + "/api/experiments"))
            for r in routes:
                wall, cpu, size = cold[r]
                rows.append([f"GET {r}", fmt_ms(wall, cpu),
                             fmt_ms(statistics.median(w[0] for w in warm[r]),
                                    statistics.median(w[1] for w in warm[r])),
                             f"{size / 1024:,.0f} KiB"])
            rows.append(["GET /api/experiments after the node wrote a record (median of 3)",
                         fmt_ms(statistics.median(c[0] for c in changed),
                                statistics.median(c[1] for c in changed)), "", ""])
            rows.append(["scoring the arena in process (read_arena, cold)",
                         fmt_ms(*view_ms), "", ""])
            page = measure_page(dashboard.url, lambda: touch_store(home))
        rows.append(["`loopy plot` drawing (plot_progress, 1600x900 PNG)", fmt_ms(*plot_ms),
                     "", ""])
    return rows, page, dict(built, **counts)


def page_rows(page: dict) -> list[list[str]]:
    if "skipped" in page:
        return [["page in headless Chromium", page["skipped"], ""]]
    cold = statistics.median(c[0] for c in page["cold"])
    warm = statistics.median(w[0] for w in page["warm"])
    out = [["navigation to the complete first drawing, right after the store changed "
            "(the server scores the arena again), median of 3", fmt_ms(cold),
            f"goal < 1 s: {'met' if cold < GOAL_MS else 'MISSED'}; {page['points']:,} "
            f"points, {page['tree_nodes']} tree nodes"],
           ["the same with the server's answers cached (a reload, another tab), median of 3",
            fmt_ms(warm), f"goal < 1 s: {'met' if warm < GOAL_MS else 'MISSED'}"],
           ["drawing only (chart, lineage, tables: the browser's share), median of 6",
            fmt_ms(statistics.median(x[1] for x in page["cold"] + page["warm"])), ""]]
    for name, ms in page["toggles"].items():
        out.append([f"redraw: {name}", fmt_ms(ms), "chart only, layout included"])
    return out


def write_section(text: str, path: Path) -> None:
    start, end = f"<!-- {MARK} -->", f"<!-- /{MARK} -->"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}\n{end}"
    if start in current and end in current:
        before, rest = current.split(start, 1)
        after = rest.split(end, 1)[1]
        current = before + block + after
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(current)
    os.replace(tmp, path)


def report(rows, page, info) -> str:
    chromium = subprocess.run([shutil.which("chromium") or "chromium", "--version"],
                              capture_output=True, text=True).stdout.strip() \
        if shutil.which("chromium") else "no chromium"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "## Web dashboard (`bench/bench_dashboard.py`)", "",
        f"A node home with {info['experiments']:,} experiments in one arena "
        f"({info['kept']:,} kept, {info['discarded']:,} discarded, {info['crashed']:,} "
        f"crashed, {info['refuted']:,} refuted; {info['authors']} authors, "
        f"{info['attestations']:,} attestations, {info['records']:,} records in all), served "
        f"by the dashboard on 127.0.0.1. Measured {time.strftime('%Y-%m-%d')} on "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{chromium}; load average {load}.", "",
        "| route | first answer after a change | repeated (cached), median of 5 | size |",
        "|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in rows), "",
        "The page (headless Chromium through chromedriver, real time):", "",
        "| measurement | time | note |", "|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in page_rows(page)), "",
        "Wall is elapsed time; CPU is this process's CPU time (the server's threads and the "
        "HTTP client): they differ when other jobs compete for the cores. Answers are "
        "cached until the store changes (SQLite's `data_version`), so a page polling every "
        "2 s costs one cheap query while nothing happens, and ETags let the browser skip "
        "unchanged bodies. Run: `python bench/bench_dashboard.py`.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=5000)
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    rows, page, info = run(args.experiments)
    text = report(rows, page, info)
    print(text)
    if not args.no_write:
        write_section(text, args.out)
        print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

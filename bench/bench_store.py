"""Benchmark of the record store and lineage at swarm scale.

Builds a store of 100,000 signed records (by default): a 1,000-step lineage of real
train.py edits plus experiments and attestations spread over 4 arenas and 6 topics, by
20 authors, arriving in random order (so parents are often wanted before they arrive).
Then it measures:

- verified insert rate: decode_envelope (strict decode + signature check) + insert, in
  batches of 256 (one sync `get` answer, one transaction) and one record per transaction;
- best-per-arena queries (goal < 10 ms), heads, wanted;
- ancestry of the 1,000-deep lineage;
- rebuilding train.py at depth 1,000 from a cold cache (goal < 1 s);
- exporting that lineage (patch, git am series, results.tsv, log listing).

    python bench/bench_store.py                 # full run, writes docs/BENCHMARKS.md
    python bench/bench_store.py --records 20000 --no-write   # a quick look

Results replace only the section between `<!-- bench_store -->` markers.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from swarm.export import export_patch, export_series, export_tsv, log_lines  # noqa: E402
from swarm.identity import NodeIdentity  # noqa: E402
from swarm.lineage import Lineage  # noqa: E402
from swarm.patch import make_patch, split_lines  # noqa: E402
from swarm.records import decode_envelope, make_attestation, make_experiment  # noqa: E402
from swarm.store import Store  # noqa: E402
from swarm.trust import TrustPolicy  # noqa: E402

ARENAS = ["embedded/tokens:300000/cpu", "climbmix/time:300/nvidia-h100-80gb",
          "climbmix/time:300/nvidia-a100-40gb", "embedded/time:60/apple-m2"]
TOPICS = ["optimizer", "architecture", "schedule", "init", "efficiency", "general"]
BATCH = 256
START_MS = 1_760_000_000_000
MARK_BEGIN, MARK_END = "<!-- bench_store -->", "<!-- /bench_store -->"


def base_source() -> tuple[str, str, str]:
    """(train.py source, genome id, where it came from)."""
    try:
        from genome import base_train_source, genome_id
        return base_train_source(), genome_id(), "genome/train.py"
    except (ImportError, OSError):
        lines = [f"SETTING_{i} = {i}  # a hyperparameter\n" for i in range(430)]
        return "".join(lines), "0123456789abcdef", "synthetic 430-line program"


def edit_line(source: str, n: int, tag: str) -> str:
    lines = split_lines(source)
    k = n % len(lines)
    lines[k] = lines[k].rstrip("\n") + f"  # {tag}\n"
    return "".join(lines)


class Timing:
    """Median wall and CPU seconds of repeated calls. CPU time is this process's own:
    on a shared machine it shows the cost without waiting for other processes."""

    def __init__(self, fn, repeat: int = 1):
        walls, cpus = [], []
        for _ in range(repeat):
            w0, c0 = time.perf_counter(), time.process_time()
            self.result = fn()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        self.wall, self.cpu = statistics.median(walls), statistics.median(cpus)

    def ms(self, per: int = 1) -> tuple[str, str]:
        return f"{self.wall / per * 1000:,.3f} ms", f"{self.cpu / per * 1000:,.3f} ms"

    def rate(self, n: int) -> tuple[str, str]:
        return f"{n / self.wall:,.0f} /s", f"{n / max(self.cpu, 1e-9):,.0f} /s"


def build_records(n_records: int, depth: int, base: str, genome: str, rng: random.Random):
    root = hashlib.sha256(base.encode()).digest()
    authors = [NodeIdentity(hashlib.sha256(b"author %d" % i).digest()) for i in range(20)]
    t = iter(range(START_MS, START_MS + 10 ** 12))
    envelopes = []
    # the lineage: `depth` real edits of train.py, each on its parent
    chain, src, parent = [], base, root
    for i in range(depth):
        new = edit_line(src, i * 13, f"step {i}")
        rec = make_experiment(authors[i % 20], genome=genome, parents=[parent],
                              topic=TOPICS[i % 6], arena=ARENAS[0], patch=make_patch(src, new),
                              desc=f"lineage step {i}", agent="mutate",
                              result={"status": "ok", "val_bpb": 1.2 - i * 1e-5,
                                      "peak_mem_mb": 900.0}, t=next(t))
        chain.append(rec)
        envelopes.append(rec.envelope)
        src, parent = new, rec.id
    # everything else: edits of the genome with realistic patch sizes, random parents
    patches = [make_patch(base, edit_line(base, rng.randrange(10 ** 6), f"idea {k}"))
               for k in range(64)]
    ids = [r.id for r in chain]
    n_attest = n_records // 25
    for k in range(n_records - depth - n_attest):
        ok = rng.random() < 0.8
        result = ({"status": "ok", "val_bpb": rng.uniform(0.9, 1.6), "train_s": 300.0,
                   "total_s": 330.0, "tokens": 10 ** 8, "steps": 900, "params": 5 * 10 ** 7,
                   "peak_mem_mb": 40_000.0} if ok else {"status": "crash", "reason": "OOM"})
        rec = make_experiment(rng.choice(authors), genome=genome,
                              parents=[rng.choice(ids) if ids and rng.random() < 0.9 else root],
                              topic=rng.choice(TOPICS), arena=rng.choice(ARENAS),
                              patch=rng.choice(patches), desc=f"experiment {k}",
                              agent="mutate", result=result, t=next(t))
        ids.append(rec.id)
        envelopes.append(rec.envelope)
    for k in range(n_attest):
        verdict = "reproduced" if rng.random() < 0.7 else "refuted"
        result = {"status": "ok", "val_bpb": rng.uniform(0.9, 1.6)}
        rec = make_attestation(rng.choice(authors), genome=genome, target=rng.choice(ids),
                               arena=rng.choice(ARENAS), verdict=verdict, result=result,
                               t=next(t))
        envelopes.append(rec.envelope)
    return root, chain, envelopes


def run(n_records: int, depth: int, workdir: Path) -> list[tuple[str, str, str, str]]:
    """Rows of (measurement, wall, cpu, note)."""
    rng = random.Random(1)
    base, genome, origin = base_source()
    print(f"generating {n_records:,} signed records ({origin}, {len(base):,} bytes)...",
          flush=True)
    t0 = time.perf_counter()
    root, chain, envelopes = build_records(n_records, depth, base, genome, rng)
    print(f"  {time.perf_counter() - t0:.1f} s", flush=True)
    rng.shuffle(envelopes)  # gossip and sync deliver in any order
    now = START_MS + 10 ** 9
    rows: list[tuple[str, str, str, str]] = []

    def goal(ok: bool, text: str) -> str:
        return f"goal {text}: {'met' if ok else 'MISSED'}"

    # --- verified inserts, one record per transaction (each commit is an fsync)
    single = 1000
    with Store.open(workdir / "single.sqlite", root_id=root) as store:
        def one_by_one():
            for env in envelopes[:single]:
                store.insert(decode_envelope(env, genome=genome, now_ms=now))
        timing = Timing(one_by_one)
    rows.append(("verified insert, 1 record per transaction (an fsync each)",
                 *timing.rate(single), "bound by the disk's fsync latency"))

    # --- decode + verify alone
    sample = envelopes[:20000]
    timing = Timing(lambda: [decode_envelope(e, genome=genome, now_ms=now) for e in sample])
    rows.append(("decode + verify only (strict msgpack, schema, canonical form, ed25519)",
                 *timing.rate(len(sample)), ""))

    # --- verified inserts in batches: the whole store
    store = Store.open(workdir / "store.sqlite", root_id=root)

    def batched():
        for i in range(0, len(envelopes), BATCH):
            store.insert_many([decode_envelope(e, genome=genome, now_ms=now)
                               for e in envelopes[i:i + BATCH]])
    timing = Timing(batched)
    n = len(envelopes)
    rows.append((f"verified insert (decode + verify + insert), batches of {BATCH}, "
                 f"{n:,} records", *timing.rate(n),
                 goal(n / timing.cpu >= 2000, ">= 2,000/s per core (CPU)") + "; "
                 + goal(n / timing.wall >= 2000, ">= 2,000/s (wall)")))
    assert store.count() == n
    print(f"  store built: {store.count():,} records", flush=True)

    # --- queries
    timing = Timing(lambda: [store.best(a) for a in ARENAS], repeat=200)
    rows.append(("best(arena)", *timing.ms(len(ARENAS)),
                 goal(timing.wall / len(ARENAS) < 0.01, "< 10 ms")))
    timing = Timing(lambda: [store.best(a, topic=t) for a in ARENAS for t in TOPICS], 50)
    rows.append(("best(arena, topic)", *timing.ms(len(ARENAS) * len(TOPICS)), ""))
    timing = Timing(lambda: [store.best(a, verified_only=True) for a in ARENAS], 50)
    rows.append(("best(arena, verified_only=True): local or reproduced by another peer",
                 *timing.ms(len(ARENAS)), ""))
    verified = {r.id for r in chain[::10]}
    timing = Timing(lambda: [store.best(a, verified_ids=verified) for a in ARENAS], 20)
    rows.append((f"best(arena, verified_ids=<set of {len(verified)}>), scans to the first hit",
                 *timing.ms(len(ARENAS)), ""))
    timing = Timing(lambda: store.heads(limit=256), 20)
    rows.append(("heads(limit=256)", *timing.ms(), ""))
    timing = Timing(lambda: store.heads(arena=ARENAS[1], limit=256), 20)
    rows.append(("heads(arena, limit=256)", *timing.ms(), ""))
    head = chain[-1].id
    timing = Timing(lambda: store.ancestry(head), 5)
    assert len(timing.result) == depth
    rows.append((f"ancestry() of the {depth:,}-deep lineage", *timing.ms(), ""))

    # --- rebuilding train.py
    want = base
    for i in range(depth):
        want = edit_line(want, i * 13, f"step {i}")
    timing = Timing(lambda: Lineage(store, base, root).source_of(head), 5)
    assert timing.result == want
    rows.append((f"rebuild train.py at depth {depth:,}, cold cache", *timing.ms(),
                 goal(timing.wall < 1, "< 1 s")))
    lineage = Lineage(store, base, root)
    lineage.source_of(head)
    timing = Timing(lambda: lineage.source_of(head), 20)
    rows.append(("rebuild again, warm cache", *timing.ms(), ""))

    # --- exports of that lineage, each from a cold cache, verifiers as a node counts them
    trust = TrustPolicy(store, NodeIdentity(b"\0" * 32).public_key)

    def verified_by(record_id):
        return trust.verified_by(store.get(record_id))
    for name, fn in [("export_patch", export_patch),
                     ("export_series (git am mbox)",
                      functools.partial(export_series, verified_by=verified_by)),
                     ("export_tsv (with attempts)", export_tsv),
                     ("log_lines", functools.partial(log_lines, verified_by=verified_by))]:
        timing = Timing(lambda: fn(Lineage(store, base, root), head), 3)
        out = timing.result
        size = len(out) if isinstance(out, str) else sum(len(x) + 1 for x in out)
        rows.append((f"{name} of the {depth:,}-step lineage, cold cache", *timing.ms(),
                     f"{size / 1024:,.0f} KiB of output"))
    store.close()
    size = sum(p.stat().st_size for p in workdir.glob("store.sqlite*"))
    rows.append(("store size on disk", f"{size / 2 ** 20:,.0f} MiB", "",
                 f"{size / n:,.0f} bytes/record (body and envelope kept)"))
    return rows


def machine() -> str:
    from benchdoc import cpu_name
    cpu = cpu_name()
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}")


def write_section(path: Path, rows, n_records: int, depth: int, load: str) -> None:
    table = ["| measurement | wall | CPU | note |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    section = "\n".join([
        MARK_BEGIN,
        "## Store and lineage (`bench/bench_store.py`)",
        "",
        f"{n_records:,} signed records (a {depth:,}-step lineage of real train.py edits, "
        f"plus experiments and attestations over {len(ARENAS)} arenas and {len(TOPICS)} "
        f"topics by 20 authors, inserted in random order), SQLite in WAL mode with "
        f"synchronous=FULL, one thread. Measured {time.strftime('%Y-%m-%d')} on "
        f"{machine()}; load average {load}.",
        "",
        *table,
        "",
        "Wall is elapsed time, CPU this process's own CPU time (rates: records per wall or "
        "CPU second). They differ when other processes compete for the cores, or, for "
        "single-record transactions, while each commit waits for its fsync. Batches are "
        "what a node commits per sync `get` answer (up to 256 records): one transaction, "
        "one fsync. Run: `python bench/bench_store.py`.",
        MARK_END,
    ])
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if MARK_BEGIN in text and MARK_END in text:
        before, rest = text.split(MARK_BEGIN, 1)
        after = rest.split(MARK_END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_store.") as tmp:
        rows = run(args.records, args.depth, Path(tmp))
    load = load_average()
    width = max(len(a) for a, _, _, _ in rows)
    for a, b, c, d in rows:
        print(f"{a:<{width}}  {b:>14}  {c:>14}  {d}")
    print(f"load average at the end (1/5/15 min): {load}")
    if not args.no_write:
        write_section(REPO / "docs" / "BENCHMARKS.md", rows, args.records, args.depth, load)
        print("wrote docs/BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

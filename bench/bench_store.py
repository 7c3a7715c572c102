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


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """(median seconds, last result) of `repeat` calls."""
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


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


def run(n_records: int, depth: int, workdir: Path) -> list[tuple[str, str, str]]:
    rng = random.Random(1)
    base, genome, origin = base_source()
    print(f"generating {n_records} signed records ({origin}, {len(base)} bytes)...",
          flush=True)
    t0 = time.perf_counter()
    root, chain, envelopes = build_records(n_records, depth, base, genome, rng)
    print(f"  {time.perf_counter() - t0:.1f} s", flush=True)
    rng.shuffle(envelopes)  # gossip and sync deliver in any order
    now = START_MS + 10 ** 9
    rows: list[tuple[str, str, str]] = []

    # --- verified inserts, one record per transaction (each commit is an fsync)
    single = 1000
    with Store.open(workdir / "single.sqlite", root_id=root) as store:
        def one_by_one():
            for env in envelopes[:single]:
                store.insert(decode_envelope(env, genome=genome, now_ms=now))
        secs, _ = timed(one_by_one)
    rows.append(("verified insert, 1 record per transaction (fsync each)",
                 f"{single / secs:,.0f} records/s", ""))

    # --- decode + verify alone
    sample = envelopes[:20000]
    secs, _ = timed(lambda: [decode_envelope(e, genome=genome, now_ms=now) for e in sample])
    rows.append(("decode + verify only (strict msgpack, schema, ed25519)",
                 f"{len(sample) / secs:,.0f} records/s", ""))

    # --- verified inserts in batches: the whole store
    store = Store.open(workdir / "store.sqlite", root_id=root)

    def batched():
        for i in range(0, len(envelopes), BATCH):
            store.insert_many([decode_envelope(e, genome=genome, now_ms=now)
                               for e in envelopes[i:i + BATCH]])
    secs, _ = timed(batched)
    rate = len(envelopes) / secs
    rows.append((f"verified insert, batches of {BATCH} ({len(envelopes):,} records)",
                 f"{rate:,.0f} records/s", f">= 2,000/s: {'met' if rate >= 2000 else 'MISSED'}"))
    assert store.count() == len(envelopes)
    print(f"  store built: {store.count():,} records", flush=True)

    # --- queries
    def best_all():
        return [store.best(a) for a in ARENAS]
    secs, _ = timed(best_all, repeat=200)
    per = secs / len(ARENAS) * 1000
    rows.append(("best(arena)", f"{per:.3f} ms", f"< 10 ms: {'met' if per < 10 else 'MISSED'}"))
    secs, _ = timed(lambda: [store.best(a, topic=t) for a in ARENAS for t in TOPICS], 50)
    rows.append(("best(arena, topic)", f"{secs / 24 * 1000:.3f} ms", ""))
    secs, _ = timed(lambda: [store.best(a, verified_only=True) for a in ARENAS], 50)
    rows.append(("best(arena, verified_only=True) (attestation rule in SQL)",
                 f"{secs / len(ARENAS) * 1000:.3f} ms", ""))
    verified = {r.id for r in chain[::10]}
    secs, _ = timed(lambda: [store.best(a, verified_ids=verified) for a in ARENAS], 20)
    rows.append(("best(arena, verified_ids=<set of 100>) (scans until a hit)",
                 f"{secs / len(ARENAS) * 1000:.3f} ms", ""))
    secs, heads = timed(lambda: store.heads(limit=256), 20)
    rows.append(("heads(limit=256)", f"{secs * 1000:.2f} ms", ""))
    secs, _ = timed(store.wanted, 20)
    rows.append(("wanted()", f"{secs * 1000:.2f} ms", ""))
    head = chain[-1].id
    secs, got = timed(lambda: store.ancestry(head), 5)
    assert len(got) == depth
    rows.append((f"ancestry() of the {depth:,}-deep lineage", f"{secs * 1000:.1f} ms", ""))

    # --- rebuilding train.py
    want = base
    for i in range(depth):
        want = edit_line(want, i * 13, f"step {i}")
    secs, got = timed(lambda: Lineage(store, base, root).source_of(head), 5)
    assert got == want
    rows.append((f"rebuild train.py at depth {depth:,}, cold cache", f"{secs * 1000:.1f} ms",
                 f"< 1 s: {'met' if secs < 1 else 'MISSED'}"))
    lineage = Lineage(store, base, root)
    lineage.source_of(head)
    child = chain[-1].id
    secs, _ = timed(lambda: lineage.source_of(child), 20)
    rows.append(("rebuild again, warm cache", f"{secs * 1000:.3f} ms", ""))

    # --- exports of that lineage (each from a cold cache)
    for name, fn in [("export_patch", export_patch), ("export_series (git am mbox)",
                                                       export_series),
                     ("export_tsv (with attempts)", export_tsv), ("log_lines", log_lines)]:
        secs, out = timed(lambda: fn(Lineage(store, base, root), head), 3)
        size = len(out) if isinstance(out, str) else sum(len(x) for x in out)
        rows.append((f"{name} of the {depth:,}-step lineage, cold",
                     f"{secs * 1000:.0f} ms", f"{size / 1024:,.0f} KiB"))
    store.close()
    db = workdir / "store.sqlite"
    size = db.stat().st_size + sum(p.stat().st_size for p in workdir.glob("store.sqlite-*"))
    rows.append(("store size on disk", f"{size / 2 ** 20:,.0f} MiB",
                 f"{size / len(envelopes):,.0f} bytes/record"))
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}")


def write_section(path: Path, rows, n_records: int, depth: int) -> None:
    table = ["| measurement | result | note |", "|---|---|---|"]
    table += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    section = "\n".join([
        MARK_BEGIN,
        "## Store and lineage (`bench/bench_store.py`)",
        "",
        f"{n_records:,} signed records (a {depth:,}-step lineage of real train.py edits, "
        f"experiments and attestations over {len(ARENAS)} arenas and {len(TOPICS)} topics "
        f"by 20 authors, inserted in random order), SQLite WAL with synchronous=FULL, "
        f"single thread. Measured {time.strftime('%Y-%m-%d')} on {machine()}.",
        "",
        *table,
        "",
        "Batches are what a node commits per sync `get` answer (up to 256 records): one "
        "transaction, so one fsync. One record per transaction is bound by the disk's "
        "fsync latency, not by CPU. Run: `python bench/bench_store.py`.",
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_store.") as tmp:
        rows = run(args.records, args.depth, Path(tmp))
    width = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:>18}  {c}")
    if not args.no_write:
        write_section(REPO / "docs" / "BENCHMARKS.md", rows, args.records, args.depth)
        print("wrote docs/BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

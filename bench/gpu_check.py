"""GPU check: the CUDA profile on simulated card sizes, through the real harness. Run it once
on a machine with a CUDA GPU (a device session); it refuses to run without one.

What it measures (results as markdown tables on stdout, raw rows as JSON lines in --out):
1. sizes: the base genome trained for a time budget at each card size. Sizes below the
   card are simulated with torch.cuda.set_per_process_memory_fraction, set by a one-line
   edit at the start of train.py's main(), so the genome's cuda_plan sees the smaller card
   and the allocator enforces it. Per size: the micro-batch chosen, MFU, peak memory (the
   training child's max_memory_allocated, and the whole card's use while training and while
   evaluating), tokens/s and val_bpb.
2. tokens: one token budget at two sizes (different micro-batches, the same maths) and
   once more at the first size: the score difference across sizes against the
   run-to-run difference (the arena's noise). Token-budget arenas on CUDA are shared by
   every card of one precision (`.../tokens:N/cuda`), which this is the evidence for.
3. With every run, the time outside training by phase: data preparation, the training
   child's start-up (interpreter, imports), CUDA set-up + model + torch.compile, the wait
   for the first batch, after the budget (saving), export child, evaluation child.

The device machine has no network: the default dataset is the embedded corpus. Device
time is short, so split the work over calls that each fit the per-command limit, with the
same --out (runs already in it are skipped):

    python bench/gpu_check.py --part sizes --sizes 8,16,24,full --budget 30s --out gpu.jsonl
    python bench/gpu_check.py --part tokens --token-sizes 8,full --tokens 10Mtok --out gpu.jsonl
    python bench/gpu_check.py --report --out gpu.jsonl       # the tables again, no GPU work

Each run costs its budget plus about a minute outside training (compile, evaluation).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GiB = 2**30
DEFAULT_SIZES = "8,12,16,24,40,80,full"
# The edit that simulates a smaller card, and the clock lines that time the phases: right
# after this line of train.py's main() (the first that knows the device).
ANCHOR = "    device = torch.device(run.device)\n"
DATA_ANCHOR = "    batches = make_dataloader("


def simulated_source(source: str, size_gb: float | None) -> str:
    """train.py with clock lines and, for a size, the memory fraction of a card that size."""
    if source.count(ANCHOR) != 1 or source.count(DATA_ANCHOR) != 1:
        raise SystemExit("genome/train.py changed: gpu_check's anchors no longer match")
    insert = ANCHOR + '    print(f"gpu_check_main: {time.time():.3f}", flush=True)\n'
    if size_gb is not None:
        insert += ("    torch.cuda.set_per_process_memory_fraction(min(1.0, "
                   f"{size_gb * GiB} / torch.cuda.get_device_properties(device).total_memory))"
                   f"  # gpu_check: a {size_gb:g} GB card\n")
    clock = '    print(f"gpu_check_compiled: {time.time():.3f}", flush=True)\n'
    return source.replace(ANCHOR, insert).replace(DATA_ANCHOR, clock + DATA_ANCHOR)


def parse_sizes(text: str) -> list[float | None]:
    """'8,12,full' -> [8.0, 12.0, None] (None: the whole card)."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "full":
            out.append(None)
        else:
            try:
                value = float(part)
            except ValueError:
                raise SystemExit(f"size {part!r} is not a number of GB or 'full'") from None
            if not 1 <= value <= 4096:
                raise SystemExit(f"size {part} GB is outside 1..4096")
            out.append(value)
    return out


def size_label(size_gb: float | None) -> str:
    return "full" if size_gb is None else f"{size_gb:g} GB"


class CardMonitor:
    """The whole card's memory in use (all processes) above idle, polled: the peak while the
    training child runs (its compile warm-up included) and while the evaluator runs."""

    def __init__(self, torch):
        self.torch, self.phase, self.peaks = torch, "train", {}
        self.base = self.used()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def used(self) -> int:
        free, total = self.torch.cuda.mem_get_info()
        return total - free

    def loop(self):
        while not self.stop.wait(0.2):
            used = self.used() - self.base
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), used)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(2)


class Progress:
    """The harness's progress hooks: the evaluation stage switches the monitor's phase."""

    def __init__(self, monitor: CardMonitor):
        self.monitor = monitor

    def __call__(self, fraction, loss):
        pass

    def stage(self, name, done, total):
        if name == "evaluate":
            self.monitor.phase = "eval"


def train_log_values(home: Path, run_id: str | None) -> dict:
    """`key: value` lines and the micro-batch line of the training child's log."""
    if not run_id:
        return {}
    try:
        text = (home / "runs" / run_id / "train.log").read_text(errors="replace")
    except OSError:
        return {}
    values = dict(re.findall(r"^(\w+):\s+(\S+)\s*$", text, re.M))
    plan = re.search(r"^micro-batch (\d+) x \d+ tokens, (\d+) per step, (\w+), (\w+)", text, re.M)
    if plan:
        values.update(micro_batch=plan.group(1), grad_accum=plan.group(2),
                      precision=plan.group(3), compiled=plan.group(4))
    fail = re.search(r"^FAIL: .*$", text, re.M)
    if fail:
        values["fail"] = fail.group(0)
    return values


def one_run(kind: str, size_gb, budget: str, seed: int, repeat: int, args, torch) -> dict:
    from experiments.run.harness import run_experiment
    from genome import base_train_source

    home = Path(args.home)
    source = simulated_source(base_train_source(), size_gb)
    with CardMonitor(torch) as monitor:
        t0 = time.time()
        result = run_experiment(source, home=home, dataset=args.dataset, budget=budget,
                                device="cuda", seed=seed, progress=Progress(monitor))
        monitor.phase = "done"
    values = train_log_values(home, result.run_id)
    t = result.timings
    spawn = t0 + t.get("prepare", 0.0)

    def clock(key):
        try:
            return float(values[key])
        except (KeyError, ValueError):
            return None

    main_t, compiled_t = clock("gpu_check_main"), clock("gpu_check_compiled")
    row = {"kind": kind, "size": size_label(size_gb), "budget": budget, "seed": seed,
           "repeat": repeat,
           "status": result.status, "reason": result.reason or values.get("fail", ""),
           "arena": result.arena, "val_bpb": result.val_bpb, "train_s": result.train_s,
           "tokens": result.tokens, "steps": result.steps, "total_s": result.total_s,
           "peak_child_gb": (result.peak_mem_mb or 0) / 1024,
           "card_train_gb": monitor.peaks.get("train", 0) / GiB,
           "card_eval_gb": monitor.peaks.get("eval", 0) / GiB,
           "mfu": values.get("mfu_percent"), "micro_batch": values.get("micro_batch"),
           "grad_accum": values.get("grad_accum"), "precision": values.get("precision"),
           "compiled": values.get("compiled"), "prepare_s": t.get("prepare", 0.0),
           "export_s": t.get("export", 0.0), "eval_s": t.get("eval", 0.0),
           "child_s": t.get("train", 0.0)}
    if main_t and compiled_t:  # the child's clock lines split its time outside the budget
        row.update(startup_s=main_t - spawn, setup_compile_s=compiled_t - main_t,
                   after_budget_s=max(0.0, t.get("train", 0.0) - (compiled_t - spawn)
                                      - (result.train_s or 0.0)))
    print(f"  {kind} {row['size']:>8} seed {seed}: {result.status} "
          f"bpb {result.val_bpb if result.val_bpb is not None else float('nan'):.4f} "
          f"micro-batch {row['micro_batch']} x{row['grad_accum']} mfu {row['mfu']} "
          f"peak {row['peak_child_gb']:.1f} GB {row['reason'][:120]}", flush=True)
    return row


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fmt(value, spec=".2f", missing="-"):
    if value is None or value == "":
        return missing
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def report(rows: list[dict], device_name: str) -> str:
    lines = [f"GPU check on {device_name}"]
    sizes = [r for r in rows if r["kind"] == "sizes"]
    if sizes:
        lines += ["", f"Card sizes (time budget {sizes[0]['budget']}; smaller cards simulated "
                      "with set_per_process_memory_fraction; card GB = the whole card's use "
                      "above idle, all processes):", "",
                  "| card | status | micro-batch x accum | precision | MFU % | tokens/s | "
                  "peak (child) GB | card while training GB | card while evaluating GB | "
                  "val_bpb |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sizes:
            tok_s = r["tokens"] / r["train_s"] if r.get("tokens") and r.get("train_s") else None
            lines.append(
                f"| {r['size']} | {r['status']} | {r['micro_batch'] or '-'} x "
                f"{r['grad_accum'] or '-'} | {r['precision'] or '-'} ({r['compiled'] or '-'}) | "
                f"{fmt(r['mfu'], '.1f')} | {fmt(tok_s, ',.0f')} | "
                f"{fmt(r['peak_child_gb'], '.1f')} | "
                f"{fmt(r['card_train_gb'], '.1f')} | {fmt(r['card_eval_gb'], '.1f')} | "
                f"{fmt(r['val_bpb'], '.4f')} |")
    tokens = [r for r in rows if r["kind"] == "tokens"]
    if tokens:
        lines += ["", f"Token budget {tokens[0]['budget']} (arena {tokens[0]['arena']}):", "",
                  "| card | seed (repeat) | micro-batch x accum | val_bpb | train s |",
                  "|---|---|---|---|---|"]
        for r in tokens:
            lines.append(f"| {r['size']} | {r['seed']} ({r.get('repeat', 0)}) | "
                         f"{r['micro_batch'] or '-'} x "
                         f"{r['grad_accum'] or '-'} | {fmt(r['val_bpb'], '.4f')} | "
                         f"{fmt(r['train_s'], '.1f')} |")
        ok = [r for r in tokens if r["val_bpb"] is not None]
        first = [r for r in ok if r["size"] == ok[0]["size"]] if ok else []
        other = [r for r in ok if r["size"] != ok[0]["size"]] if ok else []
        if len(first) >= 2 and other:  # first[1] is the repeat of first[0]
            noise = abs(first[0]["val_bpb"] - first[1]["val_bpb"])
            across = abs(first[0]["val_bpb"] - other[0]["val_bpb"])
            lines += ["", f"Across sizes: |delta| {across:.4f}; the same size twice: "
                          f"{noise:.4f} (run-to-run noise). Compare with the arena's sigma."]
    phases = [r for r in rows if r.get("startup_s") is not None]
    if phases:
        keys = [("prepare_s", "data preparation (cached)"),
                ("startup_s", "training child start-up (interpreter, imports)"),
                ("setup_compile_s", "CUDA set-up, model, torch.compile warm-up"),
                ("after_budget_s", "after the budget (saving, exit) + first-batch wait"),
                ("export_s", "export child"), ("eval_s", "evaluation child")]
        lines += ["", "Time outside training, per run (s):", "",
                  "| run | budget | training | " + " | ".join(label for _, label in keys)
                  + " | total outside | share outside |",
                  "|---|---|---|" + "---|" * len(keys) + "---|---|"]
        for r in phases:
            outside = r["total_s"] - (r["train_s"] or 0.0)
            lines.append(f"| {r['kind']} {r['size']} r{r.get('repeat', 0)} | {r['budget']} | "
                         f"{fmt(r['train_s'], '.1f')} | "
                         + " | ".join(fmt(r.get(k), '.1f') for k, _ in keys)
                         + f" | {outside:.1f} | {100 * outside / max(r['total_s'], 1e-9):.0f} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    class Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=Help)
    ap.add_argument("--part", choices=("sizes", "tokens", "all"), default="all")
    ap.add_argument("--sizes", default=DEFAULT_SIZES,
                    help="card sizes in GB for --part sizes; 'full' is the whole card")
    ap.add_argument("--budget", default="60s", help="time budget of each size run")
    ap.add_argument("--token-sizes", default="8,full",
                    help="the two sizes of the token-budget comparison (the first runs twice)")
    ap.add_argument("--tokens", default="20Mtok", help="token budget of the comparison")
    ap.add_argument("--dataset", default="embedded",
                    help="embedded (offline) or climbmix (needs the network or its shards)")
    ap.add_argument("--home", default=None, help="Loopy home for data and runs (None: temp)")
    ap.add_argument("--out", default="gpu_check.jsonl", help="JSON lines; runs in it are skipped")
    ap.add_argument("--report", action="store_true", help="print the tables of --out and stop")
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = load_rows(out)

    if args.report:
        print(report(rows, "(from " + str(out) + ")"))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU, and torch sees none (no GPU, or a CPU-only build "
              f"of torch {torch.__version__}). Nothing was run.", file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    device_name = f"{props.name}, {props.total_memory / GiB:.0f} GiB, torch {torch.__version__}"
    args.home = args.home or tempfile.mkdtemp(prefix="loopy-gpu-check-")
    print(f"{device_name}; home {args.home}; results to {out}", flush=True)
    done = {(r["kind"], r["size"], r["budget"], r["seed"], r.get("repeat", 0)) for r in rows}
    plan = []  # (kind, size, budget, seed, repeat)
    if args.part in ("sizes", "all"):
        plan += [("sizes", s, args.budget, 0, 0) for s in parse_sizes(args.sizes)]
    if args.part in ("tokens", "all"):
        sizes = parse_sizes(args.token_sizes)
        if len(sizes) != 2:
            raise SystemExit("--token-sizes takes two sizes, e.g. 8,full")
        plan += [("tokens", sizes[0], args.tokens, 0, 0), ("tokens", sizes[1], args.tokens, 0, 0),
                 ("tokens", sizes[0], args.tokens, 0, 1)]  # the first size again: the noise
    if any(size is not None for _, size, *_ in plan) and not hasattr(
            torch.cuda, "get_per_process_memory_fraction"):
        raise SystemExit(f"torch {torch.__version__} cannot report the per-process memory "
                         "fraction, so train.py would plan for the whole card: simulated sizes "
                         "need a newer torch (use --sizes full)")
    for kind, size, budget, seed, repeat in plan:
        if (kind, size_label(size), budget, seed, repeat) in done:
            continue
        if size is not None and size * GiB > props.total_memory:
            print(f"  skip {size_label(size)}: larger than this card", flush=True)
            continue
        row = one_run(kind, size, budget, seed, repeat, args, torch)
        rows.append(row)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
    print()
    print(report(rows, device_name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: the proposers on the synthetic trainer (experiments/simulation/synthetic.py), from the real
base genome: the history-aware `mutate` agent, Optuna's TPE and CMA-ES over the settings
(`optuna:tpe`, `optuna:cmaes`, experiments/agents/optuna_agent.py) and the `random` control.

For each landscape seed, each agent runs a single-lineage research loop of N experiments:
propose an edit of the current parent, run it (one synthetic run, noise sigma), keep it only if
it beats the parent's measured score by more than 2 sigma, and then it becomes the parent (the
best so far). As in ResearchLoop, every run uses the same seed (the arena's), so a child and
its parent share part of their noise (paired seeds); `--fresh-seeds` gives each run its own
seed instead. The history the agents get carries what ResearchLoop's does: each record's
parent, key, status, delta, its own id and its measured val_bpb. The curve is the parent's
*true* (noise-free) val_bpb after each experiment. A proposal the agent cannot make (nothing
left on this parent) is not an experiment; an agent that cannot propose any more keeps its
score for the rest of the run.

`--keep-rule` measures prototypes of loop-level rules (see `run_one`); only the default rule
(ResearchLoop's) writes to the docs.

Goal: every agent but random reaches random's final score (mean over seeds, after N
experiments) in at most N/2 experiments. The result, met or not, goes to docs/BENCHMARKS.md
between `<!-- bench_agents -->` and `<!-- /bench_agents -->`.

    python bench/bench_agents.py                     # 40 seeds x 200 experiments, 2 processes
    python bench/bench_agents.py --seeds 4 --experiments 100 --no-write
    python bench/bench_agents.py --agents mutate,random --seeds 8 --keep-rule remeasure:2 \
        --no-write
"""
from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from experiments.agents import Tried, load_brief, make_agent  # noqa: E402
from experiments.research.scoreboard import ScoreRules  # noqa: E402
from experiments.simulation.synthetic import SyntheticTrainer  # noqa: E402
from genome import base_train_source  # noqa: E402
from swarm.descriptions import is_stack  # noqa: E402

KEEP = ScoreRules()  # the research loop's keep rule (2 sigma)

BENCHMARKS = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- bench_agents -->", "<!-- /bench_agents -->"
AGENTS = ("mutate", "optuna:tpe", "optuna:cmaes", "random")
CONTROL = "random"
MAX_FAILURES_IN_A_ROW = 20
MARKS = {"mutate": "*", "optuna:tpe": "t", "optuna:cmaes": "c", "random": "o"}


def sid(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def run_one(job: tuple) -> dict:
    """One agent on one landscape: the running-best curve and some counts.

    `job` = (agent, landscape seed, experiments, sigma, paired, keep rule). The keep rule
    "single" is ResearchLoop's; the others are prototypes of loop-level rules, measured here
    only (every extra run counts as an experiment):
    - "remeasure:K": a kept child is run K more times with fresh seeds and its score as a
      parent becomes the mean of its K + 1 measurements;
    - "confirm": a child that clears the bar is run once more with a fresh seed, and it is
      kept only if the mean of its two measurements still clears the bar (that mean is then
      its score as a parent)."""
    agent_name, seed, n, sigma, paired = job[:5]
    rule = job[5] if len(job) > 5 else "single"
    repeats = int(rule.split(":")[1]) if rule.startswith("remeasure:") else 0
    base = base_train_source()
    trainer = SyntheticTrainer(seed, sigma=sigma, base_source=base)
    agent = make_agent(agent_name, base_source=base, profile="cpu")
    brief = load_brief("general")
    rng = random.Random(f"{agent_name}/{seed}")
    parent, pid = base, sid(base)

    def run_seed(i: int) -> int:
        """paired: every run uses the same seed, as ResearchLoop runs every experiment with
        the arena's seed; otherwise each run gets a fresh seed."""
        return 0 if paired else i

    def fresh_seed() -> int:
        return 100_000 + len(curve)

    history: list[Tried] = []
    curve: list[float] = []
    kept, crashes, combos, failures, stopped_at = 0, 0, 0, 0, None
    parent_score = trainer.run(base, run_seed=run_seed(0)).val_bpb
    true_deltas: list[float | None] = []      # child true bpb - parent true bpb, per proposal
    failures_in_a_row, propose_s, proposals = 0, 0.0, 0
    while len(curve) < n:
        t0 = time.perf_counter()
        proposal = agent.propose(parent, brief, history, parent_id=pid, rng=rng)
        propose_s += time.perf_counter() - t0
        proposals += 1
        if proposal.failure:
            failures += 1
            failures_in_a_row += 1
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW or proposal.exhausted:
                stopped_at = len(curve)
                curve += [curve[-1] if curve else trainer.true_bpb(base)] * (n - len(curve))
                break
            continue
        failures_in_a_row = 0
        combos += is_stack(proposal.edit_key or "")
        child_true = trainer.true_bpb(proposal.source)
        true_deltas.append(None if child_true is None else child_true - trainer.true_bpb(parent))
        result = trainer.run(proposal.source, run_seed=run_seed(len(curve) + 1))
        child_id = sid(proposal.source)
        if result.status != "ok":
            crashes += 1
            history.append(Tried(proposal.edit_key, proposal.desc, pid, "crash", None,
                                 record_id=child_id))
            curve.append(trainer.true_bpb(parent))
            continue
        score = result.val_bpb
        keep = KEEP.beats(score - parent_score, sigma)
        if keep and rule == "confirm" and len(curve) + 1 < n:
            curve.append(trainer.true_bpb(parent))          # the confirming run
            score = (score + trainer.run(proposal.source, run_seed=fresh_seed()).val_bpb) / 2
            keep = KEEP.beats(score - parent_score, sigma)
        history.append(Tried(proposal.edit_key, proposal.desc, pid,
                             "kept" if keep else "discarded", score - parent_score,
                             record_id=child_id, val_bpb=score))
        if keep:
            kept += 1
            parent, pid, parent_score = proposal.source, sid(proposal.source), score
        curve.append(trainer.true_bpb(parent))
        if keep and repeats:
            runs = [score]
            for _ in range(min(repeats, n - len(curve))):
                runs.append(trainer.run(parent, run_seed=fresh_seed()).val_bpb)
                curve.append(trainer.true_bpb(parent))
            parent_score = statistics.fmean(runs)
    return {"agent": agent_name, "seed": seed, "curve": curve, "kept": kept,
            "crashes": crashes, "combos": combos,
            "propose_ms": 1000 * propose_s / max(proposals, 1), "failures": failures,
            "stopped_at": stopped_at, "true_deltas": true_deltas, "sigma": sigma}


def proposal_quality(results: list[dict]) -> dict[str, float]:
    """How good the proposals themselves were, on the noise-free landscape."""
    deltas = [d for r in results for d in r["true_deltas"]]
    sigma = results[0]["sigma"]
    ok = [d for d in deltas if d is not None]
    n = max(len(deltas), 1)
    return {"crash": (len(deltas) - len(ok)) / n, "mean": statistics.fmean(ok) if ok else 0.0,
            "good": sum(d < -2 * sigma for d in ok) / n,
            "bad": sum(d > 2 * sigma for d in ok) / n}


def first_reach(curve: list[float], target: float) -> int | None:
    """1-based number of experiments after which the curve is at or below target."""
    for i, v in enumerate(curve):
        if v <= target + 1e-12:
            return i + 1
    return None


def ascii_plot(series: dict[str, list[float]], width: int = 64, height: int = 16) -> str:
    lo = min(min(s) for s in series.values())
    hi = max(max(s) for s in series.values())
    hi = hi if hi > lo else lo + 1e-6
    n = max(len(s) for s in series.values())
    grid = [[" "] * width for _ in range(height)]
    for name, s in series.items():
        mark = MARKS.get(name, name[:1])
        for col in range(width):
            i = min(len(s) - 1, round(col * (len(s) - 1) / (width - 1)))
            row = round((s[i] - lo) / (hi - lo) * (height - 1))
            cell = grid[row][col]
            grid[row][col] = "#" if cell not in (" ", mark) else mark
    lines = []
    for r, row in enumerate(grid):
        label = f"{lo + (hi - lo) * r / (height - 1):.4f}" if r in (0, height // 2,
                                                                 height - 1) else ""
        lines.append(f"{label:>8} |{''.join(row)}")
    lines.append(" " * 9 + "+" + "-" * width)
    ticks = " " * 10 + "0" + f"{n // 2:>{width // 2}}" + f"{n:>{width - width // 2 - 1}}"
    lines.append(ticks)
    legend = ", ".join(f"{MARKS.get(a, a[:1])} {a}" for a in series)
    lines.append(" " * 10 + f"experiments   ({legend}, # several; true val_bpb of the parent, "
                 "mean over seeds; top = best)")
    return "\n".join(lines)


def summarise(results: list[dict], n: int, sigma: float, seeds: int, wall_s: float,
              paired: bool = True, rule: str = "single") -> str:
    agents = [a for a in AGENTS if any(r["agent"] == a for r in results)]
    agents += sorted({r["agent"] for r in results} - set(agents))
    control = CONTROL if CONTROL in agents else agents[-1]
    others = [a for a in agents if a != control]
    curves = {a: [r["curve"] for r in results if r["agent"] == a] for a in agents}
    mean = {a: [statistics.fmean(c[i] for c in curves[a]) for i in range(n)] for a in agents}
    base = 1.9
    control_final = mean[control][-1]
    by_seed = {a: {r["seed"]: r for r in results if r["agent"] == a} for a in agents}
    checkpoints = sorted({c for c in (10, 25, 50, 100, 150, 200, n) if c <= n})
    rows = ["| experiments | " + " | ".join(str(c) for c in checkpoints) + " |",
            "|---|" + "---|" * len(checkpoints)]
    for a in agents:
        rows.append(f"| {a}: mean gain | " + " | ".join(
            f"{base - mean[a][c - 1]:.4f}" for c in checkpoints) + " |")

    def paired_row(a: str, b: str) -> str:
        cells = []
        common = sorted(set(by_seed[a]) & set(by_seed[b]))
        for c in checkpoints:
            d = [by_seed[b][s]["curve"][c - 1] - by_seed[a][s]["curve"][c - 1] for s in common]
            se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
            cells.append(f"{statistics.fmean(d):+.4f} ± {se:.4f}")
        return f"| {a} - {b} (paired, ± s.e.) | " + " | ".join(cells) + " |"

    for a in others:
        rows.append(paired_row(a, control))
    if "mutate" in others:
        for a in others:
            if a != "mutate":
                rows.append(paired_row(a, "mutate"))
    stats = {a: [r for r in results if r["agent"] == a] for a in agents}

    def avg(a, key):
        return statistics.fmean(r[key] for r in stats[a])

    goals = []
    for a in others:
        reach = first_reach(mean[a], control_final)
        per_seed = [first_reach(by_seed[a][s]["curve"], by_seed[control][s]["curve"][-1])
                    for s in sorted(set(by_seed[a]) & set(by_seed[control]))]
        reached = [p for p in per_seed if p is not None]
        met = reach is not None and reach <= n // 2
        goals.append(
            f"- {a}: **{'met' if met else 'not met'}** - its mean curve reaches {control}'s "
            f"final mean ({base - control_final:.4f} gain) after "
            f"{reach if reach is not None else 'more than ' + str(n)} experiments; per seed "
            f"it reached that seed's {control} final score in {len(reached)}/{len(per_seed)} "
            f"seeds" + (f", after a median of {statistics.median(reached):.0f} experiments"
                        if reached else "") + ".")
    quality = {a: proposal_quality(stats[a]) for a in agents}
    qrows = ["| agent | kept edits per run | crashes per run | stacks per run | "
             "failed proposals per run | runs that ran out of proposals | "
             "truly better by > 2 sigma | truly worse by > 2 sigma | crash | "
             "mean true delta | proposal time |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in agents:
        q = quality[a]
        stopped = [r["stopped_at"] for r in stats[a] if r["stopped_at"] is not None]
        qrows.append(
            f"| {a} | {avg(a, 'kept'):.1f} | {avg(a, 'crashes'):.1f} | "
            f"{avg(a, 'combos'):.1f} | {avg(a, 'failures'):.1f} | {len(stopped)}/"
            f"{len(stats[a])}" + (f" (median at {statistics.median(stopped):.0f})"
                                  if stopped else "") +
            f" | {100 * q['good']:.1f}% | {100 * q['bad']:.1f}% | {100 * q['crash']:.1f}% | "
            f"{q['mean']:+.4f} | {avg(a, 'propose_ms'):.0f} ms |")
    lines = [
        BEGIN,
        "## bench_agents: mutate, Optuna TPE, Optuna CMA-ES and random proposals "
        "(synthetic trainer)",
        "",
        f"`python bench/bench_agents.py` - {seeds} landscape seeds x {n} experiments per agent "
        f"from the real base genome (cpu profile), synthetic trainer with sigma = {sigma}; an "
        f"edit is kept when it beats the parent's measured score by > 2 sigma, and the parent "
        f"is the best so far; "
        + ("every run uses the arena's seed, as in ResearchLoop (paired seeds). " if paired
           else "every run has its own seed (`--fresh-seeds`). ")
        + (f"Keep rule: `{rule}` (a prototype, not ResearchLoop's). " if rule != "single"
           else "")
        + f"Scores are the parent's true (noise-free) val_bpb; the table "
        f"shows the mean gain over the base genome (val_bpb 1.9, higher is better) and the "
        f"paired difference per seed (positive: the first agent ahead). "
        f"Run on {time.strftime('%Y-%m-%d')}, {wall_s:.0f} s wall on this machine's CPUs.",
        "",
        *rows,
        "",
        f"Goal: reach {control}'s final mean score within {n // 2} experiments.",
        "",
        *goals,
        "",
        "Per run, and what the proposals were worth, measured on the noise-free landscape "
        "against their parent (the keep rule only sees one noisy measurement of each):",
        "",
        *qrows,
        "",
        "- How to read it: the curves show what the keep rule made of the proposals; the "
        "second table shows how good the proposals were. Each child is compared with one "
        "noisy measurement of a parent that was itself kept on a (often lucky) noisy "
        "measurement, against a 2 sigma bar: once the single edits left are each worth less "
        "than the bar, a lineage stalls unless several of them are run together. mutate "
        "models each setting's effect from every result (with an offset per parent for the "
        "luck of its measurement) and stacks edits whose gains it has measured, and where it "
        "has nothing left on a parent, Optuna's TPE proposes there (its default); the Optuna "
        "agents model settings -> val_bpb from every record (TPE: Parzen estimators of good "
        "and bad settings; CMA-ES: a Gaussian search distribution replayed generation by "
        "generation) and move the parent's settings that the draw moves most, up to 4 in one "
        "run; random tries single edits, each at most once per parent.",
        "- Caveat: the landscape is synthetic. Knobs have smooth optima and some knobs "
        "matter while most do not (see experiments/simulation/synthetic.py); on real training the "
        "agents' ranking is unmeasured.",
        "",
        "```",
        ascii_plot({a: mean[a] for a in agents}),
        "```",
        END,
    ]
    return "\n".join(lines)


def write_section(text: str, path: Path = BENCHMARKS) -> None:
    """Replace our section between the markers (or append it); nothing else is touched."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + text + tail
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=40, help="landscape seeds (default 40)")
    ap.add_argument("--experiments", type=int, default=200, help="experiments per run")
    ap.add_argument("--sigma", type=float, default=0.003, help="synthetic noise sigma")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--no-write", action="store_true", help="print only, leave the docs alone")
    ap.add_argument("--fresh-seeds", action="store_true",
                    help="give every run its own seed (ResearchLoop uses one seed for all)")
    ap.add_argument("--agents", default=",".join(AGENTS),
                    help="comma-separated agent specs (default: all four)")
    ap.add_argument("--keep-rule", default="single",
                    help="single (ResearchLoop's), remeasure:K or confirm (prototypes)")
    args = ap.parse_args(argv)
    if args.keep_rule != "single" and not (args.keep_rule == "confirm" or (
            args.keep_rule.startswith("remeasure:") and args.keep_rule[10:].isdigit())):
        ap.error("--keep-rule is single, confirm or remeasure:<K>")
    paired = not args.fresh_seeds
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    for a in agents:
        make_agent(a)     # a bad spec fails here, not in a worker
    jobs = [(a, s, args.experiments, args.sigma, paired, args.keep_rule)
            for s in range(args.seeds) for a in agents]
    t0 = time.time()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run_one, jobs))
    else:
        results = [run_one(j) for j in jobs]
    text = summarise(results, args.experiments, args.sigma, args.seeds, time.time() - t0,
                     paired, args.keep_rule)
    print(text)
    if not args.no_write and (args.keep_rule != "single" or not paired or
                              tuple(agents) != AGENTS):
        print("\nnot written: only ResearchLoop's setting (paired seeds, keep rule single) "
              "with all four agents goes to the docs")
    elif not args.no_write:
        write_section(text)
        print(f"\nwritten to {BENCHMARKS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

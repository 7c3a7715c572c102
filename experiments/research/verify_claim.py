"""Whether a re-run reproduces a claim: the one judgement the loop and `loopy verify` share.

A claim holds when our re-run of it, in our arena at the arena's seed, is ok and no worse
than the claimed score by more than the noise (`Scoreboard.reproduces`), and, when the
trainer scores held-out test windows, when its gain over its parent holds there too. Both
models are scored on the same test windows, drawn with our secret seed: a gain that exists
only on the public validation windows (learnt from them, or found by selection among many
tries) does not show there.

A re-run that crashes or times out (`MACHINE_FAILURES`) says nothing about the claim until
the machine shows it can still train: the loop runs a health check first, `loopy verify`
gives no verdict.

    test_seed = draw_test_seed(trainer)              # before the re-run, which uses it
    result = <re-run the claim's source with test_seed>
    judged = await judge_rerun(claim, result, board=board, sigma=sigma,
                               parent_scores=lambda: run_blocking(score_parent(...)))
    make_attestation(..., verdict=judged.verdict, result=judged.result)

`rerun_claim` is all of it for one claim outside the loop (`loopy verify`).
"""
from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Awaitable, Callable

from experiments.research.scoreboard import Scoreboard
from swarm.lineage import Lineage
from swarm.records import Record

MACHINE_FAILURES = ("crash", "timeout")  # statuses a broken machine gives any program

ParentScores = Callable[[], Awaitable["tuple[float, float] | None"]]
RunBlocking = Callable[[Callable[[threading.Event], object]], Awaitable]


@dataclass
class Judgement:
    """What a re-run says of a claim, and the attestation's result fields."""
    holds: bool
    reason: str | None     # the run's own reason, or why the claim does not hold
    result: dict           # the re-run's record result, with any held-out scores

    @property
    def verdict(self) -> str:
        return "reproduced" if self.holds else "refuted"


@dataclass
class Rerun:
    """One claim re-run by hand: the trainer's result, the arena's noise and, unless the
    run failed the way a broken machine fails, the judgement."""
    result: object
    sigma: float | None
    tolerance: float | None     # how much worse than the claim still reproduces it
    judgement: Judgement | None


def draw_test_seed(trainer) -> int | None:
    """A secret seed for held-out test windows, when the trainer scores them."""
    return secrets.randbits(63) if hasattr(trainer, "test_score") else None


def parent_source(claim: Record, lineage: Lineage, root_id: bytes) -> str:
    """train.py of the claim's (first) parent."""
    parent_id = claim.parents[0]
    return lineage.source_of(parent_id) if parent_id != root_id else lineage.base_source


def score_parent(trainer, source: str, *, seed: int, test_seed: int,
                 fallback: str | None = None
                 ) -> Callable[[threading.Event], "tuple[float, float] | None"]:
    """The blocking job that scores the claim's parent on the re-run's test windows:
    (val_bpb, test_bpb). Where the parent does not train to an ok result here, the
    `fallback` (the genome's own train.py) is scored instead: a parent that fails on
    purpose must not spare its child the held-out check, and a gain over the root must
    hold on test as much as one over the parent. None when neither trains."""
    def job(cancel):
        scores = trainer.test_score(source, seed=seed, test_seed=test_seed, cancel=cancel)
        if scores is None and fallback is not None and fallback != source:
            scores = trainer.test_score(fallback, seed=seed, test_seed=test_seed,
                                        cancel=cancel)
        return scores
    return job


def held_out_verdict(result, parent_val: float, parent_test: float, *, sigma: float,
                     noise_k: float) -> tuple[bool, str | None, dict]:
    """(holds, reason, result fields): does the claim's gain over its parent on the
    validation windows hold on the test windows, within the noise?"""
    val_gain = parent_val - result.val_bpb
    test_gain = parent_test - result.test_bpb
    fields = {"test_bpb": result.test_bpb, "test_parent_bpb": parent_test}
    if test_gain >= val_gain - noise_k * sigma:
        return True, result.reason, fields
    return False, (f"the gain does not hold on held-out test data: val gain "
                   f"{val_gain:+.4f}, test gain {test_gain:+.4f} (noise sigma "
                   f"{sigma:.4f})"), fields


async def judge_rerun(claim: Record, result, *, board: Scoreboard, sigma: float,
                      parent_scores: ParentScores) -> Judgement:
    """The verdict on `claim` from our re-run `result` (not a machine failure).

    `parent_scores()` scores the claim's parent on the re-run's test windows (see
    `score_parent`); it is awaited only when the re-run holds and has a test score."""
    holds = board.reproduces(result, claim.val_bpb, sigma)
    reason = result.reason
    fields = result.to_record_result()
    if holds and getattr(result, "test_bpb", None) is not None:
        scores = await parent_scores()
        if scores is not None:  # None: neither the parent nor the root trained here
            holds, reason, extra = held_out_verdict(result, *scores, sigma=sigma,
                                                    noise_k=board.rules.noise_k)
            fields.update(extra)
    if not holds and result.status == "ok":
        fields["reason"] = reason or "the re-run does not reproduce the claimed score"
    return Judgement(holds, reason, fields)


async def rerun_claim(claim: Record, *, trainer, lineage: Lineage, root_id: bytes,
                      board: Scoreboard, run_blocking: RunBlocking,
                      progress=None) -> Rerun:
    """Re-run `claim` on `trainer` at the board's seed and judge it.

    `run_blocking(fn)` awaits blocking `fn(cancel)` in a worker thread and sets `cancel`
    when cancelled (experiments.research.runs.run_cancellable)."""
    sigma = board.sigma()
    tolerance = board.rules.noise_k * sigma if sigma else None
    seed = board.rules.seed
    test_seed = draw_test_seed(trainer)
    extra = {"test_seed": test_seed} if test_seed is not None else {}
    source = lineage.source_of(claim.id)
    result = await run_blocking(lambda cancel: trainer.run(
        source, seed=seed, progress=progress, cancel=cancel, **extra))
    if result.status in MACHINE_FAILURES:
        return Rerun(result, sigma, tolerance, None)
    parent = parent_source(claim, lineage, root_id)
    judgement = await judge_rerun(
        claim, result, board=board, sigma=sigma or 0.0,
        parent_scores=lambda: run_blocking(score_parent(
            trainer, parent, seed=seed, test_seed=test_seed, fallback=lineage.base_source)))
    return Rerun(result, sigma, tolerance, judgement)

"""One training run as the research loop sees it: the trainer it calls, running that
trainer off trio's thread, and what a step came to.

The trainer blocks (it waits on child processes), so it runs in a worker thread; a
cancelled run sets the trainer's `cancel` event and waits, shielded, for the trainer
to stop its children before the cancellation goes on.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Protocol

import trio

from experiments.research.scoreboard import Candidate
from swarm.records import Record


class Trainer(Protocol):
    """Runs one train.py source in the node's arena; blocks; honours `cancel`."""

    arena: str
    label: str

    def run(self, source: str, *, seed: int, progress: Callable | None,
            cancel: threading.Event) -> "TrainerResult": ...


class TrainerResult(Protocol):
    status: str
    val_bpb: float | None
    reason: str

    def to_record_result(self) -> dict: ...


@dataclass
class StepOutcome:
    kind: str                         # baseline | experiment | verification | no-proposal
    record: Record | None = None
    parent: Candidate | None = None
    kept: bool = False
    delta: float | None = None
    reason: str = ""


async def run_cancellable(fn: Callable[[threading.Event], object], grace_s: float = 15.0):
    """Run blocking `fn(cancel)` in a thread; on trio cancellation set `cancel` and wait
    (shielded, up to `grace_s`) for `fn` to stop its child processes and return. A
    cancellation that lands before the thread starts `fn` means `fn` never runs."""
    cancel, finished = threading.Event(), threading.Event()
    lock = threading.Lock()
    state = {"started": False, "abandoned": False}

    def work():
        with lock:
            if state["abandoned"]:
                finished.set()
                return None
            state["started"] = True
        try:
            return fn(cancel)
        finally:
            finished.set()

    try:
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    except trio.Cancelled:
        cancel.set()
        with lock:
            if not state["started"]:
                state["abandoned"] = True
                finished.set()
        with trio.move_on_after(grace_s) as scope:
            scope.shield = True
            while not finished.is_set():
                await trio.sleep(0.05)
        raise

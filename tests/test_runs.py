"""run_cancellable: a blocking trainer off trio's thread, cancelled cleanly."""
import threading

import trio

from experiments.research.runs import run_cancellable


async def test_cancel_before_the_thread_starts_never_runs_the_trainer(autojump_clock):
    ran = []
    t0 = trio.current_time()
    with trio.CancelScope() as scope:
        scope.cancel()
        await run_cancellable(lambda cancel: ran.append(1), grace_s=1000.0)
    assert ran == []
    assert trio.current_time() - t0 < 1000.0  # no grace waited for a thread that never ran
    await trio.to_thread.run_sync(lambda: None)  # any late start of the worker is done
    assert ran == []


async def test_cancel_mid_run_sets_the_event_and_waits_for_the_trainer():
    started, stopped = threading.Event(), []

    def trainer(cancel: threading.Event):
        started.set()
        cancel.wait()
        stopped.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_cancellable, trainer)
        await trio.to_thread.run_sync(started.wait)
        nursery.cancel_scope.cancel()
    assert stopped == [True]  # the nursery closed only after the trainer returned


async def test_result_comes_back():
    assert await run_cancellable(lambda cancel: 42) == 42

"""Progress display for one experiment: a rich bar on a terminal, log lines otherwise.

The harness calls the object with `(fraction, loss)` from the training child's
`progress:` lines; data preparation calls `.stage(name, done, total)`.
"""
from __future__ import annotations

import sys
import time


class RunProgress:
    """Context manager; `live` draws a bar, `plain` prints a line every 10%, else silent."""

    def __init__(self, *, live: bool, plain: bool = True, stream=None):
        self.live = live
        self.plain = plain and not live
        self.stream = stream or sys.stderr
        self._progress = None
        self._task = None
        self._last_decile = -1
        self._stage = None

    def __enter__(self):
        if self.live:
            from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn)
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.percentage:>5.1f}%"), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task("training", total=1.0, info="")
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False

    def stage(self, name: str, done: int = 0, total: int = 0) -> None:
        """A preparation step (tokenizer, tokenising, downloading, evaluating)."""
        if self._progress is not None:
            frac = done / total if total else 0.0
            self._progress.update(self._task, description=name, completed=frac, info="")
        elif self.plain and name != self._stage:
            print(f"[{time.strftime('%H:%M:%S')}] {name}", file=self.stream, flush=True)
        self._stage = name

    def __call__(self, fraction: float, loss: float | None = None) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        info = f"loss {loss:.4f}" if loss is not None else ""
        if self._progress is not None:
            self._progress.update(self._task, description="training", completed=fraction, info=info)
        elif self.plain:
            decile = int(fraction * 10)
            if decile > self._last_decile:
                self._last_decile = decile
                print(f"[{time.strftime('%H:%M:%S')}] training {fraction:6.1%} {info}",
                      file=self.stream, flush=True)

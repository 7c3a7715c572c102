"""Training tokens for the untrusted training child, served and counted by the harness.

The child never sees train.bin. Its dataloader (genome/prepare.py's
make_dataloader, given `feed_fds` in the run config) writes a request for a
(B, T) batch to one pipe and reads the batch from another. The feed packs the
batches with the trusted prepare module's RowPacker, so that for a fixed seed
and a constant (B, T) the child gets exactly the batches the local loader
would give; and it is the feed, not the child, that counts what is served and
ends the budget:

- tokens: a batch is served only while the tokens served (B*T per batch) stay
  within the budget; after that every request is answered `end`;
- time: the clock starts when the first batch is served; a request after
  budget_value seconds is answered `end`.

The harness runs `serve()` in a thread (`start()`), polls `deadline()` and
`startup_deadline()` to kill a child that overstays, and records `tokens`,
`batches` and `train_s`. Whatever the child writes, serve() answers an error
and returns instead of raising, and it returns when the child exits or closes
its end, or on `stop()`.

The protocol constants (FEED_*) live in prepare.py, the one file both sides
share; this module imports no torch.
"""

from __future__ import annotations

import math
import os
import select
import threading
import time
from pathlib import Path

import numpy as np


class DataFeed:
    """Serves training batches to one child over two pipes; see the module doc."""

    POLL_S = 0.1             # how often a blocked serve() looks for stop()
    PARTIAL_REQUEST_S = 5.0  # a request whose first byte has arrived must be complete by then
    ERROR_REPLY_S = 1.0      # how long serve() tries to deliver an error reply

    def __init__(self, train_bin, *, seed: int, budget_kind: str, budget_value: float,
                 bos_id: int, prepare=None, max_batch_tokens: int = 1 << 22,
                 max_seq_len: int = 1 << 16, max_shapes: int = 4):
        if prepare is None:
            import genome.prepare as prepare
        if budget_kind not in ("time", "tokens"):
            raise ValueError(f"budget_kind must be time or tokens, not {budget_kind!r}")
        if (not isinstance(budget_value, (int, float)) or isinstance(budget_value, bool)
                or not math.isfinite(budget_value) or budget_value <= 0):
            raise ValueError(f"budget_value must be a positive number, not {budget_value!r}")
        self._p = prepare
        self.budget_kind, self.budget_value = budget_kind, budget_value
        self.seed = seed
        self.max_batch_tokens, self.max_seq_len, self.max_shapes = (
            max_batch_tokens, max_seq_len, max_shapes)
        self._tokens = np.memmap(Path(train_bin), dtype=prepare.TOKEN_DTYPE, mode="r")
        if len(self._tokens) == 0:
            raise ValueError(f"{train_bin} is empty")
        if int(self._tokens[0]) != bos_id:
            raise ValueError(f"{train_bin} starts with token {int(self._tokens[0])}, "
                             f"but BOS is {bos_id}")
        self._bos = bos_id
        # One scan of train.bin for document boundaries, shared by the packers.
        self._bounds = prepare.document_bounds(self._tokens, bos_id)
        self._packers: dict[int, object] = {}     # T -> RowPacker, created on first request
        self._spare: dict[int, np.ndarray] = {}   # T -> rows packed ahead, next in T's stream

        req_r, req_w = os.pipe()
        data_r, data_w = os.pipe()
        os.set_blocking(req_r, False)
        os.set_blocking(data_w, False)
        self._req_r, self._data_w = req_r, data_w
        self._child_ends: list[int] | None = [req_w, data_r]
        self._child_fds = (req_w, data_r)

        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._serving = self._server_closed = False
        self._thread: threading.Thread | None = None
        self.created = time.monotonic()
        self._child_started: float | None = None
        self._tokens_served = self._batches = 0
        self._first: float | None = None
        self._end: float | None = None
        self._closed: float | None = None  # when serving stopped (child gone, error, stop())
        self._error: str | None = None

    # --- wiring -------------------------------------------------------------------

    def child_fds(self) -> tuple[int, int]:
        """(request write fd, batch read fd): pass both to the child (pass_fds) and put
        them, in this order, in its run config as feed_fds."""
        return self._child_fds

    def close_child_ends(self) -> None:
        """Close this process's copies of the child's ends; call it once the child has
        started, so that the child's exit reads as end of file here."""
        with self._lock:
            ends, self._child_ends = self._child_ends, None
            if self._child_started is None:
                self._child_started = time.monotonic()
        for fd in ends or ():
            os.close(fd)

    def start(self) -> threading.Thread:
        """Run serve() in a daemon thread."""
        thread = threading.Thread(target=self.serve, name="loopy-data-feed", daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (within POLL_S) and close every pipe end this process holds.

        Idempotent; the child then reads end of file and its loader raises."""
        self._stop.set()
        with self._lock:
            idle = not self._serving
        if idle:
            self._close_server_ends()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.close_child_ends()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # --- what the harness reads -------------------------------------------------------

    @property
    def tokens(self) -> int:
        """Training tokens served: B*T summed over the batches served."""
        with self._lock:
            return self._tokens_served

    @property
    def batches(self) -> int:
        with self._lock:
            return self._batches

    @property
    def first_batch_time(self) -> float | None:
        """time.monotonic() when the first batch was served, or None."""
        with self._lock:
            return self._first

    @property
    def end_time(self) -> float | None:
        """time.monotonic() when `end` was first answered, or None."""
        with self._lock:
            return self._end

    @property
    def error(self) -> str | None:
        """Why serving stopped on a bad request, or None."""
        with self._lock:
            return self._error

    @property
    def train_s(self) -> float:
        """Seconds from the first batch served to `end`, else to when serving stopped
        (child gone, error, stop()), else to now; 0 before the first batch."""
        with self._lock:
            if self._first is None:
                return 0.0
            until = self._end if self._end is not None else self._closed
            return (until if until is not None else time.monotonic()) - self._first

    def measurements(self) -> dict:
        with self._lock:
            out = {"tokens": self._tokens_served, "batches": self._batches,
                   "first_batch_time": self._first, "end_time": self._end, "error": self._error}
        out["train_s"] = self.train_s
        return out

    def deadline(self, grace_s: float) -> float | None:
        """Monotonic time by which the child must have exited, or None while it has none.

        After `end`: end_time + grace_s. Under a time budget also, from the first batch
        on, first + budget + grace_s: a child that stops asking still has to stop."""
        with self._lock:
            limits = []
            if self._end is not None:
                limits.append(self._end + grace_s)
            if self.budget_kind == "time" and self._first is not None:
                limits.append(self._first + self.budget_value + grace_s)
            return min(limits) if limits else None

    def startup_deadline(self, limit_s: float) -> float | None:
        """Monotonic time by which the child must have been served its first batch
        (limit_s after close_child_ends(), or after construction), or None once it has."""
        with self._lock:
            if self._first is not None:
                return None
            started = self._child_started if self._child_started is not None else self.created
            return started + limit_s

    # --- serving ------------------------------------------------------------------

    def serve(self) -> None:
        """Answer the child's requests until it goes away, a request is bad, or stop().

        Never raises: a failure is recorded in `error`, and the pipes are closed."""
        with self._lock:
            if self._server_closed or self._serving:
                return
            self._serving = True
        try:
            self._serve()
        except Exception as e:  # the harness must not die of its feed
            self._fail(f"feed failed: {type(e).__name__}: {e}", reply=False)
        finally:
            self._close_server_ends()

    def _serve(self) -> None:
        p = self._p
        size = p.FEED_REQUEST.size
        while not self._stop.is_set():
            raw = self._read_request(size)
            if raw is None:
                return
            magic, B, T = p.FEED_REQUEST.unpack(raw)
            why = self._invalid(magic, B, T)
            if why:
                self._fail(why)
                return
            now = time.monotonic()
            step = B * T
            with self._lock:
                if self._end is None:
                    if self.budget_kind == "tokens":
                        over = self._tokens_served + step > self.budget_value
                    else:
                        over = self._first is not None and now >= self._first + self.budget_value
                    if over:
                        self._end = now
                serve = self._end is None
            if not serve:
                if not self._write(p.FEED_REPLY.pack(p.FEED_REPLY_MAGIC, p.FEED_END, B, T)):
                    return
                continue
            rows = self._take(B, T)
            with self._lock:  # counted when committed to: a child that dies mid-batch paid for it
                self._tokens_served += step
                self._batches += 1
                if self._first is None:
                    self._first = now
            header = p.FEED_REPLY.pack(p.FEED_REPLY_MAGIC, p.FEED_OK, B, T)
            if not (self._write(header)
                    and self._write(rows.astype(p.FEED_TOKEN_DTYPE).view(np.uint8))):
                return
            self._prefetch(B, T)

    def _invalid(self, magic: bytes, B: int, T: int) -> str | None:
        if magic != self._p.FEED_REQUEST_MAGIC:
            return f"bad request magic {magic!r}"
        if not (0 < B and 0 < T <= self.max_seq_len):
            return f"bad request shape B={B} T={T} (T at most {self.max_seq_len})"
        if B * T > self.max_batch_tokens:
            return f"batch of {B}x{T} tokens is over {self.max_batch_tokens}"
        if T not in self._packers and len(self._packers) >= self.max_shapes:
            return f"more than {self.max_shapes} sequence lengths requested"
        return None

    def _packer(self, T: int):
        packer = self._packers.get(T)
        if packer is None:
            packer = self._p.RowPacker(self._tokens, self._bos, T, self.seed, bounds=self._bounds)
            self._packers[T] = packer
            self._spare[T] = np.empty((0, T + 1), dtype=np.int64)
        return packer

    def _take(self, B: int, T: int) -> np.ndarray:
        """The next B rows of T's stream: rows packed ahead first."""
        packer = self._packer(T)
        spare = self._spare[T]
        if len(spare) < B:
            spare = np.concatenate([spare, packer.rows(B - len(spare))])
        self._spare[T] = spare[B:]
        return spare[:B]

    def _prefetch(self, B: int, T: int) -> None:
        """Pack the next batch while the child trains on this one, if it may have it."""
        with self._lock:
            if self._end is not None or (self.budget_kind == "tokens"
                                         and self._tokens_served + B * T > self.budget_value):
                return
        spare = self._spare[T]
        if len(spare) < B:
            self._spare[T] = np.concatenate([spare, self._packers[T].rows(B - len(spare))])

    def _fail(self, why: str, reply: bool = True) -> None:
        with self._lock:
            if self._error is None:
                self._error = why
        if reply:
            p = self._p
            self._write(p.FEED_REPLY.pack(p.FEED_REPLY_MAGIC, p.FEED_ERROR, 0, 0),
                        give_up=time.monotonic() + self.ERROR_REPLY_S)

    # --- pipe I/O: bounded waits, so that stop() and the child's exit always end serve()

    def _read_request(self, size: int) -> bytes | None:
        """One whole request, or None when the child has gone, stop() was called, or a
        request stays incomplete (then after an error reply)."""
        poller = select.poll()
        poller.register(self._req_r, select.POLLIN)
        got = b""
        started = None
        while len(got) < size:
            if self._stop.is_set():
                return None
            if started is not None and time.monotonic() - started > self.PARTIAL_REQUEST_S:
                self._fail(f"incomplete request ({len(got)} of {size} bytes)")
                return None
            events = poller.poll(self.POLL_S * 1000)
            if not events:
                continue
            if any(ev & select.POLLNVAL for _, ev in events):
                return None
            try:
                chunk = os.read(self._req_r, size - len(got))
            except BlockingIOError:
                continue
            except OSError:
                return None
            if not chunk:  # the child exited or closed its end
                if got:
                    self._fail(f"incomplete request ({len(got)} of {size} bytes)", reply=False)
                return None
            if started is None:
                started = time.monotonic()
            got += chunk
        return got

    def _write(self, data, give_up: float | None = None) -> bool:
        """Write all of data; False when the child has gone, stop() was called, or
        give_up (monotonic) has passed."""
        view = memoryview(data).cast("B")
        poller = select.poll()
        poller.register(self._data_w, select.POLLOUT)
        sent = 0
        while sent < len(view):
            if self._stop.is_set() or (give_up is not None and time.monotonic() > give_up):
                return False
            try:
                sent += os.write(self._data_w, view[sent:])
                continue
            except BlockingIOError:
                pass
            except OSError:  # EPIPE: the child closed its end or exited
                return False
            events = poller.poll(self.POLL_S * 1000)
            if any(ev & (select.POLLERR | select.POLLNVAL) for _, ev in events):
                return False
        return True

    def _close_server_ends(self) -> None:
        with self._lock:
            if self._server_closed:
                return
            self._server_closed = True
            self._serving = False
            if self._closed is None:
                self._closed = time.monotonic()
        for fd in (self._req_r, self._data_w):
            try:
                os.close(fd)
            except OSError:
                pass

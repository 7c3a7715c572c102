"""Tests for experiments/run/data_feed.py and the feed client in genome/prepare.py:
the harness serves and counts the training tokens, the child only asks."""
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import genome.prepare as P
from experiments.run.data_feed import DataFeed

REPO = Path(__file__).resolve().parent.parent

# The training child: asks make_dataloader for batches in phases (B, T, at most
# n batches, pause before each), saves what it got and reports what it saw.
CHILD = r"""
import json, os, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import genome.prepare as P

spec = json.loads(sys.argv[2])
time.sleep(spec.get("sleep_first", 0))
report = []
for i, (B, T, n, pause) in enumerate(spec["phases"]):
    loader = P.make_dataloader("/no/train.bin/here", B, T, "cpu", 12345)  # ignored under the feed
    xs, ys, ended = [], [], False
    while n is None or len(xs) < n:
        time.sleep(pause)
        if spec.get("lie"):
            P._tokens_served = 0  # its own counter says it has used nothing
        try:
            x, y = next(loader)
        except P.BudgetExhausted:
            ended = True
            break
        xs.append(x.numpy())
        ys.append(y.numpy())
    if xs:
        np.savez(os.path.join(spec["out"], f"phase{i}.npz"), x=np.stack(xs), y=np.stack(ys))
    report.append({"got": len(xs), "ended": ended, "again": ended and next(loader, None) is None})
raw = None
if spec.get("raw"):  # speak the protocol itself, past the loader
    req, data = P.run_config().feed_fds
    os.write(req, P.FEED_REQUEST.pack(P.FEED_REQUEST_MAGIC, *spec["raw"]))
    raw = P.FEED_REPLY.unpack(os.read(data, P.FEED_REPLY.size))[1]
print(json.dumps({"phases": report, "tokens_served": P.tokens_served(), "raw": raw}))
"""


def write_train_bin(path: Path, seed: int = 0, docs: int = 120) -> Path:
    """BOS=0, then documents of varied lengths whose tokens count up (mod 60000)."""
    rng = np.random.default_rng(seed)
    parts, nxt = [], 1
    for n in rng.integers(1, 90, docs):
        parts.append(np.concatenate([[0], (np.arange(nxt, nxt + n) % 60000) + 1]))
        nxt += int(n)
    np.concatenate(parts).astype(np.uint16).tofile(path)
    return path


@pytest.fixture
def train_bin(tmp_path):
    return write_train_bin(tmp_path / "train.bin")


def make_feed(train_bin, **kw) -> DataFeed:
    args = dict(seed=0, budget_kind="tokens", budget_value=10 ** 9, bos_id=0, prepare=P)
    args.update(kw)
    return DataFeed(train_bin, **args)


def run_child(feed: DataFeed, tmp_path: Path, spec: dict, timeout: float = 15) -> dict:
    out = tmp_path / "child"
    out.mkdir(exist_ok=True)
    (tmp_path / "child.py").write_text(CHILD)
    config = {"device": "cpu", "profile": "cpu", "budget_kind": feed.budget_kind,
              "budget_value": feed.budget_value, "seed": 0, "out_dir": str(out),
              "train_bin": "/no/train.bin/here", "vocab_size": 65536 - 1, "bos_id": 0,
              "seq_len": 16, "threads": 1, "feed_fds": list(feed.child_fds())}
    (tmp_path / "run.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != P.RUN_CONFIG_ENV}
    env[P.RUN_CONFIG_ENV] = str(tmp_path / "run.json")
    child = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(REPO),
                              json.dumps({**spec, "out": str(out)})],
                             pass_fds=feed.child_fds(), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    feed.close_child_ends()
    thread = feed.start()
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    thread.join(5)
    assert not thread.is_alive(), "serve() outlived its child"
    assert child.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def saved(tmp_path: Path, phase: int):
    data = np.load(tmp_path / "child" / f"phase{phase}.npz")
    return data["x"], data["y"]


def local_batches(train_bin, B, T, seed, n, monkeypatch):
    monkeypatch.delenv(P.RUN_CONFIG_ENV, raising=False)
    loader = P.make_dataloader(train_bin, B, T, "cpu", seed)
    pairs = [next(loader) for _ in range(n)]
    return np.stack([x.numpy() for x, _ in pairs]), np.stack([y.numpy() for _, y in pairs])


# --- (a) the feed serves the local loader's batches -------------------------------

def test_batches_equal_the_local_loader_bit_for_bit(tmp_path, train_bin, monkeypatch):
    feed = make_feed(train_bin, seed=7)
    # T=16 twice around a T=8 phase: each T is its own stream, continued across loaders
    report = run_child(feed, tmp_path, {"phases": [[4, 16, 5, 0], [2, 8, 3, 0], [4, 16, 3, 0]]})
    assert [p["got"] for p in report["phases"]] == [5, 3, 3]
    x16, y16 = local_batches(train_bin, 4, 16, 7, 8, monkeypatch)
    x8, y8 = local_batches(train_bin, 2, 8, 7, 3, monkeypatch)
    for phase, (x, y) in enumerate([(x16[:5], y16[:5]), (x8, y8), (x16[5:], y16[5:])]):
        got_x, got_y = saved(tmp_path, phase)
        assert got_x.dtype == np.int64 and np.array_equal(got_x, x) and np.array_equal(got_y, y)
    assert feed.tokens == report["tokens_served"] == 8 * 4 * 16 + 3 * 2 * 8
    assert feed.batches == 11 and feed.end_time is None and feed.error is None


# --- (b) a token budget, counted by the harness ---------------------------------

def test_token_budget_serves_whole_batches_then_end_for_good(tmp_path, train_bin):
    B, T = 2, 16
    feed = make_feed(train_bin, budget_value=10 * B * T + 5)
    # after `end`: a new loader of the same shape, a smaller shape that would fit
    # in the 5 tokens left, and a raw request past the loader all get nothing
    report = run_child(feed, tmp_path, {"phases": [[B, T, None, 0], [B, T, None, 0],
                                                   [1, 5, None, 0]], "raw": [1, 1]})
    first, again, small = report["phases"]
    assert first == {"got": 10, "ended": True, "again": True}
    assert again["got"] == 0 and again["ended"] and small["got"] == 0 and small["ended"]
    assert report["raw"] == P.FEED_END
    assert feed.tokens == 10 * B * T and feed.batches == 10
    assert feed.end_time is not None and feed.deadline(5.0) == pytest.approx(feed.end_time + 5.0)
    assert feed.train_s == pytest.approx(feed.end_time - feed.first_batch_time)
    assert feed.error is None
    record = feed.measurements()
    assert record["tokens"] == 10 * B * T and record["batches"] == 10
    assert record["train_s"] == pytest.approx(feed.train_s) and record["error"] is None
    assert record["first_batch_time"] == feed.first_batch_time
    assert record["end_time"] == feed.end_time


# --- (c) a time budget starts at the first batch --------------------------------

def test_time_budget_starts_at_the_first_batch(tmp_path, train_bin):
    budget = 0.5
    feed = make_feed(train_bin, budget_kind="time", budget_value=budget)
    assert feed.deadline(2.0) is None
    before = time.monotonic()
    # the child idles longer than the budget before asking: that does not count
    report = run_child(feed, tmp_path, {"sleep_first": 0.7, "phases": [[2, 8, None, 0.1]]})
    phase = report["phases"][0]
    assert phase["ended"] and phase["again"] and phase["got"] >= 2
    first, end = feed.first_batch_time, feed.end_time
    assert first - before >= 0.7
    assert end - first >= budget and phase["ended"]  # the whole budget, then the end
    assert feed.train_s == pytest.approx(end - first)
    assert feed.batches == phase["got"] and feed.tokens == phase["got"] * 2 * 8
    assert feed.deadline(2.0) == pytest.approx(first + budget + 2.0)
    assert feed.startup_deadline(30.0) is None


def test_startup_deadline_until_the_first_batch(train_bin):
    feed = make_feed(train_bin)
    with feed:
        before = time.monotonic()
        feed.close_child_ends()  # the child has started: its start-up time runs from here
        after = time.monotonic()
        assert before + 30.0 <= feed.startup_deadline(30.0) <= after + 30.0
        assert feed.first_batch_time is None and feed.train_s == 0.0


# --- (e) the child's own counter is informational -------------------------------

def test_a_lying_child_counter_does_not_change_the_harness_count(tmp_path, train_bin):
    B, T = 3, 8
    feed = make_feed(train_bin, budget_value=7 * B * T)
    report = run_child(feed, tmp_path, {"lie": True, "phases": [[B, T, None, 0], [1, 1, None, 0]]})
    assert report["phases"][0]["got"] == 7 and report["phases"][1]["got"] == 0
    assert report["tokens_served"] <= B * T  # what the child claims
    assert feed.tokens == 7 * B * T and feed.batches == 7


# --- (d) malformed requests and vanishing children, in bounded time ----------------

class Child:
    """This test process as the child: its own copies of the child's pipe ends."""

    def __init__(self, feed: DataFeed):
        self.req, self.data = (os.dup(fd) for fd in feed.child_fds())
        feed.close_child_ends()
        self.open = {self.req, self.data}

    def send(self, raw: bytes) -> None:
        os.write(self.req, raw)

    def ask(self, B: int, T: int, magic: bytes = P.FEED_REQUEST_MAGIC) -> None:
        self.send(P.FEED_REQUEST.pack(magic, B, T))

    def read(self, n: int, timeout: float = 5.0) -> bytes:
        got = b""
        stop = time.monotonic() + timeout
        while len(got) < n:
            ready, _, _ = select.select([self.data], [], [], max(0.0, stop - time.monotonic()))
            assert ready, "no reply in time"
            chunk = os.read(self.data, n - len(got))
            if not chunk:
                break
            got += chunk
        return got

    def reply(self) -> tuple[int, int, int]:
        magic, status, B, T = P.FEED_REPLY.unpack(self.read(P.FEED_REPLY.size))
        assert magic == P.FEED_REPLY_MAGIC
        return status, B, T

    def close(self, fd=None) -> None:
        for f in ([fd] if fd is not None else list(self.open)):
            if f in self.open:
                self.open.discard(f)
                os.close(f)


@pytest.fixture
def served(train_bin):
    started = []

    def start(**kw):
        feed = make_feed(train_bin, **kw)
        child = Child(feed)
        thread = feed.start()
        started.append((feed, child))
        return feed, child, thread

    yield start
    for feed, child in started:
        feed.stop()
        child.close()


def ends_soon(thread, within: float = 3.0) -> None:
    thread.join(within)
    assert not thread.is_alive(), "serve() did not return"


@pytest.mark.parametrize("request_", [
    P.FEED_REQUEST.pack(b"XXXX", 2, 8),                        # bad magic
    P.FEED_REQUEST.pack(P.FEED_REQUEST_MAGIC, 0, 8),           # no rows
    P.FEED_REQUEST.pack(P.FEED_REQUEST_MAGIC, 2, 0),           # empty rows
    P.FEED_REQUEST.pack(P.FEED_REQUEST_MAGIC, 2 ** 32 - 1, 2 ** 32 - 1),  # huge B and T
    P.FEED_REQUEST.pack(P.FEED_REQUEST_MAGIC, 1, (1 << 16) + 1),          # T over the limit
    P.FEED_REQUEST.pack(P.FEED_REQUEST_MAGIC, 4097, 1024),     # B*T over max_batch_tokens
])
def test_a_bad_request_gets_an_error_and_ends_serving(served, request_):
    feed, child, thread = served(max_batch_tokens=1 << 22)
    child.ask(1, 4)
    assert child.reply() == (P.FEED_OK, 1, 4)
    child.read(1 * 5 * 2)
    child.send(request_)
    assert child.reply()[0] == P.FEED_ERROR
    ends_soon(thread)
    assert feed.error and child.read(1) == b""  # the feed is closed: the loader raises
    assert feed.tokens == 4 and feed.batches == 1


def test_too_many_sequence_lengths_is_an_error(served):
    feed, child, thread = served(max_shapes=2)
    for T in (4, 5):
        child.ask(1, T)
        assert child.reply()[0] == P.FEED_OK
        child.read((T + 1) * 2)
    child.ask(1, 6)
    assert child.reply()[0] == P.FEED_ERROR
    ends_soon(thread)
    assert "sequence lengths" in feed.error


def test_a_half_written_request_times_out(served, monkeypatch):
    monkeypatch.setattr(DataFeed, "PARTIAL_REQUEST_S", 0.3)
    feed, child, thread = served()
    child.send(P.FEED_REQUEST.pack(P.FEED_REQUEST_MAGIC, 1, 4)[:5])
    assert child.reply()[0] == P.FEED_ERROR
    ends_soon(thread)
    assert "incomplete" in feed.error and feed.batches == 0


def test_closing_the_pipes_ends_serving(served):
    feed, child, thread = served()
    child.send(P.FEED_REQUEST.pack(P.FEED_REQUEST_MAGIC, 1, 4)[:7])
    child.close(child.req)  # half a request, then end of file
    ends_soon(thread)
    assert "incomplete" in feed.error
    feed, child, thread = served()
    child.close(child.data)  # the child stops reading and asks: the reply cannot be written
    child.ask(64, 1024)
    ends_soon(thread)
    assert feed.error is None
    feed, child, thread = served()
    child.close()  # a child that never asked
    ends_soon(thread)
    assert feed.first_batch_time is None and feed.train_s == 0.0


def test_stop_ends_serving_while_the_child_does_not_read(served):
    feed, child, thread = served()
    child.ask(64, 1024)  # 128 KiB: more than a pipe holds, never read
    ready, _, _ = select.select([child.data], [], [], 5.0)
    assert ready  # the reply has begun: the feed now waits on a full pipe
    feed.stop()
    ends_soon(thread)
    feed, child, thread = served()  # idle, waiting for a request
    feed.stop()
    ends_soon(thread)


def test_a_dying_child_ends_serving(train_bin):
    feed = make_feed(train_bin)
    req, _ = feed.child_fds()
    feed.PARTIAL_REQUEST_S = 3600  # the child's death, not this limit, must end serving
    child = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\n"
                               f"os.write({req}, b'LFq1\\x01')\n"  # half a request
                               "print('sent', flush=True)\n"
                               "time.sleep(60)"], pass_fds=feed.child_fds(),
        stdout=subprocess.PIPE, text=True)
    feed.close_child_ends()
    thread = feed.start()
    try:
        assert child.stdout.readline() == "sent\n"
        assert thread.is_alive()  # waiting for the rest of the request
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        ends_soon(thread)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        feed.stop()
    assert feed.batches == 0 and feed.tokens == 0 and "incomplete" in feed.error


# --- the client and the run config ------------------------------------------------

def test_run_config_reads_and_checks_feed_fds(tmp_path):
    base = {"device": "cpu", "profile": "cpu", "budget_kind": "tokens", "budget_value": 1000,
            "seed": 0, "out_dir": str(tmp_path), "train_bin": str(tmp_path / "train.bin"),
            "vocab_size": 8192, "bos_id": 0, "seq_len": 16, "threads": 1}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(base))
    assert P.run_config(path).feed_fds is None
    path.write_text(json.dumps({**base, "feed_fds": [7, 9]}))
    assert P.run_config(path).feed_fds == (7, 9)
    for bad in ([7], [7, 7], [1, 9], [7, "9"], [7, True], 7, [7, 2 ** 31]):
        path.write_text(json.dumps({**base, "feed_fds": bad}))
        with pytest.raises(ValueError, match="feed_fds"):
            P.run_config(path)


def test_the_client_raises_on_an_error_reply_and_a_closed_feed(train_bin):
    feed = make_feed(train_bin, max_batch_tokens=64)
    req, data = (os.dup(fd) for fd in feed.child_fds())
    feed.close_child_ends()
    thread = feed.start()
    try:
        loader = P._FeedLoader((req, data), 8, 16, "cpu")  # 128 tokens: over the limit
        with pytest.raises(P.FeedError, match="refused"):
            next(loader)
        ends_soon(thread)
        with pytest.raises(P.FeedError, match="closed"):
            next(P._FeedLoader((req, data), 1, 4, "cpu"))
    finally:
        feed.stop()
        os.close(req)
        os.close(data)


def test_the_feed_checks_train_bin(tmp_path, train_bin):
    with pytest.raises(ValueError, match="BOS"):
        make_feed(train_bin, bos_id=3)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        make_feed(tmp_path / "empty.bin")
    with pytest.raises(ValueError, match="budget"):
        make_feed(train_bin, budget_value=0)

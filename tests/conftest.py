"""Shared pytest set-up: the `slow` marker, reaping of stray child processes, and shared
fixtures."""
import os
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (long or multi-process)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, read from /proc (Linux only; empty elsewhere)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@pytest.fixture(scope="session", autouse=True)
def reap_children():
    """Kill any child process a test left behind, so no orphan outlives the suite."""
    yield
    for pid in _children(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@pytest.fixture
def shard_files(tmp_path):
    """The parquet shards tests/shard_server.py serves, written under tmp_path: {name: bytes}."""
    from shard_server import write_shard_files

    return write_shard_files(tmp_path)

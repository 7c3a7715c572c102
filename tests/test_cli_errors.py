"""Bad input at the command line: one clear line on stderr and a non-zero exit, never a
traceback. Each command is run in-process (`node.main`), except a node that cannot
listen, which runs as its own process so its port can be held by this one."""
import os
import random
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import node
from experiments.simulation.synthetic import SyntheticTrainer

REPO = Path(__file__).resolve().parent.parent
ERROR = "loopy: error: "


@pytest.fixture(autouse=True)
def no_loopy_environment(monkeypatch):
    for var in [v for v in os.environ if v.startswith("LOOPY_")]:
        monkeypatch.delenv(var)


def fails_with(capsys, argv: list[str], message: str) -> str:
    """Run `loopy argv`; assert it fails with exactly one error line containing `message`."""
    code = node.main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(ERROR) and message in lines[0], err
    return lines[0]


@pytest.fixture
def corrupt_home(tmp_path, capsys) -> Path:
    """A home with a key and a store file of random bytes."""
    assert node.main(["id", "--home", str(tmp_path)]) == 0
    (tmp_path / "store.sqlite").write_bytes(random.Random(0).randbytes(16384))
    capsys.readouterr()
    return tmp_path


@pytest.fixture
def damaged_home(tmp_path, capsys) -> Path:
    """A home whose store is sound but holds one record that cannot be decoded."""
    home = str(tmp_path)
    assert node.main(["start", "--offline", "--trainer", "synthetic", "--plain",
                      "--max-experiments", "1", "--home", home]) == 0
    conn = sqlite3.connect(tmp_path / "store.sqlite")
    # (with a score, as the store writes every ok run: scans for the best read it)
    conn.execute("INSERT INTO records (id, kind, author, t, arena, topic, status, val_bpb, "
                 "body, envelope, received_at) VALUES (?, 'experiment', ?, 1, ?, 'general', "
                 "'ok', 1.0, ?, ?, 1)", (b"\1" * 32, b"\2" * 32, SyntheticTrainer(0).arena,
                                         b"\xc1junk", b"\xc1junk"))
    conn.commit()
    conn.close()
    capsys.readouterr()
    return tmp_path


def test_run_rejects_a_budget_that_is_not_one(capsys, tmp_path):
    fails_with(capsys, ["run", "--budget", "banana", "--home", str(tmp_path)],
               "budget 'banana' is not like")


def test_synthetic_trainer_rejects_a_bad_budget_too(capsys, tmp_path):
    fails_with(capsys, ["start", "--offline", "--trainer", "synthetic", "--budget", "banana",
                        "--max-experiments", "1", "--home", str(tmp_path)],
               "budget 'banana'")
    assert not (tmp_path / "store.sqlite").exists(), "nothing ran"


def test_start_rejects_a_listen_address_that_is_not_one(capsys, tmp_path):
    fails_with(capsys, ["start", "--trainer", "synthetic", "--listen", "/ip4/999.1.1.1/tcp/1",
                        "--home", str(tmp_path)], "/ip4/999.1.1.1/tcp/1")


def test_start_rejects_a_bootstrap_that_is_not_a_peer_address(capsys, tmp_path):
    fails_with(capsys, ["start", "--trainer", "synthetic", "--listen", "/ip4/127.0.0.1/tcp/0",
                        "--bootstrap", "/ip4/127.0.0.1/tcp/4011", "--home", str(tmp_path)],
               "not a peer multiaddr")


@pytest.mark.parametrize("flag, value, message", [
    ("--until", "banana", "--until 'banana'"),
    ("--topic", "Not A Topic", "invalid topic"),
    ("--agent", "banana", "agent: unknown agent"),
])
def test_start_rejects_bad_settings(capsys, tmp_path, flag, value, message):
    fails_with(capsys, ["start", "--offline", "--trainer", "synthetic", flag, value,
                        "--max-experiments", "1", "--home", str(tmp_path)], message)


def test_a_bad_setting_in_the_config_file_is_named(capsys, tmp_path):
    (tmp_path / "config.toml").write_text('device = "banana"\n')
    fails_with(capsys, ["status", "--home", str(tmp_path)], "device must be one of")


def test_dashboard_port_in_use(capsys, tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        fails_with(capsys, ["start", "--offline", "--trainer", "synthetic", "--plain",
                            "--max-experiments", "1", "--dashboard", str(port),
                            "--home", str(tmp_path)], f"port {port} is in use")


@pytest.mark.parametrize("argv", [
    ["status"], ["export"], ["log"], ["peers"], ["plot"], ["verify", "0101"],
])
def test_a_store_of_random_bytes(capsys, corrupt_home, argv):
    out = corrupt_home / "progress.png"
    fails_with(capsys, [*argv, "--home", str(corrupt_home),
                        *(["-o", str(out)] if argv[0] == "plot" else [])],
               "not a usable store")
    assert not out.exists()


@pytest.mark.parametrize("argv", [["status"], ["log"], ["plot"], ["export"]])
def test_a_store_with_an_undecodable_record(capsys, damaged_home, argv):
    out = damaged_home / "progress.png"
    fails_with(capsys, [*argv, "--trainer", "synthetic", "--home", str(damaged_home),
                        *(["-o", str(out)] if argv[0] == "plot" else [])],
               "it may be damaged")


def test_a_corrupt_key(capsys, tmp_path):
    (tmp_path / "node.key").write_bytes(b"not a key")
    fails_with(capsys, ["id", "--home", str(tmp_path)], "node.key")


def test_listen_on_a_port_in_use_fails_at_start(tmp_path):
    """py-libp2p only logs a failed listen; the node must stop with the reason instead of
    running on without listening."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPY_")}
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = subprocess.run(
            [sys.executable, str(REPO / "node.py"), "start", "--trainer", "synthetic",
             "--plain", "--max-experiments", "1", "--listen", f"/ip4/127.0.0.1/tcp/{port}",
             "--home", str(tmp_path)],
            capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(ERROR + f"cannot listen on /ip4/127.0.0.1/tcp/{port}")
    assert "in use" in lines[0]
    assert "result" not in out.stdout, "no experiment ran"

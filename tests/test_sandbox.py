"""One adversarial test per property the sandbox claims: network, files, time, memory,
processes (fork, setsid, orphans, signals), privileges, environment, output, cleanup.

Each layer is asserted where `isolation_plan()` says this OS provides it (Linux with
`unshare`, as root or with user namespaces: CI and the dev machines); elsewhere that test
is skipped with the reason, never passed vacuously.
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from experiments.sandbox import (SandboxError, alive, isolation_plan, mount_ops, run_sandboxed)

PLAN = isolation_plan()
needs_netns = pytest.mark.skipif(not PLAN.netns, reason=f"no network namespace here: {PLAN.notes}")
needs_mountns = pytest.mark.skipif(not PLAN.mountns,
                                   reason=f"no mount namespace here: {PLAN.notes}")
needs_pidns = pytest.mark.skipif(not PLAN.pidns, reason=f"no PID namespace here: {PLAN.notes}")
as_root = pytest.mark.skipif(os.geteuid() != 0 or PLAN.userns or not PLAN.mountns,
                             reason="dropping to uid 65534 needs root and a mount namespace")


@pytest.fixture
def ws(tmp_path):
    path = tmp_path / "ws"
    path.mkdir()
    return path


def run_code(code: str, cwd, **kw):
    kw.setdefault("wall_limit_s", 30)
    kw.setdefault("mem_limit_mb", 2000)
    return run_sandboxed([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, **kw)


def last_json(result) -> dict:
    lines = [line for line in result.log_tail.splitlines() if line.startswith("{")]
    assert lines, result.log_tail
    return json.loads(lines[-1])


def test_plain_run_reports_its_isolation(ws):
    result = run_code("print('hello')", ws)
    assert result.returncode == 0
    assert result.log_tail == "hello\n"
    assert not result.timed_out and not result.mem_exceeded and not result.cancelled
    always = {"own-session", "scrubbed-env", "wall-limit", "rlimit-core", "rlimit-nofile"}
    assert always <= set(result.isolation)
    if PLAN.netns:
        assert "netns" in result.isolation
    else:
        assert any(item.startswith("no-netns") for item in result.isolation)


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                    reason="CI and the dev machines run as root on Linux")
def test_all_layers_work_as_root_on_linux():
    assert PLAN.netns and PLAN.mountns and PLAN.pidns and not PLAN.userns, PLAN


CONNECT = """
    import socket, sys
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
        print("connected")
    except OSError as e:
        print("refused", type(e).__name__, e)
"""


@needs_netns
def test_network_is_cut_even_to_localhost(ws):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        # Control: the same code outside the sandbox does connect.
        plain = subprocess.run([sys.executable, "-c", textwrap.dedent(CONNECT), str(port)],
                               capture_output=True, text=True, timeout=30)
        assert plain.stdout.startswith("connected")
        listener.accept()[0].close()

        result = run_sandboxed([sys.executable, "-c", textwrap.dedent(CONNECT), str(port)],
                               cwd=ws, wall_limit_s=30, mem_limit_mb=1000)
        assert result.log_tail.startswith("refused"), result.log_tail
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


@needs_mountns
def test_hidden_paths_cannot_be_read_revealed_ones_can(tmp_path, ws):
    home = tmp_path / "home"
    data = home / "data"
    data.mkdir(parents=True)
    (data / "val.bin").write_bytes(b"VALIDATION")
    (data / "train.bin").write_bytes(b"TRAINING")
    (home / "identity.key").write_bytes(b"SECRET KEY")
    raw = tmp_path / "corpus"
    raw.mkdir()
    (raw / "val.txt").write_text("raw validation text")
    probe = f"""
        import json, os
        out = {{}}
        for p in {[str(data / "val.bin"), str(data / "train.bin"), str(home / "identity.key"),
                   str(raw / "val.txt")]!r}:
            try:
                out[p] = open(p, "rb").read().decode()
            except OSError as e:
                out[p] = type(e).__name__
        out["listing"] = sorted(os.listdir({str(data)!r}))
        print(json.dumps(out))
    """
    result = run_code(probe, ws, hide_paths=[home, raw, data / "val.bin"],
                      reveal_paths=[data / "train.bin"])
    seen = last_json(result)
    assert seen[str(data / "train.bin")] == "TRAINING"
    assert seen[str(data / "val.bin")] in ("", "FileNotFoundError")
    assert seen[str(home / "identity.key")] == "FileNotFoundError"
    assert seen[str(raw / "val.txt")] == "FileNotFoundError"
    assert seen["listing"] == ["train.bin"]
    assert "mountns" in result.isolation
    # And the files are untouched outside.
    assert (data / "val.bin").read_bytes() == b"VALIDATION"


@needs_mountns
def test_filesystem_is_read_only_except_the_workspace(tmp_path, ws):
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = Path(__file__).resolve().parent.parent
    probe = f"""
        import json
        out = {{}}
        for p in ["out.txt", {str(outside / "x")!r}, {str(repo / "sandbox-escape.txt")!r},
                  "/etc/sandbox-escape", "/tmp/scratch.txt"]:
            try:
                with open(p, "w") as f:
                    f.write("x")
                out[p] = "written"
            except OSError as e:
                out[p] = type(e).__name__
        print(json.dumps(out))
    """
    seen = last_json(run_code(probe, ws, writable_paths=[]))
    assert seen["out.txt"] == "written"
    assert seen["/tmp/scratch.txt"] == "written"  # a private, size-capped tmpfs
    for path in (str(outside / "x"), str(repo / "sandbox-escape.txt"), "/etc/sandbox-escape"):
        assert seen[path] in ("FileNotFoundError", "OSError", "PermissionError"), (path, seen[path])
    assert (ws / "out.txt").read_text() == "x"
    assert not (repo / "sandbox-escape.txt").exists()
    assert not Path("/tmp/scratch.txt").exists()


@needs_mountns
def test_proc_and_sys_keep_their_mounts_so_cuda_can_start(ws):
    """CUDA fails to initialise (error 304) under read-only /proc and /sys mounts; the
    rest of the tree stays read-only, and the files there keep their permissions."""
    probe = """
        import json, os
        flags = {p: bool(os.statvfs(p).f_flag & os.ST_RDONLY) for p in ("/", "/usr", "/proc", "/sys")}
        try:
            open("/proc/sys/kernel/hostname", "w").write("escape")
            hostname = "written"
        except OSError as e:
            hostname = type(e).__name__
        print(json.dumps(dict(flags, hostname=hostname)))
    """
    result = run_code(probe, ws)
    seen = last_json(result)
    if "readonly-fs" not in result.isolation:
        pytest.skip(f"no read-only remount here: {result.isolation}")
    assert seen["/"] and seen["/usr"]
    assert not seen["/proc"] and not seen["/sys"]
    assert seen["hostname"] in ("PermissionError", "OSError")


def _pids_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


def test_wall_limit_kills_the_whole_family_no_orphans(ws):
    marker = f"{1000 + random.random():.9f}"
    code = f"""
        import os, time
        pid = os.fork()
        if pid == 0:
            os.setsid()  # try to leave the process group
            if os.fork() == 0:
                os.execv("/bin/sleep", ["sleep", {marker!r}])
            os._exit(0)
        os.waitpid(pid, 0)
        print("spawned", flush=True)
        while True:
            time.sleep(0.1)
    """
    seen_alive: list[int] = []

    def on_line(line):
        if line == "spawned":
            time.sleep(0.2)
            seen_alive.extend(_pids_with(marker))

    start = time.monotonic()
    result = run_code(code, ws, wall_limit_s=3, on_line=on_line)
    assert result.timed_out and result.returncode == -signal.SIGKILL
    assert 3 <= result.wall_s < 8 and time.monotonic() - start < 10
    assert seen_alive, "the orphan was never seen: the test would prove nothing"
    for pid in seen_alive:  # gone (os.kill(pid, 0) fails), or at most a zombie being reaped
        assert not alive(pid)
    assert _pids_with(marker) == []


def test_memory_watchdog_kills_the_group(ws):
    code = """
        hoard = []
        while True:
            hoard.append(b"x" * (16 * 2**20))
    """
    result = run_code(code, ws, mem_limit_mb=250)
    assert result.mem_exceeded and not result.timed_out
    assert result.returncode == -signal.SIGKILL
    assert 250 < result.peak_rss_mb < 2000


def test_memory_watchdog_counts_children_too(ws):
    code = """
        import os, time
        for _ in range(3):
            if os.fork() == 0:
                hoard = b"x" * (120 * 2**20)
                time.sleep(60)
        time.sleep(60)
    """
    result = run_code(code, ws, mem_limit_mb=300, wall_limit_s=30)
    assert result.mem_exceeded, result


def test_address_space_limit(ws):
    code = """
        try:
            hoard = b"x" * (900 * 2**20)
            print("allocated")
        except MemoryError:
            print("MemoryError")
    """
    result = run_code(code, ws, mem_limit_mb=4000, rlimit_as_mb=600)
    assert result.log_tail.strip() == "MemoryError"
    assert "rlimit-as:600MB" in result.isolation


def test_environment_is_scrubbed(ws, monkeypatch):
    monkeypatch.setenv("LOOPY_TEST_SECRET", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter3")
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    allowed = {"OMP_NUM_THREADS": "1", "LOOPY_RUN_CONFIG": "run.json"}
    env = last_json(run_code(code, ws, env=allowed))
    assert "LOOPY_TEST_SECRET" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["HOME"] == str(ws.resolve())
    assert env["OMP_NUM_THREADS"] == "1" and env["LOOPY_RUN_CONFIG"] == "run.json"
    assert set(env) <= {"PATH", "HOME", "LANG", "TMPDIR", "PYTHONDONTWRITEBYTECODE",
                        "PYTHONUNBUFFERED", "OMP_NUM_THREADS", "LOOPY_RUN_CONFIG",
                        "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "TRITON_LIBCUDA_PATH",
                        "TRITON_PTXAS_PATH", "NVIDIA_DRIVER_CAPABILITIES", "LC_CTYPE"}
    with pytest.raises(ValueError, match="not allowed"):
        run_code("pass", ws, env={"LD_PRELOAD": "/tmp/evil.so"})


@as_root
def test_child_runs_unprivileged_and_cannot_signal_the_node(ws):
    code = f"""
        import json, os
        caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
        try:
            os.kill({os.getpid()}, 0)
            signalled = "yes"
        except OSError as e:
            signalled = type(e).__name__
        print(json.dumps({{"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                           "caps": caps, "signalled": signalled, "pid": os.getpid()}}))
    """
    seen = last_json(run_code(code, ws))
    assert seen["uid"] == 65534 and seen["gid"] == 65534 and seen["groups"] == []
    assert int(seen["caps"], 16) == 0
    assert seen["signalled"] in ("ProcessLookupError", "PermissionError")


@needs_pidns
def test_child_sees_only_its_own_processes(ws):
    code = "import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"
    result = run_code(code, ws)
    assert json.loads(result.log_tail) == [1, 2]  # the sandbox's init and the child itself


@as_root
def test_unreadable_reveal_fails_closed(tmp_path, ws):
    secret = tmp_path / "private.bin"
    secret.write_bytes(b"x")
    secret.chmod(0o600)
    with pytest.raises(SandboxError, match="not readable by uid 65534"):
        run_code("print('ran')", ws, hide_paths=[tmp_path / "nothing-here"], reveal_paths=[secret])


def test_output_is_streamed_and_the_tail_bounded(ws):
    code = """
        import sys
        for i in range(2000):
            print(f"line {i}")
        sys.stdout.write("y" * 200000)
    """
    lines = []
    result = run_code(code, ws, on_line=lines.append, tail_chars=1000)
    assert lines[:2] == ["line 0", "line 1"] and "line 1999" in lines
    assert len(result.log_tail) <= 1000
    assert result.log_tail.endswith("y" * 100)


def test_a_failing_callback_does_not_leave_the_child_unwatched(ws):
    def broken(line):
        raise RuntimeError("display broke")

    result = run_code("import time\nprint('a')\ntime.sleep(60)", ws, on_line=broken, wall_limit_s=2)
    assert result.timed_out


def test_exit_status_and_signals_are_reported(ws):
    assert run_code("import sys; sys.exit(3)", ws).returncode == 3
    result = run_code("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", ws)
    assert result.returncode == -signal.SIGSEGV


def test_cancel_stops_the_child(ws):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    start = time.monotonic()
    result = run_code("import time; time.sleep(60)", ws, cancel=cancel)
    assert result.cancelled and not result.timed_out
    assert time.monotonic() - start < 5


def test_bad_arguments(ws, tmp_path):
    with pytest.raises(ValueError):
        run_sandboxed([], cwd=ws, wall_limit_s=1, mem_limit_mb=100)
    with pytest.raises(ValueError):
        run_sandboxed(["true"], cwd=tmp_path / "missing", wall_limit_s=1, mem_limit_mb=100)
    with pytest.raises(ValueError):
        run_sandboxed(["true"], cwd=ws, wall_limit_s=0, mem_limit_mb=100)
    with pytest.raises(ValueError, match="not found"):
        run_sandboxed(["no-such-program-loopy"], cwd=ws, wall_limit_s=1, mem_limit_mb=100)


def test_mount_ops_order_and_conflicts(tmp_path):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "train.bin").write_bytes(b"")
    (home / "runs" / "r1").mkdir(parents=True)
    ops = mount_ops([home], [home / "data" / "train.bin"], [home / "runs" / "r1"])
    kinds = dict(ops)
    assert kinds[str(home)] == "hide"
    assert kinds[str(home / "data" / "train.bin")] == "ro"
    assert kinds[str(home / "runs" / "r1")] == "rw"
    order = [path for path, _ in ops]
    assert order.index(str(home)) < order.index(str(home / "runs" / "r1"))
    assert "/tmp" in kinds and kinds["/tmp"] == "scratch"
    # Implicit reveals (the interpreter) never override an explicit hide.
    assert all(not (p.startswith(str(home)) and k == "ro" and p != str(home / "data" / "train.bin"))
               for p, k in ops)
    with pytest.raises(ValueError, match="both hidden and revealed"):
        mount_ops([home], [home], [])
    with pytest.raises(ValueError):
        mount_ops(["/"], [], [])


def test_a_failing_mount_setup_falls_back_and_says_so(monkeypatch):
    import experiments.sandbox as sandbox

    full = sandbox.IsolationPlan(("/usr/bin/unshare", "--net", "--mount", "--pid", "--fork",
                                  "--kill-child", "--mount-proc", "--"), True, True, True, False)
    monkeypatch.setattr(sandbox, "_namespaces_plan", lambda: full)
    monkeypatch.setattr(sandbox, "_trial", lambda plan: "mount: Operation not permitted")
    plan = sandbox._detect_plan()
    assert plan.unshare == ("/usr/bin/unshare", "--net", "--")
    assert plan.netns and not plan.mountns and not plan.pidns
    assert "no-mountns (set-up failed: mount: Operation not permitted)" in plan.features()

"""One adversarial test per property the sandbox claims: network, files (allowlist root),
time (wall limit, deadline), memory, processes (fork, setsid, orphans, signals),
privileges, the control channel, inherited descriptors, environment, output, cleanup.

Each layer is asserted where `isolation_plan()` says this OS provides it (Linux with
`unshare`, as root or with user namespaces: CI and the dev machines); elsewhere that test
is skipped with the reason, never passed vacuously. As root, the user-namespace path is
tested too: with an explicit plan, and as uid 65534 through tests/sandbox_nonroot_helper.py.
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import experiments.run.sandbox as sandbox
from experiments.run.sandbox import (IsolationPlan, SandboxError, alive, isolation_plan,
                                 missing_isolation, mount_ops, run_sandboxed)

PLAN = isolation_plan()
REPO = Path(__file__).resolve().parent.parent
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
    if PLAN.mountns:
        assert {"mountns", "fds-closed", "launcher-undumpable"} <= set(result.isolation)
        assert any(item.startswith("allowlist-root") for item in result.isolation)
    assert "status-channel-tampered" not in result.isolation


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                    reason="CI and the dev machines run as root on Linux")
def test_all_layers_work_as_root_on_linux():
    assert PLAN.netns and PLAN.mountns and PLAN.pidns and PLAN.ipcns and not PLAN.userns, PLAN
    assert PLAN.privdrop and PLAN.complete and missing_isolation() == []


def test_missing_isolation_names_each_missing_layer_with_its_reason():
    plan = IsolationPlan((), False, False, False, False,
                         ("no-netns (no user namespaces: unshare --user not permitted)",
                          "no-mountns (no user namespaces: unshare --user not permitted)",
                          "no-pidns (unshare --pid failed)"))
    assert not plan.complete
    assert missing_isolation(plan) == [
        "no network namespace: no user namespaces: unshare --user not permitted",
        "no allowlist root (mount namespace): no user namespaces: unshare --user not permitted",
        "no PID namespace: unshare --pid failed",
        "no IPC namespace: not available here",
        "no privilege drop: not available here"]
    full = IsolationPlan(("unshare", "--"), True, True, True, False, (), privdrop=True,
                         ipcns=True)
    assert full.complete and missing_isolation(full) == []
    assert not IsolationPlan(("unshare", "--"), True, True, True, False,
                             ipcns=True).complete  # no privdrop
    no_ipc = IsolationPlan(("unshare", "--"), True, True, True, False,
                           ("no-ipcns (unshare --ipc failed)",), privdrop=True)
    assert not no_ipc.complete
    assert missing_isolation(no_ipc) == ["no IPC namespace: unshare --ipc failed"]


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


TOP_LEVEL = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc",
             "sys", "tmp"}


@needs_mountns
def test_only_the_allowlist_is_visible(tmp_path, ws):
    """Nothing is hidden explicitly: the node's home, the raw corpus and the checkout are
    simply not in the allowlist; the one revealed file is."""
    home = tmp_path / "home"
    data = home / "data"
    data.mkdir(parents=True)
    (data / "val.bin").write_bytes(b"VALIDATION")
    (data / "train.bin").write_bytes(b"TRAINING")
    (home / "identity.key").write_bytes(b"SECRET KEY")
    raw = tmp_path / "corpus"
    raw.mkdir()
    (raw / "val.txt").write_text("raw validation text")
    files = [data / "val.bin", data / "train.bin", home / "identity.key", raw / "val.txt",
             REPO / "node.py", REPO / "experiments" / "run" / "sandbox.py", Path("/etc/hostname")]
    probe = f"""
        import json, os
        out = {{}}
        for p in {[str(f) for f in files]!r}:
            try:
                out[p] = open(p, "rb").read().decode()
            except OSError as e:
                out[p] = type(e).__name__
        def listing(p):
            try:
                return sorted(os.listdir(p))
            except OSError as e:
                return type(e).__name__
        for p in ["/", {str(data)!r}, {str(home)!r}, {str(tmp_path)!r}, {str(REPO)!r}, "/root",
                  "/home", "/run", "/var", "/mnt"]:
            out["ls " + p] = listing(p)
        print(json.dumps(out))
    """
    result = run_code(probe, ws, reveal_paths=[data / "train.bin"])
    seen = last_json(result)
    assert seen[str(data / "train.bin")] == "TRAINING"
    for secret in files[:1] + files[2:6]:
        assert seen[str(secret)] == "FileNotFoundError", (secret, seen[str(secret)])
    assert seen["/etc/hostname"] != "FileNotFoundError"  # the system directories are there
    assert seen["ls " + str(data)] == ["train.bin"]
    assert seen["ls " + str(home)] == ["data"]
    assert seen["ls " + str(tmp_path)] == sorted(["home", "ws"])
    prefixes = [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, ws)]
    allowed = TOP_LEVEL | {p.strip("/").split("/")[0] for p in prefixes}
    assert set(seen["ls /"]) <= allowed, seen["ls /"]
    # The checkout shows at most the virtualenv inside it.
    venv = os.path.realpath(sys.prefix)
    if venv.startswith(str(REPO) + "/"):
        assert seen["ls " + str(REPO)] == [venv[len(str(REPO)) + 1:].split("/")[0]]
    else:
        assert seen["ls " + str(REPO)] == "FileNotFoundError"
    # /root, /home, ... only where the Python installation lives below them.
    for top in ("/root", "/home", "/run", "/var", "/mnt"):
        if not any(p.startswith(top + "/") for p in prefixes):
            assert seen["ls " + top] == "FileNotFoundError", (top, seen["ls " + top])
    if sys.base_prefix.startswith("/root/"):
        assert seen["ls /root"] == [sys.base_prefix.split("/")[2]]
    assert any(item.startswith("allowlist-root") for item in result.isolation)
    assert (data / "val.bin").read_bytes() == b"VALIDATION"


@needs_mountns
def test_revealed_paths_keep_their_symlinked_names_and_hide_paths_still_cover(tmp_path, ws):
    real = tmp_path / "real"
    real.mkdir()
    (real / "data.bin").write_bytes(b"DATA")
    (tmp_path / "alias").symlink_to(real)
    (ws / "secret.txt").write_text("inside the workspace, but hidden")
    (ws / "sub").mkdir()
    (ws / "sub" / "k").write_text("hidden dir")
    probe = f"""
        import json, os
        out = {{}}
        for p in [{str(tmp_path / "alias" / "data.bin")!r}, "secret.txt", "sub/k"]:
            try:
                out[p] = open(p).read()
            except OSError as e:
                out[p] = type(e).__name__
        out["link"] = os.readlink({str(tmp_path / "alias")!r})
        print(json.dumps(out))
    """
    seen = last_json(run_code(probe, ws, reveal_paths=[tmp_path / "alias" / "data.bin"],
                              hide_paths=[ws / "secret.txt", ws / "sub"]))
    assert seen[str(tmp_path / "alias" / "data.bin")] == "DATA"
    assert seen["link"] == str(real)
    assert seen["secret.txt"] == ""  # covered by an empty file
    assert seen["sub/k"] == "FileNotFoundError"  # covered by an empty tmpfs
    assert (ws / "secret.txt").read_text() == "inside the workspace, but hidden"


@needs_mountns
def test_a_program_outside_the_allowlist_is_a_setup_error(tmp_path, ws):
    tools = tmp_path / "tools"
    tools.mkdir()
    shutil.copy("/bin/true", tools / "true")
    with pytest.raises(SandboxError, match="does not exist in the sandbox"):
        run_sandboxed([str(tools / "true")], cwd=ws, wall_limit_s=20, mem_limit_mb=500)
    result = run_sandboxed([str(tools / "true")], cwd=ws, wall_limit_s=20, mem_limit_mb=500,
                           reveal_paths=[tools])
    assert result.returncode == 0


@needs_mountns
def test_filesystem_is_read_only_except_the_workspace(tmp_path, ws):
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = Path(__file__).resolve().parent.parent
    probe = f"""
        import json
        out = {{}}
        for p in ["out.txt", {str(outside / "x")!r}, {str(repo / "sandbox-escape.txt")!r},
                  "/etc/sandbox-escape", "/usr/sandbox-escape", "/sandbox-escape",
                  "/tmp/scratch.txt", "/dev/shm/scratch.txt"]:
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
    assert seen["/dev/shm/scratch.txt"] == "written"
    for path in (str(outside / "x"), str(repo / "sandbox-escape.txt"), "/etc/sandbox-escape",
                 "/usr/sandbox-escape", "/sandbox-escape"):
        assert seen[path] in ("FileNotFoundError", "OSError", "PermissionError"), (path, seen[path])
    assert (ws / "out.txt").read_text() == "x"
    assert not (repo / "sandbox-escape.txt").exists()
    assert not Path("/tmp/scratch.txt").exists() and not Path("/dev/shm/scratch.txt").exists()


@needs_mountns
def test_proc_and_sys_keep_their_mounts_so_cuda_can_start(ws):
    """CUDA fails to initialise (error 304) under read-only /proc and /sys mounts; the
    rest of the tree stays read-only, and the files there keep their permissions."""
    probe = """
        import json, os
        flags = {p: bool(os.statvfs(p).f_flag & os.ST_RDONLY)
                 for p in ("/", "/usr", "/proc", "/sys")}
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

    result = run_code(code, ws, wall_limit_s=3, on_line=on_line)  # the child never exits
    assert result.timed_out and result.returncode == -signal.SIGKILL
    assert result.wall_s >= 3  # not before the limit
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


# The disk watchdog: a child may not fill the node's disk through its writable directories.
SPAWN_SLEEPER = """
    import os
    if os.fork() == 0:  # a descendant that must not outlive the kill
        os.execv("/bin/sleep", ["sleep", {marker!r}])
"""


def _disk_hog(marker: str, body: str) -> str:
    return textwrap.dedent(SPAWN_SLEEPER.format(marker=marker)) + textwrap.dedent(body) + \
        "\nimport time\nprint('written', flush=True)\ntime.sleep(3600)\n"


def _assert_killed_for_disk(result, marker: str, limit_mb: int) -> None:
    assert result.disk_exceeded, result
    assert not result.timed_out and not result.mem_exceeded and not result.cancelled
    assert result.returncode == -signal.SIGKILL
    assert result.wall_s < 20  # long before the wall limit
    assert f"disk-limit:{limit_mb}MB" in result.isolation
    assert "status-channel-tampered" not in result.isolation
    assert _pids_with(marker) == []  # the whole family is gone


def test_disk_watchdog_kills_a_child_that_fills_its_workspace(ws):
    marker = f"{4000 + random.random():.9f}"
    code = _disk_hog(marker, """
        os.makedirs("out/deep", exist_ok=True)
        for i in range(8):  # 64 MiB in all, each file under RLIMIT_FSIZE (10 MiB)
            with open(f"out/deep/chunk{i}.bin" if i % 2 else f"chunk{i}.bin", "wb") as f:
                f.write(os.urandom(8 * 2**20))
    """)
    result = run_code(code, ws, disk_limit_mb=24, max_file_mb=10, wall_limit_s=60)
    _assert_killed_for_disk(result, marker, 24)
    assert result.peak_disk_mb >= 24
    sizes = [p.stat().st_size for p in ws.rglob("chunk*.bin")]
    assert sizes and max(sizes) <= 10 * 2**20  # no single file broke RLIMIT_FSIZE


def test_disk_watchdog_kills_a_flood_of_empty_files(ws, monkeypatch):
    monkeypatch.setattr(sandbox, "DISK_MAX_ENTRIES", 500)  # the real cap is 200,000
    marker = f"{5000 + random.random():.9f}"
    code = _disk_hog(marker, """
        os.makedirs("many")
        for i in range(3000):
            open(f"many/{i}", "wb").close()
    """)
    result = run_code(code, ws, disk_limit_mb=1000, wall_limit_s=60)
    _assert_killed_for_disk(result, marker, 1000)
    assert result.peak_disk_mb < 1000  # killed for the count, not the bytes


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="open descriptors are read from /proc")
def test_disk_watchdog_counts_deleted_files_still_held_open(ws):
    marker = f"{6000 + random.random():.9f}"
    code = _disk_hog(marker, """
        hidden = open("hidden.bin", "wb")
        os.unlink("hidden.bin")  # nothing left to find in the tree
        for _ in range(5):
            hidden.write(os.urandom(8 * 2**20))
        hidden.flush()
    """)
    result = run_code(code, ws, disk_limit_mb=24, wall_limit_s=60)
    _assert_killed_for_disk(result, marker, 24)
    assert not (ws / "hidden.bin").exists()


def test_disk_watchdog_checks_once_more_after_the_child_exits(ws, monkeypatch):
    monkeypatch.setattr(sandbox, "DISK_EVERY_S", 3600)  # no scan while it runs
    code = """
        import os
        with open("big.bin", "wb") as f:
            f.write(os.urandom(30 * 2**20))
    """
    result = run_code(code, ws, disk_limit_mb=20)
    assert result.returncode == 0 and result.disk_exceeded and result.peak_disk_mb > 20


def test_disk_watchdog_leaves_an_honest_child_alone(ws):
    code = """
        import os, time
        os.makedirs("out")
        with open("out/model.pt", "wb") as f:
            f.write(os.urandom(3 * 2**20))
        time.sleep(2.5)  # two scans or more find it under the limit
        print("done")
    """
    result = run_code(code, ws, disk_limit_mb=50)
    assert result.returncode == 0 and result.log_tail == "done\n"
    assert not result.disk_exceeded and not result.timed_out
    assert 3 <= result.peak_disk_mb < 50
    assert "disk-limit:50MB" in result.isolation
    unlimited = run_code("print('x')", ws, disk_limit_mb=None)
    assert unlimited.returncode == 0 and "no-disk-limit" in unlimited.isolation
    assert not unlimited.disk_exceeded and unlimited.peak_disk_mb == 0
    for bad in (0, -5, True, "10"):
        with pytest.raises(ValueError, match="disk_limit_mb"):
            run_code("pass", ws, disk_limit_mb=bad)


def test_disk_scan_counts_what_fills_the_disk_and_follows_no_link(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "f").write_bytes(b"x" * 3_000_000)
    os.link(root / "a" / "f", root / "a" / "b" / "hard")  # counted once
    with open(root / "a" / "sparse", "wb") as f:
        f.truncate(50_000_000)  # counted at its size: a sparse file cannot hide
    big = tmp_path / "elsewhere"
    big.mkdir()
    (big / "g").write_bytes(b"y" * 5_000_000)
    os.symlink(big, root / "a" / "link")  # never followed
    usage = sandbox._disk_usage([str(root)], 10**12)
    assert usage.cut is None and usage.entries == 7
    assert 53_000_000 <= usage.bytes < 53_100_000
    # a writable path inside another is scanned once
    assert sandbox._disk_roots([root, root / "a", tmp_path / "missing"]) == [str(root)]
    usage = sandbox._disk_usage([str(root)], 10_000_000)
    assert usage.cut == "more than 9 MB"
    deep = root / "d"
    deep.mkdir()
    for _ in range(8):
        deep = deep / "d"
        deep.mkdir()
    monkeypatch.setattr(sandbox, "DISK_MAX_DEPTH", 5)
    assert "deep" in sandbox._disk_usage([str(root)], 10**12).cut
    monkeypatch.setattr(sandbox, "DISK_MAX_DEPTH", 64)
    monkeypatch.setattr(sandbox, "DISK_MAX_ENTRIES", 10)
    assert "entries" in sandbox._disk_usage([str(root)], 10**12).cut


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


SHM = """
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    key, mode = 0x4C4F4F50, sys.argv[1]
    if mode == "write":
        shm = libc.shmget(key, 4096, 0o1000 | 0o666)  # IPC_CREAT, readable by anyone
        addr = libc.shmat(shm, None, 0)
        ctypes.memmove(addr, b"weights of run A", 16)
        libc.shmdt(ctypes.c_void_p(addr))
        print("wrote" if shm >= 0 else "no shm")
    else:
        shm = libc.shmget(key, 0, 0)
        if shm < 0:
            print("none")
        else:
            addr = libc.shmat(shm, None, 0o10000)  # SHM_RDONLY
            print(ctypes.string_at(addr, 16))
"""


@pytest.mark.skipif(not PLAN.ipcns, reason=f"no IPC namespace here: {PLAN.notes}")
def test_shared_memory_does_not_outlive_the_child(ws):
    """A System V segment left by one experiment's child (weights to resume from, a channel
    to the export child) is gone with it; the next child finds nothing."""
    import subprocess
    wrote = run_sandboxed([sys.executable, "-c", textwrap.dedent(SHM), "write"], cwd=ws,
                          wall_limit_s=30, mem_limit_mb=2000)
    try:
        assert wrote.log_tail.strip() == "wrote", wrote.log_tail
        read = run_sandboxed([sys.executable, "-c", textwrap.dedent(SHM), "read"], cwd=ws,
                             wall_limit_s=30, mem_limit_mb=2000)
        assert read.log_tail.strip() == "none", read.log_tail
    finally:  # a failing run must not leave the segment on the machine
        subprocess.run(["ipcrm", "-M", str(0x4C4F4F50)], capture_output=True)


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
    result = run_code("import time; time.sleep(60)", ws, cancel=cancel)
    assert result.cancelled and not result.timed_out  # stopped, not run out


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
    (home / "runs" / "r1" / "secret").write_bytes(b"")
    ops = mount_ops(reveal=[home / "data" / "train.bin"], writable=[home / "runs" / "r1"],
                    hide=[home, home / "runs" / "r1" / "secret"])
    kinds = {path: kind for path, kind, _ in ops}
    assert str(home) not in kinds  # outside the allowlist anyway: nothing to cover
    assert kinds[str(home / "data" / "train.bin")] == "ro"
    assert kinds[str(home / "runs" / "r1")] == "rw"
    assert kinds[str(home / "runs" / "r1" / "secret")] == "hide"  # inside something shown
    order = [path for path, _, _ in ops]
    rw, secret = str(home / "runs" / "r1"), str(home / "runs" / "r1" / "secret")
    assert order.index(rw) < order.index(secret)
    assert kinds["/tmp"] == "scratch" and kinds["/proc"] == "kernel" and kinds["/dev"] == "ro"
    assert kinds[os.path.realpath(sys.base_prefix)] == "ro" or any(
        kind == "ro" and os.path.realpath(sys.base_prefix).startswith(path + "/")
        for path, kind in kinds.items())
    # Never the checkout itself (the virtualenv inside it is fine); nothing twice.
    assert all(not (kind in ("ro", "rw") and str(REPO).startswith(path) and path != "/")
               for path, kind in kinds.items())
    assert str(REPO) not in kinds or kinds[str(REPO)] == "hide"
    assert len(order) == len(set(order))
    # Symbolic links on the way are recreated (merged /usr: /bin -> usr/bin).
    for top in ("/bin", "/lib"):
        if os.path.islink(top):
            assert (top, "link", os.readlink(top)) in ops
    with pytest.raises(ValueError, match="both hidden and revealed"):
        mount_ops(reveal=[home], hide=[home])
    with pytest.raises(ValueError):
        mount_ops(hide=["/"])
    with pytest.raises(TypeError):
        mount_ops([home], [], [])  # keyword-only: the old positional order is gone


def test_implicit_reveals_stay_out_of_hidden_paths(monkeypatch, tmp_path):
    lib = tmp_path / "secret" / "lib"
    lib.mkdir(parents=True)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{lib}:relative/dir:/:/usr/..:{tmp_path / 'loop'}")
    kinds = {path: kind for path, kind, _ in mount_ops()}
    assert kinds.get(str(lib)) == "ro"
    kinds = {path: kind for path, kind, _ in mount_ops(hide=[tmp_path / "secret"])}
    assert str(lib) not in kinds and "relative/dir" not in kinds


def test_resolve_reports_the_links_it_follows(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    (tmp_path / "b").symlink_to("a")
    (tmp_path / "c").symlink_to(tmp_path / "b" / "f")
    links = []
    assert sandbox._resolve(str(tmp_path / "c"), links) == os.path.realpath(tmp_path / "c")
    assert links == [(str(tmp_path / "c"), str(tmp_path / "b" / "f")), (str(tmp_path / "b"), "a")]
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ValueError, match="too many levels"):
        sandbox._resolve(str(tmp_path / "loop"), [])


def test_a_failing_mount_setup_falls_back_and_says_so(monkeypatch):
    full = sandbox.IsolationPlan(("/usr/bin/unshare", "--net", "--mount", "--pid", "--fork",
                                  "--kill-child", "--mount-proc", "--"), True, True, True, False,
                                 privdrop=True, ipcns=True)
    monkeypatch.setattr(sandbox, "_namespaces_plan", lambda: full)
    monkeypatch.setattr(sandbox, "_trial", lambda plan: "mount: Operation not permitted")
    plan = sandbox._detect_plan()
    assert plan.unshare == ("/usr/bin/unshare", "--net", "--")
    assert plan.netns and not plan.mountns and not plan.pidns and not plan.complete
    assert "no-mountns (set-up failed: mount: Operation not permitted)" in plan.features()
    assert missing_isolation(plan) == [
        "no allowlist root (mount namespace): set-up failed: mount: Operation not permitted",
        "no PID namespace: needs the mount namespace",
        "no privilege drop: root keeps its uid without a mount namespace"]


# --- the control channel -------------------------------------------------------------------

FORGE = r"""
    import json, os, sys
    out = {"wrote": [], "denied": [], "pids": sorted(p for p in os.listdir("/proc") if p.isdigit())}
    targets = {"1", str(os.getppid())} | set(out["pids"])
    targets.discard(str(os.getpid()))
    for pid in sorted(targets):
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError as e:
            out["denied"].append(f"ls /proc/{pid}/fd: {type(e).__name__}")
            names = [str(n) for n in range(64)]
        for name in names:
            path = f"/proc/{pid}/fd/{name}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if pid == "1" and names != [str(n) for n in range(64)]:
                    out["denied"].append(f"open {path}: {type(e).__name__}")
                continue
            try:
                os.write(fd, b'{"exit": 0}\n{"error": "forged"}\n')
                out["wrote"].append(path)
            except OSError:
                pass
            finally:
                os.close(fd)
    for fd in range(3, 256):  # anything inherited?
        try:
            os.write(fd, b'{"exit": 0}\n')
            out["wrote"].append(f"own fd {fd}")
        except OSError:
            pass
    # Control: the technique works where permitted (a pipe of our own, reopened by /proc).
    a, b = os.pipe()
    fd = os.open(f"/proc/{os.getpid()}/fd/{b}", os.O_WRONLY)
    os.write(fd, b"control")
    out["control"] = os.read(a, 100).decode()
    print(json.dumps(out), flush=True)
    sys.exit(7)
"""


def _forge(plan, ws):
    result = sandbox._run(plan, [sys.executable, "-c", textwrap.dedent(FORGE)], cwd=ws,
                          env=None, wall_limit_s=60, mem_limit_mb=2000)
    seen = last_json(result)
    assert seen["control"] == "control"  # reopening through /proc/<pid>/fd works when allowed
    assert seen["wrote"] == [], seen
    assert result.returncode == 7, result
    assert "status-channel-tampered" not in result.isolation
    return seen, result


@needs_pidns
def test_child_cannot_forge_the_status_as_nobody(ws):
    if os.geteuid() != 0 or PLAN.userns:
        pytest.skip("the root -> uid 65534 path needs root")
    seen, result = _forge(PLAN, ws)
    assert "uid:65534" in result.isolation
    assert seen["pids"] == ["1", "2"]
    assert any(d.startswith("ls /proc/1/fd") for d in seen["denied"])


def _userns_plan() -> IsolationPlan:
    tool = shutil.which("unshare")
    argv = [tool, "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork",
            "--kill-child", "--mount-proc"] if tool else []
    if not tool or not sandbox._probe(argv):
        pytest.skip("no user namespaces here: unshare --user not permitted")
    return IsolationPlan(tuple(argv + ["--"]), True, True, True, True, privdrop=True,
                         ipcns=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux namespaces")
def test_child_cannot_forge_the_status_in_a_user_namespace(ws):
    """Launcher and child share a uid here: only the fork-then-drop order, the
    non-dumpable launcher and the closed descriptors keep the child out."""
    seen, result = _forge(_userns_plan(), ws)
    assert "userns" in result.isolation and "no-caps" in result.isolation
    assert "uid:65534" not in result.isolation
    assert seen["pids"] == ["1", "2"]
    # The launcher's fd directory may be listed (it belongs to root of the namespace), but
    # no descriptor in it can be opened: it is not dumpable and the child has no caps.
    status_fds = [d for d in seen["denied"] if d.startswith("open /proc/1/fd/")
                  and int(d.split("/")[4].split(":")[0]) >= 3]
    assert status_fds and all(d.endswith("PermissionError") for d in status_fds), seen


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"),
                    reason="switching to uid 65534 in a private mount namespace needs root")
def test_as_an_ordinary_user_the_sandbox_is_complete_and_its_channel_safe():
    import tempfile

    look = f"""
        import json, os
        print(json.dumps({{"root": sorted(os.listdir("/")), "uid": os.getuid(),
                          "caps": [l.split()[1] for l in open("/proc/self/status")
                                   if l.startswith("CapEff")][0],
                          "repo": sorted(os.listdir({str(REPO)!r}))
                          if os.path.isdir({str(REPO)!r}) else None}}))
    """
    base = tempfile.mkdtemp(prefix="loopy-nonroot-")  # pytest's tmp_path is 0700
    try:
        os.chmod(base, 0o755)
        scenarios = Path(base) / "scenarios.json"
        scenarios.write_text(json.dumps({"forge": textwrap.dedent(FORGE),
                                         "look": textwrap.dedent(look)}))
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--",
                               sys.executable, str(REPO / "tests" / "sandbox_nonroot_helper.py"),
                               base, str(scenarios)], capture_output=True, text=True,
                              timeout=300)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    assert out["plan"] == {"complete": True, "userns": True, "uid": 65534}
    forge = out["scenarios"]["forge"]
    assert forge.get("returncode") == 7, forge
    assert "status-channel-tampered" not in forge["isolation"]
    seen = json.loads([x for x in forge["tail"].splitlines() if x.startswith("{")][-1])
    assert seen["control"] == "control" and seen["wrote"] == [], seen
    assert seen["pids"] == ["1", "2"]
    status_fds = [d for d in seen["denied"] if d.startswith("open /proc/1/fd/")]
    assert status_fds and all(d.endswith("PermissionError") for d in status_fds), seen
    look = out["scenarios"]["look"]
    assert look.get("returncode") == 0, look
    view = json.loads(look["tail"].strip().splitlines()[-1])
    assert int(view["caps"], 16) == 0 and view["uid"] == 0  # root in its namespace, no caps
    prefixes = [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, base)]
    assert set(view["root"]) <= TOP_LEVEL | {p.strip("/").split("/")[0] for p in prefixes}
    assert view["repo"] in (None, [".venv"], [os.path.basename(os.path.realpath(sys.prefix))])
    assert "allowlist-root" in look["isolation"] and "userns" in look["isolation"]


def _status(*items, raw: bytes = b"") -> sandbox._Status:
    return sandbox._parse_status(b"".join(json.dumps(i).encode() + b"\n" for i in items) + raw)


def test_forged_or_malformed_status_streams_never_raise():
    outcome = sandbox._outcome
    feats = {"features": ["mountns"]}
    # The genuine streams.
    assert outcome(_status(feats, {"exit": 3}), 3, stopped=False, init_is_safe=True) == (
        3, ["mountns"])
    assert outcome(_status(feats, {"exit": -11}), 139, stopped=False, init_is_safe=True)[0] == -11
    with pytest.raises(SandboxError, match="boom"):
        outcome(_status({"error": "boom"}), sandbox.SETUP_FAILED, stopped=False, init_is_safe=True)
    with pytest.raises(SandboxError, match="before starting the child"):
        outcome(_status(), 1, stopped=False, init_is_safe=True)
    # Forgeries: each is the child's failure with its real status, flagged, never a raise.
    forged = [
        (_status(feats, {"exit": 0}, {"exit": 0}), 3),  # a duplicate exit
        (_status(feats, {"exit": 0}), 3),  # an exit the launcher's own status contradicts
        (_status(feats, {"error": "forged"}, {"exit": 3}), 3),  # an error after features
        (_status({"error": "forged"}), 0),  # an error the launcher's exit does not confirm
        (_status({"error": "forged"}, feats, {"exit": 3}), 3),  # an error first, then more
        (_status({"exit": 0}, feats), 3),  # an exit first
        (_status(raw=b"\xff\xfe not json\n"), 3),
        (_status(feats, {"exit": True}), 1),
        (_status(feats, raw=b'{"exit": 0'), 3),  # an unterminated line
        (_status({"features": "x", "exit": 0}), 3),
    ]
    for status, launcher in forged:
        code, notes = outcome(status, launcher, stopped=False, init_is_safe=True)
        assert code == launcher and "status-channel-tampered" in notes, (status, code, notes)
    # Killed by us before any report: a timeout, not a set-up error.
    assert outcome(_status(), -9, stopped=True, init_is_safe=True) == (-9, ["no-launcher-report"])
    # Without a PID namespace a child could kill the launcher: no report is not an error.
    assert outcome(_status(), -9, stopped=False, init_is_safe=False)[0] == -9


def test_the_status_reader_keeps_a_bounded_prefix():
    r, w = os.pipe()
    sink = []
    reader = threading.Thread(target=sandbox._read_all, args=(r, sink, 1000))
    reader.start()
    for _ in range(100):
        os.write(w, b"x" * 10000)
    os.close(w)
    reader.join(timeout=10)
    assert not reader.is_alive() and len(b"".join(sink)) == 1000


# --- pass_fds and deadline -----------------------------------------------------------------


def test_pass_fds_are_inherited_under_their_numbers_and_nothing_else(ws):
    r, w = os.pipe()
    other_r, other_w = os.pipe()  # open here, not passed
    code = f"""
        import os
        os.write({w}, b"through the pipe")
        leaked = []
        for fd in range(3, 256):
            try:
                os.fstat(fd)
                if fd != {w}:
                    leaked.append(fd)
            except OSError:
                pass
        print("leaked", leaked)
    """
    started = []
    try:
        result = run_code(code, ws, pass_fds=[w], on_start=lambda: started.append(os.close(w)))
        got = os.read(r, 100)
        assert os.read(r, 100) == b""  # EOF: no sandbox process kept the write end
    finally:
        for fd in (r, other_r, other_w):
            os.close(fd)
    assert started == [None]  # called once: our copy was closed while the child ran
    assert result.returncode == 0, result.log_tail
    assert got == b"through the pipe"
    assert result.log_tail.strip() == "leaked []"
    with pytest.raises(ValueError, match=">= 3"):
        run_code("pass", ws, pass_fds=[1])
    with pytest.raises(ValueError, match="not open"):
        run_code("pass", ws, pass_fds=[other_w])


def test_deadline_stops_the_child_before_the_wall_limit(ws):
    # the child and the wall limit both outlast any test run: only the deadline can stop it
    start = time.monotonic()
    result = run_code("import time; time.sleep(3600)", ws, wall_limit_s=3600,
                      deadline=lambda: start + 1.0)
    assert result.timed_out and result.returncode == -signal.SIGKILL
    assert result.wall_s > 0.9  # not before the deadline


def test_deadline_moves_and_none_means_only_the_wall_limit(ws):
    start = time.monotonic()
    answers = {"value": None}

    def deadline():
        if time.monotonic() - start > 0.5:
            answers["value"] = start + 1.5  # set while the child runs
        return answers["value"]

    result = run_code("import time; time.sleep(3600)", ws, wall_limit_s=3600, deadline=deadline)
    assert result.timed_out and result.wall_s > 1.4  # the moved deadline, not the first poll
    result = run_code("import time; time.sleep(3600)", ws, wall_limit_s=1.5,
                      deadline=lambda: time.monotonic() + 3600)
    assert result.timed_out and result.wall_s >= 1.5  # the wall limit stopped it
    result = run_code("print('done')", ws, deadline=lambda: None)
    assert result.returncode == 0 and not result.timed_out
    with pytest.raises(ValueError, match="callable"):
        run_code("pass", ws, deadline=5.0)


def test_a_failing_deadline_kills_the_child_and_propagates(ws):
    marker = f"{2000 + random.random():.9f}"
    calls = {"n": 0}

    def deadline():
        calls["n"] += 1
        if calls["n"] > 20:
            raise RuntimeError("clock broke")
        return None

    with pytest.raises(RuntimeError, match="clock broke"):
        run_code(f"import os; os.execv('/bin/sleep', ['sleep', {marker!r}])", ws,
                 deadline=deadline)
    assert _pids_with(marker) == []


def test_a_failing_on_start_kills_the_child_and_propagates(ws):
    marker = f"{3000 + random.random():.9f}"

    def on_start():
        time.sleep(0.5)
        raise RuntimeError("caller broke")

    with pytest.raises(RuntimeError, match="caller broke"):
        run_code(f"import os; os.execv('/bin/sleep', ['sleep', {marker!r}])", ws,
                 on_start=on_start)
    assert _pids_with(marker) == []

"""Run one untrusted child process with the isolation this OS allows, and say what it was.

`run_sandboxed(argv, cwd=..., wall_limit_s=..., mem_limit_mb=..., ...)` starts the child,
streams its output lines to a callback, enforces the limits and returns a `ChildResult`
whose `isolation` list names every layer that was actually in force for that run
(e.g. `netns`, `pidns`, `mountns`, `hidden-paths:3`, `readonly-fs`, `uid:65534`).
It is synchronous and thread-safe (no preexec_fn): the node calls it via trio.to_thread.

What the isolation covers (Linux with util-linux `unshare`, as root or with user namespaces):
- Network: a new network namespace with only a downed loopback, so no connection to the
  internet, the LAN or this machine's 127.0.0.1 services (including the node's own ports).
- Processes: its own session and process group, and a new PID namespace (the child sees
  and can signal only its own processes; when the sandbox's init dies the kernel kills
  every process in it, so nothing escapes the kill by calling setsid or double-forking).
- Files: a private mount namespace in which
  - every `hide_paths` entry (the node's home with its keys and store, the validation
    data, the raw corpus) and the usual secret places (/root, /home, the caller's ~, /run
    with its sockets, /mnt, /media) are covered by an empty tmpfs (directories) or an
    empty file (files);
  - `reveal_paths` (read-only) and `writable_paths` (read-write: the workspace) are
    bind-mounted back from the original tree, as are the Python installation and the
    Loopy checkout;
  - the whole tree is read-only except the writable paths, a fresh, size-capped tmpfs
    on /tmp, /var/tmp and /dev/shm, and /proc and /sys (CUDA cannot start with them
    read-only; their files keep their own permissions).
- Privileges: as root the child runs as uid/gid 65534 (nobody) with no groups; otherwise
  with every capability dropped (bounding set, ambient, effective), `no_new_privs`, and
  root's special-casing of capabilities locked off (securebits).
- Resources: a wall-clock limit (SIGKILL to the whole group), a parent-side watchdog that
  sums the resident memory of every process of the child (read from /proc) and kills at
  the limit, RLIMIT_AS (optional: CUDA needs a huge virtual address space, so CPU only),
  RLIMIT_CORE 0, RLIMIT_NOFILE and RLIMIT_FSIZE.
- Environment: scrubbed to PATH, HOME (= the workspace), LANG, TMPDIR, PYTHONPATH and the
  few variables the caller names from an allowlist (thread counts, LOOPY_RUN_CONFIG,
  CUDA_VISIBLE_DEVICES); plus, from the node, the library paths CUDA needs.
- Cleanup: whatever happens (timeout, memory, an exception in the caller) the process
  group, the namespace and any descendant still found are killed with SIGKILL in a
  `finally`; no orphan outlives the call.

What it does NOT cover (said plainly):
- No seccomp filter: every system call is available to the child; the kernel itself is
  the attack surface (a kernel exploit escapes everything above).
- No cgroups: no CPU share, no PID-count limit (a fork bomb is bounded only by the memory
  watchdog, the wall limit and the PID namespace's teardown), no disk quota (RLIMIT_FSIZE
  caps each file, not the total written to the workspace), and tmpfs pages on the private
  /tmp are not counted by the memory watchdog (they are size-capped instead).
- GPU devices are shared with the host: the child can use (and exhaust) the GPU memory,
  and GPU driver bugs are not contained.
- Whatever is readable under the uid the child runs as and not hidden stays readable
  (system files such as /etc, the Python installation, the Loopy checkout minus hidden
  paths): secrets belong in the hidden places.
- Without root or user namespaces (macOS, hardened kernels, containers without
  CAP_SYS_ADMIN) the namespaces are missing: `isolation` then says e.g.
  `no-netns (unshare unavailable)`, hidden paths stay readable and only the resource
  limits, the process group and the scrubbed environment remain. The same happens,
  with `no-mountns (set-up failed: ...)`, where `unshare` works but mounting inside it
  does not (checked once per process by a trial run); on kernels before 5.12 the tree
  stays writable where permissions allow (`no-readonly-fs`). Callers decide whether
  that is acceptable; the harness records the list with every result. Once a plan is
  chosen, a run whose set-up fails raises SandboxError instead of running unprotected.
- Information can still leave through what the caller publishes: the exit status, the
  output lines and files in the writable paths are the child's to choose.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

NOBODY = 65534
TAIL_CHARS = 4096
MAX_LINE_BYTES = 64 * 1024  # longer output lines are split: memory stays bounded
POLL_S = 0.02
RSS_EVERY_S = 0.25  # a /proc scan per sample: cheap, but not free on a busy host
SCRATCH_PATHS = ("/tmp", "/var/tmp", "/dev/shm")
KERNEL_FILESYSTEMS = ("/proc", "/sys")  # stay as mounted: see _setup_mounts
DEFAULT_HIDDEN = ("/root", "/home", "/run", "/mnt", "/media")
# Variables callers may set; everything else from the caller is a programming error.
ALLOWED_ENV = frozenset({
    "PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "PYTHONHASHSEED", "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LOOPY_RUN_CONFIG", "CUDA_VISIBLE_DEVICES",
    "CUBLAS_WORKSPACE_CONFIG", "PYTORCH_ENABLE_MPS_FALLBACK", "TMPDIR",
})
# Taken from the node's own environment when set: where the GPU driver libraries live.
PASSTHROUGH_ENV = ("LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "TRITON_LIBCUDA_PATH",
                   "TRITON_PTXAS_PATH", "NVIDIA_DRIVER_CAPABILITIES")
SETUP_FAILED = 125  # the launcher's exit status when it could not set the sandbox up


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up: the node's problem, never the child's."""


@dataclass
class ChildResult:
    returncode: int | None  # negative: killed by that signal
    timed_out: bool
    mem_exceeded: bool
    wall_s: float
    peak_rss_mb: float
    log_tail: str
    isolation: list[str] = field(default_factory=list)
    cancelled: bool = False  # the caller's cancel event stopped it


# ---------------------------------------------------------------------------------------------
# What this OS allows: probed once per process


@dataclass(frozen=True)
class IsolationPlan:
    unshare: tuple[str, ...]  # argv prefix; empty when no namespace is available
    netns: bool
    mountns: bool
    pidns: bool
    userns: bool
    notes: tuple[str, ...] = ()

    def features(self) -> list[str]:
        out = [name for name, on in (("netns", self.netns), ("pidns", self.pidns),
                                     ("userns", self.userns)) if on]
        return out + list(self.notes)


_plan: IsolationPlan | None = None
_plan_lock = threading.Lock()


def _probe(argv: list[str]) -> bool:
    try:
        done = subprocess.run(argv + ["true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def isolation_plan() -> IsolationPlan:
    """The strongest namespace set `unshare` can create here (probed once, then cached)."""
    global _plan
    with _plan_lock:
        if _plan is None:
            _plan = _detect_plan()
        return _plan


def _trial(plan: IsolationPlan) -> str | None:
    """Run /bin/true under `plan` with a hidden directory; None if it works, else why not."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="loopy-sandbox-probe-") as tmp:
        os.makedirs(os.path.join(tmp, "work"))
        os.makedirs(os.path.join(tmp, "hidden"))
        try:
            result = _run(plan, ["/bin/true"], cwd=os.path.join(tmp, "work"), env=None,
                          wall_limit_s=20, mem_limit_mb=512,
                          hide_paths=[os.path.join(tmp, "hidden")])
        except (SandboxError, OSError, ValueError) as e:
            return str(e)
        return None if result.returncode == 0 else f"exit status {result.returncode}"


def _detect_plan() -> IsolationPlan:
    plan = _namespaces_plan()
    if plan.mountns:  # unshare works; check the mount set-up inside it works too
        why = _trial(plan)
        if why is not None:
            log.warning("sandbox: mount namespace set-up failed (%s); running without it", why)
            argv = [a for a in plan.unshare if a not in ("--mount", "--mount-proc", "--pid",
                                                        "--fork", "--kill-child")]
            plan = IsolationPlan(tuple(argv), plan.netns, False, False, plan.userns,
                                 plan.notes + (f"no-mountns (set-up failed: {why[:120]})",
                                               "no-pidns (needs the mount namespace)"))
    return plan


def _namespaces_plan() -> IsolationPlan:
    if not sys.platform.startswith("linux"):
        return IsolationPlan((), False, False, False, False,
                             (f"no-namespaces ({sys.platform})",))
    tool = shutil.which("unshare")
    if tool is None:
        return IsolationPlan((), False, False, False, False,
                             ("no-netns (unshare unavailable)", "no-mountns (unshare unavailable)"))
    pid_flags = ["--pid", "--fork", "--kill-child", "--mount-proc"]
    user_modes = ([[]] if os.geteuid() == 0 else []) + [["--user", "--map-root-user"]]
    for user in user_modes:
        for flags, mount, pid in ((["--net", "--mount"] + pid_flags, True, True),
                                  (["--net", "--mount"], True, False),
                                  (["--net"], False, False)):
            argv = [tool] + user + flags
            if _probe(argv):
                notes = [] if mount else ["no-mountns (unshare --mount failed)"]
                if not pid:
                    notes.append("no-pidns (unshare --pid failed)")
                return IsolationPlan(tuple(argv + ["--"]), True, mount, pid, bool(user),
                                     tuple(notes))
    return IsolationPlan((), False, False, False, False,
                         ("no-netns (unshare --net not permitted)",
                          "no-mountns (unshare --mount not permitted)"))


# ---------------------------------------------------------------------------------------------
# Parent side


def _child_env(cwd: str, extra: dict | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH") or os.defpath,
        "HOME": cwd,
        "LANG": "C.UTF-8",
        "TMPDIR": os.path.join(cwd, ".tmp"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for key in PASSTHROUGH_ENV:
        if os.environ.get(key):
            env[key] = os.environ[key]
    for key, value in (extra or {}).items():
        if key not in ALLOWED_ENV:
            raise ValueError(f"environment variable {key!r} is not allowed in the sandbox")
        env[key] = str(value)
    return env


def _implicit_reveals() -> list[str]:
    """What the child needs to run Python at all: the interpreter, its libraries, this checkout."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)),
             os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    paths += [p for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p)]
    return paths


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def mount_ops(hide: list[str], reveal: list[str], writable: list[str]) -> list[tuple[str, str]]:
    """(path, kind) in the order the launcher applies them: shallow paths first.

    kind: 'hide' (cover with an empty tmpfs or file), 'scratch' (fresh writable tmpfs),
    'ro' (bind back from the original tree, read-only), 'rw' (bind back writable).
    Explicit hides win over the implicit reveals (the interpreter, sys.path, the checkout).
    """
    def real(paths):
        out = []
        for p in paths:
            r = os.path.realpath(os.fspath(p))
            if os.path.lexists(r):
                if r == "/":
                    raise ValueError("cannot hide or reveal '/' itself")
                out.append(r)
        return out

    explicit_hide, explicit_reveal, explicit_rw = real(hide), real(reveal), real(writable)
    clash = set(explicit_hide) & (set(explicit_reveal) | set(explicit_rw))
    if clash:
        raise ValueError(f"path both hidden and revealed: {sorted(clash)[0]}")
    home = os.path.expanduser("~")
    default_hide = real(list(DEFAULT_HIDDEN) + ([home] if home not in ("/", "") else []))
    implicit = [p for p in real(_implicit_reveals())
                if not any(_inside(p, h) for h in explicit_hide)]
    kinds: dict[str, str] = {}
    for kind, paths in (("hide", default_hide), ("scratch", real(SCRATCH_PATHS)), ("ro", implicit),
                        ("hide", explicit_hide), ("ro", explicit_reveal), ("rw", explicit_rw)):
        for p in paths:
            kinds[p] = kind
    return sorted(kinds.items(), key=lambda item: (item[0].count("/"), item[0]))


class _Tail:
    """The last `limit` characters of the output, kept as whole lines where possible."""

    def __init__(self, limit: int):
        self.limit = limit
        self.lines: collections.deque[str] = collections.deque()
        self.size = 0
        self.lock = threading.Lock()

    def add(self, line: str) -> None:
        with self.lock:
            self.lines.append(line)
            self.size += len(line)
            while self.size > self.limit and len(self.lines) > 1:
                self.size -= len(self.lines.popleft())

    def text(self) -> str:
        with self.lock:
            return "".join(self.lines)[-self.limit:]


def _pump_output(stream, tail: _Tail, on_line) -> None:
    callback_failed = False
    for raw in iter(lambda: stream.readline(MAX_LINE_BYTES), b""):
        line = raw.decode("utf-8", "replace")
        tail.add(line)
        if on_line is not None and not callback_failed:
            try:
                on_line(line.rstrip("\r\n"))
            except Exception:  # a broken progress display must not leave the child unwatched
                log.exception("sandbox output callback failed; further lines are not passed on")
                callback_failed = True


def _read_all(fd: int, sink: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as f:
        while True:
            chunk = f.read(65536)
            if not chunk:
                return
            sink.append(chunk)


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgid) for every process, from /proc (empty where there is no /proc)."""
    table = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()
        try:
            table[int(name)] = (int(fields[1]), int(fields[2]))
        except (IndexError, ValueError):
            continue
    return table


def _family(root: int) -> set[int]:
    """`root`, its descendants and the members of its process group."""
    table = _proc_table()
    children = collections.defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    found: set[int] = set()
    stack = [root] + [pid for pid, (_, pgid) in table.items() if pgid == root]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return {pid for pid in found if pid in table}


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_mb(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total * _PAGE / 2**20


def _exited(proc: subprocess.Popen) -> bool:
    """Has the child exited? Without reaping it, so its pid (= our pgid) cannot be reused."""
    if proc.returncode is not None:
        return True
    if hasattr(os, "waitid"):
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True
    return proc.poll() is not None


def _kill_everything(proc: subprocess.Popen, family: set[int]) -> None:
    for kill, target in [(os.killpg, proc.pid)] + [(os.kill, pid) for pid in sorted(family)]:
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def alive(pid: int) -> bool:
    """Is `pid` a live process (not gone, not a zombie)? Linux /proc; else os.kill(pid, 0)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rfind(b")") + 2:][:1] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def _wait_gone(pids: set[int], timeout: float) -> None:
    """Wait until every killed process has really exited (a dying PID namespace takes a moment)."""
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if alive(pid)}
        if left:
            time.sleep(0.01)
    if left:
        log.warning("sandbox: processes %s survived SIGKILL for %.1f s", sorted(left), timeout)


def run_sandboxed(argv: list[str], *, cwd, env: dict | None = None, wall_limit_s: float,
                  mem_limit_mb: float, hide_paths=(), reveal_paths=(), writable_paths=(),
                  rlimit_as_mb: int | None = None, max_file_mb: int = 8192,
                  max_open_files: int = 1024, on_line=None, cancel=None,
                  tail_chars: int = TAIL_CHARS) -> ChildResult:
    """Run `argv` in `cwd` (writable) under the isolation described in the module docstring.

    `hide_paths` are covered, `reveal_paths` (inside hidden ones) shown read-only and
    `writable_paths` (besides cwd) writable. `on_line(str)` gets each output line (stdout
    and stderr merged) from a reader thread. Setting `cancel` (a threading.Event) kills
    the child at once (`cancelled=True`). Raises SandboxError if the sandbox could not
    be set up as planned (fail closed), ValueError on bad arguments.
    """
    return _run(isolation_plan(), argv, cwd=cwd, env=env, wall_limit_s=wall_limit_s,
                mem_limit_mb=mem_limit_mb, hide_paths=hide_paths, reveal_paths=reveal_paths,
                writable_paths=writable_paths, rlimit_as_mb=rlimit_as_mb,
                max_file_mb=max_file_mb, max_open_files=max_open_files, on_line=on_line,
                cancel=cancel, tail_chars=tail_chars)


def _run(plan: IsolationPlan, argv: list[str], *, cwd, env: dict | None, wall_limit_s: float,
         mem_limit_mb: float, hide_paths=(), reveal_paths=(), writable_paths=(),
         rlimit_as_mb: int | None = None, max_file_mb: int = 8192, max_open_files: int = 1024,
         on_line=None, cancel=None, tail_chars: int = TAIL_CHARS) -> ChildResult:
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a non-empty list of strings")
    cwd = os.path.realpath(os.fspath(cwd))
    if not os.path.isdir(cwd):
        raise ValueError(f"cwd {cwd} is not a directory")
    if not wall_limit_s > 0 or not mem_limit_mb > 0:
        raise ValueError("wall_limit_s and mem_limit_mb must be positive")
    child_env = _child_env(cwd, env)
    os.makedirs(child_env["TMPDIR"], exist_ok=True)
    exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0], path=child_env["PATH"])
    if exe is None:
        raise ValueError(f"executable {argv[0]!r} not found on PATH")

    writable = [cwd] + [os.fspath(p) for p in writable_paths]
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    drop_uid = NOBODY if (plan.mountns and not plan.userns and euid == 0) else None
    spec = {
        "argv": [exe] + list(argv[1:]),
        "cwd": cwd,
        "env": child_env,
        "ops": mount_ops(list(hide_paths), list(reveal_paths), writable) if plan.mountns else [],
        "scratch_mb": int(min(max(mem_limit_mb // 4, 64), 4096)),
        "drop_uid": drop_uid,
        "chown": [os.path.realpath(p) for p in writable] if drop_uid is not None else [],
        "rlimits": {"AS": rlimit_as_mb * 2**20 if rlimit_as_mb else None, "CORE": 0,
                    "NOFILE": max_open_files, "FSIZE": max_file_mb * 2**20},
    }
    isolation = plan.features()
    if not plan.mountns and hide_paths:
        isolation.append("hidden-paths-readable (no mount namespace)")

    status_r, status_w = os.pipe()
    cmd = list(plan.unshare) + [sys.executable, "-I", "-S", os.path.abspath(__file__),
                                "--launch", str(status_w), json.dumps(spec)]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd="/", env=child_env,
                                start_new_session=True, pass_fds=(status_w,))
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    tail = _Tail(tail_chars)
    status_chunks: list[bytes] = []
    threads = [threading.Thread(target=_pump_output, args=(proc.stdout, tail, on_line),
                                daemon=True),
               threading.Thread(target=_read_all, args=(status_r, status_chunks), daemon=True)]
    for t in threads:
        t.start()

    timed_out = mem_exceeded = cancelled = False
    watchdog = os.path.isdir("/proc")
    peak_mb = 0.0
    family: set[int] = set()
    deadline = start + wall_limit_s
    next_rss = start
    try:
        while not _exited(proc):
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            if watchdog and now >= next_rss:
                family = _family(proc.pid)
                rss = _rss_mb(family)
                peak_mb = max(peak_mb, rss)
                if rss > mem_limit_mb:
                    mem_exceeded = True
                    break
                next_rss = now + RSS_EVERY_S
            time.sleep(POLL_S)
    finally:
        family = _family(proc.pid) if watchdog else set()
        _kill_everything(proc, family)
        proc.wait()
        _wait_gone(family, timeout=5.0)
        wall_s = time.monotonic() - start
        for t in threads:
            t.join(timeout=2.0)
        if not threads[0].is_alive():  # else a survivor holds the pipe: closing would block
            proc.stdout.close()

    status = _parse_status(b"".join(status_chunks))
    if "error" in status:
        raise SandboxError(f"sandbox setup failed: {status['error']}")
    isolation += status.get("features", [])
    isolation += ["own-session", "scrubbed-env", "wall-limit"]
    isolation += ["rss-watchdog"] if watchdog else ["no-rss-watchdog (no /proc)"]
    returncode = status["exit"] if "exit" in status else proc.returncode
    if not watchdog:  # no samples: fall back to the largest child's peak
        import resource
        unit = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / unit
    return ChildResult(returncode=returncode, timed_out=timed_out, mem_exceeded=mem_exceeded,
                       wall_s=wall_s, peak_rss_mb=round(peak_mb, 1), log_tail=tail.text(),
                       isolation=isolation, cancelled=cancelled)


def _parse_status(data: bytes) -> dict:
    """The launcher's JSON lines merged: {'features': [...]} then {'exit': n}, or {'error': ...}."""
    status: dict = {}
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            status.update(item)
    return status


# ---------------------------------------------------------------------------------------------
# Launcher: trusted code that runs inside the namespaces, sets them up, then runs the child.
# Started as `python -I -S sandbox.py --launch <fd> <spec>`: standard library only.

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MOUNT_ATTR_RDONLY = 0x1
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (a post-5.x syscall)
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 24, 28, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT, NO_SETUID_FIXUP and KEEP_CAPS, each with its _LOCKED bit.
SECUREBITS_LOCKDOWN = 0x1 | 0x2 | 0x4 | 0x8 | 0x20
CAP_VERSION_3 = 0x20080522


class _Libc:
    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            errno = self.ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def mount(self, source, target, fstype, flags, data=None) -> None:
        enc = lambda s: s.encode() if s is not None else None  # noqa: E731
        self._check(self.libc.mount(enc(source), enc(target), enc(fstype),
                                    self.ctypes.c_ulong(flags), enc(data)), f"mount {target}")

    def set_readonly(self, path: str, readonly: bool, recursive: bool) -> None:
        ctypes = self.ctypes

        class MountAttr(ctypes.Structure):
            _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                        ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

        flag = MOUNT_ATTR_RDONLY
        attr = MountAttr(flag if readonly else 0, 0 if readonly else flag, 0, 0)
        self._check(self.libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(),
                                      AT_RECURSIVE if recursive else 0, ctypes.byref(attr),
                                      ctypes.sizeof(attr)), f"mount_setattr {path}")

    def prctl(self, option: int, arg: int = 0) -> int:
        c = self.ctypes
        result = self.libc.prctl(option, c.c_ulong(arg), c.c_ulong(0), c.c_ulong(0), c.c_ulong(0))
        return 0 if result == 0 else c.get_errno()

    def clear_capabilities(self) -> None:
        ctypes = self.ctypes

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]

        header, data = Header(CAP_VERSION_3, 0), (Data * 2)()
        self._check(self.libc.capset(ctypes.byref(header), data), "capset")


def _same_file(path: str, fd: int) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _setup_mounts(libc: _Libc, ops: list, scratch_mb: int) -> list[str]:
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)
    fds = {path: os.open(path, os.O_PATH) for path, kind in ops if kind in ("ro", "rw")}
    hidden = 0
    for path, kind in ops:
        if kind == "hide":
            if not os.path.lexists(path):  # already under an earlier cover
                continue
            if os.path.isdir(path):
                libc.mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                           "size=4m,mode=0755")
            else:
                libc.mount("/dev/null", path, None, MS_BIND)
            hidden += 1
        elif kind == "scratch":
            libc.mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV,
                       f"size={scratch_mb}m,mode=1777")
        else:
            fd = fds[path]
            if kind == "ro" and _same_file(path, fd):
                continue  # not covered: the read-only remount below applies to it as it is
            if not os.path.lexists(path):  # covered: make a mount point inside the cover
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    os.mkdir(path, 0o755)
                else:
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
            libc.mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
    features = ["mountns", f"hidden-paths:{hidden}", "private-tmp"]
    try:  # mount_setattr needs Linux 5.12; without it, uid 65534 still limits writes
        libc.set_readonly("/", True, recursive=True)
        for path, kind in ops:
            if kind in ("scratch", "rw"):
                libc.set_readonly(path, False, recursive=False)
        # CUDA fails to initialise (error 304, "OS call failed") when /proc and /sys are
        # read-only mounts (measured on an H100, 2026-11-26). Their files keep their own
        # permissions, which the unprivileged child cannot get past.
        for path in KERNEL_FILESYSTEMS:
            if os.path.ismount(path):
                libc.set_readonly(path, False, recursive=True)
        features.append("readonly-fs")
    except OSError as e:
        features.append(f"no-readonly-fs ({e.strerror or e})")
    for fd in fds.values():
        os.close(fd)
    return features


def _chown_tree(root: str, uid: int) -> None:
    os.chown(root, uid, uid, follow_symlinks=False)
    for top, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            os.chown(os.path.join(top, name), uid, uid, follow_symlinks=False)


def _set_rlimits(limits: dict) -> list[str]:
    import resource

    out = []
    for name, value in limits.items():
        if value is None:
            continue
        which = getattr(resource, f"RLIMIT_{name}")
        soft, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))
        out.append(f"rlimit-{name.lower()}" + (f":{value // 2**20}MB" if name == "AS" else ""))
    return out


def _drop_privileges(libc: _Libc | None, uid: int | None) -> list[str]:
    if libc is None:
        return []
    out = []
    for cap in range(64):  # EINVAL past the last capability; EPERM when we hold none
        if libc.prctl(PR_CAPBSET_DROP, cap) != 0:
            break
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # clears every capability
        out.append(f"uid:{uid}")
    else:
        libc.prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKDOWN)  # EPERM without CAP_SETPCAP: fine
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        libc.clear_capabilities()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1) == 0:
        out.append("no-new-privs")
    with open("/proc/self/status") as f:
        effective = [line.split()[1] for line in f if line.startswith("CapEff:")]
    if effective and int(effective[0], 16) == 0:
        out.append("no-caps")
    return out


def _check_reachable(spec: dict) -> None:
    """After dropping privileges: can the child still reach what it must? Else fail clearly."""
    if not os.access(spec["cwd"], os.W_OK | os.X_OK):
        raise OSError(f"working directory {spec['cwd']} is not writable by uid {os.getuid()}")
    if not os.access(spec["argv"][0], os.X_OK):
        raise OSError(f"{spec['argv'][0]} is not executable by uid {os.getuid()} "
                      f"(check the permissions of its parent directories)")
    for path, kind in spec["ops"]:
        if kind == "ro" and os.path.isfile(path) and not os.access(path, os.R_OK):
            raise OSError(f"{path} is not readable by uid {os.getuid()} (mode "
                          f"{stat.S_IMODE(os.stat(path).st_mode):o}); make it world-readable")


def _launch(status_fd: int, spec: dict) -> None:
    os.set_inheritable(status_fd, False)

    def report(item: dict) -> None:
        os.write(status_fd, (json.dumps(item) + "\n").encode())

    try:
        linux = sys.platform.startswith("linux")
        libc = _Libc() if linux else None
        features = _setup_mounts(libc, spec["ops"], spec["scratch_mb"]) if spec["ops"] else []
        for path in spec["chown"]:
            _chown_tree(path, spec["drop_uid"])
        features += _set_rlimits(spec["rlimits"])
        features += _drop_privileges(libc, spec["drop_uid"])
        _check_reachable(spec)
    except (OSError, ValueError, AttributeError) as e:
        report({"error": str(e)})
        os._exit(SETUP_FAILED)
    report({"features": features})

    child = os.fork()
    if child == 0:
        try:
            os.chdir(spec["cwd"])
            os.execve(spec["argv"][0], spec["argv"], spec["env"])
        except OSError as e:
            os.write(2, f"sandbox: cannot run {spec['argv'][0]}: {e}\n".encode())
        os._exit(127)
    # Wait for the child, reaping any orphan handed to us (we are init in a PID namespace).
    while True:
        try:
            pid, wstatus = os.wait()
        except ChildProcessError:
            code = 1
            break
        if pid == child:
            code = os.waitstatus_to_exitcode(wstatus)
            break
    report({"exit": code})
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--launch":
        _launch(int(sys.argv[2]), json.loads(sys.argv[3]))
    sys.exit("usage: sandbox.py --launch <status-fd> <spec-json> (started by run_sandboxed)")

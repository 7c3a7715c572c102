"""Run one untrusted child process with the isolation this OS allows, and say what it was.

`run_sandboxed(argv, cwd=..., wall_limit_s=..., mem_limit_mb=..., reveal_paths=...)` starts
the child, streams its output lines to a callback, enforces the limits and returns a
`ChildResult` whose `isolation` list names every layer that was actually in force for that
run (e.g. `netns`, `pidns`, `mountns`, `allowlist-root`, `readonly-fs`, `uid:65534`). It is
synchronous and thread-safe (no preexec_fn): the node calls it via trio.to_thread.

`isolation_plan()` says what this OS allows (probed once per process). `plan.complete` is
True only when all four of network namespace, allowlist root (mount namespace), PID
namespace and privilege drop are available; `missing_isolation()` names each missing one
with the reason. Callers refuse to run other people's code unless the plan is complete.

What the isolation covers (Linux with util-linux `unshare`, as root or with user namespaces):
- Network: a new network namespace with only a downed loopback, so no connection to the
  internet, the LAN or this machine's 127.0.0.1 services (including the node's own ports).
- Processes: its own session and process group, and a new PID namespace (the child sees
  and can signal only its own processes; when the sandbox's init dies the kernel kills
  every process in it, so nothing escapes the kill by calling setsid or double-forking).
- IPC: a new IPC (and UTS) namespace: System V shared memory, semaphores and message
  queues it creates die with it, so no state outlives the child or passes to another run.
- Files, by allowlist: the child runs in a fresh root, a small tmpfs entered with
  pivot_root, the old root detached (where pivot_root fails: chroot, reported as
  `allowlist-root:chroot (...)`). It holds only these, at their usual absolute paths:
  - read-only: the system directories (/usr, /lib*, /bin, /sbin, /etc), the Python
    installation (the prefixes, the interpreter, the stdlib and site-packages entries of
    sys.path), the library paths the node's environment names (LD_LIBRARY_PATH,
    CUDA_HOME, CUDA_PATH, TRITON_*) and /etc/ld.so.conf.d lists, /dev (device nodes keep
    their own permissions) and the caller's `reveal_paths`;
  - read-write: cwd and `writable_paths`, a fresh size-capped tmpfs on /tmp and /dev/shm,
    and /proc (the PID namespace's own) and /sys, which stay writable mounts because CUDA
    cannot start with them read-only (their files keep their own permissions).
  Nothing else exists for the child: not the node's home (keys, store, validation data),
  not the Loopy checkout (except a virtualenv inside it, and the files the caller
  reveals), not /root, /home, /run, /mnt or the rest of /var. Symbolic links on the way
  to a revealed path are recreated, so the child finds it under the name the caller used.
  `hide_paths` is no longer needed for secrecy; it is still accepted and covers a path
  that lies inside something revealed (with an empty tmpfs or file), and keeps the
  implicit reveals (the interpreter, library directories) out of it.
- The control channel: the launcher (the namespace's init) forks the child first and
  drops privileges only in the child; it is non-dumpable, so the child cannot open its
  /proc entries (fd, mem, environ, root) to reach the status pipe, and the child keeps
  only fds 0, 1, 2 and the caller's `pass_fds`. The parent believes a set-up error only
  when it is the launcher's first and only report and the launcher exited with the set-up
  status; any other stray or malformed report is the child's failure, never SandboxError
  (`status-channel-tampered` in `isolation`), and the reported exit status must agree
  with the launcher's own.
- Privileges: as root the child runs as uid/gid 65534 (nobody) with no groups; in a user
  namespace with every capability dropped (bounding set, ambient, effective) and root's
  special-casing of capabilities locked off (securebits); `no_new_privs` in both cases.
- Resources: a wall-clock limit, or the caller's `deadline` if earlier (SIGKILL to the
  whole group), a parent-side watchdog that sums the resident memory of every process of
  the child (read from /proc) and kills at the limit, RLIMIT_AS (optional: CUDA needs a
  huge virtual address space, so CPU only), RLIMIT_CORE 0, RLIMIT_NOFILE and RLIMIT_FSIZE
  (per file), and a parent-side disk watchdog (`disk_limit_mb`, `disk-limit:<N>MB` in
  `isolation`): about once a second it walks cwd and `writable_paths` (lstat, no link
  followed, max(size, allocated blocks), hard links once) and adds the deleted files the
  child still holds open on those filesystems (/proc/<pid>/fd), and kills the group past
  the limit (`disk_exceeded`); a tree too big or too deep to scan cheaply (more than
  DISK_MAX_ENTRIES entries, e.g. a flood of empty files), unreadable, or slower to scan
  than DISK_SCAN_MAX_S counts as over the limit. The private /tmp and /dev/shm are
  tmpfs capped in size instead, and not scanned.
- Environment: scrubbed to PATH, HOME (= the workspace), LANG, TMPDIR, PYTHONPATH and the
  few variables the caller names from an allowlist (thread counts, LOOPY_RUN_CONFIG,
  CUDA_VISIBLE_DEVICES); plus, from the node, the library paths CUDA needs.
- Cleanup: whatever happens (timeout, memory, disk, an exception in the caller) the process
  group, the namespace and any descendant still found are killed with SIGKILL in a
  `finally`; no orphan outlives the call.

What it does NOT cover (said plainly):
- No seccomp filter: every system call is available to the child; the kernel itself is
  the attack surface (a kernel exploit escapes everything above).
- No cgroups: no CPU share, no PID-count limit (a fork bomb is bounded only by the memory
  watchdog, the wall limit and the PID namespace's teardown), no disk I/O bandwidth limit,
  and tmpfs pages on the private /tmp are not counted by the memory watchdog (they are
  size-capped instead).
- No kernel disk quota: the disk watchdog samples. Between two scans (a second or more,
  longer when the tree is slow to scan) a child can write past the limit at the disk's
  speed, each file up to RLIMIT_FSIZE; a scan is not atomic, so a child that keeps
  renaming its files around during scans may be undercounted by one of them; and deleted
  files held open are seen only where the child's /proc/<pid>/fd is readable by the node
  (always as root or in a user namespace; not for a non-dumpable child of the same uid
  without namespaces). A child that exits before a scan is checked once more after its
  exit (its files stay: the caller removes the workspace).
- GPU devices are shared with the host: the child can use (and exhaust) the GPU memory,
  and GPU driver bugs are not contained. /sys shows the host's hardware.
- Inside the allowlist, whatever the child's uid may read it reads: /etc and the system
  directories, the Python installation. Secrets do not belong there.
- Without root or user namespaces (macOS, hardened kernels, containers without
  CAP_SYS_ADMIN) the namespaces are missing: `isolation` then says e.g.
  `no-netns (util-linux unshare is not installed)`, the whole filesystem stays visible
  and only the resource limits, the process group and the scrubbed environment remain
  (`no-privdrop`: the child keeps the node's uid). The same
  happens, with `no-mountns (set-up failed: ...)`, where `unshare` works but building the
  allowlist root does not (checked once per process by a trial run). `plan.complete` is
  then False. On kernels before 5.12 the allowlisted tree stays writable where
  permissions allow (`no-readonly-fs`). Once a plan is chosen, a run whose set-up fails
  raises SandboxError instead of running unprotected.
- Without a PID namespace the control channel is only as safe as the uid boundary: a
  child in a user namespace (same uid as the node) could reach the node's end of it.
- Paths are resolved (symbolic links followed) when a run starts: a caller must not
  reveal or make writable a path whose components an earlier child could have replaced.
- Information can still leave through what the caller publishes: the exit status, the
  output lines and files in the writable paths are the child's to choose.
"""
from __future__ import annotations

import collections
import errno
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
MAX_STATUS_BYTES = 64 * 1024  # the launcher writes two short lines; more is not kept
POLL_S = 0.02
RSS_EVERY_S = 0.25  # a /proc scan per sample: cheap, but not free on a busy host
# The disk watchdog: the total of what the writable directories hold (and what the child
# keeps open after deleting it) may not pass `disk_limit_mb`. The default leaves room for
# the largest callers: the export child's directory holds a copy of model.pt and the
# exported weights (each up to workspace.MAX_WEIGHTS_BYTES, 8 GiB) besides small files.
DEFAULT_DISK_LIMIT_MB = 24 * 1024
DISK_EVERY_S = 1.0  # between two scans (a walk of the tree: it costs CPU, so not often)
DISK_SCAN_FACTOR = 5.0  # ... and at least this many times as long as the last scan took,
DISK_MAX_EVERY_S = 10.0  # but never longer than this: a scan's CPU share stays bounded
# A tree the watchdog cannot scan cheaply counts as over the limit (fail closed): more
# entries than this, deeper than this, or a scan that takes longer than this.
DISK_MAX_ENTRIES = 200_000
DISK_MAX_DEPTH = 64
DISK_SCAN_MAX_S = 3.0
# Shown read-only in every sandbox (where they exist): what a dynamically linked program
# and the Python installation need. Symlinks among them (/lib -> usr/lib) are recreated.
SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc")
KERNEL_FILESYSTEMS = ("/proc", "/sys")  # bound from the launcher's view, left writable
SCRATCH_PATHS = ("/tmp", "/dev/shm")  # fresh, size-capped tmpfs
LD_SO_CONF_DIR = "/etc/ld.so.conf.d"
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
LIBRARY_ENV = ("LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "TRITON_LIBCUDA_PATH",
               "TRITON_PTXAS_PATH")  # of those, the ones naming paths (revealed read-only)
SETUP_FAILED = 125  # the launcher's exit status when it could not set the sandbox up


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up: the node's problem, never the child's."""


@dataclass
class ChildResult:
    returncode: int | None  # negative: killed by that signal
    timed_out: bool  # the wall limit or the caller's deadline was reached
    mem_exceeded: bool
    wall_s: float
    peak_rss_mb: float
    log_tail: str
    isolation: list[str] = field(default_factory=list)
    cancelled: bool = False  # the caller's cancel event stopped it
    # The writable directories held more than `disk_limit_mb` (or a tree the disk watchdog
    # cannot scan: too many entries, too deep, unreadable, too slow): killed for it, or,
    # when found only after the child exited by itself, its exit status is kept.
    disk_exceeded: bool = False
    peak_disk_mb: float = 0.0  # the largest total a scan found (partial if cut short)


# ---------------------------------------------------------------------------------------------
# What this OS allows: probed once per process

# The four layers `complete` needs, with their names in `notes` ("no-<key> (reason)").
LAYERS = (("netns", "network namespace"), ("mountns", "allowlist root (mount namespace)"),
          ("pidns", "PID namespace"), ("ipcns", "IPC namespace"), ("privdrop", "privilege drop"))


@dataclass(frozen=True)
class IsolationPlan:
    unshare: tuple[str, ...]  # argv prefix; empty when no namespace is available
    netns: bool
    mountns: bool  # a private mount namespace in which the allowlist root is built
    pidns: bool
    userns: bool
    notes: tuple[str, ...] = ()  # "no-<layer> (why)" for every missing layer, and remarks
    privdrop: bool = False  # the child loses root (uid 65534) or its capabilities (userns)
    # private System V IPC and POSIX message queues (and hostname): shared memory left by
    # one child would otherwise outlive it, reachable by the next experiment's children
    ipcns: bool = False

    @property
    def complete(self) -> bool:
        """Network, allowlist root, PID and IPC namespaces and privilege drop are all in
        force."""
        return self.netns and self.mountns and self.pidns and self.ipcns and self.privdrop

    def features(self) -> list[str]:
        out = [name for name, on in (("netns", self.netns), ("pidns", self.pidns),
                                     ("ipcns", self.ipcns), ("userns", self.userns)) if on]
        return out + list(self.notes)

    def missing(self) -> list[str]:
        """One line per missing layer: what it is and why it is missing."""
        out = []
        for key, name in LAYERS:
            if getattr(self, key):
                continue
            reasons = [n[len(key) + 5:-1] for n in self.notes
                       if n.startswith(f"no-{key} (") and n.endswith(")")]
            out.append(f"no {name}: {reasons[0] if reasons else 'not available here'}")
        return out


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
    """The strongest isolation this OS allows (probed once, with a trial run, then cached)."""
    global _plan
    with _plan_lock:
        if _plan is None:
            _plan = _detect_plan()
        return _plan


def missing_isolation(plan: IsolationPlan | None = None) -> list[str]:
    """What keeps the isolation from being complete, one line each with the reason, e.g.
    "no PID namespace: unshare --pid failed"; empty when `plan.complete`."""
    return (plan or isolation_plan()).missing()


def _trial(plan: IsolationPlan) -> str | None:
    """Run /bin/true in an allowlist root under `plan`; None if it works, else why not."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="loopy-sandbox-probe-") as tmp:
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        shown = os.path.join(tmp, "shown")
        with open(shown, "w") as f:
            f.write("x")
        os.chmod(tmp, 0o755)
        os.chmod(shown, 0o644)
        argv = (["/bin/true"] if os.access("/bin/true", os.X_OK)
                else [sys.executable, "-I", "-S", "-c", ""])
        try:
            result = _run(plan, argv, cwd=work, env=None, wall_limit_s=20, mem_limit_mb=512,
                          reveal_paths=[shown])
        except (SandboxError, OSError, ValueError) as e:
            return str(e)
        if result.returncode != 0:
            return f"exit status {result.returncode}: {result.log_tail[-200:].strip()}"
        return None


def _detect_plan() -> IsolationPlan:
    plan = _namespaces_plan()
    if plan.mountns:  # unshare works; check that the allowlist root can be built inside it
        why = _trial(plan)
        if why is not None:
            log.warning("sandbox: building the allowlist root failed (%s); running without it",
                        why)
            dropped = ("--mount", "--mount-proc", "--pid", "--fork", "--kill-child")
            argv = [a for a in plan.unshare if a not in dropped]
            notes = tuple(n for n in plan.notes if not n.startswith("no-privdrop"))
            notes += (f"no-mountns (set-up failed: {why[:120]})",
                      "no-pidns (needs the mount namespace)")
            if not plan.userns:
                notes += ("no-privdrop (root keeps its uid without a mount namespace)",)
            plan = IsolationPlan(tuple(argv), plan.netns, False, False, plan.userns, notes,
                                 privdrop=plan.userns, ipcns=plan.ipcns)
    return plan


def _namespaces_plan() -> IsolationPlan:
    if not sys.platform.startswith("linux"):
        return IsolationPlan((), False, False, False, False,
                             tuple(f"no-{key} (no namespaces on {sys.platform})"
                                   for key, _ in LAYERS))
    tool = shutil.which("unshare")
    if tool is None:
        return IsolationPlan((), False, False, False, False,
                             tuple(f"no-{key} (util-linux unshare is not installed)"
                                   for key, _ in LAYERS))
    root = os.geteuid() == 0
    pid_flags = ["--pid", "--fork", "--kill-child", "--mount-proc"]
    user_modes = ([[]] if root else []) + [["--user", "--map-root-user"]]
    for user in user_modes:
        for flags, mount, pid in ((["--net", "--mount"] + pid_flags, True, True),
                                  (["--net", "--mount"], True, False),
                                  (["--net"], False, False)):
            for ipc in (["--ipc", "--uts"], []):
                argv = [tool] + user + ipc + flags
                if not _probe(argv):
                    continue
                notes = [] if mount else ["no-mountns (unshare --mount failed)"]
                if not pid:
                    notes.append("no-pidns (unshare --pid failed)")
                if not ipc:
                    notes.append("no-ipcns (unshare --ipc failed)")
                privdrop = bool(user) or mount
                if not privdrop:
                    notes.append("no-privdrop (root keeps its uid without a mount namespace)")
                return IsolationPlan(tuple(argv + ["--"]), True, mount, pid, bool(user),
                                     tuple(notes), privdrop=privdrop, ipcns=bool(ipc))
    why = ("unshare --net not permitted, as root or in a user namespace" if root else
           "no user namespaces: unshare --user not permitted")
    return IsolationPlan((), False, False, False, False,
                         tuple(f"no-{key} ({why})" for key, _ in LAYERS))


# ---------------------------------------------------------------------------------------------
# Parent side: what the child may see


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


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _resolve(path: str, links: list[tuple[str, str]], depth: int = 0) -> str:
    """The real path of absolute `path`, appending (where, what it says) for every symbolic
    link met on the way (os.path.realpath, but it says which links it followed)."""
    if depth > 40:
        raise ValueError(f"too many levels of symbolic links: {path}")
    cur = "/"
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            cur = os.path.dirname(cur)
            continue
        nxt = os.path.join(cur, part)
        try:
            target = os.readlink(nxt)
        except OSError:  # not a link, or missing
            cur = nxt
            continue
        links.append((nxt, target))
        cur = _resolve(os.path.join(cur, target), links, depth + 1)
    return cur


def _checkout() -> str | None:
    """The Loopy checkout this module runs from, or None when it is an installed package."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    markers = (".git", "pyproject.toml", "node.py")
    return root if any(os.path.lexists(os.path.join(root, m)) for m in markers) else None


def _ld_so_conf_dirs() -> list[str]:
    out = []
    try:
        names = sorted(os.listdir(LD_SO_CONF_DIR))
    except OSError:
        return out
    for name in names:
        if not name.endswith(".conf"):
            continue
        try:
            with open(os.path.join(LD_SO_CONF_DIR, name), encoding="utf-8", errors="replace") as f:
                for line in f:
                    line = line.split("#", 1)[0].strip()
                    if line.startswith("/"):
                        out.append(line)
        except OSError:
            continue
    return out


def _implicit_reveals() -> list[str]:
    """What every child needs to run Python at all (where it exists): the system
    directories, the Python installation and the GPU libraries' directories."""
    prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    paths = list(SYSTEM_DIRS) + prefixes
    if sys.executable:
        paths += [sys.executable, os.path.dirname(os.path.realpath(sys.executable))]
    real_prefixes = [os.path.realpath(p) for p in prefixes]
    for entry in sys.path:
        if not entry or not os.path.isabs(entry) or not os.path.exists(entry):
            continue
        real = os.path.realpath(entry)
        if (os.path.basename(real) in ("site-packages", "dist-packages")
                or any(_inside(real, p) for p in real_prefixes)):
            paths.append(entry)
    for key in LIBRARY_ENV:
        for item in os.environ.get(key, "").split(os.pathsep):
            if os.path.isabs(item):
                paths.append(item)
    paths += _ld_so_conf_dirs()
    return [p for p in paths if p and os.path.isabs(p)]


def mount_ops(*, reveal=(), writable=(), hide=()) -> list[tuple[str, str, str]]:
    """The allowlist root as (path, kind, detail), in the order the launcher builds it.

    kinds: 'ro' / 'rw' (bind-mounted from the real tree, read-only / writable), 'kernel'
    (/proc and /sys, bound and left writable), 'scratch' (a fresh size-capped tmpfs),
    'hide' (an empty tmpfs or file over a path that lies inside something revealed) and
    'link' (a symbolic link on the way to a revealed path; detail = its target).
    Always revealed: the system directories, the Python installation, the library
    directories, /dev, /proc, /sys; /tmp and /dev/shm are fresh. The checkout is never
    revealed implicitly (its virtualenv is); explicit reveals inside it are. Paths that
    do not exist are skipped. `hide` keeps the implicit reveals out of the hidden paths
    and covers the hidden paths that lie inside revealed ones; a path both hidden and
    revealed is a ValueError.
    """
    def resolve(paths, keep_links=True, strict=True) -> list[tuple[str, list]]:
        out = []
        for p in paths:
            p = os.path.abspath(os.fspath(p))
            links: list[tuple[str, str]] = []
            try:
                real = _resolve(p, links)
            except ValueError:
                if strict:
                    raise
                continue
            if real == "/":
                if strict:
                    raise ValueError("cannot hide or reveal '/' itself")
                continue
            if os.path.exists(real):
                out.append((real, links if keep_links else []))
        return out

    hidden = [r for r, _ in resolve(hide, keep_links=False)]
    explicit_ro, explicit_rw = resolve(reveal), resolve(writable)
    clash = set(hidden) & {r for r, _ in explicit_ro + explicit_rw}
    if clash:
        raise ValueError(f"path both hidden and revealed: {sorted(clash)[0]}")
    checkout = _checkout()
    venvs = {os.path.realpath(p) for p in (sys.prefix, sys.exec_prefix)} - {
        os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    implicit = []
    for real, links in resolve(_implicit_reveals(), strict=False):
        if any(_inside(real, h) for h in hidden):
            continue
        if (checkout and _inside(real, checkout)
                and not any(_inside(real, v) for v in venvs)):
            continue
        implicit.append((real, links))

    kinds: dict[str, str] = {}
    for real, _ in implicit:
        kinds[real] = "ro"
    if os.path.isdir("/dev"):
        kinds["/dev"] = "ro"
    for path in KERNEL_FILESYSTEMS:
        if os.path.isdir(path):
            kinds[path] = "kernel"
    for path in SCRATCH_PATHS:
        kinds[path] = "scratch"
    if checkout:
        kinds[checkout] = "hide"
    for path in hidden:
        kinds[path] = "hide"
    for real, _ in explicit_ro:
        kinds[real] = "ro"
    for real, _ in explicit_rw:
        kinds[real] = "rw"

    ops: list[tuple[str, str, str]] = []
    placed: dict[str, str] = {}

    def enclosing(path: str) -> str | None:
        """The kind of the deepest mount above `path` in the new root (None: the bare tmpfs)."""
        best = None
        for other in placed:
            if other != path and _inside(path, other) and (best is None or len(other) > len(best)):
                best = other
        return placed[best] if best is not None else None

    host_content = ("ro", "rw", "kernel")
    for path in sorted(kinds, key=lambda p: (p.count("/"), p)):
        kind, outer = kinds[path], enclosing(path)
        if kind == "hide" and outer not in host_content:
            continue  # nothing of the real tree shows there anyway
        if kind in ("ro", "rw") and outer == kind:
            continue  # already shown the same way by the mount above it
        placed[path] = kind
        ops.append((path, kind, ""))
    seen_links = set()
    for _, links in implicit + explicit_ro + explicit_rw:
        for where, target in links:
            if where in kinds or where in seen_links or enclosing(where) in host_content:
                continue  # a mount sits there, or the real link shows through a bind
            seen_links.add(where)
            ops.append((where, "link", target))
    return sorted(ops, key=lambda op: (op[0].count("/"), op[0]))


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


def _read_all(fd: int, sink: list[bytes], limit: int = MAX_STATUS_BYTES) -> None:
    """Read `fd` to its end, keeping the first `limit` bytes (the rest is drained, so that
    a writer never blocks on a full pipe)."""
    kept = 0
    with os.fdopen(fd, "rb", buffering=0) as f:
        while True:
            chunk = f.read(65536)
            if not chunk:
                return
            if kept < limit:
                sink.append(chunk[:limit - kept])
                kept += len(sink[-1])


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


_O_DIR = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
          | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
_LINK_ERRNOS = {getattr(errno, "ELOOP", -1), getattr(errno, "EMLINK", -1)}  # O_NOFOLLOW met a link


@dataclass
class _DiskUsage:
    bytes: int = 0
    entries: int = 0  # directory entries (and descriptors) looked at
    cut: str | None = None  # why the scan stopped early: over the limit, or not scannable


def _disk_usage(roots, limit_bytes: int, pids=()) -> _DiskUsage:
    """What `roots` (real paths) hold, plus the deleted files that `pids` keep open on
    their filesystems. Every entry is lstat-ed (symbolic links are never followed), counts
    max(st_size, st_blocks * 512) (sparse files count at their size), hard-linked files
    once. Directories are opened with O_NOFOLLOW relative to their parent's descriptor and
    checked against the entry listed, so a child that swaps a directory for a link cannot
    send the walk elsewhere. The scan stops (`cut` says why) once the total passes
    `limit_bytes`, or at more than DISK_MAX_ENTRIES entries, DISK_MAX_DEPTH levels, after
    DISK_SCAN_MAX_S seconds, or at a directory it cannot read: all of which the caller
    treats as over the limit (fail closed). Entries that vanish meanwhile are skipped."""
    max_entries, max_depth, max_s = DISK_MAX_ENTRIES, DISK_MAX_DEPTH, DISK_SCAN_MAX_S
    deadline = time.monotonic() + max_s
    usage = _DiskUsage()
    seen: set[tuple[int, int]] = set()  # (dev, ino) of files with several (or no) names
    devs: set[int] = set()  # the filesystems of the roots

    def count() -> str | None:
        usage.entries += 1
        if usage.entries > max_entries:
            return f"more than {max_entries} entries"
        if usage.entries % 256 == 0 and time.monotonic() > deadline:
            return f"a scan took longer than {max_s:g} s"
        return None

    def add(st: os.stat_result) -> str | None:
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink != 1:
            key = (st.st_dev, st.st_ino)
            if key in seen:
                return None
            seen.add(key)
        usage.bytes += max(st.st_size, getattr(st, "st_blocks", 0) * 512)
        if usage.bytes > limit_bytes:
            return f"more than {limit_bytes // 2**20} MB"
        return None

    def walk(root: str) -> str | None:
        try:
            st = os.lstat(root)
        except FileNotFoundError:
            return None
        devs.add(st.st_dev)
        why = count() or add(st)
        if why or not stat.S_ISDIR(st.st_mode):
            return why
        stack: list[tuple[int, object]] = []

        def enter(name: str, dir_fd: int | None, listed: os.stat_result) -> None:
            try:
                fd = os.open(name, _O_DIR, dir_fd=dir_fd)
            except (FileNotFoundError, NotADirectoryError):
                return  # gone, or replaced, since it was listed
            except OSError as e:
                if e.errno in _LINK_ERRNOS:
                    return  # replaced by a symbolic link: not followed
                raise
            try:
                it = os.scandir(fd) if os.path.samestat(os.fstat(fd), listed) else None
            except BaseException:
                os.close(fd)
                raise
            if it is None:  # replaced by another directory since it was listed
                os.close(fd)
                return
            stack.append((fd, it))

        try:
            enter(root, None, st)
            while stack:
                fd, it = stack[-1]
                entry = next(it, None)
                if entry is None:
                    stack.pop()
                    it.close()
                    os.close(fd)
                    continue
                why = count()
                if why:
                    return why
                try:
                    est = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                why = add(est)
                if why:
                    return why
                if stat.S_ISDIR(est.st_mode):
                    if len(stack) >= max_depth:
                        return f"directories nested more than {max_depth} deep"
                    enter(entry.name, fd, est)
        except OSError as e:  # unreadable (e.g. a directory the child made mode 000), I/O error
            return f"cannot scan {root}: {e.strerror or e}"
        finally:
            for fd, it in reversed(stack):
                it.close()
                os.close(fd)
        return None

    def deleted_but_open() -> str | None:
        """Files the child deleted but keeps open still fill the disk: count those on the
        roots' filesystems, through /proc/<pid>/fd (skipped where it cannot be read)."""
        for pid in sorted(pids):
            where = f"/proc/{pid}/fd"
            try:
                names = os.listdir(where)
            except OSError:
                continue  # gone, or not readable by us
            for name in names:
                why = count()
                if why:
                    return why
                path = f"{where}/{name}"
                try:
                    if not os.readlink(path).endswith(" (deleted)"):
                        continue
                    st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 0 and st.st_dev in devs:
                    why = add(st)
                    if why:
                        return why
        return None

    for root in roots:
        usage.cut = walk(root)
        if usage.cut:
            return usage
    usage.cut = deleted_but_open()
    return usage


def _disk_roots(paths) -> list[str]:
    """The real paths of the existing writable `paths`, none inside another."""
    real = sorted({os.path.realpath(p) for p in paths if os.path.lexists(p)}, key=len)
    out: list[str] = []
    for path in real:
        if not any(_inside(path, other) for other in out):
            out.append(path)
    return out


class _DiskWatch:
    """Scans the writable directories from a thread (so that a slow scan never delays the
    poll loop's wall-limit and memory checks) every DISK_EVERY_S seconds, or less often
    when a scan is slow; `exceeded` is set once a scan finds the limit passed (the poll
    loop then kills the child). `pids`: the child's processes, kept up to date by the
    poll loop, whose open descriptors are checked for deleted files."""

    def __init__(self, roots: list[str], limit_mb: float):
        self.roots = roots
        self.limit_mb = limit_mb
        self.pids: set[int] = set()
        self.exceeded = False
        self.why: str | None = None
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sandbox-disk-watch",
                                        daemon=True)

    def scan(self, pids=()) -> bool:
        usage = _disk_usage(self.roots, int(self.limit_mb * 2**20), pids)
        self.peak_bytes = max(self.peak_bytes, usage.bytes)
        if usage.cut is not None:
            self.why = usage.cut
            self.exceeded = True
        return self.exceeded

    def _loop(self) -> None:
        wait = DISK_EVERY_S
        while not self._stop.wait(wait):
            t0 = time.monotonic()
            try:
                if self.scan(self.pids):
                    log.warning("sandbox: disk watchdog: the writable directories hold %s "
                                "(limit %s MB)", self.why, self.limit_mb)
                    return
            except Exception:  # a bug here must not leave the child unlimited: fail closed
                log.exception("sandbox: the disk watchdog failed")
                self.why, self.exceeded = "the disk watchdog failed", True
                return
            took = time.monotonic() - t0
            wait = min(max(DISK_EVERY_S, DISK_SCAN_FACTOR * took), DISK_MAX_EVERY_S)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop scanning; waits for a scan in progress (at most about DISK_SCAN_MAX_S)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()


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


def _check_pass_fds(fds) -> tuple[int, ...]:
    out = []
    for fd in fds:
        if isinstance(fd, bool) or not isinstance(fd, int) or fd < 3:
            raise ValueError(f"pass_fds takes open descriptors >= 3, not {fd!r}")
        try:
            os.fstat(fd)
        except OSError:
            raise ValueError(f"pass_fds: descriptor {fd} is not open") from None
        if fd not in out:
            out.append(fd)
    return tuple(out)


def run_sandboxed(argv: list[str], *, cwd, env: dict | None = None, wall_limit_s: float,
                  mem_limit_mb: float, hide_paths=(), reveal_paths=(), writable_paths=(),
                  rlimit_as_mb: int | None = None, max_file_mb: int = 8192,
                  max_open_files: int = 1024, on_line=None, cancel=None,
                  tail_chars: int = TAIL_CHARS, pass_fds=(), deadline=None,
                  on_start=None,
                  disk_limit_mb: int | None = DEFAULT_DISK_LIMIT_MB) -> ChildResult:
    """Run `argv` in `cwd` (writable) under the isolation described in the module docstring.

    The child sees only the allowlist (see `mount_ops`): `reveal_paths` read-only and
    `writable_paths` (besides cwd) read-write, at their own absolute paths. `hide_paths`
    is accepted but no longer needed: see the module docstring. `on_line(str)` gets each
    output line (stdout and stderr merged) from a reader thread. Setting `cancel` (a
    threading.Event) kills the child at once (`cancelled=True`). `pass_fds`: descriptors
    the child inherits under the same numbers (the launcher keeps them open through to
    the exec). `deadline`: a callable returning an absolute time.monotonic() deadline or
    None, polled while the child runs; the child is killed (`timed_out=True`) at the
    earlier of start + wall_limit_s and that deadline; an exception from it kills the
    child and propagates. `on_start()` is called once the sandbox process exists and
    holds its copies of `pass_fds` (the caller may close its own then); an exception from
    it kills the child and propagates. `disk_limit_mb`: what cwd and `writable_paths`
    may hold in all (None: no limit); a watchdog scans them about once a second and kills
    the child past it (`disk_exceeded=True`), also when the tree has more than
    DISK_MAX_ENTRIES entries or cannot be scanned; found only after the child exited by
    itself, `disk_exceeded` is set and its exit status kept. Raises SandboxError if the
    sandbox could not be set up as planned (fail closed), ValueError on bad arguments.
    """
    return _run(isolation_plan(), argv, cwd=cwd, env=env, wall_limit_s=wall_limit_s,
                mem_limit_mb=mem_limit_mb, hide_paths=hide_paths, reveal_paths=reveal_paths,
                writable_paths=writable_paths, rlimit_as_mb=rlimit_as_mb,
                max_file_mb=max_file_mb, max_open_files=max_open_files, on_line=on_line,
                cancel=cancel, tail_chars=tail_chars, pass_fds=pass_fds, deadline=deadline,
                on_start=on_start, disk_limit_mb=disk_limit_mb)


def _run(plan: IsolationPlan, argv: list[str], *, cwd, env: dict | None, wall_limit_s: float,
         mem_limit_mb: float, hide_paths=(), reveal_paths=(), writable_paths=(),
         rlimit_as_mb: int | None = None, max_file_mb: int = 8192, max_open_files: int = 1024,
         on_line=None, cancel=None, tail_chars: int = TAIL_CHARS, pass_fds=(),
         deadline=None, on_start=None,
         disk_limit_mb: int | None = DEFAULT_DISK_LIMIT_MB) -> ChildResult:
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a non-empty list of strings")
    cwd = os.path.realpath(os.fspath(cwd))
    if not os.path.isdir(cwd):
        raise ValueError(f"cwd {cwd} is not a directory")
    if not wall_limit_s > 0 or not mem_limit_mb > 0:
        raise ValueError("wall_limit_s and mem_limit_mb must be positive")
    if deadline is not None and not callable(deadline):
        raise ValueError("deadline must be a callable returning a time.monotonic() value or None")
    if on_start is not None and not callable(on_start):
        raise ValueError("on_start must be a callable")
    if disk_limit_mb is not None and (isinstance(disk_limit_mb, bool)
                                      or not isinstance(disk_limit_mb, (int, float))
                                      or not disk_limit_mb > 0):
        raise ValueError("disk_limit_mb must be positive, or None for no limit")
    pass_fds = _check_pass_fds(pass_fds)
    child_env = _child_env(cwd, env)
    os.makedirs(child_env["TMPDIR"], exist_ok=True)
    exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0], path=child_env["PATH"])
    if exe is None:
        raise ValueError(f"executable {argv[0]!r} not found on PATH")

    writable = [cwd] + [os.fspath(p) for p in writable_paths]
    # /tmp and /dev/shm are private size-capped tmpfs: only the real tree is scanned
    disk = _DiskWatch(_disk_roots(writable), disk_limit_mb) if disk_limit_mb else None
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    drop_uid = NOBODY if (plan.mountns and not plan.userns and euid == 0) else None
    ops = (mount_ops(reveal=reveal_paths, writable=writable, hide=hide_paths)
           if plan.mountns else [])
    spec = {
        "argv": [exe] + list(argv[1:]),
        "cwd": cwd,
        "env": child_env,
        "ops": ops,
        "scratch_mb": int(min(max(mem_limit_mb // 4, 64), 4096)),
        "drop_uid": drop_uid,
        "chown": [os.path.realpath(p) for p in writable if os.path.exists(p)]
        if drop_uid is not None else [],
        "pass_fds": list(pass_fds),
        "rlimits": {"AS": rlimit_as_mb * 2**20 if rlimit_as_mb else None, "CORE": 0,
                    "NOFILE": max_open_files, "FSIZE": max_file_mb * 2**20},
    }
    isolation = plan.features()

    status_r, status_w = os.pipe()
    cmd = list(plan.unshare) + [sys.executable, "-I", "-S", os.path.abspath(__file__),
                                "--launch", str(status_w), json.dumps(spec)]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd="/", env=child_env,
                                start_new_session=True, pass_fds=(status_w,) + pass_fds)
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

    timed_out = mem_exceeded = cancelled = disk_exceeded = False
    watchdog = os.path.isdir("/proc")
    peak_mb = 0.0
    family: set[int] = set()
    limit_at = start + wall_limit_s
    next_rss = start
    try:
        if disk is not None:
            disk.start()
        if on_start is not None:
            on_start()
        while not _exited(proc):
            now = time.monotonic()
            end = limit_at
            if deadline is not None:
                asked = deadline()
                if asked is not None:
                    end = min(end, float(asked))
            if now >= end:
                timed_out = True
                break
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            if disk is not None and disk.exceeded:
                disk_exceeded = True
                break
            if watchdog and now >= next_rss:
                family = _family(proc.pid)
                if disk is not None:
                    disk.pids = family
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
        if disk is not None:
            disk.stop()
        proc.wait()
        _wait_gone(family, timeout=5.0)
        wall_s = time.monotonic() - start
        for t in threads:
            t.join(timeout=2.0)
        if not threads[0].is_alive():  # else a survivor holds the pipe: closing would block
            proc.stdout.close()

    stopped = timed_out or mem_exceeded or cancelled or disk_exceeded
    if disk is not None:
        if not stopped and not disk.exceeded:  # it exited by itself: what did it leave?
            disk.scan()
        disk_exceeded = disk_exceeded or disk.exceeded
    returncode, notes = _outcome(_parse_status(b"".join(status_chunks)), proc.returncode,
                                 stopped=stopped, init_is_safe=plan.pidns, output=tail.text())
    isolation += notes
    isolation += ["own-session", "scrubbed-env", "wall-limit"]
    isolation += ["rss-watchdog"] if watchdog else ["no-rss-watchdog (no /proc)"]
    isolation += [f"disk-limit:{disk_limit_mb}MB"] if disk is not None else ["no-disk-limit"]
    if not watchdog:  # no samples: fall back to the largest child's peak
        import resource
        unit = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / unit
    return ChildResult(returncode=returncode, timed_out=timed_out, mem_exceeded=mem_exceeded,
                       wall_s=wall_s, peak_rss_mb=round(peak_mb, 1), log_tail=tail.text(),
                       isolation=isolation, cancelled=cancelled, disk_exceeded=disk_exceeded,
                       peak_disk_mb=round(disk.peak_bytes / 2**20, 1) if disk is not None else 0.0)


def _consistent(reported: int, launcher_status: int | None) -> bool:
    """Does the exit status on the status channel agree with the launcher's own (which
    exits with the child's code, or 128 + the signal that killed the child)?"""
    if launcher_status is None:
        return False
    if reported >= 0:
        return reported == launcher_status
    return launcher_status == 128 - reported


@dataclass
class _Status:
    lines: int = 0
    error: str | None = None
    features: list[str] | None = None
    exit: int | None = None
    tampered: bool = False


def _item(obj, key: str, kind) -> bool:
    return (isinstance(obj, dict) and list(obj) == [key] and isinstance(obj[key], kind)
            and not isinstance(obj[key], bool))


def _parse_status(data: bytes) -> _Status:
    """The launcher writes exactly: {"features": [...]} then {"exit": n}, or only
    {"error": "..."}. Anything else (extra, reordered or malformed lines) is marked
    tampered; only the first line can be the launcher's set-up report."""
    parts = data.decode("utf-8", "replace").split("\n")
    complete, trailing = parts[:-1], parts[-1]
    items = []
    for line in complete:
        try:
            items.append(json.loads(line))
        except ValueError:
            items.append(None)
    status = _Status(lines=len(items) + (1 if trailing else 0))
    first = items[0] if items else None
    if _item(first, "error", str):
        status.error = first["error"][:2000]
        status.tampered = status.lines != 1
    elif _item(first, "features", list) and all(isinstance(f, str) for f in first["features"]):
        status.features = [f[:200] for f in first["features"][:100]]
        rest = items[1:]
        exits = [item["exit"] for item in rest if _item(item, "exit", int)]
        status.exit = exits[-1] if exits else None
        status.tampered = bool(trailing) or len(rest) > 1 or (bool(rest) and not exits)
    else:
        status.tampered = status.lines > 0
    return status


def _outcome(status: _Status, launcher_status: int | None, *, stopped: bool,
             init_is_safe: bool, output: str = "") -> tuple[int | None, list[str]]:
    """(the child's exit status, isolation notes) from the status channel and the
    launcher's own exit status; raises SandboxError only for the launcher's genuine set-up
    failure. `stopped`: we killed it (timeout, memory, cancel). `init_is_safe`: the child
    cannot kill the launcher (it is the init of a PID namespace)."""
    notes: list[str] = []
    if status.error is not None and not status.tampered and not stopped:
        if launcher_status == SETUP_FAILED:
            raise SandboxError(f"sandbox setup failed: {status.error}")
        status.tampered = True  # a set-up error the launcher's exit status does not confirm
    if status.lines == 0 and not stopped and init_is_safe:
        # Nothing reported and nothing killed by us: the child cannot kill the namespace's
        # init, so unshare or the launcher itself failed before the child started.
        raise SandboxError(f"the sandbox launcher exited with status {launcher_status} "
                           f"before starting the child: {output[-500:].strip()}")
    notes += status.features if status.features is not None else ["no-launcher-report"]
    returncode = launcher_status
    if status.exit is not None:
        if _consistent(status.exit, launcher_status):
            returncode = status.exit
        elif not stopped:  # (killed by us just after its report: not the child's doing)
            status.tampered = True
    if status.tampered:
        notes.append("status-channel-tampered")
        log.warning("sandbox: unexpected data on the status channel (the child's doing?)")
    return returncode, notes


# ---------------------------------------------------------------------------------------------
# Launcher: trusted code that runs inside the namespaces, builds the allowlist root, forks
# the child and waits for it. Started as `python -I -S sandbox.py --launch <fd> <spec>`:
# standard library only. It keeps its privileges (the child drops them) and is
# non-dumpable, so that the child cannot reach it through /proc.

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
MOUNT_ATTR_RDONLY = 0x1
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (a post-5.x syscall)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41, "loongarch64": 41,
                  "ppc64le": 203, "ppc64": 203, "s390x": 217, "i386": 217, "i686": 217,
                  "armv7l": 218, "armv6l": 218}
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 24, 28, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT, NO_SETUID_FIXUP and KEEP_CAPS, each with its _LOCKED bit.
SECUREBITS_LOCKDOWN = 0x1 | 0x2 | 0x4 | 0x8 | 0x20
CAP_VERSION_3 = 0x20080522
ROOT_TMPFS = "size=4m,nr_inodes=8192,mode=0755"  # holds only mount points and links
ROOT_BASES = ("/tmp", "/mnt", "/var/tmp")  # where the new root is mounted (private mount ns)


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

    def umount2(self, target: str, flags: int) -> None:
        self._check(self.libc.umount2(target.encode(), flags), f"umount {target}")

    def pivot_root(self, new_root: str, put_old: str) -> None:
        number = SYS_PIVOT_ROOT.get(os.uname().machine)
        if number is None:
            raise OSError(38, f"pivot_root: no syscall number known for {os.uname().machine}")
        self._check(self.libc.syscall(number, new_root.encode(), put_old.encode()),
                    "pivot_root")

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


def _mount_point(target: str, is_dir: bool, own: set[int], optional: bool = False) -> bool:
    """Make `target` exist as a mount point, creating it only inside the sandbox's own
    tmpfs (never in a bound directory of the real tree). False if optional and impossible."""
    if os.path.lexists(target):
        if os.path.islink(target):
            raise OSError(f"{target}: a symbolic link where a mount point should be")
        return True
    ancestor = os.path.dirname(target)
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    st = os.lstat(ancestor)
    if not stat.S_ISDIR(st.st_mode) or st.st_dev not in own:
        if optional:
            return False
        raise OSError(f"cannot make the mount point {target} outside the sandbox's own tmpfs")
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if is_dir:
        os.mkdir(target, 0o755)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
    return True


def _root_base() -> str:
    for path in ROOT_BASES:
        if os.path.isdir(path) and not os.path.islink(path):
            return path
    raise OSError(f"no directory to build the sandbox root on (tried {', '.join(ROOT_BASES)})")


def _build_root(libc: _Libc, ops: list, scratch_mb: int) -> list[str]:
    """Build the allowlist root from `ops` (see mount_ops) and enter it; what it did."""
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Open every source first: the new root is mounted over a directory of the old one.
    sources = {path: os.open(path, os.O_PATH | os.O_CLOEXEC)
               for path, kind, _ in ops if kind in ("ro", "rw", "kernel")}
    null = os.open("/dev/null", os.O_PATH | os.O_CLOEXEC)
    base = _root_base()
    libc.mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, ROOT_TMPFS)
    root_dev = os.stat(base).st_dev
    own = {root_dev}
    applied = []
    try:
        for path, kind, detail in ops:
            target = base + path
            if kind in ("ro", "rw", "kernel"):
                fd = sources[path]
                _mount_point(target, stat.S_ISDIR(os.fstat(fd).st_mode), own)
                libc.mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
            elif kind == "scratch":
                if not _mount_point(target, True, own, optional=True):
                    continue
                libc.mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV,
                           f"size={scratch_mb}m,mode=1777")
                own.add(os.stat(target).st_dev)
            elif kind == "hide":
                if not os.path.lexists(target):
                    continue
                if os.path.isdir(target) and not os.path.islink(target):
                    libc.mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                               "size=4k,mode=0755")
                    own.add(os.stat(target).st_dev)
                else:
                    libc.mount(f"/proc/self/fd/{null}", target, None, MS_BIND)
            elif kind == "link":
                parent = os.path.dirname(target)
                if not os.path.isdir(parent):
                    _mount_point(parent, True, own)
                if os.lstat(parent).st_dev not in own:
                    raise OSError(f"cannot make the link {path} outside the sandbox's own tmpfs")
                os.symlink(detail, target)
                continue
            else:
                raise ValueError(f"unknown mount kind {kind!r}")
            applied.append((target, kind))
    finally:
        for fd in list(sources.values()) + [null]:
            os.close(fd)
    features = ["mountns", "private-tmp"]
    try:  # mount_setattr needs Linux 5.12; without it, file permissions still limit writes
        libc.set_readonly(base, True, recursive=True)
        for target, kind in applied:
            if kind in ("rw", "scratch"):
                libc.set_readonly(target, False, recursive=False)
        features.append("readonly-fs")
    except OSError as e:
        features.append(f"no-readonly-fs ({e.strerror or e})")
    # CUDA fails to initialise (error 304, "OS call failed") when /proc and /sys are
    # read-only mounts. Their files keep their own permissions, which the unprivileged
    # child cannot get past.
    for target, kind in applied:
        if kind == "kernel":
            try:
                libc.set_readonly(target, False, recursive=True)
            except OSError as e:
                features.append(f"readonly-{target[len(base):].strip('/')} ({e.strerror or e})")
    os.chdir(base)
    try:
        libc.pivot_root(".", ".")  # the old root now sits on top of the new one ...
    except OSError as e:
        os.chroot(".")
        features.append(f"allowlist-root:chroot (pivot_root: {e.strerror or e})")
    else:
        libc.umount2(".", MNT_DETACH)  # ... and is detached: nothing else is reachable
        features.append("allowlist-root")
    os.chdir("/")
    if os.stat("/").st_dev != root_dev:  # fail closed: never run in the old root
        raise OSError("the sandbox root is not in place after pivot_root")
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
    exe = spec["argv"][0]
    if not os.path.exists(exe):
        raise OSError(f"{exe} does not exist in the sandbox (reveal it or its directory)")
    if not os.access(spec["cwd"], os.W_OK | os.X_OK):
        raise OSError(f"working directory {spec['cwd']} is not writable by uid {os.getuid()}")
    if not os.access(exe, os.X_OK):
        raise OSError(f"{exe} is not executable by uid {os.getuid()} "
                      f"(check the permissions of its parent directories)")
    for path, kind, _ in spec["ops"]:
        if kind == "ro" and os.path.isfile(path) and not os.access(path, os.R_OK):
            raise OSError(f"{path} is not readable by uid {os.getuid()} (mode "
                          f"{stat.S_IMODE(os.stat(path).st_mode):o}); make it world-readable")


def _close_fds_except(keep: set[int]) -> None:
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: every possible number
        try:
            top = os.sysconf("SC_OPEN_MAX")
        except (OSError, ValueError):
            top = 65536
        fds = range(3, top if 0 < top <= 1 << 20 else 65536)
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _start_child(spec: dict, libc: _Libc | None, report_fd: int, umask: int) -> None:
    """In the forked child: drop to the child's privileges and exec it. Never returns.

    Writes one JSON line to `report_fd` (close-on-exec): {"features": [...]} just before
    the exec, or {"error": ...} when the set-up cannot be completed."""
    try:
        try:
            _close_fds_except({0, 1, 2, report_fd, *spec["pass_fds"]})
            for fd in spec["pass_fds"]:
                os.set_inheritable(fd, True)
            for name in ("SIGPIPE", "SIGXFSZ", "SIGINT"):  # what Python set, back to default
                if hasattr(signal, name):
                    signal.signal(getattr(signal, name), signal.SIG_DFL)
            os.umask(umask)
            features = _set_rlimits(spec["rlimits"])
            features += _drop_privileges(libc, spec["drop_uid"])
            _check_reachable(spec)
            os.chdir(spec["cwd"])
            features.append("fds-closed")
        except Exception as e:  # noqa: BLE001 - every set-up failure is reported, then exit
            os.write(report_fd, (json.dumps({"error": str(e) or repr(e)}) + "\n").encode())
            os._exit(SETUP_FAILED)
        os.write(report_fd, (json.dumps({"features": features}) + "\n").encode())
        try:
            os.execve(spec["argv"][0], spec["argv"], spec["env"])
        except OSError as e:
            os.write(2, f"sandbox: cannot run {spec['argv'][0]}: {e}\n".encode())
    finally:
        os._exit(127)


def _read_report(fd: int) -> dict:
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        if len(data) < MAX_STATUS_BYTES:
            data += chunk
    os.close(fd)
    try:
        item = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return {}
    return item if isinstance(item, dict) else {}


def _launch(status_fd: int, spec: dict) -> None:
    linux = sys.platform.startswith("linux")
    libc = _Libc() if linux else None
    os.set_inheritable(status_fd, False)
    # As the namespace's init, a signal from inside the namespace reaches us only if we
    # handle it: Python's SIGINT handler would let the child stop us.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    umask = os.umask(0o022)

    def report(item: dict) -> None:
        os.write(status_fd, (json.dumps(item) + "\n").encode())

    try:
        # First: /proc/<launcher>/fd, mem, environ, root ... are closed to the child.
        if libc is not None and libc.prctl(PR_SET_DUMPABLE, 0) != 0:
            raise OSError("prctl(PR_SET_DUMPABLE, 0) failed")
        import resource  # noqa: F401 - loaded now: the child needs it after the root changes

        for path in spec["chown"]:
            _chown_tree(path, spec["drop_uid"])
        features = _build_root(libc, spec["ops"], spec["scratch_mb"]) if spec["ops"] else []
        features.append("launcher-undumpable" if libc is not None else "launcher-dumpable")
        report_r, report_w = os.pipe()  # both close-on-exec
        child = os.fork()
    except Exception as e:  # noqa: BLE001 - whatever it is, the child must not start
        report({"error": str(e) or repr(e)})
        os._exit(SETUP_FAILED)
    if child == 0:
        os.close(report_r)
        _start_child(spec, libc, report_w, umask)
    os.close(report_w)
    for fd in spec["pass_fds"]:  # the child has them now; EOF is the child's to give
        try:
            os.close(fd)
        except OSError:
            pass
    started = _read_report(report_r)  # ends at the child's exec (close-on-exec) or exit
    if "features" not in started:
        os.waitpid(child, 0)
        report({"error": str(started.get("error") or "the child died during set-up")})
        os._exit(SETUP_FAILED)
    report({"features": features + [str(f) for f in started["features"]]})
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

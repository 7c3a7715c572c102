"""A proposer that runs any CLI coding agent (`claude -p`, `codex exec`, `aider`, a script)
in a scratch copy of the genome, and takes back its train.py.

`command:<CMD>`: CMD is split like a shell would (shlex) and run without a shell, in a fresh
scratch directory holding:

    train.py       the parent, the file to edit
    prepare.py     a read-only copy of the fixed genome/prepare.py, for reference
    BRIEF.md       genome/program.md + genome/topics/<topic>.md
    HISTORY.md     what was already tried (base.history_digest)
    PROMPT.md      the instruction: make one change to train.py, describe it in DESCRIPTION.txt

The instruction is also in env `LOOPY_PROMPT` (and the paths in `LOOPY_PROMPT_FILE`,
`LOOPY_BRIEF_FILE`, `LOOPY_HISTORY_FILE`, `LOOPY_TRAIN_FILE`, `LOOPY_TOPIC`), and any `{brief}`
in CMD is replaced by it: `command:claude -p "{brief}"`. The rest of the environment is passed
on, since such agents need their own keys.

The agent runs in its own session (process group); at `timeout_s` the whole group gets
SIGTERM, then SIGKILL, and when the agent exits, anything it left running in its group is
killed too. The description comes from DESCRIPTION.txt, else the first line of its output,
else "edit by <cmd>". Only train.py comes back: an agent that changed prepare.py, or whose
train.py imports a module it wrote next to it, gives a failed proposal. Files are read without
following symlinks or hard links, so an agent cannot make the node gossip an unrelated file.
This is for the user's own tools: it is not a sandbox.
"""
from __future__ import annotations

import ast
import os
import random
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from experiments.agents.base import GENOME_DIR, MAX_SOURCE_BYTES, Brief, Proposal, Tried, \
    clean_line, failed, history_digest, validate_proposal

PROMPT = """\
You are a research agent in Loopy, a swarm that evolves a small GPT training script.

In this directory:
- train.py: the parent genome. Edit this file, and only this file.
- prepare.py: the fixed data, tokenizer and evaluation code (read-only; do not change it).
- BRIEF.md: the rules and the focus of this topic ({topic}). Read it first.
- HISTORY.md: what was already tried, kept or discarded, with the val_bpb deltas.

Make ONE focused change to train.py that should lower val_bpb within the same training
budget, for the topic `{topic}`. Do not run the training: there is no data here, and the
harness will train and score your edit. When you are done, write a one-line description of
the change to DESCRIPTION.txt.
"""
_GRACE_S = 2.0
_POLL_S = 0.05
_OUTPUT_LIMIT = 1 << 16


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the process has exited, without reaping it where the OS allows (waitid), so
    its group id stays reserved until the group has been killed."""
    if not hasattr(os, "waitid"):
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def run_in_group(argv: list[str], cwd: Path, env: dict, timeout_s: float,
                 stdout, stderr) -> tuple[int | None, bool]:
    """Run argv in a new session; (exit code, timed out). Nothing of its group survives."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=stderr, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    timed_out = False
    try:
        while not _exited(proc):
            if time.monotonic() > deadline:
                timed_out = True
                _kill_group(proc.pid, signal.SIGTERM)
                grace = time.monotonic() + _GRACE_S
                while not _exited(proc) and time.monotonic() < grace:
                    time.sleep(_POLL_S)
                break
            time.sleep(_POLL_S)
    finally:
        # The leader is not reaped yet, so its group id cannot have been reused: kill what it
        # left behind (daemons, stuck children), then reap it.
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
    return (None if timed_out else proc.returncode), timed_out


def read_regular(path: Path, limit: int) -> bytes | None:
    """A regular file's bytes (at most limit + 1), never through a symlink or hard link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)
    finally:
        os.close(fd)


def _first_line(data: bytes | None) -> str:
    if not data:
        return ""
    for line in data.decode("utf-8", "replace").splitlines():
        line = clean_line(line)
        if line:
            return line
    return ""


def _local_imports(source: str, work: Path) -> list[str]:
    """Top-level modules train.py imports that exist only in the scratch dir (not prepare)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return sorted(n for n in names - {"prepare", "train"}
                  if (work / f"{n}.py").exists() or (work / n).is_dir())


def _remove_tree(path: Path) -> None:
    def make_writable(func, p, _exc):
        try:
            os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass
    for root, dirs, _files in os.walk(path):    # the agent may have left read-only dirs
        for d in dirs:
            try:
                p = Path(root) / d
                if not p.is_symlink():
                    os.chmod(p, stat.S_IRWXU)
            except OSError:
                pass
    shutil.rmtree(path, onerror=make_writable)


class CommandAgent:
    def __init__(self, command: str, *, timeout_s: float = 900.0,
                 prepare_path: str | Path | None = None, digest_limit: int = 40,
                 scratch_root: str | Path | None = None):
        argv = shlex.split(command) if isinstance(command, str) else []
        if not argv:
            raise ValueError("command agent needs a command, e.g. command:claude -p \"{brief}\"")
        self.argv = argv
        self.timeout_s = float(timeout_s)
        self.prepare_path = Path(prepare_path) if prepare_path else GENOME_DIR / "prepare.py"
        self.digest_limit = digest_limit
        self.scratch_root = scratch_root
        self.name = clean_line(f"command:{os.path.basename(argv[0])}", 200)

    def _setup(self, work: Path, parent_source: str, brief: Brief, history: list[Tried]
               ) -> tuple[str, bytes | None]:
        prompt = PROMPT.format(topic=brief.topic)
        (work / "train.py").write_text(parent_source, encoding="utf-8")
        (work / "BRIEF.md").write_text(brief.text, encoding="utf-8")
        (work / "HISTORY.md").write_text(history_digest(history, self.digest_limit),
                                         encoding="utf-8")
        (work / "PROMPT.md").write_text(prompt, encoding="utf-8")
        prepare = None
        try:
            prepare = self.prepare_path.read_bytes()
        except OSError:
            pass
        if prepare is not None:
            (work / "prepare.py").write_bytes(prepare)
            os.chmod(work / "prepare.py", 0o444)
        return prompt, prepare

    def propose(self, parent_source: str, brief: Brief, history: list[Tried], *,
                parent_id: str, rng: random.Random) -> Proposal:
        if not isinstance(parent_source, str):
            return failed("no parent source")
        work = Path(tempfile.mkdtemp(prefix="loopy-agent-", dir=self.scratch_root))
        try:
            return self._propose_in(work, parent_source, brief, list(history or []))
        finally:
            _remove_tree(work)

    def _propose_in(self, work: Path, parent_source: str, brief: Brief,
                    history: list[Tried]) -> Proposal:
        prompt, prepare = self._setup(work, parent_source, brief, history)
        argv = [a.replace("{brief}", prompt) for a in self.argv]
        env = dict(os.environ, LOOPY_PROMPT=prompt, LOOPY_TOPIC=brief.topic,
                   LOOPY_PROMPT_FILE=str(work / "PROMPT.md"),
                   LOOPY_BRIEF_FILE=str(work / "BRIEF.md"),
                   LOOPY_HISTORY_FILE=str(work / "HISTORY.md"),
                   LOOPY_TRAIN_FILE=str(work / "train.py"))
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                code, timed_out = run_in_group(argv, work, env, self.timeout_s, out, err)
            except OSError as exc:      # not found, not executable
                return failed(f"{self.name}: cannot start: {exc.strerror or exc}")
            out.seek(0)
            stdout = out.read(_OUTPUT_LIMIT)
            err.seek(0, os.SEEK_END)
            err.seek(max(0, err.tell() - 400))
            stderr_tail = clean_line(err.read().decode("utf-8", "replace"), 200)
        if timed_out:
            return failed(f"{self.name}: timed out after {self.timeout_s:g} s (killed)")
        if prepare is not None and read_regular(work / "prepare.py", len(prepare)) != prepare:
            return failed(f"{self.name}: the agent changed prepare.py, which is fixed")
        data = read_regular(work / "train.py", MAX_SOURCE_BYTES)
        if data is None:
            return failed(f"{self.name}: train.py is missing or not a regular file")
        if len(data) > MAX_SOURCE_BYTES:
            return failed(f"{self.name}: train.py is too large")
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError:
            return failed(f"{self.name}: train.py is not UTF-8 text")
        desc = (_first_line(read_regular(work / "DESCRIPTION.txt", 4096))
                or _first_line(stdout) or f"edit by {self.name}")
        if source == parent_source and code not in (0, None):
            return failed(f"{self.name}: exited with code {code}: {stderr_tail}", desc)
        local = _local_imports(source, work)
        if local:
            return failed(f"{self.name}: train.py imports {', '.join(local)}, written next to "
                          "it; only train.py travels", desc)
        return validate_proposal(parent_source, Proposal(source, desc))

"""A fresh, private workspace for one experiment: `home/runs/<id>/`.

    home/runs/<id>/
        train.log, export.log, eval.log   the children's output (kept after cleanup)
        work/                   the training child's cwd: the only place it may write
            train.py            the candidate
            prepare.py          a copy of the trusted genome/prepare.py
            run.json            the RunConfig train.py reads (via LOOPY_RUN_CONFIG)
            out/                where train.py saves model.pt
        export/                 the export child's cwd, filled by the harness:
            train.py, prepare.py, run.json   fresh copies (never the training child's files)
            model.pt            copied out of work/out/ without following links
            out/                where the export writes graph.json + weights.safetensors
        eval/                   the evaluation child's cwd: the graph files, copied out
                                of export/out/ the same way, and nothing else

Everything under work/ and export/ belongs to untrusted code once its child starts, so
the harness reads only single named files from them, through `copy_weights` and
`copy_model_files`, which refuse links, non-regular files, hard links and oversized
files. Logs live outside the children's directories so that a child cannot point them
elsewhere. `cleanup` removes work/, export/ and eval/ and keeps the logs.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from experiments.run.model_graph import MAX_GRAPH_BYTES

MAX_LOG_BYTES = 1 << 20  # per log file; the rest of a chatty run is dropped
MAX_WEIGHTS_BYTES = 8 * 2**30
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
RUN_CONFIG_KEYS = ("device", "profile", "budget_kind", "budget_value", "seed", "out_dir",
                   "train_bin", "vocab_size", "bos_id", "seq_len", "threads", "feed_fds")
MODEL_FILES = ("graph.json", "weights.safetensors")


@dataclass(frozen=True)
class Workspace:
    run_id: str
    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def out_dir(self) -> Path:
        return self.work / "out"

    @property
    def run_json(self) -> Path:
        return self.work / "run.json"

    @property
    def train_log(self) -> Path:
        return self.root / "train.log"

    @property
    def eval_log(self) -> Path:
        return self.root / "eval.log"

    @property
    def export_log(self) -> Path:
        return self.root / "export.log"


def new_run_id() -> str:
    """Sortable and unique: 20250101-120000-1a2b3c4d."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(4)


def _write_text(path: Path, text: str) -> None:
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)


def create_workspace(home, source: str, prepare_py: Path, run_config: dict,
                     run_id: str | None = None) -> Workspace:
    """Make home/runs/<id>/work/ with train.py, prepare.py, run.json and out/.

    `run_config` holds the RunConfig fields except `out_dir`, which is set here.
    """
    missing = set(RUN_CONFIG_KEYS) - {"out_dir"} - set(run_config)
    if missing:
        raise ValueError(f"run config lacks {sorted(missing)}")
    run_id = run_id or new_run_id()
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id {run_id[:40]!r} must be 1-64 chars of a-z A-Z 0-9 - _")
    ws = Workspace(run_id, Path(home).resolve() / "runs" / run_id)
    ws.root.parent.mkdir(parents=True, exist_ok=True)
    ws.root.mkdir(mode=0o755)
    ws.work.mkdir(mode=0o755)
    ws.out_dir.mkdir(mode=0o755)
    _write_text(ws.work / "train.py", source)
    shutil.copyfile(prepare_py, ws.work / "prepare.py")
    config = dict(run_config, out_dir=str(ws.out_dir))
    _write_text(ws.run_json, json.dumps({k: config[k] for k in RUN_CONFIG_KEYS}, indent=1))
    return ws


def _copy_plain_file(directory: Path, relpath: str, dest: Path, max_bytes: int) -> None:
    """Copy directory/relpath to dest, refusing anything but a plain, private, regular file.

    Raises FileNotFoundError when it is missing, ValueError when it is not acceptable;
    each path component is opened without following symlinks."""
    nofollow = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    *dirs, name = relpath.split("/")
    fds = []
    try:
        fds.append(os.open(directory, os.O_RDONLY | os.O_DIRECTORY | nofollow))
        try:
            for part in dirs:
                fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=fds[-1]))
            src = os.open(name, os.O_RDONLY | os.O_NONBLOCK | nofollow, dir_fd=fds[-1])
        except FileNotFoundError:
            raise FileNotFoundError(f"no {relpath}") from None
        except OSError as e:  # ELOOP (a symlink), ENOTDIR, ...
            raise ValueError(f"{relpath} cannot be opened safely: {e.strerror}") from None
        fds.append(src)
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{relpath} is not a regular file")
        if st.st_nlink != 1:
            raise ValueError(f"{relpath} is a hard link")
        if st.st_size > max_bytes:
            raise ValueError(f"{relpath} is {st.st_size} bytes, over the {max_bytes}-byte limit")
        with open(dest, "xb") as out:
            copied = 0
            while True:
                chunk = os.read(src, 1 << 20)
                if not chunk:
                    break
                copied += len(chunk)
                if copied > max_bytes:
                    raise ValueError(f"{relpath} grew past the size limit while being copied")
                out.write(chunk)
    finally:
        for fd in fds:
            os.close(fd)


def copy_weights(ws: Workspace, dest: Path, max_bytes: int = MAX_WEIGHTS_BYTES) -> None:
    """Copy work/out/model.pt to dest (see _copy_plain_file)."""
    try:
        _copy_plain_file(ws.work, "out/model.pt", dest, max_bytes)
    except FileNotFoundError:
        raise FileNotFoundError("train.py saved no out/model.pt") from None


def prepare_export_dir(ws: Workspace, export_dir: Path, source: str, prepare_py: Path,
                       run_config: dict) -> Path:
    """Fill export/ with fresh trusted copies (the trained weights come later, with
    copy_weights); return it."""
    export_dir.mkdir(mode=0o755)
    (export_dir / "out").mkdir(mode=0o755)
    _write_text(export_dir / "train.py", source)
    shutil.copyfile(prepare_py, export_dir / "prepare.py")
    _write_text(export_dir / "run.json",
                json.dumps({k: run_config[k] for k in RUN_CONFIG_KEYS}, indent=1))
    return export_dir


def copy_model_files(src_dir: Path, dest_dir: Path,
                     max_bytes: int = MAX_WEIGHTS_BYTES) -> Path:
    """Copy graph.json and weights.safetensors out of an untrusted directory; return dest."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name in MODEL_FILES:
        # the graph has its own, much smaller limit: the evaluator refuses more
        limit = min(max_bytes, MAX_GRAPH_BYTES) if name == "graph.json" else max_bytes
        _copy_plain_file(Path(src_dir), name, dest_dir / name, limit)
    return dest_dir


class LogFile:
    """Appends output lines to a log, up to MAX_LOG_BYTES; used from one reader thread."""

    def __init__(self, path: Path, limit: int = MAX_LOG_BYTES):
        self.file = open(path, "a", encoding="utf-8", errors="replace")
        self.left = limit

    def write(self, line: str) -> None:
        if self.left <= 0:
            return
        data = line + "\n"
        if len(data) > self.left:
            data = data[:self.left] + "\n[log truncated]\n"
        self.left -= len(data)
        self.file.write(data)

    def close(self) -> None:
        self.file.close()


def _make_writable(func, path, exc) -> None:
    """rmtree error handler: a child may leave directories without write permission."""
    try:
        parent = os.path.dirname(path)
        os.chmod(parent, 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
        func(path)
    except OSError:
        pass


def cleanup(ws: Workspace, keep: bool = False) -> None:
    """Remove work/ and eval/ (unless keep); the logs stay for later inspection."""
    if keep:
        return
    for path in (ws.work, ws.root / "export", ws.eval_dir):
        if os.path.lexists(path):
            shutil.rmtree(path, onerror=_make_writable)

"""The exported models of this node's own runs, kept to score them again later.

    store = ModelStore(home / "models")
    store.put(key, graph_dir)          # after an ok run: graph.json + weights.safetensors
    store.get(key)                     # the stored directory, or None

A verifier scores a claim and the claim's parent on the same secret test windows; the
parent's model is usually one this node trained already, so keeping it saves a re-run.

A stored model is data (a graph of allowed operators and safetensors weights) that the
trusted evaluator checks again every time it loads it, and a key names one program
(its sha256), one arena and one seed: a model is only ever scored for the run that made
it, never read by another program's run. The store is bounded: the least recently
used models go first once it passes `max_bytes`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

MODEL_FILES = ("graph.json", "weights.safetensors")
DEFAULT_MAX_BYTES = 2 * 2**30


def model_key(source: str, arena: str, seed: int) -> str:
    """One program, trained in one arena with one seed."""
    text = f"{hashlib.sha256(source.encode('utf-8')).hexdigest()}\0{arena}\0{seed}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


class ModelStore:
    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root)
        self.max_bytes = max_bytes

    def get(self, key: str) -> Path | None:
        path = self.root / key
        if not all((path / name).is_file() for name in MODEL_FILES):
            return None
        now = time.time()
        os.utime(path, (now, now))  # recently used: pruned last
        return path

    def put(self, key: str, graph_dir: Path) -> None:
        """Copy a checked run's model in (atomically: a partial copy is never found)."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / key
        if final.exists():
            return
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for name in MODEL_FILES:
                shutil.copyfile(Path(graph_dir) / name, tmp / name)
            os.replace(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.exists():
                raise
        self.prune()

    def prune(self) -> None:
        entries = []
        for path in self.root.iterdir():
            if path.name.startswith(".") or not path.is_dir():
                continue
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            entries.append((path.stat().st_mtime, size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            shutil.rmtree(path, ignore_errors=True)
            total -= size

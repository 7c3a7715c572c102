"""The HTTP client that fetches a downloaded dataset's files: retries, resuming, sha256.

Not part of the genome id, because what it fetches certifies itself: the digest of the
data prepare.py builds from the shards names the arena (`climbmix.<16 hex>`), so nodes
whose downloaders differ but fetched the same bytes compare scores, and nodes that got
other bytes never do. A fix here therefore never splits the swarm.

Only the node uses it, through prepare.py when a shard is not cached; the sandboxed
training and evaluation children never download and run without this file.

Imports only the standard library.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

Progress = Callable[[str, int, int], None]


class DownloadError(Exception):
    """A file could not be downloaded; the message says why, on one line."""


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


def _tmp_path(path: Path) -> Path:
    # Unique per writer, so two processes downloading into one home never collide.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of each redirect: Hugging Face puts the LFS sha256
    in X-Linked-Etag on the redirect, not on the CDN's final response."""

    def __init__(self):
        self.headers = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _sha256_from_headers(header_sets: list) -> str | None:
    for key in ("X-Linked-Etag", "ETag"):
        for headers in header_sets:
            value = (headers.get(key) or "").strip()
            value = value.removeprefix("W/").strip('"').lower()
            if re.fullmatch(r"[0-9a-f]{64}", value):
                return value
    return None


class _Partial:
    """The resumable part of one download: `.<name>.part` beside dest, locked by this process,
    and `.<name>.part.json`, the URL and sha256 its bytes belong to.

    A download resumes (HTTP Range) only when the sha256 it must reach is known (pinned, or
    advertised by the server) and the same as when it started: a resumed file is checked as
    a whole, so bytes of an older version of the file can never pass. Interrupted downloads
    (network errors, truncation, Ctrl-C, kill) keep their part; wrong bytes discard it.
    """

    def __init__(self, dest: Path):
        self.path = dest.with_name(f".{dest.name}.part")
        self.meta = dest.with_name(f".{dest.name}.part.json")
        self.fd: int | None = None

    def lock(self) -> bool:
        """Own the part file; False when another process is downloading it right now."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def resume_offset(self, url: str, expected: str | None) -> int:
        """Bytes already fetched that a request for url may continue from (0: start over)."""
        try:
            meta = json.loads(self.meta.read_text())
            size = os.fstat(self.fd).st_size
        except (OSError, ValueError):
            return 0
        if (not isinstance(meta, dict) or meta.get("url") != url
                or not isinstance(meta.get("sha256"), str)
                or (expected is not None and meta["sha256"] != expected)):
            return 0
        return size

    def sha256(self) -> str | None:
        try:
            return json.loads(self.meta.read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            return None

    def begin(self, url: str, sha256: str) -> None:
        self.discard()
        _atomic_write_bytes(self.meta, json.dumps({"url": url, "sha256": sha256}).encode())

    def discard(self) -> None:
        os.ftruncate(self.fd, 0)
        self.meta.unlink(missing_ok=True)

    def release(self) -> None:
        if self.fd is None:
            return
        if os.fstat(self.fd).st_size == 0:  # nothing worth resuming: leave no litter
            self.meta.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # the lock goes with it
        self.fd = None


def _range_start(response) -> int | None:
    """The first byte of a 206 response's Content-Range ('bytes 100-999/1000' -> 100)."""
    match = re.fullmatch(r"bytes\s+(\d+)-\d+/(?:\d+|\*)",
                         (response.headers.get("Content-Range") or "").strip())
    return int(match.group(1)) if match else None


def download_file(url: str, dest: Path, *, expected_sha256: str | None = None,
                  attempts: int = 5, backoff_s: float = 1.0, timeout_s: float = 60.0,
                  max_bytes: int = 8 << 30, progress: Progress | None = None) -> str:
    """Download url to dest atomically; returns the file's sha256.

    The expected sha256 is the pinned one when given, else the server's
    X-Linked-Etag / ETag when it is a sha256 (Hugging Face LFS files). A
    mismatch deletes the download and retries; network errors, truncated
    bodies and 5xx responses retry with exponential backoff, resuming with an
    HTTP Range request where the sha256 is known (see _Partial), also across
    runs. A body over max_bytes is refused (a broken or hostile server must
    not fill the disk). Progress: ("download <name>", bytes, total bytes or 0).
    Raises DownloadError.
    """
    progress = progress or _no_progress
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _Partial(dest)
    if not part.lock():  # another process is fetching the same file: no resuming here
        part = None
    last_error = "no attempt made"
    try:
        for attempt in range(attempts):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            tmp = _tmp_path(dest)
            offset = part.resume_offset(url, expected_sha256) if part else 0
            headers = {"User-Agent": "loopy-prepare/1"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            redirects = _RecordRedirects()
            opener = urllib.request.build_opener(redirects)
            request = urllib.request.Request(url, headers=headers)
            try:
                with opener.open(request, timeout=timeout_s) as response:
                    expected = expected_sha256 or _sha256_from_headers(
                        redirects.headers + [response.headers])
                    resumed = offset and (response.status == 206 and expected == part.sha256()
                                          and _range_start(response) == offset)
                    if offset and not resumed:  # a new version of the file, or no resuming
                        part.discard()
                        if response.status != 200:
                            last_error = f"the server did not resume at byte {offset}"
                            continue
                        offset = 0
                    length = int(response.headers.get("Content-Length") or 0)
                    total = offset + length if length else 0
                    if total > max_bytes:
                        if part:
                            part.discard()
                        raise DownloadError(f"{url} is {total} bytes, over {max_bytes}")
                    digest, done = hashlib.sha256(), offset
                    target = part.path if part and expected else tmp  # resumable: the part
                    if target != tmp and not offset:
                        part.begin(url, expected)
                    with open(target, "r+b" if target != tmp else "wb") as f:
                        if target != tmp:  # hash what came before, write after it
                            for block in iter(lambda: f.read(1 << 20), b""):
                                digest.update(block)
                            f.truncate(offset)
                        for block in iter(lambda: response.read(1 << 20), b""):
                            if done + len(block) > max_bytes:
                                if part:
                                    part.discard()
                                raise DownloadError(f"{url} sent over {max_bytes} bytes")
                            f.write(block)
                            digest.update(block)
                            done += len(block)
                            progress(f"download {dest.name}", done, total)
                if total and done != total:
                    last_error = f"truncated download ({done} of {total} bytes)"
                    continue
                actual = digest.hexdigest()
                if expected and actual != expected:
                    last_error = f"sha256 mismatch (expected {expected}, got {actual})"
                    if target != tmp:
                        part.discard()
                    continue
                os.replace(target, dest)
                if target != tmp:
                    part.meta.unlink(missing_ok=True)
                return actual
            except urllib.error.HTTPError as e:
                last_error = f"HTTP {e.code} {e.reason}"
                if offset and e.code == 416:  # the part is not a prefix of this file
                    part.discard()
                elif e.code < 500 and e.code not in (408, 429):
                    raise DownloadError(f"cannot download {url}: {last_error}") from e
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                last_error = f"{type(e).__name__}: {reason}"
            finally:
                tmp.unlink(missing_ok=True)
    finally:
        if part:
            part.release()
    raise DownloadError(f"cannot download {url} after {attempts} attempts: {last_error}")

"""Tests for genome/download.py, the HTTP client behind downloaded datasets: sha256 checks,
size limits, retries and resuming, against a local server (tests/shard_server.py)."""

import hashlib
import json

import numpy as np
import pytest

from genome import download as D
from shard_server import SPEC, ShardServer

BIG = bytes(np.random.default_rng(0).integers(0, 256, 3 * 2**20 + 12345, dtype=np.uint8))


def test_download_without_a_sha_header_is_accepted(tmp_path, shard_files):
    with ShardServer(shard_files) as server:
        server.advertise_sha = False
        digest = D.download_file(f"{server.url}/{SPEC.shard_name(1)}", tmp_path / "s.parquet")
    assert digest == hashlib.sha256(shard_files[SPEC.shard_name(1)]).hexdigest()


def test_oversized_download_is_refused(tmp_path, shard_files):
    with ShardServer(shard_files) as server:
        with pytest.raises(D.DownloadError, match="over 100"):
            D.download_file(f"{server.url}/{SPEC.shard_name(0)}", tmp_path / "dl" / "s",
                            max_bytes=100)
    assert list((tmp_path / "dl").iterdir()) == []


def test_truncated_every_time_fails_clearly(tmp_path):
    with ShardServer({"big.bin": BIG}) as server:
        server.ranges = False
        server.truncate_first = _Always(1000)
        with pytest.raises(D.DownloadError, match="truncated download"):
            D.download_file(f"{server.url}/big.bin", tmp_path / "big.bin", attempts=2,
                            backoff_s=0.01)


class _Always(dict):
    """truncate_first that never runs out."""

    def __init__(self, cut):
        super().__init__()
        self.cut = cut

    def pop(self, key, default=None):
        return self.cut


class _Interrupt(Exception):
    pass


def interrupt_after(limit):
    """A progress callback that stops the download (as Ctrl-C or a kill would) past limit bytes."""
    def progress(stage, done, total):
        if done >= limit:
            raise _Interrupt(done)
    return progress


def test_an_interrupted_download_resumes_in_the_next_run(tmp_path):
    dest = tmp_path / "dl" / "big.bin"
    with ShardServer({"big.bin": BIG}) as server:
        url = f"{server.url}/big.bin"
        with pytest.raises(_Interrupt):
            D.download_file(url, dest, progress=interrupt_after(1))
        part = dest.with_name(".big.bin.part")
        assert part.stat().st_size == 2**20 and not dest.exists()  # one block was written
        assert json.loads(dest.with_name(".big.bin.part.json").read_text()) == {
            "url": url, "sha256": hashlib.sha256(BIG).hexdigest()}
        seen = []
        digest = D.download_file(url, dest, progress=lambda *a: seen.append(a[1:]))
    assert digest == hashlib.sha256(BIG).hexdigest() and dest.read_bytes() == BIG
    assert server.ranges_asked == [("big.bin", None), ("big.bin", f"bytes={2**20}-")]
    assert seen[0] == (2 * 2**20, len(BIG)) and seen[-1] == (len(BIG), len(BIG))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["big.bin"]


def test_a_resumed_download_of_a_changed_file_starts_over(tmp_path):
    dest = tmp_path / "big.bin"
    with ShardServer({"big.bin": BIG}) as server:
        url = f"{server.url}/big.bin"
        with pytest.raises(_Interrupt):
            D.download_file(url, dest, progress=interrupt_after(1))
        server.files["big.bin"] = changed = BIG[::-1]  # upstream published a new version
        digest = D.download_file(url, dest, backoff_s=0.01)
    assert digest == hashlib.sha256(changed).hexdigest() and dest.read_bytes() == changed
    # the Range request got a 206 for another sha256: dropped, and the next request is whole
    assert [r for _, r in server.ranges_asked] == [None, f"bytes={2**20}-", None]


def test_a_pinned_sha_resumes_and_a_wrong_part_is_caught(tmp_path):
    dest = tmp_path / "big.bin"
    sha = hashlib.sha256(BIG).hexdigest()
    with ShardServer({"big.bin": BIG}) as server:
        server.advertise_sha = False
        url = f"{server.url}/big.bin"
        with pytest.raises(_Interrupt):
            D.download_file(url, dest, expected_sha256=sha, progress=interrupt_after(1))
        part = dest.with_name(".big.bin.part")
        part.write_bytes(b"\0" * 2**20)  # the part on disk went bad
        with pytest.raises(D.DownloadError, match="sha256 mismatch"):
            D.download_file(url, dest, expected_sha256=sha, attempts=1)
        assert not part.exists()  # wrong bytes are never resumed from
        assert D.download_file(url, dest, expected_sha256=sha, attempts=1) == sha
    assert dest.read_bytes() == BIG


def test_without_a_known_sha_nothing_is_kept_to_resume(tmp_path):
    dest = tmp_path / "dl" / "big.bin"
    with ShardServer({"big.bin": BIG}) as server:
        server.advertise_sha = False
        url = f"{server.url}/big.bin"
        with pytest.raises(_Interrupt):
            D.download_file(url, dest, progress=interrupt_after(1))
        assert list(dest.parent.iterdir()) == []  # bytes nobody can check are not resumed
        D.download_file(url, dest)
    assert [r for _, r in server.ranges_asked] == [None, None]
    assert dest.read_bytes() == BIG


def test_a_download_another_process_holds_still_works(tmp_path):
    dest = tmp_path / "big.bin"
    other = D._Partial(dest)
    assert other.lock()  # as if a second node on this home were fetching the same file
    try:
        with ShardServer({"big.bin": BIG}) as server:
            assert D.download_file(f"{server.url}/big.bin", dest) == hashlib.sha256(BIG).hexdigest()
    finally:
        other.release()
    assert dest.read_bytes() == BIG and not other.path.exists()


def test_a_range_the_server_cannot_satisfy_starts_over(tmp_path):
    dest = tmp_path / "big.bin"
    with ShardServer({"big.bin": BIG}) as server:
        url = f"{server.url}/big.bin"
        with pytest.raises(_Interrupt):
            D.download_file(url, dest, progress=interrupt_after(1))
        part = dest.with_name(".big.bin.part")
        part.write_bytes(b"\0" * (len(BIG) + 5))  # longer than the file: 416
        assert D.download_file(url, dest, backoff_s=0.01) == hashlib.sha256(BIG).hexdigest()
    assert [r for _, r in server.ranges_asked][-2:] == [f"bytes={len(BIG) + 5}-", None]

"""The arena a run is scored in: the data digest of downloaded datasets, and the hardware
class (per card for time budgets, shared by precision for token budgets on CUDA).

Shards are served by a local HTTP server (tests/shard_server.py); nothing leaves the machine.
"""
from types import SimpleNamespace

import pytest
import torch

from experiments.run import harness
from genome import prepare as P
from shard_server import SPEC, ShardServer, write_shard


@pytest.fixture
def small_downloads(monkeypatch):
    """prepare_data with a small vocab and 2 shards, from the URL in LOOPY_DATA_URL."""
    monkeypatch.setattr(harness, "_prepared", {})

    def prepare_data(home, dataset="embedded", progress=None, **kw):
        return P._prepare(home, dataset, progress, vocab_size=300, num_shards=2,
                          backoff_s=0.01)
    monkeypatch.setattr(P, "prepare_data", prepare_data)


def test_the_embedded_arena_is_unchanged_and_needs_no_data(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "_prepare_data", lambda *a: pytest.fail("prepared data"))
    assert harness._resolve("cpu", "embedded", "300ktok", tmp_path)[3] == \
        "embedded/tokens:300000/cpu"
    assert harness._resolve("cpu", None, None, tmp_path)[3] == "embedded/tokens:300000/cpu"


def test_a_downloaded_dataset_names_its_data_in_the_arena(tmp_path, monkeypatch, shard_files,
                                                          small_downloads):
    with ShardServer(shard_files) as server:
        monkeypatch.setenv(P.DATA_URL_ENV, server.url)
        arena = harness._resolve("cpu", "climbmix", "300ktok", tmp_path / "a")[3]
        paths = P.prepare_data(tmp_path / "a", "climbmix")
        assert arena == f"climbmix.{P.data_digest(paths)}/tokens:300000/cpu"
        assert harness._resolve("cpu", "climbmix", "300ktok", tmp_path / "b")[3] == arena
        assert harness._resolve("cpu", "climbmix", "300ktok")[3] == "climbmix/tokens:300000/cpu"
    other = dict(shard_files)
    other[SPEC.shard_name(SPEC.val_shard)] = write_shard(tmp_path / "v.parquet",
                                                         ["Other validation bytes."] * 30)
    with ShardServer(other) as mirror:
        monkeypatch.setenv(P.DATA_URL_ENV, mirror.url)
        elsewhere = harness._resolve("cpu", "climbmix", "300ktok", tmp_path / "c")[3]
    assert elsewhere != arena and elsewhere.split("/")[1:] == arena.split("/")[1:]


def test_results_carry_the_digested_arena(tmp_path, monkeypatch, shard_files, small_downloads):
    with ShardServer(shard_files) as server:
        monkeypatch.setenv(P.DATA_URL_ENV, server.url)
        arena = harness._resolve("cpu", "climbmix", "1ktok", tmp_path)[3]
        result = harness.run_experiment("import os\nos.system('true')\n", home=tmp_path,
                                        dataset="climbmix", budget="1ktok", device="cpu")
        patched = harness.run_patch("--- a/genome/prepare.py\n+++ b/genome/prepare.py\n",
                                    home=tmp_path, dataset="climbmix", budget="1ktok",
                                    device="cpu")
    assert arena.startswith("climbmix.")
    assert (result.status, result.arena) == ("rejected", arena)
    assert (patched.status, patched.arena) == ("rejected", arena)


def test_token_budgets_on_cuda_share_one_class(tmp_path, monkeypatch, shard_files,
                                               small_downloads):
    monkeypatch.setattr(harness, "detect_device", lambda pref: "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(
        name="NVIDIA H100 80GB HBM3", total_memory=85_520_809_984))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with ShardServer(shard_files) as server:
        monkeypatch.setenv(P.DATA_URL_ENV, server.url)
        tokens = harness._resolve("cuda", None, "50Mtok", tmp_path)[3]
        time = harness._resolve("cuda", None, None, tmp_path)[3]
    digest = P.data_digest(P.prepare_data(tmp_path, "climbmix"))
    assert tokens == f"climbmix.{digest}/tokens:50000000/cuda"
    assert time == f"climbmix.{digest}/time:300/nvidia-h100-80gb"

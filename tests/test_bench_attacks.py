"""bench/bench_attacks.py at its smallest: every attack against 2 honest nodes for a few
seconds each (real libp2p on 127.0.0.1). Checks the harness, and what must hold at any
scale: no honest node stops or logs a traceback, and no store grows past the bound."""
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import bench_attacks  # noqa: E402


@pytest.mark.slow  # 10 swarms of 2 nodes, about 4 minutes
def test_every_attack_at_the_smallest_scale(tmp_path):
    out = tmp_path / "rows.json"
    assert bench_attacks.main([
        "--nodes", "2", "--procs", "1", "--duration", "12", "--delay", "2",
        "--scale", "0.02", "--flood-rate", "4", "--baseline-runs", "1",
        "--no-write", "--json", str(out)]) == 0
    rows = {row["attack"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == set(bench_attacks.ATTACKS)
    for attack, row in rows.items():
        assert row["runs"] > 0, attack
        assert not row["stopped"], (attack, row["stopped"])
        assert not row["log_tracebacks"] and not row["stderr_tracebacks"], \
            (attack, row["first_tracebacks"])
        assert row["attack_bytes"] <= row["bound"] and row["charged"] <= row["bound"], attack
    a = {attack: row["attacker"] for attack, row in rows.items()}
    assert a["squat-1"]["published"] >= 1 and a["squat-1000"]["published"] >= 1
    assert a["flood-valid"]["flooded"] > 0 and a["flood-orphan"]["flooded"] > 0
    assert a["fake-claims"]["flooded"] > 0
    assert a["slow-sync"]["streams_opened"] > 0
    assert a["discovery"]["published"] > 0
    # records with invented parents wait in quarantine, never in the store
    assert rows["flood-orphan"]["attack_records"] == 0
    # nothing was dialled off 127.0.0.1 however the addresses were poisoned
    for node in rows["discovery"]["nodes"].values():
        assert set(node["dials"]) <= {"loopback"}, node["dials"]

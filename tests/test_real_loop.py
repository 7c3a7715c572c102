"""bench/real_loop.py's reading and reporting, on a synthetic node's store (seconds, no training)."""
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_real_loop", REPO / "bench" / "real_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


real_loop = _load_bench()
ARGS = Namespace(core=1, topic="general", agent="mutate", dataset="embedded", budget="60s",
                 seed=0, edits=20)


@pytest.fixture(scope="module")
def synthetic_home(tmp_path_factory):
    """A home where a synthetic node ran 3 baselines and 22 edits, as the benchmark's would."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPY_")}
    out = subprocess.run([sys.executable, str(REPO / "node.py"), "start", "--offline",
                          "--trainer", "synthetic", "--topic", "general", "--max-experiments",
                          "25", "--plain", "--home", str(home)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return home


def test_report_scores_every_run_with_the_nodes_rules(synthetic_home):
    report = real_loop.read_report(synthetic_home)
    runs, sigma = report["runs"], report["sigma"]
    assert len(runs) == 25 and [r["n"] for r in runs] == list(range(1, 26))
    assert [r["baseline"] for r in runs[:3]] == [True] * 3
    assert not any(r["baseline"] for r in runs[3:])
    # sigma is the std over the baseline seeds, the root score seed 0's baseline
    assert sorted(report["baselines"]) == [0, 1, 2]
    per_seed = [statistics.median(v) for v in report["baselines"].values()]
    assert sigma == pytest.approx(max(statistics.stdev(per_seed), 1e-4))
    assert report["root_score"] == pytest.approx(per_seed[0])
    for r in runs[3:]:
        if r["status"] == "ok":
            assert r["delta_sigma"] == pytest.approx(r["delta"] / sigma)
            assert r["kept"] == (r["delta"] < -2 * sigma)
        else:
            assert not r["kept"] and r["delta"] is None
    assert report["kept"] == [r for r in runs if r["kept"]]
    # the running best never rises, starts at the seed-0 baseline, ends at the best
    best = [r["running_best"] for r in runs]
    assert best[0] == pytest.approx(report["root_score"])
    assert all(b <= a for a, b in zip(best, best[1:]))
    assert best[-1] == pytest.approx(report["best"]["val_bpb"])
    assert report["attestations"] == 0


def test_rendered_section_lists_every_run_and_says_the_goal(synthetic_home):
    report = real_loop.read_report(synthetic_home)
    text = real_loop.render(report, None, ARGS, "wrote x.png", "real_loop.png", [], None)
    assert text.startswith("<!-- bench_real_loop -->")
    assert text.endswith("<!-- /bench_real_loop -->")
    table = [line for line in text.splitlines() if line.startswith("| ") and "(parent " in line]
    assert [int(line.split("|")[1]) for line in table] == list(range(1, 26))
    steps = [line for line in text.splitlines() if line.startswith("| ") and
             line.count("|") == 6 and line.split("|")[1].strip().isdigit()]
    assert steps and float(steps[-1].split("|")[2]) == pytest.approx(
        report["best"]["val_bpb"], abs=1e-4)
    met, _ = real_loop.goal_verdict(report)
    assert ("met (" in text) == met and ("MISSED" in text) == (not met)
    assert "![running best and every run](real_loop.png)" in text


def _report(deltas, sigma=0.01, statuses=None):
    runs = [{"n": i + 1, "desc": f"[E{i}] edit", "baseline": False,
             "status": (statuses or {}).get(i, "ok"), "val_bpb": 2.0 + d, "delta": d,
             "delta_sigma": d / sigma, "kept": d < -2 * sigma, "verified": True,
             "parent": "root", "train_s": 60.0, "total_s": 100.0, "steps": 200,
             "tokens": 1, "reason": "", "t_ms": i, "running_best": 2.0}
            for i, d in enumerate(deltas)]
    return {"arena": "embedded/time:60/cpu", "runs": runs, "sigma": sigma, "root_score": 2.0,
            "baselines": {0: [2.0]}, "best": None, "attestations": 0,
            "kept": [r for r in runs if r["kept"]]}


def test_goal_needs_three_edits_each_past_two_sigma():
    assert real_loop.goal_verdict(_report([-0.03, -0.025, -0.021, 0.01]))[0]
    assert not real_loop.goal_verdict(_report([-0.03, -0.025, 0.01]))[0]
    # a 'kept' flag without the margin (a store scored with other rules) does not count
    report = _report([-0.03, -0.025, -0.015])
    report["kept"] = report["runs"]
    met, text = real_loop.goal_verdict(report)
    assert not met and "2 of 3" in text
    # no sigma (baselines crashed): nothing is above the noise
    report = _report([-0.5, -0.5, -0.5])
    report["sigma"] = None
    assert not real_loop.goal_verdict(report)[0]


def test_failed_proposals_survive_a_damaged_log(tmp_path):
    lines = [json.dumps({"desc": "[A] x", "reason": "duplicate"}), "{not json", "[1, 2]",
             json.dumps({"desc": "d" * 5000, "reason": 7})]
    (tmp_path / "proposals.jsonl").write_text("\n".join(lines) + "\n")
    found = real_loop.failed_proposals(tmp_path)
    assert found[0] == {"desc": "[A] x", "reason": "duplicate"}
    assert len(found) == 2 and len(found[1]["desc"]) == 200 and found[1]["reason"] == "7"
    assert real_loop.failed_proposals(tmp_path / "missing") == []


def test_node_command_runs_baselines_plus_edits_pinned():
    cmd = real_loop.node_command(Path("/h"), ARGS)
    assert cmd[:3] == ["taskset", "-c", "1"]
    assert cmd[cmd.index("--max-experiments") + 1] == "23"
    assert "--offline" in cmd and cmd[cmd.index("--budget") + 1] == "60s"


@pytest.mark.parametrize("other_busy, warned", [(0.5, True), (0.05, False)])
def test_a_busy_other_core_is_warned_about_before_the_run(monkeypatch, capsys, other_busy,
                                                          warned):
    readings = iter([{"cpu0": (0, 0), "cpu1": (0, 0)},
                     {"cpu0": (int(100 * other_busy), 100), "cpu1": (100, 100)}])
    monkeypatch.setattr(real_loop, "cpu_times", lambda: next(readings))
    monkeypatch.setattr(real_loop.time, "sleep", lambda s: None)
    real_loop.warn_if_busy(core=1)      # the node's own core (cpu1) is not counted
    err = capsys.readouterr().err
    assert ("cpu0 50%" in err and "noisier" in err) if warned else err == ""

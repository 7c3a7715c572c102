"""The command line end to end, on the synthetic trainer (no training, seconds)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import node
from experiments.research.home import lock_home
from experiments.research.scoreboard import ScoreRules
from experiments.research.settings import ConfigError, load_settings, score_rules, trust_rules
from swarm.identity import NodeIdentity, peer_id_from_public_key

REPO = Path(__file__).resolve().parent.parent


def loopy(*args, home, env=None, timeout=300):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPY_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(REPO / "node.py"), *args, "--home", str(home)],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=REPO)


@pytest.fixture(scope="module")
def researched_home(tmp_path_factory):
    """A home where a synthetic node ran 25 experiments."""
    home = tmp_path_factory.mktemp("home")
    out = loopy("start", "--offline", "--trainer", "synthetic", "--topic", "optimizer",
                "--max-experiments", "25", "--plain", home=home)
    assert out.returncode == 0, out.stderr
    return home


def test_start_records_every_experiment(researched_home):
    out = loopy("status", "--json", home=researched_home)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    for key in ("peer_id", "genome", "arena", "records", "experiments_local", "best", "peers"):
        assert key in status
    assert status["experiments_local"] == 25
    assert status["records"] == 25
    assert status["peers"] == []
    assert status["arena"].startswith("synthetic/")
    assert status["running"] is False
    # what the node ran with, not the status command's defaults (topic general, online)
    assert status["topics"] == ["optimizer"] and status["offline"] is True
    if status["best"] is not None:
        assert set(status["best"]) >= {"id", "val_bpb", "verified", "arena"}


def test_restart_resumes_from_the_store(researched_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(researched_home, home)
    out = loopy("start", "--offline", "--trainer", "synthetic", "--max-experiments", "3",
                "--plain", home=home)
    assert out.returncode == 0, out.stderr
    status = json.loads(loopy("status", "--json", home=home).stdout)
    assert status["experiments_local"] == 28


def newest_edit(home) -> str:
    """The id of the newest experiment with a patch in home: whether the synthetic run
    kept anything is up to its landscape, but every run records edits."""
    from genome import genome_root_id
    from swarm.store import Store

    store = Store.open(home, root_id=genome_root_id())
    try:
        edits = [r for r in store.experiments() if r.patch]
    finally:
        store.close()
    assert edits, "the synthetic run recorded no edit"
    return max(edits, key=lambda r: (r.t, r.id)).id_hex


def test_export_patch_applies_to_a_fresh_checkout(researched_home, tmp_path):
    out = loopy("log", home=researched_home)
    assert out.returncode == 0, out.stderr
    record = newest_edit(researched_home)
    patch = loopy("export", "--record", record, home=researched_home)
    assert patch.returncode == 0, patch.stderr
    source = loopy("export", "--format", "source", "--record", record,
                   home=researched_home).stdout
    checkout = tmp_path / "checkout"
    (checkout / "genome").mkdir(parents=True)
    shutil.copy(REPO / "genome" / "train.py", checkout / "genome" / "train.py")
    (tmp_path / "best.patch").write_text(patch.stdout)
    subprocess.run(["git", "init", "-q"], cwd=checkout, check=True)
    subprocess.run(["git", "apply", str(tmp_path / "best.patch")], cwd=checkout, check=True)
    assert (checkout / "genome" / "train.py").read_text() == source
    tsv = loopy("export", "--format", "tsv", "--record", record, home=researched_home).stdout
    assert tsv.splitlines()[0].split("\t") == ["commit", "val_bpb", "memory_gb", "status",
                                               "description", "val_delta", "test_delta"]


def test_second_node_on_the_same_home_is_refused(tmp_path):
    lock = lock_home(tmp_path)
    try:
        out = loopy("start", "--offline", "--trainer", "synthetic", "--max-experiments", "1",
                    home=tmp_path)
        assert out.returncode != 0
        assert "another node is running" in out.stderr
    finally:
        lock.close()


def test_config_precedence_flag_env_file_default(tmp_path):
    (tmp_path / "config.toml").write_text('budget = "100ktok"\nseed = 3\ntopic = ["init"]\n')
    s = load_settings({"home": str(tmp_path)}, environ={})
    assert (s.budget, s.seed, s.topic, s.agent) == ("100ktok", 3, ["init"], "mutate")
    s = load_settings({"home": str(tmp_path)}, environ={"LOOPY_SEED": "5"})
    assert s.seed == 5
    s = load_settings({"home": str(tmp_path), "seed": 7}, environ={"LOOPY_SEED": "5"})
    assert s.seed == 7


@pytest.mark.parametrize("content, message", [
    ("bogus = 1\n", "unknown key 'bogus'"),
    ("seed = 'x'\n", "seed must be int"),
    ("seed = [\n", "not valid TOML"),
    ("verify_share = 1.5\n", "verify_share must be between 0 and 1"),
    ("merge_share = 0.8\nport_share = 0.3\n", "port_share must be at most 1"),
    ("trust_k = 0\n", "trust_k must be at least 1"),
    ("speculate_share = -0.1\n", "speculate_share must be between 0 and 1"),
    ("trust_peer = ['QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N']\n",
     "trust_peer: 'QmYy"),
    ("trust_peer = ['12D3KooWnotapeer']\n", "is not an ed25519 peer id"),
])
def test_bad_config_file_names_the_problem(tmp_path, content, message):
    (tmp_path / "config.toml").write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings({"home": str(tmp_path)}, environ={})
    out = loopy("config", home=tmp_path)
    assert out.returncode == 2 and message.split("'")[0] in out.stderr


def test_trust_peer_names_the_operators_other_nodes_by_peer_id(tmp_path):
    other = NodeIdentity.load_or_create(tmp_path / "other")
    peer = peer_id_from_public_key(other.public_key)
    s = load_settings({"home": str(tmp_path)}, environ={"LOOPY_TRUST_PEER": peer})
    assert s.trust_peer == [peer]
    assert trust_rules(s).operator_keys == {other.public_key}
    assert trust_rules(load_settings({"home": str(tmp_path)}, environ={})).operator_keys \
        == frozenset()
    # the keep rule stays the default until one operator runs a large swarm
    assert score_rules(s) == ScoreRules()
    many = [peer_id_from_public_key(NodeIdentity.generate().public_key) for _ in range(15)]
    big = load_settings({"home": str(tmp_path), "trust_peer": many, "seed": 4}, environ={})
    assert score_rules(big) == ScoreRules(seed=4, noise_k=1.5, baseline_repeats=16)


def test_unknown_environment_variable_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="LOOPY_BOGUS"):
        load_settings({"home": str(tmp_path)}, environ={"LOOPY_BOGUS": "1"})


def test_every_command_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    parser = node.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in commands:
        assert f"loopy {name}" in readme, f"README does not document `loopy {name}`"


def test_start_without_its_dataset_stops_with_a_clear_error_before_any_run(tmp_path):
    """The data is prepared before the loop: a missing dataset is one error line at
    start, not a traceback from inside the loop (nor a run recorded as failed)."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/nothing-here"
        out = loopy("start", "--offline", "--trainer", "genome", "--device", "cpu",
                    "--dataset", "climbmix", "--max-experiments", "1", "--plain",
                    home=tmp_path, env={"LOOPY_DATA_URL": url}, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 2, out.stderr
    assert "loopy: error: dataset 'climbmix' needs a download" in out.stderr
    assert "404" in out.stderr
    assert "Traceback" not in out.stderr
    status = json.loads(loopy("status", "--json", home=tmp_path).stdout)
    assert status["records"] == 0


@pytest.mark.parametrize("claim, verdict, code", [
    ("honest", "reproduced", 0), ("overstated", "refuted", 1), ("crashes here", None, 1)])
def test_verify_by_hand_attests_only_what_it_measured(researched_home, tmp_path, claim,
                                                      verdict, code):
    """A run that crashes here may be this machine's fault: no verdict, no attestation."""
    from experiments.simulation.synthetic import SyntheticTrainer
    from genome import base_train_source, genome_id, genome_root_id
    from swarm.identity import NodeIdentity
    from swarm.patch import make_patch
    from swarm.records import make_experiment
    from swarm.store import Store

    home = tmp_path / "home"
    shutil.copytree(researched_home, home)
    base = base_train_source()
    source = base.replace("WARMDOWN_FRAC = 0.5 ", "WARMDOWN_FRAC = 0.4 ")
    if claim == "crashes here":
        source += "\ndef broken(:\n"      # the synthetic trainer crashes on what won't parse
    val = {"honest": 9.0, "overstated": 0.5, "crashes here": 1.5}[claim]
    peer = NodeIdentity.load_or_create(tmp_path / "peer")
    record = make_experiment(
        peer, genome=genome_id(), parents=[genome_root_id()], topic="optimizer",
        arena=SyntheticTrainer(0).arena, patch=make_patch(base, source), desc=claim,
        agent="mutate", result={"status": "ok", "val_bpb": val, "train_s": 1.0,
                                "total_s": 1.0, "tokens": 1, "steps": 1, "params": 1,
                                "peak_mem_mb": 1.0})
    store = Store.open(home, root_id=genome_root_id())
    store.insert(record)
    store.close()
    out = loopy("verify", record.id_hex[:12], "--trainer", "synthetic", "--json", home=home)
    assert out.returncode == code, out.stderr
    report = json.loads(out.stdout)
    assert report["verdict"] == verdict
    store = Store.open(home, root_id=genome_root_id())
    try:
        verdicts = [a.verdict for a in store.attestations_for(record.id)]
    finally:
        store.close()
    assert verdicts == ([verdict] if verdict else [])


def test_verify_by_hand_attests_no_copy(researched_home, tmp_path):
    """A peer's record of a program this node ran first is re-run on request, but no
    attestation is made: a copy earns its author no reputation."""
    from experiments.simulation.synthetic import SyntheticTrainer
    from genome import base_train_source, genome_id, genome_root_id
    from swarm.identity import NodeIdentity
    from swarm.lineage import Lineage
    from swarm.patch import make_patch
    from swarm.records import make_experiment
    from swarm.store import Store

    home = tmp_path / "home"
    shutil.copytree(researched_home, home)
    base, root = base_train_source(), genome_root_id()
    store = Store.open(home, root_id=root)
    try:
        ours = next(r for r in store.experiments(local=True) if r.patch and r.status == "ok")
        source = Lineage(store, base, root).source_of(ours.id)
        peer = NodeIdentity.load_or_create(tmp_path / "peer")
        copy = make_experiment(
            peer, genome=genome_id(), parents=[root], topic="optimizer",
            arena=SyntheticTrainer(0).arena, patch=make_patch(base, source), desc="mine now",
            agent="mutate", result={"status": "ok", "val_bpb": ours.val_bpb - 0.001,
                                    "train_s": 1.0, "total_s": 1.0})
        store.insert(copy)
    finally:
        store.close()
    out = loopy("verify", copy.id_hex[:12], "--trainer", "synthetic", "--json", home=home)
    assert "repeats the program of" in out.stderr, out.stderr
    store = Store.open(home, root_id=root)
    try:
        assert store.attestations_for(copy.id) == []
    finally:
        store.close()

"""swarm.export: the squashed patch (git apply, patch -p1), the git am series, results.tsv
and the terminal listing, checked with the real tools in temporary repositories."""
import functools
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from swarm.export import (TSV_HEADER, baseline_bpb, export_patch, export_series,
                          export_source, export_tsv, log_lines)
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage, MissingAncestor
from swarm.patch import make_patch
from swarm.records import make_attestation, make_experiment
from swarm.store import Store
from swarm.trust import TrustPolicy, TrustRules

GENOME = "0123456789abcdef"
ARENA = "embedded/tokens:300000/cpu"
BASE = "".join(f"setting_{i} = {i}\n" for i in range(40))
ROOT = hashlib.sha256(BASE.encode()).digest()
ALICE, BOB, CAROL, OBSERVER = (NodeIdentity(bytes([n]) * 32) for n in (11, 12, 13, 14))
_t = iter(range(1_760_000_000_000, 1_800_000_000_000, 60_000))

needs_git = pytest.mark.skipif(not (shutil.which("git") and shutil.which("patch")),
                               reason="needs git and patch")


def vouching(store):
    """Who verified a record, as a node that trusts every peer not known to lie sees it."""
    trust = TrustPolicy(store, OBSERVER.public_key, TrustRules(trust_threshold=0.0))
    return lambda record_id: trust.verified_by(store.get(record_id))


def exp(parent, old, new, desc, bpb=None, who=ALICE, status="ok", mem=2048.0, topic="optimizer"):
    result = ({"status": "ok", "val_bpb": bpb, "peak_mem_mb": mem} if status == "ok"
              else {"status": status, "reason": "boom"})
    return make_experiment(who, genome=GENOME, parents=[parent], topic=topic, arena=ARENA,
                           patch=make_patch(old, new), desc=desc, agent="mutate",
                           result=result, t=next(_t))


@pytest.fixture
def world(tmp_path):
    """The genome's baseline run, a 4-step lineage (one step a no-op rerun, the last
    without a final newline), failed attempts beside it, and attestations."""
    store = Store.open(tmp_path / "store", root_id=ROOT)
    s1 = BASE.replace("setting_3 = 3\n", "setting_3 = 30\n")
    s2 = s1.replace("setting_20 = 20\n", "setting_20 = 21\nnew_line = 'été'\n")
    s4 = s2[:-1]  # drop the final newline
    baseline = exp(ROOT, BASE, BASE, "baseline seed=0", bpb=1.50)
    r1 = exp(ROOT, BASE, s1, "raise setting 3", bpb=1.40)
    r2 = exp(r1.id, s1, s2, "Réglage: change setting 20 [v2]", bpb=1.35, who=BOB)
    r3 = exp(r2.id, s2, s2, "rerun unchanged", bpb=1.34)
    r4 = exp(r3.id, s2, s4, "trim the final newline", bpb=1.30, who=CAROL)
    discarded = exp(r1.id, s1, s1 + "# worse\n", "a worse idea", bpb=1.45)
    crashed = exp(r2.id, s2, s2 + "boom()\n", "a crash", status="crash")
    store.insert_many([baseline, r1, r2, r3, r4, discarded, crashed])
    store.insert_many([
        make_attestation(BOB, genome=GENOME, target=r1.id, arena=ARENA, verdict="reproduced",
                         result={"status": "ok", "val_bpb": 1.41}, t=next(_t)),
        make_attestation(ALICE, genome=GENOME, target=r2.id, arena=ARENA,
                         verdict="reproduced", result={"status": "ok", "val_bpb": 1.36},
                         t=next(_t))])
    lineage = Lineage(store, BASE, ROOT)
    yield dict(store=store, lineage=lineage, chain=[r1, r2, r3, r4], sources=[s1, s2, s2, s4],
               discarded=discarded, crashed=crashed, baseline=baseline)
    store.close()


def _git(cwd: Path, *args, check=True):
    env = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd),
           "PATH": "/usr/bin:/bin", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=check, capture_output=True)


def _repo(path: Path) -> Path:
    (path / "genome").mkdir(parents=True)
    (path / "genome" / "train.py").write_bytes(BASE.encode())
    (path / "genome" / "prepare.py").write_text("# fixed\n")
    _git(path, "init", "-q")
    _git(path, "add", ".")
    _git(path, "commit", "-q", "-m", "genome")
    return path


def test_export_source(world):
    head = world["chain"][-1]
    assert export_source(world["lineage"], head.id) == world["sources"][-1]


@needs_git
def test_export_patch_applies_with_git_and_patch(world, tmp_path):
    head = world["chain"][-1]
    diff = export_patch(world["lineage"], head.id)
    assert diff.startswith("--- a/genome/train.py\n+++ b/genome/train.py\n")
    want = world["sources"][-1].encode()
    repo = _repo(tmp_path / "git")
    (repo / "edit.diff").write_text(diff)
    _git(repo, "apply", "--check", "edit.diff")
    _git(repo, "apply", "edit.diff")
    assert (repo / "genome" / "train.py").read_bytes() == want
    plain = tmp_path / "plain"
    (plain / "genome").mkdir(parents=True)
    (plain / "genome" / "train.py").write_bytes(BASE.encode())
    done = subprocess.run(["patch", "-p1", "--quiet", "--forward"], cwd=plain,
                          input=diff.encode(), capture_output=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (plain / "genome" / "train.py").read_bytes() == want


def test_export_patch_of_unchanged_source_is_empty(world):
    assert export_patch(world["lineage"], world["baseline"].id) == ""
    assert export_patch(world["lineage"], ROOT) == ""


@needs_git
def test_series_applies_with_git_am(world, tmp_path):
    chain = world["chain"]
    mbox = export_series(world["lineage"], chain[-1].id, verified_by=vouching(world["store"]))
    assert mbox.count("\nFrom: ") == 3  # the unchanged rerun has nothing to apply
    repo = _repo(tmp_path / "repo")
    (repo / "series.mbox").write_text(mbox)
    done = _git(repo, "am", "series.mbox", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (repo / "genome" / "train.py").read_bytes() == world["sources"][-1].encode()
    log = _git(repo, "log", "--format=%an <%ae>%n%s%n%b%n====", "-3").stdout.decode()
    entries = log.split("====\n")[:3][::-1]
    r1, r2, r4 = chain[0], chain[1], chain[3]
    assert entries[0].startswith(f"{ALICE.peer_id} <{ALICE.peer_id}@loopy.invalid>\n"
                                 f"optimizer: raise setting 3\n")
    assert "val_bpb: 1.500000 -> 1.400000 (-0.100000) in " + ARENA in entries[0]
    assert f"verified by: {BOB.peer_id}" in entries[0]
    assert f"Loopy-Record: {r1.id_hex}" in entries[0]
    assert "optimizer: Réglage: change setting 20 [v2]" in entries[1]  # non-ASCII subject
    assert BOB.peer_id in entries[1].split("\n")[0]
    assert f"verified by: {ALICE.peer_id}" in entries[1]
    assert "val_bpb: 1.340000 -> 1.300000 (-0.040000)" in entries[2]  # from the rerun step
    assert "verified by: nobody yet" in entries[2] and f"Loopy-Record: {r4.id_hex}" in entries[2]
    dates = _git(repo, "log", "--format=%at", "-3").stdout.decode().split()
    assert [int(d) for d in dates[::-1]] == [r.t // 1000 for r in (r1, r2, r4)]


def test_series_uses_the_given_verifier_lookup(world):
    head = world["chain"][-1]
    mbox = export_series(world["lineage"], head.id, verified_by=lambda rid: ["peer-x"])
    assert mbox.count("verified by: peer-x") == 3


def test_results_tsv(world):
    r1, r2, r3, r4 = world["chain"]
    tsv = export_tsv(world["lineage"], r4.id)
    rows = [line.split("\t") for line in tsv.splitlines()]
    assert tsv.splitlines()[0] == TSV_HEADER
    by_commit = {row[0]: row for row in rows[1:]}
    assert [row[0] for row in rows[1:]] == [r.id_hex[:7] for r in sorted(
        [world["baseline"], r1, r2, r3, r4, world["discarded"], world["crashed"]],
        key=lambda r: r.t)]
    assert by_commit[r1.id_hex[:7]][:5] == [r1.id_hex[:7], "1.400000", "2.0", "keep",
                                            "raise setting 3"]
    assert by_commit[r1.id_hex[:7]][5] == f"{1.4 - world['baseline'].val_bpb:+.6f}"
    assert by_commit[r1.id_hex[:7]][6] == ""  # nobody measured it on test windows
    assert by_commit[world["discarded"].id_hex[:7]][3] == "discard"
    assert by_commit[world["baseline"].id_hex[:7]][3] == "keep"
    assert by_commit[world["crashed"].id_hex[:7]][1:4] == ["0.000000", "0.0", "crash"]
    only_chain = export_tsv(world["lineage"], r4.id, attempts=False)
    assert len(only_chain.splitlines()) == 5


def test_test_deltas_come_from_attestations(world):
    from swarm.export import test_delta
    from swarm.identity import NodeIdentity
    from swarm.records import make_attestation

    r1 = world["chain"][0]
    store = world["lineage"].store
    assert test_delta(world["lineage"], r1.id) is None
    for claim_test, parent_test in ((1.50, 1.55), (1.52, 1.53), (1.49, 1.60)):
        store.insert(make_attestation(
            NodeIdentity.generate(), genome=r1.genome, target=r1.id, arena=r1.arena,
            verdict="reproduced", result={"status": "ok", "val_bpb": 1.4, "train_s": 1.0,
                                          "total_s": 2.0, "test_bpb": claim_test,
                                          "test_parent_bpb": parent_test}))
    assert test_delta(world["lineage"], r1.id) == pytest.approx(-0.05)  # the median
    row = [line.split("\t") for line in export_tsv(world["lineage"], world["chain"][-1].id)
           .splitlines() if line.startswith(r1.id_hex[:7])][0]
    assert row[6] == "-0.050000"
    lines = log_lines(world["lineage"], world["chain"][-1].id, verified_by=vouching(store))
    assert "-0.050000" in "\n".join(lines)


def test_log_lines(world):
    chain = world["chain"]
    lines = log_lines(world["lineage"], chain[-1].id, recent=3,
                      verified_by=vouching(world["store"]))
    text = "\n".join(lines)
    assert lines[0].startswith(f"lineage of {chain[-1].id_hex[:12]} in {ARENA}: 4 steps")
    assert "baseline" in text and "1.500000" in text
    for rec in chain:
        assert rec.id_hex[:7] in text
    assert "-0.100000" in text
    assert "latest 3 results" in text
    assert not any("\x1b" in line for line in lines)


def test_incomplete_lineage_is_reported(world, tmp_path):
    r1, r2 = world["chain"][:2]
    with Store.open(tmp_path / "partial", root_id=ROOT) as partial:
        partial.insert(r2)
        lineage = Lineage(partial, BASE, ROOT)

        def nobody(_record_id):
            return []
        for export in (functools.partial(export_series, verified_by=nobody), export_tsv,
                       functools.partial(log_lines, verified_by=nobody), export_patch):
            with pytest.raises(MissingAncestor):
                export(lineage, r2.id)


def test_root_score_is_the_median_of_the_baselines_at_the_arena_seed(world):
    """The genome's score, as the scoreboard counts it: the median of the ok `baseline
    seed=N` runs at the arena's seed; other unchanged runs and other seeds do not count."""
    from experiments.research.scoreboard import Scoreboard, ScoreRules

    store, lineage = world["store"], world["lineage"]
    store.insert_many([exp(ROOT, BASE, BASE, desc, bpb=bpb) for desc, bpb in (
        ("baseline seed=0", 1.56), ("baseline seed=0", 1.70), ("baseline seed=1", 1.10),
        ("rerun unchanged", 1.00))])
    assert baseline_bpb(lineage, ARENA) == pytest.approx(1.56)
    assert baseline_bpb(lineage, ARENA, seed=1) == pytest.approx(1.10)
    assert baseline_bpb(lineage, "other/tokens:1/cpu") is None
    for seed in (0, 1):
        board = Scoreboard(store, lineage, ROOT, ARENA, ScoreRules(seed=seed))
        assert board.root_score() == baseline_bpb(lineage, ARENA, seed=seed)
    r1 = world["chain"][0]
    tsv = export_tsv(lineage, world["chain"][-1].id)
    row = [line.split("\t") for line in tsv.splitlines() if line.startswith(r1.id_hex[:7])][0]
    assert row[5] == f"{1.40 - 1.56:+.6f}"
    mbox = export_series(lineage, r1.id, verified_by=vouching(store), seed=1)
    assert "val_bpb: 1.100000 -> 1.400000 (+0.300000)" in mbox

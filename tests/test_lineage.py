"""swarm.lineage: rebuilding train.py along an ancestry, the cache, merges, gaps and
broken patches (which mark records broken instead of crashing)."""
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.identity import NodeIdentity
from swarm.lineage import BrokenLineage, Lineage, LineageError, MissingAncestor
from swarm.patch import make_patch, merge3
from swarm.records import make_attestation, make_experiment
from swarm.store import Store

GENOME = "0123456789abcdef"
ARENA = "embedded/tokens:300000/cpu"
BASE = "".join(f"x{i} = {i}\n" for i in range(60))
ROOT = hashlib.sha256(BASE.encode()).digest()
ME = NodeIdentity(bytes([9]) * 32)
_t = iter(range(1_760_000_000_000, 1_800_000_000_000))


def record(parents, patch, desc="edit", bpb=1.0):
    return make_experiment(ME, genome=GENOME, parents=list(parents), topic="general",
                           arena=ARENA, patch=patch, desc=desc, agent="test",
                           result={"status": "ok", "val_bpb": bpb}, t=next(_t))


def set_line(source: str, n: int, text: str) -> str:
    lines = source.splitlines(keepends=True)
    lines[n % len(lines)] = text
    return "".join(lines)


def build_chain(store, depth, start=ROOT, start_source=BASE):
    """`depth` records, each changing one line of its parent; returns (records, sources)."""
    recs, sources = [], []
    parent, src = start, start_source
    for i in range(depth):
        new = set_line(src, i * 7, f"x{i * 7 % 60} = {i}  # step {i}\n")
        rec = record([parent], make_patch(src, new))
        recs.append(rec)
        sources.append(new)
        parent, src = rec.id, new
    store.insert_many(recs)
    return recs, sources


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path, root_id=ROOT)
    yield s
    s.close()


@pytest.fixture
def applied(monkeypatch):
    """Counts patch applications: how much work a lookup did."""
    import swarm.lineage as lineage_module
    counter = {"n": 0}
    real = lineage_module.apply_patch_lines

    def counting(*args, **kwargs):
        counter["n"] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(lineage_module, "apply_patch_lines", counting)
    return counter


def test_root_mismatch_refused(store):
    with pytest.raises(ValueError, match="sha256"):
        Lineage(store, BASE + "# changed\n", ROOT)


def test_sources_along_a_chain(store):
    recs, sources = build_chain(store, 30)
    lineage = Lineage(store, BASE, ROOT)
    assert lineage.source_of(ROOT) == BASE
    for rec, src in zip(recs, sources):
        assert lineage.source_of(rec.id) == src
    assert lineage.chain(recs[-1].id) == recs


def test_deep_lineage_is_not_reapplied_from_scratch(store, applied):
    recs, sources = build_chain(store, 300)
    lineage = Lineage(store, BASE, ROOT)
    assert lineage.source_of(recs[-1].id) == sources[-1]
    assert applied["n"] == 300
    applied["n"] = 0
    child = record([recs[-1].id], make_patch(sources[-1], sources[-1] + "# more\n"))
    store.insert(child)
    assert lineage.source_of(child.id) == sources[-1] + "# more\n"
    assert applied["n"] == 1  # started from its cached parent
    applied["n"] = 0
    assert lineage.source_of(recs[150].id) == sources[150]
    assert applied["n"] < 64  # started from the nearest checkpoint
    applied["n"] = 0
    assert lineage.source_of(recs[-1].id) == sources[-1]
    assert applied["n"] == 0


def test_small_cache_still_correct(store):
    recs, sources = build_chain(store, 80)
    lineage = Lineage(store, BASE, ROOT, cache_size=2)
    for i in (79, 3, 50, 79, 0, 64):
        assert lineage.source_of(recs[i].id) == sources[i]


def test_merge_record_patch_is_against_first_parent(store):
    ours_recs, ours = build_chain(store, 1)
    theirs_src = BASE.replace("x59 = 59\n", "x59 = 0.5\n")
    theirs = record([ROOT], make_patch(BASE, theirs_src))
    store.insert(theirs)
    merged_src = merge3(BASE, ours[0], theirs_src)
    merge = record([ours_recs[0].id, theirs.id], make_patch(ours[0], merged_src))
    store.insert(merge)
    lineage = Lineage(store, BASE, ROOT)
    assert lineage.source_of(merge.id) == merged_src
    assert "x59 = 0.5" in merged_src and "step 0" in merged_src


def test_patch_that_does_not_apply_marks_broken(store):
    recs, sources = build_chain(store, 3)
    bad = record([recs[-1].id], make_patch("something else\n", "entirely\n"))
    after = record([bad.id], "")
    store.insert_many([bad, after])
    lineage = Lineage(store, BASE, ROOT)
    with pytest.raises(BrokenLineage, match="patch does not apply"):
        lineage.source_of(after.id)
    assert "does not apply" in store.broken_reason(bad.id)
    assert "ancestor" in store.broken_reason(after.id)
    with pytest.raises(BrokenLineage, match="does not apply"):
        lineage.source_of(bad.id)
    sibling = record([bad.id], "", bpb=0.1)  # a descendant we had not asked about yet
    store.insert(sibling)
    with pytest.raises(BrokenLineage, match="ancestor .* is broken"):
        lineage.source_of(sibling.id)
    assert not lineage.is_buildable(sibling.id)
    assert lineage.source_of(recs[-1].id) == sources[-1]  # the healthy part still builds
    assert store.best(ARENA) not in (bad, after, sibling)


def test_a_source_past_the_size_limit_is_broken_and_its_chain_costs_little(store):
    """Each patch inserts many tiny lines: a chain of them once grew memory and CPU
    quadratically (every step rebuilt and cached every source). A source over the
    static screen's limit can never run, so its record is broken and its chain stops."""
    import swarm.lineage as lineage_module
    from swarm.patch import MAX_SOURCE_BYTES
    src, parent, recs = BASE, ROOT, []
    for i in range(4):
        new = "".join(f"{i}\n" for _ in range(MAX_SOURCE_BYTES // 6)) + src
        recs.append(record([parent], make_patch(src, new)))
        parent, src = recs[-1].id, new
    store.insert_many(recs)
    lineage = Lineage(store, BASE, ROOT)
    assert lineage.is_buildable(recs[1].id)  # about 2/3 of the limit
    with pytest.raises(BrokenLineage, match="over the 131072-byte limit"):
        lineage.source_of(recs[-1].id)
    assert "over the" in store.broken_reason(recs[2].id)
    assert not lineage.is_buildable(recs[3].id)
    # the cache is bounded in memory, not only in entries
    small = Lineage(store, BASE, ROOT)
    lineage_module.CACHE_BYTES, saved = 1, lineage_module.CACHE_BYTES
    try:
        small.source_of(recs[0].id)
        assert len(small._cache) == 1 and small._cache_bytes > 1
    finally:
        lineage_module.CACHE_BYTES = saved


def test_missing_ancestor_is_not_broken(store, tmp_path):
    with Store.open(tmp_path / "elsewhere.sqlite", root_id=ROOT) as elsewhere:
        recs, sources = build_chain(elsewhere, 4)
    store.insert_many(recs[2:])
    lineage = Lineage(store, BASE, ROOT)
    with pytest.raises(MissingAncestor) as info:
        lineage.source_of(recs[-1].id)
    assert info.value.missing == recs[1].id
    with pytest.raises(MissingAncestor):
        lineage.chain(recs[-1].id)
    assert store.broken() == {}
    store.insert_many(recs[:2])
    assert lineage.source_of(recs[-1].id) == sources[-1]
    with pytest.raises(MissingAncestor):
        lineage.source_of(b"\x01" * 32)


def test_non_experiment_is_refused(store):
    att = make_attestation(ME, genome=GENOME, target=ROOT, arena=ARENA, verdict="refuted",
                           result={"status": "crash"}, t=next(_t))
    store.insert(att)
    with pytest.raises(LineageError, match="attestation"):
        Lineage(store, BASE, ROOT).source_of(att.id)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    s = Store.open(tmp_path_factory.mktemp("shared"), root_id=ROOT)
    yield s
    s.close()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 59), st.booleans(), st.integers(0, 5)),
                min_size=1, max_size=12))
def test_random_lineages_never_crash(shared_store, steps):
    """Edits made against the wrong source land anywhere in the tree: every lookup
    gives the right source or a LineageError, nothing else. (Examples share one store:
    their records differ by time, so they never collide.)"""
    store = shared_store
    lineage = Lineage(store, BASE, ROOT, cache_size=3)
    known = [(ROOT, BASE)]
    expected = {}
    batch = []
    for line, honest, pick in steps:
        parent, src = known[pick % len(known)]
        against = src if honest else set_line(src, line + 1, "drifted\n")
        new = set_line(against, line, f"edited {line}\n")
        rec = record([parent], make_patch(against, new))
        batch.append(rec)
        good = honest and expected.get(parent, parent == ROOT) is not False
        expected[rec.id] = new if good else False
        known.append((rec.id, new))
    store.insert_many(batch)
    for rec_id, want in expected.items():
        try:
            got = lineage.source_of(rec_id)
        except LineageError:
            got = False
        if want is False:
            # a patch against drifted text may still apply if the drift was elsewhere
            assert got is False or isinstance(got, str)
        else:
            assert got == want

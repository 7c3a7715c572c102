"""The progress chart: a valid PNG of the expected size, with what it should show.

The store is built by hand so every kind of point is there for certain: baseline runs
(so the arena's noise is known), kept edits by this node (verified) and by a peer (not
verified), a discarded edit and a crash.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from experiments.research.home import NodeHome
from experiments.research.settings import load_settings
from experiments.views.arena_view import read_arena
from experiments.views.plot import BAD, BEST, plot_progress, render_plot, short_desc
from experiments.research.scoreboard import Scoreboard, ScoreRules
from genome import base_train_source, genome_id, genome_root_id
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage
from swarm.patch import make_patch
from swarm.records import make_experiment
from swarm.store import Store
from swarm.trust import TrustPolicy

ARENA = "synthetic/tokens:300000/sim"


def result(val_bpb=None, status="ok"):
    out = {"status": status, "train_s": 1.0, "total_s": 2.0, "tokens": 100, "steps": 10,
           "params": 1000, "peak_mem_mb": 10.0, "reason": "synthetic test"}
    if val_bpb is not None:
        out["val_bpb"] = val_bpb
    return out


@pytest.fixture
def home(tmp_path) -> Path:
    """A node home with baselines, kept/discarded/crashed edits by two authors."""
    home = tmp_path / "home"
    me = NodeIdentity.load_or_create(home)
    peer = NodeIdentity.generate()
    root = genome_root_id()
    base = base_train_source()
    t = [1_700_000_000_000]

    def add(store, author, parents, old, new, desc, res):
        t[0] += 60_000
        record = make_experiment(author, genome=genome_id(), parents=parents, topic="general",
                                 arena=ARENA, patch=make_patch(old, new) if new != old else "",
                                 desc=desc, agent="test", result=res, t=t[0])
        store.insert(record, local=author is me)
        return record

    with Store.open(home, root_id=root) as store:
        for seed, val in ((0, 1.900), (1, 1.902), (2, 1.898)):
            add(store, me, [root], base, base, f"baseline seed={seed}", result(val))
        src1 = base + "\n# edit one\n"
        e1 = add(store, me, [root], base, src1, "[EDIT_ONE=1] first edit", result(1.880))
        add(store, me, [e1.id], src1, src1 + "# worse\n", "[WORSE=1] a worse edit",
            result(1.885))
        add(store, me, [e1.id], src1, src1 + "raise SystemExit(3)\n", "[CRASH=1] crashes",
            result(status="crash"))
        add(store, peer, [e1.id], src1, src1 + "# peer\n", "[PEER=1] unverified claim",
            result(1.860))
        add(store, me, [e1.id], src1, src1 + "# two\n", "[EDIT_TWO=1] second edit",
            result(1.870))
    return home


def view_of(home: Path, topic=None):
    root = genome_root_id()
    store = Store.open(home, root_id=root)
    lineage = Lineage(store, base_train_source(), root)
    trust = TrustPolicy(store, NodeIdentity.load_or_create(home).public_key)
    board = Scoreboard(store, lineage, root, ARENA, ScoreRules(), trust.is_verified)
    return store, read_arena(board, trust, topic)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every chunk of a PNG, checking the signature and each chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def png_size(path: Path) -> tuple[int, int]:
    chunks = png_chunks(path.read_bytes())
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(pixels) == height * (1 + width * channels * depth // 8), "IDAT size"
    return width, height


def test_the_view_scores_what_the_plot_draws(home):
    store, view = view_of(home)
    try:
        by_desc = {r.desc: r for r in view.rows}
        assert by_desc["[EDIT_ONE=1] first edit"].kept
        assert by_desc["[EDIT_ONE=1] first edit"].verified
        assert not by_desc["[WORSE=1] a worse edit"].kept
        assert by_desc["[PEER=1] unverified claim"].kept
        assert not by_desc["[PEER=1] unverified claim"].verified
        assert by_desc["[CRASH=1] crashes"].status == "crash"
        # the running best follows only what a node may build on: verified kept edits
        assert view.running_best() == [1.9, 1.9, 1.9, 1.88, 1.88, 1.88, 1.88, 1.87]
        assert view.best.val_bpb == 1.87
        assert view.counts() == {"experiments": 8, "kept": 3, "discarded": 1, "crashed": 1,
                                 "verified": 7, "refuted": 0, "baselines": 3}
    finally:
        store.close()


def test_plot_is_a_png_of_the_default_size(home, tmp_path):
    store, view = view_of(home)
    store.close()
    out = plot_progress(view, tmp_path / "progress.png")
    assert png_size(out) == (1600, 900)
    assert not (tmp_path / "progress.png.tmp").exists()


def test_plot_draws_the_running_best_and_the_crashes(home, tmp_path):
    from PIL import Image  # matplotlib's own dependency

    store, view = view_of(home)
    store.close()
    out = plot_progress(view, tmp_path / "progress.png")
    image = Image.open(out).convert("RGB")
    colours = {c for _, c in image.getcolors(maxcolors=1 << 20)}

    def rgb(hex_colour):
        return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    assert rgb(BEST) in colours, "the running-best step line"
    assert rgb(BAD) in colours, "the crash marker"


def test_plot_other_size_and_empty_arena(home, tmp_path):
    store, view = view_of(home, topic="nothing-here")
    store.close()
    assert view.rows == []
    out = plot_progress(view, tmp_path / "sub" / "empty.png", title="empty", width_px=800,
                        height_px=450)
    assert png_size(out) == (800, 450)


def test_render_plot_from_a_node_home(home, tmp_path):
    settings = load_settings({"home": str(home), "trainer": "synthetic"}, environ={})
    with NodeHome.open(settings) as node:
        summary = render_plot(node.scoreboard(ARENA), node.trust(), None, tmp_path / "p.png")
    assert png_size(tmp_path / "p.png") == (1600, 900)
    assert summary["experiments"] == 8 and summary["kept"] == 3 and summary["best"] == 1.87


def test_short_desc():
    assert short_desc("[MATRIX_LR*2] MATRIX_LR x2: 0.02 -> 0.04") == "MATRIX_LR*2"
    assert short_desc("use a cosine schedule with a long warmup and more") == \
        "use a cosine schedule with a lo…"
    assert short_desc("") == ""
    assert short_desc("  two\nlines ") == "two lines"

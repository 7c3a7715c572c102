"""The web dashboard: its JSON routes against the node's own scoring, its security
(fixed routes, no writes, localhost only, GET/HEAD only), broken stores, and the page in
a real headless Chromium.

The store is filled by the in-process swarm simulation (synthetic trainer: honest
nodes, a liar with Sybil keys), so it holds kept, discarded, crashed, verified and
refuted records from several authors.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import partial
from html.parser import HTMLParser
from pathlib import Path

import pytest
import trio

from experiments.research.compose import build_loop, make_node_trainer, run_node
from experiments.research.home import NodeHome, snapshot, write_status_file
from experiments.research.scoreboard import Scoreboard, ScoreRules
from experiments.research.settings import load_settings
from experiments.views.dashboard import DashboardError, serve_dashboard, start_dashboard
from experiments.simulation.synthetic import SyntheticTrainer
from genome import base_train_source, genome_id, genome_root_id
from swarm.export import export_patch
from swarm.identity import NodeIdentity, peer_id_from_public_key
from swarm.lineage import Lineage
from swarm.patch import make_patch
from swarm.records import make_attestation, make_experiment
from swarm.store import MIGRATIONS, Store
from swarm.trust import TrustPolicy

REPO = Path(__file__).resolve().parent.parent
ARENA = SyntheticTrainer(0).arena
RESULT = {"status": "ok", "train_s": 1.0, "total_s": 2.0, "tokens": 100, "steps": 10,
          "params": 1000, "peak_mem_mb": 10.0, "reason": "synthetic test"}


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def swarm_home(tmp_path_factory) -> Path:
    """honest0's home after a short simulated swarm run (stores closed: files at rest)."""
    from experiments.simulation.simulate import run
    base = tmp_path_factory.mktemp("swarm")
    result = run(base, honest=3, liars=1, experiments=8)
    loop = result.loops[0]
    # whatever the synthetic landscape of today's genome gives, make sure of one record
    # of each kind: a crash, a kept edit of this node's (verified), a refuted claim
    base_source = base_train_source()
    root, gid = genome_root_id(), genome_id()
    root_score = loop.scores.root_score()
    assert root_score is not None, "the simulated nodes ran their baselines"
    peer = NodeIdentity.load_or_create(base / "honest1")
    stranger = NodeIdentity.generate()

    def edit(author, tail, desc, res):
        record = make_experiment(author, genome=gid, parents=[root], topic="general",
                                 arena=ARENA, patch=make_patch(base_source, base_source + tail),
                                 desc=desc, agent="test", result=dict(RESULT, **res))
        loop.store.insert(record, local=author is loop.identity)
        return record

    edit(peer, "\nraise SystemExit(3)\n", "exit early",
         {"status": "crash", "reason": "exit code 3"})
    edit(loop.identity, "\n# a real improvement\n", "[GOOD=1] a real improvement",
         {"val_bpb": root_score - 0.05})
    lie = edit(stranger, "\n# a claim\n", "[LIE=1] too good to be true",
               {"val_bpb": root_score - 0.5})
    loop.store.insert(make_attestation(loop.identity, genome=gid, target=lie.id, arena=ARENA,
                                       verdict="refuted", result=dict(RESULT, val_bpb=2.0)),
                      local=True)
    for each in result.loops:
        each.store.close()
    return base / "honest0"


class Node:
    """What the test compares against: the node's own store, lineage and rules."""

    def __init__(self, home: Path):
        self.home = home
        self.root = genome_root_id()
        self.store = Store.open(home, root_id=self.root)
        self.lineage = Lineage(self.store, base_train_source(), self.root)
        self.me = NodeIdentity.load_or_create(home).public_key
        self.trust = TrustPolicy(self.store, self.me)
        self.board = Scoreboard(self.store, self.lineage, self.root, ARENA, ScoreRules(),
                                self.trust.is_verified)


@pytest.fixture(scope="module")
def node(swarm_home):
    n = Node(swarm_home)
    yield n
    n.store.close()


@pytest.fixture(scope="module")
def dashboard(swarm_home, node):
    d = start_dashboard(swarm_home, port=0)
    yield d
    d.close()


def get(url: str, headers: dict | None = None):
    """(status, headers, body) without raising on HTTP errors."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def raw(dashboard, method: str, path: str, headers: dict | None = None, body=None):
    """Send exactly `path` (http.client does not normalise it)."""
    conn = http.client.HTTPConnection("127.0.0.1", dashboard.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def api(dashboard, path: str):
    status, headers, body = get(dashboard.url.rstrip("/") + path)
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    return json.loads(body)


# ---------------------------------------------------------------------------
# the JSON routes


def test_fixture_has_every_kind_of_result(node):
    rows = node.store.experiments(arena=ARENA)
    statuses = {r.status for r in rows}
    assert "ok" in statuses and statuses - {"ok"}, "the swarm should crash now and then"
    assert any(node.board.is_kept(r) and node.trust.is_verified(r) for r in rows)
    assert any(node.trust.my_verdict(r) == "refuted" for r in rows)
    assert len({r.author for r in rows}) >= 3


def test_experiments_match_the_nodes_own_scoring(dashboard, node):
    data = api(dashboard, "/api/experiments")
    records = node.store.experiments(arena=ARENA)
    assert data["arena"] == ARENA and data["synthetic"] is True
    assert [e["id"] for e in data["experiments"]] == [r.id_hex for r in records]
    sigma = node.board.sigma()
    assert data["sigma"] == pytest.approx(sigma)
    fields = {"id", "parents", "author", "topic", "agent", "t", "status", "val_bpb", "delta",
              "kept", "verified", "refuted", "baseline", "desc"}
    for row, record in zip(data["experiments"], records):
        assert fields <= set(row)
        assert row["author"] == record.author_peer_id
        assert row["val_bpb"] == record.val_bpb and row["status"] == record.status
        assert row["kept"] == node.board.is_kept(record, sigma)
        assert row["verified"] == node.trust.is_verified(record)
        assert row["delta"] == pytest.approx(node.board.delta(record))
        assert row["parents"] == [p.hex() for p in record.parents]
    best = node.board.best()
    assert data["best"]["id"] == best.id.hex() and data["best"]["val_bpb"] == best.val_bpb
    # the running best is a non-increasing step line that ends at the best
    line = [v for v in data["running_best"] if v is not None]
    assert line == sorted(line, reverse=True) and line[-1] == best.val_bpb
    assert len(data["running_best"]) == len(records)
    assert data["counts"]["experiments"] == len(records)
    assert {"arena": ARENA, "experiments": len(records)} in data["arenas"]


def test_refuted_means_this_node_or_a_trusted_peer_refuted(dashboard, node):
    rows = {e["id"]: e for e in api(dashboard, "/api/experiments")["experiments"]}
    mine = [r for r in node.store.experiments(arena=ARENA)
            if node.trust.my_verdict(r) == "refuted"]
    assert mine and all(rows[r.id_hex]["refuted"] and not rows[r.id_hex]["verified"]
                        for r in mine)


def test_lineage_is_a_tree_from_the_root_with_the_best_path(dashboard, node):
    tree = api(dashboard, "/api/lineage")
    assert tree["root"]["id"] == node.root.hex()
    ids = {n["id"] for n in tree["nodes"]}
    for n in tree["nodes"]:
        assert n["parent"] == tree["root"]["id"] or n["parent"] in ids
        assert {"desc", "delta", "verified", "val_bpb", "head"} <= set(n)
    kept = {r.id_hex for r in node.store.experiments(arena=ARENA) if node.board.is_kept(r)}
    assert kept <= ids
    best = node.board.best()
    chain = {r.id_hex for r in node.lineage.chain(best.id)}
    assert {n["id"] for n in tree["nodes"] if n["best"]} == chain
    assert tree["best"] == best.id.hex()
    assert any(n["head"] for n in tree["nodes"])


def test_peers_carry_the_reputation_this_node_derives(dashboard, node):
    data = api(dashboard, "/api/peers")
    by_id = {p["peer_id"]: p for p in data["peers"]}
    me = peer_id_from_public_key(node.me)
    assert by_id[me]["me"] and by_id[me]["reputation"] is None
    reps = node.trust.reputations()
    assert reps, "the simulated node verified someone"
    for key, rep in reps.items():
        peer = by_id[peer_id_from_public_key(key)]
        assert peer["reputation"] == pytest.approx(rep)
        assert peer["liar"] == (rep < node.trust.rules.liar_threshold)
    assert any(p["liar"] for p in data["peers"]), "the simulated liar was caught"
    authors = {r.author_peer_id for r in node.store.experiments(arena=ARENA)}
    assert authors <= set(by_id)


def test_status_is_the_nodes_snapshot(swarm_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(swarm_home, home)
    settings = load_settings({"home": str(home), "trainer": "synthetic"}, environ={})
    with NodeHome.open(settings) as local:
        write_status_file(home, snapshot(local, ARENA))
    with start_dashboard(home, port=0) as d:
        status = api(d, "/api/status")
        assert status["running"] is True and status["peer_id"] == local.identity.peer_id
        assert status["arena"] == ARENA and status["best"]["id"]
        # a snapshot callable wins over the file
        with start_dashboard(home, port=0, snapshot=lambda: {"peer_id": "x", "peers": []}) as d2:
            assert api(d2, "/api/status") == {"peer_id": "x", "peers": [], "running": True}
    (home / "status.json").write_text(json.dumps({"updated": time.time() - 3600}))
    with start_dashboard(home, port=0) as d:
        assert api(d, "/api/status")["running"] is False
    (home / "status.json").write_text("{not json")
    with start_dashboard(home, port=0) as d:
        assert api(d, "/api/status")["running"] is False


def test_best_patch_is_loopy_export(dashboard, node):
    status, headers, body = get(dashboard.url + "best.patch")
    assert status == 200
    assert headers["Content-Type"].startswith("text/x-diff")
    assert "attachment" in headers["Content-Disposition"]
    assert body.decode() == export_patch(node.lineage, node.board.best().id)
    cli = subprocess.run([sys.executable, str(REPO / "node.py"), "export", "--home",
                          str(node.home), "--trainer", "synthetic"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert cli.returncode == 0, cli.stderr
    assert body.decode() == cli.stdout


def test_best_patch_404_when_nothing_is_verified(dashboard):
    status, _, body = get(dashboard.url + "best.patch?topic=no-such-topic")
    assert status == 404
    assert b"no verified improvement" in body


def test_parameters_are_checked(dashboard):
    for query in ("arena=../../etc", "topic=UPPER", "topic=a&topic=b", "colour=red",
                  "arena=" + "a" * 300 + "/time:1/cpu"):
        for route in ("/api/experiments", "/api/lineage", "/best.patch"):
            status, _, body = raw(dashboard, "GET", f"{route}?{query}")
            assert status == 400, (route, query, body)
    status, _, _ = raw(dashboard, "GET", "/api/status?x=1")
    assert status == 400
    # an arena with nothing in it is simply empty
    data = api(dashboard, "/api/experiments?arena=embedded/tokens:1/cpu")
    assert data["experiments"] == [] and data["best"] is None


def test_etag_revalidation(dashboard):
    status, headers, _ = get(dashboard.url + "api/experiments")
    assert status == 200 and headers["ETag"]
    status, _, body = get(dashboard.url + "api/experiments", {"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""


def test_cache_follows_the_store(swarm_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(swarm_home, home)
    with start_dashboard(home, port=0) as d:
        before = api(d, "/api/experiments")["counts"]["experiments"]
        root = genome_root_id()
        with Store.open(home, root_id=root) as store:  # the node writes while we serve
            stranger = NodeIdentity.generate()
            store.insert(make_experiment(
                stranger, genome=genome_id(), parents=[root], topic="general", arena=ARENA,
                patch="", desc="baseline seed=7", agent="test",
                result={"status": "ok", "val_bpb": 1.9, "train_s": 1.0, "total_s": 1.0,
                        "tokens": 1, "steps": 1, "params": 1, "peak_mem_mb": 1.0}))
        assert api(d, "/api/experiments")["counts"]["experiments"] == before + 1


async def test_serve_dashboard_as_a_trio_service(swarm_home):
    async with trio.open_nursery() as nursery:
        d = await nursery.start(partial(serve_dashboard, swarm_home, port=0))
        status, _, _ = await trio.to_thread.run_sync(get, d.url + "api/lineage")
        assert status == 200
        nursery.cancel_scope.cancel()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", d.port), timeout=5).close()


async def test_a_node_serves_its_dashboard_in_its_nursery_and_closes_it(tmp_path):
    """`loopy start --dashboard`: the dashboard is a task of the node's nursery: it answers
    while the node runs and stops listening when the node's loop ends."""
    settings = load_settings({"home": str(tmp_path), "trainer": "synthetic", "offline": True,
                              "max_experiments": 3}, environ={})
    started, answers = {}, []

    def on_status(snap):
        if not answers:  # while the node runs (a blocking call here is fine in a test)
            answers.append(get(started["dashboard"].url + "api/status")[0])

    with NodeHome.open(settings) as home:
        loop = build_loop(home, make_node_trainer(home))
        stopped_by = await run_node(home, loop, on_started=started.__setitem__,
                                    on_status=on_status,
                                    dashboard=partial(serve_dashboard, home.path, port=0))
    assert stopped_by is None and loop.state.experiments_run == 3
    assert answers == [200]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", started["dashboard"].port), timeout=5).close()


# ---------------------------------------------------------------------------
# security


def file_digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


TRAVERSALS = [
    "/../../etc/passwd", "/static/../../node.key", "/static/../node.key", "/node.key",
    "/store.sqlite", "/status.json", "/%2e%2e/%2e%2e/etc/passwd",
    "/static/%2e%2e/%2e%2e/node.key", "/static/..%2f..%2fnode.key",
    "/static/%252e%252e/node.key", "/static/app.js/../../node.key", "//etc/passwd",
    "/static/", "/static", "/static/app.js%00.key", "/static/./app.js", "/api/",
    "/api/status/../../node.key", "/..\\..\\node.key", "/static/..%5c..%5cnode.key",
    "/experiments/views/dashboard/source.py", "/static/index.html",
]


def test_no_path_traversal(dashboard, swarm_home):
    secret = (swarm_home / "node.key").read_bytes()
    for path in TRAVERSALS:
        status, _, body = raw(dashboard, "GET", path)
        assert status == 404, (path, status)
        assert secret not in body
    # the routes themselves are served
    for path in ("/", "/index.html", "/static/app.js", "/static/app.css"):
        assert raw(dashboard, "GET", path)[0] == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                    "PROPFIND", "FOO"])
def test_only_get_and_head(dashboard, method):
    for path in ("/", "/api/status", "/best.patch", "/../../etc/passwd"):
        status, headers, _ = raw(dashboard, method, path, body=b"{}" if method != "TRACE"
                                 else None)
        assert status == 405, (method, path)
        assert headers["Allow"] == "GET, HEAD"


def test_head_has_no_body(dashboard):
    status, headers, body = raw(dashboard, "HEAD", "/api/experiments")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_the_dashboard_never_writes(swarm_home, node, dashboard):
    files = [swarm_home / "store.sqlite", swarm_home / "node.key"]
    before = [file_digest(f) for f in files]
    count = node.store.count()
    for path in ("/", "/api/status", "/api/experiments", "/api/lineage", "/api/peers",
                 "/best.patch"):
        assert raw(dashboard, "GET", path)[0] == 200
        raw(dashboard, "POST", path, body=b"x" * 1000)
        raw(dashboard, "DELETE", path)
    assert [file_digest(f) for f in files] == before
    assert node.store.count() == count
    # and it could not if it tried: the connection itself is read-only
    store = dashboard.source.store
    with pytest.raises(DashboardError, match="read-only"):
        store.set_meta("x", "y")
    with pytest.raises(sqlite3.OperationalError):
        with dashboard.source.lock:
            store._conn.execute("INSERT INTO meta VALUES ('x', 'y')")


def test_foreign_host_header_is_refused(dashboard):
    """A page on evil.example rebinding its name to 127.0.0.1 cannot read the node."""
    status, _, body = raw(dashboard, "GET", "/api/status", {"Host": "evil.example"})
    assert status == 403
    assert raw(dashboard, "GET", "/api/status", {"Host": f"localhost:{dashboard.port}"})[0] \
        == 200


def test_headers_lock_the_page_down(dashboard):
    status, headers, _ = raw(dashboard, "GET", "/")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    page = (REPO / "experiments/views/dashboard/static/index.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing from the internet
    js = (REPO / "experiments/views/dashboard/static/app.js").read_text()
    assert "innerHTML" not in js and "eval(" not in js  # peers' text is never markup


def test_binds_localhost_by_default(dashboard):
    assert dashboard.host == "127.0.0.1"
    assert dashboard.url.startswith("http://127.0.0.1:")


def test_port_in_use_is_a_clear_error(swarm_home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DashboardError, match=f"port {port} is in use"):
            start_dashboard(swarm_home, port=port)
    with pytest.raises(DashboardError, match="not a port"):
        start_dashboard(swarm_home, port=70000)


# ---------------------------------------------------------------------------
# broken stores


def test_missing_store(tmp_path):
    with pytest.raises(DashboardError, match="no store here"):
        start_dashboard(tmp_path, port=0)


def test_not_a_database(tmp_path):
    (tmp_path / "store.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DashboardError, match="not a usable store"):
        start_dashboard(tmp_path, port=0)


def test_partly_migrated_store(tmp_path):
    conn = sqlite3.connect(tmp_path / "store.sqlite")
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT, "
                 "applied_at INTEGER)")
    for statement in MIGRATIONS[0][1]:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1, 'initial schema', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(DashboardError, match=f"partly migrated.*version 1 of "
                                             f"{len(MIGRATIONS)}"):
        start_dashboard(tmp_path, port=0)


def test_newer_schema(tmp_path):
    Store.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "store.sqlite")
    conn.execute("INSERT INTO schema_version VALUES (99, 'future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(DashboardError, match="newer than this Loopy"):
        start_dashboard(tmp_path, port=0)


def test_damaged_records_give_a_clear_503(swarm_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(swarm_home, home)
    conn = sqlite3.connect(home / "store.sqlite")
    conn.execute("INSERT INTO records (id, kind, author, t, arena, topic, status, body, "
                 "envelope, received_at) VALUES (?, 'experiment', ?, 1, ?, 'general', "
                 "'ok', ?, ?, 1)", (b"\1" * 32, b"\2" * 32, ARENA, b"\xc1junk", b"\xc1junk"))
    conn.commit()
    conn.close()
    with start_dashboard(home, port=0) as d:
        status, headers, body = get(d.url + "api/experiments")
        assert status == 503
        assert "cannot read the store" in json.loads(body)["error"]
        status, _, body = get(d.url + "best.patch")
        assert status == 503 and b"cannot read the store" in body
        assert get(d.url + "api/status")[0] == 200  # what can be read still is


def test_empty_store_renders_empty(tmp_path):
    Store.open(tmp_path).close()
    with start_dashboard(tmp_path, port=0) as d:
        assert api(d, "/api/experiments")["experiments"] == []
        assert api(d, "/api/lineage")["nodes"] == []
        assert get(d.url + "best.patch")[0] == 404


# ---------------------------------------------------------------------------
# the page in a real browser


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Elements(HTMLParser):
    """Collects (tag, attributes, path of ancestor ids) for every element."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, dict, tuple]] = []
        self.stack: list[tuple[str, str | None]] = []

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.found.append((tag, a, tuple(i for _, i in self.stack if i)))
        if tag not in self.VOID:  # Chromium closes every SVG element explicitly
            self.stack.append((tag, a.get("id")))

    def handle_startendtag(self, tag, attrs):
        self.found.append((tag, dict(attrs), tuple(i for _, i in self.stack if i)))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def within(self, ancestor: str, tag: str, cls: str | None = None) -> list[dict]:
        return [a for t, a, path in self.found if t == tag and ancestor in path
                and (cls is None or cls in (a.get("class") or "").split())]


def dump_dom(url: str, tmp_path: Path) -> str:
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome'}",
         "--virtual-time-budget=8000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_page_in_headless_chromium(dashboard, node, tmp_path):
    dom = dump_dom(dashboard.url, tmp_path)
    page = Elements()
    page.feed(dom)
    assert 'data-ready="1"' in dom, dom[:3000]
    experiments = node.store.experiments(arena=ARENA)
    # one point per experiment, crashes included, each tagged with its record id
    points = [a for a in page.within("chart", "circle", "pt") + page.within("chart", "path",
                                                                             "pt")]
    assert sorted(a["data-id"] for a in points) == sorted(r.id_hex for r in experiments)
    crashed = {r.id_hex for r in experiments if r.status != "ok"}
    assert {a["data-id"] for a in page.within("chart", "path", "pt")} == crashed
    assert page.within("chart", "path", "best-line"), "the running best is drawn"
    # the lineage tree: the genome root and every node, edges between them
    tree = api(dashboard, "/api/lineage")
    drawn = page.within("lineage", "g", "node")
    assert {a["data-id"] for a in drawn} == {n["id"] for n in tree["nodes"]} | {
        tree["root"]["id"]}
    assert len(page.within("lineage", "path", "edge")) == len(tree["nodes"])
    assert page.within("lineage", "path", "best"), "the best lineage is highlighted"
    # the patch link downloads exactly what `loopy export` writes
    links = [a for t, a, _ in page.found if t == "a" and a.get("id") == "patch-link"]
    assert len(links) == 1 and "href" in links[0]
    status, _, body = get(dashboard.url.rstrip("/") + links[0]["href"])
    assert status == 200
    assert body.decode() == export_patch(node.lineage, node.board.best().id)
    # peers' descriptions are shown as text
    assert re.search(r"genome \(the base train\.py\)", dom)
    assert "not running" in dom or "live" in dom

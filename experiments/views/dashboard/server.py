"""The dashboard's HTTP server: a fixed set of read-only routes, on localhost by default.

    GET /                  the page (static/index.html, app.js, app.css: no build step,
                           no assets from the internet, vanilla JS drawing inline SVG)
    GET /api/status        the node's live snapshot (`loopy status --json`)
    GET /api/experiments   every experiment in the arena, scored, and the running best
    GET /api/lineage       the kept edits as a tree from the genome root to the heads
    GET /api/peers         peers with reputation, topics and what they work on
    GET /best.patch        `loopy export` of the best verified record (404 if none)

`?arena=` and `?topic=` select what the data routes show (checked against the record
format's rules). What it does not do, on purpose:
- serve files by path: only the routes above exist, matched exactly, undecoded (no path
  traversal to find);
- accept anything but GET and HEAD (405), or write to the store (its connection is
  read-only);
- answer a Host other than localhost's names when bound to localhost, so a web page
  that rebinds its DNS name to 127.0.0.1 cannot read the dashboard;
- run page scripts from anywhere but itself (a strict Content-Security-Policy); peers'
  text is inserted as text, never as markup.
It binds 127.0.0.1 unless told otherwise (`--dashboard-host`); anyone who can reach a
non-local address can read what the node knows, but change nothing.

`serve_dashboard` is the dashboard as a trio service, a task of its owner's nursery (the
node's, under `loopy start --dashboard`): its accept loop runs in a worker thread of that
task, each request in a thread of its own (reading the store blocks), and cancelling the
task closes the server and the store. `start_dashboard` serves from a background thread
instead and returns a handle whose `close()` stops it (for scripts, tests and benches).
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import ipaddress
import logging
import socket
import socketserver
import sys
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import trio

from experiments.views.dashboard.source import (STORE_READ_ERRORS, BadRequest, DashboardError,
                                          DashboardSource, NotFound, check_params,
                                          describe_error, encode_json)
from experiments.research.scoreboard import ScoreRules
from swarm.trust import TrustRules

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS = {  # route -> (file in static/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
DATA_PARAMS = ("arena", "topic")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _allowed_hosts(host: str, port: int) -> set[str] | None:
    """Host headers accepted when bound to loopback (None: any, the user exposed it)."""
    if not _is_loopback(host):
        return None
    names = {"127.0.0.1", "localhost", "[::1]", host if ":" not in host else f"[{host}]"}
    return {f"{name}:{port}" for name in names} | names


def _load_assets() -> dict[str, tuple[bytes, str]]:
    assets = {}
    for route, (name, ctype) in ASSETS.items():
        try:
            assets[route] = ((STATIC_DIR / name).read_bytes(), ctype)
        except OSError as e:
            raise DashboardError(f"dashboard page {STATIC_DIR / name} is missing "
                                 f"({e.strerror}); reinstall Loopy") from None
    return assets


class _Server(ThreadingHTTPServer):
    daemon_threads = True          # a client that keeps a socket open never blocks close()
    source: DashboardSource
    assets: dict[str, tuple[bytes, str]]
    allowed_hosts: set[str] | None

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the host's full name: slow, and not needed
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "loopy-dashboard"
    sys_version = ""
    timeout = 15                   # a client that stops sending is dropped

    def log_message(self, format: str, *args) -> None:
        log.debug("dashboard %s: " + format, self.client_address[0], *args)

    def __getattr__(self, name: str):
        # http.server looks up do_<METHOD>; every method but GET and HEAD is refused
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _method_not_allowed(self) -> None:
        self.close_connection = True  # its body, if any, is never read
        self._send(405, b"method not allowed: this dashboard is read-only (GET, HEAD)\n",
                   TEXT_TYPE, {"Allow": "GET, HEAD"})

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        allowed = self.server.allowed_hosts
        if allowed is not None and self.headers.get("Host", "").lower() not in allowed:
            self._send(403, b"unexpected Host header: open the dashboard at its localhost "
                            b"address\n", TEXT_TYPE)
            return
        url = urlsplit(self.path)
        route = url.path
        if route in self.server.assets:
            body, ctype = self.server.assets[route]
            extra = {"Content-Security-Policy": CSP} if ctype.startswith("text/html") else {}
            self._send(200, body, ctype, extra, etag=True)
            return
        handlers: dict[str, Callable[[dict], tuple[int, bytes, str, dict]]] = {
            "/api/status": self._status, "/api/experiments": self._experiments,
            "/api/lineage": self._lineage, "/api/peers": self._peers,
            "/best.patch": self._best_patch,
        }
        handler = handlers.get(route)
        if handler is None:
            self._send(404, b"not found\n", TEXT_TYPE)
            return
        is_api = route.startswith("/api/")
        try:
            try:
                query = parse_qs(url.query, keep_blank_values=True, max_num_fields=8)
            except ValueError as e:  # too many fields
                raise BadRequest(str(e)) from None
            code, body, ctype, extra = handler(query)
        except BadRequest as e:
            code, body, ctype, extra = self._error(400, str(e), is_api)
        except NotFound as e:
            code, body, ctype, extra = self._error(404, str(e), is_api)
        except (DashboardError, *STORE_READ_ERRORS) as e:
            code, body, ctype, extra = self._error(503, describe_error(e), is_api)
        self._send(code, body, ctype, extra, etag=code == 200)

    # -- routes -----------------------------------------------------------------

    @staticmethod
    def _error(code: int, message: str, is_api: bool) -> tuple[int, bytes, str, dict]:
        if is_api:
            return code, encode_json({"error": message}), JSON_TYPE, {}
        return code, (message + "\n").encode("utf-8"), TEXT_TYPE, {}

    def _status(self, query) -> tuple[int, bytes, str, dict]:
        check_params(query, ())
        return 200, self.server.source.status_json(), JSON_TYPE, {}

    def _experiments(self, query) -> tuple[int, bytes, str, dict]:
        params = check_params(query, DATA_PARAMS)
        return 200, self.server.source.experiments_json(params), JSON_TYPE, {}

    def _lineage(self, query) -> tuple[int, bytes, str, dict]:
        params = check_params(query, DATA_PARAMS)
        return 200, self.server.source.lineage_json(params), JSON_TYPE, {}

    def _peers(self, query) -> tuple[int, bytes, str, dict]:
        check_params(query, ())
        return 200, self.server.source.peers_json(), JSON_TYPE, {}

    def _best_patch(self, query) -> tuple[int, bytes, str, dict]:
        params = check_params(query, DATA_PARAMS)
        name, text = self.server.source.best_patch(params)
        return 200, text.encode("utf-8"), "text/x-diff; charset=utf-8", {
            "Content-Disposition": f'attachment; filename="{name}"'}

    # -- the response -------------------------------------------------------------

    def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None,
              etag: bool = False) -> None:
        tag = None
        if etag:
            tag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            if tag in (self.headers.get("If-None-Match") or ""):
                code, body = 304, b""
        try:
            self.send_response(code)
            if code != 304:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            if tag:
                self.send_header("ETag", tag)
            self.send_header("Cache-Control", "no-cache")  # revalidate: ETags make it cheap
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cross-Origin-Resource-Policy", "same-origin")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left; nothing to tell it


class Dashboard:
    """A bound dashboard: `.url`, `.host`, `.port`; `serve()` answers requests until
    `close()`."""

    def __init__(self, server: _Server, source: DashboardSource, host: str):
        self._server, self.source = server, source
        self.host = host
        self.port = server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self._lock = threading.Lock()
        self._serving = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def serve(self) -> None:
        """Answer requests until `close()` (blocks; returns at once if already closed)."""
        with self._lock:
            if self._closed or self._serving:
                return
            self._serving = True
        self._server.serve_forever(poll_interval=0.1)

    def serve_in_thread(self) -> "Dashboard":
        """`serve()` in a daemon thread; `close()` stops it."""
        self._thread = threading.Thread(target=self.serve, name="loopy-dashboard", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving (waits for the accept loop, not for slow clients) and close the
        store connection. Safe to call twice, and before `serve()` runs."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            serving = self._serving
        if serving:  # shutdown() waits for serve_forever, so only once it was entered
            self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.source.close()

    def __enter__(self) -> "Dashboard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_dashboard(home: str | Path, *, port: int, host: str = "127.0.0.1",
                   arena: str | None = None, me: bytes | None = None,
                   rules: ScoreRules | None = None, trust_rules: TrustRules | None = None,
                   snapshot: Callable[[], dict] | None = None) -> Dashboard:
    """The dashboard of the node whose home is `home`, bound to its port, not serving yet.

    `port` 0 picks a free port (see `.url`). `arena` is the node's arena (default: the
    one the store says the node last ran in), `me` its public key (default: read from
    the home), `rules`/`trust_rules` the node's scoring and trust settings, `snapshot` a
    callable returning the node's latest status dict (default: `<home>/status.json`,
    which a running node rewrites every second). Raises DashboardError when the port is
    taken, the address cannot be bound, or the store cannot be read.
    """
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise DashboardError(f"dashboard port {port!r} is not a port number (0-65535)")
    assets = _load_assets()
    source = DashboardSource(home, arena=arena, me=me, rules=rules, trust_rules=trust_rules,
                             snapshot=snapshot)
    try:
        server = _bind(host, port)
    except BaseException:
        source.close()
        raise
    server.source, server.assets = source, assets
    server.allowed_hosts = _allowed_hosts(host, server.server_address[1])
    return Dashboard(server, source, host)


def start_dashboard(home: str | Path, **options) -> Dashboard:
    """`open_dashboard`, served from a background thread until `.close()`."""
    return open_dashboard(home, **options).serve_in_thread()


def _bind(host: str, port: int) -> _Server:
    server_class = _Server6 if ":" in host else _Server
    try:
        return server_class((host, port), _Handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise DashboardError(f"port {port} is in use on {host}: stop what uses it or "
                                 f"choose another with --dashboard PORT") from None
        if e.errno == errno.EACCES:
            raise DashboardError(f"no permission to listen on port {port} (ports below "
                                 f"1024 need privileges): choose another with --dashboard "
                                 f"PORT") from None
        raise DashboardError(f"cannot listen on {host} port {port}: "
                             f"{e.strerror or e}") from None
    except (socket.gaierror, UnicodeError, OverflowError) as e:
        raise DashboardError(f"cannot listen on {host!r}: {e}") from None


async def serve_dashboard(home: str | Path, *, task_status=trio.TASK_STATUS_IGNORED,
                          **options) -> None:
    """The dashboard as a trio service: `task_status.started(dashboard)` once it listens,
    then it serves until cancelled, and closes. `options` are open_dashboard's."""
    dashboard = open_dashboard(home, **options)
    try:
        task_status.started(dashboard)
        # Cancelling abandons the worker thread; close() below stops its accept loop.
        await trio.to_thread.run_sync(dashboard.serve, abandon_on_cancel=True)
    finally:
        with trio.move_on_after(10) as cleanup:
            cleanup.shield = True
            await trio.to_thread.run_sync(dashboard.close)


def node_dashboard(home, loop) -> Callable:
    """The dashboard service of a node (experiments.research.home.NodeHome) running `loop`,
    with the port and host of its settings and the loop's scoring and trust rules."""
    return partial(serve_dashboard, home.path, port=home.settings.dashboard,
                   host=home.settings.dashboard_host, arena=loop.arena,
                   me=home.identity.public_key, rules=loop.config.rules,
                   trust_rules=loop.config.trust)


def main(argv: list[str] | None = None) -> int:
    """Serve the dashboard of a node home from this process (the node need not run)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.views.dashboard",
        description="Serve the read-only dashboard of a Loopy node home.\n\n"
                    "example: python -m experiments.views.dashboard --home ~/.loopy --port 8080",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default="~/.loopy", help="the node's home")
    parser.add_argument("--port", type=int, default=8080, help="port (0: any free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--arena", default=None, help="arena to show first")
    parser.add_argument("--seed", type=int, default=0, help="the arena's training seed")
    parser.add_argument("--trust-k", type=int, default=2, dest="trust_k",
                        help="trusted attestations that make a record verified")
    args = parser.parse_args(argv)
    try:
        dashboard = start_dashboard(args.home, port=args.port, host=args.host,
                                    arena=args.arena, rules=ScoreRules(seed=args.seed),
                                    trust_rules=TrustRules(k=args.trust_k))
    except DashboardError as e:
        print(f"loopy dashboard: error: {e}", file=sys.stderr)
        return 2
    print(f"dashboard on {dashboard.url} (Ctrl-C stops it)", flush=True)
    stop = threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        dashboard.close()
    return 0

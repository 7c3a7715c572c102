"""A local stand-in for a Hugging Face dataset repo, and the parquet shards it serves.

Shared by the download, preparation and arena tests (the `shard_files` fixture in
conftest.py writes SHARD_TEXTS as shards); nothing leaves the machine.
"""
import hashlib
import http.server
import re
import threading
from pathlib import Path

from genome import prepare as P


def write_shard(path: Path, texts: list[str]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), path)
    return path.read_bytes()


class ShardServer:
    """A local stand-in for a Hugging Face dataset repo.

    GET /resolve/main/<name> redirects (302, X-Linked-Etag: sha256) to
    /cdn/<name>, which serves the bytes, like the Hub does for LFS files, and
    honours `Range: bytes=N-` (206) unless `ranges` is False.
    `corrupt` names get wrong bytes; `fail_first` names answer 500 once;
    `truncate_first[name] = n` sends n bytes of the body once, then hangs up
    (the full Content-Length announced). `ranges_asked` lists (name, Range).
    """

    def __init__(self, files: dict[str, bytes]):
        self.files, self.corrupt, self.fail_first, self.requests = files, set(), set(), []
        self.advertise_sha = True
        self.ranges, self.ranges_asked, self.truncate_first = True, [], {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                name = self.path.rsplit("/", 1)[-1]
                if name not in server.files:
                    self.send_error(404)
                elif self.path.startswith("/resolve/main/"):
                    if name in server.fail_first:
                        server.fail_first.discard(name)
                        self.send_error(500)
                        return
                    self.send_response(302)
                    self.send_header("Location", f"/cdn/{name}")
                    if server.advertise_sha:
                        sha = hashlib.sha256(server.files[name]).hexdigest()
                        self.send_header("X-Linked-Etag", f'"{sha}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    body = server.files[name]
                    if name in server.corrupt:
                        body = body[:-10] + b"x" * 10
                    asked = self.headers.get("Range")
                    server.ranges_asked.append((name, asked))
                    start = 0
                    if asked and server.ranges:
                        start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1))
                        if start >= len(body):
                            self.send_error(416)
                            return
                        self.send_response(206)
                        self.send_header("Content-Range",
                                         f"bytes {start}-{len(body) - 1}/{len(body)}")
                    else:
                        self.send_response(200)
                    self.send_header("ETag", '"not-a-sha"')
                    self.send_header("Content-Length", str(len(body) - start))
                    self.end_headers()
                    cut = server.truncate_first.pop(name, None)
                    self.wfile.write(body[start:] if cut is None else body[start:start + cut])
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/resolve/main"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


SPEC = P.DATASETS["climbmix"]
SHARD_TEXTS = {
    0: [f"Document {i} of the first shard talks about {w}." for i, w in
        enumerate(["cats", "dogs", "ships", "stars", "rivers"] * 20)],
    1: [f"Second shard, entry {i}: {'la ' * (i % 7)}end." for i in range(80)],
    SPEC.val_shard: [f"Validation text number {i}, about kettles." for i in range(30)],
    SPEC.test_shard: [f"Held-out text {i}, about teapots." for i in range(20)],
}


def write_shard_files(directory: Path) -> dict[str, bytes]:
    """SHARD_TEXTS as parquet files in directory: {shard name: bytes}."""
    return {SPEC.shard_name(index): write_shard(directory / SPEC.shard_name(index), texts)
            for index, texts in SHARD_TEXTS.items()}

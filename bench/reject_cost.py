"""What a node spends to reject a record with a bad signature, small and maximum-size.

    python bench/reject_cost.py

Issue 18: the patch used to be parsed before the signature was checked, so a
maximum-size record with a bad signature (a patch of thousands of one-line hunks) cost
about 190 times a small one to reject (11 ms against 59 us on the development
machine). records.decode_envelope now checks the signature before anything that parses
the patch; what is left is the signature's own hash of the body. Prints microseconds
per decode, best of 5.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swarm import records as rec  # noqa: E402
from swarm.identity import NodeIdentity  # noqa: E402
from swarm.patch import make_patch  # noqa: E402

G, ARENA = "0123456789abcdef", "synthetic/tokens:300000/sim"
ME = NodeIdentity(b"\x01" * 32)


def envelope(patch: str, sig: bytes | None = None) -> bytes:
    body = {"kind": "experiment", "genome": G, "author": ME.public_key, "t": rec.now_ms(),
            "parents": [b"\0" * 32], "topic": "general", "arena": ARENA, "patch": patch,
            "desc": "d", "agent": "a", "result": {"status": "crash", "reason": "x"}}
    body_bytes = rec.encode_body(body)
    good = ME.sign(rec.SIGNING_DOMAIN + body_bytes)
    return rec.encode_envelope(body_bytes, good if sig is None else sig)


def many_hunks() -> str:
    """A patch of about 128 KiB made of one-line hunks: the parser's worst case."""
    text = "--- a/train.py\n+++ b/train.py\n" + "".join(
        f"@@ -{i},1 +{i},1 @@\n-a\n+b\n" for i in range(1, 20000))
    text = text[:rec.MAX_PATCH_BYTES]
    return text[:text.rindex("@@ -")]


def microseconds(data: bytes, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            try:
                rec.decode_envelope(data, genome=G, now_ms=rec.now_ms())
            except rec.RecordError:
                pass
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def main() -> None:
    small = make_patch("a = 1\n", "a = 2\n")
    big = many_hunks()
    bad = b"\x01" * 64
    rows = [("small, valid", envelope(small), 1000),
            ("small, bad signature", envelope(small, bad), 1000),
            ("max-size, bad signature", envelope(big, bad), 40)]
    for name, data, n in rows:
        print(f"{name:26s} {len(data):7d} bytes {microseconds(data, n):9.0f} us")


if __name__ == "__main__":
    main()

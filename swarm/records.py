"""Signed records, exactly as docs PROTOCOL.md fixes them: build, encode, decode, verify.

The wire format only; no policy, no I/O. An envelope is the msgpack map
`{"v": 1, "body": <bin>, "sig": <bin 64>}`; the signature is ed25519 over
`b"loopy/record/v1\\x00" + body` by the key in `body["author"]`; the record id is
`sha256(body)`. Body bytes are kept exactly as received, so ids and signatures never
depend on re-encoding.

`decode_envelope` is the one gate for untrusted bytes. For ANY input it returns a
verified `Record` or raises `RecordError(reason)`, never another exception. It checks,
cheapest first, so that a maximum-size record with a bad signature costs about what a
small one does to reject: the size limit, a strict msgpack decode (bounded lengths, no
duplicate keys, no trailing bytes), the envelope's exact shape and its canonical bytes,
the body's kind, genome, author and time (against the caller's genome and clock), the
signature, and only then the body's exact key set and value types for its kind (bool
is not int; scores are finite floats; the patch is parsed), every limit, and that the
body is in the canonical encoding writers use (keys sorted, float64 scores, minimal
integers: so one content has one id).

Canonical encodings are receiver rules this module adds to PROTOCOL.md's writer rules:
an envelope is accepted only as the exact bytes `encode_envelope` makes of its body and
signature (keys `body`, `sig`, `v` in that order, shortest forms), and a body only in
its canonical encoding; a second spelling of the same record would otherwise be a
second gossip message (and, for a body, a second id).
"""
from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

from swarm.conventions import GENOME_RE, TOPIC_RE
from swarm.identity import NodeIdentity, peer_id_from_public_key, verify_signature
from swarm.patch import MAX_PATCH_BYTES, PatchError, parse_patch

VERSION = 1
SIGNING_DOMAIN = b"loopy/record/v1\x00"
MAX_ENVELOPE_BYTES = 192 * 1024
MAX_STRING_BYTES = 4 * 1024
MAX_LIST_LEN = 64
MAX_DESC_CHARS = 500
MAX_REASON = 500                 # characters of a result's reason or isolation note we write
MAX_FUTURE_MS = 10 * 60 * 1000   # a record's time may run ahead of ours by this much
MAX_INT = 2 ** 53 - 1            # exactly representable everywhere (JavaScript too)
MAX_BPB = 64.0                   # a score past this is no model (the evaluator rejects it too)
ID_LEN = 32

KINDS = ("experiment", "attestation", "announce")
STATUSES = ("ok", "crash", "timeout", "rejected")
VERDICTS = ("reproduced", "refuted")

# <dataset>/<budget>/<hardware class>, e.g. climbmix/time:300/nvidia-h100-80gb
ARENA_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}/(?:time|tokens):[1-9][0-9]{0,11}"
                      r"/[a-z0-9][a-z0-9._+-]{0,63}")
# Text shown in terminals and mail headers: no control or bidi-override characters.
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_MULTILINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_MULTIADDR_RE = re.compile(r"/[\x21-\x7e]{1,1023}")


class RecordError(Exception):
    """A record that is not exactly what PROTOCOL.md allows; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------
# The record


@dataclass(frozen=True, eq=False)
class Record:
    """A decoded record. `body` is the decoded map: read it, never mutate it."""

    id: bytes
    kind: str
    body: dict
    body_bytes: bytes
    sig: bytes
    author: bytes
    envelope: bytes

    def __eq__(self, other):
        return isinstance(other, Record) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"Record({self.kind} {self.id_hex[:12]} by {self.author_peer_id[-8:]})"

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    @property
    def author_peer_id(self) -> str:
        return peer_id_from_public_key(self.author)

    @property
    def t(self) -> int:
        return self.body["t"]

    @property
    def genome(self) -> str:
        return self.body["genome"]

    @property
    def arena(self) -> str:
        return self.body["arena"]

    # experiment
    @property
    def parents(self) -> tuple[bytes, ...]:
        return tuple(self.body.get("parents", ()))

    @property
    def topic(self) -> str | None:
        return self.body.get("topic")

    @property
    def patch(self) -> str | None:
        return self.body.get("patch")

    @property
    def desc(self) -> str | None:
        return self.body.get("desc")

    @property
    def agent(self) -> str | None:
        return self.body.get("agent")

    # experiment and attestation
    @property
    def result(self) -> dict | None:
        return self.body.get("result")

    @property
    def status(self) -> str | None:
        result = self.body.get("result")
        return result["status"] if result else None

    @property
    def val_bpb(self) -> float | None:
        result = self.body.get("result")
        return result.get("val_bpb") if result else None

    # attestation
    @property
    def target(self) -> bytes | None:
        return self.body.get("target")

    @property
    def verdict(self) -> str | None:
        return self.body.get("verdict")

    # announce
    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(self.body.get("topics", ()))

    @property
    def head(self) -> bytes | None:
        return self.body.get("head")

    @property
    def working_on(self) -> str | None:
        return self.body.get("working_on")

    @property
    def addrs(self) -> tuple[str, ...]:
        return tuple(self.body.get("addrs", ()))


# ---------------------------------------------------------------------------
# Encoding


def _canonical(value):
    """`value` with every map's keys in sorted order (containers rebuilt, leaves kept)."""
    if type(value) is dict:
        return {k: _canonical(v) if type(v) in (dict, list) else v
                for k, v in sorted(value.items())}
    if type(value) is list:
        return [_canonical(v) if type(v) in (dict, list) else v for v in value]
    return value


def encode_body(body: dict) -> bytes:
    """The canonical body encoding: keys sorted at every level, bin type, float64."""
    return msgpack.packb(_canonical(body), use_bin_type=True, use_single_float=False)


def encode_envelope(body_bytes: bytes, sig: bytes) -> bytes:
    return msgpack.packb({"body": body_bytes, "sig": sig, "v": VERSION}, use_bin_type=True)


def record_id(body_bytes: bytes) -> bytes:
    return hashlib.sha256(body_bytes).digest()


class _DuplicateKey(ValueError):
    pass


def _unique_map(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey()
    return out


def _unpack(data: bytes, what: str):
    try:
        return msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True,
            object_pairs_hook=_unique_map, timestamp=0,
            max_str_len=MAX_ENVELOPE_BYTES,
            max_bin_len=MAX_ENVELOPE_BYTES, max_array_len=MAX_LIST_LEN, max_map_len=32,
            max_ext_len=0)
    except _DuplicateKey:
        raise RecordError(f"{what}: duplicate map key") from None
    except msgpack.ExtraData:
        raise RecordError(f"{what}: trailing bytes after the msgpack value") from None
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as e:
        # ValueError covers UnicodeDecodeError, FormatError, StackError and limits
        raise RecordError(f"{what}: invalid msgpack ({type(e).__name__})") from None


# ---------------------------------------------------------------------------
# Field validators: each takes (value, where) and raises RecordError or returns.


def _fail(where: str, what: str):
    raise RecordError(f"{where}: {what}")


def _str(value, where: str, max_bytes: int = MAX_STRING_BYTES) -> str:
    if type(value) is not str:
        _fail(where, f"expected str, got {type(value).__name__}")
    if len(value) > max_bytes or len(value.encode("utf-8")) > max_bytes:
        _fail(where, f"longer than {max_bytes} bytes")
    return value


def _text(value, where: str) -> None:
    _str(value, where)
    if _UNSAFE_TEXT.search(value):
        _fail(where, "contains control characters")


def _int(value, where: str) -> None:
    if type(value) is not int:
        _fail(where, f"expected int, got {type(value).__name__}")
    if not 0 <= value <= MAX_INT:
        _fail(where, "out of range")


def _float(value, where: str) -> None:
    if type(value) is not float:
        _fail(where, f"expected float, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        _fail(where, "not a finite non-negative number")


def _bpb(value, where: str) -> None:
    """A score in bits per byte: positive and at most MAX_BPB. Peers' scores feed medians
    and deviations (the arena's noise), where 1e308 overflows to inf."""
    _float(value, where)
    if not 0 < value <= MAX_BPB:
        _fail(where, f"a score must lie in (0, {MAX_BPB:g}]")


def _id(value, where: str) -> None:
    if type(value) is not bytes or len(value) != ID_LEN:
        _fail(where, "expected a 32-byte id")


def _list(value, where: str, min_len: int = 0, max_len: int = MAX_LIST_LEN) -> list:
    if type(value) is not list:
        _fail(where, f"expected list, got {type(value).__name__}")
    if not min_len <= len(value) <= max_len:
        _fail(where, f"expected {min_len}-{max_len} entries, got {len(value)}")
    return value


def _kind(value, where):
    if type(value) is not str or value not in KINDS:
        _fail(where, "unknown kind")


def _genome(value, where):
    if type(value) is not str or not GENOME_RE.fullmatch(value):
        _fail(where, "expected 16 lowercase hex characters")


def _author(value, where):
    if type(value) is not bytes or len(value) != 32:
        _fail(where, "expected a 32-byte ed25519 public key")


def _topic(value, where):
    if type(value) is not str or not TOPIC_RE.fullmatch(value):
        _fail(where, "expected 1-32 characters of a-z 0-9 -")


def _arena(value, where):
    if type(value) is not str or not ARENA_RE.fullmatch(value):
        _fail(where, "expected <dataset>/<time|tokens:N>/<hardware class>")


def _parents(value, where):
    _list(value, where, 1, 2)
    for i, parent in enumerate(value):
        _id(parent, f"{where}[{i}]")
    if len(value) == 2 and value[0] == value[1]:
        _fail(where, "the same parent twice")


def _patch(value, where):
    _str(value, where, MAX_PATCH_BYTES)
    if value:
        # the patch of a train.py edit: one file, train.py, parseable
        try:
            files = parse_patch(value)
        except PatchError as e:
            _fail(where, f"not a unified diff ({e})")
        if len(files) != 1 or files[0].git_extras or not (
                files[0].old_path == files[0].new_path == "train.py"):
            _fail(where, "must change train.py only (a/train.py, b/train.py headers)")


def _desc(value, where):
    _text(value, where)
    if len(value) > MAX_DESC_CHARS:
        _fail(where, f"longer than {MAX_DESC_CHARS} characters")


def _reason(value, where):
    _str(value, where)
    if _UNSAFE_MULTILINE.search(value):
        _fail(where, "contains control characters")


def _verdict(value, where):
    if type(value) is not str or value not in VERDICTS:
        _fail(where, "expected 'reproduced' or 'refuted'")


def _topics(value, where):
    _list(value, where)
    for i, topic in enumerate(value):
        _topic(topic, f"{where}[{i}]")
    if len(set(value)) != len(value):
        _fail(where, "duplicate topic")


def _addrs(value, where):
    _list(value, where)
    for i, addr in enumerate(value):
        if type(addr) is not str or not _MULTIADDR_RE.fullmatch(addr):
            _fail(f"{where}[{i}]", "expected a multiaddr string")


def _status(value, where):
    if type(value) is not str or value not in STATUSES:
        _fail(where, "unknown status")


_RESULT_FIELDS: dict[str, Callable] = {
    "status": _status,
    "val_bpb": _bpb, "train_s": _float, "total_s": _float, "peak_mem_mb": _float,
    "tokens": _int, "steps": _int, "params": _int, "reason": _reason,
    # held-out test split (attestations): the claim and its parent on the same windows
    "test_bpb": _bpb, "test_parent_bpb": _bpb,
    # what the sandbox could not isolate, when that was not everything
    "isolation": _reason,
}


def _result(value, where):
    if type(value) is not dict:
        _fail(where, "expected a map")
    _keys(value, {"status"}, set(_RESULT_FIELDS) - {"status"}, where)
    for key, item in value.items():
        _RESULT_FIELDS[key](item, f"{where}.{key}")
    ok = value["status"] == "ok"
    if ok != ("val_bpb" in value):
        _fail(where, "val_bpb must be present exactly when status is ok")


def _keys(body: dict, required: set, optional: set, where: str) -> None:
    keys = set(body)
    missing = required - keys
    if missing:
        _fail(where, f"missing {', '.join(sorted(missing))}")
    unknown = keys - required - optional
    if unknown:
        shown = sorted(repr(k) for k in unknown)
        _fail(where, f"unknown key {', '.join(shown)[:100]}")


_COMMON = {"kind": _kind, "genome": _genome, "author": _author, "t": _int}
_SCHEMAS: dict[str, tuple[dict[str, Callable], set[str]]] = {
    # kind: ({key: validator} for every key, the optional keys)
    "experiment": ({**_COMMON, "parents": _parents, "topic": _topic, "arena": _arena,
                    "patch": _patch, "desc": _desc, "agent": _text, "result": _result},
                   set()),
    "attestation": ({**_COMMON, "target": _id, "arena": _arena, "verdict": _verdict,
                     "result": _result}, set()),
    "announce": ({**_COMMON, "topics": _topics, "arena": _arena, "head": _id,
                  "working_on": _text, "addrs": _addrs}, {"head"}),
}


def _validate_body(body: dict) -> None:
    kind = body.get("kind")
    if type(kind) is not str or kind not in _SCHEMAS:
        _fail("body.kind", "unknown kind")
    fields, optional = _SCHEMAS[kind]
    _keys(body, set(fields) - optional, optional, f"{kind} body")
    for key, value in body.items():
        fields[key](value, f"{kind}.{key}")
    if kind == "attestation" and body["verdict"] == "reproduced" \
            and body["result"]["status"] != "ok":
        _fail("attestation.verdict", "reproduced needs an ok result")


# ---------------------------------------------------------------------------
# Decoding


def decode_envelope(data: bytes, *, genome: str | None = None,
                    now_ms: int | None = None) -> Record:
    """Decode and verify untrusted envelope bytes; raise RecordError(reason) if bad.

    `genome`: reject records of another genome id. `now_ms`: reject records timed more
    than 10 minutes in the future.

    Cheapest checks first, so that a record costs little to reject whatever its size:
    the size; the envelope's shape and its canonical bytes (one record, one spelling);
    the body's kind, genome, author and time; the signature; and only then, for a body
    its author really signed, the full schema (which parses the patch) and the body's
    canonical encoding.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RecordError("envelope: not bytes")
    data = bytes(data)
    if len(data) > MAX_ENVELOPE_BYTES:
        raise RecordError(f"envelope: larger than {MAX_ENVELOPE_BYTES} bytes")
    envelope = _unpack(data, "envelope")
    if type(envelope) is not dict:
        raise RecordError("envelope: not a map")
    _keys(envelope, {"v", "body", "sig"}, set(), "envelope")
    if type(envelope["v"]) is not int or envelope["v"] != VERSION:
        raise RecordError("envelope: unknown version")
    body_bytes, sig = envelope["body"], envelope["sig"]
    if type(body_bytes) is not bytes:
        raise RecordError("envelope.body: expected bin")
    if type(sig) is not bytes or len(sig) != 64:
        raise RecordError("envelope.sig: expected 64 bytes")
    if encode_envelope(body_bytes, sig) != data:
        # any other spelling (key order, wider ints or bins) would be another gossip
        # message, and another copy to store, of the same record
        raise RecordError("envelope: not in canonical encoding (keys body, sig, v in "
                          "that order, shortest msgpack forms)")
    body = _unpack(body_bytes, "body")
    if type(body) is not dict:
        raise RecordError("body: not a map")
    # what the signature check needs, and what costs nothing to look at
    _kind(body.get("kind"), "body.kind")
    _genome(body.get("genome"), "body.genome")
    _author(body.get("author"), "body.author")
    _int(body.get("t"), "body.t")
    if genome is not None and body["genome"] != genome:
        raise RecordError(f"body.genome: {body['genome']} is not this swarm's genome")
    if now_ms is not None and body["t"] > now_ms + MAX_FUTURE_MS:
        raise RecordError("body.t: too far in the future")
    if not verify_signature(body["author"], SIGNING_DOMAIN + body_bytes, sig):
        raise RecordError("bad signature")
    # the expensive part (patch parsing), for signed bodies only
    _validate_body(body)
    if encode_body(body) != body_bytes:
        raise RecordError("body: not in canonical encoding (sorted keys, float64, "
                          "minimal integers)")
    rid = record_id(body_bytes)
    if body["kind"] == "experiment" and rid in body["parents"]:
        raise RecordError("experiment lists itself as a parent")
    return Record(rid, body["kind"], body, body_bytes, sig, body["author"], data)


def load_stored_body(body_bytes: bytes) -> dict:
    """The body map of a record this node verified before (its own store)."""
    return msgpack.unpackb(body_bytes, raw=False)


def load_stored(envelope: bytes, stored_id: bytes | None = None) -> Record:
    """Rebuild a Record from an envelope this node verified before (its own store).

    Skips validation and the signature check; never use it on bytes from the network.
    `stored_id`: the id the store computed when it verified the record, so that it is not
    hashed again (hashing the body was most of the cost of reading a large record, and
    the loop reads every record of its arena several times a step).
    """
    env = msgpack.unpackb(envelope, raw=False)
    body_bytes = env["body"]
    body = msgpack.unpackb(body_bytes, raw=False)
    rid = stored_id if stored_id is not None else record_id(body_bytes)
    return Record(rid, body["kind"], body, body_bytes, env["sig"], body["author"], envelope)


# ---------------------------------------------------------------------------
# Building


def now_ms() -> int:
    return int(time.time() * 1000)


_FLOAT_FIELDS = ("val_bpb", "train_s", "total_s", "peak_mem_mb", "test_bpb", "test_parent_bpb")


def result_map(status: str, *, val_bpb: float | None = None, train_s: float = 0.0,
               total_s: float = 0.0, tokens: int | None = None, steps: int | None = None,
               params: int | None = None, peak_mem_mb: float | None = None,
               reason: str | None = None, isolation: str | None = None) -> dict:
    """PROTOCOL.md's `result` map of a run, as every trainer reports one.

    val_bpb only when ok; a run that is not ok always says why (its status when the
    reason is empty), an ok one only when given a reason; fields left None are left out;
    counts are ints, measurements floats, and text is cut to MAX_REASON characters.
    """
    out: dict = {"status": status, "train_s": float(train_s), "total_s": float(total_s)}
    if status == "ok" and val_bpb is not None:
        out["val_bpb"] = float(val_bpb)
    for key, count in (("tokens", tokens), ("steps", steps), ("params", params)):
        if count is not None:
            out[key] = int(count)
    if peak_mem_mb is not None:
        out["peak_mem_mb"] = float(peak_mem_mb)
    if isolation:
        out["isolation"] = isolation[:MAX_REASON]
    if status != "ok":
        out["reason"] = (reason or "")[:MAX_REASON] or status
    elif reason is not None:
        out["reason"] = reason[:MAX_REASON]
    return out


def normalize_result(result: dict) -> dict:
    """A harness result map as records carry it: None values dropped, ints in float
    fields made floats. Anything else is left for validation to accept or refuse."""
    out = {}
    for key, value in result.items():
        if value is None:
            continue
        if key in _FLOAT_FIELDS and type(value) is int:
            value = float(value)
        out[key] = value
    return out


def _sign(identity: NodeIdentity, body: dict[str, Any], genome: str) -> Record:
    try:
        body_bytes = encode_body(body)
    except (TypeError, ValueError, OverflowError) as e:  # unencodable values
        raise RecordError(f"body: cannot encode ({e})") from None
    sig = identity.sign(SIGNING_DOMAIN + body_bytes)
    # decode what we built, so we never publish what others would drop
    return decode_envelope(encode_envelope(body_bytes, sig), genome=genome)


def make_experiment(identity: NodeIdentity, *, genome: str, parents, topic: str,
                    arena: str, patch: str, desc: str, agent: str, result: dict,
                    t: int | None = None) -> Record:
    """Sign an experiment: `patch` is train.py's diff against `parents[0]`'s source."""
    body = {"kind": "experiment", "genome": genome, "author": identity.public_key,
            "t": now_ms() if t is None else t, "parents": list(parents), "topic": topic,
            "arena": arena, "patch": patch, "desc": desc, "agent": agent,
            "result": normalize_result(result)}
    return _sign(identity, body, genome)


def make_attestation(identity: NodeIdentity, *, genome: str, target: bytes, arena: str,
                     verdict: str, result: dict, t: int | None = None) -> Record:
    """Sign an attestation: our own measurement of `target` in `arena`, and a verdict."""
    body = {"kind": "attestation", "genome": genome, "author": identity.public_key,
            "t": now_ms() if t is None else t, "target": target, "arena": arena,
            "verdict": verdict, "result": normalize_result(result)}
    return _sign(identity, body, genome)


def make_announce(identity: NodeIdentity, *, genome: str, topics, arena: str,
                  working_on: str = "", addrs=(), head: bytes | None = None,
                  t: int | None = None) -> Record:
    """Sign an announce: presence, topics, current work, and our best verified head."""
    body = {"kind": "announce", "genome": genome, "author": identity.public_key,
            "t": now_ms() if t is None else t, "topics": list(topics), "arena": arena,
            "working_on": working_on, "addrs": list(addrs)}
    if head is not None:
        body["head"] = head
    return _sign(identity, body, genome)

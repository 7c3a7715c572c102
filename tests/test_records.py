"""swarm.records: three parties (alice the honest author, bob the receiver, mallory),
every limit of PROTOCOL.md, and fuzzing: decode_envelope raises nothing but RecordError."""
import hashlib
import math
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm import records
from swarm.identity import NodeIdentity
from swarm.patch import make_patch
from swarm.records import (MAX_ENVELOPE_BYTES, SIGNING_DOMAIN, RecordError, decode_envelope,
                           encode_body, encode_envelope, load_stored, make_announce,
                           make_attestation, make_experiment)

GENOME = "0123456789abcdef"
ARENA = "embedded/tokens:300000/cpu"
ROOT = hashlib.sha256(b"base train.py\n").digest()
ALICE = NodeIdentity(bytes(range(32)))
MALLORY = NodeIdentity(bytes(range(1, 33)))
T = 1_760_000_000_000
OK = {"status": "ok", "val_bpb": 1.2345, "train_s": 60.0, "total_s": 75.5,
      "tokens": 300000, "steps": 120, "params": 1_000_000, "peak_mem_mb": 812.5}
PATCH = make_patch("lr = 0.01\n", "lr = 0.02\n")


def experiment(identity=ALICE, **overrides) -> records.Record:
    fields = dict(genome=GENOME, parents=[ROOT], topic="optimizer", arena=ARENA,
                  patch=PATCH, desc="double the learning rate", agent="mutate",
                  result=OK, t=T)
    fields.update(overrides)
    return make_experiment(identity, **fields)


def body_of(record) -> dict:
    return msgpack.unpackb(record.body_bytes, raw=False)


def signed(body: dict, identity=ALICE, encode=encode_body) -> bytes:
    """An envelope for an arbitrary body, properly signed: tests the schema, not the sig."""
    body_bytes = encode(body)
    return encode_envelope(body_bytes, identity.sign(SIGNING_DOMAIN + body_bytes))


def reject(data: bytes, match: str, **kw):
    with pytest.raises(RecordError, match=match):
        decode_envelope(data, **kw)


# ---------------------------------------------------------------------------
# honest round trips


def test_experiment_round_trip_and_accessors():
    rec = experiment()
    got = decode_envelope(rec.envelope, genome=GENOME, now_ms=T)
    assert got == rec and got.id == hashlib.sha256(got.body_bytes).digest()
    assert got.id_hex == got.id.hex() and got.kind == "experiment"
    assert got.author == ALICE.public_key and got.author_peer_id == ALICE.peer_id
    assert got.parents == (ROOT,) and got.topic == "optimizer" and got.arena == ARENA
    assert got.patch == PATCH and got.desc.startswith("double") and got.agent == "mutate"
    assert got.status == "ok" and got.val_bpb == 1.2345 and got.t == T
    assert got.genome == GENOME and got.target is None and got.topics == ()
    assert got.envelope == rec.envelope and got.body_bytes == rec.body_bytes
    assert load_stored(rec.envelope) == rec and load_stored(rec.envelope).body == rec.body


def test_body_is_canonical_msgpack():
    rec = experiment()
    raw = rec.body_bytes
    assert list(msgpack.unpackb(raw, raw=False)) == sorted(rec.body)  # keys in sorted order
    # val_bpb travels as float64 (0xcb) and t as an integer
    assert b"\xcb" + struct.pack(">d", 1.2345) in raw
    assert b"\xcf" + struct.pack(">Q", T) in raw or b"\xd3" + struct.pack(">q", T) in raw
    env = msgpack.unpackb(rec.envelope, raw=False)
    assert set(env) == {"v", "body", "sig"} and env["v"] == 1 and len(env["sig"]) == 64


def test_attestation_and_announce_round_trip():
    target = experiment().id
    att = make_attestation(MALLORY, genome=GENOME, target=target, arena=ARENA,
                           verdict="refuted", result={"status": "crash", "reason": "OOM\n"}, t=T)
    got = decode_envelope(att.envelope)
    assert got.kind == "attestation" and got.target == target and got.verdict == "refuted"
    assert got.status == "crash" and got.val_bpb is None and got.parents == ()
    ann = make_announce(ALICE, genome=GENOME, topics=["optimizer", "general"], arena=ARENA,
                        working_on="verifying 3f2a", addrs=["/ip4/127.0.0.1/tcp/4011"],
                        head=target, t=T)
    got = decode_envelope(ann.envelope)
    assert got.topics == ("optimizer", "general") and got.head == target
    assert got.addrs == ("/ip4/127.0.0.1/tcp/4011",) and got.working_on == "verifying 3f2a"
    bare = make_announce(ALICE, genome=GENOME, topics=[], arena=ARENA, t=T)
    assert "head" not in bare.body and bare.addrs == () and bare.working_on == ""


def test_builder_normalizes_harness_results():
    rec = experiment(result={"status": "crash", "val_bpb": None, "train_s": 3, "tokens": 5,
                             "reason": "CUDA error"})
    assert rec.result == {"status": "crash", "train_s": 3.0, "tokens": 5, "reason": "CUDA error"}


def test_result_map_is_what_every_trainer_reports():
    from swarm.records import MAX_REASON, result_map
    ok = result_map("ok", val_bpb=1, train_s=2, total_s=3, tokens=4.0, steps=5, params=6,
                    peak_mem_mb=7)
    assert ok == {"status": "ok", "val_bpb": 1.0, "train_s": 2.0, "total_s": 3.0,
                  "tokens": 4, "steps": 5, "params": 6, "peak_mem_mb": 7.0}
    assert [type(ok[k]) for k in ("val_bpb", "train_s", "tokens")] == [float, float, int]
    assert experiment(result=ok).result == ok
    # a failed run always says why, and never carries a score
    assert result_map("crash", val_bpb=1.5) == {"status": "crash", "train_s": 0.0,
                                                "total_s": 0.0, "reason": "crash"}
    long = result_map("timeout", reason="x" * 2000, isolation="missing: " + "y" * 2000)
    assert len(long["reason"]) == len(long["isolation"]) == MAX_REASON
    assert experiment(result=long).result == long
    # an ok run carries a reason only when given one
    assert "reason" not in ok
    assert result_map("ok", val_bpb=1.0, reason="synthetic")["reason"] == "synthetic"


def test_harness_and_synthetic_results_are_built_alike():
    from experiments.run.harness import ExperimentResult
    from experiments.simulation.synthetic import SyntheticResult
    fields = dict(status="ok", val_bpb=1.25, train_s=10, total_s=12.5, tokens=3000, steps=7,
                  params=1000, peak_mem_mb=64.0)
    harness = ExperimentResult(arena=ARENA, reason="ignored when ok", **fields)
    synthetic = SyntheticResult(reason="synthetic result", **fields)
    assert {k: v for k, v in synthetic.to_record_result().items() if k != "reason"} == \
        harness.to_record_result()
    crashed = ExperimentResult(status="crash", arena=ARENA, reason="",
                               missing_isolation=["network"])
    assert crashed.to_record_result() == {"status": "crash", "train_s": 0.0, "total_s": 0.0,
                                          "isolation": "missing: network", "reason": "crash"}


def test_merge_record_with_two_parents_and_baseline_with_empty_patch():
    a, b = experiment().id, experiment(desc="other").id
    assert experiment(parents=[a, b]).parents == (a, b)
    assert experiment(patch="").patch == ""


# ---------------------------------------------------------------------------
# mallory


def test_forged_author_is_rejected():
    body = body_of(experiment())
    body["desc"] = "alice says: trust mallory"
    reject(signed(body, identity=MALLORY), "bad signature")  # author still alice


def test_mallory_cannot_reuse_alices_signature():
    rec = experiment()
    for body in (dict(body_of(rec), author=MALLORY.public_key),
                 dict(body_of(rec), result=dict(OK, val_bpb=0.5))):
        body_bytes = encode_body(body)
        reject(encode_envelope(body_bytes, rec.sig), "bad signature")


def test_signature_needs_the_domain_prefix():
    body_bytes = experiment().body_bytes
    reject(encode_envelope(body_bytes, ALICE.sign(body_bytes)), "bad signature")


def test_mallory_signing_as_herself_is_her_record():
    rec = experiment(MALLORY)
    assert decode_envelope(rec.envelope).author == MALLORY.public_key != ALICE.public_key


def test_replay_is_the_same_record_and_other_genome_is_refused():
    rec = experiment()
    assert decode_envelope(rec.envelope).id == decode_envelope(rec.envelope).id == rec.id
    reject(rec.envelope, "not this swarm's genome", genome="fedcba9876543210")


def test_reencoded_body_is_a_different_id_and_refused():
    rec = experiment()
    reversed_order = msgpack.packb(dict(reversed(list(body_of(rec).items()))),
                                   use_bin_type=True)
    assert hashlib.sha256(reversed_order).digest() != rec.id
    # unsigned in this spelling: the signature check, which now comes first, refuses it
    reject(encode_envelope(reversed_order, rec.sig), "bad signature")
    # even signed by its author, a non-canonical spelling is not a second id for the content
    reject(signed(body_of(rec), encode=lambda b: msgpack.packb(
        dict(reversed(list(b.items()))), use_bin_type=True)), "canonical")


@pytest.mark.parametrize("field, value", [("val_bpb", 1.7e308), ("val_bpb", 64.5),
                                          ("test_bpb", 1e300), ("test_parent_bpb", 0.0)])
def test_scores_outside_what_a_model_can_score_are_refused(field, value):
    """Peers' scores feed medians and deviations: two baselines at 1.7e308 once made the
    arena's noise estimate overflow and stopped every node that stored them."""
    body = body_of(experiment())
    body["result"] = dict(body["result"], **{field: value})
    reject(signed(body), "score must lie in")
    body["result"][field] = 63.9
    assert decode_envelope(signed(body))


def test_float32_score_is_refused():
    body = body_of(experiment())
    reject(signed(body, encode=lambda b: msgpack.packb(
        records._canonical(b), use_bin_type=True, use_single_float=True)), "canonical")


@pytest.mark.parametrize("flip", [0x01, 0x80, 0xFF])
def test_every_single_byte_tamper_is_rejected(flip):
    env = experiment().envelope
    for i in range(len(env)):
        tampered = env[:i] + bytes([env[i] ^ flip]) + env[i + 1:]
        with pytest.raises(RecordError):
            decode_envelope(tampered)


def test_self_parent_is_rejected(monkeypatch):
    rec = experiment()
    monkeypatch.setattr(records, "record_id", lambda body_bytes: ROOT)
    reject(rec.envelope, "itself as a parent")


def test_future_record_rejected_only_when_now_given():
    rec = experiment(t=T + 11 * 60 * 1000)
    reject(rec.envelope, "future", now_ms=T)
    assert decode_envelope(rec.envelope, now_ms=T + 60_000)
    assert decode_envelope(rec.envelope)


# ---------------------------------------------------------------------------
# shape, types and limits


def mutated(path: str, value, base=None) -> bytes:
    """Alice's experiment with one field (a.b for nested) replaced or deleted, re-signed."""
    body = body_of(base or experiment())
    keys = path.split(".")
    target = body
    for key in keys[:-1]:
        target = target[key]
    if value is DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return signed(body)


DELETE = object()


@pytest.mark.parametrize("path,value,match", [
    ("kind", "experimentx", "unknown kind"),
    ("kind", 1, "unknown kind"),
    ("genome", "0123456789ABCDEF", "16 lowercase hex"),
    ("t", True, "expected int, got bool"),
    ("t", 1.0, "expected int, got float"),
    ("t", -1, "out of range"),
    ("t", 2 ** 60, "out of range"),
    ("author", b"\0" * 31, "32-byte"),
    ("parents", [], "1-2 entries"),
    ("parents", [ROOT, ROOT[::-1], ROOT[1:] + b"x"], "1-2 entries"),
    ("parents", [ROOT, ROOT], "same parent twice"),
    ("parents", [ROOT[:31]], "32-byte id"),
    ("parents", [ROOT.hex()], "32-byte id"),
    ("parents", ROOT, "expected list"),
    ("topic", "Optimizer", "a-z 0-9"),
    ("topic", "x" * 33, "a-z 0-9"),
    ("topic", "opt\n", "a-z 0-9"),
    ("topic", "", "a-z 0-9"),
    ("arena", "embedded/cpu", "dataset"),
    ("arena", "embedded/time:300/cpu/extra", "dataset"),
    ("arena", "embedded/steps:300/cpu", "dataset"),
    ("arena", "Embedded/time:300/cpu", "dataset"),
    ("arena", "embedded/time:0300/cpu", "dataset"),
    ("patch", "x" * (128 * 1024 + 1), "longer than 131072"),
    ("patch", "not a diff\n", "not a unified diff"),
    ("patch", make_patch("a\n", "b\n", "genome/train.py"), "train.py only"),
    ("patch", make_patch("a\n", "b\n", "other.py"), "train.py only"),
    ("desc", "d" * 501, "500 characters"),
    ("desc", "line one\nline two", "control characters"),
    ("desc", "colour \x1b[31mred", "control characters"),
    ("desc", "spoof \u202e", "control characters"),
    ("desc", b"bytes", "expected str"),
    ("agent", "a" * 4097, "longer than 4096"),
    ("agent", "\u00e9" * 2049, "longer than 4096 bytes"),
    ("result", "ok", "expected a map"),
    ("result.status", "great", "unknown status"),
    ("result.status", DELETE, "missing status"),
    ("result.val_bpb", DELETE, "present exactly when status is ok"),
    ("result.val_bpb", 1, "expected float, got int"),
    ("result.val_bpb", True, "expected float, got bool"),
    ("result.val_bpb", math.nan, "finite"),
    ("result.val_bpb", math.inf, "finite"),
    ("result.val_bpb", -1.0, "finite non-negative"),
    ("result.val_bpb", 0.0, "score must lie in"),
    ("result.tokens", 1.5, "expected int"),
    ("result.tokens", -5, "out of range"),
    ("result.peak_mem_mb", 100, "expected float"),
    ("result.reason", "\x00", "control characters"),
    ("result.bonus", 1, "unknown key"),
    ("extra", 1, "unknown key"),
    ("desc", DELETE, "missing desc"),
])
def test_field_rules(path, value, match):
    reject(mutated(path, value), match)


def test_status_without_score():
    crash = experiment(result={"status": "crash", "reason": "boom"})
    reject(mutated("result.val_bpb", 1.0, base=crash), "present exactly when status is ok")
    assert decode_envelope(mutated("result.reason", "Traceback:\n\tline 1", base=crash))


def test_attestation_rules():
    att = make_attestation(ALICE, genome=GENOME, target=ROOT, arena=ARENA,
                           verdict="reproduced", result=OK, t=T)
    reject(mutated("verdict", "maybe", base=att), "reproduced' or 'refuted")
    reject(mutated("result", {"status": "crash"}, base=att), "reproduced needs an ok result")
    reject(mutated("target", ROOT[:16], base=att), "32-byte id")
    reject(mutated("parents", [ROOT], base=att), "unknown key")


def test_announce_rules():
    ann = make_announce(ALICE, genome=GENOME, topics=["general"], arena=ARENA, t=T)
    reject(mutated("topics", ["general", "general"], base=ann), "duplicate topic")
    reject(mutated("topics", [f"t{i}" for i in range(65)], base=ann), "invalid msgpack")
    reject(mutated("addrs", ["not a multiaddr"], base=ann), "multiaddr")
    reject(mutated("addrs", ["/ip4/1.2.3.4/tcp/1 x"], base=ann), "multiaddr")
    reject(mutated("working_on", DELETE, base=ann), "missing working_on")
    reject(mutated("head", b"x", base=ann), "32-byte id")


def test_envelope_shape():
    rec = experiment()
    good = {"v": 1, "body": rec.body_bytes, "sig": rec.sig}

    def env(**changes):
        d = dict(good, **changes)
        return msgpack.packb({k: v for k, v in sorted(d.items()) if v is not DELETE},
                             use_bin_type=True)

    assert env() == rec.envelope and decode_envelope(env()) == rec
    reject(env(v=2), "unknown version")
    reject(env(v=True), "unknown version")
    reject(env(v=DELETE), "missing v")
    reject(env(extra=1), "unknown key")
    reject(env(sig=rec.sig[:63]), "64 bytes")
    reject(env(body=rec.body_bytes.decode("latin-1")), "expected bin")
    reject(env(body=msgpack.packb([1, 2])), "not a map")
    reject(msgpack.packb([1, rec.body_bytes, rec.sig]), "not a map")
    reject(env() + b"\x00", "trailing bytes")
    reject(env()[:-1], "invalid msgpack")
    reject(b"", "invalid msgpack")
    reject("a string", "not bytes")
    reject(None, "not bytes")


def test_one_record_has_one_envelope_spelling():
    """Only the canonical envelope bytes are accepted: other spellings of the same body
    and signature (key order, wider integer or bin forms) would each be another gossip
    message and another copy of one record."""
    rec = experiment()
    body, sig = rec.body_bytes, rec.sig
    assert encode_envelope(body, sig) == rec.envelope
    assert decode_envelope(rec.envelope) == rec

    def pack(*items):
        return bytes([0x80 | (len(items) // 2)]) + b"".join(items)

    def s(text):
        return msgpack.packb(text, use_bin_type=True)

    bin32 = b"\xc6" + len(body).to_bytes(4, "big") + body
    spellings = {
        "key order": msgpack.packb({"v": 1, "body": body, "sig": sig}, use_bin_type=True),
        "v as uint8": pack(s("body"), s(body), s("sig"), s(sig), s("v"), b"\xcc\x01"),
        "body as bin32": pack(s("body"), bin32, s("sig"), s(sig), s("v"), s(1)),
        "key as str8": pack(b"\xd9\x04body", s(body), s("sig"), s(sig), s("v"), s(1)),
    }
    for name, data in spellings.items():
        assert data != rec.envelope
        assert msgpack.unpackb(data, raw=False) == {"v": 1, "body": body, "sig": sig}, name
        reject(data, "canonical")


def test_a_max_size_record_with_a_bad_signature_is_refused_before_its_patch_is_parsed(
        monkeypatch):
    old = "".join(f"x{i} = {i}\n" for i in range(4000))
    new = "".join(f"y{i} = {i}\n" for i in range(4000))
    patch = make_patch(old, new)
    assert 100 * 1024 < len(patch) <= records.MAX_PATCH_BYTES
    rec = make_experiment(ALICE, genome=GENOME, parents=[ROOT], topic="general",
                          arena=ARENA, patch=patch, desc="big", agent="a", result=OK,
                          t=T)
    bad = encode_envelope(rec.body_bytes, bytes([rec.sig[0] ^ 1]) + rec.sig[1:])

    def parse_patch(_text):
        raise AssertionError("the patch was parsed before the signature was checked")
    monkeypatch.setattr(records, "parse_patch", parse_patch)
    reject(bad, "bad signature", genome=GENOME, now_ms=T)
    # as are records of another genome, or timed too far ahead, whatever their size
    reject(rec.envelope, "not this swarm's genome", genome="f" * 16)
    reject(rec.envelope, "too far in the future", now_ms=T - records.MAX_FUTURE_MS - 1)
    with pytest.raises(AssertionError, match="parsed"):  # a good signature: parsed
        decode_envelope(rec.envelope, genome=GENOME, now_ms=T)


def test_duplicate_keys_rejected():
    rec = experiment()
    # a map header claiming 4 entries with "v" twice
    dup = b"\x84" + b"".join(msgpack.packb(x, use_bin_type=True) for x in
                             ("v", 1, "body", rec.body_bytes, "sig", rec.sig, "v", 1))
    reject(dup, "duplicate map key")
    body = rec.body_bytes
    dup_body = bytes([body[0] + 1]) + body[1:] + msgpack.packb("t") + msgpack.packb(T)
    reject(signed_raw(dup_body), "duplicate map key")


def signed_raw(body_bytes: bytes) -> bytes:
    return encode_envelope(body_bytes, ALICE.sign(SIGNING_DOMAIN + body_bytes))


def test_size_limits():
    big = signed(dict(body_of(experiment()), patch=make_patch("a\n", "b" * 100_000 + "\n")))
    assert len(big) < MAX_ENVELOPE_BYTES and decode_envelope(big)
    reject(b"\x00" * (MAX_ENVELOPE_BYTES + 1), "larger than")
    # a hostile length prefix: bin32 claiming 4 GiB
    reject(b"\x83\xa1v\x01\xa4body\xc6\xff\xff\xff\xff", "invalid msgpack")
    reject(b"\xdd\xff\xff\xff\xff", "invalid msgpack")   # array32 of 4G entries
    reject(b"\x91" * 5000 + b"\x00", "invalid msgpack")  # nesting


def test_builders_validate_what_they_sign():
    with pytest.raises(RecordError, match="topic"):
        experiment(topic="Bad Topic")
    with pytest.raises(RecordError, match="arena"):
        experiment(arena="nowhere")
    with pytest.raises(RecordError, match="cannot encode"):
        experiment(desc="\ud800")
    with pytest.raises(RecordError, match="expected str"):
        experiment(agent=None)


# ---------------------------------------------------------------------------
# fuzzing: only RecordError, for any input


def _decode_or_record_error(data):
    try:
        rec = decode_envelope(data, genome=GENOME, now_ms=T)
    except RecordError as e:
        assert e.reason
        return None
    # anything accepted is internally consistent
    assert rec.id == hashlib.sha256(rec.body_bytes).digest()
    return rec


def fuzz(examples: int):
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fast_and_deep(test, strategies: tuple, fast: int, deep: int):
    """The same property twice: a quick run by default, a long one under --run-slow."""
    return (fuzz(fast)(given(*strategies)(test)),
            pytest.mark.slow(fuzz(deep)(given(*strategies)(test))))


FUZZ = fuzz(2000)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    _decode_or_record_error(data)


VALID = [experiment().envelope,
         make_attestation(ALICE, genome=GENOME, target=ROOT, arena=ARENA,
                          verdict="reproduced", result=OK, t=T).envelope,
         make_announce(ALICE, genome=GENOME, topics=["general"], arena=ARENA, head=ROOT,
                       addrs=["/ip4/127.0.0.1/tcp/1"], t=T).envelope]


EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255),
                           st.sampled_from(["set", "insert", "delete", "truncate"])),
                 min_size=1, max_size=6)


def _mutated_envelopes(envelope, edits):
    data = bytearray(envelope)
    for pos, byte, op in edits:
        pos %= len(data) + 1
        if op == "set" and pos < len(data):
            data[pos] = byte
        elif op == "insert":
            data[pos:pos] = bytes([byte])
        elif op == "delete" and pos < len(data):
            del data[pos]
        elif op == "truncate":
            del data[pos:]
    _decode_or_record_error(bytes(data))


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)
BODY_KEYS = ["kind", "genome", "author", "t", "parents", "topic", "arena", "patch", "desc",
             "agent", "result", "target", "verdict", "topics", "head", "working_on", "addrs",
             "result.status", "result.val_bpb", "result.reason", "result.tokens", "bogus"]


CHANGES = st.lists(st.tuples(st.sampled_from(BODY_KEYS), msgpack_values | st.just(DELETE)),
                   min_size=1, max_size=4)


def _resigned_bodies(envelope, changes):
    """Well-signed bodies with fields replaced by arbitrary values reach every validator."""
    body = msgpack.unpackb(msgpack.unpackb(envelope)["body"], raw=False)
    for path, value in changes:
        target, key = body, path
        if path.startswith("result."):
            target, key = body.get("result"), path.split(".", 1)[1]
            if not isinstance(target, dict):
                continue
        if value is DELETE:
            target.pop(key, None)
        else:
            target[key] = value
    try:
        body_bytes = msgpack.packb(body, use_bin_type=True)
    except (ValueError, OverflowError, TypeError):
        return
    _decode_or_record_error(signed_raw(body_bytes))
    _decode_or_record_error(signed(body) if _encodable(body) else b"")


def _encodable(body) -> bool:
    try:
        encode_body(body)
        return True
    except (ValueError, OverflowError, TypeError):
        return False


def _arbitrary_msgpack(value):
    try:
        packed = msgpack.packb(value, use_bin_type=True)
    except (ValueError, OverflowError, TypeError):
        return
    _decode_or_record_error(packed)
    _decode_or_record_error(signed_raw(packed))
    _decode_or_record_error(msgpack.packb({"v": 1, "body": packed, "sig": b"\0" * 64}))


test_fuzz_mutated_envelopes, test_fuzz_mutated_envelopes_deep = fast_and_deep(
    _mutated_envelopes, (st.sampled_from(VALID), EDITS), 1500, 20000)
test_fuzz_resigned_bodies, test_fuzz_resigned_bodies_deep = fast_and_deep(
    _resigned_bodies, (st.sampled_from(VALID), CHANGES), 400, 10000)
test_fuzz_arbitrary_msgpack, test_fuzz_arbitrary_msgpack_deep = fast_and_deep(
    _arbitrary_msgpack, (msgpack_values,), 400, 10000)

"""Announce hints are reused between calls only while nothing they depend on changed: the
store, the reputations, the policy's settings, or the clock passing the moment a hint
expires or a promise breaks. Each check compares with a policy whose store cannot be
memoised (the computation from scratch)."""
from swarm import announces as ann
from swarm.announces import AnnounceLimits, AnnouncePolicy
from swarm.descriptions import working_on
from swarm.records import make_experiment

from test_announces import ARENA, CRASH, G, ROOT, Clock, announce, key, store  # noqa: F401


class Fresh:
    """The same store, without change_marker: never memoised."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        if name == "change_marker":
            raise AttributeError(name)
        return getattr(self.inner, name)


def pair(store, clock, reps, **limits):
    def make(s):
        return AnnouncePolicy(s, key(1).public_key, arena=ARENA, clock=clock,
                              reputations=lambda: dict(reps), limits=AnnounceLimits(**limits))
    return make(store), make(Fresh(store))


def same(a, b):
    got, want = a.hints(), b.hints()
    assert got == want
    return got


def test_hints_follow_writes_reputations_expiry_and_broken_promises(store, monkeypatch):
    clock = Clock(monkeypatch)
    reps: dict = {}
    memo, fresh = pair(store, clock, reps)
    assert same(memo, fresh) == []
    store.insert(announce(key(2), working_on(ROOT, "[A] a")))
    assert len(same(memo, fresh)) == 1
    clock.advance(1)
    store.insert(announce(key(3), working_on(ROOT, "[B] b")))
    assert len(same(memo, fresh)) == 2
    # a reputation changes the standing (trusted), with no write
    reps[key(3).public_key] = 5.0
    assert {h.standing for h in same(memo, fresh)} == {"stranger", "trusted"}
    # the first announce expires by the clock alone
    clock.advance(ann.EXPIRE_S - 1.5)   # key(2) was received 1 s before key(3)
    assert len(same(memo, fresh)) == 2
    clock.advance(1)
    assert [h.author for h in same(memo, fresh)] == [key(3).public_key]
    # key(4) breaks a promise (its hold runs out without a record) and then keeps one:
    # broken > kept makes it ignored once the deadline passes, by the clock alone
    who = key(4)
    store.insert(announce(who, working_on(ROOT, "[C] c")))
    clock.advance(ann.EXPIRE_S / 2)
    store.insert(announce(who, working_on(ROOT, "[D] d")))
    store.insert(make_experiment(who, genome=G, parents=[ROOT], topic="general",
                                 arena=ARENA, patch="", desc="[D] d", agent="a",
                                 result=CRASH))
    store.insert(announce(who, working_on(ROOT, "[E] e")))
    assert who.public_key in {h.author for h in same(memo, fresh)}
    for _ in range(20):   # walk past the deadline of [C] (and the expiries) in small steps
        clock.advance(ann.HOLD_S / 10)
        store.insert(announce(who, working_on(ROOT, "[E] e")))   # stays live
        same(memo, fresh)
    assert who.public_key not in {h.author for h in same(memo, fresh)}


def test_reused_hints_are_not_recomputed_and_settings_are_part_of_the_key(store,
                                                                          monkeypatch):
    clock = Clock(monkeypatch)
    for i in range(10):
        store.insert(announce(key(100 + i), working_on(ROOT, f"[S{i}] s")))
    memo, _ = pair(store, clock, {})
    first = memo.hints()
    calls = []
    original = store.live_announces
    monkeypatch.setattr(store, "live_announces", lambda *a: calls.append(a) or original(*a))
    assert memo.hints() == first and not calls          # reused
    wider, fresh = pair(store, clock, {}, stranger_slots=8)
    assert len(same(wider, fresh)) == 8 and calls       # other limits: computed


def test_a_promise_breaking_by_the_clock_alone_is_seen(store, monkeypatch):
    clock = Clock(monkeypatch)
    memo, fresh = pair(store, clock, {})
    who = key(5)
    store.insert(announce(who, working_on(ROOT, "[C] c")))      # promise C
    clock.advance(ann.HOLD_S - 100)
    store.insert(announce(who, working_on(ROOT, "[D] d")))      # promise D, C still open
    clock.advance(50)
    assert [h.desc for h in same(memo, fresh)] == ["[D] d"]
    clock.advance(100)   # C's deadline passes, nothing written: broken 1 > kept 0
    assert same(memo, fresh) == []

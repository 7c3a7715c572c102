"""A periodic catch-up round asks peers that served a catch-up before, and one other:
Sybil connections that do not serve sync cannot crowd the honest peers out of the round
(bench/bench_attacks.py, slow-sync)."""
import time

from swarm.network import SYNC_PEERS_PER_ROUND, SYNC_PROVEN_S, SwarmNode


def node_with(synced: dict) -> SwarmNode:
    node = SwarmNode.__new__(SwarmNode)   # only the catch-up bookkeeping
    node._synced_at = dict(synced)
    return node


def test_proven_peers_are_asked_every_round_and_one_other_gets_a_turn():
    now = time.monotonic()
    honest = ["h1", "h2"]
    sybils = [f"s{i}" for i in range(100)]
    node = node_with({p: now - 60 for p in honest})
    turns = set()
    for _ in range(200):
        chosen = node._periodic_sync_peers(sybils + honest)
        assert len(chosen) == SYNC_PEERS_PER_ROUND == len(set(chosen))
        assert set(honest) <= set(chosen)
        turns.update(set(chosen) - set(honest))
    assert len(turns) > 50   # the newcomers' slot goes round


def test_without_proven_peers_the_round_is_random_and_stale_proof_expires():
    now = time.monotonic()
    node = node_with({"old": now - SYNC_PROVEN_S - 1})
    peers = ["old"] + [f"p{i}" for i in range(9)]
    seen = set()
    for _ in range(200):
        chosen = node._periodic_sync_peers(peers)
        assert len(chosen) == SYNC_PEERS_PER_ROUND
        seen.update(chosen)
    assert seen == set(peers)
    assert node._periodic_sync_peers(["a"]) == ["a"] and node._periodic_sync_peers([]) == []


def test_many_proven_peers_leave_room_for_one_other():
    now = time.monotonic()
    proven = [f"h{i}" for i in range(10)]
    node = node_with({p: now for p in proven})
    chosen = node._periodic_sync_peers(proven + ["new"])
    assert "new" in chosen and len(chosen) == SYNC_PEERS_PER_ROUND

"""Our own publishes wait for peers' nearly full outbound queues to drain, but never for a
peer that does not keep up (bench/bench_attacks.py found publishes stalled 5 s each under
a flood of valid records, and anyone can connect and never read)."""
import trio

from swarm import gossip as gossip_mod
from swarm.gossip import PACE_MAX_WAIT_S, PACE_QUEUE_LEN, PACE_STALL_S, Gossip


class _Queue:
    def __init__(self, length):
        self.length = length

    def __len__(self):
        return self.length


class _Pubsub:
    def __init__(self, **queues):
        self.peer_queues = queues


def pacing(**queues):
    g = Gossip.__new__(Gossip)   # only the pacing state: no host, no pubsub service
    g.pubsub = _Pubsub(**queues)
    g._queue_seen = {}
    return g


async def _timed_wait(g):
    start = trio.current_time()
    await g._wait_queues_drain()
    return trio.current_time() - start


async def test_a_stuck_peer_holds_a_publish_only_briefly_and_then_not_at_all(autojump_clock):
    g = pacing(stuck=_Queue(32), fine=_Queue(0))
    first = await _timed_wait(g)
    assert PACE_STALL_S <= first < PACE_STALL_S + 0.1 < PACE_MAX_WAIT_S
    assert await _timed_wait(g) < 0.01          # known to be stuck: no wait at all
    g.pubsub.peer_queues["stuck"].length = 31   # it took one: waited for again, briefly
    assert PACE_STALL_S <= await _timed_wait(g) < PACE_STALL_S + 0.1


async def test_a_queue_refilled_as_fast_as_it_drains_is_not_waited_for(autojump_clock):
    q = _Queue(20)
    g = pacing(busy=q)

    async def churn():
        while True:   # a flood keeps it at 20 or 21
            q.length = 21 if q.length == 20 else 20
            await trio.sleep(0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(churn)
        assert await _timed_wait(g) < PACE_STALL_S + 0.1
        nursery.cancel_scope.cancel()


async def test_a_draining_queue_is_waited_for_until_it_is_short(autojump_clock):
    q = _Queue(30)
    g = pacing(slow=q)

    async def drain():
        while q.length >= PACE_QUEUE_LEN:
            await trio.sleep(0.1)     # one RPC every 100 ms: slow, but it keeps up
            q.length -= 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        waited = await _timed_wait(g)
    assert 1.8 <= waited <= 2.0 and q.length == PACE_QUEUE_LEN - 1
    assert gossip_mod.PACE_MAX_WAIT_S > waited

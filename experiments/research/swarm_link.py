"""The research loop joined to the swarm: what it publishes and announces, and the
loop's views of the announce policy.

Announces are hints, never vetoes (swarm.announces): weighted by what we know of each
author, capped per author and for strangers together, fresh by our own receipt clock.
The functions below read that policy for one node; `connect_to_swarm` wires a loop to
a running swarm node. Nothing here trains.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from swarm.announces import EXPIRE_S, AnnounceLimits, AnnouncePolicy
from swarm.store import Store

if TYPE_CHECKING:
    from experiments.research.loop import ResearchLoop


def announce_policy(loop: "ResearchLoop", expire_s: float = EXPIRE_S) -> AnnouncePolicy:
    """The announce policy of `loop`'s node: its arena, its reputations, its trust rules."""
    rules = loop.config.trust
    return AnnouncePolicy(loop.store, loop.identity.public_key, arena=loop.arena,
                          reputations=loop.trust.reputations,
                          limits=AnnounceLimits(expire_s=expire_s,
                                                trust_threshold=rules.trust_threshold,
                                                liar_threshold=rules.liar_threshold))


def connect_to_swarm(loop: "ResearchLoop", net) -> None:
    """The loop publishes what it records, announces what it runs (with its best verified
    head), and avoids the work that live peers announce, as far as the announce policy
    honours it. `net`: a running swarm.network.SwarmNode (its `publish` and `announce`)."""

    async def announce(working_on: str) -> None:
        best = loop.scores.best()
        head = best.id if best is not None and best.record is not None else None
        await net.announce(arena=loop.arena, working_on=working_on, head=head)

    policy = announce_policy(loop)
    loop.publish = net.publish
    loop.announce = announce
    # hints, never vetoes: weighted by what we know of each author, capped per author
    # and for strangers together, fresh by our own receipt clock (swarm.announces)
    loop.busy = policy.busy
    loop.firm_busy = lambda: policy.busy(firm_only=True)
    loop.verifiers = policy.verifiers
    loop.running_programs = policy.programs


def _policy(store: Store, me: bytes, max_age_s: float, arena: str | None = None,
            reputations=None) -> AnnouncePolicy:
    return AnnouncePolicy(store, me, arena=arena, reputations=reputations,
                          limits=AnnounceLimits(expire_s=max_age_s))


def yield_to_peer(store: Store, me: bytes, parent_id: bytes, desc: str,
                  program: str | None = None, max_age_s: float = EXPIRE_S, *,
                  arena: str | None = None, reputations=None) -> bool:
    """Whether to stop our run of `desc` on `parent_id` (or, given `program`, of the same
    program on any parent) for another node's announce of it: only when its author earned
    our trust and we received its announce before we announced the run ourselves (local
    receipt clock; see swarm.announces). A copied announce never cancels our run."""
    return _policy(store, me, max_age_s, arena, reputations).should_yield(
        parent_id, desc, program)


def verifiers_from_announces(store: Store, me: bytes, max_age_s: float = EXPIRE_S
                             ) -> dict[str, set[bytes]]:
    """Claim id prefix -> keys of the other live nodes that announce re-running it now
    (honoured hints only; the loop counts only peers it trusts among them)."""
    return _policy(store, me, max_age_s).verifiers()


def busy_from_announces(store: Store, me: bytes, max_age_s: float = EXPIRE_S
                        ) -> set[tuple[bytes, str]]:
    """(parent, edit) pairs that other live nodes announce they are running now (honoured
    hints only)."""
    return _policy(store, me, max_age_s).busy()


def programs_from_announces(store: Store, me: bytes, max_age_s: float = EXPIRE_S
                            ) -> set[str]:
    """Digests of the programs other live nodes announce they are running now (honoured
    hints only)."""
    return _policy(store, me, max_age_s).programs()

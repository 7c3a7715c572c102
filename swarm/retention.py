"""Retention: which records a node may delete, and deleting them under a quota.

Kept forever (never pruned):
- every record this node made (`local`: what it ran, attested or announced);
- every experiment and attestation by an author this node trusts (us, and peers whose
  claims it reproduced: reputation at the trust threshold, swarm.trust);
- what the node works on right now (`pins`): the parent in its own announce's
  `working_on`, the claim it is re-running (`verify <id prefix>`), the parents of the run
  in flight (the loop's `loop.inflight` marker);
- every record received in the last `min_age_s` (one hour): what the loop may be about to
  pick, and a record's parents while they travel;
- and every record any of these reaches through parents or attestation targets: every
  lineage a kept record builds on, every record an attestation of ours or of a trusted
  peer is about. So a lineage the node uses is kept whole.

Everything else is a stranger's record that nothing kept references and no one we trust
attested. When those take more than `quota_bytes` (at `Store.stored_cost`), the oldest
received go first, each with what is built on it or attests it (all unprotected too),
until they fit. An attestation protects its target only when its author is kept: fresh
keys attesting each other's records protect nothing. Announces are bounded apart
(swarm.announces). Without an attack nothing is pruned until strangers' unreferenced
records pass the quota.

Bound: strangers' records on disk stay under `quota_bytes` plus what the last
`min_age_s` admitted (swarm.admission: at most 160 MiB in an hour), i.e. under 288 MiB
with the defaults, whatever the length of an attack.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from swarm.descriptions import parse_working_on, verify_target

log = logging.getLogger("loopy.swarm.retention")

MIB = 1024 * 1024
INFLIGHT_META = "loop.inflight"  # experiments.research.loop's marker of the run in flight


@dataclass(frozen=True)
class RetentionPolicy:
    quota_bytes: int = 128 * MIB
    min_age_s: float = 3600.0
    interval_s: float = 300.0  # how often a node prunes


@dataclass(frozen=True)
class PruneReport:
    deleted: int
    freed_bytes: int
    unprotected_bytes: int  # what is left that a later prune could delete
    pins: int


def pins(store: Any) -> set[bytes]:
    """Ids this node works on now: from its own announce (the `working_on` parent, and
    the records a `verify <prefix>` names) and from the loop's in-flight marker."""
    out: set[bytes] = set()
    conn = store._conn
    for (text,) in conn.execute("SELECT working_on FROM announce_work WHERE local = 1"):
        parsed = parse_working_on(text)
        if parsed is None:
            continue
        parent, desc = parsed
        out.add(parent)
        prefix = verify_target(desc)
        if prefix:
            low = bytes.fromhex(prefix)
            high = low + b"\xff" * (32 - len(low))
            out.update(row[0] for row in conn.execute(
                "SELECT id FROM records WHERE id BETWEEN ? AND ? LIMIT 16", (low, high)))
    raw = store.get_meta(INFLIGHT_META)
    if raw:
        try:
            out.update(bytes.fromhex(p) for p in json.loads(raw)["parents"])
        except (ValueError, KeyError, TypeError):
            pass  # the loop's own resume() deals with a bad marker
    return out


def prune(store: Any, *, keep_authors: Iterable[bytes], policy: RetentionPolicy | None = None,
          extra_pins: Iterable[bytes] = (), now_ms: int | None = None) -> PruneReport:
    """Delete strangers' records nothing protects beyond the quota (module docstring)."""
    policy = policy or RetentionPolicy()
    pinned = pins(store) | set(extra_pins)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    deleted, freed, left = store.prune(
        keep_authors=set(keep_authors), pins=pinned, quota_bytes=policy.quota_bytes,
        min_age_ms=int(policy.min_age_s * 1000), now_ms=now_ms)
    if deleted:
        log.info("pruned %d strangers' records (%.1f MiB); %.1f MiB unprotected left",
                 deleted, freed / MIB, left / MIB)
    return PruneReport(deleted, freed, left, len(pinned))

"""An in-process swarm on the synthetic trainer, for verification tests and benchmarks.

Honest nodes are real `ResearchLoop`s, each with its own home, key and store;
a `Bus` stands in for gossip (every record a node publishes is delivered to
every other node's store, as the network layer would after verifying it).
Liars are scripted: they publish improvements that do not reproduce, attest to
each other's lies from many keys, replay old records and flood. Nothing here
trains: the trainer is `SyntheticTrainer`, labelled as such in every arena.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import trio

from experiments.agents import load_brief, make_agent
from experiments.agents.catalogue import build_catalogue
from experiments.research.home import NodeHome
from experiments.research.loop import LoopConfig, ResearchLoop
from experiments.research.scoreboard import ScoreRules
from experiments.research.settings import Settings
from experiments.simulation.synthetic import SyntheticTrainer
from genome import genome_id
from swarm.descriptions import edit_desc
from swarm.identity import NodeIdentity
from swarm.lineage import Lineage, LineageError
from swarm.patch import make_patch
from swarm.records import Record, make_attestation, make_experiment
from swarm.store import Store


class Bus:
    """Delivers each published record to every node's store (a perfect gossip)."""

    def __init__(self):
        self.stores: list[Store] = []
        self.published = 0

    async def publish(self, record: Record) -> None:
        self.published += 1
        for store in self.stores:
            store.insert(record)


@dataclass
class Liar:
    """Scripted misbehaviour, one key per identity it controls."""
    identities: list
    rng: random.Random
    claims: list = field(default_factory=list)

    def lie(self, store: Store, lineage: Lineage, arena: str, topic: str,
            trainer: SyntheticTrainer) -> list[Record]:
        """A fake improvement on the current best, plus attestations from sibling keys."""
        experiments = [r for r in store.experiments(arena=arena) if r.status == "ok"]
        if not experiments:
            return []
        parent = min(experiments, key=lambda r: r.val_bpb)
        try:
            parent_source = lineage.source_of(parent.id)
        except LineageError:
            return []
        edits = sorted(build_catalogue(parent_source).values(), key=lambda e: e.key)
        for _ in range(20):
            edit = self.rng.choice(edits) if edits else None
            new = edit.apply(parent_source) if edit else None
            if new and new != parent_source:
                break
        else:
            return []
        true = trainer.run(new, seed=0)
        author = self.rng.choice(self.identities)
        result = true.to_record_result()
        result.update(status="ok", val_bpb=round(max(parent.val_bpb - 0.05, 0.5), 6), reason="")
        claim = make_experiment(author, genome=genome_id(), parents=[parent.id], topic=topic,
                                arena=arena, patch=make_patch(parent_source, new),
                                desc=edit_desc(edit.key, "definitely better"), agent="liar",
                                result=result)
        self.claims.append(claim)
        out = [claim]
        for friend in self.identities:
            if friend is not author:  # Sybil keys vouch for each other
                out.append(make_attestation(friend, genome=genome_id(), target=claim.id,
                                            arena=arena, verdict="reproduced", result=result))
        return out


@dataclass
class SimResult:
    loops: list
    liars: list
    bus: Bus


async def run_swarm(base: Path, *, honest: int, liars: int = 0, sybils_per_liar: int = 5,
                    experiments: int = 30, landscape: int = 0, sigma: float = 0.001,
                    seed: int = 0, verify_share: float = 0.25) -> SimResult:
    """Run `honest` loops in lock step for `experiments` steps each, liars interleaved."""
    bus = Bus()
    rng = random.Random(seed)
    loops = []
    for i in range(honest):
        home = NodeHome.open(Settings(home=str(base / f"honest{i}")))
        bus.stores.append(home.store)
        loop = ResearchLoop(
            store=home.store, lineage=home.lineage, identity=home.identity, genome=home.genome,
            root_id=home.root_id, trainer=SyntheticTrainer(landscape, sigma=sigma),
            agent=make_agent("mutate"), brief=load_brief("general"), home=home.path,
            rng=random.Random(rng.random()),
            config=LoopConfig(topic="general", rules=ScoreRules(), verify_share=verify_share))
        loop.publish = bus.publish
        loops.append(loop)
    liar_list = []
    for j in range(liars):
        keys = []
        for s in range(sybils_per_liar):
            home = base / f"liar{j}-{s}"
            home.mkdir(parents=True, exist_ok=True)
            keys.append(NodeIdentity.load_or_create(home))
        liar_list.append(Liar(keys, random.Random(rng.random())))
    truth = SyntheticTrainer(landscape, sigma=sigma)
    for _ in range(experiments):
        for loop in loops:
            await loop.step()
        for liar in liar_list:
            target = loops[0]
            for record in liar.lie(target.store, target.lineage, target.arena, "general",
                                   truth):
                await bus.publish(record)
            if liar.claims and liar.rng.random() < 0.5:  # replay an old lie
                await bus.publish(liar.rng.choice(liar.claims))
    return SimResult(loops, liar_list, bus)


def false_steps(loop: ResearchLoop, record_id: bytes) -> list[Record]:
    """Steps in a record's lineage whose claimed score does not reproduce."""
    trainer = SyntheticTrainer(loop.trainer.seed, sigma=loop.trainer.sigma)
    sigma = loop.scores.sigma()
    bad = []
    for step in loop.lineage.chain(record_id):
        if step.status != "ok" or not step.patch:
            continue
        again = trainer.run(loop.lineage.source_of(step.id), seed=loop.config.rules.seed)
        if not loop.scores.reproduces(again, step.val_bpb, sigma):
            bad.append(step)
    return bad


def run(base: Path, **kwargs) -> SimResult:
    return trio.run(lambda: run_swarm(base, **kwargs))

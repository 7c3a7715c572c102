"""Putting a node together and running it: the trainer, the research loop, and the
services of one nursery (loop, swarm, status file, dashboard).

    trainer = ready_trainer(home, progress)          # its data prepared
    loop = build_loop(home, trainer)
    stopped_by = trio.run(run_node, home, loop)      # until the loop ends or a signal

`train_once` is `loopy run`: one training of the genome or an edit, no loop.
"""
from __future__ import annotations

import signal
import time
from functools import partial
from typing import Callable

import trio

from experiments.agents import load_brief, make_agent
from experiments.research.home import (DataNotReady, NodeHome, peer_list, snapshot,
                                       write_status_file)
from experiments.research.loop import LoopConfig, ResearchLoop
from experiments.research.settings import (ConfigError, Settings, home_dir, parse_until,
                                           resolve_run, score_rules, trust_rules)
from experiments.research.swarm_link import connect_to_swarm
from genome import base_train_source


def train_once(settings: Settings, patch_text: str | None, progress):
    """`loopy run`: the genome (or `patch_text`, an edit of it) trained once in the
    sandboxed harness with the settings' device, dataset, budget and seed; DataNotReady
    when its data cannot be had."""
    # the harness and the data code import numpy: only commands that train pay for them
    from experiments.run.harness import run_experiment, run_patch
    from genome.prepare import CorpusError, DatasetUnavailable
    resolve_run(settings)  # a device or dataset this machine lacks: a ConfigError first
    common = dict(home=home_dir(settings), dataset=settings.dataset or None,
                  budget=settings.budget or None, device=settings.device, seed=settings.seed,
                  progress=progress)
    try:
        if patch_text is not None:
            return run_patch(patch_text, **common)
        return run_experiment(base_train_source(), **common)
    except (CorpusError, DatasetUnavailable) as e:
        raise DataNotReady(str(e)) from None


def make_node_trainer(home: NodeHome):
    """The trainer the settings ask for (its data not prepared yet)."""
    # the harness imports numpy: only commands that train pay for it
    from experiments.research.trainers import make_trainer
    s = home.settings
    try:
        return make_trainer(s.trainer, home.path, dataset=s.dataset or None,
                            budget=s.budget or None, device=s.device)
    except ValueError as e:  # a device or dataset this machine lacks
        raise ConfigError(str(e)) from None


def ready_trainer(home: NodeHome, progress):
    """The trainer the settings ask for, its data prepared (see prepare_trainer)."""
    trainer = make_node_trainer(home)
    prepare_trainer(trainer, progress)
    return trainer


def prepare_trainer(trainer, progress) -> None:
    """The trainer's data before the loop starts, reporting to `progress`; DataNotReady
    says what the user must fix (no dataset offline, a corrupt corpus, a missing
    tokenizer package)."""
    prepare = getattr(trainer, "prepare", None)
    if prepare is None:  # the synthetic trainer needs no data
        return
    # genome.prepare imports numpy: only a trainer with data to prepare pays for it
    from genome.prepare import CorpusError, DatasetUnavailable
    try:
        prepare(progress)
    except (CorpusError, DatasetUnavailable) as e:
        raise DataNotReady(str(e)) from None
    except ImportError as e:
        raise DataNotReady(f"cannot prepare the training data: {e} "
                           "(reinstall Loopy's dependencies: pip install -e .)") from None
    except KeyboardInterrupt:
        raise DataNotReady("stopped while preparing the training data; nothing was "
                           "recorded") from None


def build_loop(home: NodeHome, trainer, *, foreign_code: bool = True) -> ResearchLoop:
    """The node's research loop on a prepared trainer (a downloaded dataset's digest is
    part of its arena); ConfigError for an agent the settings cannot make. `foreign_code`
    False: only this node's own agent's edits of its own lineages run (a machine that
    cannot isolate other authors' programs)."""
    s = home.settings
    # The catalogue edits only this node's hardware profile in train.py's PROFILES table.
    profile = getattr(trainer, "device", None) or getattr(trainer, "profile", "cpu")
    try:
        agent = make_agent(s.agent, base_source=home.lineage.base_source, profile=profile)
    except ValueError as e:
        raise ConfigError(f"agent: {e}") from None
    topic = s.topic[0]
    config = LoopConfig(topic=topic, rules=score_rules(s), foreign_code=foreign_code,
                        max_experiments=s.max_experiments, until=parse_until(s.until),
                        verify_share=s.verify_share, merge_share=s.merge_share,
                        port_share=s.port_share, speculate_share=s.speculate_share,
                        trust=trust_rules(s))
    home.remember_run(trainer.arena)
    return ResearchLoop(store=home.store, lineage=home.lineage, identity=home.identity,
                        genome=home.genome, root_id=home.root_id, trainer=trainer,
                        agent=agent, brief=load_brief(topic), config=config, home=home.path)


async def run_node(home: NodeHome, loop: ResearchLoop, *, dashboard=None,
                   on_started: Callable[[str, object], None] = lambda name, value: None,
                   on_status: Callable[[dict], None] = lambda snap: None) -> str | None:
    """Run the node until its loop ends or SIGINT/SIGTERM stops it; the signal's name, or
    None when the loop ended on its own (`loop.stop_reason` says why, if it failed).

    Every service is a task of one nursery and is cancelled with it: the loop, the swarm
    (unless the settings say offline), the status file (rewritten every second, then once
    more with `stopped`), and `dashboard`, a trio service (`serve_dashboard` with its
    options bound) when given. `on_started("dashboard", handle)` and
    `on_started("swarm", net)` are called once each listens; `on_status(snap)` with every
    snapshot. A service that fails raises its own error (swarm.host.ListenError or
    DashboardError when one cannot listen), not a group of one.
    """
    settings = home.settings
    stopped_by = None
    net = None

    async def watch_signals(scope: trio.CancelScope) -> None:
        nonlocal stopped_by
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                stopped_by = signal.Signals(signum).name
                scope.cancel()
                return

    async def keep_status() -> None:
        # Scoring the arena reads the whole store (seconds with thousands of records, on the
        # thread that also serves the network): do it when the store changed, at most every
        # 5 s; the experiment in flight and the peers are refreshed every second.
        snap, seen, last = None, None, 0.0
        while True:
            count = home.store.count()
            if snap is None or (count != seen and time.monotonic() - last >= 5.0):
                snap = snapshot(home, loop.arena, loop, net)
                seen, last = count, time.monotonic()
            else:
                snap.update(current=loop.state.current, verifying=loop.state.verifying)
                if net is not None:
                    snap["peers"] = peer_list(net)
            write_status_file(home.path, snap)
            on_status(snap)
            await trio.sleep(1.0)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals, nursery.cancel_scope)
            if dashboard is not None:
                on_started("dashboard", await nursery.start(dashboard))
            if not settings.offline:
                # libp2p takes most of a second to import: only a networked node needs it
                from swarm.network import serve_swarm
                net = await nursery.start(partial(
                    serve_swarm, home.identity, home.store, genome=home.genome,
                    topics=settings.topic, listen=settings.listen,
                    bootstrap=settings.bootstrap, mdns=settings.mdns, lan=settings.lan,
                    trust_rules=trust_rules(settings)))
                connect_to_swarm(loop, net)
                on_started("swarm", net)
            nursery.start_soon(keep_status)

            async def run_loop(task_status=trio.TASK_STATUS_IGNORED):
                await loop.serve(task_status=task_status)
                nursery.cancel_scope.cancel()  # the loop ended on its own: stop the rest
            await nursery.start(run_loop)
    except BaseExceptionGroup as group:
        # one service failed (most often one that cannot listen): callers catch its error
        # by name, not a group of one
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise
    finally:
        write_status_file(home.path, dict(snapshot(home, loop.arena), stopped=True))
    return stopped_by

"""Loopy's command line: composes a node from swarm/, experiments/ and genome/.

Every command is a thin layer over a Python API a notebook could call too.
Settings come from, highest first: command-line flags, `LOOPY_*` environment
variables, the TOML config file (`<home>/config.toml` or `--config FILE`), defaults.

    loopy run                         train the baseline genome once, print val_bpb
    loopy run --patch edit.diff       train an edit of genome/train.py
    loopy start --offline --topic optimizer
                                      the research loop, forever (Ctrl-C stops it cleanly)
    loopy status --json               what the node knows and does
    loopy export -o best.patch        the best lineage as a patch of genome/train.py
    loopy log                         the best lineage and recent results
    loopy id                          print this node's peer id
    loopy config                      print the effective settings
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

# ---------------------------------------------------------------------------
# Settings: one table of every option, its default, type and help.


@dataclass
class Settings:
    home: str = "~/.loopy"
    device: str = "auto"
    budget: str = ""            # empty: the device's default (300s on GPUs, 300ktok on CPU)
    dataset: str = ""           # empty: embedded on CPU, climbmix on CUDA
    seed: int = 0
    plain: bool = False
    json: bool = False
    topic: list[str] = field(default_factory=lambda: ["general"])
    agent: str = "mutate"
    trainer: str = "genome"
    max_experiments: int = 0    # 0: never stop on its own
    until: str = ""
    offline: bool = False
    listen: str = "/ip4/0.0.0.0/tcp/4011"
    bootstrap: list[str] = field(default_factory=list)
    mdns: bool = False
    lan: bool = False           # dial private/loopback/link-local addresses peers announce
    dashboard: int = 0          # 0: no dashboard
    dashboard_host: str = "127.0.0.1"
    verify_share: float = 0.25  # at most this share of runs re-run peers' claims
    merge_share: float = 0.15   # share of steps that try merging a sibling improvement
    port_share: float = 0.1     # share of steps that try an edit kept in another arena
    speculate_share: float = 0.0  # share of steps that may build on a stranger's unverified
                                  # claim (peers we trust: always); 1 in a swarm of friends
    trust_k: int = 2


SETTING_TYPES = {f.name: f.type for f in fields(Settings)}


class ConfigError(Exception):
    """A bad config file, environment variable or option; the message names the key."""


def _coerce(key: str, value, source: str):
    """Convert `value` to the type of setting `key`; strings come from the environment."""
    kind = SETTING_TYPES[key]
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "list[str]":
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ValueError(value)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except ValueError:
        raise ConfigError(f"{source}: {key} must be {kind}, got {value!r}") from None


def load_settings(flags: dict, environ=os.environ) -> Settings:
    """Merge defaults < config file < LOOPY_* environment < flags (those not None)."""
    merged = {}
    home = flags.get("home") or environ.get("LOOPY_HOME") or Settings.home
    config_path = flags.get("config") or environ.get("LOOPY_CONFIG")
    path = Path(config_path).expanduser() if config_path else Path(home).expanduser() / "config.toml"
    if config_path and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_file():
        try:
            table = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in SETTING_TYPES:
                raise ConfigError(f"{path}: unknown key {key!r}")
            merged[name] = _coerce(name, value, str(path))
    for var, value in environ.items():
        if not var.startswith("LOOPY_") or var in ("LOOPY_CONFIG", "LOOPY_RUN_CONFIG"):
            continue
        name = var[len("LOOPY_"):].lower()
        if name in ("data_url",):  # read by genome/prepare.py itself
            continue
        if name not in SETTING_TYPES:
            raise ConfigError(f"environment: unknown variable {var}")
        merged[name] = _coerce(name, value, f"environment {var}")
    for name, value in flags.items():
        if name in SETTING_TYPES and value is not None:
            merged[name] = value
    return check_settings(Settings(**merged))


def check_settings(settings: Settings) -> Settings:
    """Ranges the types cannot say; the error names the key."""
    for name in ("verify_share", "merge_share", "port_share", "speculate_share"):
        value = getattr(settings, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be between 0 and 1, got {value}")
    if settings.merge_share + settings.port_share > 1.0:
        raise ConfigError("merge_share + port_share must be at most 1, got "
                          f"{settings.merge_share + settings.port_share}")
    if settings.trust_k < 1:
        raise ConfigError(f"trust_k must be at least 1, got {settings.trust_k}")
    return settings


def home_dir(settings: Settings) -> Path:
    home = Path(settings.home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


# ---------------------------------------------------------------------------
# Output helpers


def emit_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def fail(message: str, code: int = 2) -> int:
    print(f"loopy: error: {message}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------
# Commands


def cmd_run(settings: Settings, args) -> int:
    """Train the genome (or an edit of it) once and print the harness's score."""
    from experiments.run.harness import run_experiment, run_patch
    from experiments.views.progress import RunProgress

    home = home_dir(settings)
    patch_text = None
    if args.patch:
        try:
            patch_text = Path(args.patch).read_text()
        except (OSError, UnicodeDecodeError) as e:
            return fail(f"cannot read patch {args.patch}: {e}")
    if patch_text is not None:
        from experiments.run.sandbox import missing_isolation
        missing = missing_isolation()
        if missing:
            print("WARNING: this machine cannot fully isolate the patch's code ("
                  + "; ".join(missing) + "); run only patches you trust.", file=sys.stderr)
    live = not settings.json and not settings.plain and sys.stdout.isatty()
    with RunProgress(live=live, plain=not settings.json) as progress:
        common = dict(home=home, dataset=settings.dataset or None, budget=settings.budget or None,
                      device=settings.device, seed=settings.seed, progress=progress)
        try:
            if patch_text is not None:
                result = run_patch(patch_text, **common)
            else:
                from genome import base_train_source
                result = run_experiment(base_train_source(), **common)
        except Exception as e:  # data/tokenizer problems and the like: a clear message
            from genome.prepare import CorpusError, DatasetUnavailable
            if isinstance(e, (CorpusError, DatasetUnavailable)):
                return fail(str(e))
            raise
    if settings.json:
        emit_json(result.to_json())
    else:
        print(result.summary())
    return 0 if result.status == "ok" else 1


def cmd_id(settings: Settings, args) -> int:
    """Print this node's peer id (its key is created on first use)."""
    from genome import genome_id
    from swarm.identity import IdentityError, NodeIdentity

    try:
        ident = NodeIdentity.load_or_create(home_dir(settings))
    except IdentityError as e:
        return fail(str(e))
    gid = genome_id()
    info = {
        "peer_id": ident.peer_id,
        "genome": gid,
        "listen": [settings.listen],
        "topics": [f"loopy/1/{gid}/{t}" for t in settings.topic] + [f"loopy/1/{gid}/heads"],
    }
    if settings.json:
        emit_json(info)
    else:
        print(ident.peer_id)
    return 0


# ---------------------------------------------------------------------------
# The node's local state: identity, store, lineage, scores


class HomeLocked(Exception):
    pass


@dataclass
class Local:
    """What a node keeps in its home, opened together."""
    home: Path
    identity: object
    store: object
    lineage: object
    genome: str
    root_id: bytes

    @classmethod
    def open(cls, settings: Settings) -> "Local":
        from genome import base_train_source, genome_id, genome_root_id
        from swarm.identity import NodeIdentity
        from swarm.lineage import Lineage
        from swarm.store import Store

        home = home_dir(settings)
        root = genome_root_id()
        identity = NodeIdentity.load_or_create(home)
        store = Store.open(home, root_id=root)
        return cls(home, identity, store, Lineage(store, base_train_source(), root),
                   genome_id(), root)

    def arena(self, settings: Settings) -> str:
        """The arena this node last worked in, else the one its settings give."""
        saved = self.store.get_meta("node.arena")
        if saved:
            return saved
        if settings.trainer == "synthetic":
            from experiments.simulation.synthetic import SyntheticTrainer
            return SyntheticTrainer(0).arena
        from experiments.run.harness import _resolve
        return _resolve(settings.device, settings.dataset or None, settings.budget or None)[3]

    def ran_with(self, settings: Settings) -> tuple[list[str], bool]:
        """The topics and offline flag this node last ran with, else the settings'."""
        try:
            saved = json.loads(self.store.get_meta("node.ran_with") or "null")
            return list(saved["topics"]), bool(saved["offline"])
        except (ValueError, TypeError, KeyError):
            return settings.topic, settings.offline

    def trust(self, settings: Settings):
        from swarm.trust import TrustPolicy, TrustRules
        return TrustPolicy(self.store, self.identity.public_key, TrustRules(k=settings.trust_k))

    def scoreboard(self, arena: str, settings: Settings):
        from experiments.research.scoreboard import Scoreboard, ScoreRules
        return Scoreboard(self.store, self.lineage, self.root_id, arena,
                          ScoreRules(seed=settings.seed), self.trust(settings).is_verified)


def lock_home(home: Path):
    """One running node per home: an exclusive lock held for the node's lifetime."""
    import fcntl
    f = open(home / "node.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise HomeLocked(f"another node is running on {home} (see {home / 'status.json'})")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def home_is_locked(home: Path) -> bool:
    try:
        lock_home(home).close()
        return False
    except HomeLocked:
        return True


def snapshot(local: Local, arena: str, settings: Settings, loop=None, net=None) -> dict:
    """The facts `status --json` prints and the live view draws (keys kept stable)."""
    board = loop.scores if loop is not None else local.scoreboard(arena, settings)
    best = board.best()
    best_json = None
    if best is not None and best.record is not None:
        best_json = {"id": best.id.hex(), "val_bpb": best.val_bpb,
                     "verified": bool(board.trusted(best.record)), "arena": arena}
    elif best is not None:
        best_json = {"id": best.id.hex(), "val_bpb": best.val_bpb, "verified": True,
                     "arena": arena, "genome_root": True}
    recent = []
    for r in local.store.experiments(arena=arena, limit=10)[::-1]:
        kept = board.is_kept(r)
        status = "discarded" if r.status == "ok" and r.patch and not kept else r.status
        recent.append({"id": r.id_hex, "author": r.author_peer_id, "desc": r.desc,
                       "status": status, "val_bpb": r.val_bpb, "delta": board.delta(r),
                       "kept": kept, "verified": bool(board.trusted(r))})
    # read from the store, the node's own (last) run says what it works on, not our flags
    topics, offline = (settings.topic, settings.offline) if loop is not None else \
        local.ran_with(settings)
    snap = {
        "peer_id": local.identity.peer_id, "genome": local.genome, "arena": arena,
        "topics": topics, "records": local.store.count(),
        "experiments_local": len(local.store.experiments(arena=arena, local=True)),
        "best": best_json, "peers": [], "recent": recent, "current": None,
        "verifying": [], "sigma": board.sigma(), "offline": offline,
    }
    if loop is not None:
        snap["current"] = loop.state.current
        snap["verifying"] = loop.state.verifying
    if net is not None:
        snap["listen"] = net.listen_addrs()
        snap["peers"] = peer_list(net)
        snap["records_dropped"] = net.rate_limit.dropped
    return snap


def peer_list(net) -> list[dict]:
    return [{"peer_id": p.peer_id, "addrs": p.addrs, "topics": p.topics,
             "last_seen": p.last_seen, "score": p.score,
             "dropped_forwarded": p.dropped_forwarded, "dropped_authored": p.dropped_authored}
            for p in net.connected_peers()]


def write_status_file(home: Path, snap: dict) -> None:
    """Atomically, so `loopy status` never reads half a file."""
    tmp = home / "status.json.tmp"
    tmp.write_text(json.dumps(dict(snap, updated=time.time(), pid=os.getpid()), default=str))
    os.replace(tmp, home / "status.json")


# ---------------------------------------------------------------------------
# start: the research loop (and, unless --offline, the swarm)


def cmd_start(settings: Settings, args) -> int:
    """Run the research loop until stopped (Ctrl-C or SIGTERM stop it cleanly)."""
    from genome import check_topic
    from swarm.identity import IdentityError
    from swarm.store import StoreError

    try:
        for topic in settings.topic:
            check_topic(topic)
        until = parse_until(settings.until)
    except ValueError as e:
        return fail(str(e))
    home = home_dir(settings)
    try:
        lock = lock_home(home)
    except HomeLocked as e:
        return fail(str(e))
    try:
        local = Local.open(settings)
    except (IdentityError, StoreError) as e:
        lock.close()
        return fail(str(e))
    try:
        loop = build_loop(local, settings, until)
        if isinstance(loop, str):  # the trainer's data is not ready: what to fix
            return fail(loop)
        import trio
        return trio.run(run_node, local, settings, loop)
    except (ValueError, RuntimeError) as e:
        return fail(str(e), 1)
    finally:
        local.store.close()
        lock.close()


def prepare_trainer(trainer, settings: Settings) -> str | None:
    """The trainer's data before the loop starts (a progress bar while it is built).

    Returns an error message for what the user must fix (no dataset offline, a
    corrupt corpus, a missing tokenizer package), None when the data is ready.
    """
    prepare = getattr(trainer, "prepare", None)
    if prepare is None:  # the synthetic trainer needs no data
        return None
    from experiments.views.progress import RunProgress
    from genome.prepare import CorpusError, DatasetUnavailable
    live = not settings.json and not settings.plain and sys.stdout.isatty()
    try:
        with RunProgress(live=live, plain=not settings.json) as progress:
            prepare(progress)
    except (CorpusError, DatasetUnavailable) as e:
        return str(e)
    except ImportError as e:
        return (f"cannot prepare the training data: {e} "
                "(reinstall Loopy's dependencies: pip install -e .)")
    except KeyboardInterrupt:
        return "stopped while preparing the training data; nothing was recorded"
    return None


def parse_until(text: str) -> float | None:
    """`--until` as a duration ('8h', '30m') or an ISO time ('2026-11-27T07:00')."""
    import re
    from datetime import datetime
    if not text:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if m:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return time.time() + float(m.group(1)) * scale
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"--until {text!r}: give a duration like 8h or an ISO time") from None


def build_loop(local: Local, settings: Settings, until: float | None):
    """The node's research loop, its trainer's data prepared; or, when the data cannot be
    prepared, the message that says what to fix."""
    from experiments.agents import load_brief, make_agent
    from experiments.research.loop import LoopConfig, ResearchLoop
    from experiments.research.scoreboard import ScoreRules
    from experiments.research.trainers import make_trainer
    from swarm.trust import TrustRules

    trainer = make_trainer(settings.trainer, local.home, dataset=settings.dataset or None,
                           budget=settings.budget or None, device=settings.device)
    # The data first: a downloaded dataset's digest is part of the arena the loop uses.
    error = prepare_trainer(trainer, settings)
    if error:
        return error
    # The catalogue edits only this node's hardware profile in train.py's PROFILES table.
    profile = getattr(trainer, "device", None) or getattr(trainer, "profile", "cpu")
    agent = make_agent(settings.agent, base_source=local.lineage.base_source, profile=profile)
    topic = settings.topic[0]
    foreign_code = True
    if settings.trainer == "genome":
        from experiments.run.sandbox import missing_isolation
        missing = missing_isolation()
        if missing:
            foreign_code = False
            print("WARNING: this machine cannot fully isolate the programs it trains ("
                  + "; ".join(missing) + "). The node runs only its own agent's edits of its "
                  "own lineages: no re-runs of peers' claims, no merges, nothing built on "
                  "peers' records. Its records say which isolation was missing.",
                  file=sys.stderr, flush=True)
    config = LoopConfig(topic=topic, rules=ScoreRules(seed=settings.seed),
                        foreign_code=foreign_code,
                        max_experiments=settings.max_experiments, until=until,
                        verify_share=settings.verify_share,
                        merge_share=settings.merge_share, port_share=settings.port_share,
                        speculate_share=settings.speculate_share,
                        trust=TrustRules(k=settings.trust_k))
    local.store.set_meta("node.arena", trainer.arena)
    local.store.set_meta("node.ran_with", json.dumps({"topics": settings.topic,
                                                      "offline": settings.offline}))
    return ResearchLoop(store=local.store, lineage=local.lineage, identity=local.identity,
                        genome=local.genome, root_id=local.root_id, trainer=trainer,
                        agent=agent, brief=load_brief(topic), config=config, home=local.home)


async def run_node(local: Local, settings: Settings, loop) -> int:
    import signal

    import trio
    from experiments.research.loop import connect_to_swarm
    from experiments.views.view import log_line, render

    live = not settings.plain and not settings.json and sys.stdout.isatty()
    if not live:
        loop.on_event = lambda kind, data: log_line(kind, data)
        print(f"loopy node {local.identity.peer_id} arena {loop.arena} trainer "
              f"{loop.trainer.label} agent {loop.agent.name}", flush=True)
    stopped_by = None
    net = None

    async def watch_signals(scope):
        nonlocal stopped_by
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                stopped_by = signal.Signals(signum).name
                scope.cancel()
                return

    async def keep_status(view):
        # Scoring the arena reads the whole store (seconds with thousands of records, on the
        # thread that also serves the network): do it when the store changed, at most every
        # 5 s; the experiment in flight and the peers are refreshed every second.
        snap, seen, last = None, None, 0.0
        while True:
            count = local.store.count()
            if snap is None or (count != seen and time.monotonic() - last >= 5.0):
                snap = snapshot(local, loop.arena, settings, loop, net)
                seen, last = count, time.monotonic()
            else:
                snap.update(current=loop.state.current, verifying=loop.state.verifying)
                if net is not None:
                    snap["peers"] = peer_list(net)
            write_status_file(local.home, snap)
            if view is not None:
                view.update(render(snap))
            await trio.sleep(1.0)

    dashboard = None
    if settings.dashboard:
        from experiments.views.dashboard import start_dashboard
        dashboard = start_dashboard(local.home, port=settings.dashboard,
                                    host=settings.dashboard_host, arena=loop.arena,
                                    me=local.identity.public_key, rules=loop.config.rules,
                                    trust_rules=loop.config.trust)
        print(f"dashboard on {dashboard.url}", flush=True)
    view = None
    if live:
        from rich.live import Live
        view = Live(refresh_per_second=4, transient=False)
        view.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals, nursery.cancel_scope)
            if not settings.offline:
                from swarm.network import serve_swarm  # libp2p: only a networked node needs it
                net = await nursery.start(functools.partial(
                    serve_swarm, local.identity, local.store, genome=local.genome,
                    topics=settings.topic, listen=settings.listen,
                    bootstrap=settings.bootstrap, mdns=settings.mdns, lan=settings.lan))
                connect_to_swarm(loop, net)
                if not live:
                    print("listening on " + " ".join(net.listen_addrs()), flush=True)
            nursery.start_soon(keep_status, view)

            async def run_loop(task_status=trio.TASK_STATUS_IGNORED):
                await loop.serve(task_status=task_status)
                nursery.cancel_scope.cancel()  # the loop ended on its own: stop the rest
            await nursery.start(run_loop)
    finally:
        if view is not None:
            view.stop()
        if dashboard is not None:
            dashboard.close()
        write_status_file(local.home, dict(snapshot(local, loop.arena, settings), stopped=True))
    if stopped_by:
        print(f"loopy: stopped by {stopped_by}; the store is consistent, restart to resume",
              file=sys.stderr)
    elif loop.stop_reason:
        return fail(loop.stop_reason, 1)
    return 0


# ---------------------------------------------------------------------------
# status, export, log


def cmd_status(settings: Settings, args) -> int:
    """Print what the node knows: from the running node if there is one, else the store."""
    from swarm.identity import IdentityError
    from swarm.store import StoreError

    home = home_dir(settings)
    try:
        local = Local.open(settings)
    except (IdentityError, StoreError) as e:
        return fail(str(e))
    try:
        snap = snapshot(local, local.arena(settings), settings)
    finally:
        local.store.close()
    snap["running"] = False
    status_file = home / "status.json"
    if home_is_locked(home) and status_file.is_file():
        try:
            live = json.loads(status_file.read_text())
            snap.update(running=True, current=live.get("current"), peers=live.get("peers", []),
                        verifying=live.get("verifying", []))
        except (OSError, ValueError):
            pass
    if settings.json:
        emit_json(snap)
    else:
        from rich.console import Console
        from experiments.views.view import render
        Console().print(render(snap))
    return 0


def choose_record(local: Local, settings: Settings, args) -> bytes:
    """`--record ID` (a hex prefix will do), else the best record in the arena/topic."""
    if args.record:
        matches = [r.id for r in local.store.experiments()
                   if r.id_hex.startswith(args.record.lower())]
        if len(matches) != 1:
            raise ValueError(f"--record {args.record}: {len(matches)} records match")
        return matches[0]
    arena = args.arena or local.arena(settings)
    best = local.scoreboard(arena, settings).best(args.only_topic)
    if best is None or best.record is None:
        raise ValueError(f"no kept experiment in arena {arena}"
                         + (f", topic {args.only_topic}" if args.only_topic else "")
                         + ": nothing to export yet")
    return best.id


def cmd_export(settings: Settings, args) -> int:
    """The best lineage (or --record's) as a patch, a git-am series, the source, or TSV."""
    from swarm import export
    from swarm.lineage import LineageError

    local = Local.open(settings)
    try:
        record_id = choose_record(local, settings, args)
        fmt = args.format
        if fmt == "patch":
            text = export.export_patch(local.lineage, record_id)
        elif fmt == "source":
            text = export.export_source(local.lineage, record_id)
        elif fmt == "series":
            trust = local.trust(settings)
            text = export.export_series(
                local.lineage, record_id,
                verified_by=lambda rid: trust.verified_by(local.store.get(rid)))
        else:
            text = export.export_tsv(local.lineage, record_id)
    except (ValueError, LineageError) as e:
        return fail(str(e), 1)
    finally:
        local.store.close()
    if args.output:
        out = Path(args.output)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out)
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_log(settings: Settings, args) -> int:
    """The best lineage, step by step, then the latest results."""
    from swarm import export
    from experiments.views.view import fmt_bpb, fmt_delta

    local = Local.open(settings)
    try:
        arena = args.arena or local.arena(settings)
        board = local.scoreboard(arena, settings)
        best = board.best(args.only_topic)
        print(f"arena {arena}  sigma {board.sigma() or float('nan'):.4f}  "
              f"genome baseline {fmt_bpb(board.root_score())}")
        if best is not None and best.record is not None:
            trust = local.trust(settings)
            for line in export.log_lines(
                    local.lineage, best.id, recent=0,
                    verified_by=lambda rid: trust.verified_by(local.store.get(rid))):
                print(line)
        print("latest results:")
        for r in local.store.experiments(arena=arena, topic=args.only_topic, limit=args.limit):
            verdict = board.label(r)
            print(f"  {r.id_hex[:8]} {r.author_peer_id[-8:]} {verdict:9s} "
                  f"{fmt_bpb(r.val_bpb)} {fmt_delta(board.delta(r)):>8s}  {r.desc}")
    finally:
        local.store.close()
    return 0


def cmd_verify(settings: Settings, args) -> int:
    """Re-run one record in this node's arena, print the comparison, store an attestation."""
    import trio
    from experiments.research.trainers import make_trainer
    from swarm.lineage import LineageError
    from swarm.records import make_attestation

    local = Local.open(settings)
    try:
        args.record = args.record_id
        record_id = choose_record(local, settings, args)
        record = local.store.get(record_id)
        if record.kind != "experiment" or record.status != "ok":
            return fail(f"{record.id_hex[:12]} is not a scored experiment", 1)
        if settings.trainer == "genome" and record.author != local.identity.public_key:
            from experiments.run.sandbox import missing_isolation
            missing = missing_isolation()
            if missing:
                return fail("refusing to run another author's program: this machine cannot "
                            "fully isolate it (" + "; ".join(missing) + ")", 1)
        source = local.lineage.source_of(record_id)
        trainer = make_trainer(settings.trainer, local.home, dataset=settings.dataset or None,
                               budget=settings.budget or None, device=settings.device)
        error = prepare_trainer(trainer, settings)  # and the arena's data digest
        if error:
            return fail(error)
        if trainer.arena != record.arena:
            print(f"note: the record was measured in {record.arena}, this node runs in "
                  f"{trainer.arena}: scores are not comparable, no attestation is made",
                  file=sys.stderr)
        from experiments.research.loop import MACHINE_FAILURES, run_cancellable
        from experiments.views.progress import RunProgress
        live = not settings.json and not settings.plain and sys.stdout.isatty()
        with RunProgress(live=live, plain=not settings.json) as progress:
            result = trio.run(run_cancellable, lambda cancel: trainer.run(
                source, seed=settings.seed, progress=progress, cancel=cancel))
        board = local.scoreboard(trainer.arena, settings)
        sigma = board.sigma()
        tolerance = board.rules.noise_k * (sigma or 0.0)
        holds = board.reproduces(result, record.val_bpb, sigma)
        # A crash or timeout here may be this machine's fault, not the claim's: no verdict
        # (the running node checks itself with a baseline first; see ResearchLoop.verify).
        verdict = None if result.status in MACHINE_FAILURES else \
            "reproduced" if holds else "refuted"
        report = {"record": record.id_hex, "claimed": record.val_bpb,
                  "measured": result.val_bpb, "status": result.status, "sigma": sigma,
                  "verdict": verdict, "arena": trainer.arena, "reason": result.reason}
        if trainer.arena == record.arena and verdict is not None:
            local.store.insert(make_attestation(
                local.identity, genome=local.genome, target=record.id, arena=trainer.arena,
                verdict=verdict, result=result.to_record_result()), local=True)
            local.trust(settings).save_reputations()
    except (ValueError, LineageError) as e:
        return fail(str(e), 1)
    finally:
        local.store.close()
    if settings.json:
        emit_json(report)
    else:
        from experiments.views.view import fmt_bpb
        print(f"record   {record.id_hex[:12]}  {record.desc}")
        print(f"claimed  {fmt_bpb(record.val_bpb)}")
        print(f"measured {fmt_bpb(result.val_bpb)}  ({result.status}"
              + (f": {result.reason}" if result.status != "ok" else "") + ")")
        print(f"noise    sigma {fmt_bpb(sigma)} -> tolerance {tolerance:.4f}"
              if sigma else "noise    unknown in this arena (run `loopy start` first)")
        print(f"verdict  {verdict}" if verdict else
              "verdict  none: the run failed on this machine, which may be the machine's "
              "fault; no attestation made (check it with `loopy run` on the base genome)")
    return 0 if holds else 1


def cmd_peers(settings: Settings, args) -> int:
    """Connected peers (from the running node) and every peer the store remembers."""
    home = home_dir(settings)
    live = {}
    status_file = home / "status.json"
    if home_is_locked(home) and status_file.is_file():
        try:
            live = {p["peer_id"]: p for p in json.loads(status_file.read_text()).get("peers", [])}
        except (OSError, ValueError, KeyError, TypeError):
            live = {}
    local = Local.open(settings)
    try:
        local.trust(settings).save_reputations()
        announces = {a.author_peer_id: a for a in local.store.announces()}
        rows = []
        for peer in local.store.peers():
            a = announces.get(peer.peer_id)
            rows.append({
                "peer_id": peer.peer_id, "connected": peer.peer_id in live,
                "addrs": live.get(peer.peer_id, {}).get("addrs") or peer.addrs,
                "topics": list(a.topics) if a else [], "arena": a.arena if a else None,
                "head": a.head.hex() if a and a.head else None,
                "working_on": a.working_on if a else None,
                "last_seen": peer.last_seen, "reputation": peer.reputation})
    finally:
        local.store.close()
    rows.sort(key=lambda r: (not r["connected"], -(r["last_seen"] or 0)))
    if settings.json:
        emit_json(rows)
        return 0
    if not rows:
        print("no peers known yet")
    for r in rows:
        seen = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_seen"] / 1000)) \
            if r["last_seen"] else "never"
        print(f"{'*' if r['connected'] else ' '} {r['peer_id']}  rep {r['reputation']:+.0f}  "
              f"seen {seen}  topics {','.join(r['topics']) or '-'}  head "
              f"{(r['head'] or '-')[:8]}  {r['arena'] or ''}")
    return 0


def cmd_plot(settings: Settings, args) -> int:
    """Draw the progress chart (every experiment, the running best, kept edits) as a PNG."""
    from experiments.views.plot import render_plot

    local = Local.open(settings)
    try:
        arena = args.arena or local.arena(settings)
        summary = render_plot(local, arena, args.only_topic, args.output, settings)
    finally:
        local.store.close()
    if settings.json:
        emit_json(summary)
    else:
        print(f"wrote {summary['path']}: {summary['experiments']} experiments, "
              f"{summary['kept']} kept")
    return 0


def cmd_config(settings: Settings, args) -> int:
    """Print the effective settings (after file, environment and flags)."""
    values = {f.name: getattr(settings, f.name) for f in fields(Settings)}
    if settings.json:
        emit_json(values)
    else:
        for key, value in values.items():
            print(f"{key} = {json.dumps(value)}")
    return 0


# ---------------------------------------------------------------------------
# Argument parsing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loopy", description="Loopy: a peer-to-peer research swarm for ML experiments.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", default=None, help="node home (default $LOOPY_HOME or ~/.loopy)")
    common.add_argument("--config", default=None, help="TOML config file (default <home>/config.toml)")
    common.add_argument("--json", action="store_const", const=True, default=None,
                        help="machine-readable output")
    common.add_argument("--plain", action="store_const", const=True, default=None,
                        help="plain log lines instead of a live view")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="train the genome (or an edit) once",
                       description="Train genome/train.py (or an edit of it) once in the sandboxed "
                                   "harness and print the measured val_bpb.\n\n"
                                   "example: loopy run --budget 300ktok --patch my-edit.diff")
    p.add_argument("--budget", default=None,
                   help="training budget: wall-clock ('60s', '5m') or tokens ('300ktok')")
    p.add_argument("--patch", default=None, help="unified diff of train.py to apply first")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dataset", default=None, help="'embedded' (offline) or 'climbmix' (download)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("id", parents=[common], help="print this node's peer id",
                       description="Print this node's peer id.\n\nexample: loopy id --json")
    p.add_argument("--listen", default=None, help="listen multiaddr")
    p.add_argument("--topic", action="append", default=None, help="research topic (repeatable)")
    p.set_defaults(func=cmd_id)

    p = sub.add_parser("start", parents=[common], help="run the research loop",
                       description="Run the research loop: propose an edit, run it, keep or "
                                   "discard it, record it, forever (Ctrl-C stops it cleanly; "
                                   "restarting resumes).\n\n"
                                   "example: loopy start --offline --topic optimizer")
    p.add_argument("--topic", action="append", default=None, help="research topic (repeatable)")
    p.add_argument("--agent", default=None,
                   help="mutate (default) | random | command:CMD | openai:URL")
    p.add_argument("--trainer", default=None, choices=["genome", "synthetic"],
                   help="genome (real training) or synthetic (simulated, for tests)")
    p.add_argument("--budget", default=None, help="per-experiment budget ('300ktok', '5m')")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dataset", default=None, help="'embedded' or 'climbmix'")
    p.add_argument("--seed", type=int, default=None, help="the arena's training seed")
    p.add_argument("--max-experiments", type=int, default=None, dest="max_experiments",
                   help="stop after N experiments (default: never)")
    p.add_argument("--until", default=None, help="stop at a time ('8h' or an ISO time)")
    p.add_argument("--offline", action="store_const", const=True, default=None,
                   help="no network: a single node")
    p.add_argument("--listen", default=None,
                   help="listen multiaddr (default /ip4/0.0.0.0/tcp/4011; port 0: any)")
    p.add_argument("--bootstrap", action="append", default=None, metavar="MULTIADDR",
                   help="a peer to join through, /ip4/../tcp/../p2p/.. (repeatable)")
    p.add_argument("--mdns", action="store_const", const=True, default=None,
                   help="discover peers on the LAN (binds every interface; implies --lan)")
    p.add_argument("--lan", action="store_const", const=True, default=None,
                   help="a LAN swarm: dial the private, loopback and link-local addresses "
                        "peers announce (default: only if we listen on that network)")
    p.add_argument("--dashboard", type=int, default=None, metavar="PORT",
                   help="serve the read-only web dashboard on this port (default: off)")
    p.add_argument("--dashboard-host", default=None, dest="dashboard_host", metavar="HOST",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 lets the network read it)")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("plot", parents=[common], help="draw the progress chart as a PNG",
                       description="Draw the autoresearch-style progress chart: every "
                                   "experiment, the running best, kept edits labelled.\n\n"
                                   "example: loopy plot -o progress.png --topic optimizer")
    p.add_argument("-o", "--output", default="progress.png", help="PNG file to write")
    p.add_argument("--arena", default=None, help="arena (default: the node's)")
    p.add_argument("--topic", default=None, dest="only_topic", help="only this topic")
    p.add_argument("--trainer", default=None, choices=["genome", "synthetic"])
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("status", parents=[common], help="what the node knows and does",
                       description="Print the node's status, from the running node or the "
                                   "store.\n\nexample: loopy status --json")
    p.add_argument("--trainer", default=None, choices=["genome", "synthetic"])
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("export", parents=[common], help="export the best lineage",
                       description="Export the best lineage (default: the best kept record "
                                   "in the arena) as a patch of genome/train.py.\n\n"
                                   "example: loopy export -o best.patch && git apply best.patch")
    p.add_argument("--topic", default=None, dest="only_topic", help="only records of this topic")
    p.add_argument("--arena", default=None, help="arena (default: the node's)")
    p.add_argument("--record", default=None, help="record id (hex, a prefix will do)")
    p.add_argument("-o", "--output", default=None, help="write to FILE instead of stdout")
    p.add_argument("--format", default="patch", choices=["patch", "series", "tsv", "source"])
    p.add_argument("--trainer", default=None, choices=["genome", "synthetic"])
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("log", parents=[common], help="list the lineage and recent results",
                       description="List the best lineage and recent results.\n\n"
                                   "example: loopy log --topic optimizer")
    p.add_argument("--topic", default=None, dest="only_topic", help="only this topic")
    p.add_argument("--arena", default=None, help="arena (default: the node's)")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--trainer", default=None, choices=["genome", "synthetic"])
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("verify", parents=[common], help="re-run one record by hand",
                       description="Re-run one record in this node's arena (sandboxed), print "
                                   "claimed against measured val_bpb, and store an attestation."
                                   "\n\nexample: loopy verify 3fa2c1")
    p.add_argument("record_id", help="record id (hex, a prefix will do)")
    p.add_argument("--trainer", default=None, choices=["genome", "synthetic"])
    p.add_argument("--budget", default=None)
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dataset", default=None)
    p.set_defaults(func=cmd_verify, arena=None, only_topic=None)

    p = sub.add_parser("peers", parents=[common], help="list known and connected peers",
                       description="Connected peers (*), their topics, arenas, heads, last "
                                   "seen and reputation.\n\nexample: loopy peers --json")
    p.set_defaults(func=cmd_peers)

    p = sub.add_parser("config", parents=[common], help="print the effective settings",
                       description="Print the effective settings.\n\nexample: loopy config --json")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings(vars(args))
    except ConfigError as e:
        return fail(str(e))
    try:
        return args.func(settings, args)
    except BrokenPipeError:  # `loopy log | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())

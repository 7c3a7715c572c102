"""Loopy's command line: argument parsing and printing over experiments/research/ (home.py:
a node's home and status; compose.py: putting a node together and running it;
settings.py: flags > `LOOPY_*` environment > `<home>/config.toml` > defaults).

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
import json
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import fields
from functools import partial
from pathlib import Path

import trio
from rich.console import Console
from rich.live import Live

from experiments.research.compose import build_loop, ready_trainer, run_node, train_once
from experiments.research.home import (DAMAGED_STORE_ERRORS, HomeError, NodeHome,
                                       RecordUnavailable, known_peers, node_status)
from experiments.research.settings import (DEVICES, TRAINERS, ConfigError, Settings,
                                           check_swarm_settings, home_dir, isolation_gaps,
                                           load_settings)
from experiments.run.sandbox import missing_isolation
from experiments.views.dashboard import node_dashboard
from experiments.views.plot import render_plot
from experiments.views.progress import RunProgress
from experiments.views.view import fmt_bpb, fmt_delta, log_line, render
from genome import genome_id
from swarm import export
from swarm.identity import IdentityError, NodeIdentity
from swarm.lineage import LineageError


def emit_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def fail(message: str, code: int = 2) -> int:
    print(f"loopy: error: {message}", file=sys.stderr)
    return code


def progress_for(settings: Settings) -> RunProgress:
    """A bar on a terminal, log lines with --plain or a pipe, silence with --json."""
    live = not settings.json and not settings.plain and sys.stdout.isatty()
    return RunProgress(live=live, plain=not settings.json)


def cmd_run(settings: Settings, args) -> int:
    """Train genome/train.py (or an edit of it) once in the sandboxed harness and print
    the measured val_bpb."""
    patch_text = None
    if args.patch:
        try:
            patch_text = Path(args.patch).read_text()
        except (OSError, UnicodeDecodeError) as e:
            return fail(f"cannot read patch {args.patch}: {e}")
        missing = missing_isolation()
        if missing:
            print("WARNING: this machine cannot fully isolate the patch's code ("
                  + "; ".join(missing) + "); run only patches you trust.", file=sys.stderr)
    with progress_for(settings) as progress:
        result = train_once(settings, patch_text, progress)
    if settings.json:
        emit_json(result.to_json())
    else:
        print(result.summary())
    return 0 if result.status == "ok" else 1


def cmd_id(settings: Settings, args) -> int:
    """Print this node's peer id (its key is created on first use)."""
    ident = NodeIdentity.load_or_create(home_dir(settings))
    gid = genome_id()
    if settings.json:
        emit_json({"peer_id": ident.peer_id, "genome": gid, "listen": [settings.listen],
                   "topics": [f"loopy/1/{gid}/{t}" for t in [*settings.topic, "heads"]]})
    else:
        print(ident.peer_id)
    return 0


def cmd_start(settings: Settings, args) -> int:
    """Run the research loop: propose an edit, run it, keep or discard it, record it,
    forever (Ctrl-C or SIGTERM stop it cleanly; restarting resumes)."""
    # libp2p takes most of a second to import: only `start` needs its errors
    from swarm.host import ListenError

    if not settings.offline:
        check_swarm_settings(settings)
    try:
        with NodeHome.open(settings, running=True) as home:
            with progress_for(settings) as progress:
                trainer = ready_trainer(home, progress)
            missing = isolation_gaps(settings)
            if missing:
                print("WARNING: this machine cannot fully isolate the programs it trains ("
                      + "; ".join(missing) + "). The node runs only its own agent's edits of "
                      "its own lineages: no re-runs of peers' claims, no merges, nothing built "
                      "on peers' records. Its records say which isolation was missing.",
                      file=sys.stderr, flush=True)
            return serve_node(home, build_loop(home, trainer, foreign_code=not missing))
    except ListenError as e:
        return fail(f"{e}; choose another address with --listen (port 0: any free one)")
    except RuntimeError as e:  # DashboardError is one
        return fail(str(e), 1)


def serve_node(home: NodeHome, loop) -> int:
    """Run the node (experiments.research.compose.run_node), with the live view or log lines."""
    settings = home.settings
    live = not settings.plain and not settings.json and sys.stdout.isatty()
    if not live:
        loop.on_event = log_line
        print(f"loopy node {home.identity.peer_id} arena {loop.arena} trainer "
              f"{loop.trainer.label} agent {loop.agent.name}", flush=True)

    def on_started(name: str, service) -> None:
        if name == "dashboard":
            print(f"dashboard on {service.url}", flush=True)
        elif not live:
            print("listening on " + " ".join(service.listen_addrs()), flush=True)

    with Live(refresh_per_second=4, transient=False) if live else nullcontext() as view:
        stopped_by = trio.run(partial(
            run_node, home, loop, on_started=on_started,
            dashboard=node_dashboard(home, loop) if settings.dashboard else None,
            on_status=(lambda snap: view.update(render(snap))) if view else lambda snap: None))
    if stopped_by:
        print(f"loopy: stopped by {stopped_by}; the store is consistent, restart to resume",
              file=sys.stderr)
    elif loop.stop_reason:
        return fail(loop.stop_reason, 1)
    return 0


def cmd_status(settings: Settings, args) -> int:
    """Print the node's status: from the running node if there is one, else the store."""
    with NodeHome.open(settings) as home:
        snap = node_status(home)
    if settings.json:
        emit_json(snap)
    else:
        Console().print(render(snap))
    return 0


def cmd_export(settings: Settings, args) -> int:
    """Export the best lineage (default: the best kept record in the arena) as a patch
    of genome/train.py, a git-am series, the source, or TSV."""
    with NodeHome.open(settings) as home:
        try:
            record_id = home.find_experiment(args.record).id if args.record else \
                home.best_kept(args.arena or home.arena(), args.only_topic).id
            text = home.export_lineage(record_id, args.format)
        except (RecordUnavailable, LineageError) as e:
            return fail(str(e), 1)
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
    """List the best lineage, step by step, then the latest results."""
    with NodeHome.open(settings) as home:
        arena = args.arena or home.arena()
        board = home.scoreboard(arena)
        best = board.best(args.only_topic)
        print(f"arena {arena}  sigma {board.sigma() or float('nan'):.4f}  "
              f"genome baseline {fmt_bpb(board.root_score())}")
        if best is not None and best.record is not None:
            trust = home.trust()
            for line in export.log_lines(
                    home.lineage, best.id, recent=0, seed=settings.seed,
                    verified_by=lambda rid: trust.verified_by(home.store.get(rid)),
                    baseline_authors=trust.trusted_author().keys()):
                print(line)
        print("latest results:")
        for r in home.store.experiments(arena=arena, topic=args.only_topic, limit=args.limit):
            print(f"  {r.id_hex[:8]} {r.author_peer_id[-8:]} {board.label(r):9s} "
                  f"{fmt_bpb(r.val_bpb)} {fmt_delta(board.delta(r)):>8s}  {r.desc}")
    return 0


def cmd_verify(settings: Settings, args) -> int:
    """Re-run one record in this node's arena (sandboxed), print claimed against
    measured val_bpb, and store an attestation."""
    with NodeHome.open(settings) as home:
        try:
            record = home.claim_to_verify(args.record_id)
            with progress_for(settings) as progress:
                trainer = ready_trainer(home, progress)  # and the arena's data digest
            if trainer.arena != record.arena:
                print(f"note: the record was measured in {record.arena}, this node runs in "
                      f"{trainer.arena}: scores are not comparable, no attestation is made",
                      file=sys.stderr)
            copied = home.copied_from(record)
            if copied is not None:
                print(f"note: the record repeats the program of {copied.hex()[:12]}, which "
                      "came first: it is re-run but no attestation is made (a copy earns "
                      "no reputation)", file=sys.stderr)
            with progress_for(settings) as progress:
                rerun = trio.run(home.verify, record, trainer, progress)
        except (RecordUnavailable, LineageError) as e:
            return fail(str(e), 1)
    result, judged = rerun.result, rerun.judgement
    # No judgement: the run crashed or timed out, which may be this machine's fault.
    verdict = judged.verdict if judged else None
    if settings.json:
        emit_json({"record": record.id_hex, "claimed": record.val_bpb,
                   "measured": result.val_bpb, "status": result.status, "sigma": rerun.sigma,
                   "verdict": verdict, "arena": trainer.arena,
                   "reason": judged.reason if judged else result.reason})
        return 0 if judged and judged.holds else 1
    print(f"record   {record.id_hex[:12]}  {record.desc}")
    print(f"claimed  {fmt_bpb(record.val_bpb)}")
    print(f"measured {fmt_bpb(result.val_bpb)}  ({result.status}"
          + (f": {result.reason}" if result.status != "ok" else "") + ")")
    print(f"noise    sigma {fmt_bpb(rerun.sigma)} -> tolerance {rerun.tolerance:.4f}"
          if rerun.sigma else "noise    unknown in this arena (run `loopy start` first)")
    if verdict is None:
        print("verdict  none: the run failed on this machine, which may be the machine's "
              "fault; no attestation made (check it with `loopy run` on the base genome)")
    else:
        print(f"verdict  {verdict}" + (f": {judged.reason}" if not judged.holds
                                        and judged.reason else ""))
    return 0 if judged and judged.holds else 1


def cmd_peers(settings: Settings, args) -> int:
    """Connected peers (*, from the running node) and every peer the store remembers:
    their topics, arenas, heads, last seen and reputation."""
    with NodeHome.open(settings) as home:
        rows = known_peers(home)
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
    """Draw the autoresearch-style progress chart as a PNG: every experiment, the
    running best, kept edits labelled."""
    with NodeHome.open(settings) as home:
        board = home.scoreboard(args.arena or home.arena())
        summary = render_plot(board, home.trust(), args.only_topic, args.output)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loopy", description="Loopy: a peer-to-peer research swarm for ML experiments.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    flag = dict(action="store_const", const=True, default=None)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", default=None, help="node home (default $LOOPY_HOME or ~/.loopy)")
    common.add_argument("--config", default=None,
                        help="TOML config file (default <home>/config.toml)")
    common.add_argument("--json", **flag, help="machine-readable output")
    common.add_argument("--plain", **flag, help="plain log lines instead of a live view")
    trainer = argparse.ArgumentParser(add_help=False)
    trainer.add_argument("--trainer", default=None, choices=TRAINERS,
                         help="genome (real training) or synthetic (simulated, for tests)")
    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--budget", default=None,
                          help="training budget: wall-clock ('60s', '5m') or tokens ('300ktok')")
    training.add_argument("--device", default=None, choices=DEVICES)
    training.add_argument("--dataset", default=None,
                          help="'embedded' (offline) or 'climbmix' (download)")
    scope = argparse.ArgumentParser(add_help=False)
    scope.add_argument("--arena", default=None, help="arena (default: the node's)")
    scope.add_argument("--topic", default=None, dest="only_topic", help="only this topic")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, func, summary, example, *parents) -> argparse.ArgumentParser:
        # the command's docstring is its description
        p = sub.add_parser(name, parents=[common, *parents], help=summary,
                           description=f"{func.__doc__}\n\nexample: {example}")
        p.set_defaults(func=func)
        return p

    p = command("run", cmd_run, "train the genome (or an edit) once",
                "loopy run --budget 300ktok --patch my-edit.diff", training)
    p.add_argument("--patch", default=None, help="unified diff of train.py to apply first")
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0)")

    p = command("id", cmd_id, "print this node's peer id", "loopy id --json")
    p.add_argument("--listen", default=None, help="listen multiaddr")
    p.add_argument("--topic", action="append", default=None, help="research topic (repeatable)")

    p = command("start", cmd_start, "run the research loop",
                "loopy start --offline --topic optimizer", trainer, training)
    p.add_argument("--topic", action="append", default=None, help="research topic (repeatable)")
    p.add_argument("--agent", default=None,
                   help="mutate (default) | random | command:CMD | openai:URL")
    p.add_argument("--seed", type=int, default=None, help="the arena's training seed")
    p.add_argument("--max-experiments", type=int, default=None, dest="max_experiments",
                   help="stop after N experiments (default: never)")
    p.add_argument("--until", default=None, help="stop at a time ('8h' or an ISO time)")
    p.add_argument("--offline", **flag, help="no network: a single node")
    p.add_argument("--listen", default=None,
                   help="listen multiaddr (default /ip4/0.0.0.0/tcp/4011; port 0: any)")
    p.add_argument("--bootstrap", action="append", default=None, metavar="MULTIADDR",
                   help="a peer to join through, /ip4/../tcp/../p2p/.. (repeatable)")
    p.add_argument("--mdns", **flag,
                   help="discover peers on the LAN (binds every interface; implies --lan)")
    p.add_argument("--lan", **flag,
                   help="a LAN swarm: dial the private, loopback and link-local addresses "
                        "peers announce (default: only if we listen on that network)")
    p.add_argument("--trust-peer", action="append", default=None, dest="trust_peer",
                   metavar="PEER_ID",
                   help="a node you run yourself (its `loopy id`): its claims count as "
                        "verified and its baselines as ours, with no re-run (repeatable)")
    p.add_argument("--dashboard", type=int, default=None, metavar="PORT",
                   help="serve the read-only web dashboard on this port (default: off)")
    p.add_argument("--dashboard-host", default=None, dest="dashboard_host", metavar="HOST",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 lets the network read it)")

    p = command("plot", cmd_plot, "draw the progress chart as a PNG",
                "loopy plot -o progress.png --topic optimizer", scope, trainer)
    p.add_argument("-o", "--output", default="progress.png", help="PNG file to write")

    command("status", cmd_status, "what the node knows and does", "loopy status --json",
            trainer)

    p = command("export", cmd_export, "export the best lineage",
                "loopy export -o best.patch && git apply best.patch", scope, trainer)
    p.add_argument("--record", default=None, help="record id (hex, a prefix will do)")
    p.add_argument("-o", "--output", default=None, help="write to FILE instead of stdout")
    p.add_argument("--format", default="patch", choices=["patch", "series", "tsv", "source"])

    p = command("log", cmd_log, "list the lineage and recent results",
                "loopy log --topic optimizer", scope, trainer)
    p.add_argument("--limit", type=int, default=20)

    p = command("verify", cmd_verify, "re-run one record by hand", "loopy verify 3fa2c1",
                trainer, training)
    p.add_argument("record_id", help="record id (hex, a prefix will do)")

    command("peers", cmd_peers, "list known and connected peers", "loopy peers --json")
    command("config", cmd_config, "print the effective settings", "loopy config --json")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings(vars(args))
        return args.func(settings, args)
    except (ConfigError, HomeError, IdentityError) as e:
        return fail(str(e))
    except DAMAGED_STORE_ERRORS as e:
        return fail(f"cannot read the store in {settings.home}: {type(e).__name__}: "
                    f"{str(e) or 'undecodable data'}; it may be damaged")
    except BrokenPipeError:  # `loopy log | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""A node's settings: one table of every option, its default, type and help.

Settings come from, highest first: command-line flags, `LOOPY_*` environment
variables, the TOML config file (`<home>/config.toml` or `--config FILE`), defaults.
Every bad value is a `ConfigError` whose message names the key and where it came from.

    settings = load_settings({"home": "~/.loopy", "seed": 3})
    home = home_dir(settings)
"""
from __future__ import annotations

import os
import re
import time
import tomllib
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path

from experiments.research.scoreboard import ScoreRules, keep_rules
from experiments.run.budget import parse_budget
from experiments.run.sandbox import missing_isolation
from genome import check_topic
from swarm.identity import public_key_from_peer_id
from swarm.trust import TrustRules


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
    trust_peer: list[str] = field(default_factory=list)  # peer ids of the operator's own
                                  # other nodes: trusted as this one, never re-run


SETTING_TYPES = {f.name: f.type for f in fields(Settings)}
SHARES = ("verify_share", "merge_share", "port_share", "speculate_share")
DEVICES = ("auto", "cpu", "cuda", "mps")
TRAINERS = ("genome", "synthetic")


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
    path = (Path(config_path).expanduser() if config_path
            else Path(home).expanduser() / "config.toml")
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


def operator_keys(settings: Settings) -> frozenset[bytes]:
    """The public keys of `trust_peer`: nodes the operator runs on their other machines."""
    keys = set()
    for peer_id in settings.trust_peer:
        try:
            keys.add(public_key_from_peer_id(peer_id))
        except ValueError:
            raise ConfigError(f"trust_peer: {peer_id!r} is not an ed25519 peer id "
                              "(12D3KooW..., as `loopy id` prints it)") from None
    return frozenset(keys)


def trust_rules(settings: Settings) -> TrustRules:
    """Whom the node trusts, as every part of it (loop, swarm, views) applies it."""
    return TrustRules(k=settings.trust_k, operator_keys=operator_keys(settings))


def score_rules(settings: Settings) -> ScoreRules:
    """The keep rule of this node: the default, or one operator's large swarm's
    (scoreboard.keep_rules: the nodes listed in `trust_peer` and this one)."""
    return keep_rules(settings.seed, 1 + len(operator_keys(settings)))


def check_settings(settings: Settings) -> Settings:
    """Ranges and formats the types cannot say; the error names the key."""
    for name in SHARES:
        value = getattr(settings, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be between 0 and 1, got {value}")
    if settings.merge_share + settings.port_share > 1.0:
        raise ConfigError("merge_share + port_share must be at most 1, got "
                          f"{settings.merge_share + settings.port_share}")
    if settings.trust_k < 1:
        raise ConfigError(f"trust_k must be at least 1, got {settings.trust_k}")
    operator_keys(settings)   # every trust_peer must be an ed25519 peer id
    for name, allowed in (("device", DEVICES), ("trainer", TRAINERS)):
        if getattr(settings, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, "
                              f"got {getattr(settings, name)!r}")
    if not settings.topic:
        raise ConfigError("topic: give at least one research topic")
    try:
        for topic in settings.topic:
            check_topic(topic)
        parse_until(settings.until)
        if settings.budget:
            parse_budget(settings.budget)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not 0 <= settings.dashboard <= 65535:
        raise ConfigError(f"dashboard must be a port number (0-65535), got {settings.dashboard}")
    return settings


def home_dir(settings: Settings) -> Path:
    """The node's home directory, created if missing."""
    home = Path(settings.home).expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"home {home}: cannot create it ({e.strerror or e})") from None
    return home


def check_swarm_settings(settings: Settings) -> None:
    """The listen and bootstrap addresses of a networked node; ConfigError names the bad one."""
    # libp2p takes most of a second to import: only a node that joins a swarm needs it
    from swarm.discovery import parse_peer_addr
    from swarm.host import parse_listen
    try:
        parse_listen(settings.listen)
        for addr in settings.bootstrap:
            parse_peer_addr(addr)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def parse_until(text: str) -> float | None:
    """`--until` as a duration ('8h', '30m') or an ISO time ('2026-11-27T07:00')."""
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


def resolve_run(settings: Settings) -> tuple:
    """(device, dataset, budget, arena) the settings ask for on this machine; ConfigError
    when it cannot (a device it lacks, a dataset it does not know)."""
    # the harness imports numpy: only commands that need a genome arena pay for it
    from experiments.run.harness import _resolve
    try:
        return _resolve(settings.device, settings.dataset or None, settings.budget or None)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def isolation_gaps(settings: Settings) -> list[str]:
    """What this machine cannot isolate when it trains other authors' programs (nothing
    for the synthetic trainer, which runs no program)."""
    return missing_isolation() if settings.trainer == "genome" else []

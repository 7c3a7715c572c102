"""Making agents from a spec string: `mutate`, `random`, `optuna:tpe`, `optuna:cmaes`,
`command:<CMD>`, `openai:<URL>`.

The agent modules are imported when an agent is made, so importing the package costs no
agent's dependencies (numpy, optuna); nothing in the agent modules imports this one.
"""
from __future__ import annotations

import inspect

from experiments.agents.base import Agent


def make_agent(spec: str, **opts) -> Agent:
    """`mutate` | `random` | `optuna:tpe` | `optuna:cmaes` | `command:<CMD>` | `openai:<URL>`.

    Options an agent does not take are ignored, so a caller can pass one pool of settings
    (e.g. base_source, timeout_s) whatever the spec."""
    from experiments.agents.command import CommandAgent
    from experiments.agents.mutate import MutateAgent, RandomAgent
    from experiments.agents.openai_agent import OpenAIAgent

    if not isinstance(spec, str):
        raise ValueError("agent spec must be a string")
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    makers = {"mutate": MutateAgent, "random": RandomAgent, "command": CommandAgent,
              "openai": OpenAIAgent, "optuna": None}
    if kind not in makers:
        raise ValueError(f"unknown agent {spec!r}: use mutate, random, optuna:tpe, "
                         "optuna:cmaes, command:<CMD> or openai:<URL>")
    if kind == "optuna":
        from experiments.agents.optuna_agent import SAMPLERS, OptunaAgent
        sampler = arg.strip().lower()
        if sampler not in SAMPLERS:
            raise ValueError(f"agent optuna takes one of {', '.join(SAMPLERS)}: "
                             f"optuna:{SAMPLERS[0]}")
        accepted = inspect.signature(OptunaAgent.__init__).parameters
        kwargs = {k: v for k, v in opts.items() if k in accepted and k not in ("self",
                                                                              "sampler")}
        return OptunaAgent(sampler, **kwargs)
    cls = makers[kind]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in opts.items() if k in accepted and k != "self"}
    if kind in ("command", "openai"):
        if not arg.strip():
            raise ValueError(f"agent {kind} needs an argument: {kind}:<...>")
        return cls(arg.strip(), **kwargs)
    if arg:
        raise ValueError(f"agent {kind} takes no argument")
    return cls(**kwargs)

"""Proposers: given the parent's train.py, a brief and what was tried, propose the next edit.

    base.py          Agent protocol, Brief / Tried / Proposal, validate_proposal,
                     history_digest, load_brief
    registry.py      make_agent("mutate" | "random" | "optuna:tpe" | "optuna:cmaes" |
                     "command:<CMD>" | "openai:<URL>")
    literals.py      train.py's settings: where each literal value is, how to write one
    catalogue.py     the catalogue of real, topic-tagged edits of train.py's settings
    edit_keys.py     edit keys read back into setting values (mutate and optuna share it)
    mutate.py        MutateAgent (default: catalogue steered by history), RandomAgent (control)
    optuna_agent.py  OptunaAgent: Optuna's TPE or CMA-ES over the catalogue's settings
    command.py       CommandAgent: any CLI coding agent in a scratch copy, killed at its limit
    openai_agent.py  OpenAIAgent: any OpenAI-compatible chat endpoint, stdlib HTTP only
    replies.py       parse_reply: the new train.py and description out of an LLM's answer
"""
from experiments.agents.base import Agent, Brief, Proposal, Tried, history_digest, \
    load_brief, validate_proposal
from experiments.agents.registry import make_agent

__all__ = ["Agent", "Brief", "Proposal", "Tried", "history_digest", "load_brief", "make_agent",
           "validate_proposal"]

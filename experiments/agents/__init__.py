"""Proposers: given the parent's train.py, a brief and what was tried, propose the next edit.

    base.py          Agent protocol, Brief / Tried / Proposal, validate_proposal,
                     history_digest, load_brief, make_agent("mutate" | "random" |
                     "command:<CMD>" | "openai:<URL>")
    catalogue.py     the catalogue of real, topic-tagged edits of train.py's settings
    mutate.py        MutateAgent (default: catalogue steered by history), RandomAgent (control)
    command.py       CommandAgent: any CLI coding agent in a scratch copy, killed at its limit
    openai_agent.py  OpenAIAgent: any OpenAI-compatible chat endpoint, stdlib HTTP only
    replies.py       parse_reply: the new train.py and description out of an LLM's answer
"""
from experiments.agents.base import Agent, Brief, Proposal, Tried, history_digest, \
    load_brief, make_agent, validate_proposal

__all__ = ["Agent", "Brief", "Proposal", "Tried", "history_digest", "load_brief", "make_agent",
           "validate_proposal"]

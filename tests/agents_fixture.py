"""A small genome in the shape of genome/train.py, for the agent and synthetic-trainer tests.

Fixed here so that the tests' expectations (which settings exist, which edits apply) do not
move when the real genome evolves; tests that need the real genome read it separately.
"""
import hashlib

from experiments.agents.base import Brief

FIXTURE = '''\
"""Fixture genome: the shape of genome/train.py, small."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import run_config

# Model
ACTIVATION = "relu2"  # MLP non-linearity: "relu2" | "gelu" | "silu"
MLP_RATIO = 4  # MLP hidden width = MLP_RATIO * width
QK_NORM = True  # normalise queries and keys
ROPE_BASE = 10000.0  # rotary base
SOFTCAP = 0.0  # logit soft cap; 0 = off
TIE_EMBEDDINGS = False  # share the embedding and the head
INIT_SCALE = 1.0  # init std multiplier

# Optimiser
MATRIX_LR = 0.02  # Muon learning rate
EMBED_LR = 0.01  # AdamW learning rate for the embedding
ADAM_BETAS = (0.8, 0.95)  # AdamW betas
WEIGHT_DECAY = 0.0  # decoupled weight decay
NS_STEPS = 5  # Newton-Schulz iterations
TOTAL_BATCH_SIZE = 2**14  # tokens per optimiser step

# Schedule
WARMUP_FRAC = 0.1  # warmup share of the budget
WARMDOWN_FRAC = 0.5  # warmdown share of the budget

PROFILES = {
    "cpu": dict(DEPTH=4, WIDTH=128, HEADS=4, SEQ_LEN=256, BATCH_SIZE=4, COMPILE=False),
    "cuda": dict(DEPTH=8, WIDTH=640, HEADS=5, SEQ_LEN=2048, BATCH_SIZE=64, COMPILE=True),
}
PEAK_FLOPS = {"H100": 989e12, "A100": 312e12}  # a data table, not a knob
EVAL_OFFSET = 0.5  # not a research knob: generic rules skip it

ACTIVATIONS = {"relu2": lambda x: F.relu(x).square(), "gelu": F.gelu, "silu": F.silu}


def lr_multiplier(progress):
    """Warmup, constant, warmdown."""
    if progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if progress > 1 - WARMDOWN_FRAC:
        return (1 - progress) / WARMDOWN_FRAC
    return 1.0


class MLP(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, MLP_RATIO * width, bias=False)
        self.proj = nn.Linear(MLP_RATIO * width, width, bias=False)

    def forward(self, x):
        return self.proj(ACTIVATIONS[ACTIVATION](self.fc(x)))


def build_model(run):
    p = PROFILES[run.profile]
    width = p["WIDTH"]
    return nn.Sequential(nn.Embedding(run.vocab_size, width), MLP(width),
                         nn.Linear(width, run.vocab_size))


if __name__ == "__main__":
    print(build_model(run_config()))
'''

# The same genome with the activation written in the code instead of a setting.
FIXTURE_CODE_ACTIVATION = FIXTURE.replace(
    'ACTIVATION = "relu2"  # MLP non-linearity: "relu2" | "gelu" | "silu"\n', "").replace(
    'ACTIVATIONS = {"relu2": lambda x: F.relu(x).square(), "gelu": F.gelu, "silu": F.silu}\n',
    "").replace(
    "        return self.proj(ACTIVATIONS[ACTIVATION](self.fc(x)))",
    "        h = self.fc(x)\n        return self.proj(F.relu(h).square())")


def source_id(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    """(old line, new line) pairs for a same-length edit."""
    a, b = old.splitlines(), new.splitlines()
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b) if x != y]


def brief(topic="general") -> Brief:
    """A stand-in brief for topic."""
    return Brief(topic, f"brief for {topic}")

"""Device detection, hardware class and hardware profile.

- `detect_device("auto")` picks cuda, then mps, then cpu; an explicit choice that this
  machine cannot honour is a ValueError (never a silent fallback that changes the arena).
- `hardware_class(device)` names the machine: `cpu`, `apple-mps`, or the GPU model and
  memory such as `nvidia-h100-80gb`. `arena_class(device, budget_kind)` is the hardware part
  of an arena: wall-clock scores are only comparable on the same class, so time budgets use
  `hardware_class`; a token budget's score does not depend on the card's speed, and the
  genome keeps the maths the same on every card (only the split of a step into
  micro-batches follows the card's memory), so token budgets on CUDA share one class per
  precision: `cuda` (bf16, compute capability 8.0 and later), `cuda-fp16` (7.x, fp16 with
  loss scaling), `cuda-fp32` (older). CPUs already share `cpu`.
- The *profile* (model size, batch, compilation in train.py; evaluation settings here) is
  the device name. Evaluation settings are part of the trusted evaluation code
  (`evaluate_child.EVAL_SETTINGS`, hashed into the genome id), never chosen by train.py.

torch is imported lazily: a node that only relays records must start fast.
"""
from __future__ import annotations

import os
import re

from experiments.run.evaluate_child import EVAL_SETTINGS

DEVICES = ("cpu", "cuda", "mps")
_MEMORY_TOKEN = re.compile(r"\d+gb")
_MEMORY_KIND = re.compile(r"(hbm|gddr|lpddr)\d*[a-z]?")


def detect_device(pref: str = "auto") -> str:
    """'auto' -> the best available of cuda, mps, cpu; 'cpu'|'cuda'|'mps' -> checked as given."""
    if pref not in ("auto",) + DEVICES:
        raise ValueError(f"device must be auto, cpu, cuda or mps, not {str(pref)[:40]!r}")
    if pref == "cpu":
        return "cpu"
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if pref == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if pref == "cuda" and not cuda:
        raise ValueError("device cuda was asked for, but torch sees no CUDA GPU "
                         "(is the CUDA build of torch installed?)")
    if pref == "mps" and not mps:
        raise ValueError("device mps was asked for, but torch reports MPS unavailable")
    return pref


def gpu_class(name: str, total_bytes: int) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb'; 'NVIDIA H200', 150e9 B -> 'nvidia-h200-140gb'.

    The memory size comes from the name when it says it, else from the reported total
    (rounded GiB); the memory type (HBM3, GDDR6X) is dropped as it names no different card.
    """
    words = re.findall(r"[a-z0-9]+", name.lower())
    named_memory = [w for w in words if _MEMORY_TOKEN.fullmatch(w)]
    words = [w for w in words if not _MEMORY_TOKEN.fullmatch(w) and not _MEMORY_KIND.fullmatch(w)]
    memory = named_memory[0] if named_memory else f"{round(total_bytes / 2**30)}gb"
    slug = "-".join(words[:6] + [memory])
    return slug[:64].strip("-") or "gpu"


def hardware_class(device: str) -> str:
    """The hardware part of an arena: 'cpu', 'apple-mps' or e.g. 'nvidia-h100-80gb'."""
    if device == "cpu":
        return "cpu"
    if device == "mps":
        return "apple-mps"
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        return gpu_class(props.name, props.total_memory)
    raise ValueError(f"unknown device {str(device)[:40]!r}: expected one of {DEVICES}")


def cuda_precision(capability) -> str:
    """'bf16' | 'fp16' | 'fp32': what the base genome trains in on a card of this compute
    capability (genome/train.py's cuda_plan; repeated here, trusted code never imports it)."""
    major = int(tuple(capability)[0])
    return "bf16" if major >= 8 else "fp16" if major >= 7 else "fp32"


def cuda_token_class(capability) -> str:
    """The hardware part of a token-budget arena on CUDA: one class for every card with the
    same precision ('cuda', 'cuda-fp16', 'cuda-fp32')."""
    precision = cuda_precision(capability)
    return "cuda" if precision == "bf16" else f"cuda-{precision}"


def arena_class(device: str, budget_kind: str) -> str:
    """The hardware part of an arena: the card's own class for wall-clock budgets, one
    class per precision for token budgets on CUDA, else hardware_class."""
    if budget_kind not in ("time", "tokens"):
        raise ValueError(f"budget kind must be 'time' or 'tokens', not {str(budget_kind)[:40]!r}")
    if device == "cuda" and budget_kind == "tokens":
        import torch

        return cuda_token_class(torch.cuda.get_device_capability(0))
    return hardware_class(device)


def profile(device: str) -> str:
    """The hardware profile train.py and the evaluator use: the device name itself."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {str(device)[:40]!r}: expected one of {DEVICES}")
    return device


def eval_settings(profile_name: str) -> dict:
    """{'seq_len', 'batch_size', 'n_windows'} of the trusted evaluation for a profile."""
    if profile_name not in EVAL_SETTINGS:
        raise ValueError(f"unknown profile {str(profile_name)[:40]!r}")
    return dict(EVAL_SETTINGS[profile_name])


def cpu_threads() -> int:
    """CPU cores this process may use (its affinity mask, not the whole machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS has no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def total_memory_mb() -> int | None:
    """Physical memory of the machine in MiB, or None where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        return None

"""
Loopy genome: pretrain a small GPT within the harness's budget. Single device, single file.

This is the file the swarm evolves: an edit may change anything in it. The fixed parts (corpus,
tokenizer, dataloader, token budget and the val_bpb metric) live in prepare.py. The harness
runs this file as a child process (`LOOPY_RUN_CONFIG=run.json python train.py`), then imports
it in a separate evaluation process and calls `build_model(run)` to load `model.pt`; so
importing it must stay cheap and free of side effects (all training lives in `main()`).

After karpathy/autoresearch and nanochat: RMSNorm, rotary embeddings, QK-norm, ReLU^2 MLP,
Muon for the hidden matrices and AdamW for the rest, warmup/warmdown by budget progress.
"""
import math
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # the harness runs us with genome/ on sys.path, as autoresearch does
    from prepare import make_dataloader, run_config, tokens_served
except ImportError:  # imported as part of the `genome` package
    from genome.prepare import make_dataloader, run_config, tokens_served

# ---------------------------------------------------------------------------------------------
# Settings: the knobs an edit is most likely to turn. Shared by all hardware profiles.

# Model
ACTIVATION = "relu2"  # MLP non-linearity: "relu2" (ReLU squared) | "gelu" | "silu"
MLP_RATIO = 4  # MLP hidden width = MLP_RATIO * model width
NORM_PLACEMENT = "pre"  # "pre": x + f(norm(x)) (modern GPTs); "post": norm(x + f(x)) (original)
QK_NORM = True  # RMS-normalise queries and keys before attention (bounds attention logits)
ROPE_BASE = 10000.0  # rotary embedding base; larger bases resolve longer contexts
SOFTCAP = 0.0  # tanh soft cap on the output logits (nanochat uses 15); 0 = off; ~30% slower on CPU
TIE_EMBEDDINGS = False  # share one matrix between the token embedding and the output head
INIT_SCALE = 1.0  # multiplies the init std (1/sqrt(width)) of attention q/k/v and MLP input

# Optimiser: Muon for 2D hidden matrices, AdamW for everything else
MATRIX_LR = 0.02  # Muon learning rate (attention and MLP matrices)
EMBED_LR = 0.01  # AdamW learning rate for the token embedding
HEAD_LR = 0.004  # AdamW learning rate for the output head
ADAM_BETA1 = 0.8  # AdamW first-moment decay
ADAM_BETA2 = 0.95  # AdamW second-moment decay
ADAM_EPS = 1e-8  # AdamW denominator epsilon
MUON_MOMENTUM = 0.95  # Muon momentum (Nesterov)
NS_STEPS = 5  # Newton-Schulz iterations that orthogonalise each Muon update
WEIGHT_DECAY = 0.0  # decoupled weight decay on the Muon matrices, multiplied by their lr

# Schedule, by progress through the budget (training seconds or tokens served, 0..1)
WARMUP_FRAC = 0.1  # linear warmup of every lr over this first fraction of the budget
WARMDOWN_FRAC = 0.5  # linear decay to FINAL_LR_FRAC over this last fraction of the budget
FINAL_LR_FRAC = 0.0  # lr multiplier at the very end of the budget

# Hardware profiles, picked by prepare.run_config().profile: model size, batch, compilation.
# Tokens per optimiser step = BATCH_SIZE * SEQ_LEN * GRAD_ACCUM. On CUDA, BATCH_SIZE is the
# largest micro-batch: a card with less memory takes the same BATCH_SIZE * GRAD_ACCUM sequences
# per step in smaller micro-batches (see cuda_plan), so the maths is the same on every card.
PROFILES = {
    "cpu": dict(DEPTH=4, WIDTH=128, HEADS=4, SEQ_LEN=256, BATCH_SIZE=4, GRAD_ACCUM=1, COMPILE=False),
    "mps": dict(DEPTH=6, WIDTH=384, HEADS=6, SEQ_LEN=1024, BATCH_SIZE=16, GRAD_ACCUM=1, COMPILE=False),
    "cuda": dict(DEPTH=8, WIDTH=640, HEADS=5, SEQ_LEN=2048, BATCH_SIZE=64, GRAD_ACCUM=2, COMPILE=True),
}

# ---------------------------------------------------------------------------------------------
# Model


def rms_norm(x):
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len, head_dim, base):
    """cos/sin of the rotary angles, shaped (1, 1, seq_len, head_dim / 2) for (B, H, T, D) inputs."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, None], angles.sin()[None, None]


def apply_rotary(x, cos, sin):
    """Rotate pairs (x1[i], x2[i]) of each head vector by a position-dependent angle."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


ACTIVATIONS = {"relu2": lambda x: F.relu(x).square(), "gelu": F.gelu, "silu": F.silu}


class Attention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = (lin(x).view(B, T, self.heads, -1).transpose(1, 2) for lin in (self.q, self.k, self.v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if QK_NORM:
            q, k = rms_norm(q), rms_norm(k)
        q, k = q.to(v.dtype), k.to(v.dtype)  # norms may upcast under autocast; SDPA wants one dtype
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, MLP_RATIO * width, bias=False)
        self.proj = nn.Linear(MLP_RATIO * width, width, bias=False)

    def forward(self, x):
        return self.proj(ACTIVATIONS[ACTIVATION](self.fc(x)))


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = Attention(width, heads)
        self.mlp = MLP(width)

    def forward(self, x, cos, sin):
        if NORM_PLACEMENT == "pre":
            x = x + self.attn(rms_norm(x), cos, sin)
            return x + self.mlp(rms_norm(x))
        x = rms_norm(x + self.attn(x, cos, sin))
        return rms_norm(x + self.mlp(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, depth, width, heads, max_seq_len):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.head = nn.Linear(width, vocab_size, bias=False)
        if TIE_EMBEDDINGS:
            self.head.weight = self.embed.weight
        cos, sin = rotary_tables(max_seq_len, width // heads, ROPE_BASE)
        # Not persistent: derived from constants, so model.pt holds only learned weights.
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        width = self.embed.embedding_dim
        for block in self.blocks:
            for lin in (block.attn.q, block.attn.k, block.attn.v, block.mlp.fc):
                nn.init.normal_(lin.weight, std=INIT_SCALE * width**-0.5)
            # Output projections start at zero: every block begins as the identity.
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.mlp.proj.weight)
        if TIE_EMBEDDINGS:  # one matrix: small enough that the first logits are unit-scale
            nn.init.normal_(self.embed.weight, std=width**-0.5)
        else:  # the embedding is normalised right away, so only the head needs to start small
            nn.init.normal_(self.embed.weight, std=1.0)
            nn.init.normal_(self.head.weight, std=0.001)

    def forward(self, idx, targets=None):
        """Logits (B, T, vocab) in float32; the mean cross-entropy instead when targets are given."""
        T = idx.size(1)
        if T > self.cos.size(2):
            raise ValueError(f"sequence of {T} tokens is longer than the rotary tables ({self.cos.size(2)})")
        cos, sin = self.cos[:, :, :T], self.sin[:, :, :T]
        x = rms_norm(self.embed(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(rms_norm(x)).float()
        if SOFTCAP > 0:
            logits = SOFTCAP * torch.tanh(logits / SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def build_model(run):
    """The architecture for run.profile with run.vocab_size, freshly initialised, on the CPU."""
    p = PROFILES[run.profile]
    return GPT(run.vocab_size, p["DEPTH"], p["WIDTH"], p["HEADS"], max(p["SEQ_LEN"], run.seq_len))


# ---------------------------------------------------------------------------------------------
# Optimizer: Muon (orthogonalised momentum) for hidden matrices, AdamW for the rest


def newton_schulz(G, steps):
    """Approximately replace G by the nearest semi-orthogonal matrix (U V^T of its SVD).

    A quintic Newton-Schulz iteration (Keller Jordan's coefficients): it pushes every singular
    value towards 1 (to roughly 0.7..1.2, which is all Muon needs) using matmuls only.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    bf16 = G.is_cuda and torch.cuda.get_device_capability(G.device)[0] >= 8  # Ampere and later
    X = G.bfloat16() if bf16 else G.float()
    tall = X.size(0) > X.size(1)
    if tall:  # iterate on the smaller Gram matrix
        X = X.T
    X = X / (X.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer, two update rules: groups with kind="muon" get Muon, the others AdamW."""

    def __init__(self, groups):
        super().__init__(groups, defaults={})
        for group in self.param_groups:
            group["initial_lr"] = group["lr"]

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    update = self.muon_update if group["kind"] == "muon" else self.adamw_update
                    update(p, p.grad, self.state[p], group)

    def muon_update(self, p, grad, state, group):
        if not state:
            state["momentum"] = torch.zeros_like(grad)
        momentum = state["momentum"]
        momentum.lerp_(grad, 1 - MUON_MOMENTUM)
        direction = newton_schulz(grad.lerp(momentum, MUON_MOMENTUM), NS_STEPS)  # Nesterov
        scale = max(1.0, p.size(0) / p.size(1)) ** 0.5  # same update RMS for tall matrices
        p.mul_(1 - group["lr"] * WEIGHT_DECAY)
        p.add_(direction.to(p.dtype), alpha=-group["lr"] * scale)

    def adamw_update(self, p, grad, state, group):
        if not state:
            state.update(step=0, m=torch.zeros_like(grad), v=torch.zeros_like(grad))
        state["step"] += 1
        state["m"].lerp_(grad, 1 - ADAM_BETA1)
        state["v"].lerp_(grad.square(), 1 - ADAM_BETA2)
        m_hat = state["m"] / (1 - ADAM_BETA1 ** state["step"])
        v_hat = state["v"] / (1 - ADAM_BETA2 ** state["step"])
        p.addcdiv_(m_hat, v_hat.sqrt().add_(ADAM_EPS), value=-group["lr"])


def make_optimizer(model):
    """Muon for the 2D matrices inside the blocks; AdamW for embedding, head and the rest."""
    matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
    embed = [model.embed.weight]
    head = [] if TIE_EMBEDDINGS else [model.head.weight]
    known = {id(p) for p in matrices + embed + head}
    others = [p for p in model.parameters() if id(p) not in known]
    groups = [
        dict(kind="muon", params=matrices, lr=MATRIX_LR),
        dict(kind="adamw", params=embed, lr=EMBED_LR),
        dict(kind="adamw", params=head, lr=HEAD_LR),
        # parameters an edit adds outside the blocks (gains, biases) learn at the embedding's lr
        dict(kind="adamw", params=others, lr=EMBED_LR),
    ]
    return MuonAdamW([g for g in groups if g["params"]])


def lr_multiplier(progress):
    """Linear warmup, constant, then linear warmdown to FINAL_LR_FRAC; progress in 0..1."""
    if progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if progress > 1 - WARMDOWN_FRAC:
        return FINAL_LR_FRAC + (1 - FINAL_LR_FRAC) * (1 - progress) / WARMDOWN_FRAC
    return 1.0


# ---------------------------------------------------------------------------------------------
# Device helpers: precision, compilation, timing, memory and flops accounting

# Dense bf16 peak flops by device-name fragment (first match wins): for the MFU estimate only.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "B200": 2250e12, "A100": 312e12, "L40S": 362e12,
              "L4": 121e12, "A10": 125e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


# The CUDA memory model behind cuda_plan (a data table, not a knob). One measurement anchors
# it: the cuda profile (depth 8, width 640, vocab 8192, ~50M parameters) peaked at 30.3 GB
# with micro-batch 64 x 2048 tokens (H200, bf16, torch.compile). Weights, gradients and
# optimizer state are small (16 bytes a parameter); the rest is activations, per token about
# 31 bytes per layer and unit of width plus 10 bytes per vocabulary entry (the logits in bf16
# and fp32, and their gradient). fp32 doubles the activations; eager (uncompiled) code keeps
# more of them (x1.5, an estimate). Only a share of the card is planned for: the rest is for
# the CUDA context, the allocator's slack and whatever else uses the card (a display).
CUDA_MEMORY = dict(layer_width_bytes=31, vocab_bytes=10, state_bytes_per_param=16,
                   workspace_bytes=2**28, fp32_factor=2.0, eager_factor=1.5, usable_share=0.85)


class NotEnoughMemory(RuntimeError):
    """The GPU cannot hold even a micro-batch of one sequence."""


class CudaPlan(NamedTuple):
    batch_size: int  # micro-batch, in sequences
    grad_accum: int  # micro-batches per optimiser step
    dtype: object  # autocast dtype: bfloat16, float16 (with a GradScaler) or None (fp32)
    compiled: bool  # torch.compile (Triton needs compute capability 7.0)


def cuda_memory_needed(micro_batch, p, vocab_size, dtype, compiled=True):
    """Estimated peak bytes of one training step at micro_batch sequences (CUDA_MEMORY)."""
    m = CUDA_MEMORY
    params = p["DEPTH"] * 12 * p["WIDTH"] ** 2 + 2 * vocab_size * p["WIDTH"]
    per_token = m["layer_width_bytes"] * p["DEPTH"] * p["WIDTH"] + m["vocab_bytes"] * vocab_size
    if dtype is None:
        per_token *= m["fp32_factor"]
    if not compiled:
        per_token *= m["eager_factor"]
    activations = micro_batch * p["SEQ_LEN"] * per_token
    return m["state_bytes_per_param"] * params + m["workspace_bytes"] + activations


def cuda_plan(memory_bytes, capability, p=None, vocab_size=8192, compiled=True):
    """Micro-batch, gradient accumulation, precision and compilation for a CUDA card.

    memory_bytes: what the card offers this process; capability: (major, minor). A step
    keeps p's BATCH_SIZE * GRAD_ACCUM sequences: the micro-batch is the largest divisor of
    that which fits (at most BATCH_SIZE), so only the split changes from card to card.
    bf16 from compute capability 8.0 (Ampere), fp16 with loss scaling on 7.x, fp32 before.
    """
    p = p or PROFILES["cuda"]
    major = tuple(capability)[0]
    dtype = torch.bfloat16 if major >= 8 else torch.float16 if major >= 7 else None
    compiled = compiled and p["COMPILE"] and major >= 7
    sequences = p["BATCH_SIZE"] * p["GRAD_ACCUM"]
    usable = CUDA_MEMORY["usable_share"] * memory_bytes
    for micro_batch in range(min(p["BATCH_SIZE"], sequences), 0, -1):
        fits = cuda_memory_needed(micro_batch, p, vocab_size, dtype, compiled) <= usable
        if sequences % micro_batch == 0 and fits:
            return CudaPlan(micro_batch, sequences // micro_batch, dtype, compiled)
    needed = cuda_memory_needed(1, p, vocab_size, dtype, compiled) / CUDA_MEMORY["usable_share"]
    raise NotEnoughMemory(
        f"this GPU offers {memory_bytes / 1e9:.1f} GB, and training one sequence of "
        f"{p['SEQ_LEN']} tokens at a time (depth {p['DEPTH']}, width {p['WIDTH']}) needs "
        f"about {needed / 1e9:.1f} GB: use a GPU with more memory, or --device cpu")


def cuda_memory_offered(device):
    """Bytes this process may use on the card: its total memory, capped by the per-process
    fraction (torch.cuda.set_per_process_memory_fraction) and by what others leave free."""
    total = torch.cuda.get_device_properties(device).total_memory
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # newer torch
    fraction = get_fraction(device) if get_fraction else 1.0
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(total * fraction, free + torch.cuda.memory_reserved(device)))


def hardware_settings(run, device, compiled=True):
    """This run's profile settings and autocast dtype (None: fp32). CPU and MPS: the profile
    as written, in fp32. CUDA: the split of each step into micro-batches that fits the card."""
    p = dict(PROFILES[run.profile])
    if device.type != "cuda":
        return p, None
    plan = cuda_plan(cuda_memory_offered(device), torch.cuda.get_device_capability(device), p,
                     run.vocab_size, compiled)
    p.update(BATCH_SIZE=plan.batch_size, GRAD_ACCUM=plan.grad_accum, COMPILE=plan.compiled)
    return p, plan.dtype


def compile_or_eager(raw_model, batch_size, seq_len, vocab_size, device, autocast):
    """torch.compile the model on a dummy batch, before the first real one: the budget's
    clock starts at the first batch the harness serves. Eager if compilation fails."""
    generator = torch.Generator(device=device).manual_seed(0)  # leaves the seeded stream alone
    x, y = (torch.randint(vocab_size, (batch_size, seq_len), device=device, generator=generator)
            for _ in range(2))
    try:
        model = torch.compile(raw_model)
        with autocast:
            loss = model(x, y)
        loss.backward()
    except Exception as e:  # compilers fail in many ways (no triton, old GPU, ...); eager still trains
        print(f"torch.compile failed, training eagerly: {type(e).__name__}: {e}", flush=True)
        model = raw_model
    raw_model.zero_grad(set_to_none=True)
    return model


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_memory_mb(device):
    """Peak GPU memory allocated on cuda; peak resident memory of this process elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def peak_flops(device):
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), 0.0)


def flops_per_token(model, seq_len):
    """6 flops per matmul weight per token (forward + backward), plus attention scores."""
    n_matmul = sum(p.numel() for p in model.parameters())
    if not TIE_EMBEDDINGS:  # an embedding lookup is no matmul
        n_matmul -= model.embed.weight.numel()
    width = model.embed.embedding_dim
    return 6 * n_matmul + 12 * len(model.blocks) * width * seq_len


# ---------------------------------------------------------------------------------------------
# Training


def main():
    t_start = time.time()
    run = run_config()
    device = torch.device(run.device)
    torch.manual_seed(run.seed)
    if device.type == "cpu":
        torch.set_num_threads(run.threads)
        torch.use_deterministic_algorithms(True)  # same seed + token budget = same weights
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 matmuls that remain
    p, amp_dtype = hardware_settings(run, device)  # the profile; on CUDA, split to fit the card

    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    raw_model = build_model(run).to(device)
    optimizer = make_optimizer(raw_model)
    num_params = sum(q.numel() for q in raw_model.parameters())
    print(f"profile {run.profile} on {device}: {num_params / 1e6:.2f}M parameters, "
          f"budget {run.budget_value:g} {'s' if run.budget_kind == 'time' else 'tokens'}", flush=True)

    model = raw_model
    if p["COMPILE"]:
        model = compile_or_eager(raw_model, p["BATCH_SIZE"], p["SEQ_LEN"], run.vocab_size, device,
                                 autocast)
        if model is raw_model and device.type == "cuda":  # eager code keeps more activations
            p, amp_dtype = hardware_settings(run, device, compiled=False)
    if device.type == "cuda":
        precision = str(amp_dtype or torch.float32).removeprefix("torch.")
        print(f"micro-batch {p['BATCH_SIZE']} x {p['SEQ_LEN']} tokens, {p['GRAD_ACCUM']} per "
              f"step, {precision}, {'eager' if model is raw_model else 'compiled'}", flush=True)

    # --- data: the harness serves it and ends it (BudgetExhausted) once the budget is spent;
    # a time budget runs from the first batch, by the harness's clock
    batches = make_dataloader(run.train_bin, p["BATCH_SIZE"], p["SEQ_LEN"], device, run.seed)
    batch = next(batches)
    t_first = time.time()

    def budget_progress(train_seconds):
        used = train_seconds if run.budget_kind == "time" else tokens_served()
        return min(used / run.budget_value, 1.0)

    # --- loop
    step = tokens = 0
    train_seconds = smooth_loss = train_loss = 0.0
    first_loss = None
    next_report = 0.0
    while batch is not None:
        progress = budget_progress(train_seconds)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier(progress)
        for _ in range(p["GRAD_ACCUM"]):
            x, y = batch
            with autocast:
                loss = model(x, y)
            scaler.scale(loss / p["GRAD_ACCUM"]).backward()
            tokens += y.numel()
            batch = next(batches, None)  # None once the budget is spent (BudgetExhausted)
            if batch is None:
                break
        scaler.step(optimizer)
        scaler.update()
        model.zero_grad(set_to_none=True)
        loss_value = loss.item()
        synchronize(device)
        step += 1
        train_seconds = time.time() - t_first

        # Fail loudly and early: a diverged run wastes the rest of its budget.
        if first_loss is None:
            first_loss = loss_value
        if not math.isfinite(loss_value) or loss_value > 100 or (
                progress > WARMUP_FRAC and loss_value > 3 * first_loss):
            print(f"FAIL: training diverged at step {step}: loss {loss_value}", flush=True)
            sys.exit(1)

        smooth_loss = 0.9 * smooth_loss + 0.1 * loss_value
        train_loss = smooth_loss / (1 - 0.9**step)  # debiased moving average
        progress = budget_progress(train_seconds)
        if next_report <= progress < 1:  # a line every 2% for the harness's progress bar
            print(f"progress: {progress:.4f} loss: {train_loss:.4f} step: {step}", flush=True)
            next_report = (math.floor(progress / 0.02) + 1) * 0.02
        if run.budget_kind == "time" and train_seconds >= run.budget_value:
            break
    print(f"progress: 1.0000 loss: {train_loss:.4f} step: {step}", flush=True)  # budget spent

    # --- summary
    synchronize(device)
    torch.save(raw_model.state_dict(), Path(run.out_dir) / "model.pt")
    flops = flops_per_token(raw_model, p["SEQ_LEN"]) * tokens / max(train_seconds, 1e-9)
    mfu = 100 * flops / peak_flops(device) if peak_flops(device) else 0.0
    print("---")
    print("val_bpb:          nan")  # the harness measures it: train.py never sees validation data
    print(f"train_loss:       {train_loss:.6f}")
    print(f"training_seconds: {train_seconds:.1f}")
    print(f"total_seconds:    {time.time() - t_start:.1f}")
    print(f"peak_vram_mb:     {peak_memory_mb(device):.1f}")
    print(f"mfu_percent:      {mfu:.2f}")
    print(f"total_tokens_M:   {tokens / 1e6:.6f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {num_params / 1e6:.2f}")


if __name__ == "__main__":
    try:
        main()
    except NotEnoughMemory as e:  # one clear line, not a traceback
        print(f"FAIL: {e}", flush=True)
        sys.exit(1)

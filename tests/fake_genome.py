"""A tiny genome that honours the prepare.py / train.py contracts, for fast harness tests.

`make_genome(dir)` writes `prepare.py` (vocab of 64 tokens, a few thousand tokens of
patterned data, the real contract's functions), the base `train.py` (a bigram model that
trains in well under a second and then prints a *fake* `val_bpb: 0.1`) and a `data/`
directory standing for the raw corpus. Variants of train.py are plain source strings.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

PREPARE = textwrap.dedent('''
    """Fake trusted prepare.py for tests: same API as genome/prepare.py, tiny data."""
    import json
    import math
    import os
    from dataclasses import dataclass
    from pathlib import Path

    import numpy as np

    TOKEN_DTYPE = np.uint16
    RUN_CONFIG_ENV = "LOOPY_RUN_CONFIG"
    VOCAB = 64
    BOS = 0
    _served = 0


    class BudgetExhausted(StopIteration):
        pass


    class CorpusError(Exception):
        pass


    class DatasetUnavailable(Exception):
        pass


    @dataclass(frozen=True)
    class DataPaths:
        dataset: str
        tokenizer: Path
        train_bin: Path
        val_bin: Path


    class Tokenizer:
        vocab_size = VOCAB
        bos_id = BOS
        token_bytes = np.array([0] + [1] * (VOCAB - 1), dtype=np.int32)


    def _tokens(n, seed):
        rng = np.random.default_rng(seed)
        out = np.empty(n, dtype=TOKEN_DTYPE)
        t = 1
        for i in range(n):  # a noisy cycle: a bigram model learns it well
            t = 1 + (t % (VOCAB - 1)) if rng.random() < 0.8 else int(rng.integers(1, VOCAB))
            out[i] = t
        out[::200] = BOS
        return out


    def prepare_data(home, dataset="embedded", progress=None):
        out = Path(home) / "data" / dataset
        out.mkdir(parents=True, exist_ok=True)
        paths = DataPaths(dataset, out / "tokenizer.pkl", out / "train.bin", out / "val.bin")
        if not paths.val_bin.exists():
            _tokens(20000, 1).tofile(paths.train_bin)
            _tokens(6000, 2).tofile(paths.val_bin)
            paths.tokenizer.write_bytes(b"fake tokenizer")
        if progress:
            progress("fake data", 1, 1)
        return paths


    def load_tokenizer(path):
        Path(path).read_bytes()
        return Tokenizer()


    @dataclass(frozen=True)
    class RunConfig:
        device: str
        profile: str
        budget_kind: str
        budget_value: float
        seed: int
        out_dir: Path
        train_bin: Path
        vocab_size: int
        bos_id: int
        seq_len: int
        threads: int


    def run_config(path=None):
        with open(path or os.environ[RUN_CONFIG_ENV]) as f:
            raw = json.load(f)
        raw["out_dir"], raw["train_bin"] = Path(raw["out_dir"]), Path(raw["train_bin"])
        return RunConfig(**raw)


    def tokens_served():
        return _served


    def make_dataloader(train_bin, batch_size, seq_len, device, seed):
        import torch
        global _served
        tokens = np.fromfile(train_bin, dtype=TOKEN_DTYPE).astype(np.int64)
        budget = None
        if os.environ.get(RUN_CONFIG_ENV):
            config = run_config()
            budget = config.budget_value if config.budget_kind == "tokens" else None
        rng = np.random.default_rng(seed)
        while True:
            if budget is not None and _served + batch_size * seq_len > budget:
                return
            _served += batch_size * seq_len
            starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size)
            rows = np.stack([tokens[s:s + seq_len + 1] for s in starts])
            x, y = torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])
            yield x.to(device), y.to(device)


    def evaluate_bpb(model, val_bin, token_bytes, batch_size, seq_len, device, n_windows):
        import torch
        import torch.nn.functional as F
        tokens = np.fromfile(val_bin, dtype=TOKEN_DTYPE)
        starts = np.linspace(0, len(tokens) - (seq_len + 1), n_windows).round().astype(np.int64)
        table = torch.from_numpy(np.asarray(token_bytes, dtype=np.int64))
        nats, nbytes = 0.0, 0
        model.eval()
        with torch.no_grad():
            for first in range(0, n_windows, batch_size):
                w = np.stack([tokens[s:s + seq_len + 1] for s in starts[first:first + batch_size]])
                w = torch.from_numpy(w.astype(np.int64)).to(device)
                x, y = w[:, :-1], w[:, 1:]
                logits = model(x).float()
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                       reduction="none")
                b = table[y.reshape(-1)]
                nats += float(loss[b > 0].sum())
                nbytes += int(b.sum())
        return nats / (math.log(2) * nbytes)
''')

TRAIN = textwrap.dedent('''
    """Fake train.py: a bigram model; honours the contract, prints a fake val_bpb."""
    import time
    from pathlib import Path

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from prepare import make_dataloader, run_config

    LR = 0.3


    class Bigram(nn.Module):
        def __init__(self, vocab):
            super().__init__()
            self.table = nn.Embedding(vocab, vocab)

        def forward(self, idx):
            return self.table(idx)


    def build_model(run):
        return Bigram(run.vocab_size)


    def main():
        t0 = time.time()
        run = run_config()
        torch.manual_seed(run.seed)
        model = build_model(run)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        steps = tokens = 0
        for x, y in make_dataloader(run.train_bin, 8, 32, run.device, run.seed):
            loss = F.cross_entropy(model(x).reshape(-1, run.vocab_size), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            tokens += x.numel()
            print(f"progress: {tokens / run.budget_value:.4f} loss: {loss.item():.4f}", flush=True)
        torch.save(model.state_dict(), Path(run.out_dir) / "model.pt")
        print("---")
        print("val_bpb:          0.100000")
        print(f"training_seconds: {time.time() - t0:.1f}")
        print("peak_vram_mb:     0.0")
        print(f"total_tokens_M:   {tokens / 1e6:.6f}")
        print(f"num_steps:        {steps}")
        print("num_params_M:     garbage")


    if __name__ == "__main__":
        main()
''')

# Sees the future: every position's logits include the mean embedding of the whole row.
NON_CAUSAL = TRAIN.replace(
    "        return self.table(idx)",
    "        out = self.table(idx)\n"
    "        return out + out.mean(dim=1, keepdim=True)")
assert NON_CAUSAL != TRAIN

# No torch import: these run in a fraction of a second.
NEVER_ENDS = textwrap.dedent('''
    def build_model(run):
        return None

    def main():
        print("training forever", flush=True)
        while True:
            pass

    if __name__ == "__main__":
        main()
''')

RAISES = textwrap.dedent('''
    def build_model(run):
        return None

    def main():
        print("step 1", flush=True)
        raise RuntimeError("loss exploded at step 3")

    if __name__ == "__main__":
        main()
''')

MEMORY_HOG = textwrap.dedent('''
    def build_model(run):
        return None

    def main():
        hoard = []
        while True:
            hoard.append(b"x" * (32 * 2**20))

    if __name__ == "__main__":
        main()
''')

NO_WEIGHTS = textwrap.dedent('''
    def build_model(run):
        return None

    if __name__ == "__main__":
        print("---")
        print("val_bpb: 0.01")
''')


def make_genome(root: Path) -> Path:
    """Write a fake genome directory (prepare.py, train.py, data/) and return it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "prepare.py").write_text(PREPARE)
    (root / "train.py").write_text(TRAIN)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "raw-val.txt").write_text("raw validation text\n")
    return root

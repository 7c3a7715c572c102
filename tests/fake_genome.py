"""A tiny genome that honours the prepare.py / train.py contracts, for fast harness tests.

`make_genome(dir)` writes `prepare.py` (the real one, preparing a tiny patterned corpus
with a 300-token vocabulary), the base `train.py` (a bigram model that trains in well
under a second and then prints a *fake* `val_bpb: 0.1`) and `data/`, the tiny corpus.
Variants of train.py are plain source strings.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

REAL_PREPARE = Path(__file__).resolve().parent.parent / "genome" / "prepare.py"

# The real prepare.py (data feed client, run config, metric), with data prepared from a
# tiny corpus in the fake genome's data/ and a vocabulary of 300 tokens.
PREPARE = REAL_PREPARE.read_text(encoding="utf-8") + textwrap.dedent('''


    def prepare_data(home, dataset="embedded", progress=None, **kwargs):
        """Fake: the real preparation, on a tiny corpus with a tiny vocabulary."""
        return _prepare(Path(home), dataset, progress, vocab_size=300, text_cap=1_000_000)
''')


def _documents(seed: int, count: int) -> list[str]:
    """Patterned text a bigram model learns well: noisy cycles over a small alphabet."""
    import random

    rng = random.Random(seed)
    letters = "abcdefghij"
    docs = []
    for _ in range(count):
        at, out = rng.randrange(10), []
        for _ in range(rng.randrange(300, 600)):
            at = (at + 1) % 10 if rng.random() < 0.8 else rng.randrange(10)
            out.append(letters[at] + (" " if rng.random() < 0.2 else ""))
        docs.append("".join(out))
    return docs


def _write_corpus(data: Path) -> None:
    import hashlib
    import json
    import lzma

    data.mkdir(exist_ok=True)
    sums = []
    for name, seed, count in (("embedded-train.jsonl.xz", 1, 60), ("embedded-val.jsonl.xz", 2, 8)):
        lines = "".join(json.dumps({"name": f"doc{i}", "text": t}) + "\n"
                        for i, t in enumerate(_documents(seed, count)))
        blob = lzma.compress(lines.encode("utf-8"))
        (data / name).write_bytes(blob)
        sums.append(f"{hashlib.sha256(blob).hexdigest()}  {name}\n")
    (data / "SHA256SUMS").write_text("".join(sums))


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
    _write_corpus(root / "data")
    return root

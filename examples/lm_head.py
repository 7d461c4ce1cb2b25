"""Train a small next-word model whose head is HardLinearCrossEntropyLoss, and the same model
with the head materialised (F.cross_entropy(h @ E.T, y)), on the words of Python's own standard
library sources (they ship with every Python). Prints the loss curve of both and the peak
extra memory of one training step of each, measured in a fresh subprocess.

    python examples/lm_head.py [--steps 200] [--quick]

Run time: about 5 min on 2 cores (two runs of 200 steps, then two fresh processes for the
memory; the time a new user measured, 2026-12-06); --steps N scales the training part.

The model: tied word embeddings E (V x D), the mean of the previous 8 words' embeddings
through a 2-layer MLP, then the head h @ E.T over the V-word vocabulary (V ~ 20k).
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import hardloss_cuda as hl

CONTEXT = 8


def corpus(max_words: int) -> tuple[torch.Tensor, int]:
    """Word ids of the standard library's sources (its most frequent words; the rest: id 0)."""
    words = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        words += re.findall(r"[A-Za-z_]+", path.read_text(errors="ignore"))
        if len(words) >= max_words:
            break
    vocab = {w: i + 1 for i, (w, _) in enumerate(collections.Counter(words).most_common(20000))}
    return torch.tensor([vocab.get(w, 0) for w in words[:max_words]]), len(vocab) + 1


class Model(nn.Module):
    def __init__(self, V: int, D: int):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    def hidden(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.emb(ctx).mean(1))


def batches(ids: torch.Tensor, batch: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        start = torch.randint(0, len(ids) - CONTEXT - 1, (batch,), generator=g)
        ctx = torch.stack([ids[s:s + CONTEXT] for s in start.tolist()])
        yield ctx, ids[start + CONTEXT]


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":")) / 1024


def _reset_peak() -> None:
    """Linux: the peak resident set (VmHWM) restarts from the current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")




def train(head: str, steps: int, batch: int, D: int, max_words: int, seed: int = 0, measure: bool = False):
    """The loss curve; with measure, the peak extra resident memory (MB) of the last step instead
    (parameters, gradients and optimizer state exist by then)."""
    ids, V = corpus(max_words)
    torch.manual_seed(seed)
    model = Model(V, D)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = hl.HardLinearCrossEntropyLoss(backend="cpu")
    curve = []
    for i, (ctx, y) in enumerate(batches(ids, batch, steps, seed)):
        if measure and i == steps - 1:
            _reset_peak()  # the corpus and the first steps peaked higher than a step does
            base = _status_mb("VmRSS")
        h = model.hidden(ctx)
        if head == "fused":
            loss = loss_fn(h, model.emb.weight, y)
        else:
            loss = F.cross_entropy(h @ model.emb.weight.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.item())
    if measure:
        return _status_mb("VmHWM") - base  # the same accounting as VmRSS
    return curve


def step_peak_mb(head: str, batch: int, D: int, max_words: int) -> float:
    """Peak extra resident memory of one training step, in a fresh process."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import lm_head; "
            f"print(lm_head._peak({head!r}, {batch}, {D}, {max_words}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _peak(head: str, batch: int, D: int, max_words: int) -> float:
    return train(head, 3, batch, D, max_words, measure=True)


def main(steps: int = 200, batch: int = 1024, D: int = 128, max_words: int = 400_000) -> dict:
    curves = {head: train(head, steps, batch, D, max_words) for head in ("fused", "materialised")}
    every = max(1, steps // 8)
    print(f"{'step':>6s} {'fused':>8s} {'materialised':>13s}")
    for i in range(0, steps, every):
        print(f"{i:6d} {curves['fused'][i]:8.3f} {curves['materialised'][i]:13.3f}")
    peaks = {head: step_peak_mb(head, batch, D, max_words) for head in curves}
    print("peak extra memory of a step: " + json.dumps({k: round(v) for k, v in peaks.items()}) + " MB")
    return {"curves": curves, "peak_mb": peaks}


def run_cli(main, doc: str, quick: dict) -> None:
    """The command line of this example and hf_finetune.py: ``--steps N``, or ``--quick``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--steps", type=int, default=inspect.signature(main).parameters["steps"].default,
                    help="training steps of each run (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="a few steps on a small corpus (the test suite)")
    args = ap.parse_args()
    main(**(quick if args.quick else {"steps": args.steps}))


if __name__ == "__main__":
    run_cli(main, __doc__, dict(steps=20, batch=256, D=32, max_words=50_000))

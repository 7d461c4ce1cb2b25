"""hl.TrimmedStep against a plain training step (issue #32): the time of one step (forward,
backward; no optimizer) of an MLP and of a small nn.TransformerEncoder classifier, at kept
fractions 0.2, 0.5 and 0.9, on both paths ("subset": a no-grad scoring forward of the batch,
then forward and backward of the kept samples; "full": one forward and backward of the batch,
trimmed in the loss), and the break-even fraction where they cost the same. The candidates are
timed in alternating rounds (a slow spell hits all), median per candidate.

    python benchmarks/trimmed_step.py [--quick] [--device cpu] [--threads N]

benchmarks/report.py adds this section to its report (``--no-trimmed-step`` leaves it out).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

import hardloss_cuda as hl

FRACTIONS = (0.2, 0.5, 0.9)


class EncoderClassifier(nn.Module):
    """Token embeddings, a small nn.TransformerEncoder, mean pooling, a linear classifier."""

    def __init__(self, vocab=1000, d=128, heads=4, layers=2, classes=10):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(1))


def cases(device: str, tiny: bool = False):
    """(name, model, inputs, target) of the two models."""
    g = torch.Generator().manual_seed(0)
    n_mlp, width, n_tf, seq, d = (16, 32, 8, 8, 32) if tiny else (512, 512, 64, 32, 64)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(256, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    tf = EncoderClassifier(d=d)
    return [
        (f"MLP 256-{width}-{width}-10, batch {n_mlp}", mlp.to(device),
         torch.randn(n_mlp, 256, generator=g).to(device), torch.randint(0, 10, (n_mlp,), generator=g).to(device)),
        (f"TransformerEncoder 2 x d{tf.head.in_features}, batch {n_tf} x {seq} tokens", tf.to(device),
         torch.randint(0, 1000, (n_tf, seq), generator=g).to(device),
         torch.randint(0, 10, (n_tf,), generator=g).to(device)),
    ]


def _per_sample(out, y):
    return F.cross_entropy(out, y, reduction="none")


def _timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def measure(model, x, y, device: str, repeat: int) -> dict:
    """Median ms per step of each candidate: "plain", "score" (the no-grad scoring forward
    alone), and ("subset" | "full", f) for f in FRACTIONS."""
    model.train()

    def plain():
        F.cross_entropy(model(x), y).backward()

    def score():
        with torch.no_grad():
            model.eval()
            _per_sample(model(x), y)
            model.train()

    candidates = {"plain": plain, "score": score}
    for f in FRACTIONS:
        for mode in ("subset", "full"):
            candidates[mode, f] = functools.partial(hl.TrimmedStep(model, _per_sample, f, mode=mode), x, y)
    times = {name: [] for name in candidates}
    for fn in candidates.values():  # warm-up
        fn()
    for _ in range(repeat):
        for name, fn in candidates.items():
            model.zero_grad(set_to_none=True)
            times[name].append(_timed(fn, device))
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def break_even(ms: dict) -> float:
    """The fraction where the subset path costs what the full one does: subset time fitted as
    a + b f (least squares over FRACTIONS), against the full path's mean time."""
    fs = list(FRACTIONS)
    ts = [ms["subset", f] for f in fs]
    fm, tm = statistics.mean(fs), statistics.mean(ts)
    b = sum((f - fm) * (t - tm) for f, t in zip(fs, ts)) / sum((f - fm) ** 2 for f in fs)
    a = tm - b * fm
    full = statistics.mean(ms["full", f] for f in fs)
    return (full - a) / b if b > 0 else float("inf")


def run(device: str = "cpu", quick: bool = False, tiny: bool = False) -> dict:
    """The section's record: per model its ms per candidate and the break-even."""
    repeat = 1 if tiny else 9 if quick else 21
    rows = []
    for name, model, x, y in cases(device, tiny):
        ms = measure(model, x, y, device, repeat)
        rows.append({"model": name, "plain_ms": ms["plain"], "score_ms": ms["score"], "break_even": break_even(ms),
                     "fractions": [{"f": f, "subset_ms": ms["subset", f], "full_ms": ms["full", f],
                                    "auto": hl.TrimmedStep(model, _per_sample, f).path()} for f in FRACTIONS]})
    return {"device": device, "threads": torch.get_num_threads(), "repeat": repeat,
            "default_break_even": hl.trimmed_step.BREAK_EVEN, "models": rows}


def table(record: dict) -> str:
    lines = [f"TrimmedStep: ms per training step (forward + backward, median of {record['repeat']}), "
             f"{record['device']}, {record['threads']} threads; subset = no-grad scoring forward + the kept "
             f"samples' forward and backward, full = one forward and backward trimmed in the loss; "
             f"auto takes subset below f = {record['default_break_even']}", ""]
    for r in record["models"]:
        lines.append(f"{r['model']}: plain step {r['plain_ms']:.1f} ms, scoring forward {r['score_ms']:.1f} ms, "
                     f"break-even f = {r['break_even']:.2f}")
        for c in r["fractions"]:
            lines.append(f"  f = {c['f']}: subset {c['subset_ms']:.1f} ms "
                         f"({c['subset_ms'] / r['plain_ms']:.2f}x plain), "
                         f"full {c['full_ms']:.1f} ms ({c['full_ms'] / r['plain_ms']:.2f}x), auto: {c['auto']}")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(table(run(args.device, args.quick)))
    print(f"\n({time.perf_counter() - t0:.0f} s)")

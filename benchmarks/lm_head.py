"""An LM head on the CPU, forward+backward, time and peak extra memory of each way to run it:

- ``materialised``: F.cross_entropy(h @ W.T, y), the (N, C) logits and their gradient in memory;
- ``torch-chunked``: PyTorch's F.linear_cross_entropy with LinearCrossEntropyOptions();
- ``hardloss``: hardloss_cuda.linear_cross_entropy (chunked, fused loss);
- ``hardloss k=0.5`` and ``hardloss trim=0.2``: the same with the pseudo-gradient / trimming.

Each runs in a fresh subprocess: the CPU allocator keeps no peak statistics, so the peak is
the process's peak resident set (VmHWM, reset just before the call) minus the resident set
before it (inputs and their gradients allocated and touched). Time: the median of the timed calls after one warm-up.

    python benchmarks/lm_head.py [--n 4096 --d 512 --c 32000 --repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time
import torch, torch.nn.functional as F
import hardloss_cuda as H
name, N, D, C, repeat = sys.argv[1], *map(int, sys.argv[2:6])
g = torch.Generator().manual_seed(0)
h = torch.randn(N, D, generator=g).requires_grad_()
W = (torch.randn(C, D, generator=g) / D**0.5).requires_grad_()
y = torch.randint(0, C, (N,), generator=g)
def run():
    h.grad = W.grad = None
    if name == "materialised":
        loss = F.cross_entropy(h @ W.T, y)
    elif name == "torch-chunked":
        loss = F.linear_cross_entropy(h, W, y, options=torch.nn.LinearCrossEntropyOptions())
    else:
        kw = {"hardloss": {}, "hardloss k=0.5": {"k": 0.5}, "hardloss trim=0.2": {"trim": 0.2}}[name]
        loss = H.linear_cross_entropy(h, W, y, backend="cpu", **kw)
    loss.backward()
def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":")) / 1024
h.grad = torch.zeros_like(h); W.grad = torch.zeros_like(W)  # the gradients count as inputs
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident set (VmHWM) restarts from here: imports peaked elsewhere
base = status_mb("VmRSS")
t0 = time.perf_counter(); run(); first = time.perf_counter() - t0
peak = status_mb("VmHWM") - base
times = []
for _ in range(repeat):
    t0 = time.perf_counter(); run(); times.append(time.perf_counter() - t0)
print(json.dumps({"name": name, "s": statistics.median(times), "first_s": first, "peak_extra_mb": peak}))
"""

NAMES = ["materialised", "torch-chunked", "hardloss", "hardloss k=0.5", "hardloss trim=0.2"]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--c", type=int, default=32000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rows = []
    for name in NAMES:
        out = subprocess.run([sys.executable, "-c", CHILD, name, str(args.n), str(args.d), str(args.c),
                              str(args.repeat)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["s"]
    print(f"LM head fp32, N={args.n} D={args.d} C={args.c}, forward+backward, CPU")
    print(f"{'candidate':20s} {'s':>8s} {'x materialised':>15s} {'peak extra MB':>14s}")
    for r in rows:
        print(f"{r['name']:20s} {r['s']:8.3f} {base / r['s']:15.2f} {r['peak_extra_mb']:14.0f}")
    return rows


if __name__ == "__main__":
    main()

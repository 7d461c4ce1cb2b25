"""Vocab-parallel loss on the CPU with gloo: time per step (forward + backward) and bytes
communicated per step, against gathering the logits.

Each of W ranks (processes) holds an (N, C / W) slice of the logits:

- ``vocab-parallel``: hardloss_cuda.distributed.vocab_parallel_cross_entropy on the slice;
- ``all-gather``: all-gather the slices into the (N, C) logits on every rank, run
  hardloss_cuda.cross_entropy on them and keep the rank's slice of the gradient (what a
  framework without a vocab-parallel loss does);
- ``single process``: hardloss_cuda.cross_entropy on the whole logits in one process with the
  same threads in all (for scale; no communication).

Bytes: the payload each rank hands to the collectives per step, counted by wrapping them (not
computed from a formula); a ring all-reduce moves about 2 (W - 1) / W times its payload over
each rank's link, an all-gather (W - 1) / W times the gathered size. Time: the median of
``--repeat`` steps after one warm-up, fresh logits each step (rotated copies).

    python benchmarks/vocab_parallel.py [--n 4096 --c 32000 --world 2 --repeat 5 --out FILE] [--cases LABEL ...]

The mixture cases hold a dense (C, C) float32 mixture (4 GiB at C = 32000), one shared copy.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import hardloss_cuda as hl  # noqa: E402
from hardloss_cuda import distributed as hld  # noqa: E402

CASES = [  # (label, options); "mixture": True takes the run's (C, C) mixture (_mixture)
    ("k=1", {}),
    ("k=0.5", {"k": 0.5}),
    ("k=1 smoothing=0.1", {"label_smoothing": 0.1}),
    ("k=0.5 smoothing=0.1", {"k": 0.5, "label_smoothing": 0.1}),
    ("k=1 mixture", {"mixture": True}),
    ("k=0.5 mixture", {"k": 0.5, "mixture": True}),
]


def _mixture(C: int) -> torch.Tensor:
    """0.9 on the diagonal plus 0.1 spread at random over the row (a dominant class, as
    smoothing has), float32, in shared memory: one copy for every rank (4 GiB at C = 32000)."""
    W = torch.empty(C, C).share_memory_()
    W.uniform_(generator=torch.Generator().manual_seed(1))
    W.mul_(0.1 / W.sum(1, keepdim=True))
    W.diagonal().add_(0.9)
    return W


def _options(opts: dict, mixture) -> dict:
    return {**opts, "mixture": mixture} if opts.get("mixture") else opts


class _Counter:
    """Wraps the collectives to count the bytes of their payloads."""

    def __init__(self):
        self.bytes = 0
        self.calls = 0
        self._all_reduce = hld._all_reduce
        self._all_gather = dist.all_gather

    def __enter__(self):
        def all_reduce(x, op, group):
            self.bytes += x.numel() * x.element_size()
            self.calls += 1
            return self._all_reduce(x, op, group)

        hld._all_reduce = all_reduce
        return self

    def all_gather(self, out, x, group=None):
        self.bytes += sum(t.numel() * t.element_size() for t in out)
        self.calls += 1
        return self._all_gather(out, x, group=group)

    def __exit__(self, *exc):
        hld._all_reduce = self._all_reduce


def _vocab_parallel(local, y, start, C, counter, opts):
    loss = hld.vocab_parallel_cross_entropy(local, y, class_start=start, num_classes=C, backend="cpu", **opts)
    loss.backward()
    return loss


def _all_gather(local, y, start, C, counter, opts):
    W = dist.get_world_size()
    parts = [torch.empty_like(local) for _ in range(W)]
    counter.all_gather(parts, local.detach().contiguous())
    full = torch.cat(parts, 1).requires_grad_()
    loss = hl.cross_entropy(full, y, backend="cpu", **opts)
    loss.backward()
    local.grad = full.grad[:, start:start + local.shape[1]]
    return loss


def _worker(rank, world, port, args, results, mixture):
    torch.set_num_threads(max(1, args.threads // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    N, C = args.n, args.c
    size = C // world + (1 if rank < C % world else 0)
    start = sum(C // world + (1 if r < C % world else 0) for r in range(rank))
    g = torch.Generator().manual_seed(rank)
    copies = [torch.randn(N, size, generator=g) for _ in range(3)]
    y = torch.randint(0, C, (N,), generator=torch.Generator().manual_seed(0))
    out = {}
    for label, opts in _cases(args):
        opts = _options(opts, mixture)
        for name, step in (("vocab-parallel", _vocab_parallel), ("all-gather", _all_gather)):
            times, cpu, counter = [], [], _Counter()
            for i in range(args.repeat + 1):
                local = copies[i % len(copies)].clone().requires_grad_()
                dist.barrier()
                t0, c0 = time.perf_counter(), time.process_time()
                with _Counter() as c:
                    step(local, y, start, C, c, opts)
                c1 = time.process_time()
                dist.barrier()
                if i:
                    times.append(time.perf_counter() - t0)
                    cpu.append(c1 - c0)
                    counter = c
            out[(label, name)] = (statistics.median(times), counter.bytes, counter.calls)
            out[(label, name, rank)] = statistics.median(cpu)
    results.update({key: v for key, v in out.items() if rank == 0 or len(key) == 3})
    dist.destroy_process_group()


def _cases(args):
    return [(label, opts) for label, opts in CASES if args.cases is None or label in args.cases]


def _single(args, mixture):
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    copies = [torch.randn(args.n, args.c, generator=g) for _ in range(3)]
    y = torch.randint(0, args.c, (args.n,), generator=g)
    out = {}
    for label, opts in _cases(args):
        opts = _options(opts, mixture)
        times, cpu = [], []
        for i in range(args.repeat + 1):
            z = copies[i % 3].clone().requires_grad_()
            t0, c0 = time.perf_counter(), time.process_time()
            hl.cross_entropy(z, y, backend="cpu", **opts).backward()
            if i:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        out[label] = (statistics.median(times), statistics.median(cpu))
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--c", type=int, default=32000)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads in all (split over ranks)")
    ap.add_argument("--out", help="also write the report to this file")
    ap.add_argument("--cases", nargs="+", metavar="LABEL", help=f"only these cases (of {[c for c, _ in CASES]})")
    args = ap.parse_args(argv)

    load = os.getloadavg()
    mixture = _mixture(args.c) if any(opts.get("mixture") for _, opts in _cases(args)) else None
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(args.world, _free_port(), args, results, mixture), nprocs=args.world, join=True)
        results = dict(results)
    single = _single(args, mixture)

    W, N, C = args.world, args.n, args.c
    gathered = N * C * 4
    lines = [
        f"vocab-parallel loss, {W} ranks (gloo, CPU), fp32 logits {N} x {C} ({C // W} classes a rank), "
        f"{args.threads} threads in all, torch {torch.__version__}",
        f"machine: {_cpu_model()}, {os.cpu_count()} cores; {datetime.date.today().isoformat()}; load average "
        f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after (other work shares the cores: times scale with it)",
        f"logits: {gathered / 2**20:.1f} MiB; bytes = payload per rank and step handed to the collectives "
        f"(wrapped and counted)",
        "cpu ms: CPU time a step, of every rank together (time.process_time around the step): unlike the "
        "wall time, it hardly moves with the load",
        "",
        f"{'case':<20} {'way':<16} {'ms/step':>9} {'x single':>9} {'cpu ms':>9} {'x single':>9} {'collectives':>12} "
        f"{'payload B':>12} {'B / row':>8}",
    ]
    for label, _ in _cases(args):
        one, one_cpu = single[label]
        for name in ("vocab-parallel", "all-gather"):
            t, nbytes, calls = results[(label, name)]
            cpu = sum(results[(label, name, r)] for r in range(W))
            lines.append(f"{label:<20} {name:<16} {t * 1e3:9.1f} {one / t:9.2f} {cpu * 1e3:9.1f} {one_cpu / cpu:9.2f} "
                         f"{calls:12d} {nbytes:12d} {nbytes / N:8.1f}")
        lines.append(f"{label:<20} {'single process':<16} {one * 1e3:9.1f} {1.0:9.2f} {one_cpu * 1e3:9.1f} {1.0:9.2f} "
                     f"{0:12d} {0:12d} {0:8.1f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()

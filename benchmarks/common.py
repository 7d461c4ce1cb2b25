"""What the report (report.py) and the pytest-benchmark suite (test_bench.py) share: the
cases, the candidates timed on them, and how one time is taken.

Timing: warm-up excluded; fresh inputs rotated so that a cache holding the
previous call's data does not flatter; the median of the repeats, taken in rounds that
alternate between the candidates of a case (report.py), so that a slow spell of the machine
falls on all of them; on a GPU, CUDA events
around each call, and a device-to-device copy measured in the same run as the bandwidth
ceiling. Bytes floor (docs/CONTRACT.md section 4): forward+backward reads the logits once and writes the
gradient once, 2 N C s bytes; forward alone reads them once, N C s. LM-head cases (hidden
states and a classifier in, matmuls timed too) are reported against the same logits floor.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import hardloss_cuda as H

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


@dataclasses.dataclass(frozen=True)
class Case:
    N: int
    C: int
    dtype: str = "fp32"
    k: float = 1.0
    mixture: bool = False
    trim: float | None = None
    hidden: int = 0  # > 0: an LM-head case, logits = h @ W.T computed inside the timed step
    target: str = "index"  # "index" (class indices), "smooth" (label_smoothing=0.1), "probs"


    @property
    def elem_size(self) -> int:
        return torch.finfo(DTYPES[self.dtype]).bits // 8

    def floor_bytes(self, backward: bool) -> int:
        return (2 if backward else 1) * self.N * self.C * self.elem_size

    def label(self) -> str:
        extra = (" mix" if self.mixture else "") + (f" trim={self.trim:g}" if self.trim else "")
        extra += {"index": "", "smooth": " smooth=0.1", "probs": " probs"}[self.target]
        extra += f" lm-head D={self.hidden}" if self.hidden else ""
        return f"{self.N}x{self.C} {self.dtype} k={self.k:g}{extra}"


def make_inputs(case: Case, device: str, copies: int):
    """`copies` distinct inputs (rotated between calls), targets, and W: the mixture matrix of a
    mixture case, the classifier weight (C, D) of an LM-head case. The inputs are logits
    (N, C), or hidden states (N, D) for an LM-head case; the targets labels with some ignored
    rows, or (N, C) probabilities (a softmax of random scores) for a "probs" case."""
    g = torch.Generator(device=device).manual_seed(0)
    dt = DTYPES[case.dtype]
    width, scale = (case.hidden, 1.0) if case.hidden else (case.C, 2.0)
    xs = [(torch.randn(case.N, width, device=device, generator=g) * scale).to(dt) for _ in range(copies)]
    y = torch.randint(0, case.C, (case.N,), device=device, generator=g)
    y[::17] = -100
    if case.target == "probs":
        y = torch.softmax(torch.randn(case.N, case.C, device=device, generator=g) * 2, 1).to(dt)
    W = None
    if case.hidden:
        W = (torch.randn(case.C, case.hidden, device=device, generator=g) * 2 / case.hidden**0.5).to(dt)
        W.requires_grad_(True)
    if case.mixture:
        # simple_mixture(A, 0.2) = 0.8 I + 0.2 A, built in place: at C = 32000 one C x C matrix is
        # 4 GB, and the out-of-place expression held five of them (the report was OOM-killed)
        A = torch.rand(case.C, case.C, device=device, generator=g).fill_diagonal_(0)
        A /= A.sum(1, keepdim=True)
        W = A.mul_(0.2)
        W.diagonal().add_(0.8)
    return xs, y, W


def _peer(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _backends(device: str) -> list[str]:
    """The library's backends that run on this device as a speed path."""
    def runs(backend):
        if backend == "triton":
            return device == "cuda"  # on the CPU, triton is the interpreter: a test tool
        return backend == "reference" or backend == device
    return [b for b in H.available_backends() if runs(b)]


def candidates(case: Case, device: str) -> dict[str, Callable]:
    """name -> loss function (x, y, W) for everything that runs this case on this device:
    the library's backends, torch's F.cross_entropy (what users would pick instead; with a
    mixture, on the soft targets W[y]), and the peer kernels on the k = 1 case they share."""
    if case.hidden:
        return lm_head_candidates(case, device)
    out = {}
    s = 0.1 if case.target == "smooth" else 0.0
    for backend in _backends(device):
        out[backend] = lambda x, y, W, b=backend: H.cross_entropy(
            x, y, k=case.k, mixture=W, trim=case.trim, label_smoothing=s, backend=b)

    def torch_ce(x, y, W):
        if W is None:
            return F.cross_entropy(x, y, label_smoothing=s)
        keep = y != -100  # probability targets have no ignore_index
        return F.cross_entropy(x[keep], W[y[keep]].to(x.dtype))

    out["torch"] = torch_ce
    plain = case.k == 1 and not case.mixture and not case.trim and case.target == "index"
    if plain and device == "cuda" and _peer("liger_kernel"):
        from liger_kernel.transformers import LigerCrossEntropyLoss

        liger = LigerCrossEntropyLoss()
        out["liger"] = lambda x, y, W: liger(x, y)
    return out


def lm_head_candidates(case: Case, device: str) -> dict[str, Callable]:
    """An LM head, loss(h @ W.T, y), timed whole (matmuls included), as users run it: the
    library on the logits with inplace_backward (no second (N, C) buffer), the library's
    chunked linear_cross_entropy ("<backend>-linear"), F.cross_entropy, PyTorch's chunked
    F.linear_cross_entropy, and the peers that fuse the matmul into the loss (Liger-Kernel's
    fused linear cross-entropy, Cut Cross-Entropy) on the k = 1 case they share."""
    out = {}
    for backend in _backends(device):
        out[backend] = lambda h, y, W, b=backend: H.cross_entropy(
            h @ W.T, y, k=case.k, trim=case.trim, inplace_backward=True, backend=b)
        out[f"{backend}-linear"] = lambda h, y, W, b=backend: H.linear_cross_entropy(
            h, W, y, k=case.k, trim=case.trim, backend=b)
    out["torch"] = lambda h, y, W: F.cross_entropy(h @ W.T, y)
    if hasattr(F, "linear_cross_entropy") and case.k == 1 and not case.trim:  # PyTorch's chunked head
        out["torch-chunked"] = lambda h, y, W: F.linear_cross_entropy(
            h, W, y, options=torch.nn.LinearCrossEntropyOptions())
    if case.k == 1 and not case.trim and device == "cuda":
        if _peer("liger_kernel"):
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            fused = LigerFusedLinearCrossEntropyLoss()
            out["liger"] = lambda h, y, W: fused(W, h, y)
        if _peer("cut_cross_entropy"):
            from cut_cross_entropy import linear_cross_entropy

            out["cce"] = lambda h, y, W: linear_cross_entropy(h, W, y)
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(step: Callable[[torch.Tensor], None], xs: list, device: str, warmup: int, repeat: int) -> float:
    """Median time of step(x) in ms over `repeat` calls, x rotating through xs."""
    return statistics.median(time_samples(step, xs, device, warmup, repeat))


def time_samples(step: Callable[[torch.Tensor], None], xs: list, device: str, warmup: int, repeat: int) -> list:
    """The times of `repeat` calls of step(x) in ms, after `warmup` untimed ones."""
    for i in range(warmup):
        step(xs[i % len(xs)])
    sync(device)
    times = []
    for i in range(repeat):
        x = xs[i % len(xs)]
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step(x)
            times.append(1e3 * (time.perf_counter() - t0))
    return times


def make_step(fn: Callable, y, W, backward: bool) -> Callable[[torch.Tensor], None]:
    """One forward (and backward) call of a candidate on logits x."""
    if not backward:
        def fwd(x):
            with torch.no_grad():
                fn(x, y, W)
        return fwd

    def fwd_bwd(x):
        x.grad = None
        if W is not None and W.requires_grad:  # an LM head's classifier: its gradient too
            W.grad = None
        fn(x, y, W).backward()
    return fwd_bwd


def peak_extra_mb(step: Callable, x, device: str) -> float | None:
    """Peak memory above what was allocated before the call, in MB (CUDA only: the CPU
    allocator keeps no such statistics)."""
    if device != "cuda":
        return None
    sync(device)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(x)
    sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_gbps(device: str, nbytes: int = 2**30, repeat: int = 20) -> float | None:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    if device != "cuda":
        return None
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda s: dst.copy_(s), [src], device, warmup=3, repeat=repeat)
    return 2 * nbytes / (ms * 1e-3) / 1e9

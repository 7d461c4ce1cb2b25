"""The vocab-parallel loss (hardloss_cuda.distributed) in real multi-process groups: gloo on the
CPU, 2 and 3 ranks, uneven slices (one of them empty, one layout out of rank order). Every rank
computes the single-process ``cross_entropy`` of the whole logits with the same backend and
checks its own slice of the gradient and the loss against it: 1e-12 in float64, 1e-6 in
float32, for k = 1, 0.5, 2, with weights, ignore_index, smoothing, mixtures, trimming, softcap,
z-loss and lse, every reduction, in place, through a DTensor and under torch.compile. The shard statistics op itself
is checked against the reference on every backend."""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (CPU tensors)

import socket
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hardloss_cuda as hl
from hardloss_cuda import _library, _torch_rows
from hardloss_cuda._ops import bwd_op, fwd_op, shard_stats_op, soft_shard_grad_op, soft_shard_stats_op
from hardloss_cuda.distributed import vocab_parallel_cross_entropy

from .fuzz_oracle import soft_cancel_rtol
from ._backends import backend_devices, cpu_backends
from .conftest import api_backends

N, C = 13, 37
# (class_start, size) per rank; "given" layouts pass class_start, the others let the ranks find it.
LAYOUTS = {
    2: [("even", [(0, 17), (17, 20)], False), ("reversed", [(20, 17), (0, 20)], True)],
    3: [("uneven", [(0, 5), (5, 15), (20, 17)], False), ("empty", [(0, 20), (20, 0), (20, 17)], True)],
}
OPTIONS = [
    {},
    {"weight": True, "ignore": True},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.2, "weight": True, "ignore": True, "softcap": 5.0},
    {"trim": 0.5, "weight": True},
    {"softcap": 3.0, "z_loss": 1e-2, "return_lse": True, "ignore": True},
    {"mixture": True},
    {"trim": 0.4, "label_smoothing": 0.1, "z_loss": 1e-3},
]
REDUCTIONS = ("mean", "sum", "none")
# Soft rows through the kernels (distributed._SoftShard) on every CPU-side backend, cuda_emu and bf16
# included: a mixture whose rows all have a dominant class (0.95 on the diagonal: one at k = 1 too),
# smoothing at k != 1, ignored rows, a NaN row, softcap.
SOFT_OPTIONS = [
    {"mixture": "dominant", "ignore": True, "nan": True},
    {"label_smoothing": 0.05, "weight": True, "ignore": True, "nan": True, "softcap": 5.0, "z_loss": 1e-2},
]


def _data(seed: int, dtype: torch.dtype, opts: dict):
    """Full logits with ties, a large row and -inf classes, labels, weight, mixture; the same on
    every rank."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, C, generator=g, dtype=torch.float64) * 2
    z[0] = 0.5  # ties
    z[1] *= 15  # confident
    target = torch.randint(0, C, (N,), generator=g)
    z[2, (torch.arange(C) != target[2]) & (torch.arange(C) % 3 == 0)] = float("-inf")
    if opts.get("ignore"):
        target[3] = target[7] = -100
    if opts.get("nan"):
        z[5, 0] = float("nan")
    weight = torch.rand(C, generator=g, dtype=torch.float64) + 0.5 if opts.get("weight") else None
    mixture = None
    if opts.get("mixture"):
        mixture = torch.softmax(torch.randn(C, C, generator=g, dtype=torch.float64) * 3, 1)
        if opts["mixture"] == "dominant":
            mixture = 0.05 * mixture + 0.95 * torch.eye(C, dtype=torch.float64)
    grad_out = torch.randn(N, generator=g, dtype=torch.float64)
    return z.to(dtype), target, weight, mixture, grad_out


def _kwargs(opts, weight, mixture, k, reduction):
    kw = dict(weight=weight, mixture=mixture, k=k, reduction=reduction)
    for name in ("label_smoothing", "trim", "softcap", "z_loss", "return_lse"):
        if name in opts:
            kw[name] = opts[name]
    return kw


def _tol(dtype):
    return {torch.float64: 1e-12, torch.float32: 1e-6}.get(dtype, 2e-2)


def _check(name, got, want, dtype, cancel=None):
    """got against want within the dtype's tolerance; ``cancel``: an extra relative tolerance
    per element (_cancel_tol)."""
    tol = _tol(dtype)
    scale = want.detach().abs().nan_to_num(posinf=0).max().item() if want.numel() else 1.0
    if cancel is not None:  # assert_close takes one rtol: the elements' own bound first
        extra = want.detach().double().abs() * cancel
        near = (got.detach().double() - want.detach().double()).abs() <= extra
        got = torch.where(near, want.detach(), got)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(scale, 1.0), equal_nan=True,
                               msg=lambda m: f"{name}: {m}")


def _cancel_tol(z, target, weight, mixture, ignore_index, s, k, softcap, dtype):
    """Per element of a soft row at k != 1, the relative error each of two fp32 evaluations
    of |eps_j|^k may carry where eps_j = p_j - q_j / t cancels (fuzz_oracle.soft_cancel_rtol).
    The single-device kernel takes log p from the row max and log s, the vocab-parallel one
    from the global lse: at p_j / |eps_j| = 4e4 (seed 83) they differed by 0.46%, both within
    this of the float64 truth. None for one-hot rows, k = 1 and float64."""
    if k == 1 or dtype == torch.float64 or (mixture is None and s == 0):
        return None
    zc = z.double() if not softcap else hl._torch_rows.softcap_logits(z.double(), softcap)
    q = hl._torch_rows.target_rows(z.shape[1], target, None if weight is None else weight.double(),
                                   None if mixture is None else mixture.double(), ignore_index, s, torch.float64)
    return soft_cancel_rtol(zc, q, k, torch.finfo(torch.float32).eps / 2)


def _backward(out, grad_out, reduction):
    loss = out[0] if isinstance(out, tuple) else out
    lse_term = out[1].sum() * 0.25 if isinstance(out, tuple) else 0
    (loss * grad_out.to(loss.dtype) if reduction == "none" else loss).sum().add(lse_term).backward()


def _run_case(rank, world, layout, given, backend, dtype, opts, k, reduction, seed, inplace=False):
    start, size = layout[rank]
    z, target, weight, mixture, grad_out = _data(seed, dtype, opts)
    kw = _kwargs(opts, weight, mixture, k, reduction)
    full = z.clone().requires_grad_()
    want = hl.cross_entropy(full, target, backend=backend, ignore_index=-100, **kw)
    _backward(want, grad_out, reduction)

    leaf = z[:, start:start + size].clone().requires_grad_()
    local = leaf * 1 if inplace else leaf  # in place needs a non-leaf
    if inplace:
        local.retain_grad()
    got = vocab_parallel_cross_entropy(local, target, class_start=start if given else None, backend=backend,
                                       inplace_backward=inplace, **kw)
    _backward(got, grad_out, reduction)
    case = f"rank {rank}/{world} {backend} {dtype} k={k} {reduction} {opts} slice {start}:{start + size} seed {seed}"
    for a, b, what in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,),
                          ("loss", "lse")):
        _check(f"{case} {what}", a, b, dtype)
    cancel = _cancel_tol(z, target, weight, mixture, -100, opts.get("label_smoothing", 0.0), k, opts.get("softcap"), dtype)
    _check(f"{case} grad", leaf.grad, full.grad[:, start:start + size], dtype,
           None if cancel is None else cancel[:, start:start + size])


def _inplace_needs_logits_raises(rank, layout, opts, k):
    """In place, when autograd still needs the logits after our backward (a node created
    before ours reads them later): autograd's in-place error, never a wrong gradient. An
    empty slice writes nothing."""
    start, size = layout[rank]
    z, target, weight, _mixture, _grad_out = _data(7, torch.float64, opts)
    leaf = z[:, start:start + size].clone().requires_grad_()
    local = leaf * 2
    loss = (local**2).mean() + vocab_parallel_cross_entropy(
        local, target, class_start=start, weight=weight, label_smoothing=opts.get("label_smoothing", 0.0), k=k,
        inplace_backward=True, backend="cpu")
    if size == 0:  # nothing is written: the backward runs
        loss.backward()
        return
    try:
        loss.backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e), str(e)
    else:
        raise AssertionError(f"rank {rank} {opts} k={k}: in place over logits autograd needs did not raise")


def _spawn(fn, world, *args):
    """mp.spawn of ``world`` ranks. The children unpickle ``fn`` by its module name,
    tests.test_distributed, from the parent's sys.path. Under --import-mode=importlib from
    outside the tree (the wheel check) no directory on it holds tests/, and the tree's root
    cannot be added without shadowing the installed hardloss_cuda: a directory holding only a
    link to tests/ goes first while they start."""
    with tempfile.TemporaryDirectory() as d:
        os.symlink(Path(__file__).resolve().parent, Path(d) / "tests")
        sys.path.insert(0, d)
        try:
            mp.spawn(fn, args=(world, *args), nprocs=world, join=True)
        finally:
            sys.path.remove(d)


def _backends():
    return cpu_backends(leave_out=("cuda_emu",))


def _dtensor_case(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    z, target, weight, _mix, _g = _data(7, torch.float64, {"weight": True})
    for k in (1.0, 0.5):
        full = z.clone().requires_grad_()
        hl.cross_entropy(full, target, weight=weight, k=k, backend="cpu").backward()
        dz = distribute_tensor(z.clone(), mesh, [Shard(1)]).requires_grad_()
        loss = vocab_parallel_cross_entropy(dz, target, weight=weight, k=k, backend="cpu")
        loss.backward()
        _check(f"dtensor rank {rank} k={k} loss", loss, hl.cross_entropy(z, target, weight=weight, k=k), torch.float64)
        _check(f"dtensor rank {rank} k={k} grad", dz.grad.full_tensor(), full.grad, torch.float64)


def _autocast_case(rank, world, layout):
    """Under autocast, half logits give a float32 loss as cross_entropy's (autocast's float32
    list), and their gradient in their own dtype; the loss equals cross_entropy's there."""
    start, size = layout[rank]
    z, target, _w, _mix, _g = _data(13, torch.bfloat16, {})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for kw in ({"k": 0.5}, {"label_smoothing": 0.1, "k": 0.5}):
            want = hl.cross_entropy(z, target, backend="cpu", **kw)
            local = z[:, start:start + size].clone().requires_grad_()
            got = vocab_parallel_cross_entropy(local, target, backend="cpu", **kw)
            assert got.dtype == want.dtype == torch.float32, (got.dtype, want.dtype)
            _check(f"autocast rank {rank} {kw}", got, want, torch.bfloat16)
            got.backward()
            assert local.grad.dtype == torch.bfloat16


def _compile_case(rank, world, layout):
    """torch.compile(fullgraph=True) with the layout given (no host exchange): the functional
    collectives trace. (aot_eager keeps CI fast; inductor gives the same result.)"""
    start, size = layout[rank]
    z, target, weight, _mix, _g = _data(11, torch.float64, {"weight": True})
    for kw in ({"k": 0.5, "weight": weight}, {"label_smoothing": 0.1}, {"softcap": 4.0, "z_loss": 1e-2}):
        full = z.clone().requires_grad_()
        want = hl.cross_entropy(full, target, backend="cpu", **kw)
        want.backward()
        local = z[:, start:start + size].clone().requires_grad_()
        fn = torch.compile(lambda a, t: vocab_parallel_cross_entropy(a, t, class_start=start, num_classes=C,
                                                                     backend="cpu", **kw),
                           fullgraph=True, backend="aot_eager")
        got = fn(local, target)
        got.backward()
        _check(f"compiled rank {rank} {kw.keys()} loss", got, want, torch.float64)
        _check(f"compiled rank {rank} {kw.keys()} grad", local.grad, full.grad[:, start:start + size], torch.float64)


def _errors(rank, world, layout):
    start, size = layout[rank]
    z, target, *_ = _data(3, torch.float64, {})
    local = z[:, start:start + size]
    with pytest.raises(ValueError, match="do not tile"):
        vocab_parallel_cross_entropy(local, target, class_start=0)  # every rank claims class 0
    bad = target.clone()
    bad[4] = C
    with pytest.raises(ValueError, match="outside"):
        vocab_parallel_cross_entropy(local, bad)
    with pytest.raises(ValueError, match="probability"):
        vocab_parallel_cross_entropy(local, torch.softmax(z, 1))


def _one_class_case(rank, world):
    """C = 1, held by the last rank (the others' slices are empty), smoothed at k = 1: p is
    exactly 1 and q = t, so the gradient is the z-loss's alone (a lse^2 per row, unweighted).
    It once carried ulps of the incoming gradient from t p - q, with t and q rounded apart
    under a class weight (fuzz seed 1401212950); the truth here is its one-line float64
    formula, to 4 ulp."""
    size = 1 if rank == world - 1 else 0
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 1, generator=g, dtype=torch.float64) * 3
    gout = torch.randn(16, generator=g, dtype=torch.float64)
    target = torch.zeros(16, dtype=torch.long)
    # a weight w whose t = s w + (1 - s) w rounds away from q = w: most weights round to w
    w = next(w for w in (0.2 + 2.8 * torch.rand(200, generator=g, dtype=torch.float64)).tolist()
             if 0.01 * w + 0.99 * w != w)
    weights = (None, torch.tensor([w], dtype=torch.float64))
    for backend, cap, weight in itertools.product(_backends(), (None, 1e4, 2.0), weights):
        local = x[:, :size].clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(local, target, class_start=0, num_classes=1, label_smoothing=0.01,
                                            weight=weight, softcap=cap, z_loss=0.01, reduction="none",
                                            backend=backend)
        (loss * gout).sum().backward()
        if not size:
            continue
        t = torch.tanh(x / cap) if cap else None
        z, slope = (cap * t, 1 - t * t) if cap else (x, torch.ones_like(x))
        want = gout[:, None] * 2 * 0.01 * z * slope  # d/dx of 0.01 lse^2, lse = z
        err = (local.grad - want).abs().max().item()
        assert err <= 4 * 2.0**-52 * want.abs().max().item(), (backend, cap, weight, err, local.grad[:3], want[:3])


def _masked_slice_case(rank, world, layout):
    """A row whose classes on the first rank are all -inf, with target mass there (label
    smoothing, a mixture), at k = 2 and k = 1: the slice is a bad row to its own kernel (NaN),
    yet in the whole row those classes only have probability 0, so the loss is +inf, as one
    device gives (fuzz seed 290606759 got NaN); the other rows and every gradient as there."""
    start, size = layout[rank]
    first = layout[0][1]
    z, target, _w, _mix, _g = _data(17, torch.float64, {})
    z[4, :first] = float("-inf")
    target[4] = C - 1
    mixture = torch.softmax(torch.randn(C, C, generator=torch.Generator().manual_seed(3), dtype=torch.float64), 1)
    for backend, kw, k in itertools.product(cpu_backends(), ({"label_smoothing": 0.01}, {"mixture": mixture}),
                                            (2.0, 1.0)):
        full = z.clone().requires_grad_()
        want = hl.cross_entropy(full, target, backend=backend, k=k, reduction="none", **kw)
        want[torch.arange(N) != 4].sum().backward()
        local = z[:, start:start + size].clone().requires_grad_()
        got = vocab_parallel_cross_entropy(local, target, class_start=start, num_classes=C, backend=backend, k=k,
                                           reduction="none", **kw)
        assert got[4] == want[4] == float("inf"), (backend, kw, k, got[4], want[4])
        got[torch.arange(N) != 4].sum().backward()
        _check(f"masked slice rank {rank} {backend} {list(kw)} k={k} loss", got, want, torch.float64)
        _check(f"masked slice rank {rank} {backend} {list(kw)} k={k} grad", local.grad,
               full.grad[:, start:start + size], torch.float64)


def _retain_graph_case(rank, world, layout):
    """Two backwards through one graph (retain_graph=True): the first writes the gradient over
    what the forward held for it (float32 / float64; distributed.py _SoftShard: the kept pass at
    k != 1, a mixture's q at k = 1), the second must rebuild that, not read the first's gradient
    as k log|eps| or as q."""
    start, size = layout[rank]
    for dtype, backend, kw in itertools.product(
            (torch.float64, torch.float32, torch.bfloat16), ("cpu", "reference"),
            ({"label_smoothing": 0.1, "k": 0.5}, {"mixture": "dominant", "k": 1.0})):
        z, target, weight, mixture, _g = _data(23, dtype, {"weight": True, "mixture": kw.get("mixture")})
        kw = {**kw, "mixture": mixture} if "mixture" in kw else kw
        full = z.clone().requires_grad_()
        hl.cross_entropy(full, target, weight=weight, backend=backend, reduction="sum", **kw).backward()
        local = z[:, start:start + size].clone().requires_grad_()
        got = vocab_parallel_cross_entropy(local, target, weight=weight, backend=backend, reduction="sum", **kw)
        got.backward(retain_graph=True)
        first = local.grad.clone()
        got.backward()
        _check(f"retain_graph rank {rank} {dtype} {backend} {list(kw)} first", first, full.grad[:, start:start + size],
               dtype)
        _check(f"retain_graph rank {rank} {dtype} {backend} {list(kw)} second", local.grad - first, first, dtype)


def _worker(rank, world, port, quick):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        seed = 0
        for li, (_name, layout, given) in enumerate(LAYOUTS[world]):
            for backend in _backends():
                for dtype in (torch.float64, torch.float32):
                    for oi, opts in enumerate(OPTIONS):
                        for k in (1.0, 0.5, 2.0):
                            seed += 1
                            if quick and backend == "triton" and (seed % 3):
                                continue  # the interpreter is slow: a third of the cases
                            reduction = REDUCTIONS[(oi + li + int(k * 2)) % 3]
                            _run_case(rank, world, layout, given, backend, dtype, opts, k, reduction, seed)
            for opts in ({}, {"label_smoothing": 0.1, "weight": True}):
                for k in (1.0, 0.5):  # one-hot; smoothing fused (k = 1) and composed
                    _run_case(rank, world, layout, given, "cpu", torch.float64, opts, k, "mean", 99, inplace=True)
                    _inplace_needs_logits_raises(rank, layout, opts, k)
            _run_case(rank, world, layout, given, "cpu", torch.bfloat16, {"weight": True}, 0.5, "mean", 5)
            if li == len(LAYOUTS[world]) - 1:  # the last layout (uneven, one empty slice at 3 ranks)
                for backend, dtype, opts, k in itertools.product(cpu_backends(), (torch.float64, torch.float32,
                                                                                   torch.bfloat16), SOFT_OPTIONS,
                                                                 (0.5, 2.0, 1.0)):
                    seed += 1
                    if quick and backend == "triton" and (seed % 3):
                        continue
                    _run_case(rank, world, layout, given, backend, dtype, opts, k, REDUCTIONS[seed % 3], seed,
                              inplace=dtype == torch.bfloat16 and backend != "reference")
        _one_class_case(rank, world)
        _masked_slice_case(rank, world, LAYOUTS[world][0][1])
        _retain_graph_case(rank, world, LAYOUTS[world][0][1])
        _dtensor_case(rank, world)
        _autocast_case(rank, world, LAYOUTS[world][0][1])
        _compile_case(rank, world, LAYOUTS[world][0][1])
        _errors(rank, world, LAYOUTS[world][0][1])
        dist.barrier()  # no rank tears its group down while a peer's last transfer is in flight
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 3])
def test_vocab_parallel_matches_single_process(world):
    _spawn(_worker, world, _free_port(), True)


def _gpu_worker(rank, world, port):
    """One GPU: an NCCL group of one rank, the cuda and Triton backends on CUDA tensors (the
    same code path as gloo apart from the process group's backend)."""
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    try:
        for backend in [b for b, d in backend_devices(leave_out=[("reference", "cuda")]) if d == "cuda"]:
            for dtype in (torch.float32, torch.bfloat16):
                for opts, k in (({"weight": True, "ignore": True}, 0.5), ({"label_smoothing": 0.1}, 1.0),
                                ({"softcap": 3.0, "z_loss": 1e-2, "return_lse": True}, 2.0)):
                    z, target, weight, mixture, grad_out = _data(21, dtype, opts)
                    z, target = z.cuda(), target.cuda()
                    kw = _kwargs(opts, None if weight is None else weight.cuda(), None, k, "none")
                    full = z.clone().requires_grad_()
                    want = hl.cross_entropy(full, target, backend=backend, **kw)
                    _backward(want, grad_out.cuda(), "none")
                    local = z.clone().requires_grad_()
                    got = vocab_parallel_cross_entropy(local, target, backend=backend, **kw)
                    _backward(got, grad_out.cuda(), "none")
                    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                        _check(f"nccl {backend} {dtype} {opts}", a, b, dtype)
                    _check(f"nccl {backend} {dtype} {opts} grad", local.grad, full.grad, dtype)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not (torch.cuda.is_available() and dist.is_nccl_available()), reason="needs a GPU and NCCL")
def test_vocab_parallel_nccl_one_gpu():
    _spawn(_gpu_worker, 1, _free_port())


@api_backends()
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 2, 3, 1000])
def test_shard_stats_op(backend, device, dtype, C):
    """(m, s1, sk) over the classes but the target (every class for a target outside [0, C))
    against the reference, with -inf classes, softcap and k != 1."""
    g = torch.Generator().manual_seed(C)
    z = (torch.randn(11, C, generator=g) * 4).to(device, dtype)
    z[0] = float("-inf")
    z[1, ::2] = float("-inf")
    y = torch.randint(-2, C + 2, (11,), generator=g).to(device)
    for k, cap in ((1.0, 0.0), (0.5, 0.0), (3.0, 5.0)):
        want = shard_stats_op("reference")(z.cpu(), y.cpu(), k, cap)
        got = shard_stats_op(backend)(z, y, k, cap).cpu()
        assert got.shape == (11, 3) and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-12 if dtype == torch.float64 else 2e-6, atol=0)



def _lse_values(raw):
    """soft_shard_stats' (m, s) pairs as log-sums (backends may split a sum differently), and sum q."""
    def v(m, s):
        return torch.where(m == -float("inf"), m, m + torch.log(s))
    return torch.stack([v(raw[:, 0], raw[:, 1]), v(raw[:, 2], raw[:, 3]), v(raw[:, 4], raw[:, 5]), raw[:, 6]], 1)


def _soft_targets(kind, N, C, g, dtype):
    """(target, weight, mixture, label_smoothing) of a soft case, the mixture's rows dominant."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    y = torch.randint(0, C, (N,), generator=g)
    y[1], y[2] = -100, C  # ignored, bad
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(acc)
    if kind == "mixture":
        mix = 0.05 * torch.softmax(torch.randn(C, C, generator=g, dtype=torch.float64), 1) + 0.95 * torch.eye(C)
        return y, w, mix.to(acc), 0.0
    if kind == "probs":
        return torch.softmax(torch.randn(N, C, generator=g) * 3, 1).to(dtype), None, None, 0.0
    return y, w, None, 0.1


@api_backends()
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 3, 300])
def test_soft_shard_stats_op(backend, device, dtype, C):
    """soft_shard_stats against the reference on every backend (its (m, s) pairs compared as
    log-sums), for a mixture with dominant classes, smoothing and probabilities, k = 1, 0.5, 3,
    softcap, -inf classes, ignored and bad labels. Then the statistics of two slices of the
    classes merged (as distributed._soft_raw_reduce) and finalised (_torch_rows.soft_cols) against
    the CUDA kernels' own finalise of whole rows (cuda_emu's fwd, the complete form)."""
    g = torch.Generator().manual_seed(C)
    N = 9
    z = torch.randn(N, C, generator=g, dtype=torch.float64) * 3
    z[3, ::2] = float("-inf")
    z[4, 0] = 40.0  # confident
    z = z.to(dtype)
    tight = dtype == torch.float64
    for kind, k, cap in (("mixture", 0.5, 0.0), ("mixture", 1.0, 5.0), ("smooth", 3.0, 5.0), ("smooth", 1.0, 0.0),
                         ("probs", 0.5, 5.0), ("probs", 3.0, 0.0)):
        target, w, mix, s = _soft_targets(kind, N, C, g, dtype)
        _loss, given = fwd_op("reference")(z, target, w, mix, -100, s, k, True, cap)
        args = (target, w, mix, given, -100, s, k, cap)
        want = soft_shard_stats_op("reference")(z, *args)
        got = soft_shard_stats_op(backend)(z.to(device), *(a.to(device) if isinstance(a, torch.Tensor) else a
                                                          for a in args)).cpu()
        assert got.shape == (N, 7) and got.dtype == want.dtype, (got.shape, got.dtype)
        # in float32 |eps| = |p - q / t| carries p's rounding where the two nearly cancel: k log|eps| too
        torch.testing.assert_close(_lse_values(got), _lse_values(want), rtol=1e-10 if tight else 1e-4,
                                   atol=1e-12 if tight else 2e-5, equal_nan=True, msg=lambda m: f"{kind} {k} {cap}: {m}")
        if C < 2 or _library.CUDA_EMU is None or kind == "probs":
            continue
        kernels = fwd_op("cuda_emu")(z, target, w, mix, -100, s, k, True, cap)[1]
        parts = []
        for cols in (slice(0, C // 2), slice(C // 2, C)):  # the slices' own targets: probabilities
            q = _torch_rows.target_rows(C, target, w, mix, -100, s, want.dtype)[:, cols]
            parts.append(soft_shard_stats_op(backend)(z[:, cols].to(want.dtype).to(device), q.to(device), None,
                                                      None, kernels.to(device), -100, 0.0, k, cap).cpu())
        (a, b) = parts
        M = torch.maximum(a[:, 0:6:2], b[:, 0:6:2])
        shift = torch.where(M == -float("inf"), 0, M)
        S = a[:, 1:6:2] * torch.exp(a[:, 0:6:2] - shift) + b[:, 1:6:2] * torch.exp(b[:, 0:6:2] - shift)
        raw = (M[:, 0], S[:, 0], M[:, 1], S[:, 1], M[:, 2], S[:, 2], a[:, 6] + b[:, 6])
        star = kernels[:, 5] == 1
        cols = torch.stack(_torch_rows.soft_cols(kernels[:, 2], star, k, kernels[:, 0], raw), 1)
        valid = (target >= 0) & (target < C)
        torch.testing.assert_close(cols[valid], kernels[valid, 2:], rtol=1e-9 if tight else 2e-4,
                                   atol=1e-12 if tight else 1e-6, equal_nan=True,
                                   msg=lambda m: f"merged {kind} {k} {cap}: {m}")


@api_backends()
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 3, 300])
def test_soft_shard_kept_op(backend, device, dtype, C):
    """soft_shard_stats' kept pass and soft_shard_grad (_schema.py) on every backend: keeping
    leaves the seven statistics as they are; the kept (k log|eps|, side) give the reference's
    f_j (soft_kept_f); soft_shard_grad equals the same backend's bwd given the same complete
    stats (the pass it saves), with grad_lse, softcap, an ignored row (g 0), a bad label (g NaN),
    a trimmed row (g 0), and out over eps itself where the dtypes allow."""
    g = torch.Generator().manual_seed(C + 11)
    N = 9
    z = torch.randn(N, C, generator=g, dtype=torch.float64) * 3
    z[3, ::2] = float("-inf")
    z[4, 0] = 40.0  # confident
    z = z.to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    tight = dtype == torch.float64
    on = lambda a: a.to(device) if isinstance(a, torch.Tensor) else a  # noqa: E731
    grad_op, kept_f = soft_shard_grad_op(backend), _torch_rows.soft_kept_f
    for kind, k, cap, with_lse in (("mixture", 0.5, 0.0, False), ("smooth", 3.0, 5.0, True),
                                   ("probs", 0.5, 5.0, False), ("mixture", 2.0, 0.0, True)):
        target, w, mix, s = _soft_targets(kind, N, C, g, dtype)
        _loss, stats = fwd_op("reference")(z, target, w, mix, -100, s, k, True, cap)  # the complete form
        args = (target, w, mix, stats, -100, s, k, cap)
        kept = {}
        for b in dict.fromkeys(("reference", backend)):
            eps = torch.full((N, C), 7.0, dtype=acc, device=device)
            side = torch.full((N, C), 9, dtype=torch.int8, device=device)
            raw = soft_shard_stats_op(b)(on(z), *map(on, args), eps, side)
            torch.testing.assert_close(raw, soft_shard_stats_op(b)(on(z), *map(on, args)), rtol=0, atol=0,
                                       equal_nan=True, msg=lambda m: f"{b} {kind} {k}: keeping changed: {m}")
            kept[b] = eps.cpu(), side.cpu()
        (e_ref, s_ref), (e_got, s_got) = kept["reference"], kept[backend]
        assert set(s_got.unique().tolist()) <= {0, 1, 2} and ((s_got == 2).sum(1) <= 1).all()
        torch.testing.assert_close(kept_f(e_got, s_got, stats), kept_f(e_ref, s_ref, stats), equal_nan=True,
                                   rtol=1e-10 if tight else 1e-4, atol=1e-12 if tight else 1e-5,
                                   msg=lambda m: f"{kind} {k} {cap}: f from the kept pass: {m}")
        gl = torch.randn(N, generator=g, dtype=torch.float64).to(acc)
        if kind != "probs":
            gl[1], gl[2] = 0.0, float("nan")  # ignored, bad (as distributed.py hands them)
        gl[5] = 0.0  # a trimmed row
        glse = torch.randn(N, generator=g, dtype=torch.float64).to(acc) if with_lse else None
        if with_lse and kind != "probs":
            glse[1] = 0.0  # ignored
        want = bwd_op(backend)(on(gl), on(z), *map(on, args[:4]), -100, s, k, cap, on(glse)).cpu()
        eps, side = (on(x) for x in kept[backend])
        out = eps if dtype == acc else torch.empty_like(on(z))
        grad_op(on(gl), eps, side, on(z), on(stats), out, cap, on(glse))
        rtol, atol = (1e-10, 1e-12) if tight else ((1e-5, 1e-6) if dtype == torch.float32 else (1e-2, 1e-5))
        torch.testing.assert_close(out.cpu(), want, rtol=rtol, atol=atol, equal_nan=True,
                                   msg=lambda m: f"{kind} {k} {cap} lse={with_lse}: soft_shard_grad against bwd: {m}")


def test_benchmark_counts_the_bytes(tmp_path):
    """benchmarks/vocab_parallel.py on a small problem: the one-hot and k = 1 smoothing rows hand
    16 bytes a row to the collectives, the other soft rows 52 in 4 collectives, gathering hands
    over the whole logits."""
    import subprocess

    n, c, out = 64, 300, tmp_path / "r.txt"
    script = Path(__file__).parents[1] / "benchmarks" / "vocab_parallel.py"
    subprocess.run([sys.executable, str(script), "--n", str(n), "--c", str(c), "--repeat", "1", "--threads", "2",
                    "--out", str(out)], check=True, timeout=300, capture_output=True)
    rows = {(line[:20].strip(), line[21:37].strip()): line[37:].split() for line in out.read_text().splitlines()[6:]}
    for case in ("k=1", "k=0.5", "k=1 smoothing=0.1"):
        _ms, _x, _cpu, _x_cpu, calls, payload, per_row = rows[(case, "vocab-parallel")]
        assert int(calls) in (2, 3) and int(payload) == 16 * n and float(per_row) == 16.0, (case, rows[(case, "vocab-parallel")])
        assert int(rows[(case, "all-gather")][5]) == n * c * 4
    for case in ("k=0.5 smoothing=0.1", "k=1 mixture", "k=0.5 mixture"):  # _SoftShard: 13 values a row
        _ms, _x, _cpu, _x_cpu, calls, payload, per_row = rows[(case, "vocab-parallel")]
        assert int(calls) == 4 and int(payload) == 52 * n, (case, rows[(case, "vocab-parallel")])

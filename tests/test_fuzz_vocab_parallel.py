"""Differential fuzz of ``vocab_parallel_cross_entropy`` in real gloo groups of 2 and 3 ranks
against the float64 truth of the whole logits: a fixed number of random cases a run (fresh
seeds, printed on failure), each with a random layout (uneven slices, an empty one, slices out
of rank order, the layout given or found), dtype, backend, options (class weights, ignored
rows, smoothing, mixtures, trimming, k, softcap, z-loss, the returned lse, every reduction,
in place) and logits (ordinary, confident, tied, -inf masked, huge). Each rank checks the loss,
the lse and its own slice of the gradient with tests/fuzz_oracle.py's ``check_against_truth``:
the same bar as the single-process fuzz (2x PyTorch's own error in the dtype, or the rounding
model of a correct evaluation).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (CPU tensors)

import random

import pytest
import torch
import torch.distributed as dist

import hardloss_cuda as hl
from hardloss_cuda.distributed import vocab_parallel_cross_entropy

from .fuzz_oracle import check_against_truth
from .test_distributed import _backends, _free_port, _spawn

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

CASES = {2: 10, 3: 8}  # cases a world size in one run


def _layout(rng, world, C):
    """(class_start, size) per rank: a random split of [0, C) (a slice may be empty), in a
    random order over the ranks, and whether the ranks are told their class_start."""
    cuts = sorted(rng.randint(0, C) for _ in range(world - 1))
    parts = [(a, b - a) for a, b in zip([0] + cuts, cuts + [C])]
    given = rng.random() < 0.6
    if given:
        rng.shuffle(parts)  # out of rank order needs the starts given
    return parts, given


def _case(seed, world):
    rng = random.Random(seed)
    dtype = rng.choice([torch.float64, torch.float64, torch.float32, torch.bfloat16])
    C = rng.choice([1, 2, 5, 17, 64, 300])
    N = rng.randint(0, 12)
    target = rng.choice(["index", "index", "smooth", "mixture"])
    opts = {
        "k": rng.choice([1.0, 1.0, 0.5, 2.0, 1 / 16]),
        "reduction": rng.choice(["mean", "sum", "none"]),
        "label_smoothing": rng.choice([0.1, 0.01, 0.5]) if target == "smooth" else 0.0,
        "trim": rng.choice([None, None, 0.5, 0.3]),
        "softcap": rng.choice([None, None, 3.0, 30.0, 1e4]),
        "z_loss": rng.choice([0.0, 0.0, 1e-2]),
    }
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, C, generator=g, dtype=torch.float64) * rng.choice([1.0, 3.0, 10.0])
    y = torch.randint(C, (N,), generator=g)
    for i in range(N):
        kind = rng.choice(["plain", "plain", "confident", "tied", "masked", "huge"])
        if kind == "confident":
            z[i, rng.randrange(C)] += 40.0
        elif kind == "tied":
            z[i] = torch.randint(0, 3, (C,), generator=g).double()
        elif kind == "masked" and C > 1:
            z[i, torch.rand(C, generator=g) < 0.4] = float("-inf")
            z[i, y[i]] = 0.0
        elif kind == "huge":
            z[i] *= 1e4 if dtype != torch.float64 else 1e8
    if rng.random() < 0.4 and N:
        y[torch.rand(N, generator=g) < 0.3] = -100
    weight = None  # weight and mixture in the logits' dtype, as PyTorch's F.cross_entropy (the bar) takes them
    if rng.random() < 0.4:
        weight = (0.2 + 2.8 * torch.rand(C, generator=g, dtype=torch.float64)).to(dtype)
    mixture = None
    if target == "mixture":
        A = torch.rand(C, C, generator=g, dtype=torch.float64).fill_diagonal_(0)
        mixture = hl.mcel.simple_mixture(A / A.sum(1, keepdim=True).clamp_min(1e-300), 0.3).to(dtype)
    layout, given = _layout(rng, world, C)
    return dict(x=z.to(dtype), y=y, weight=weight, mixture=mixture, layout=layout, given=given,
                backend=rng.choice(_backends()), inplace=rng.random() < 0.3, lse=rng.random() < 0.4, **opts)


def _check(rank, world, seed):
    c = _case(seed, world)
    start, size = c["layout"][rank]
    C = c["x"].shape[1]
    kw = dict(weight=c["weight"], mixture=c["mixture"], k=c["k"], label_smoothing=c["label_smoothing"],
              softcap=c["softcap"], z_loss=c["z_loss"], return_lse=c["lse"], backend=c["backend"],
              class_start=start if c["given"] else None, num_classes=C if c["given"] else None)

    def run(x, g, g_lse, reduction, trim):
        local = x.detach()[:, start:start + size].clone().requires_grad_()
        src = local * 1 if c["inplace"] else local  # in place needs a non-leaf
        out = vocab_parallel_cross_entropy(src, c["y"], reduction=reduction, trim=trim,
                                           inplace_backward=c["inplace"], **kw)
        loss, lse = out if c["lse"] else (out, None)
        total = (loss * g).sum() + (0 if lse is None else (lse * g_lse.to(lse.dtype)).sum())
        total.backward()
        return loss, lse, local.grad

    g_lse = torch.randn(c["x"].shape[0], generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    try:
        check_against_truth(c["x"], c["y"], c["weight"], c["mixture"], -100, c["reduction"], c["label_smoothing"],
                            c["k"], c["trim"], None, backend=c["backend"], softcap=c["softcap"] or 0.0,
                            z_loss=c["z_loss"], g_lse=g_lse if c["lse"] else None, run=run,
                            cols=slice(start, start + size))
    except AssertionError as e:
        brief = {k: v for k, v in c.items() if k not in ("x", "y", "weight", "mixture")}
        raise AssertionError(f"rank {rank}/{world}, case seed {seed} (HARDLOSS_TEST_SEED={seed // 100 - world}): "
                             f"{brief}, N x C = {tuple(c['x'].shape)}: {e}")


def _worker(rank, world, port, seed):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(seed)  # the harness draws the incoming gradient: the same on every rank
        for i in range(CASES[world]):
            _check(rank, world, seed * 100 + i)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_fuzz_vocab_parallel(world):
    seed = int(os.environ.get("HARDLOSS_TEST_SEED", torch.seed() % 2**31)) + world
    _spawn(_worker, world, _free_port(), seed)

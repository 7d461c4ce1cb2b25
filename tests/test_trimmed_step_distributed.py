"""hl.TrimmedStep over a DistributedDataParallel model (issue #32): gloo groups of 3 and 2
processes on the CPU (one launch: the world of 3, then a group of ranks 0 and 1), batches of
different sizes per rank (one rank of one sample). With scope="global" every rank's gradient
after DDP's average, and the returned loss, equal one process's on the concatenated batch
(float64, 1e-12): the kept samples are the hardest fraction of the global batch. A rank that
keeps none, or whose batch is empty, still joins the all-reduce. With scope="local", DDP averages the ranks' own trimmed
means. Launched as test_distributed.py launches the vocab-parallel ones."""

from __future__ import annotations


import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import hardloss_cuda as hl

from .test_distributed import _free_port, _spawn

D, C = 5, 4
SIZES = {2: [7, 1], 3: [6, 9, 4]}
EMPTY = [6, 9, 0]  # the world of 3 with rank 2's batch empty (scope "global" takes it)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 12, bias=False), nn.Tanh(), nn.Linear(12, C, bias=False)).double()


def _batches(world, sizes=None):
    """Every rank's (x, y), the same on every rank; rank 1's samples zero, with a zero target
    in the regression: losses of 0, so that at small fractions rank 1 keeps none."""
    g = torch.Generator().manual_seed(world)
    out = []
    for rank, n in enumerate(sizes or SIZES[world]):
        x = torch.randn(n, D, generator=g, dtype=torch.float64)
        y = torch.randint(0, C, (n,), generator=g)
        if rank == 1:
            x.zero_()
        out.append((x, y))
    last = max(r for r, (x, _y) in enumerate(out) if len(x))
    out[0][0][1] = out[last][0][0]  # a tie across ranks: the same sample
    out[0][1][1] = out[last][1][0]
    return out


def ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def mse(out, y):  # regression on the one-hot target; 0 for a zero input and a zero target
    return ((out - F.one_hot(y, C).to(out.dtype) * (out.abs().sum(1, keepdim=True) > 0)) ** 2).sum(1)


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _close(got, want, what):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=lambda m: f"{what}: {m}")


def _case(ddp, group, rank, world, loss_fn, f, mode, scope, sizes=None):
    ddp.module.load_state_dict(_model().state_dict())
    ddp.zero_grad(set_to_none=True)
    batches = _batches(world, sizes)
    loss = hl.TrimmedStep(ddp, loss_fn, f, mode=mode, scope=scope, group=group)(*batches[rank])
    what = f"rank {rank}/{world} {loss_fn.__name__} f={f} {mode} {scope} sizes={sizes}"
    if scope == "global":  # one process, the concatenated batch
        one = _model()
        x, y = (torch.cat(t) for t in zip(*batches))
        want = hl.TrimmedStep(one, loss_fn, f, mode=mode)(x, y)
        _close(_grads(ddp.module), _grads(one), what)
    else:  # DDP's average of each rank's own trimmed step
        wants = []
        for x, y in batches:
            one = _model()
            wants.append((hl.TrimmedStep(one, loss_fn, f, mode=mode)(x, y), _grads(one)))
        want = wants[rank][0]
        _close(_grads(ddp.module), [sum(g) / world for g in zip(*(w[1] for w in wants))], what)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12, msg=lambda m: f"{what}: loss {m}")


def _cases(rank, world, group):
    ddp = DDP(_model(), process_group=group)
    for mode in ("subset", "full"):
        for f in (0.1, 0.75, 1.0):
            _case(ddp, group, rank, world, ce, f, mode, "global")
        _case(ddp, group, rank, world, ce, 0.4, mode, "local")
        _case(ddp, group, rank, world, mse, 0.2, mode, "global")  # rank 1 keeps none
    if world == 3:  # a rank with an empty batch: it keeps none, and still joins every collective
        for mode in ("subset", "full"):
            for f in (0.3, 1.0):
                _case(ddp, group, rank, world, ce, f, mode, "global", EMPTY)
    with torch.no_grad():
        x, y = _batches(world)[1]
        assert (mse(_model()(x), y) == 0).all()
    # A schedule's fraction and the auto path: every rank takes the same path.
    trim = hl.MiniBatchTrimming(num_epochs=2, start=0.9, end=0.2)
    step = hl.TrimmedStep(ddp, ce, trim, scope="global", group=group)
    for _ in range(2):
        step(*_batches(world)[rank])
        trim.step()


def _worker(rank, world, port):
    """Three ranks: the world, then a group of ranks 0 and 1 (rank 2 waits)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        _cases(rank, 3, None)
        pair = dist.new_group([0, 1])
        if rank < 2:
            _cases(rank, 2, pair)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_global_trimming_matches_one_process():
    _spawn(_worker, 3, _free_port())

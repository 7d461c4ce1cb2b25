"""One stats layout with one meaning: the stats one backend's fwd writes, another's bwd takes.

For every ordered pair (A, B) of backends that run on the same device: bwd on B with A's stats
equals A's own bwd, within the same-input tolerance (tests/_backends.py), for one-hot and soft
rows (label smoothing with and without a dominant class, a mixture, probability targets),
k = 1 and k != 1, softcap off and on, float32 / float64 / bfloat16 (_schema.py /
csrc/row_math.h "What a row keeps"). A soft row's columns 3 and 4 come in two forms, told apart
by column 5 (STATS_SOFT_COMPLETE: c_pos, f_star; STATS_SOFT_DEFERRED: the row max and log sum
exp, written by the CPU forward and by Triton's at k = 1), and every bwd takes both (#30).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (CPU tensors)

import pytest
import torch

from hardloss_cuda._ops import bwd_inplace_op, bwd_op, fwd_op

from ._backends import SAME_INPUT, backend_devices

N, C = 9, 37
IGNORE = -100
DTYPES = (torch.float32, torch.float64, torch.bfloat16)

# (id, target kind, label_smoothing, k, softcap, with class weights)
CASES = [
    ("onehot-k1", "index", 0.0, 1.0, 0.0, False),
    ("onehot-k0.5-cap-w", "index", 0.0, 0.5, 4.0, True),
    ("smooth-star-k1", "index", 0.05, 1.0, 0.0, False),  # q_y >= 15/16 t: f* from the others
    ("smooth-k1-cap", "index", 0.3, 1.0, 4.0, False),
    ("smooth-k0.5", "index", 0.1, 0.5, 0.0, True),
    ("smooth-k2-cap", "index", 0.1, 2.0, 4.0, False),
    ("mixture-k0.5", "mixture", 0.0, 0.5, 0.0, False),
    ("probs-k1", "probs", 0.0, 1.0, 0.0, False),
    ("probs-k0.5-cap", "probs", 0.0, 0.5, 4.0, False),
]


def _inputs(kind, smoothing, weighted, device, dtype, N=N, C=C):
    g = torch.Generator().manual_seed(1234)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    z = (torch.randn(N, C, generator=g, dtype=torch.float64) * 3).to(device, dtype)
    z[0, 5] = 9.0  # a confident row
    y = torch.randint(0, C, (N,), generator=g)
    y[0] = 5
    y[3] = IGNORE
    y = y.to(device)
    w = (torch.rand(C, generator=g) + 0.5).to(device, acc) if weighted else None
    mix = None
    if kind == "probs":
        target = torch.softmax(torch.randn(N, C, generator=g) * 2, 1).to(device, dtype)
        target[1] = 0.0
        target[1, 7] = 1.0  # a one-hot probability row (a dominant class)
    else:
        target = y
        if kind == "mixture":
            mix = torch.softmax(torch.randn(C, C, generator=g), 1).to(device, acc)
    grad_loss = torch.rand(N, generator=g).to(device, acc)
    grad_loss[2] = 0.0
    return z, target, w, mix, grad_loss


_PAIRS = [(a, b, d) for a, d in backend_devices() for b, d2 in backend_devices() if d2 == d and a != b]


def _params():
    return [pytest.param(a, b, d, case, dt, id=f"{a}->{b}-{d}-{case[0]}-{str(dt).removeprefix('torch.')}")
            for a, b, d in _PAIRS for case in CASES for dt in DTYPES]


_FWD = {}


def _fwd_on(a, device, case, dtype):
    """A's fwd and its own bwd of a case, computed once per (A, device, case, dtype)."""
    key = (a, device, case[0], dtype)
    if key not in _FWD:
        _id, kind, s, k, cap, weighted = case
        z, target, w, mix, gl = _inputs(kind, s, weighted, device, dtype)
        _loss, stats = fwd_op(a)(z, target, w, mix, IGNORE, s, k, True, cap)
        own = bwd_op(a)(gl, z, target, w, mix, stats, IGNORE, s, k, cap)
        _FWD[key] = (z, target, w, mix, gl, stats, own)
    return _FWD[key]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("a,b,device,case,dtype", _params())
def test_bwd_takes_another_backends_stats(a, b, device, case, dtype):
    _id, _kind, s, k, cap, _w = case
    z, target, w, mix, gl, stats, own = _fwd_on(a, device, case, dtype)
    got = bwd_op(b)(gl, z, target, w, mix, stats.clone(), IGNORE, s, k, cap)
    tol = SAME_INPUT[z.dtype]
    torch.testing.assert_close(got, own, rtol=tol, atol=tol * own.abs().max().item(),
                               msg=lambda m: f"bwd on {b} with {a}'s stats differs from {a}'s own bwd: {m}")


_LONG = [("smooth-k0.5", "index", 0.1, 0.5, 0.0, True), ("probs-k1", "probs", 0.0, 1.0, 0.0, False)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", _LONG, ids=[c[0] for c in _LONG])
@pytest.mark.parametrize("a,b,device", _PAIRS, ids=[f"{a}->{b}-{d}" for a, b, d in _PAIRS])
def test_long_rows_in_place(a, b, device, case):
    """Rows of several chunks, blocks and tiles (C = 5003: the CPU's 2048-class chunks, the CUDA
    completion kernel's block loop), bwd and bwd_inplace on B with A's stats: A's own bwd."""
    _id, kind, s, k, cap, weighted = case
    z, target, w, mix, gl = _inputs(kind, s, weighted, device, torch.float32, N=4, C=5003)
    _loss, stats = fwd_op(a)(z, target, w, mix, IGNORE, s, k, True, cap)
    own = bwd_op(a)(gl, z, target, w, mix, stats, IGNORE, s, k, cap)
    kept = stats.clone()
    got = bwd_op(b)(gl, z, target, w, mix, stats, IGNORE, s, k, cap)
    z2 = z.clone()
    bwd_inplace_op(b)(gl, z2, target, w, mix, stats, IGNORE, s, k, cap)
    assert torch.equal(stats, kept), f"bwd on {b} wrote into the stats"
    tol = SAME_INPUT[torch.float32]
    for out in (got, z2):
        torch.testing.assert_close(out, own, rtol=tol, atol=tol * own.abs().max().item(),
                                   msg=lambda m: f"bwd on {b} with {a}'s stats differs from {a}'s own bwd: {m}")


_MIXED = [c for c in CASES if c[0] in ("smooth-k0.5", "smooth-star-k1", "probs-k0.5-cap")]
_READERS = sorted({(b, d) for _a, b, d in _PAIRS})


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", _MIXED, ids=[c[0] for c in _MIXED])
@pytest.mark.parametrize("b,device", _READERS, ids=[f"{b}-{d}" for b, d in _READERS])
def test_both_forms_in_one_call(b, device, case):
    """Stats whose rows alternate between the deferred form (the CPU's) and the complete one (the
    reference's): each row's gradient as from its own form (Triton's programs hold several
    rows, the CUDA completion kernel skips the complete ones)."""
    if "cpu" not in {bb for bb, _d in backend_devices() if _d == device}:
        pytest.skip("needs the CPU kernel's stats")
    _id, kind, s, k, cap, weighted = case
    z, target, w, mix, gl = _inputs(kind, s, weighted, device, torch.float32)
    deferred = fwd_op("cpu")(z, target, w, mix, IGNORE, s, k, True, cap)[1]
    complete = fwd_op("reference")(z, target, w, mix, IGNORE, s, k, True, cap)[1]
    mixed = torch.where((torch.arange(N, device=device) % 2 == 0)[:, None], deferred, complete)
    want = bwd_op("reference")(gl, z, target, w, mix, complete, IGNORE, s, k, cap)
    got = bwd_op(b)(gl, z, target, w, mix, mixed, IGNORE, s, k, cap)
    tol = SAME_INPUT[torch.float32]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())

"""The op contract (hardloss_cuda/_schema.py, docs/ROW_MATH.md), one suite for every backend
that can run here: reference and the compiled CPU kernel on CPU tensors, Triton under the
interpreter on CPU tensors, the CUDA kernels on the emulator (cuda_emu) on CPU tensors, and on a
GPU the CUDA kernels, Triton and the reference on CUDA tensors. The ops are called directly (``fwd``, ``bwd``, ``bwd_inplace``), so also the rows the
Python API would refuse (labels out of range) are covered. One tolerance rule for all
(``assert_close_to_truth``); the per-backend files keep only what is specific to a backend's
launch (path choice by C, alignment, CUDA graphs, the Triton plan).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (CPU tensors)

import pytest
import torch

from hardloss_cuda import _ops, reference
from hardloss_cuda._schema import SCALE_COL, STATS_COLS, acc_dtype

from . import fuzz_oracle as O
from ._backends import FLOOR, RTOL, backend_devices, parametrize

BACKENDS = backend_devices()

pytestmark = [
    parametrize(BACKENDS),
    # the Triton interpreter runs in numpy, which warns where the math means -inf / NaN
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

KINDS = ["onehot", "onehot_w", "smooth", "mixture", "probs_w"]


def row_lengths(backend, device):
    """Row lengths for the edge cases: for the CUDA kernels (on a GPU or emulated) also their
    other paths (sub-warp, block and streaming rows, csrc/cuda/fwd_kernels.cuh); the
    interpreter stays small."""
    return [37, 1000] + ([5000, 70000] if device == "cuda" or backend == "cuda_emu" else [])
# |got - truth| <= RTOL |truth| + max(FLOOR, m max|baseline - truth|): the baseline is the
# reference at the working precision, so ill-conditioned elements and bf16 / fp16 rounding
# are judged against what the same math in PyTorch gets. m = 2 for the loss and the k = 1
# gradient (PyTorch's own functions); 16 for k != 1, which has no PyTorch counterpart: the
# baseline is then one sample of a correct fp32 evaluation, and another correct one differs
# by several times where |eps| is near 0 and k is small (probability targets, C = 1000,
# k = 1/16: log p = (z - lse) - lse_lo against the reference's (z - m) - log s gave up to 10x
# the reference's error, on every backend, in 1 draw of 12 to 40). Where |eps_j| is within
# rounding of 0 no multiple of one sample's error is a bound (C = 37, a mixture, k = 1/2: the
# reference matched the truth to 1e-6 by luck, the CPU kernel and Triton were 6e-5 off with
# the sign of an eps of 1e-10 flipped, CI seed 766481145), so the gradient at k != 1 also gets
# tests/fuzz_oracle.py's rounding model of each element (``rounding_model``).


def assert_close_to_truth(name, got, truth, baseline, dtype, m=2, model=None):
    got, truth, baseline = got.double().cpu(), truth.double().cpu(), baseline.double().cpu()
    assert got.shape == truth.shape, name
    model = torch.zeros_like(truth) if model is None else model
    nan = torch.isnan(truth)
    assert torch.equal(torch.isnan(got), nan), f"{name}: NaN pattern differs"
    got, truth, baseline, model = got[~nan], truth[~nan], baseline[~nan], model[~nan]
    inf = torch.isinf(truth)
    assert torch.equal(got[inf], truth[inf]), f"{name}: infinities differ"
    got, truth, baseline, model = got[~inf], truth[~inf], baseline[~inf], model[~inf]
    if got.numel() == 0:
        return
    atol = max(FLOOR[dtype], m * (baseline - truth).abs().max().item())
    err = (got - truth).abs()
    bad = err > RTOL[dtype] * truth.abs() + atol + model
    assert not bad.any(), f"{name}: max err {err.max().item():.3e} (atol {atol:.3e}), got {got[bad][:4].tolist()} truth {truth[bad][:4].tolist()}"


def rounding_model(x, target, w, W, ignore_index, s, k, gl):
    """Per-element bound on the gradient's error of a correct evaluation in x's accumulation
    precision (tests/fuzz_oracle.py: pseudo_grad_tolerance, or the row's magnitude bound where
    the sign of some eps_j is undetermined), times |grad_loss|."""
    f64 = lambda t: None if t is None else t.detach().double().cpu().numpy()  # noqa: E731
    tgt = f64(target) if target.is_floating_point() else target.cpu().numpy()
    batch = O.batch_truth(f64(x), tgt, f64(w), f64(W), ignore_index, s, k)
    u = O._u_acc(x.dtype)
    out = torch.zeros(x.shape, dtype=torch.float64)
    for i, row in enumerate(batch.rows):
        tol, ill = O.pseudo_grad_tolerance(row, k, u, O.C_MODEL)
        if ill:
            tol = abs(row.f) + O.magnitude_bound(row, k, u, O.C_MODEL)
        out[i] = abs(float(gl[i])) * torch.from_numpy(tol)
    return out


def ops(backend):
    return _ops.fwd_op(backend), _ops.bwd_op(backend), _ops.bwd_inplace_op(backend)


def make_target(kind, N, C, device, dtype=torch.float32):
    """(target, weight, mixture, label_smoothing) of a kind; weight / mixture in acc."""
    acc = acc_dtype(dtype)
    w = torch.rand(C, device=device, dtype=acc) + 0.5 if kind.endswith("_w") else None
    if kind.startswith("probs"):
        return torch.softmax(torch.randn(N, C, device=device) * 2, 1).to(dtype), w, None, 0.0
    y = torch.randint(0, C, (N,), device=device)
    if kind == "mixture":
        A = torch.rand(C, C, device=device, dtype=acc).fill_diagonal_(0)
        A = A / A.sum(1, keepdim=True).clamp_min(1e-30)
        return y, w, (0.8 * torch.eye(C, device=device, dtype=acc) + 0.2 * A), 0.0
    return y, w, None, (0.1 if kind == "smooth" else 0.0)


def check(backend, x, target, w, W, ignore_index, s, k, gl):
    """fwd with and without the gradient, bwd and bwd_inplace against the float64 reference;
    returns (loss, stats, grad)."""
    fwd, bwd, bwd_inplace = ops(backend)
    acc = acc_dtype(x.dtype)
    loss, stats = fwd(x, target, w, W, ignore_index, s, k, True)
    assert loss.dtype == acc and stats.dtype == acc and stats.shape == (x.shape[0], STATS_COLS)
    grad = bwd(gl, x, target, w, W, stats, ignore_index, s, k)
    assert grad.dtype == x.dtype and grad.shape == x.shape

    f64 = lambda t: None if t is None else t.double()  # noqa: E731
    t64 = target.double() if target.is_floating_point() else target
    truth = reference.rows(x.double(), t64, f64(w), f64(W), ignore_index, s, k)
    base = reference.rows(x, target, w, W, ignore_index, s, k)
    assert_close_to_truth("loss", loss, truth[0], base[0], x.dtype)
    assert_close_to_truth("lse", stats[:, 0], truth[2], base[2], x.dtype)
    g64 = gl.double()[:, None]
    model = None if k == 1 else rounding_model(x, target, w, W, ignore_index, s, k, gl)
    assert_close_to_truth("grad", grad, g64 * truth[1], g64 * base[1].double(), x.dtype, 2 if k == 1 else 16, model)

    buf = x.clone()
    assert bwd_inplace(gl, buf, target, w, W, stats, ignore_index, s, k) is None
    assert torch.equal(buf.isnan(), grad.isnan()) and torch.equal(buf.nan_to_num(), grad.nan_to_num())

    # A logsumexp gradient of zeros (what autograd hands every backward when nothing uses the
    # lse) changes nothing. The emulated CUDA backend found the CUDA glue composing it with ATen
    # ops on a float copy of the logits, and launching the float kernel on fp16 / bf16
    # probability targets (read as float: wrong gradients, reads past their end).
    g0 = bwd(gl, x, target, w, W, stats, ignore_index, s, k, 0.0, torch.zeros_like(gl))
    assert torch.equal(g0.isnan(), grad.isnan()) and torch.equal(g0.nan_to_num(), grad.nan_to_num())

    loss2, stats2 = fwd(x, target, w, W, ignore_index, s, k, False)
    assert torch.equal(loss2.nan_to_num(), loss.nan_to_num()) and torch.equal(stats2[:, 0].nan_to_num(),
                                                                             stats[:, 0].nan_to_num())
    assert (stats2[:, SCALE_COL:] == 0).all(), "no gradient asked for: columns from SCALE_COL on are 0"
    return loss, stats, grad


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("C", [1, 3, 1000])
def test_matches_reference(backend, device, kind, dtype, C):
    N = 6
    x = (torch.randn(N, C, device=device) * 3).to(dtype)
    target, w, W, s = make_target(kind, N, C, device, dtype)
    gl = torch.randn(N, device=device, dtype=acc_dtype(dtype))
    gl[-1] = 0
    for k in (1 / 16, 1.0, 2.5):
        _loss, stats, grad = check(backend, x, target, w, W, -100, s, k, gl)
        assert (grad[-1] == 0).all(), "a row with no incoming gradient and a finite lse is exactly 0"


@pytest.mark.parametrize("kind", ["onehot", "smooth", "mixture"])
def test_bad_label_gives_nan_row(backend, device, kind):
    """Labels outside [0, C) give a NaN loss and gradient row and are never used as an index
    (the Python API raises first); ignored rows are 0; the other rows are unaffected."""
    for C in row_lengths(backend, device):
        if kind != "mixture" or C <= 5000:
            _bad_label_rows(backend, device, kind, C)


def _bad_label_rows(backend, device, kind, C):
    N = 6
    x = torch.randn(N, C, device=device)
    target, w, W, s = make_target(kind, N, C, device)
    target[0], target[2], target[3], target[4] = C, -5, 1 << 40, -100
    gl = torch.randn(N, device=device)
    gl[2] = 0  # a bad row stays NaN whatever grad_loss is
    fwd, bwd, _ = ops(backend)
    loss, stats = fwd(x, target, w, W, -100, s, 0.5, True)
    g = bwd(gl, x, target, w, W, stats, -100, s, 0.5)
    bad = torch.tensor([True, False, True, True, False, False], device=device)
    assert torch.isnan(loss[bad]).all() and torch.isnan(g[bad]).all()
    assert (stats[bad, SCALE_COL:] == 0).all() and (stats[4, SCALE_COL:] == 0).all()
    assert loss[4] == 0 and (g[4] == 0).all()
    torch.testing.assert_close(stats[:, 0], torch.logsumexp(x, 1), rtol=2e-6, atol=2e-6)
    good = ~bad
    check(backend, x[good], target[good], w, W, -100, s, 0.5, gl[good])


@pytest.mark.parametrize("s", [0.0, 0.1])
def test_ignored_rows_are_zero_whatever_their_logits_and_grad_loss(backend, device, s):
    C = 20
    x = torch.randn(5, C, device=device)
    x[0, 3] = float("nan")
    y = torch.tensor([4, 3, 4, 7, 0], device=device)  # ignore_index inside the class range
    fwd, bwd, _ = ops(backend)
    loss, stats = fwd(x, y, None, None, 4, s, 0.5, True)
    gl = torch.tensor([float("nan"), 1.0, float("inf"), 2.0, 1.0], device=device)
    g = bwd(gl, x, y, None, None, stats, 4, s, 0.5)
    assert (loss[[0, 2]] == 0).all() and (g[[0, 2]] == 0).all() and torch.isfinite(g[[1, 3, 4]]).all()


@pytest.mark.parametrize("softcap", [0.0, 3.0])
@pytest.mark.parametrize("s", [0.0, 0.1])
def test_ignored_rows_are_zero_with_a_logsumexp_gradient(backend, device, s, softcap):
    """With grad_lse (z_loss, return_lse) too, an ignored row's gradient is 0 whatever its
    logits (-inf everywhere, NaN), and a bad label's is NaN; the other rows get g f + g_lse p,
    as the reference. The emulated CUDA backend found the CUDA glue's composition taking p of an
    all -inf ignored row: exp(-inf - -inf), NaN; this test, the reference zeroing ignored rows
    before the softcap's slope, which is NaN at a NaN logit."""
    C = 20
    x = torch.randn(6, C, device=device) * 3
    x[0] = float("-inf")
    x[2, 3] = float("nan")
    y = torch.tensor([-100, 3, -100, 7, 0, C], device=device)
    fwd, bwd, bwd_inplace = ops(backend)
    ref_fwd, ref_bwd, _ = ops("reference")
    loss, stats = fwd(x, y, None, None, -100, s, 0.5, True, softcap)
    _rloss, rstats = ref_fwd(x, y, None, None, -100, s, 0.5, True, softcap)
    gl = torch.randn(6, device=device)
    for g_lse in (torch.zeros(6, device=device), torch.randn(6, device=device)):
        g = bwd(gl, x, y, None, None, stats, -100, s, 0.5, softcap, g_lse)
        assert (g[[0, 2]] == 0).all() and torch.isnan(g[5]).all()
        expected = ref_bwd(gl, x, y, None, None, rstats, -100, s, 0.5, softcap, g_lse)
        torch.testing.assert_close(g[[1, 3, 4]], expected[[1, 3, 4]], rtol=1e-5, atol=1e-6)
        buf = x.clone()
        bwd_inplace(gl, buf, y, None, None, stats, -100, s, 0.5, softcap, g_lse)
        assert torch.equal(buf.isnan(), g.isnan()) and torch.equal(buf.nan_to_num(), g.nan_to_num())


@pytest.mark.parametrize("kind", ["onehot", "smooth", "probs_w"])
def test_non_finite_logits_stay_in_their_row(backend, device, kind):
    """NaN, +inf, or a row of -inf only: NaN loss and gradient for that row (as PyTorch), also
    with a zero incoming gradient (0 * NaN); a -inf class in a finite row has probability 0."""
    for C in row_lengths(backend, device):
        _non_finite_rows(backend, device, kind, C)


def _non_finite_rows(backend, device, kind, C):
    N = 5
    x = torch.randn(N, C, device=device)
    x[0, 3] = float("nan")
    x[1, 4] = float("inf")
    x[2, :] = float("-inf")
    x[3, 5] = float("-inf")
    target, w, W, s = make_target(kind, N, C, device)
    if not target.is_floating_point():
        target[3] = 1
    fwd, bwd, _ = ops(backend)
    loss, stats = fwd(x, target, w, W, -100, s, 2.0, True)
    gl = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0], device=device)
    g = bwd(gl, x, target, w, W, stats, -100, s, 2.0)
    assert torch.isnan(loss[:3]).all() and torch.isnan(g[:3]).all()
    check(backend, x[3:], target[3:], w, W, -100, s, 2.0, gl[3:])


def test_zero_gradient_rows_are_not_read(backend, device):
    """A row with grad_loss == 0 and a finite lse and scale gets 0 without its logits being read:
    overwritten with NaN between fwd and bwd, those rows still come out 0 (the reference, the
    oracle rather than a fast path, reads every row: it gets the logits unchanged). An
    infinite class weight (scale not finite) is 0 * inf = NaN, as PyTorch."""
    N = 6
    for C, kind in [(C, kind) for C in row_lengths(backend, device) for kind in ("onehot", "smooth", "probs_w")]:
        x = torch.randn(N, C, device=device)
        target, w, W, s = make_target(kind, N, C, device)
        fwd, bwd, _ = ops(backend)
        loss, stats = fwd(x, target, w, W, -100, s, 0.5, True)
        gl = torch.randn(N, device=device)
        gl[[0, 3]] = 0
        x2 = x.clone()
        if backend != "reference":
            x2[[0, 3]] = float("nan")
        g = bwd(gl, x2, target, w, W, stats, -100, s, 0.5)
        assert (g[[0, 3]] == 0).all(), kind
    C = 50
    y = torch.tensor([1, 2], device=device)
    w = torch.ones(C, device=device)
    w[1] = float("inf")
    x = torch.randn(2, C, device=device)
    loss, stats = fwd(x, y, w, None, -100, 0.0, 0.5, True)
    g = bwd(torch.zeros(2, device=device), x, y, w, None, stats, -100, 0.0, 0.5)
    assert torch.isnan(g[0]).all() and (g[1] == 0).all()


def test_empty_batch_and_single_class(backend, device):
    fwd, bwd, bwd_inplace = ops(backend)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        acc = acc_dtype(dtype)
        x = torch.randn(0, 7, device=device, dtype=dtype)
        y0 = torch.zeros(0, dtype=torch.long, device=device)
        loss, stats = fwd(x, y0, None, None, -100, 0.0, 1.0, True)
        assert loss.shape == (0,) and stats.shape == (0, STATS_COLS) and stats.dtype == acc
        gl0 = torch.zeros(0, device=device, dtype=acc)
        assert bwd(gl0, x, y0, None, None, stats, -100, 0.0, 1.0).shape == (0, 7)
        bwd_inplace(gl0, x, y0, None, None, stats, -100, 0.0, 1.0)
        x = torch.randn(5, 1, device=device, dtype=dtype)
        y = torch.zeros(5, dtype=torch.long, device=device)
        y[4] = -100
        for s in (0.0, 0.3):
            loss, stats = fwd(x, y, None, None, -100, s, 0.5, True)
            g = bwd(torch.ones(5, device=device, dtype=acc), x, y, None, None, stats, -100, s, 0.5)
            assert (loss == 0).all() and (g == 0).all()
            torch.testing.assert_close(stats[:, 0], x[:, 0].to(acc))


@pytest.mark.parametrize("kind", ["onehot", "mixture", "probs_w"])
def test_opcheck(backend, device, kind):
    """torch.library.opcheck on fwd, bwd and bwd_inplace: schema, fake tensors, autograd
    registration, dispatch."""
    x = torch.randn(5, 11, device=device, requires_grad=kind != "onehot")
    target, w, W, s = make_target(kind, 5, 11, device)
    if W is not None:
        W.requires_grad_(True)
    fwd, bwd, bwd_inplace = ops(backend)
    args = (x, target, w, W, -100, s, 0.7, True)
    torch.library.opcheck(fwd.default, args)
    with torch.no_grad():
        _loss, stats = fwd(*args)
    gl = torch.rand(5, device=device)
    bwd_args = (gl, x.detach(), target, w, None if W is None else W.detach(), stats, -100, s, 0.7)
    torch.library.opcheck(bwd.default, bwd_args)
    torch.library.opcheck(bwd_inplace.default, (gl, x.detach().clone()) + bwd_args[2:])

"""softcap, z_loss and return_lse of ``cross_entropy`` on every backend that runs here, against
an independent float64 truth written with torch ops: ``F.cross_entropy(c tanh(x / c), ...)``
plus ``z_loss * logsumexp**2`` over the counted rows, differentiated by autograd. For k != 1
the truth's pseudo-gradient part comes from the reference on the capped logits (the reference
itself is checked against the float64 oracle in test_fuzz / test_reference). The differential
fuzz of these options (random dtypes, shapes, caps, extreme logits, every k) is
tests/test_fuzz_lm.py."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (CPU tensors)

import pytest
import torch
import torch.nn.functional as F

import hardloss_cuda as hl

from .conftest import api_backends

pytestmark = [
    api_backends(),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

KINDS = ["index", "weight-ignore", "smooth", "probs", "mixture"]


def _case(kind, N, C, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g, dtype=torch.float64) * 5
    x[0, 0] = 40.0  # a logit the cap bends hard
    kw, y = {}, torch.randint(0, C, (N,), generator=g)
    if kind == "weight-ignore":
        kw["weight"] = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
        y[::3] = -100
    elif kind == "smooth":
        kw["label_smoothing"] = 0.1
    elif kind == "probs":
        y = torch.softmax(torch.randn(N, C, generator=g, dtype=torch.float64), 1)
    elif kind == "mixture":
        kw["mixture"] = hl.mcel.simple_mixture(torch.full((C, C), 1.0 / C, dtype=torch.float64), 0.2)
    return x.to(device), y.to(device), {k: v.to(device) if torch.is_tensor(v) else v for k, v in kw.items()}


def _truth(x, y, kw, cap, z_loss, reduction, k, lse_weight):
    """loss, lse and the gradient of loss.sum() + (lse * lse_weight).sum() in float64."""
    x = x.detach().double().requires_grad_()
    z = cap * torch.tanh(x / cap) if cap else x
    if "mixture" in kw:  # MCEL's target row W[y] as probabilities
        ce = F.cross_entropy(z, kw["mixture"][y], reduction="none")
    else:
        ce = F.cross_entropy(z, y, reduction="none", **kw)
    counted = torch.ones_like(ce, dtype=torch.bool) if y.is_floating_point() else y != -100
    lse = torch.where(counted, torch.logsumexp(z, 1), 0)
    zl = z_loss * lse.square()
    if reduction == "none":
        loss = ce + zl
    elif reduction == "sum":
        loss = ce.sum() + zl.sum()
    else:
        w = kw["weight"][torch.where(counted, y, 0)] * counted if "weight" in kw and not y.is_floating_point() else counted
        # a batch in which no row counts gives 0 (docs/ROW_MATH.md section 5), not 0 / 0
        any_row = counted.any()
        loss = torch.where(any_row, ce.sum() / torch.where(any_row, w.sum(), 1), 0) + zl.sum() / counted.sum().clamp_min(1)
    total = loss.sum() + (lse * lse_weight).sum()
    if k != 1:
        # the pseudo-gradient replaces the cross-entropy's own; z-loss and lse keep theirs
        ce_k = hl.cross_entropy(z, y, reduction=reduction, k=k, backend="reference", **kw)
        extra = (lse * lse_weight).sum() + (zl.sum() if reduction == "sum" else
                                            zl.sum() / counted.sum() if reduction == "mean" else zl.sum())
        (grad,) = torch.autograd.grad(ce_k.sum() + extra, x)
    else:
        (grad,) = torch.autograd.grad(total, x)
    return loss.detach(), lse.detach(), grad


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("k", [1.0, 0.5])
def test_against_float64_truth(backend, device, kind, reduction, k):
    N, C = 9, 13
    x, y, kw = _case(kind, N, C, device, seed=N * C + len(kind))
    lse_w = torch.linspace(-1, 1, N, dtype=torch.float64, device=device)
    cap, z_loss = 6.0, 1e-2
    loss_t, lse_t, grad_t = _truth(x, y, kw, cap, z_loss, reduction, k, lse_w)
    xo = x.detach().clone().requires_grad_()
    loss, lse = hl.cross_entropy(xo, y, reduction=reduction, k=k, softcap=cap, z_loss=z_loss, return_lse=True,
                                 backend=backend, **kw)
    (loss.sum() + (lse * lse_w).sum()).backward()
    torch.testing.assert_close(loss, loss_t, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(lse, lse_t, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(xo.grad, grad_t, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_low_precision_within_2x_torch(backend, device, dtype, kind):
    """Against the float64 truth of the same (rounded) inputs, loss, lse and gradient no worse
    than 2x the torch composition in the same dtype, plus a floor of a few ulp."""
    N, C = 16, 300
    x, y, kw = _case(kind, N, C, device, seed=7)
    x = x.to(dtype)
    yd = y.to(dtype) if y.is_floating_point() else y
    cap, z_loss = 30.0, 1e-3
    zero = torch.zeros(N, dtype=torch.float64, device=device)
    loss_t, lse_t, grad_t = _truth(x, yd, kw, cap, z_loss, "none", 1.0, zero + 1)
    # torch in the same dtype
    xt = x.detach().clone().requires_grad_()
    z = cap * torch.tanh(xt / cap)
    lse_p = torch.logsumexp(z, 1)
    loss_p = F.cross_entropy(z, yd, reduction="none") + z_loss * lse_p.square()
    (loss_p.sum() + lse_p.sum()).backward()
    xo = x.detach().clone().requires_grad_()
    loss, lse = hl.cross_entropy(xo, yd, reduction="none", softcap=cap, z_loss=z_loss, return_lse=True,
                                 backend=backend)
    (loss.sum() + lse.sum()).backward()
    eps = torch.finfo(dtype).eps
    for name, ours, theirs, truth in (("loss", loss, loss_p, loss_t), ("lse", lse, lse_p, lse_t),
                                      ("grad", xo.grad, xt.grad, grad_t)):
        err = (ours.double() - truth).abs().max().item()
        err_p = (theirs.double() - truth).abs().max().item()
        assert err <= 2 * err_p + 4 * eps * truth.abs().max().item(), (name, err, err_p)


def test_inplace_backward_equals_out_of_place(backend, device):
    x, y, kw = _case("weight-ignore", 10, 17, device, seed=3)
    grads = []
    for inplace in (False, True):
        xo = (x.detach().clone() * 1.0).requires_grad_()
        logits = xo * 1.0  # a non-leaf, so that in-place is allowed
        loss, lse = hl.cross_entropy(logits, y, k=0.5, softcap=5.0, z_loss=1e-2, return_lse=True,
                                     inplace_backward=inplace, backend=backend, **kw)
        (loss + 0.1 * lse.sum()).backward()
        grads.append(xo.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)


def test_trimmed_rows_have_no_z_loss(backend, device):
    """Trimming keeps the hardest rows by cross-entropy; the z-loss counts on the kept rows only
    (in the mean, divided by their number)."""
    x, y, kw = _case("index", 12, 7, device, seed=5)
    loss = hl.cross_entropy(x, y, z_loss=0.1, trim=0.5, backend=backend)
    ce = F.cross_entropy(x, y, reduction="none")
    kept = ce >= ce.sort(descending=True).values[5]
    lse = torch.logsumexp(x, 1)
    expect = ce[kept].mean() + 0.1 * lse[kept].square().mean()
    torch.testing.assert_close(loss, expect, rtol=1e-12, atol=1e-13)


def test_bad_options_raise(backend, device):
    x, y, _ = _case("index", 3, 4, device, seed=1)
    for bad in (0.0, -2.0, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="softcap"):
            hl.cross_entropy(x, y, softcap=bad, backend=backend)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="z_loss"):
            hl.cross_entropy(x, y, z_loss=bad, backend=backend)


def test_compile_fullgraph(backend, device):
    if backend == "cuda_emu":
        pytest.skip("compiled ops on cuda_emu: test_ops.test_compile_fullgraph (CI time)")
    if backend == "triton" and device == "cpu":
        pytest.skip("torch.compile of the interpreted Triton kernels is not supported")
    x, y, kw = _case("smooth", 8, 11, device, seed=2)

    def f(x):
        loss, lse = hl.cross_entropy(x, y, softcap=5.0, z_loss=1e-2, return_lse=True, backend=backend, **kw)
        return loss + lse.sum()

    x1 = x.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    f(x1).backward()
    torch.compile(f, fullgraph=True)(x2).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-14)


def test_modules_take_the_options(backend, device):
    x, y, _ = _case("index", 6, 5, device, seed=4)
    mod = hl.HardCrossEntropyLoss(softcap=3.0, z_loss=1e-2, return_lse=True, backend=backend)
    loss, lse = mod(x, y)
    ref, ref_lse = hl.cross_entropy(x, y, softcap=3.0, z_loss=1e-2, return_lse=True, backend=backend)
    torch.testing.assert_close((loss, lse), (ref, ref_lse), rtol=0, atol=0)
    W = torch.randn(5, 4, dtype=torch.float64, device=device)
    h = torch.randn(6, 4, dtype=torch.float64, device=device)
    head = hl.HardLinearCrossEntropyLoss(softcap=3.0, z_loss=1e-2, chunk_size=2, backend=backend)
    torch.testing.assert_close(head(h, W, y), hl.cross_entropy(h @ W.T, y, softcap=3.0, z_loss=1e-2, backend=backend),
                               rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="softcap"):
        hl.HardCrossEntropyLoss(softcap=-1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_softcap_saturated_and_tiny_logits(backend, device, dtype):
    """|z / c| from 1e-8 to 800: the capped logits as torch.tanh gives them. (Triton's tanh
    took log of a subnormal exp(-2|z / c|) beyond |z / c| ~ 354 in float64: loss off by 2e-9.)"""
    v = torch.tensor([1e-8, 1e-3, 0.3, 0.51, 2.0, 17.6, 40.0, 300.0, 370.0, 800.0], dtype=torch.float64)
    x = torch.stack([v, -v, torch.zeros_like(v)], 1).to(dtype).to(device)
    y = torch.tensor([1] * len(v), device=device)
    loss = hl.cross_entropy(x, y, softcap=1.0, reduction="none", backend=backend)
    truth = F.cross_entropy(torch.tanh(x.double()), y, reduction="none")
    rtol = 1e-15 if dtype == torch.float64 else 4e-7
    torch.testing.assert_close(loss.double(), truth, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_capped_logit_is_c_tanh(backend, device, dtype):
    """With one class the logsumexp is the capped logit itself: c tanh(z / c) within a few ulp
    of float64's over |z / c| from 1e-6 to 60 (the kernels' own tanh: polynomial below
    |z / c| = 0.625, exp-based above)."""
    u = torch.cat([torch.logspace(-6, 1.78, 4001, dtype=torch.float64), torch.tensor([0.0, 0.625, 0.6249999])])
    u = torch.cat([u, -u])
    c = 3.0
    x = (c * u).to(dtype)[:, None].to(device)
    _, lse = hl.cross_entropy(x, torch.zeros(len(u), dtype=torch.long, device=device), softcap=c,
                              reduction="none", return_lse=True, backend=backend)
    truth = c * torch.tanh(x.double()[:, 0] / c)
    ulp = torch.finfo(dtype).eps * truth.abs().clamp_min(torch.finfo(dtype).tiny)
    assert ((lse.double() - truth).abs() <= 4 * ulp).all(), ((lse.double() - truth).abs() / ulp).max()

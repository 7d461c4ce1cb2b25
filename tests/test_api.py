"""The public API on every backend: drop-in identities with F.cross_entropy, the reference
as oracle for k != 1, dtypes, odd sizes."""

import pytest
import torch
import torch.nn.functional as F

import hardloss_cuda as H
from hardloss_cuda import reference

from . import oracle
from ._backends import SAME_INPUT
from .fuzz_oracle import soft_cancel_rtol


def _grad(fn, x, *args, **kw):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kw)
    out.backward(torch.randn_like(out) if out.dim() else None, inputs=[x])
    return out.detach(), x.grad


def _grad_seeded(fn, x, *args, seed=0, **kw):
    torch.manual_seed(seed)  # same upstream gradient for both sides of a comparison
    return _grad(fn, x, *args, **kw)


SHAPES = [(7,), (6, 7), (3, 7, 2, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["index", "index-ignored", "probs"])  # no ignore_index for probabilities
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("weighted", [False, True])
def test_k1_equals_torch(backend, device, shape, kind, reduction, smoothing, weighted):
    probs, ignore = kind == "probs", kind == "index-ignored"
    C = shape[0] if len(shape) == 1 else shape[1]
    x = torch.randn(shape, dtype=torch.float64, device=device) * 3
    tshape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    if probs:
        target = torch.softmax(torch.randn(shape, dtype=torch.float64, device=device), 1 if len(shape) > 1 else 0)
    else:
        target = torch.randint(0, C, tshape, device=device)
        flat = target.view(-1)
        if ignore and flat.numel() > 1:
            flat[::3] = 3  # every third row ignored
        if ignore and (flat == 3).all():
            # an all-ignored batch (a lone row, or every label drawn as 3, 1 in 2401 at (6, 7)):
            # 0 here, NaN in torch (test_empty_and_all_ignored_batches_are_finite)
            flat[-1] = 4
    kw = dict(reduction=reduction, label_smoothing=smoothing,
              weight=torch.rand(C, dtype=torch.float64, device=device) + 0.5 if weighted else None,
              ignore_index=3 if ignore else -100)
    ours, g_ours = _grad_seeded(H.cross_entropy, x, target, backend=backend, **kw)
    ref, g_ref = _grad_seeded(F.cross_entropy, x, target, **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 2, 3, 1000, 32769])
@pytest.mark.parametrize("k", [1 / 16, 0.5, 1.0, 2.0, 8.0])
def test_matches_reference(backend, device, dtype, C, k):
    N = 4 if C > 1000 else 33
    x = (torch.randn(N, C, device=device) * 4).to(dtype)
    y = torch.randint(0, C, (N,), device=device)
    y[::5] = -100
    loss, g = _grad(H.cross_entropy, x, y, reduction="sum", k=k, backend=backend)
    ref_loss, ref_g, _ = reference.rows(x.double(), y, None, None, -100, 0.0, k)
    assert g.dtype == dtype and loss.dtype == dtype
    # one rounding of the output in the dtype, on top of fp32 accumulation
    tol = SAME_INPUT[dtype]
    torch.testing.assert_close(loss.double(), ref_loss.sum(), rtol=tol, atol=tol)
    torch.testing.assert_close(g.double(), ref_g, rtol=tol, atol=tol * ref_g.abs().max().item() + 1e-30)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_error_no_worse_than_torch(backend, device, dtype):
    """fp16/bf16 against the float64 truth: no worse than PyTorch's own error in that dtype."""
    x = (torch.randn(256, 1000, device=device) * 3).to(dtype)
    y = torch.randint(0, 1000, (256,), device=device)
    truth_l, truth_g = _grad(F.cross_entropy, x.double(), y)
    ours_l, ours_g = _grad(H.cross_entropy, x, y, backend=backend)
    torch_l, torch_g = _grad(F.cross_entropy, x, y)

    def err(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    assert err(ours_g, truth_g) <= 1.05 * err(torch_g, truth_g)
    assert err(ours_l, truth_l) <= max(1.05 * err(torch_l, truth_l), torch.finfo(dtype).eps)


@pytest.mark.parametrize("k", [1 / 16, 0.5, 2.0, 8.0])
@pytest.mark.parametrize("kind", ["onehot", "smoothing", "probs", "mixture", "weighted"])
def test_rows_sum_to_zero(backend, device, k, kind):
    C = 37
    x = torch.randn(20, C, device=device) * 3
    y = torch.randint(0, C, (20,), device=device)
    kw = {}
    if kind == "smoothing":
        kw["label_smoothing"] = 0.1
    elif kind == "probs":
        y = torch.softmax(torch.randn(20, C, device=device) * 2, 1)
    elif kind == "mixture":
        kw["mixture"] = H.mcel.simple_mixture(torch.softmax(torch.randn(C, C, device=device), 1).fill_diagonal_(0), 0.3)
    elif kind == "weighted":
        kw["weight"] = torch.rand(C, device=device) + 0.1
    _, g = _grad(H.cross_entropy, x, y, reduction="sum", k=k, backend=backend, **kw)
    # Soft targets: eps = p - q cancels where p ~ q, and small k magnifies what is left: each
    # element may carry the rounding model's share there (fuzz_oracle.soft_cancel_rtol; the
    # fp32 reference's own error is luck: seed 1313113786, p / |eps| = 2e4, gave it 7e-5 and the
    # CUDA kernels' formula 5.6e-4, within the model's 1.2e-3).
    cancel = torch.zeros_like(g, dtype=torch.float64)
    if kind not in ("onehot", "weighted"):
        q = H._torch_rows.target_rows(C, y.double() if y.is_floating_point() else y, None,
                                      kw["mixture"].double() if "mixture" in kw else None, -100,
                                      kw.get("label_smoothing", 0.0), torch.float64)
        cancel = soft_cancel_rtol(x.double(), q, k, torch.finfo(torch.float32).eps / 2)
    # fp32 summation error is bounded by C * eps * (the row's absolute sum); a kernel whose
    # forward sums and backward elements round log p apart (the CUDA kernels) adds their error
    atol = C * torch.finfo(g.dtype).eps * g.abs().sum(1).max().item() + (g.double().abs() * cancel).sum(1)
    assert (g.double().sum(1).abs() <= atol).all(), (g.double().sum(1).abs() - atol).max()
    _, g_ref = _grad(H.cross_entropy, x.double(), y.double() if y.is_floating_point() else y, reduction="sum",
                     k=k, backend="reference", **{n: v.double() if torch.is_tensor(v) else v for n, v in kw.items()})
    # an fp32 evaluation is allowed twice the error of the same math in fp32 (the reference)
    # and the cancellation share
    _, g_fp32 = _grad(H.cross_entropy, x, y, reduction="sum", k=k, backend="reference", **kw)
    allowed = 2e-5 * g_ref.abs() + 2e-6 * g_ref.abs().max() + 2 * (g_fp32.double() - g_ref).abs() + g_ref.abs() * cancel
    assert ((g.double() - g_ref).abs() <= allowed).all(), (g.double() - g_ref).abs().max()


def test_large_row_131072(backend, device):
    x = torch.randn(2, 131072, device=device) * 5
    y = torch.tensor([5, 131071], device=device)
    for k in (0.5, 1.0):
        loss, g = _grad(H.cross_entropy, x, y, k=k, backend=backend)
        ref_l, ref_g = _grad(H.cross_entropy, x.double(), y, k=k, backend="reference")
        torch.testing.assert_close(loss.double(), ref_l, rtol=1e-5, atol=0)
        torch.testing.assert_close(g.double(), ref_g, rtol=1e-4, atol=1e-5 * ref_g.abs().max().item())


def test_reduction_none_scales_rows(backend, device):
    x = torch.randn(9, 12, device=device, dtype=torch.float64)
    y = torch.randint(0, 12, (9,), device=device)
    xr = x.clone().requires_grad_(True)
    out = H.cross_entropy(xr, y, reduction="none", k=0.5, backend=backend)
    up = torch.randn(9, dtype=torch.float64, device=device)
    out.backward(up)
    f = torch.from_numpy(oracle.keren_grad(x.cpu().numpy(), y.cpu().numpy(), 0.5)).to(device)
    torch.testing.assert_close(xr.grad, up[:, None] * f)


def test_mixture_k1_equals_autograd_of_mcel(backend, device):
    C = 10
    A = torch.softmax(torch.randn(C, C, dtype=torch.float64, device=device), 1).fill_diagonal_(0)
    A = A / A.sum(1, keepdim=True)
    W = H.mcel.simple_mixture(A, 0.25).requires_grad_(True)
    x = torch.randn(16, C, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.randint(0, C, (16,), device=device)
    y[3] = -100
    H.cross_entropy(x, y, mixture=W, backend=backend).backward()
    gx, gW = x.grad, W.grad
    x.grad = W.grad = None
    keep = y != -100
    explicit = -(W[y[keep]] * torch.log_softmax(x[keep], 1)).sum(1).mean()
    explicit.backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gW, W.grad)


def test_gradcheck_mcel_logits_and_mixture(backend, device):
    C = 5
    W = torch.softmax(torch.randn(C, C, dtype=torch.float64, device=device), 1).requires_grad_(True)
    x = torch.randn(6, C, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.randint(0, C, (6,), device=device)
    w = torch.rand(C, dtype=torch.float64, device=device) + 0.5
    assert torch.autograd.gradcheck(
        lambda x, W: H.cross_entropy(x, y, w, mixture=W, reduction="none", backend=backend), (x, W))
    probs = torch.softmax(torch.randn(6, C, dtype=torch.float64, device=device), 1).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, p: H.cross_entropy(x, p, w, label_smoothing=0.1, backend=backend), (x, probs))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_and_all_ignored_batches_are_finite(backend, device, reduction):
    for x, y in [(torch.randn(0, 5, device=device), torch.zeros(0, dtype=torch.long, device=device)),
                 (torch.randn(4, 5, device=device), torch.full((4,), -100, device=device))]:
        for kw in ({}, {"weight": torch.rand(5, device=device)}, {"trim": 0.5}, {"k": 0.5}):
            loss, g = _grad(H.cross_entropy, x, y, reduction=reduction, backend=backend, **kw)
            assert torch.isfinite(loss).all() and (loss == 0).all()
            assert (g == 0).all()


def test_module_is_a_drop_in(backend, device):
    C = 8
    w = torch.rand(C, device=device) + 0.5
    ours = H.HardCrossEntropyLoss(weight=w, ignore_index=1, label_smoothing=0.05, backend=backend)
    theirs = torch.nn.CrossEntropyLoss(weight=w, ignore_index=1, label_smoothing=0.05)
    x = torch.randn(12, C, 3, device=device)
    y = torch.randint(0, C, (12, 3), device=device)
    lo, go = _grad(ours, x, y)
    lt, gt = _grad(theirs, x, y)
    torch.testing.assert_close(lo, lt)
    torch.testing.assert_close(go, gt)
    assert "weight" in dict(ours.named_buffers())


@pytest.mark.parametrize("k", [0.5, 1.0])
def test_inplace_backward_same_gradient(backend, device, k):
    x = torch.randn(10, 33, device=device) * 2
    y = torch.randint(0, 33, (10,), device=device)
    _, g = _grad(H.cross_entropy, x, y, k=k, backend=backend)
    leaf = x.clone().requires_grad_(True)
    logits = leaf * 1.0  # an intermediate, as the output of an lm_head would be
    loss = H.cross_entropy(logits, y, k=k, inplace_backward=True, backend=backend)
    loss.backward()
    torch.testing.assert_close(leaf.grad, g)
    with pytest.raises(ValueError, match="inplace_backward"):
        H.cross_entropy(x.clone().requires_grad_(True), y, inplace_backward=True, backend=backend)


def test_no_grad_forward_matches(backend, device):
    x = torch.randn(7, 21, device=device)
    y = torch.randint(0, 21, (7,), device=device)
    with torch.no_grad():
        loss = H.cross_entropy(x, y, k=0.5, backend=backend)
    torch.testing.assert_close(loss, F.cross_entropy(x, y))

"""linear_cross_entropy against the materialised head cross_entropy(F.linear(h, W, b), y, ...), on
every backend that runs here (Triton under the interpreter): value and gradients w.r.t. input,
linear_weight and linear_bias, for every option, with several chunks per batch."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (CPU tensors)

import pytest
import torch
import torch.nn.functional as F

import hardloss_cuda as H

from .conftest import api_backends

pytestmark = [
    api_backends(),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

OPTIONS = [
    {}, {"k": 0.5}, {"k": 2.0}, {"label_smoothing": 0.1}, {"weight": True}, {"ignore_index": 2},
    {"trim": 0.5}, {"trim": 0.5, "reduction": "sum"}, {"reduction": "sum"}, {"reduction": "none"},
    {"reduction": "none", "trim": 0.5}, {"probs": True}, {"probs": True, "k": 0.5}, {"mixture": True},
    {"mixture": True, "k": 0.5, "weight": True},
    {"softcap": 3.0}, {"softcap": 3.0, "k": 0.5, "label_smoothing": 0.1}, {"z_loss": 0.01},
    {"z_loss": 0.01, "ignore_index": 2, "weight": True}, {"z_loss": 0.01, "trim": 0.5},
    {"z_loss": 0.01, "reduction": "sum", "softcap": 2.0}, {"z_loss": 0.01, "reduction": "none"},
    {"z_loss": 0.01, "reduction": "none", "trim": 0.5, "k": 2.0},
]


def _case(opts, N, D, C, dtype, device, bias=True):
    h = torch.randn(N, D, dtype=dtype, device=device)
    W = (torch.randn(C, D, dtype=dtype, device=device) / D**0.5)
    b = torch.randn(C, dtype=dtype, device=device) if bias else None
    kw = {k: v for k, v in opts.items() if k not in ("probs", "mixture", "weight")}
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    if opts.get("weight"):
        kw["weight"] = torch.rand(C, dtype=acc, device=device) + 0.5
    if opts.get("mixture"):
        A = torch.rand(C, C, dtype=acc, device=device).fill_diagonal_(0)
        kw["mixture"] = H.mcel.simple_mixture(A / A.sum(1, keepdim=True), 0.2)
    if opts.get("probs"):
        y = torch.softmax(torch.randn(N, C, device=device), 1).to(dtype)
    else:
        y = torch.randint(0, C, (N,), device=device)
        y[::5] = kw.get("ignore_index", -100)
    return h, W, b, y, kw


def _both(h, W, b, y, kw, backend, chunk_size, g=None):
    """(loss, grads) of the fused head and of the materialised one, for incoming gradient g."""
    out = []
    for fused in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in (h, W, b) if t is not None]
        hh, WW, bb = leaves[0], leaves[1], leaves[2] if b is not None else None
        if fused:
            loss = H.linear_cross_entropy(hh, WW, y, linear_bias=bb, chunk_size=chunk_size, backend=backend, **kw)
        else:
            loss = H.cross_entropy(F.linear(hh, WW, bb), y, backend=backend, **kw)
        gl = torch.ones_like(loss) if g is None else g
        out.append((loss.detach(), torch.autograd.grad(loss, leaves, gl)))
    return out


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_matches_materialised_head_fp64(backend, device, opts):
    if backend == "triton" and device == "cpu" and opts.get("mixture") and opts.get("k", 1) != 1:
        pytest.skip("covered by the other Triton cases; the interpreter is slow")
    N, D, C = 23, 8, 11
    h, W, b, y, kw = _case(opts, N, D, C, torch.float64, device)
    g = torch.rand(N, dtype=torch.float64, device=device) + 0.5 if opts.get("reduction") == "none" else None
    (l1, g1), (l2, g2) = _both(h, W, b, y, kw, backend, chunk_size=4, g=g)  # 6 chunks, the last short
    torch.testing.assert_close(l1, l2, rtol=1e-10, atol=1e-12)
    for name, a, c in zip(("input", "linear_weight", "linear_bias"), g1, g2):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12, msg=name)


def test_3d_input_no_bias_and_module(backend, device):
    B, T, D, C = 3, 5, 6, 9
    h = torch.randn(B, T, D, dtype=torch.float64, device=device, requires_grad=True)
    W = torch.randn(C, D, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.randint(0, C, (B, T), device=device)
    loss_fn = H.HardLinearCrossEntropyLoss(reduction="none", k=0.5, chunk_size=4, backend=backend)
    loss = loss_fn(h, W, y)
    assert loss.shape == (B, T)
    ref = H.cross_entropy(F.linear(h, W).reshape(-1, C), y.reshape(-1), reduction="none", k=0.5, backend=backend)
    torch.testing.assert_close(loss.reshape(-1), ref, rtol=1e-10, atol=1e-12)
    g = torch.rand(B, T, dtype=torch.float64, device=device)
    ga = torch.autograd.grad(loss, (h, W), g)
    gb = torch.autograd.grad(ref, (h, W), g.reshape(-1))
    for a, c in zip(ga, gb):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


LOW_PRECISION_OPTIONS = [{}, {"k": 0.5}, {"label_smoothing": 0.1, "weight": True}, {"trim": 0.5},
                         {"softcap": 3.0, "z_loss": 1e-3}, {"probs": True}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("opts", LOW_PRECISION_OPTIONS,
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_low_precision_within_the_materialised_error(backend, device, dtype, opts):
    """Against a float64 truth, no worse than 2x the materialised head's own error plus a floor
    (chunked grad_weight sums round once per chunk)."""
    if backend == "triton" and device == "cpu" and opts:
        pytest.skip("the interpreter is slow; the plain case covers Triton's chunking")
    N, D, C = 40, 16, 50
    h, W, b, y, kw = _case(opts, N, D, C, dtype, device)
    (l1, g1), (l2, g2) = _both(h, W, b, y, kw, backend, chunk_size=7)
    (lt, gt), _ = _both(h.double(), W.double(), b.double(), y, kw, backend, chunk_size=7)
    floor = 1e-6 if dtype == torch.float32 else 2e-2
    assert (l1.double() - lt).abs().item() <= 2 * (l2.double() - lt).abs().item() + floor
    for name, a, c, t in zip(("input", "linear_weight", "linear_bias"), g1, g2, gt):
        err = (a.double() - t).abs().max().item()
        assert err <= 2 * (c.double() - t).abs().max().item() + floor * t.abs().max().item(), name


def test_bad_arguments(backend, device):
    h = torch.randn(4, 3, device=device)
    W = torch.randn(5, 3, device=device)
    y = torch.randint(0, 5, (4,), device=device)
    with pytest.raises(ValueError, match="linear_weight"):
        H.linear_cross_entropy(h, torch.randn(5, 4, device=device), y, backend=backend)
    with pytest.raises(ValueError, match="linear_bias"):
        H.linear_cross_entropy(h, W, y, linear_bias=torch.randn(4, device=device), backend=backend)
    with pytest.raises(ValueError, match="chunk_size"):
        H.linear_cross_entropy(h, W, y, chunk_size=0, backend=backend)
    with pytest.raises(ValueError, match="target"):
        H.linear_cross_entropy(h, W, torch.tensor([0, 1, 7, 2], device=device), backend=backend)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="softcap"):
            H.linear_cross_entropy(h, W, y, softcap=bad, backend=backend)
    for bad in (-1e-3, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="z_loss"):
            H.linear_cross_entropy(h, W, y, z_loss=bad, backend=backend)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_return_lse_is_differentiable(backend, device, reduction):
    """(loss, lse) with a later term on lse: the gradients equal the materialised head's, whose
    lse gradient (softmax) comes from the backward op; ignored rows have lse 0 and no gradient."""
    N, D, C = 17, 6, 9
    h, W, b, y, kw = _case({"z_loss": 1e-2, "softcap": 4.0, "reduction": reduction}, N, D, C, torch.float64, device)
    out = []
    for fused in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in (h, W, b)]
        if fused:
            loss, lse = H.linear_cross_entropy(leaves[0], leaves[1], y, linear_bias=leaves[2], chunk_size=5,
                                               return_lse=True, backend=backend, **kw)
        else:
            loss, lse = H.cross_entropy(F.linear(*leaves), y, return_lse=True, backend=backend, **kw)
        total = loss.sum() + 0.3 * (lse * torch.arange(N, device=device)).sum()
        out.append((loss.detach(), lse.detach(), torch.autograd.grad(total, leaves)))
    (l1, s1, g1), (l2, s2, g2) = out
    torch.testing.assert_close(l1, l2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s1, s2, rtol=1e-10, atol=1e-12)
    assert (s1[y == -100] == 0).all() and (s1[y != -100] != 0).all()
    for name, a, c in zip(("input", "linear_weight", "linear_bias"), g1, g2):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12, msg=name)


def test_in_place_change_before_backward_raises(backend, device):
    """reduction="none" recomputes the logits in backward: a classifier changed in place in
    between must raise autograd's error, not give the gradient of the new weights."""
    h = torch.randn(6, 4, device=device, requires_grad=True)
    W = torch.randn(5, 4, device=device, requires_grad=True)
    loss = H.linear_cross_entropy(h, W, torch.randint(0, 5, (6,), device=device), reduction="none", backend=backend)
    with torch.no_grad():
        W.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.sum().backward()


@pytest.mark.parametrize("opts", [{"k": 0.5, "z_loss": 1e-2}, {"reduction": "none", "softcap": 3.0},
                                  {"trim": 0.5, "label_smoothing": 0.1}, {"reduction": "sum", "weight": True}],
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_torch_compile_fullgraph(backend, device, opts):
    """torch.compile(fullgraph=True) of a step around the head: the same loss and gradients as
    eager (compiled, the chunks' logits are fresh matmul outputs instead of one reused buffer).
    Trimming loops over the kept rows, a data-dependent count: compiled with a graph break."""
    if backend == "cuda_emu":
        pytest.skip("compiled ops on cuda_emu: test_ops.test_compile_fullgraph (CI time)")
    if backend == "triton" and device == "cpu":
        pytest.skip("torch.compile of the interpreted Triton kernels is not supported")
    h, W, b, y, kw = _case(opts, 12, 5, 9, torch.float64, device)

    def step(h, W, b):
        return H.linear_cross_entropy(h * 2, W, y, linear_bias=b, chunk_size=5, backend=backend, **kw).sum()

    out = []
    torch._dynamo.reset()
    for fn in (step, torch.compile(step, fullgraph="trim" not in opts)):
        leaves = [t.detach().clone().requires_grad_() for t in (h, W, b)]
        loss = fn(*leaves)
        out.append((loss.detach(), torch.autograd.grad(loss, leaves)))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-12, atol=1e-14)
    for a, c in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)

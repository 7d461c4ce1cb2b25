"""torch.func over the loss on every backend that runs here: per-sample gradients with
vmap(grad) against a loop over the samples, forward-mode AD (jvp, forward_ad) against finite
differences of the loss, Hessians at k = 1 against F.cross_entropy's, the clear error where a
transform would differentiate the pseudo-gradient (k != 1), and torch.compile over grad."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (CPU tensors)

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jvp, vmap

import hardloss_cuda as hl

from .conftest import api_backends

pytestmark = [
    api_backends(),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

B, T, C = 5, 3, 7  # 5 samples of 3 rows (tokens) each

OPTIONS = {
    "plain": {},
    "weight-ignore": {"weight": True, "ignore_index": 1},
    "smoothing": {"label_smoothing": 0.2},
    "probs": {"probs": True},
    "mixture": {"mixture": True},
    "k=0.5": {"k": 0.5},
    "k=2-weight": {"k": 2.0, "weight": True},
    "softcap-z_loss": {"softcap": 2.0, "z_loss": 0.05},
    "trim": {"trim": 0.5},
    "sum": {"reduction": "sum", "k": 0.5},
}


def _case(opts, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 2
    kw = {k: v for k, v in opts.items() if k not in ("probs", "mixture", "weight")}
    if opts.get("weight"):
        kw["weight"] = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(device)
    if opts.get("mixture"):
        kw["mixture"] = hl.mcel.simple_mixture(torch.full((C, C), 1.0 / C, dtype=torch.float64), 0.3).to(device)
    if opts.get("probs"):
        y = torch.softmax(torch.randn(B, T, C, generator=g, dtype=torch.float64), -1)
    else:
        y = torch.randint(0, C, (B, T), generator=g)
        if "ignore_index" in kw:
            y[1, :] = kw["ignore_index"]  # a sample with every row ignored: gradient 0
            y[2, 0] = kw["ignore_index"]
    return x.to(device), y.to(device), kw


@pytest.mark.parametrize("name", list(OPTIONS))
def test_vmap_grad_per_sample_equals_a_loop(backend, device, name):
    """vmap(grad(loss of one sample)) == the gradient of each sample's loss alone; trimming
    inside vmap trims each sample as its own batch."""
    x, y, kw = _case(OPTIONS[name], device)

    def loss(xi, yi):
        return hl.cross_entropy(xi, yi, backend=backend, **kw)

    per_sample = vmap(grad(loss))(x, y)
    for b in range(B):
        xb = x[b].detach().clone().requires_grad_()
        loss(xb, y[b]).backward()
        torch.testing.assert_close(per_sample[b], xb.grad, rtol=1e-12, atol=1e-14, msg=f"sample {b}")


def test_vmap_of_the_loss_and_its_lse(backend, device):
    x, y, _ = _case({}, device)

    def f(xi, yi):
        return hl.cross_entropy(xi, yi, reduction="none", return_lse=True, backend=backend)

    loss, lse = vmap(f)(x, y)
    ref = F.cross_entropy(x.reshape(-1, C), y.reshape(-1), reduction="none").reshape(B, T)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(lse, torch.logsumexp(x, -1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["plain", "weight-ignore", "k=0.5", "softcap-z_loss", "smoothing"])
def test_jvp_is_the_directional_derivative_of_the_loss(backend, device, name):
    """For every k the forward-mode derivative is the true loss's (the pseudo-gradient only
    replaces the backward): against central differences in float64."""
    x, y, kw = _case(OPTIONS[name], device)
    x, y = x.reshape(-1, C), y.reshape(-1)
    v = torch.randn_like(x)

    def f(z):
        return hl.cross_entropy(z, y, backend=backend, **kw)

    value, tangent = jvp(f, (x,), (v,))
    h = 1e-6
    fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-9)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, v)
        out = torch.autograd.forward_ad.unpack_dual(f(dual))
    torch.testing.assert_close(out.tangent, tangent, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.primal, value, rtol=0, atol=0)


@pytest.mark.parametrize("what", ["probs", "mixture"])
def test_jvp_through_the_targets(backend, device, what):
    x, y, kw = _case({what: True}, device)
    x, y = x.reshape(-1, C), (y.reshape(-1, C) if what == "probs" else y.reshape(-1))
    h = 1e-6
    if what == "probs":
        v = torch.randn_like(y)
        f = lambda t: hl.cross_entropy(x, t, backend=backend)  # noqa: E731
        primal = y
    else:
        v = torch.randn_like(kw["mixture"])
        f = lambda W: hl.cross_entropy(x, y, mixture=W, backend=backend)  # noqa: E731
        primal = kw["mixture"]
    _, tangent = jvp(f, (primal,), (v,))
    fd = (f(primal + h * v) - f(primal - h * v)) / (2 * h)
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-9)


def test_hessian_at_k1_and_the_error_otherwise(backend, device):
    x, y, _ = _case({}, device)
    x, y = x[0], y[0]
    H = hessian(lambda z: hl.cross_entropy(z, y, backend=backend))(x)
    H_ref = hessian(lambda z: F.cross_entropy(z, y))(x)
    torch.testing.assert_close(H, H_ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="double backward is supported at k = 1 only"):
        hessian(lambda z: hl.cross_entropy(z, y, k=0.5, backend=backend))(x)


def test_inplace_backward_refused_inside_transforms(backend, device):
    x, y, _ = _case({}, device)
    with pytest.raises(RuntimeError, match="inplace_backward"):
        grad(lambda z: hl.cross_entropy(z * 1.0, y[0], inplace_backward=True, backend=backend))(x[0])


def test_compile_over_grad(backend, device):
    """torch.compile over torch.func.grad, at k = 1 and k != 1. (Over vmap(grad) Dynamo stops:
    it cannot vmap a user autograd.Function; README "What composes with what".)"""
    if backend == "cuda_emu":
        pytest.skip("compiled ops on cuda_emu: test_ops.test_compile_fullgraph (CI time)")
    if backend == "triton" and device == "cpu":
        pytest.skip("torch.compile of the interpreted Triton kernels is not supported")
    x, y, _ = _case({}, device)
    for k in (1.0, 0.5):
        def per_sample(xi, yi, k=k):
            return hl.cross_entropy(xi, yi, k=k, backend=backend)

        torch._dynamo.reset()
        eager = grad(per_sample)(x[0], y[0])
        compiled = torch.compile(grad(per_sample), fullgraph=True)(x[0], y[0])
        torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-14)

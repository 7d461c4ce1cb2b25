"""One test per defect that a differential fuzz of the newer surface found (linear_cross_entropy,
softcap, the vocab-parallel loss, argument checks), each failing on the code before its fix, on
every backend that runs here (Triton under the interpreter)."""

from __future__ import annotations

import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (CPU tensors)

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import hardloss_cuda as hl
from hardloss_cuda._ops import bwd_op, fwd_op, shard_stats_op
from hardloss_cuda._schema import STATS_COLS, acc_dtype
from hardloss_cuda.distributed import vocab_parallel_cross_entropy

from ._backends import backend_names
from .conftest import api_backends
from .test_distributed import LAYOUTS, _backends, _free_port, _run_case, _spawn

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


# ---------------------------------------------------------------------------- linear_cross_entropy


@pytest.mark.parametrize("case", ["(T, B) labels for (B, T, D)", "(C, N) probabilities for (N, D)",
                                  "(N, C) probabilities for (B, T, D)", "labels (N, 1)"])
def test_linear_target_shape_is_checked_not_reshaped(case):
    """A target with the right number of elements but the wrong shape pairs labels with the
    wrong rows: it raises, as cross_entropy on the materialised logits does."""
    B, T, D, C = 3, 4, 5, 7
    W = torch.randn(C, D)
    h, y = {
        "(T, B) labels for (B, T, D)": (torch.randn(B, T, D), torch.randint(C, (T, B))),
        "(C, N) probabilities for (N, D)": (torch.randn(6, D), torch.softmax(torch.randn(C, 6), 0)),
        "(N, C) probabilities for (B, T, D)": (torch.randn(B, T, D), torch.softmax(torch.randn(B * T, C), 1)),
        "labels (N, 1)": (torch.randn(6, D), torch.randint(C, (6, 1))),
    }[case]
    with pytest.raises(ValueError):  # the materialised head refuses it too
        hl.cross_entropy(F.linear(h, W).movedim(-1, 1) if h.dim() == 3 else F.linear(h, W), y)
    with pytest.raises(ValueError, match="target"):
        hl.linear_cross_entropy(h, W, y)


@api_backends()
def test_linear_zero_features(backend, device):
    """D = 0: the logits are the bias (or 0), as F.linear gives them; gradients of shape (N, 0)
    and (C, 0)."""
    h = torch.randn(5, 0, dtype=torch.float64, device=device, requires_grad=True)
    W = torch.randn(3, 0, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1, 0], device=device)
    loss = hl.linear_cross_entropy(h, W, y, linear_bias=b, backend=backend)
    want = F.cross_entropy(F.linear(h, W, b), y)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    gh, gW, gb = torch.autograd.grad(loss, (h, W, b))
    assert gh.shape == (5, 0) and gW.shape == (3, 0)
    torch.testing.assert_close(gb, torch.autograd.grad(want, b)[0], rtol=1e-12, atol=1e-15)


def test_wrong_argument_types_raise_the_right_errors():
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    for name in ("k", "softcap", "z_loss"):
        with pytest.raises(ValueError, match=name):
            hl.cross_entropy(x, y, **{name: torch.tensor([1.0, 2.0])})
        with pytest.raises(ValueError, match=name):
            hl.linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 3), torch.arange(4), **{name: torch.ones(2)})
    assert hl.cross_entropy(x, y, k=torch.tensor([0.5])).isfinite()  # one element: its value
    with pytest.raises(TypeError, match="target"):
        hl.linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 3), [0, 1, 2, 3])
    with pytest.raises(TypeError, match="linear_weight"):
        hl.linear_cross_entropy(torch.randn(4, 3), [[0.0] * 3] * 5, torch.arange(4))
    with pytest.raises(TypeError, match="input"):
        hl.linear_cross_entropy([[0.0] * 3] * 4, torch.randn(5, 3), torch.arange(4))
    with pytest.raises(TypeError, match="linear_bias"):
        hl.linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 3), torch.arange(4), linear_bias=[0.0] * 5)


@api_backends()
def test_linear_trim_confident_rows_fp32(backend, device):
    """Trimming recomputes the kept rows' logits with a matmul of another shape than the
    forward's chunks (21 kept rows: chunks of 16 and 5; on the CPU a matmul of under 8 rows
    rounds unlike one of 16). With the forward's row statistics, exp(z - m) of a confident row's
    top class was off by ~ulp(|z|) (|z| up to ~400 here), 8-15x the materialised head's error
    in the bias gradient. Every gradient within 2x the materialised head's error."""
    g = torch.Generator().manual_seed(0)
    N, D, C = 48, 96, 37
    h = torch.randn(N, D, generator=g, dtype=torch.float64)
    W = torch.randn(C, D, generator=g, dtype=torch.float64) * 12  # logits of ~1e3
    b = torch.randn(C, generator=g, dtype=torch.float64)
    z = F.linear(h, W, b)
    y = z.argmax(1)  # confident and right: the dominant class's gradient is tiny
    y[::3] = torch.randint(C, (N,), generator=g)[::3]
    h, W, b, y = h.float().to(device), W.float().to(device), b.float().to(device), y.to(device)
    for kw in ({"label_smoothing": 0.1}, {}, {"label_smoothing": 0.05, "k": 0.5}):
        grads = {}
        for name, dtype in (("truth", torch.float64), ("torch", torch.float32), ("ours", torch.float32)):
            leaves = [t.detach().to(dtype).requires_grad_() for t in (h, W, b)]
            if name == "ours":
                loss = hl.linear_cross_entropy(*leaves[:2], y, linear_bias=leaves[2], trim=0.4375, chunk_size=16,
                                               backend=backend, **kw)
            else:  # the materialised head, trimmed the same way (the kept rows of the float64 losses)
                logits = F.linear(*leaves)
                be = "reference" if name == "truth" else backend
                loss = hl.cross_entropy(logits, y, trim=0.4375, backend=be, **kw)
            grads[name] = torch.autograd.grad(loss, leaves)
        for i, what in enumerate(("input", "linear_weight", "linear_bias")):
            t = grads["truth"][i]
            err = (grads["ours"][i].double() - t).abs().max().item()
            err_t = (grads["torch"][i].double() - t).abs().max().item()
            floor = 4 * 2.0**-24 * t.abs().max().item()
            assert err <= 2 * err_t + floor, (kw, what, err, err_t, floor)


@api_backends()
@pytest.mark.parametrize("reduction,trim", [("mean", None), ("sum", None), ("mean", 0.5)])
def test_linear_loss_and_lse_gradients_rounded_once(backend, device, reduction, trim):
    """With return_lse, a logit's gradient (g f_j + g_lse p_j) slope_j was computed in two parts:
    the loss's in forward, the lse's in backward, each rounded to bf16 and then summed. Where
    they cancel, the rounding of each is amplified: grad_input was 15-25% off in bf16 (found by
    test_fuzz_linear: a softcap of 0.5 at |z / c| ~ 4, k = 1/16), the materialised head 1e-3.
    Now both go into one op call per chunk in backward. Every gradient within 2x the
    materialised head's error + 4 ulp."""
    h = torch.tensor([[0.6602, 0.2676, 0.0618, 0.6211, -0.4512], [-0.1660, -1.5234, 0.3809, -1.0312, -0.5625]])
    W = torch.tensor([[-12.0, -0.7812, -2.625, -12.9375, 5.6562], [3.5938, -5.6562, -6.8438, -21.125, -1.6562],
                      [48.0, -24.625, 21.5, -17.125, 4.375]])
    b = torch.tensor([-4.7812, 13.8125, 25.25])
    y = torch.tensor([2, 2], device=device)
    g, g_lse = torch.tensor(-0.8), torch.tensor([1.1, 0.9])
    kw = dict(k=0.0625, softcap=0.5, return_lse=True, reduction=reduction, trim=trim)
    grads = {}
    for name, dtype in (("truth", torch.float64), ("torch", torch.bfloat16), ("ours", torch.bfloat16)):
        leaves = [t.to(torch.bfloat16).to(dtype).to(device).requires_grad_() for t in (h, W, b)]
        if name == "ours":
            loss, lse = hl.linear_cross_entropy(*leaves[:2], y, linear_bias=leaves[2], backend=backend, **kw)
        else:
            be = "reference" if name == "truth" else backend
            loss, lse = hl.cross_entropy(F.linear(*leaves), y, backend=be, **kw)
        total = loss * g.to(dtype).to(device) + (lse * g_lse.to(lse.dtype).to(device)).sum()
        grads[name] = torch.autograd.grad(total, leaves)
    for i, what in enumerate(("input", "linear_weight", "linear_bias")):
        t = grads["truth"][i]
        err = (grads["ours"][i].double() - t).abs().max().item()
        err_t = (grads["torch"][i].double() - t).abs().max().item()
        floor = 4 * 2.0**-8 * t.abs().max().item()
        assert err <= 2 * err_t + floor, (what, err, err_t, floor)


@api_backends()
@pytest.mark.parametrize("reduction,trim", [("mean", None), ("sum", None), ("mean", 0.5)])
def test_linear_fp16_gradients_survive_loss_scaling(backend, device, reduction, trim):
    """fp16 under a loss scale (what torch.amp.GradScaler does: the loss times S, here 2^12, so
    that small gradients are not flushed below fp16's 6e-8). The head computed its gradients in
    forward at a unit incoming gradient, rounded them to fp16 there, and scaled them by S in
    backward: the logit gradients below 3e-8 became 0 where the materialised head keeps them as
    S times that (found by test_fuzz_linear: a 28% error in a subnormal grad_input). Now fp16
    computes them in backward. 60 classes biased far down (p ~ 1e-10) have such gradients only:
    every class's row of grad_weight, every entry of grad_bias and every row of grad_input
    within 2x the materialised head's error there + 4 ulp of its largest entry."""
    gen = torch.Generator().manual_seed(7)
    N, D, C, S = 48, 16, 300, 2.0**12
    h = torch.randn(N, D, generator=gen)
    W = (torch.randn(C, D, generator=gen) * 0.5).index_fill_(0, torch.arange(C - 60, C), 0.0)
    b = torch.zeros(C).index_fill_(0, torch.arange(C - 60, C), -12.0)
    y = torch.randint(0, C - 60, (N,), generator=gen)
    kw = dict(reduction=reduction, trim=trim)
    grads = {}
    for name, dtype in (("truth", torch.float64), ("torch", torch.float16), ("ours", torch.float16)):
        leaves = [t.to(torch.float16).to(dtype).to(device).requires_grad_() for t in (h, W, b)]
        if name == "ours":
            loss = hl.linear_cross_entropy(*leaves[:2], y.to(device), linear_bias=leaves[2], backend=backend, **kw)
        else:
            z = F.linear(*leaves)
            be = "reference" if name == "truth" else backend
            loss = hl.cross_entropy(z, y.to(device), backend=be, **kw)
        if name == "truth":  # the far classes' logit gradients: flushed at a unit scale, kept at S's
            G = torch.autograd.grad(loss, z, retain_graph=True)[0][:, C - 60:].abs()
            assert (G < 2.0**-25).all() and (G.amax(0) * S > 2.0**-24).all()
        grads[name] = torch.autograd.grad(loss, leaves, torch.full_like(loss, S))
    for i, what in enumerate(("input", "linear_weight", "linear_bias")):
        t = grads["truth"][i].reshape(grads["truth"][i].shape[0], -1)
        err = (grads["ours"][i].double().reshape(t.shape) - t).abs().amax(1)
        err_t = (grads["torch"][i].double().reshape(t.shape) - t).abs().amax(1)
        allowed = 2 * err_t + 4 * 2.0**-11 * t.abs().amax(1)
        assert (err <= allowed).all(), (what, (err / allowed).max().item(), err.max().item())


# ---------------------------------------------------------------------------- softcap


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("cap", [1e-46, 1e-40, 2.0**-127, 1e39, 1e-320, 1e309])
def test_softcap_outside_the_accumulation_range_raises(dtype, cap):
    """A cap that the accumulation dtype rounds to 0 (read as "no cap") or to inf: a clear error
    from the API and from every backend's ops, never a silent "no cap" (the CPU kernel took a
    float32 1e-46 as 0)."""
    lo, hi = (2.0**-1022, 1.7976931348623157e308) if dtype == torch.float64 else (2.0**-126, 3.4028234663852886e38)
    x, y = torch.randn(3, 4).to(dtype), torch.tensor([0, 1, 2])
    if lo <= cap <= hi:
        assert hl.cross_entropy(x, y, softcap=cap).isfinite()
        return
    with pytest.raises(ValueError, match="softcap"):
        hl.cross_entropy(x, y, softcap=cap)
    with pytest.raises(ValueError, match="softcap"):
        hl.linear_cross_entropy(torch.randn(3, 2).to(dtype), torch.randn(4, 2).to(dtype), y, softcap=cap)
    acc = acc_dtype(dtype)
    stats = torch.zeros(3, STATS_COLS, dtype=acc)
    for backend in backend_names(leave_out=("cuda_emu", "cuda")):
        with pytest.raises((ValueError, RuntimeError), match="softcap"):
            fwd_op(backend)(x, y, None, None, -100, 0.0, 1.0, True, cap)
        with pytest.raises((ValueError, RuntimeError), match="softcap"):
            bwd_op(backend)(torch.ones(3, dtype=acc), x, y, None, None, stats, -100, 0.0, 1.0, cap)
        with pytest.raises((ValueError, RuntimeError), match="softcap"):
            shard_stats_op(backend)(x, y, 1.0, cap)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_smallest_normal_softcap_caps(dtype):
    """The smallest accepted cap caps every logit at about +-cap: the loss of C classes is log C."""
    cap = float(torch.finfo(acc_dtype(dtype)).smallest_normal)
    x = (torch.randn(4, 5) * 10).to(dtype)
    for backend in backend_names(leave_out=("cuda_emu", "cuda", "triton")):
        loss = hl.cross_entropy(x, torch.arange(4), softcap=cap, reduction="none", backend=backend)
        torch.testing.assert_close(loss.double(), torch.full((4,), math.log(5), dtype=torch.float64), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------- vocab-parallel


def _truth_and_torch(z, y, s, grad_out, dtype):
    """(loss, gradient) of label-smoothed cross-entropy (reduction 'none', incoming gradient
    grad_out) in float64 (the truth) and in ``dtype`` (PyTorch's own)."""
    out = []
    for dt in (torch.float64, dtype):
        x = z.detach().to(dt).requires_grad_()
        loss = F.cross_entropy(x, y, reduction="none", label_smoothing=s)
        loss.backward(grad_out.to(dt))
        out.append((loss.detach().double(), x.grad.double()))
    return out


def _smoothing_precision(rank, world, backend):
    """Label smoothing at k = 1 (the fused path): on ranks that do not own a row's label, the
    stand-in label's column was t p_0 - q'_0 + (q'_0 - q_0) in the logits' dtype, an absolute
    error of ~u (1 - s) where the value is ~s / C (bf16: 0.125 of the slice's largest gradient,
    PyTorch 0.0019). And the loss: a class-0 logit of -3000 made the correction (1 - s) 3000."""
    N, C, s = (64, 4000, 0.1) if backend != "triton" else (16, 600, 0.1)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(N, C, generator=g, dtype=torch.float64) * 2
    y = torch.randint(C, (N,), generator=g)
    z[5, 0] = -3000.0  # an outlier in class 0 (rank 0's slice) on a row whose label rank 1 owns
    y[5] = C - 1
    z[6] = z[6] * 0.01  # a near-uniform row, and a confident one
    z[7, y[7]] += 40.0
    grad_out = torch.randn(N, generator=g, dtype=torch.float64)
    start, size = (0, C // 2) if rank == 0 else (C // 2, C - C // 2)
    for dtype in (torch.float32, torch.bfloat16):
        zd = z.to(dtype)
        (loss_t, grad_t), (loss_p, grad_p) = _truth_and_torch(zd.double(), y, s, grad_out, dtype)
        local = zd[:, start:start + size].clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(local, y, label_smoothing=s, reduction="none", backend=backend)
        loss.backward(grad_out.to(dtype))
        eps = torch.finfo(dtype).eps
        sl = slice(start, start + size)
        # elementwise: 2x PyTorch's error, 2 ulp, and the rounding of g (t p_j - q_j) in fp32, where
        # p_j = exp(z_j - lse) carries a relative error of ~u (1 + log2 C + |log p_j|)
        logp = torch.log_softmax(zd.double(), 1)[:, sl]
        q = (1 - s) * F.one_hot(y, C).double()[:, sl] + s / C
        model = 8 * 2.0**-24 * grad_out.abs()[:, None] * (logp.exp() * (1 + math.log2(C) - logp) + q)
        err = (local.grad.double() - grad_t[:, sl]).abs()
        allowed = 2 * (grad_p[:, sl] - grad_t[:, sl]).abs() + 2 * eps * grad_t[:, sl].abs() + model
        worst = (err / allowed).max().item()
        i, j = divmod(int((err / allowed).argmax()), size)
        assert worst <= 1, (f"rank {rank} {backend} {dtype} grad[{i}, {start + j}]: got {local.grad[i, j].item()}, "
                            f"truth {grad_t[i, start + j].item()}, PyTorch {grad_p[i, start + j].item()}; "
                            f"error / allowed {worst:.3g}")
        err_l = (loss.double() - loss_t).abs()
        allowed = 2 * (loss_p - loss_t).abs() + 4 * 2.0**-24 * loss_t.abs() * (1 + math.log2(C))
        assert (err_l <= allowed).all(), (f"rank {rank} {backend} {dtype} loss", err_l.max().item(),
                                          (err_l / allowed).max().item())


def _inplace_every_backend(rank, world):
    """Every backend, in place or not, gives the single-process gradient (the reference in place
    returned the logits as their gradient): one-hot at k = 1 and 0.5, smoothing fused (k = 1)
    and composed (k = 0.5), mixtures."""
    layout = LAYOUTS[2][0][1]
    for backend in _backends():
        for opts, k in (({}, 1.0), ({"weight": True}, 0.5), ({"label_smoothing": 0.1}, 1.0),
                        ({"label_smoothing": 0.1, "ignore": True}, 0.5), ({"mixture": True}, 1.0)):
            _run_case(rank, world, layout, False, backend, torch.float64, opts, k, "sum", 31, inplace=True)


def _masked_slice(rank, world):
    """Fused label smoothing (k = 1) where one rank's slice of a row is all -inf: the slice's
    kernel sees a bad row (NaN), but in the whole row those classes only have probability 0, so
    their smoothing targets make the loss inf, as in one process (the vocab-parallel loss gave
    NaN). A row of -inf on every rank stays NaN, an ignored one 0; the gradients match."""
    C, half = 8, 4
    z = torch.randn(5, C, generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # the same on every rank
    z[0, half:] = float("-inf")  # rank 1's slice of row 0
    z[1, :half] = float("-inf")  # rank 0's slice of row 1
    z[2] = float("-inf")  # everywhere: a bad row
    z[3] = float("-inf")  # ignored
    y = torch.tensor([1, 6, 2, -100, 5])
    for backend in _backends():
        full = z.clone().requires_grad_()
        want = hl.cross_entropy(full, y, label_smoothing=0.1, reduction="none", backend=backend)
        want.backward(torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64))
        start = 0 if rank == 0 else half
        local = z[:, start:start + half].clone().requires_grad_()
        got = vocab_parallel_cross_entropy(local, y, label_smoothing=0.1, reduction="none", backend=backend)
        got.backward(torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64))
        torch.testing.assert_close(got, want, equal_nan=True, msg=lambda m: f"{backend} loss: {m}")
        torch.testing.assert_close(local.grad, full.grad[:, start:start + half], equal_nan=True,
                                   msg=lambda m: f"{backend} grad: {m}")


def _worker(rank, world, port, which):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        if which == "inplace":
            _inplace_every_backend(rank, world)
        elif which == "masked-slice":
            _masked_slice(rank, world)
        else:
            for backend in _backends():
                _smoothing_precision(rank, world, backend)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("which", ["inplace", "smoothing-precision", "masked-slice"])
def test_vocab_parallel(which):
    _spawn(_worker, 2, _free_port(), which)


# ---------------------------------------------------------------------------- the softcap's slope


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cap", [1.0, 30.0])
@pytest.mark.parametrize("k", [1.0, 1 / 16])
def test_softcap_slope_keeps_its_relative_precision(dtype, cap, k):
    """Where tanh saturates, the slope 1 - (z_c / c)^2 of the rounded capped logit cancelled to
    its last bits (fp32 |z / c| = 8: 10-28% off, 1-2.7x PyTorch's own error; Triton fp64 2.4-3.9x);
    taken as 4 w / (1 + w)^2 from the raw logit, every gradient element keeps a relative error of
    a few ulp times the capped logits' scale (on every backend)."""
    from . import fuzz_oracle as O

    umax = 8.0 if dtype == torch.float32 else 17.0
    g = torch.Generator().manual_seed(7)
    u = torch.linspace(-umax, umax, 41, dtype=torch.float64) + 0.01 * torch.randn(24, 41, generator=g, dtype=torch.float64)
    x = (u * cap).to(dtype)
    y = torch.randint(41, (24,), generator=g)
    zc, slope = O.capped64(x.double().numpy(), cap)
    b = O.batch_truth(zc, y.numpy(), None, None, -100, 0.0, k)
    truth = torch.from_numpy(b.f * slope)  # reduction "sum", incoming gradient 1
    unit = torch.finfo(acc_dtype(dtype)).eps / 2
    allowed = 32 * unit * (1 + cap) * truth.abs() + torch.finfo(dtype).tiny
    for backend in backend_names(leave_out=("cuda_emu", "cuda")):
        xo = x.clone().requires_grad_()
        hl.cross_entropy(xo, y, softcap=cap, k=k, reduction="sum", backend=backend).backward()
        err = (xo.grad.double() - truth).abs()
        assert (err <= allowed).all(), (backend, (err / allowed).max().item())

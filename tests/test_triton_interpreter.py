"""The Triton kernels under the Triton interpreter (CPU tensors, no GPU needed).

``launch.fwd`` keeps (loss, stats) per row and ``launch.bwd`` rebuilds grad_loss times the
pseudo-gradient from stats in one pass (hardloss_cuda/_schema.py). Every result is compared
with the float64 truth from ``hardloss_cuda.reference.rows``: the loss and stats[:, 0] with
its loss and logsumexp, bwd(gl) with gl[:, None] * its gradient. The tolerance is relative
to what the same math in PyTorch at the working precision gets (``reference.rows`` on the
low-precision input, accumulating in fp32 and rounding the gradient to the logits' dtype),
so ill-conditioned elements (|eps| near 0 with small k) and bf16/fp16 rounding are judged
fairly, plus a plain relative tolerance.
"""

import importlib
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton and the kernels are imported

import pytest
import torch

pytest.importorskip("numpy", reason="the Triton interpreter needs numpy")
pytest.importorskip("triton", reason="triton is not installed")


def _load_interpreted():
    """triton.jit chooses the interpreter when a kernel is decorated: if another test module
    imported the kernels without TRITON_INTERPRET, reload the kernel modules."""
    import hardloss_cuda.triton_kernels.launch as launch

    if type(launch.onehot_fwd_kernel).__name__ != "InterpretedFunction":
        for name in ("rowmath", "fwd", "bwd", "config", "launch"):
            importlib.reload(sys.modules[f"hardloss_cuda.triton_kernels.{name}"])
    return launch


launch = _load_interpreted()
from hardloss_cuda.reference import rows  # noqa: E402
from hardloss_cuda._schema import SIDE_POS, STATS_COLS  # noqa: E402
from hardloss_cuda import reference  # noqa: E402
from hardloss_cuda.triton_kernels.config import plan  # noqa: E402

from ._backends import FLOOR, RTOL, SAME_INPUT  # noqa: E402

# The interpreter runs the kernels in numpy, which warns on log(0) and exp(inf - inf)
# exactly where the math means -inf / NaN.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

KS = [1 / 16, 0.5, 1.0, 2.0, 8.0]


def _f64(t):
    return None if t is None else (t.double() if t.is_floating_point() else t)


def _close(name, got, truth, baseline, dtype):
    """|got - truth| <= rtol |truth| + max(floor, 2 * max|baseline - truth|), NaN where the
    truth is NaN."""
    got, truth, baseline = got.double(), truth.double(), baseline.double()
    assert got.shape == truth.shape, name
    nan = torch.isnan(truth)
    assert torch.equal(torch.isnan(got), nan), f"{name}: NaN pattern differs"
    got, truth, baseline = got[~nan], truth[~nan], baseline[~nan]
    if got.numel() == 0:
        return
    inf = torch.isinf(truth)
    assert torch.equal(got[inf], truth[inf]), f"{name}: inf entries differ"
    got, truth, baseline = got[~inf], truth[~inf], baseline[~inf]
    if got.numel() == 0:
        return
    atol = max(FLOOR[dtype], 2 * (baseline - truth).abs().max().item())
    err = (got - truth).abs()
    bad = err > RTOL[dtype] * truth.abs() + atol
    assert not bad.any(), (
        f"{name}: max err {err.max().item():.3e} (atol {atol:.3e}, rtol {RTOL[dtype]}), "
        f"worst got {got[bad][:4].tolist()} truth {truth[bad][:4].tolist()}"
    )


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grad_loss(n, dtype, seed=5):
    """Incoming per-row gradients in [-0.5, 1.5); the last row (of 3 or more) gets 0, a
    trimmed-away row whose gradient must be exactly 0."""
    g = torch.Generator().manual_seed(seed)
    gl = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 0.5).to(_acc(dtype))
    if n >= 3:
        gl[-1] = 0
    return gl


def check(z, t, weight=None, mixture=None, ignore_index=-100, s=0.0, k=1.0, block_cap=None, gl=None):
    """fwd (with and without the gradient), bwd out of place and in place, against the
    float64 truth. Returns (loss, stats, bwd's gradient)."""
    N, C = z.shape
    acc = _acc(z.dtype)
    gl = _grad_loss(N, z.dtype) if gl is None else gl.to(acc)
    args = (t, weight, mixture, ignore_index, s, k)
    loss, stats = launch.fwd(z, *args, True, block_cap=block_cap)
    grad = launch.bwd(gl, z, t, weight, mixture, stats, ignore_index, s, k, block_cap=block_cap)

    t64 = t.double() if t.is_floating_point() else t
    truth = rows(z.double(), t64, _f64(weight), _f64(mixture), ignore_index, s, k)
    base = rows(z, t, weight, mixture, ignore_index, s, k)  # PyTorch at working precision
    assert loss.dtype == acc and stats.dtype == acc and grad.dtype == z.dtype
    assert loss.shape == (N,) and stats.shape == (N, STATS_COLS) and grad.shape == (N, C)
    _close("loss", loss, truth[0], base[0], z.dtype)
    _close("lse", stats[:, 0], truth[2], base[2], z.dtype)
    g64 = gl.double()[:, None]
    _close("grad", grad, g64 * truth[1], g64 * base[1].double(), z.dtype)

    soft = t.is_floating_point() or mixture is not None or s > 0
    if not t.is_floating_point():
        invalid = (t == ignore_index) | (t < 0) | (t >= C)
        assert (stats[invalid, 2:] == 0).all(), "stats columns 2.. of ignored / bad rows"
        if not soft:  # one-hot: column 2 is f_y, the unscaled gradient at the label
            ok = ~invalid
            y = t[ok][:, None]
            _close("f_y", stats[ok, 2], truth[1][ok].gather(1, y)[:, 0],
                   base[1][ok].gather(1, y)[:, 0], z.dtype)
    # Rows with gl == 0, a finite lse and a usable label: exactly 0.
    zero = (gl == 0) & torch.isfinite(stats[:, 0]) & torch.isfinite(stats[:, 2])
    if not t.is_floating_point():
        zero &= (t == ignore_index) | ((t >= 0) & (t < C))
    assert (grad[zero] == 0).all()

    # In place: the same bits in the logits' buffer.
    buf = z.clone(memory_format=torch.contiguous_format)
    res = launch.bwd(gl, buf, t, weight, mixture, stats, ignore_index, s, k, out=buf, block_cap=block_cap)
    assert res is buf
    assert torch.equal(buf.isnan(), grad.isnan()) and torch.equal(buf.nan_to_num(), grad.nan_to_num())

    # Without the gradient: same loss and lse, columns 1..3 are 0.
    loss2, stats2 = launch.fwd(z, *args, False, block_cap=block_cap)
    torch.testing.assert_close(loss2, loss, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(stats2[:, 0], stats[:, 0], equal_nan=True, rtol=0, atol=0)
    assert (stats2[:, 2:] == 0).all()
    return loss, stats, grad


def _logits(n, c, dtype=torch.float32, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g) * scale).to(dtype)


def _labels(n, c, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (n,), generator=g)


def _probs(n, c, dtype=torch.float32, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, c, generator=g) * 2, 1).to(dtype)


def _weight(c, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(c, generator=g) + 0.25


def _mixture(c, seed=4):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(c, c, generator=g)
    return w / w.sum(1, keepdim=True)


def _soft_args(mode, N, C, dtype=torch.float32):
    """(target, kwargs) for a soft mode, one ignored row for the class-index modes."""
    if mode == "probs":
        return _probs(N, C, dtype), {}
    t = _labels(N, C)
    t[min(4, N - 1)] = -100
    return t, ({"s": 0.1} if mode == "smooth" else {"mixture": _mixture(C).to(_acc(dtype))})


# ---------------------------------------------------------------- one-hot path


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("C", [1, 2, 3, 37, 1000])
def test_onehot(C, k):
    """One tile per row (default geometry), ragged C, C = 1 (f = 0), an ignored row."""
    N = 9
    t = _labels(N, C)
    t[4] = -100
    check(_logits(N, C), t, k=k)


@pytest.mark.parametrize("k", [0.5, 2.0])
def test_onehot_weight_and_custom_ignore_index(k):
    C = 37
    t = _labels(12, C)
    t[3] = 5  # ignore_index may be a real class: that row is still ignored
    loss, _, grad = check(_logits(12, C), t, weight=_weight(C), ignore_index=5, k=k)
    assert (loss[t == 5] == 0).all() and (grad[t == 5] == 0).all()


@pytest.mark.parametrize("k", [1 / 16, 1.0, 8.0])
def test_onehot_extreme_logits(k):
    """p_y -> 1, tiny p_y, logits ~ +-1e4 and -inf: no overflow, no 1 - p_y cancellation."""
    C = 6
    z = torch.zeros(5, C)
    z[0, 2] = 60.0  # p_y = 1 - 5e-27: loss and grad far below fp32 epsilon but exact
    z[1, 2] = -60.0  # target nearly impossible
    z[2] = torch.tensor([1e4, 1e4 - 3, -1e4, 1e4 + 2, 0.0, 5.0])
    z[3, 0] = float("-inf")  # a class with p = 0 (not the target)
    z[4] = 1e4 + torch.arange(C, dtype=torch.float32)
    t = torch.tensor([2, 2, 1, 4, 0])
    for cap in (None, 2):
        loss, _, grad = check(z, t, k=k, gl=torch.ones(5), block_cap=cap)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        torch.testing.assert_close(grad.double().sum(1), torch.zeros(5, dtype=torch.float64), atol=1e-6, rtol=0)


def test_large_C_default_block():
    """C > BLOCK_CAP loops with the default geometry (2**18 + 3 columns, one row each)."""
    C = 2**18 + 3
    z = _logits(2, C)
    t = torch.tensor([C - 1, 7])
    check(z, t, k=2.0)


# ---------------------------------------------------------------- soft paths


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("mode", ["smooth", "mixture", "probs"])
def test_soft(mode, k):
    N, C = 9, 37
    t, kw = _soft_args(mode, N, C)
    if mode == "probs" and k == 1.0:
        kw["s"] = 0.1
    check(_logits(N, C), t, k=k, **kw)


@pytest.mark.parametrize("mode", ["smooth", "mixture", "probs"])
def test_soft_weighted(mode):
    N, C = 9, 37
    z, w = _logits(N, C), _weight(C)
    if mode == "probs":
        check(z, _probs(N, C), weight=w, s=0.2, k=0.5)
    elif mode == "smooth":
        check(z, _labels(N, C), weight=w, s=0.3, k=2.0)
    else:
        check(z, _labels(N, C), weight=w, mixture=_mixture(C), k=2.0)


@pytest.mark.parametrize("C", [1, 2, 3, 1000])
def test_soft_ragged_C(C):
    check(_logits(5, C), _labels(5, C), s=0.1, k=0.5)
    check(_logits(5, C), _probs(5, C), k=2.0)
    check(_logits(5, C), _labels(5, C), mixture=_mixture(C), k=8.0)


def test_soft_extreme():
    """k = 8 with tiny positive eps (log-domain S_pos), k = 1/16 with underflowing p,
    logits ~ +-1e4."""
    C = 5
    z = torch.tensor([[80.0, 0, 0, -80, 0], [0, 0, 0, 0, 0], [1e4, 1e4 - 1, -1e4, 0, 1e4 + 1]])
    t = torch.tensor([0, 3, 2])
    for k in (1 / 16, 8.0):
        _, _, grad = check(z, t, s=0.05, k=k)
        assert torch.isfinite(grad).all()
        check(z, torch.softmax(z * 0.01, 1), k=k)
        check(z, t, mixture=_mixture(C), k=k, block_cap=2)


# ---------------------------------------------------------------- column loop, geometry


@pytest.mark.parametrize("case", ["onehot", "onehot_w", "smooth", "mixture", "probs_w"])
def test_column_loop(case):
    """block_cap=16 makes C = 100 take 7 column blocks (ragged last block)."""
    N, C = 4, 100
    z, t = _logits(N, C), _labels(N, C)
    t[2] = -100
    kw = dict(block_cap=16, k=2.0)
    if case == "onehot":
        check(z, t, **kw)
    elif case == "onehot_w":
        check(z, t, weight=_weight(C), **kw)
    elif case == "smooth":
        check(z, t, s=0.1, **kw)
    elif case == "mixture":
        check(z, t, mixture=_mixture(C), **kw)
    else:
        check(z, _probs(N, C), weight=_weight(C), s=0.1, **kw)


def test_many_rows_per_program():
    """Small C packs many rows into one program; N not a multiple of the rows per program."""
    N, C = 300, 5
    block, rows_per_prog, _ = plan(N, C)
    assert rows_per_prog > 1 and N % rows_per_prog
    t = _labels(N, C)
    t[::7] = -100
    gl = _grad_loss(N, torch.float32)
    gl[::5] = 0  # zero rows spread over every program
    check(_logits(N, C), t, k=0.5, gl=gl)
    check(_logits(N, C), t, s=0.1, k=2.0, gl=gl)


def test_plan():
    assert plan(10, 262144) == (8192, 1, 16)
    assert plan(10, 1000)[:2] == (1024, 4)
    assert plan(1000, 10)[:2] == (16, 256)
    assert plan(3, 10)[:2] == (16, 4)
    assert plan(5, 1)[:2] == (1, 8)
    assert plan(5, 100, block_cap=16)[:2] == (16, 1)


def test_noncontiguous_logits():
    z = _logits(37, 6).t()  # (6, 37), a transposed view
    t = _labels(6, 37)
    check(z, t, k=2.0)
    check(z, t, s=0.1, k=0.5)


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode", ["onehot", "smooth", "mixture", "probs"])
def test_dtypes(dtype, mode):
    N, C = 6, 37
    z = _logits(N, C, dtype)
    t = _labels(N, C)
    t[1] = -100
    if mode == "onehot":
        check(z, t, weight=_weight(C).to(_acc(dtype)), k=2.0)
    elif mode == "smooth":
        check(z, t, s=0.1, k=0.5)
    elif mode == "mixture":
        check(z, t, mixture=_mixture(C).to(_acc(dtype)), k=1.0)
    else:
        check(z, _probs(N, C, dtype), k=8.0, block_cap=16)


# ---------------------------------------------------------------- vocab-parallel kept pass


@pytest.mark.parametrize("mode,dtype,k,cap,glse,block_cap", [
    ("mixture", torch.float32, 0.5, 0.0, False, 16),  # 3 column blocks, the last ragged
    ("smooth", torch.float16, 3.0, 5.0, True, None),  # several rows per program
    ("probs", torch.bfloat16, 2.0, 0.0, True, None),
    ("smooth", torch.float64, 8.0, 5.0, False, None),
])
def test_soft_shard_kept_pass(mode, dtype, k, cap, glse, block_cap):
    """soft_shard_stats' kept pass (eps, side) over whole rows, turned into the gradient by
    soft_shard_grad: the same statistics as without it, eps / side as the reference's, and the
    gradient launch.bwd computes from the logits (the reference's op for ignored / bad rows,
    which bwd treats by label); a zero-gradient row is 0 without a read (NaN planted in its
    eps), a NaN row NaN, and out=eps gives the same bits."""
    N, C = 7, 37
    z = _logits(N, C, dtype)
    z[0, 5] = float("nan")  # no finite lse: a NaN row
    if mode == "mixture":  # dominant classes (the star path)
        mix = (0.9 * torch.eye(C) + 0.1 * _mixture(C)).to(_acc(dtype))
        t, kw = _labels(N, C), {"mixture": mix}
        t[4], t[5] = -100, C  # ignored, bad
    else:
        t, kw = _soft_args(mode, N, C, dtype)
    args = (t, kw.get("weight"), kw.get("mixture"), -100, kw.get("s", 0.0), k)
    _loss, stats = launch.fwd(z, *args, True, cap, block_cap=block_cap)
    acc = stats.dtype
    eps, side = torch.empty(N, C, dtype=acc), torch.empty(N, C, dtype=torch.int8)
    raw = launch.soft_shard_stats(z, *args[:3], stats, *args[3:], cap, eps, side, block_cap=block_cap)
    plain = launch.soft_shard_stats(z, *args[:3], stats, *args[3:], cap, block_cap=block_cap)
    torch.testing.assert_close(raw, plain, rtol=0, atol=0, equal_nan=True)
    want_eps, want_side = torch.empty_like(eps), torch.empty_like(side)
    reference.soft_shard_stats(z, *args[:3], stats, *args[3:], cap, want_eps, want_side)
    assert torch.equal(side, want_side)
    tol = SAME_INPUT[acc]
    torch.testing.assert_close(eps, want_eps, rtol=tol, atol=tol, equal_nan=True)

    gl = _grad_loss(N, dtype)  # the last row 0
    eps[-1], side[-1] = float("nan"), SIDE_POS  # never read
    g_lse = (torch.linspace(-1, 1, N, dtype=acc) * (gl != 0)) if glse else None
    out = torch.empty_like(z)
    launch.soft_shard_grad(gl, eps, side, z, stats, out, cap, g_lse, block_cap=block_cap)
    assert (out[-1] == 0).all() and out[0].isnan().all()
    want = torch.empty_like(z)
    reference.soft_shard_grad(gl, eps, side, z, stats, want, cap, g_lse)
    scale = SAME_INPUT[dtype] * want[1:].abs().max().item()
    torch.testing.assert_close(out, want, rtol=SAME_INPUT[dtype], atol=scale, equal_nan=True)
    valid = torch.ones(N, dtype=torch.bool) if t.is_floating_point() else (t >= 0) & (t < C)
    grad = launch.bwd(gl, z, *args[:3], stats, *args[3:], cap, g_lse, block_cap=block_cap)
    torch.testing.assert_close(out[valid], grad[valid], rtol=SAME_INPUT[dtype], atol=scale, equal_nan=True)
    if dtype in (torch.float32, torch.float64):  # the buffer becomes the gradient
        launch.soft_shard_grad(gl, eps, side, z, stats, eps, cap, g_lse, block_cap=block_cap)
        torch.testing.assert_close(eps, out, rtol=0, atol=0, equal_nan=True)


def test_soft_shard_kept_arguments_raise():
    z, t = _logits(3, 5), _labels(3, 5)
    _, stats = launch.fwd(z, t, None, None, -100, 0.1, 2.0, True)
    eps, side = torch.empty(3, 5), torch.empty(3, 5, dtype=torch.int8)
    with pytest.raises(ValueError, match="eps, side"):
        launch.soft_shard_stats(z, t, None, None, stats, -100, 0.1, 2.0, 0.0, eps)
    with pytest.raises(ValueError, match="k != 1"):
        launch.soft_shard_stats(z, t, None, None, stats, -100, 0.1, 1.0, 0.0, eps, side)
    with pytest.raises(ValueError, match="side"):
        launch.soft_shard_stats(z, t, None, None, stats, -100, 0.1, 2.0, 0.0, eps, side.to(torch.int32))
    gl = torch.ones(3)
    with pytest.raises(ValueError, match="out"):
        launch.soft_shard_grad(gl, eps, side, z, stats, torch.empty(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="eps"):
        launch.soft_shard_grad(gl, eps.t().contiguous().t(), side, z, stats, torch.empty(3, 5))


# ---------------------------------------------------------------- argument checks


def test_bad_arguments_raise():
    z, t = _logits(3, 5), _labels(3, 5)
    with pytest.raises(TypeError, match="logits"):
        launch.fwd(z.to(torch.int32), t, None, None, -100, 0.0, 1.0, True)
    with pytest.raises(ValueError, match="weight"):
        launch.fwd(z, t, torch.ones(4), None, -100, 0.0, 1.0, True)
    with pytest.raises(ValueError, match="mixture"):
        launch.fwd(z, t, None, torch.eye(4), -100, 0.0, 1.0, True)
    with pytest.raises(ValueError, match="target"):
        launch.fwd(z, t[:2], None, None, -100, 0.0, 1.0, True)

    _, stats = launch.fwd(z, t, None, None, -100, 0.0, 1.0, True)
    gl = torch.ones(3)
    bwd = launch.bwd
    with pytest.raises(ValueError, match="target"):
        bwd(gl, z, t[:2], None, None, stats, -100, 0.0, 1.0)
    with pytest.raises(ValueError, match="grad_loss"):
        bwd(gl[:2], z, t, None, None, stats, -100, 0.0, 1.0)
    with pytest.raises(ValueError, match="grad_loss"):
        bwd(gl.double(), z, t, None, None, stats, -100, 0.0, 1.0)
    with pytest.raises(ValueError, match="stats"):
        bwd(gl, z, t, None, None, stats[:, :3], -100, 0.0, 1.0)
    with pytest.raises(ValueError, match="stats"):
        bwd(gl, z, t, None, None, stats.half(), -100, 0.0, 1.0)
    with pytest.raises(ValueError, match="out"):
        bwd(gl, z, t, None, None, stats, -100, 0.0, 1.0, out=torch.empty(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="out"):
        bwd(gl, z, t, None, None, stats, -100, 0.0, 1.0, out=torch.empty(5, 3).t())

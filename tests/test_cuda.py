"""CUDA-specific tests of the compiled kernels (csrc/cuda/): the forward paths by row length
(fwd_kernels.cuh), the backward tiles (bwd_kernels.cuh), long rows, N * C > 2^31, bwd_inplace,
bad labels, rows with a zero incoming gradient, CUDA graphs, streams, devices, unaligned rows,
determinism. The generic suite (tests/test_api.py ...) already runs every backend test on CUDA
tensors when a GPU is present (tests/conftest.py); this file holds what only the CUDA kernels
need.

The launch-path tests run twice where they can: on a GPU (`device` "cuda", the ops on CUDA
tensors) and on the emulated CUDA backend (`device` "cpu", id cuda_emu: the same kernels run by
the emulator of csrc/cuda/emu on CPU tensors, docs/CUDA_EMU.md), there with fewer rows. What
needs the device itself (streams, graphs, a second GPU, N * C > 2^31) is skipped without a GPU.

The ops (hardloss_cuda/_schema.py): ``fwd`` returns (loss, stats) with stats[:, 0] the row
logsumexp (rounded; stats[:, 1] what it lost); ``bwd(grad_loss, logits, ..., stats, ...)`` returns grad_loss[:, None] times the
pseudo-gradient in the logits' dtype. The oracle is hardloss_cuda.reference.rows in float64 on
the same (rounded) inputs, with the tolerances of tests/test_api.py: one rounding of the output
in the dtype on top of fp32 accumulation, the gradient's absolute tolerance relative to its
largest entry.
"""

import os

import pytest
import torch

import hardloss_cuda as H
from hardloss_cuda import _library, reference
from hardloss_cuda._schema import SCALE_COL, STATS_COLS

from ._backends import SAME_INPUT

_GPU = torch.cuda.is_available()
_EMU = _library.CUDA_EMU is not None
gpu_only = pytest.mark.skipif(not _GPU, reason="no CUDA device")
# The devices of the launch-path tests: a GPU, and the emulated backend on CPU tensors.
DEVICES = [pytest.param("cuda", marks=gpu_only),
           pytest.param("cpu", id="cuda_emu", marks=pytest.mark.skipif(not _EMU, reason="cuda_emu not built"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _need_cuda_kernels(request):
    if "device" in request.fixturenames and request.getfixturevalue("device") == "cpu":
        return  # the emulated backend: its own module (DEVICES skips without it)
    if not _GPU:
        pytest.skip("no CUDA device")
    if not _library.has_compiled_op("cuda"):
        if os.environ.get("HARDLOSS_REQUIRE_EXTENSION") == "1":
            pytest.fail(f"HARDLOSS_REQUIRE_EXTENSION=1 but no CUDA kernel: {_library.C_IMPORT_ERROR}")
        pytest.skip("the extension was built without the CUDA kernels")


def emulated(device):
    """The emulated backend runs the kernels serially on the CPU: its tests take fewer rows."""
    return device == "cpu"


TOL = SAME_INPUT
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _op(x, name):
    """The CUDA kernels' op for x: hardloss_cuda::<name> on CUDA tensors, cuda_emu_<name> on CPU
    tensors (the emulated backend)."""
    return getattr(torch.ops.hardloss_cuda, name if x.is_cuda else f"cuda_emu_{name}")


def fwd(x, target, weight=None, mixture=None, ignore_index=-100, smoothing=0.0, k=1.0, grad=True):
    return _op(x, "fwd")(x, target, weight, mixture, ignore_index, smoothing, k, grad)


def bwd(gl, x, target, weight, mixture, stats, ignore_index=-100, smoothing=0.0, k=1.0):
    return _op(x, "bwd")(gl, x, target, weight, mixture, stats, ignore_index, smoothing, k)


def bwd_inplace(gl, x, target, weight, mixture, stats, ignore_index=-100, smoothing=0.0, k=1.0):
    return _op(x, "bwd_inplace")(gl, x, target, weight, mixture, stats, ignore_index, smoothing, k)


def acc(dtype):
    return reference.acc_dtype(dtype)


def make_target(kind, N, C, dtype, device, ignore_index=-100):
    """(target, weight, mixture, smoothing) for one of the paths."""
    a = acc(dtype)
    if kind == "probs":
        return torch.softmax(torch.randn(N, C, device=device) * 2, 1).to(dtype), None, None, 0.0
    y = torch.randint(0, C, (N,), device=device)
    if N > 2:
        y[1::7] = ignore_index
    if kind == "onehot":
        return y, None, None, 0.0
    if kind == "weighted":
        return y, torch.rand(C, device=device, dtype=a) + 0.5, None, 0.0
    if kind == "smooth":
        return y, torch.rand(C, device=device, dtype=a) + 0.5, None, 0.1
    if kind == "mixture":
        W = torch.softmax(torch.randn(C, C, device=device, dtype=a), 1)
        return y, None, W, 0.0
    if kind == "probs_smooth":
        P = torch.softmax(torch.randn(N, C, device=device) * 2, 1).to(dtype)
        return P, torch.rand(C, device=device, dtype=a) + 0.5, None, 0.2
    raise ValueError(kind)


def make_grad_loss(N, dtype, device, zeros=True):
    """Incoming gradient (acc dtype), with some zero rows (trimmed rows: no read, 0 out)."""
    gl = torch.randn(N, device=device, dtype=acc(dtype))
    if zeros and N > 3:
        gl[2::5] = 0
    return gl


def assert_grad_close(got, expected, tol, row_scale=None):
    """`got` in the logits' dtype against a float64 `expected`: NaN exactly where the oracle
    has NaN, else |got - expected| <= tol |expected| + tol * row_scale_i * (largest finite
    |expected / row_scale|): the absolute tolerance is relative to the largest gradient entry,
    scaled per row by |grad_loss_i| (row_scale) so that a row with a large incoming gradient is
    not held to the accuracy of the others; plus one subnormal step of the output dtype, the
    error of merely storing a tiny value in fp16."""
    fi = torch.finfo(got.dtype)
    got = got.double()
    rs = torch.ones(expected.shape[0], dtype=torch.float64, device=expected.device) if row_scale is None \
        else row_scale.double().abs()
    unscaled = expected / torch.where(rs > 0, rs, 1)[:, None]
    finite = unscaled[torch.isfinite(unscaled)]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    nan_e, nan_g = torch.isnan(expected), torch.isnan(got)
    assert torch.equal(nan_e, nan_g), f"NaN pattern differs at {(nan_e != nan_g).nonzero()[:5].tolist()}"
    ok = ~nan_e
    inf_e = torch.isinf(expected)
    assert torch.equal(got[inf_e], expected[inf_e])
    ok &= ~inf_e
    err = (got - expected).abs()
    allowed = tol * expected.abs() + tol * scale * rs[:, None] + fi.smallest_normal * fi.eps
    bad = ok & ~(err <= allowed)
    if bad.any():
        i = bad.nonzero()[0].tolist()
        raise AssertionError(f"{int(bad.sum())} of {got.numel()} gradient entries off; first at {i}: "
                             f"got {got[i[0], i[1]].item()!r}, expected {expected[i[0], i[1]].item()!r}, "
                             f"allowed {allowed[i[0], i[1]].item():.3g}")


def check(x, target, weight, mixture, ignore_index, smoothing, k, out, gl=None, rows=None, tol=None,
          grad=None):
    """Compare fwd's (loss, stats) and bwd's gradient with the float64 reference.

    `out` is fwd's (loss, stats) on the full x; `grad` the bwd output on the full x for `gl`
    (computed here when None). `rows` restricts the comparison (the reference runs on those rows
    only)."""
    loss, stats = out
    if gl is None:
        gl = make_grad_loss(x.shape[0], x.dtype, x.device)
    if grad is None:
        grad = bwd(gl, x, target, weight, mixture, stats, ignore_index, smoothing, k)
    assert loss.dtype == acc(x.dtype) and stats.dtype == acc(x.dtype) and grad.dtype == x.dtype
    assert stats.shape == (x.shape[0], STATS_COLS) and grad.shape == x.shape
    if rows is not None:
        x, loss, stats, grad, gl, target = x[rows], loss[rows], stats[rows], grad[rows], gl[rows], target[rows]
    tol = TOL[x.dtype] if tol is None else tol
    t = target.double() if target.is_floating_point() else target
    w = None if weight is None else weight.double()
    W = None if mixture is None else mixture.double()
    ref_l, ref_g, ref_lse = reference.rows(x.double(), t, w, W, ignore_index, smoothing, k)
    torch.testing.assert_close(loss.double(), ref_l, rtol=tol, atol=tol, equal_nan=True)
    torch.testing.assert_close(stats[:, 0].double(), ref_lse, rtol=tol, atol=tol, equal_nan=True)
    assert_grad_close(grad, gl.double()[:, None] * ref_g, tol, row_scale=gl)
    valid = torch.ones_like(loss, dtype=torch.bool)
    if not target.is_floating_point():
        ignored = target == ignore_index
        valid = ~ignored & (target >= 0) & (target < x.shape[1])
        assert (stats[~valid, SCALE_COL:] == 0).all()
        assert (grad[ignored] == 0).all()
    # rows with a zero incoming gradient and a finite lse are exactly 0
    zero = valid & (gl == 0) & torch.isfinite(stats[:, 0]) & torch.isfinite(stats[:, SCALE_COL])
    assert (grad[zero] == 0).all()
    return grad


# ---------------------------------------------------------------------------------------
# Every path of csrc/cuda/fwd_kernels.cuh: the C just below and above each switch point
# (16-byte vectors per row: 4, 8, 16, 32 (sub-warp / warp), 64, 128, 256 (warp), then blocks of
# 128 ... 1024 threads, then the streaming kernel). The backward's tiles (bwd_kernels.cuh)
# switch at 4, 8, 16, 32, 64, 128 vectors, then 256-vector tiles: a row of 1025 fp32 values is
# two tiles, 4100 five.
# ---------------------------------------------------------------------------------------
PATH_C = {
    torch.float32: [1, 2, 16, 17, 32, 33, 64, 65, 128, 129, 512, 1024, 1025, 4096, 4100, 8192,
                    16384, 16385, 32768, 32769, 60000],
    torch.float16: [1, 3, 32, 33, 64, 65, 256, 1024, 1025, 2048, 2056, 4096, 32768, 32776, 131072],
    torch.bfloat16: [1, 7, 64, 65, 1000, 1024, 1032, 8192, 32768, 32769, 100000],
    torch.float64: [1, 2, 8, 9, 256, 257, 512, 514, 2048, 4096, 4098, 16386, 30000],
}
PATH_CASES = [(dt, C) for dt, Cs in PATH_C.items() for C in Cs]


@pytest.mark.parametrize("dtype,C", PATH_CASES, ids=[f"{str(d)[6:]}-C{C}" for d, C in PATH_CASES])
@pytest.mark.parametrize("kind", ["onehot", "weighted", "smooth", "probs"])
def test_paths_match_reference(device, dtype, C, kind):
    N = 37 if C <= 4096 else 2 if emulated(device) else 5  # 37: the last block of the sub-warp paths is partly empty
    k = 0.5 if kind != "weighted" else 2.0
    x = (torch.randn(N, C, device=device) * 3).to(dtype)
    target, w, W, s = make_target(kind, N, C, dtype, device)
    check(x, target, w, W, -100, s, k, fwd(x, target, w, W, -100, s, k))


@pytest.mark.parametrize("C", [3, 100, 1000, 3000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_mixture_rows(device, dtype, C):
    N = 9 if emulated(device) else 65
    x = (torch.randn(N, C, device=device) * 3).to(dtype)
    target, w, W, s = make_target("mixture", N, C, dtype, device)
    for k in (0.25, 1.0, 3.0):
        check(x, target, w, W, -100, s, k, fwd(x, target, w, W, -100, s, k))
    # with class weights too
    w = torch.rand(C, device=device, dtype=acc(dtype)) + 0.5
    check(x, target, w, W, -100, s, 1.5, fwd(x, target, w, W, -100, s, 1.5))


@pytest.mark.parametrize("C", [5, 999, 5000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probability_targets_with_smoothing_and_weights(device, dtype, C):
    N = 21
    x = (torch.randn(N, C, device=device) * 3).to(dtype)
    target, w, W, s = make_target("probs_smooth", N, C, dtype, device)
    for k in (0.5, 1.0, 2.0):
        check(x, target, w, W, -100, s, k, fwd(x, target, w, W, -100, s, k))


@pytest.mark.parametrize("C", [10, 100, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1 / 16, 1.0, 2.0, 8.0])
def test_small_c_many_rows(device, dtype, C, k):
    """The sub-warp / warp-per-row kernels: many rows, several rows per warp."""
    N = 133 if emulated(device) else 4097  # 133: 5 blocks of 32 sub-warp rows, the last one partly empty
    x = (torch.randn(N, C, device=device) * 4).to(dtype)
    target, w, W, s = make_target("weighted", N, C, dtype, device)
    check(x, target, w, W, -100, s, k, fwd(x, target, w, W, -100, s, k))
    # Soft targets with small k only in float64: eps_j = p_j - q_j cancels in fp32 where
    # p_j ~ q_j, and |eps|^k maps that rounding error up (eps = 1e-9 vs 0 is 0.27 vs 0 at
    # k = 1/16): fp32 accumulation cannot meet the tolerance there (seen on an H100).
    if k >= 0.5 or dtype == torch.float64:
        target, w, W, s = make_target("smooth", N, C, dtype, device)
        check(x, target, w, W, -100, s, k, fwd(x, target, w, W, -100, s, k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_k_equal_one_is_cross_entropy_gradient(device, dtype):
    """k == 1 takes the one-exp statistics kernels; the gradient is softmax - onehot."""
    N, C = 300, 777
    x = (torch.randn(N, C, device=device) * 3).to(dtype)
    y = torch.randint(0, C, (N,), device=device)
    out = fwd(x, y, k=1.0)
    gl = torch.ones(N, device=device)
    g = check(x, y, None, None, -100, 0.0, 1.0, out, gl=gl)
    expected = torch.softmax(x.double(), 1) - torch.nn.functional.one_hot(y, C).double()
    assert_grad_close(g, expected, TOL[dtype])


# ---------------------------------------------------------------------------------------
# Long rows (streaming forward, many backward tiles per row), N * C > 2^31
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("C", [131072, 262144])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["onehot", "weighted", "smooth", "probs"])
def test_large_rows(device, dtype, C, kind):
    if emulated(device) and C > 131072:
        pytest.skip("on the emulator the streaming rows of 131072 classes stand for both (CI time)")
    N = 2 if emulated(device) else 4
    x = (torch.randn(N, C, device=device) * 4).to(dtype)
    target, w, W, s = make_target(kind, N, C, dtype, device)
    gl = torch.randn(N, device=device, dtype=acc(dtype))
    for k in (0.5, 1.0, 2.0):
        check(x, target, w, W, -100, s, k, fwd(x, target, w, W, -100, s, k), gl=gl)


@gpu_only
def test_n_times_c_over_2_31():
    N, C = 16400, 131072  # N * C = 2.15e9 > 2^31; the last rows start past 2^31 elements
    need = 2 * N * C * 2 + (1 << 30)
    free, _total = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    x = torch.randn(N, C, device="cuda", dtype=torch.bfloat16)
    x[-1].mul_(3)
    y = torch.randint(0, C, (N,), device="cuda")
    y[-2] = -100
    y[-1] = C - 1
    out = fwd(x, y, k=0.5)
    gl = torch.randn(N, device="cuda")
    gl[-3] = 0
    g = bwd(gl, x, y, None, None, out[1], -100, 0.0, 0.5)
    rows = torch.tensor([0, 1, 2, N - 3, N - 2, N - 1], device="cuda")
    check(x, y, None, None, -100, 0.0, 0.5, out, gl=gl, rows=rows, grad=g)
    assert (g[N - 3] == 0).all() and (g[N - 2] == 0).all()
    g_rows = g[rows].clone()
    del g
    bwd_inplace(gl, x, y, None, None, out[1], -100, 0.0, 0.5)
    assert torch.equal(x[rows], g_rows)


# ---------------------------------------------------------------------------------------
# bwd_inplace, zero incoming gradients, bad labels, empty and degenerate inputs
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("C", [3, 10, 1000, 5000, 40000, 131072])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("kind", ["onehot", "smooth", "probs", "mixture"])
def test_bwd_inplace_equals_bwd(device, dtype, C, kind):
    if kind == "mixture" and C > 5000:
        pytest.skip("a C x C mixture of this size is too large")
    N = 9 if C <= 5000 else 2 if emulated(device) else 3
    x = (torch.randn(N, C, device=device) * 3).to(dtype)
    target, w, W, s = make_target(kind, N, C, dtype, device)
    loss, stats = fwd(x, target, w, W, -100, s, 0.7)
    gl = make_grad_loss(N, dtype, device)
    g = bwd(gl, x, target, w, W, stats, -100, s, 0.7)
    xi = x.clone()
    assert bwd_inplace(gl, xi, target, w, W, stats, -100, s, 0.7) is None
    assert torch.equal(xi, g)


def test_bwd_inplace_non_contiguous(device):
    C = 50
    base = torch.randn(C, 33, device=device)
    x = base.t()  # (33, C), not contiguous
    target, w, W, s = make_target("mixture", 33, C, torch.float32, device)
    loss, stats = fwd(x, target, w, W, -100, s, 1.5)
    gl = make_grad_loss(33, torch.float32, device)
    g = bwd(gl, x, target, w, W, stats, -100, s, 1.5)
    check(x, target, w, W, -100, s, 1.5, (loss, stats), gl=gl, grad=g)
    bwd_inplace(gl, x, target, w, W, stats, -100, s, 1.5)
    assert torch.equal(base.t(), g)


@pytest.mark.parametrize("C", [300, 5000, 70000])
def test_compute_grad_false(device, C):
    x = torch.randn(10, C, device=device, dtype=torch.bfloat16)
    y = torch.randint(0, C, (10,), device=device)
    loss, stats = fwd(x, y, grad=False)
    assert stats.shape == (10, STATS_COLS) and stats.dtype == torch.float32
    loss2, stats2 = fwd(x, y)
    assert torch.equal(loss, loss2) and torch.equal(stats[:, 0], stats2[:, 0])
    # soft rows skip their |eps|^k statistics: columns from SCALE_COL on are 0, the loss is the same
    loss, stats = fwd(x, y, None, None, -100, 0.1, 0.5, grad=False)
    loss2, stats2 = fwd(x, y, None, None, -100, 0.1, 0.5, grad=True)
    assert torch.equal(loss, loss2) and torch.equal(stats[:, 0], stats2[:, 0])
    assert (stats[:, SCALE_COL:] == 0).all() and (stats2[:, SCALE_COL] != 0).all()


# ---------------------------------------------------------------------------------------
# Unaligned rows: scalar fallback (C not a multiple of the 16-byte vector, or a base pointer
# that is not 16-byte aligned)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,C", [(torch.float16, 1001), (torch.float16, 3), (torch.bfloat16, 40001),
                                     (torch.float32, 1001), (torch.float32, 50001), (torch.float64, 999)])
@pytest.mark.parametrize("kind", ["onehot", "probs"])
def test_unaligned_rows(device, dtype, C, kind):
    N = 11
    x = (torch.randn(N, C, device=device) * 3).to(dtype)
    target, w, W, s = make_target(kind, N, C, dtype, device)
    out = fwd(x, target, w, W, -100, s, 0.5)
    gl = make_grad_loss(N, dtype, device)
    g = check(x, target, w, W, -100, s, 0.5, out, gl=gl)
    bwd_inplace(gl, x, target, w, W, out[1], -100, s, 0.5)
    assert torch.equal(x, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C", [64, 4096, 65536])
@pytest.mark.parametrize("kind", ["onehot", "probs"])
def test_misaligned_base_pointer(device, dtype, C, kind):
    """C a multiple of the vector width but the logits (and the probabilities) start 1 element
    past a 16-byte boundary."""
    N = 5
    flat = (torch.randn(N * C + 1, device=device) * 3).to(dtype)
    x = flat[1:].view(N, C)
    assert x.is_contiguous() and x.data_ptr() % 16 != 0
    if kind == "probs":
        P = torch.softmax(torch.randn(N, C, device=device), 1).to(dtype)
        pbuf = torch.empty(N * C + 1, device=device, dtype=dtype)
        pbuf[1:].copy_(P.view(-1))
        target = pbuf[1:].view(N, C)
        assert target.data_ptr() % 16 != 0
    else:
        target = torch.randint(0, C, (N,), device=device)
    out = fwd(x, target, k=2.0)
    gl = make_grad_loss(N, dtype, device)
    g = check(x, target, None, None, -100, 0.0, 2.0, out, gl=gl)
    bwd_inplace(gl, x, target, None, None, out[1], -100, 0.0, 2.0)
    assert torch.equal(x, g)


# ---------------------------------------------------------------------------------------
# Streams, graphs, devices, determinism
# ---------------------------------------------------------------------------------------
@gpu_only
@pytest.mark.parametrize("C", [100, 5000, 70000])
def test_runs_on_the_current_stream(C):
    """Inputs written on a side stream after a long sleep: the kernels must queue behind them."""
    N = 64
    x0 = torch.randn(N, C, device="cuda")
    y = torch.randint(0, C, (N,), device="cuda")
    gl = torch.randn(N, device="cuda")
    expected = fwd(x0, y, k=0.5)
    expected_g = bwd(gl, x0, y, None, None, expected[1], k=0.5)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time on this stream
        x = x0.clone()
        loss, stats = fwd(x, y, k=0.5)
        g = bwd(gl, x, y, None, None, stats, k=0.5)
        bwd_inplace(gl, x, y, None, None, stats, k=0.5)
    s.synchronize()
    assert torch.equal(loss, expected[0]) and torch.equal(stats, expected[1])
    assert torch.equal(g, expected_g) and torch.equal(x, expected_g)


@pytest.mark.parametrize("C,kind", [(10, "onehot"), (1000, "smooth"), (5000, "onehot"), (40000, "onehot"),
                                    (40000, "probs"), (200, "mixture")])
@gpu_only
def test_cuda_graph_capture(C, kind):
    N = 32
    x = torch.randn(N, C, device="cuda")
    target, w, W, s = make_target(kind, N, C, torch.float32, "cuda")
    gl = torch.randn(N, device="cuda")
    xi = torch.empty_like(x)

    def step():
        loss, stats = fwd(x, target, w, W, -100, s, 0.5)
        g = bwd(gl, x, target, w, W, stats, -100, s, 0.5)
        xi.copy_(x)
        bwd_inplace(gl, xi, target, w, W, stats, -100, s, 0.5)
        return loss, stats, g

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up (first-use set-up happens outside the capture)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        if target.is_floating_point():
            target.copy_(torch.softmax(torch.randn_like(target), 1))
        else:
            target.copy_(torch.randint(0, C, target.shape, device="cuda"))
        gl.copy_(torch.randn_like(gl))
        graph.replay()
        torch.cuda.synchronize()
        xi_graph = xi.clone()
        eager = step()
        for a, b in zip(static_out, eager):
            assert torch.equal(a, b)
        assert torch.equal(xi_graph, eager[2])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("C", [100, 40000])
def test_second_device(C):
    """Tensors on cuda:1 while cuda:0 is current: the device guard must switch."""
    torch.cuda.set_device(0)
    N = 16
    x = torch.randn(N, C, device="cuda:1")
    y = torch.randint(0, C, (N,), device="cuda:1")
    loss, stats = fwd(x, y, k=0.5)
    assert loss.device == stats.device == x.device
    gl = torch.randn(N, device="cuda:1")
    g = bwd(gl, x, y, None, None, stats, k=0.5)
    assert g.device == x.device
    check(x, y, None, None, -100, 0.0, 0.5, (loss, stats), gl=gl, grad=g)
    xi = x.clone()
    bwd_inplace(gl, xi, y, None, None, stats, k=0.5)
    assert torch.equal(xi, g)


@pytest.mark.parametrize("C", [10, 100, 3000])
def test_mixture_gradient_is_deterministic(device, C):
    """Also across the emulator's block and thread orders, which differ from launch to launch."""
    N = 1031 if emulated(device) else 4097
    x = torch.randn(N, C, device=device)
    y = torch.randint(0, C, (N,), device=device)
    A = torch.rand(C, C, device=device).fill_diagonal_(0)
    A = A / A.sum(1, keepdim=True)

    def run():
        W = H.mcel.simple_mixture(A, 0.2).detach().requires_grad_(True)
        xx = x.clone().requires_grad_(True)
        H.cross_entropy(xx, y, mixture=W, k=0.5, backend="cuda_emu" if emulated(device) else "cuda").backward()
        return W.grad, xx.grad

    gW1, gx1 = run()
    gW2, gx2 = run()
    assert torch.equal(gW1, gW2) and torch.equal(gx1, gx2)


@pytest.mark.parametrize("C", [100, 5000, 70000])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fwd_bwd_are_deterministic(device, C, smoothing):
    """Bitwise the same results on a rerun: on the emulator also across block and thread orders,
    which differ from launch to launch (the group reductions merge in a fixed order)."""
    N = 300 if C < 70000 else 8
    x = torch.randn(N, C, device=device, dtype=torch.bfloat16)
    y = torch.randint(0, C, (N,), device=device)
    gl = torch.randn(N, device=device)
    a = fwd(x, y, None, None, -100, smoothing, 0.5)
    b = fwd(x, y, None, None, -100, smoothing, 0.5)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    ga = bwd(gl, x, y, None, None, a[1], -100, smoothing, 0.5)
    gb = bwd(gl, x, y, None, None, b[1], -100, smoothing, 0.5)
    assert torch.equal(ga, gb)

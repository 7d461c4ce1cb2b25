"""The emulated CUDA backend (cuda_emu, docs/CUDA_EMU.md): what only the emulator can show.

- Every launch path is reached: the emulator's launch log names each kernel with its template
  arguments, grid, block and dynamic shared memory, and the tests assert them against the
  launchers' rules restated here (csrc/cuda/fwd_launch.cuh, bwd_kernels.cuh, bwd_complete.cuh,
  kept_grad.cuh),
  on both device profiles: "h100" (132 SMs, 227 KB opt-in shared memory) and "small" (2 SMs,
  16 KB), where the streaming kernels' row cache is partial at small C and every kernel's
  grid-stride loop takes several turns.
- The results do not depend on the order of the blocks and threads (shuffled per launch from
  the seed) nor on the profile: bitwise the same. (Every other test runs on the profile its
  seed picks, tests/conftest.py.)
- The emulator's controls.

The values themselves are checked by the contract suite, the fuzz and tests/test_cuda.py, which
run on cuda_emu too; the planted-bug tests of the emulator are CTests
(csrc/tests/test_emu_planted_bugs.cpp).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from hardloss_cuda import _library, _ops, reference

EMU = _library.CUDA_EMU
pytestmark = pytest.mark.skipif(EMU is None, reason="the emulated CUDA backend is not built")

DTYPES = {torch.float32: "float", torch.float64: "double", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}
PROFILES = {"h100": dict(sms=132, optin=227 * 1024, per_sm=228 * 1024),
            "small": dict(sms=2, optin=16 * 1024, per_sm=34 * 1024)}


@contextmanager
def profile(name):
    previous = EMU.set_profile(name)
    try:
        yield
    finally:
        EMU.set_profile(previous)


@contextmanager
def logged():
    """The launches made inside the block, as a list filled when it ends."""
    out = []
    EMU.log_launches(True)
    try:
        yield out
    finally:
        out.extend(EMU.launches())
        EMU.log_launches(False)


def fwd(x, target, k=0.5, smoothing=0.0, grad=True):
    return _ops.fwd_op("cuda_emu")(x, target, None, None, -100, smoothing, k, grad)


def bwd(gl, x, target, stats, k=0.5, smoothing=0.0):
    return _ops.bwd_op("cuda_emu")(gl, x, target, None, None, stats, -100, smoothing, k)


def kept_grad(gl, x, target, stats, k=0.5, smoothing=0.1):
    """soft_shard_stats' kept pass over whole rows given their stats (one shard), then
    soft_shard_grad from it: the vocab-parallel soft backward."""
    eps, side = torch.empty(x.shape, dtype=stats.dtype), torch.empty(x.shape, dtype=torch.int8)
    _ops.soft_shard_stats_op("cuda_emu")(x, target, None, None, stats, -100, smoothing, k, 0.0, eps, side)
    out = torch.empty_like(x)
    _ops.soft_shard_grad_op("cuda_emu")(gl, eps, side, x, stats, out)
    return out


# ---------------------------------------------------------------------------------------
# The launchers' rules, restated
# ---------------------------------------------------------------------------------------
def vec(dtype):
    return 16 // torch.empty((), dtype=dtype).element_size()


def fwd_launch(dtype, N, C, soft, k, prof, kept=False):
    """(kernel, grid, block, dynamic shared bytes) the forward launcher must choose; kept:
    soft_shard_stats' kept pass (its own instantiations; given row stats, so no row cache)."""
    f64 = dtype == torch.float64
    S, V = DTYPES[dtype], vec(dtype)
    nvec = -(-C // V)
    nvmax = 4 if f64 else 32 // V
    table = [(4, 128, 4, 1), (8, 128, 8, 1), (16, 128, 16, 1), (32, 128, 32, 1), (64, 128, 32, 2), (128, 128, 32, 4)]
    if nvmax >= 8:
        table.append((256, 128, 32, 8))
    table += [(128 * nvmax, 128, 128, nvmax), (256 * nvmax, 256, 256, nvmax), (512 * nvmax, 512, 512, nvmax)]
    if not f64:
        table.append((1024 * nvmax, 1024, 1024, nvmax))
    p = PROFILES[prof]
    for limit, block, tpr, nv in table:
        if nvec <= limit:
            k_is_one = "true" if not soft and k == 1 else "false"
            grid = min(-(-N // (block // tpr)), p["sms"] * (2048 // block) * 4)
            name = f"hl::cuda::fwd_reg_kernel<{S}, {block}, {tpr}, {nv}, {str(soft).lower()}, {k_is_one}, " \
                   f"{str(kept).lower()}>"
            return name, grid, block, 0
    U = 4 if f64 else 16 // V
    scratch = 32 * 4 * (8 if f64 else 4)  # ReduceSmem: 32 x 4 acc values
    ncache = min(nvec, (p["optin"] - scratch) // 16) if soft and not kept else 0
    smem = scratch + 16 * ncache
    per_sm = max(1, min(2, p["per_sm"] // (smem + 1024)))
    name = f"hl::cuda::fwd_stream_kernel<{S}, 1024, {U}, {str(soft).lower()}, {str(kept).lower()}>"
    return name, min(N, p["sms"] * per_sm), 1024, smem


def bwd_launch(dtype, N, C, soft, prof):
    S, V = DTYPES[dtype], vec(dtype)
    nvec = -(-C // V)
    for limit, tpr, u in [(4, 4, 1), (8, 8, 1), (16, 16, 1), (32, 32, 1), (64, 32, 2), (128, 32, 4), (math.inf, 32, 8)]:
        if nvec <= limit:
            break
    tiles = N * -(-nvec // (tpr * u))
    grid = max(1, min(-(-tiles // (256 // tpr)), PROFILES[prof]["sms"] * 8 * 4))
    return f"hl::cuda::bwd_kernel<{S}, 256, {tpr}, {u}, {str(soft).lower()}>", grid, 256, 0


def kept_grad_launch(dtype, N, C, prof):
    """soft_shard_grad's kernel: bwd_kernel's tiles, at most 4 vectors per lane."""
    S, V = DTYPES[dtype], vec(dtype)
    nvec = -(-C // V)
    for limit, tpr, u in [(4, 4, 1), (8, 8, 1), (16, 16, 1), (32, 32, 1), (64, 32, 2), (math.inf, 32, 4)]:
        if nvec <= limit:
            break
    tiles = N * -(-nvec // (tpr * u))
    grid = max(1, min(-(-tiles // (256 // tpr)), PROFILES[prof]["sms"] * 8 * 4))
    return f"hl::cuda::kept_grad_kernel<{S}, 256, {tpr}, {u}>", grid, 256, 0


def complete_launch(dtype, N, prof):
    """The kernel the backward of soft rows launches first: it completes the stats of the rows
    in the deferred form (csrc/cuda/bwd_complete.cuh), a block per row, resident blocks only."""
    return f"hl::cuda::soft_stats_complete_kernel<{DTYPES[dtype]}, 256>", min(N, PROFILES[prof]["sms"] * 8), 256, 0


def path_lengths(dtype):
    """C one vector below and at each switch point of the forward (and so of the backward's
    tiles below 256 vectors), then the streaming rows."""
    V, f64 = vec(dtype), dtype == torch.float64
    nvmax = 4 if f64 else 32 // V
    nvecs = [1, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129] + ([256, 257] if nvmax >= 8 else [])
    nvecs += [128 * nvmax, 256 * nvmax, 512 * nvmax] + ([] if f64 else [1024 * nvmax])
    return sorted({n * V - (V - 1 if n > 1 else 0) for n in nvecs} | {(nvecs[-1] + 1) * V})


CASES = [(dt, C) for dt in DTYPES for C in path_lengths(dt)]


@pytest.mark.parametrize("prof", list(PROFILES))
@pytest.mark.parametrize("dtype,C", CASES, ids=[f"{DTYPES[d]}-C{C}" for d, C in CASES])
def test_every_launch_path(prof, dtype, C):
    """fwd (one-hot, at k = 1 and not, and soft rows) and bwd take the kernel, grid and shared
    memory the launchers' rules give; the one-hot results match the float64 reference, and
    the soft rows' backward from the CPU forward's stats (the deferred form, completed by the
    first kernel; on the h100 profile, test_grid_stride_loops has the small one's loop) matches
    the one from the kernels' own, and so does soft_shard_grad from the kept pass of those rows
    (soft_shard_stats given their stats: the kept forward kernels, then kept_grad_kernel)."""
    N = 3
    x = torch.randn(N, C).to(dtype)
    y = torch.randint(0, C, (N,))
    if prof == "h100":
        _, cpu_stats = _ops.fwd_op("cpu")(x, y, None, None, -100, 0.1, 0.5, True)
    with profile(prof), logged() as log:
        loss, stats = fwd(x, y, k=1.0)
        fwd(x, y, k=0.5)
        _, soft_stats = fwd(x, y, k=0.5, smoothing=0.1)
        gl = torch.randn(N, dtype=loss.dtype)
        g = bwd(gl, x, y, stats, k=1.0)
        g_soft = bwd(gl, x, y, soft_stats, k=0.5, smoothing=0.1)
        if prof == "h100":
            g_deferred = bwd(gl, x, y, cpu_stats, k=0.5, smoothing=0.1)
        g_kept = kept_grad(gl, x, y, soft_stats)
    soft_bwd = [complete_launch(dtype, N, prof), bwd_launch(dtype, N, C, True, prof)]
    want = [fwd_launch(dtype, N, C, False, 1.0, prof), fwd_launch(dtype, N, C, False, 0.5, prof),
            fwd_launch(dtype, N, C, True, 0.5, prof), bwd_launch(dtype, N, C, False, prof)]
    want += soft_bwd * (2 if prof == "h100" else 1)
    want += [fwd_launch(dtype, N, C, True, 0.5, prof, kept=True), kept_grad_launch(dtype, N, C, prof)]
    got = [(name, grid[0], block[0], smem) for name, grid, block, smem, _p in log]
    assert got == want
    assert all(p == prof for *_r, p in log)
    ref_loss, ref_grad, _ = reference.rows(x.double(), y, None, None, -100, 0.0, 1.0)
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(loss.double(), ref_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(g.double(), gl.double()[:, None] * ref_grad, rtol=tol, atol=tol)
    if prof == "h100":
        torch.testing.assert_close(g_deferred.double(), g_soft.double(), rtol=tol,
                                   atol=tol * g_soft.double().abs().max().item())
    torch.testing.assert_close(g_kept.double(), g_soft.double(), rtol=tol,
                               atol=tol * g_soft.double().abs().max().item())


def test_the_paths_cover_every_kernel():
    """The cases above reach all forward and backward kernels of the launchers' rules."""
    fwd_names, bwd_names, soft_names, kept_names, kept_grad_names = set(), set(), set(), set(), set()
    for dtype, C in CASES:
        for soft in (False, True):
            for k in (1.0, 0.5):
                fwd_names.add(fwd_launch(dtype, 3, C, soft, k, "h100")[0])
            bwd_names.add(bwd_launch(dtype, 3, C, soft, "h100")[0])
        soft_names.add(fwd_launch(dtype, 3, C, True, 0.5, "h100")[0])
        kept_names.add(fwd_launch(dtype, 3, C, True, 0.5, "h100", kept=True)[0])
        kept_grad_names.add(kept_grad_launch(dtype, 3, C, "h100")[0])
    # the kept pass: every shape of the soft forward; soft_shard_grad: 6 tile shapes per dtype
    assert len(kept_names) == len(soft_names) and len(kept_grad_names) == 4 * 6
    # per dtype: 7 or 8 register shapes x (one-hot k = 1, one-hot, soft), blocks of 128 .. 1024
    # (512 for fp64) threads, streaming one-hot and soft; backward: 7 tile shapes x 2
    assert len([n for n in fwd_names if "stream" in n]) == 8
    assert len(bwd_names) == 4 * 7 * 2
    for dtype, S in DTYPES.items():
        blocks = {int(n.split(", ")[1]) for n in fwd_names if f"<{S}," in n and "reg" in n}
        assert blocks == ({128, 256, 512} if dtype == torch.float64 else {128, 256, 512, 1024})
        tprs = {int(n.split(", ")[2]) for n in fwd_names if f"<{S}," in n and "reg" in n}
        assert {4, 8, 16, 32} <= tprs


@pytest.mark.parametrize("dtype,C,prof,partial", [
    (torch.float64, 4098, "small", True), (torch.float32, 32772, "small", True),
    (torch.bfloat16, 65544, "small", True), (torch.float64, 4098, "h100", False),
    (torch.float32, 40000, "h100", False), (torch.float32, 60000, "h100", True)])
@pytest.mark.parametrize("kind", ["smooth", "probs"])
def test_streaming_row_cache(dtype, C, prof, partial, kind):
    """Soft rows on the streaming path cache as much of the row in shared memory as the profile
    allows and re-read the rest: with a partial cache (16 KB, or an H100 row past ~58000 fp32
    classes) as with a full one, the results match the reference."""
    N = 5  # more rows than the small profile's grid: the blocks loop
    x = (torch.randn(N, C) * 3).to(dtype)
    if kind == "probs":
        target, s = torch.softmax(torch.randn(N, C) * 2, 1).to(dtype), 0.0
    else:
        target, s = torch.randint(0, C, (N,)), 0.1
    with profile(prof), logged() as log:
        loss, stats = _ops.fwd_op("cuda_emu")(x, target, None, None, -100, s, 0.5, True)
    (name, grid, _block, smem, _p), = log
    nvec = -(-C // vec(dtype))
    scratch = 32 * 4 * (8 if dtype == torch.float64 else 4)
    assert "fwd_stream_kernel" in name and ((smem - scratch) // 16 < nvec) == partial
    if prof == "small":
        assert grid[0] < N
    t = target.double() if target.is_floating_point() else target
    ref_loss, _g, ref_lse = reference.rows(x.double(), t, None, None, -100, s, 0.5)
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(loss.double(), ref_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(stats[:, 0].double(), ref_lse, rtol=tol, atol=tol)


@pytest.mark.parametrize("C,N", [(10, 4100), (5000, 110), (40000, 14)])
def test_grid_stride_loops(C, N):
    """On the small profile the grids hold fewer rows (tiles) than the batch: every kernel's
    loop over rows takes several turns, with the same results as the H100 profile's grids."""
    x = torch.randn(N, C)
    y = torch.randint(0, C, (N,))
    y[::5] = -100
    gl = torch.randn(N)
    # the CPU's stats, the deferred form: completed first, a block per row (not for 4100 rows: slow
    # in the emulator, and 110 rows already loop on the small profile's 16 blocks)
    cpu_stats = _ops.fwd_op("cpu")(x, y, None, None, -100, 0.1, 0.5, True)[1] if N < 1000 else None
    out = {}
    for prof in ("h100", "small"):
        with profile(prof), logged() as log:
            loss, stats = fwd(x, y)
            sloss, sstats = fwd(x, y, smoothing=0.1)
            g = bwd(gl, x, y, stats)
            sg = bwd(gl, x, y, sstats, smoothing=0.1)
            dg = bwd(gl, x, y, cpu_stats, smoothing=0.1) if cpu_stats is not None else sg
        out[prof] = (loss, stats, sloss, sstats, g, sg, dg)
        if prof == "small":
            for name, grid, block, _smem, _p in log:
                if "complete" in name:  # a block per row, 2 SMs x 8 resident blocks
                    assert grid[0] == min(N, 16), name
                elif "bwd" in name:
                    tpr = int(name.split(", ")[2])
                    u = int(name.split(", ")[3])
                    tiles = N * -(-C // (4 * tpr * u))
                    assert grid[0] * (block[0] // tpr) < tiles, name
                elif "stream" in name:
                    assert grid[0] < N, name
                else:
                    tpr, nthreads = int(name.split(", ")[2]), int(name.split(", ")[1])
                    assert grid[0] * (nthreads // tpr) < N, name
    for a, b in zip(out["h100"], out["small"]):
        assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())


@pytest.mark.parametrize("dtype,C", [(torch.float32, 7), (torch.float32, 1000), (torch.bfloat16, 5000),
                                     (torch.float64, 4100), (torch.float32, 40000)])
def test_results_do_not_depend_on_block_and_thread_order(dtype, C):
    """Three seeds, three block orders and thread interleavings: bitwise the same loss, stats
    and gradients (the reductions merge in a fixed order, whoever arrives first)."""
    N = 9
    x = (torch.randn(N, C) * 3).to(dtype)
    y = torch.randint(0, C, (N,))
    P = torch.softmax(torch.randn(N, C), 1).to(dtype)
    gl = torch.randn(N, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    seed = EMU.seed()
    runs = []
    try:
        for s in (1, 2, 3):
            EMU.set_seed(s)
            res = []
            for target, sm in ((y, 0.0), (y, 0.1), (P, 0.0)):
                loss, stats = _ops.fwd_op("cuda_emu")(x, target, None, None, -100, sm, 0.5, True)
                g = _ops.bwd_op("cuda_emu")(gl, x, target, None, None, stats, -100, sm, 0.5)
                res += [loss, stats, g]
                if sm or target is P:  # the CPU's stats, the deferred form: completed by a reduction
                    _, cpu_stats = _ops.fwd_op("cpu")(x, target, None, None, -100, sm, 0.5, True)
                    res.append(_ops.bwd_op("cuda_emu")(gl, x, target, None, None, cpu_stats, -100, sm, 0.5))
            runs.append(res)
    finally:
        EMU.set_seed(seed)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a.nan_to_num(), b.nan_to_num())


def test_controls():
    assert EMU.profiles() == ["h100", "small"]
    with profile("small"):
        assert EMU.profile() == "small"
        with profile("h100"):
            assert EMU.profile() == "h100"
        assert EMU.profile() == "small"
    with pytest.raises(ValueError, match="no device profile"):
        EMU.set_profile("a100")
    seed = EMU.seed()
    EMU.set_seed(12345)
    assert EMU.seed() == 12345
    EMU.set_seed(seed)
    with profile("h100"), logged() as log:
        fwd(torch.randn(2, 3), torch.tensor([0, 1]))
    assert log == [("hl::cuda::fwd_reg_kernel<float, 128, 4, 1, false, false, false>", (1, 1, 1), (128, 1, 1), 0,
                    "h100")]
    assert EMU.launches() == []  # not logging


FUSED_CASES = [(torch.float32, 7), (torch.float32, 100), (torch.bfloat16, 1000), (torch.float32, 5000),
               (torch.float64, 4100), (torch.float32, 33000)]


@pytest.mark.parametrize("prof", list(PROFILES))
@pytest.mark.parametrize("dtype,C", FUSED_CASES, ids=[f"{DTYPES[d]}-C{C}" for d, C in FUSED_CASES])
@pytest.mark.parametrize("kind", ["onehot", "smooth", "probs"])
def test_softcap_and_lse_gradient_on_every_path(prof, dtype, C, kind):
    """softcap and grad_lse, fused into the kernels, on sub-warp, warp, block and streaming rows
    (the streaming soft rows with a partial row cache on the small profile, which the cap reads
    back from shared memory), misaligned rows and C % vector != 0 among them, against the
    reference; one-hot rows with k = 1 take the one-exp kernels."""
    N, cap = 4, 2.5
    flat = (torch.randn(N * C + 1) * 4).to(dtype)
    x = flat[1:].view(N, C)  # one element past a 16-byte boundary: the scalar fallback
    x[0, 1] = float("-inf")  # a masked class is read as -cap
    k = 1.0 if kind == "onehot" else 0.5
    if kind == "probs":
        target, s = torch.softmax(torch.randn(N, C), 1).to(dtype), 0.0
    else:
        target, s = torch.randint(0, C, (N,)), 0.1 if kind == "smooth" else 0.0
        target[2] = -100
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    gl, g_lse = torch.randn(N, dtype=acc), torch.randn(N, dtype=acc)
    gl[1] = 0  # a row with only a logsumexp gradient is read
    with profile(prof):
        loss, stats = _ops.fwd_op("cuda_emu")(x, target, None, None, -100, s, k, True, cap)
        g = _ops.bwd_op("cuda_emu")(gl, x, target, None, None, stats, -100, s, k, cap, g_lse)
        xi = x.clone()
        _ops.bwd_inplace_op("cuda_emu")(gl, xi, target, None, None, stats, -100, s, k, cap, g_lse)
    t = target.double() if target.is_floating_point() else target
    ref_loss, ref_stats = reference.fwd(x.double(), t, None, None, -100, s, k, True, cap)
    ref_g = reference.bwd(gl.double(), x.double(), t, None, None, ref_stats, -100, s, k, cap, g_lse.double())
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(loss.double(), ref_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(stats[:, 0].double(), ref_stats[:, 0], rtol=tol, atol=tol)
    torch.testing.assert_close(g.double(), ref_g, rtol=tol, atol=tol * ref_g.abs().max().item())
    assert torch.equal(xi, g)
    if kind != "probs":
        assert (g[2] == 0).all()

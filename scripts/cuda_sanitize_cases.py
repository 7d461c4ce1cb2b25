"""A representative run of every CUDA kernel path on small shapes, for compute-sanitizer
(memcheck, racecheck) on a GPU machine; see scripts/gpu_session.sh. Exits non-zero on a
wrong result, so a sanitizer run checks the values too.

Paths: forward warp-per-row (small C), row in registers (medium C), streaming (long rows), the
soft path (smoothing, mixture, probabilities; at k = 1 rows whose dominant class takes f* from
the others) with and without compute_grad; backward tiles (sub-warp, warp, several tiles per
row), bwd_inplace; odd and unaligned C, bad and ignored labels, rows with a zero incoming
gradient; the fused softcap and logsumexp gradient; shard_stats.
"""

import torch

import hardloss_cuda  # noqa: F401  (registers the ops)
from hardloss_cuda import reference

fwd, bwd, bwd_inplace = (torch.ops.hardloss_cuda.fwd, torch.ops.hardloss_cuda.bwd,
                         torch.ops.hardloss_cuda.bwd_inplace)


def same(a, b):
    """Bitwise-equal values, NaN where the other has NaN (bad-label rows)."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


def check(x, target, W=None, s=0.0, k=0.5, cap=0.0, lse=False):
    """cap: softcap; lse: a logsumexp gradient too (both fused into the kernels)."""
    loss, stats = fwd(x, target, None, W, -100, s, k, True, cap)
    acc = reference.acc_dtype(x.dtype)
    gl = torch.rand(x.shape[0], device="cuda", dtype=acc)
    gl[::3] = 0  # rows with a zero incoming gradient: written, not read (unless g_lse != 0)
    g_lse = torch.randn(x.shape[0], device="cuda", dtype=acc) if lse else None
    g = bwd(gl, x, target, None, W, stats, -100, s, k, cap, g_lse)
    t = target.double().cpu() if target.is_floating_point() else target.cpu()
    W64 = None if W is None else W.double().cpu()
    rl, rstats = reference.fwd(x.double().cpu(), t, None, W64, -100, s, k, True, cap)
    expected = reference.bwd(gl.double().cpu(), x.double().cpu(), t, None, W64, rstats, -100, s, k, cap,
                             None if g_lse is None else g_lse.double().cpu())
    ok = lambda a, b: torch.allclose(a.double().cpu(), b, rtol=2e-2, atol=2e-2 * max(1.0, b.abs().max().item()), equal_nan=True)
    assert ok(loss, rl) and ok(stats[:, 0], rstats[:, 0]) and ok(g, expected), \
        (tuple(x.shape), x.dtype, k, s, W is not None, cap, lse)
    loss2, stats2 = fwd(x, target, None, W, -100, s, k, False, cap)
    assert same(loss2, loss) and same(stats2[:, 0], stats[:, 0])
    xi = x.clone()
    bwd_inplace(gl, xi, target, None, W, stats, -100, s, k, cap, g_lse)
    assert same(xi, g)
    if not target.is_floating_point() and W is None and s == 0.0:
        st = torch.ops.hardloss_cuda.shard_stats(x, target, k, cap)
        assert ok(st, reference.shard_stats(x.double().cpu(), t, k, cap))


def main():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for N, C in ((37, 10), (9, 1000), (5, 8192), (3, 40000), (3, 70001), (4, 1001), (6, 3), (4, 1)):
            x = (torch.randn(N, C, device="cuda") * 3).to(dtype)
            y = torch.randint(0, C, (N,), device="cuda")
            y[0] = -100
            if N > 2:
                y[1] = C + 5  # bad label: a NaN row, never a read at it
            check(x, y)
            y_ok = y.clone()
            y_ok[1] = 0
            check(x, y_ok, s=0.1)
            check(x, y, cap=2.5, lse=True)
            check(x, y_ok, s=0.1, k=1.0, cap=3.0, lse=True)
            # k = 1 with q* >= 15/16 t: the dominant class's f* from the others (fwd pass B)
            check(x, y_ok, s=0.01, k=1.0)
            check(x, torch.nn.functional.one_hot(y_ok.clamp_min(0), C).to(dtype), k=1.0)
            if C <= 1001:
                W = torch.softmax(torch.randn(C, C, device="cuda", dtype=reference.acc_dtype(dtype)), 1)
                check(x, y, W=W)
            P = torch.softmax(torch.randn(N, C, device="cuda"), 1).to(dtype)
            check(x, P, k=2.0)
    torch.cuda.synchronize()
    print("cuda_sanitize_cases: all paths ran and matched the reference")


if __name__ == "__main__":
    main()

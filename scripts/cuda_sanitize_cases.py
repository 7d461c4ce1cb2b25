"""A representative run of every CUDA kernel path on small shapes, for compute-sanitizer
(memcheck, racecheck) on a GPU machine; see scripts/gpu_session.sh. Exits non-zero on a
wrong result, so a sanitizer run checks the values too.

Paths: warp-per-row (small C), row in registers (medium C), streaming (long rows), the soft
path (smoothing, mixture, probabilities), odd and unaligned C, bad and ignored labels,
in-place gradient, bwd.
"""

import torch

import hardloss_cuda  # noqa: F401  (registers the ops)
from hardloss_cuda import reference

fwd, fwd_inplace, bwd = (torch.ops.hardloss_cuda.fwd, torch.ops.hardloss_cuda.fwd_inplace,
                         torch.ops.hardloss_cuda.bwd)


def check(x, target, W=None, s=0.0, k=0.5, dtype=torch.float32):
    loss, g, lse = fwd(x, target, None, W, -100, s, k, True)
    rl, rg, _ = reference.rows(x.double().cpu(), target.cpu() if not target.is_floating_point() else target.double().cpu(),
                               None, None if W is None else W.double().cpu(), -100, s, k)
    ok = lambda a, b: torch.allclose(a.double().cpu(), b, rtol=2e-2, atol=2e-2 * max(1.0, b.abs().max().item()), equal_nan=True)
    assert ok(loss, rl) and ok(g, rg), (tuple(x.shape), x.dtype, k, s, W is not None)
    out = bwd(torch.rand(x.shape[0], device="cuda"), g)
    assert out.shape == g.shape
    xi = x.clone()
    fwd_inplace(xi, target, None, W, -100, s, k)
    assert torch.equal(xi.isnan(), g.isnan())


def main():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for N, C in ((37, 10), (9, 1000), (5, 8192), (3, 40000), (3, 70001), (4, 1001), (6, 3), (4, 1)):
            x = (torch.randn(N, C, device="cuda") * 3).to(dtype)
            y = torch.randint(0, C, (N,), device="cuda")
            y[0] = -100
            if N > 2:
                y[1] = C + 5  # bad label: a NaN row, never a read at it
            check(x, y, dtype=dtype)
            y_ok = y.clone()
            y_ok[1] = 0
            check(x, y_ok, s=0.1, dtype=dtype)
            if C <= 1001:
                W = torch.softmax(torch.randn(C, C, device="cuda", dtype=reference.acc_dtype(dtype)), 1)
                check(x, y, W=W, dtype=dtype)
            P = torch.softmax(torch.randn(N, C, device="cuda"), 1).to(dtype)
            check(x, P, k=2.0, dtype=dtype)
    torch.cuda.synchronize()
    print("cuda_sanitize_cases: all paths ran and matched the reference")


if __name__ == "__main__":
    main()

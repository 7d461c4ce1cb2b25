"""Check an installed hardloss_cuda wheel from outside the source tree (CI, `make wheels`).

  python check_wheel.py --expect cpu|cuda     the wheel imports, is the installed copy,
                                              reports its build and has its kernels
  python check_wheel.py --expect-mismatch     importing must fail with the clear message
                                              of hardloss_cuda/_version_check.py
"""

import argparse
import sys

import torch


def _fail(msg: str) -> None:
    sys.exit(f"check_wheel: FAIL: {msg}")


def check_mismatch() -> None:
    try:
        import hardloss_cuda  # noqa: F401
    except RuntimeError as e:
        if "does not match this PyTorch" not in str(e):
            _fail(f"wrong error: {e}")
        print(f"check_wheel: OK, refused with: {e}")
        return
    _fail("a wheel built for another torch imported without an error")


def check(expect: str) -> None:
    import hardloss_cuda as H

    if "site-packages" not in H.__file__:
        _fail(f"imported {H.__file__}, not the installed wheel")
    info = H.build_info()
    print("build_info:", info)
    if not info["extension_loaded"]:
        _fail(f"compiled library not loaded: {info.get('extension_error')}")
    torch_mm = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    local = (f"cu{torch.version.cuda.replace('.', '')}" if expect == "cuda" else "cpu") + f"torch{torch_mm}"
    if H.__version__.split("+")[0] != info["version"].split("+")[0] or info["version"].split("+")[1] != local:
        _fail(f"version {info['version']} is not {H.__version__}+{local}")
    if info["with_cuda"] != (expect == "cuda"):
        _fail(f"with_cuda={info['with_cuda']}, expected a {expect} build")
    keys = ["CPU"] + (["CUDA"] if expect == "cuda" else [])
    for op in ("fwd", "bwd", "bwd_inplace"):
        for key in keys:
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"hardloss_cuda::{op}", key):
                _fail(f"hardloss_cuda::{op} has no {key} kernel")
    # Every build carries the CPU kernels: one real call against the reference.
    x = torch.randn(64, 1000, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 1000, (64,))
    for backend in ("cpu", "reference"):
        x.grad = None
        H.cross_entropy(x, y, k=0.5, backend=backend).backward()
        if backend == "cpu":
            g_cpu = x.grad.clone()
    torch.testing.assert_close(g_cpu, x.grad, rtol=1e-10, atol=1e-14)
    if expect == "cuda" and torch.cuda.is_available():
        xc = x.detach().cuda().float().requires_grad_()
        H.cross_entropy(xc, y.cuda(), k=0.5, backend="cuda").backward()
        torch.testing.assert_close(xc.grad.cpu().double(), x.grad, rtol=2e-5, atol=1e-7)
    print(f"check_wheel: OK, {expect} wheel {info['version']}: kernels for {', '.join(keys)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--expect", choices=["cpu", "cuda"])
    ap.add_argument("--expect-mismatch", action="store_true")
    args = ap.parse_args()
    check_mismatch() if args.expect_mismatch else check(args.expect)

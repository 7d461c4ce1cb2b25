"""Check an installed hardloss_cuda wheel from outside the source tree (CI, `make wheels`).

  python check_wheel.py --expect cpu|cuda     the wheel imports, is the installed copy,
                                              reports its build and has its kernels; it is
                                              tagged abi3, bundles no shared library, and its
                                              library needs only torch's, the CUDA runtime of
                                              torch's major and the system's C/C++ runtime
  python check_wheel.py --expect-mismatch     importing must fail with the clear message
                                              of hardloss_cuda/_version_check.py
"""

import argparse
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import torch

# What the compiled library may need besides torch's own libraries: the C/C++ runtime of any
# manylinux system, and libgomp.so.1, which torch's wheel carries (libtorch_cpu needs it too).
_SYSTEM = {"libstdc++.so.6", "libm.so.6", "libgcc_s.so.1", "libc.so.6", "ld-linux-x86-64.so.2",
           "libpthread.so.0", "libdl.so.2", "librt.so.1", "ld-linux-aarch64.so.1"}


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


def check_packaging(expect: str) -> None:
    """abi3 tag, no bundled shared library (nor the emulated CUDA backend's), and the needed
    libraries resolved by torch's install (readelf -d)."""
    dist = importlib.metadata.distribution("hardloss_cuda")
    tags = [line.split(":", 1)[1].strip() for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag:")]
    if not tags or not all(re.fullmatch(r"cp3\d+-abi3-\w+", t) for t in tags):
        _fail(f"wheel tags {tags}: expected one cp3X-abi3 wheel for every CPython")
    libs = [f for f in dist.files if re.search(r"\.so(\.|$)", f.name)]
    if any(f.name.startswith("_cuda_emu") for f in libs):
        _fail("the wheel ships hardloss_cuda._cuda_emu, the emulated CUDA backend: a test build only")
    if [f.name for f in libs] != [next(f.name for f in libs if f.name.startswith("_C."))]:
        _fail(f"the wheel bundles shared libraries besides its own: {[str(f) for f in libs]}")
    so = Path(dist.locate_file(libs[0]))
    out = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)
    torch_lib = Path(torch.__file__).parent / "lib"
    allowed = {p.name for p in torch_lib.glob("*.so*")}
    if expect == "cuda":
        allowed.add(f"libcudart.so.{torch.version.cuda.split('.')[0]}")
    foreign = [n for n in needed if n not in allowed and n not in _SYSTEM]
    if foreign:
        _fail(f"{so.name} needs {foreign}, which neither torch {torch.__version__} nor the system provides")
    print(f"check_wheel: OK, tags {tags}, {so.name} ({so.stat().st_size / 2**20:.0f} MiB) needs {needed}")


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
    if args.expect_mismatch:
        check_mismatch()
    else:
        check(args.expect)
        check_packaging(args.expect)

"""Check an installed hardloss_cuda wheel from outside the source tree (CI, `make wheels`).

  python check_wheel.py --expect cpu|cuda     the wheel imports, is the installed copy,
                                              reports its build and has its kernels; it is
                                              tagged abi3, bundles no shared library, and its
                                              library needs only torch's, the CUDA runtime of
                                              torch's major (a CUDA build must need it) and
                                              the system's C/C++ runtime; it installs one
                                              top-level package, hardloss_cuda (the Triton
                                              kernels are hardloss_cuda.triton_kernels: no
                                              top-level triton_kernels, a name PyPI's
                                              triton-kernels owns)
        [--cuobjdump PATH]                    CUDA: the GPU code in the library is exactly
                                              build_info()'s cuda_arch_list (cubins, PTX)
  python check_wheel.py --expect-mismatch     importing must fail with the clear message
                                              of hardloss_cuda/_version_check.py
"""

import argparse
import importlib.metadata
import importlib.util
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
        cudart = f"libcudart.so.{torch.version.cuda.split('.')[0]}"
        if cudart not in needed:
            _fail(f"{so.name} does not need {cudart} (CUDA {torch.version.cuda} torch): needs {needed}")
        allowed.add(cudart)
    foreign = [n for n in needed if n not in allowed and n not in _SYSTEM]
    if foreign:
        _fail(f"{so.name} needs {foreign}, which neither torch {torch.__version__} nor the system provides")
    check_top_level(dist)
    print(f"check_wheel: OK, tags {tags}, {so.name} ({so.stat().st_size / 2**20:.0f} MiB) needs {needed}")
    return so


def check_top_level(dist) -> None:
    """The wheel installs the package hardloss_cuda and nothing else at the top level: the Triton
    kernels are its subpackage, and no top-level ``triton_kernels`` of ours is importable."""
    tops = {f.parts[0] for f in dist.files if not f.parts[0].endswith(".dist-info") and f.parts[0] != ".."}
    if tops != {"hardloss_cuda"}:
        _fail(f"the wheel installs top-level names besides hardloss_cuda: {sorted(tops - {'hardloss_cuda'})}")
    if not any(f.parts[:2] == ("hardloss_cuda", "triton_kernels") and f.name == "launch.py" for f in dist.files):
        _fail("the wheel lacks hardloss_cuda/triton_kernels/launch.py")
    spec = importlib.util.find_spec("triton_kernels")
    if spec is not None:
        _fail(f"a top-level triton_kernels is importable: {spec.origin}")
    print(f"check_wheel: OK, top-level {sorted(tops)}, no top-level triton_kernels")


def check_archs(so: Path, cuobjdump: str) -> None:
    """The cubins and PTX in the library against the build record: "8.0;8.6;9.0+PTX" must give
    sm_80, sm_86 and sm_90 code and sm_90 PTX, in every file, and nothing else."""
    import hardloss_cuda as H

    arch_list = H.build_info()["cuda_arch_list"]
    want_elf, want_ptx = set(), set()
    for a in re.split(r"[;\s]+", arch_list.strip()):
        sm = "sm_" + a.removesuffix("+PTX").replace(".", "")
        want_elf.add(sm)
        if a.endswith("+PTX"):
            want_ptx.add(sm)
    if not Path(cuobjdump).is_file():
        _fail(f"no cuobjdump at {cuobjdump}")
    out = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", str(so)], capture_output=True, text=True, check=True).stdout
    found = re.findall(r"^(ELF|PTX) file\s+\d+: (.+)\.(sm_\w+)\.(?:cubin|ptx)$", out, re.M)
    elf = {sm for kind, _, sm in found if kind == "ELF"}
    ptx = {sm for kind, _, sm in found if kind == "PTX"}
    if (elf, ptx) != (want_elf, want_ptx):
        _fail(f"GPU code {sorted(elf)} + PTX {sorted(ptx)}, but cuda_arch_list {arch_list!r} "
              f"means {sorted(want_elf)} + PTX {sorted(want_ptx)}")
    files = {name for _, name, _ in found}
    per_file = {(name, kind, sm) for kind, name, sm in found}
    missing = [(n, k, sm) for n in files for k, want in (("ELF", want_elf), ("PTX", want_ptx)) for sm in want
               if (n, k, sm) not in per_file]
    if missing:
        _fail(f"object files without some of the architectures: {sorted(missing)[:5]}")
    def by_number(archs):
        return ", ".join(sorted(archs, key=lambda a: int(re.sub(r"\D", "", a))))

    print(f"check_wheel: OK, {len(files)} CUDA objects, each with code for {by_number(elf)} "
          f"and PTX for {by_number(ptx) or 'none'} (read by {cuobjdump})")


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
    ap.add_argument("--cuobjdump", help="cuobjdump of the toolkit that built a CUDA wheel")
    args = ap.parse_args()
    if args.expect_mismatch:
        check_mismatch()
    else:
        check(args.expect)
        so = check_packaging(args.expect)
        if args.cuobjdump and args.expect == "cuda":
            check_archs(so, args.cuobjdump)

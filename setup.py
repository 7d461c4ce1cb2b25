"""Build of hardloss_cuda: the pure-Python package plus the compiled library ``hardloss_cuda._C``.

The C++ (CPU) kernels are always built. The CUDA kernels are built too when the installed
torch has CUDA and nvcc is found. Environment switches (README "Building"):

  HARDLOSS_FORCE_CUDA=1   build the CUDA kernels or fail (no silent CPU-only fallback)
  HARDLOSS_SKIP_CUDA=1    build the CPU kernels only, even with a CUDA torch and nvcc
  HARDLOSS_CUDA_EMU=1     also build hardloss_cuda._cuda_emu, the cuda_emu backend: the CUDA
                          kernels compiled for the host and run by an emulator (docs/CUDA_EMU.md),
                          for tests; needs CUDA's headers, not a GPU. `make test` sets it; the
                          release wheels never have it
  TORCH_CUDA_ARCH_LIST    GPU architectures, default below (DEFAULT_ARCHS)
  MAX_JOBS                parallel compile jobs (ninja), default: all cores
  CUDA_HOME               toolkit root; default: found from the nvcc on PATH

torch is needed at build time: install it first, then
``pip install --no-build-isolation .`` (pyproject.toml says why).
"""

import datetime
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
# sm_80 (A100) to sm_90 (H100/H200) always; Blackwell (sm_100, sm_120) where the toolkit
# knows it. "+PTX" on the newest keeps the wheel loadable on GPUs newer than the list.
DEFAULT_ARCHS = {12: "8.0;8.6;9.0+PTX", 13: "8.0;8.6;9.0;10.0;12.0+PTX"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def _real_nvcc():
    """The nvcc binary, following a wrapper script that execs the real one (as on this CI)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    with open(nvcc, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"#!"):
        m = re.search(rb"exec\s+(\S*nvcc)\b", head)
        if m and Path(m.group(1).decode()).is_file():
            return str(Path(m.group(1).decode()).resolve())
    return str(Path(nvcc).resolve())


# torch.utils.cpp_extension reads CUDA_HOME when imported; pointing it at the folder of a
# wrapper script breaks linking (cannot find -lcudart), so resolve the real toolkit first.
if "CUDA_HOME" not in os.environ and _real_nvcc():
    os.environ["CUDA_HOME"] = str(Path(_real_nvcc()).parent.parent)

# What to run instead, when torch is missing: under pip's default build isolation the build
# environment never has it (pyproject.toml says why it is not a build requirement).
NO_TORCH = """hardloss_cuda is compiled against the torch it will run with, and no torch is
importable here. Either install torch first, then build against it without build isolation:

    pip install torch
    pip install --no-build-isolation .        (or: pip install --no-build-isolation <git url>)

or let pip put a torch release into the isolated build environment (it must be the release you
run with: the compiled library refuses any other, README "Wheels"):

    HARDLOSS_BUILD_TORCH=2.13.0 pip install .

docs/BUILDING.md has the details."""

try:
    import torch  # noqa: E402
except ModuleNotFoundError as e:
    if e.name != "torch":  # torch is there but broken: its own traceback says more
        raise
    raise SystemExit(NO_TORCH) from None
from torch.utils import cpp_extension  # noqa: E402


def _version() -> str:
    text = (ROOT / "hardloss_cuda" / "__init__.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def _nvcc_version():
    if cpp_extension.CUDA_HOME is None:
        return None
    nvcc = Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc"
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _want_cuda(nvcc_version) -> bool:
    if _flag("HARDLOSS_FORCE_CUDA") and _flag("HARDLOSS_SKIP_CUDA"):
        raise SystemExit("HARDLOSS_FORCE_CUDA and HARDLOSS_SKIP_CUDA are both set")
    missing = []
    if torch.version.cuda is None:
        missing.append(f"torch {torch.__version__} has no CUDA")
    if nvcc_version is None:
        missing.append("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    if _flag("HARDLOSS_SKIP_CUDA"):
        return False
    if _flag("HARDLOSS_FORCE_CUDA") and missing:
        raise SystemExit("HARDLOSS_FORCE_CUDA=1 but " + "; ".join(missing))
    return not missing


def _local_version(with_cuda: bool) -> str:
    # As torch/torchvision wheels: +cu130 for the toolkit, plus the torch minor the binary is
    # tied to (the C++ ABI changes between torch releases, also for the CPU build).
    torch_mm = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    if with_cuda:
        return "cu" + torch.version.cuda.replace(".", "") + "torch" + torch_mm
    return "cputorch" + torch_mm


def _sources(*patterns):
    return sorted(str(p.relative_to(ROOT)) for pat in patterns for p in ROOT.glob(pat))


NVCC_VERSION = _nvcc_version()
WITH_CUDA = _want_cuda(NVCC_VERSION)
if WITH_CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    major = int(NVCC_VERSION.split(".")[0])
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS[min(max(major, 12), 13)]

CXX_FLAGS = [
    "-O3",
    "-g0",  # 10.7 MB -> 0.2 MB .so (docs/BUILDING.md)
    # Lets GCC turn the clamps and NaN tests of fast_exp (csrc/cpu/vec_math.h) into selects:
    # with the default -ftrapping-math a comparison may raise, so the loops of
    # csrc/cpu/chunk_math.cpp stay scalar ("control flow in loop"), ~4x slower. Values do not
    # change; nothing here reads the floating-point exception flags.
    "-fno-trapping-math",
    "-fopenmp",  # at::parallel_for is an inline OpenMP region: without it the kernels run serially
    "-DPy_LIMITED_API=0x03090000",  # abi3: one wheel for every CPython >= 3.9
]
ext_kwargs = dict(
    name="hardloss_cuda._C",
    sources=_sources("csrc/*.cpp", "csrc/cpu/*.cpp"),
    include_dirs=[str(ROOT / "csrc")],
    extra_compile_args={"cxx": CXX_FLAGS},
    extra_link_args=["-fopenmp"],
    py_limited_api=True,
)
if WITH_CUDA:
    ext_kwargs["sources"] += _sources("csrc/cuda/*.cu", "csrc/cuda/*.cpp")
    ext_kwargs["extra_compile_args"] = {
        "cxx": CXX_FLAGS + ["-DHL_WITH_CUDA"],
        "nvcc": ["-O3", "-DHL_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo"],
    }
    extension = cpp_extension.CUDAExtension(**ext_kwargs)
else:
    extension = cpp_extension.CppExtension(**ext_kwargs)

def _cuda_include():
    """The CUDA toolkit's include folder (cuda_fp16.h, cuda_bf16.h, cuda_runtime_api.h), or None."""
    for root in (cpp_extension.CUDA_HOME, os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_fp16.h").is_file():
            return str(Path(root) / "include")
    return None


# The emulated backend: the kernels of csrc/cuda compiled for the host with the emulator of
# csrc/cuda/emu (its own module, hidden symbols, so it never meets the device build's).
WITH_CUDA_EMU = _flag("HARDLOSS_CUDA_EMU")
ext_modules = [extension]
if WITH_CUDA_EMU:
    CUDA_INCLUDE = _cuda_include()
    if CUDA_INCLUDE is None:
        raise SystemExit("HARDLOSS_CUDA_EMU=1 but CUDA's headers (cuda_fp16.h) were not found: set CUDA_HOME "
                         "or put nvcc on PATH (docs/CUDA_EMU.md), or build without HARDLOSS_CUDA_EMU")
    ext_modules.append(cpp_extension.CppExtension(
        name="hardloss_cuda._cuda_emu",
        sources=_sources("csrc/cuda/emu/*.cpp") + ["csrc/checks.cpp"],
        include_dirs=[str(ROOT / "csrc"), CUDA_INCLUDE],
        extra_compile_args={"cxx": [
            "-O2", "-g0", "-DHL_CUDA_EMU", "-fvisibility=hidden",
            "-fno-strict-aliasing",  # the packs are type-punned through uint4, as CUDA code does
            "-Wno-unknown-pragmas",  # #pragma unroll is nvcc's
            "-DPy_LIMITED_API=0x03090000",
        ]},
        py_limited_api=True,
    ))

LOCAL = _local_version(WITH_CUDA)
BUILD_INFO = {
    "version": f"{_version()}+{LOCAL}",
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda if WITH_CUDA else None,
    "with_cuda": WITH_CUDA,
    "cuda_emu": WITH_CUDA_EMU,
    "nvcc": NVCC_VERSION if WITH_CUDA else None,
    "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if WITH_CUDA else None,
    "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
    "python_limited_api": "cp39",
    "platform": platform.platform(),
    "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
}
# Read at run time by hardloss_cuda.build_info() and checked against the running torch.
(ROOT / "hardloss_cuda" / "_build_info.json").write_text(json.dumps(BUILD_INFO, indent=2) + "\n")

setup(
    version=BUILD_INFO["version"],
    ext_modules=ext_modules,
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)

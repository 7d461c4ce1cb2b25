"""Loading what the op backends need: the compiled library (``hardloss_cuda._C`` defines
``hardloss_cuda::{fwd, bwd, bwd_inplace}`` and registers the CPU and, when built, CUDA
kernels), checked against the running torch; the emulated CUDA backend
(``hardloss_cuda._cuda_emu``, built by ``make test`` only: docs/CUDA_EMU.md); and the Triton
kernels (``hardloss_cuda.triton_kernels``), on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import torch

from . import _version_check


def _load_compiled() -> str | None:
    """Import the compiled library; the reason it is not loaded, or None. Without it the
    reference (and triton) still work."""
    if importlib.util.find_spec("hardloss_cuda._C") is None:
        return "ModuleNotFoundError: hardloss_cuda._C was not built"
    why = _version_check.mismatch(_version_check.read_build_info(), torch.__version__, torch.version.cuda)
    if why is not None:
        if os.environ.get("HARDLOSS_IGNORE_BUILD_MISMATCH") != "1":
            raise RuntimeError(why)
        return why
    try:
        importlib.import_module("hardloss_cuda._C")
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


C_IMPORT_ERROR: str | None = _load_compiled()


def _load_cuda_emu():
    """The module of the cuda_emu backend and None, or None and why it is not loaded."""
    if C_IMPORT_ERROR is not None:
        return None, f"the C++ extension is not built ({C_IMPORT_ERROR})"
    if importlib.util.find_spec("hardloss_cuda._cuda_emu") is None:
        return None, ("the emulated CUDA backend is not built (a test build: HARDLOSS_CUDA_EMU=1, as `make test` "
                      "does; docs/CUDA_EMU.md)")
    try:
        return importlib.import_module("hardloss_cuda._cuda_emu"), None
    except ImportError as e:
        return None, f"{type(e).__name__}: {e}"


# The emulator's controls (profiles, seed, launch log; csrc/cuda/emu/ops_emu.cpp), or None.
CUDA_EMU, CUDA_EMU_ERROR = _load_cuda_emu()

# Read once: the dispatcher query is not traceable by torch.compile, and the answer cannot
# change after the library was loaded.
_COMPILED_FOR = {
    dev: C_IMPORT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("hardloss_cuda::fwd", key)
    for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}


def has_compiled_op(device_type: str) -> bool:
    """Whether the compiled library has a kernel for this device type ('cpu', 'cuda')."""
    return _COMPILED_FOR.get(device_type, False)


_TRITON_LAUNCH = None


def triton_launch():
    """``hardloss_cuda.triton_kernels.launch``, imported on first use: triton is optional."""
    global _TRITON_LAUNCH
    if _TRITON_LAUNCH is None:
        _TRITON_LAUNCH = importlib.import_module(f"{__package__}.triton_kernels.launch")
    return _TRITON_LAUNCH

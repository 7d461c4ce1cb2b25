"""Which backends exist here, and which one a call uses.

``backend="auto"`` (or the environment variable ``HARDLOSS_BACKEND`` when the call says
"auto") picks, for CPU tensors, the fused C++ kernel and else the reference; for CUDA
tensors the CUDA kernel, else Triton, else the reference. ``cuda_emu`` (the CUDA kernels run
by an emulator on CPU tensors, docs/CUDA_EMU.md) is a test backend: only asked for by name.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from . import _library, _version_check

BACKENDS = ("cuda", "triton", "cpu", "cuda_emu", "reference")


# Looked up once: importlib's finder cannot be traced by torch.compile, and resolve() runs
# inside compiled code.
_HAS_TRITON = importlib.util.find_spec("triton") is not None


def _triton_reason() -> str | None:
    if not _HAS_TRITON:
        return "triton is not installed (pip install triton)"
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "no CUDA GPU is available (set TRITON_INTERPRET=1 to run on CPU tensors)"
    return None


def unavailable_reasons() -> dict[str, str]:
    """Backend name -> why it cannot run here; backends that can run are absent."""
    reasons = {}
    if _library.C_IMPORT_ERROR is not None:
        why = f"the C++ extension is not built ({_library.C_IMPORT_ERROR})"
        reasons["cpu"] = reasons["cuda"] = why
    elif not _library.has_compiled_op("cuda"):
        reasons["cuda"] = "the extension was built without CUDA kernels"
    if "cuda" not in reasons and not torch.cuda.is_available():
        reasons["cuda"] = "no CUDA GPU is available"
    if _library.CUDA_EMU_ERROR is not None:
        reasons["cuda_emu"] = _library.CUDA_EMU_ERROR
    triton = _triton_reason()
    if triton:
        reasons["triton"] = triton
    return reasons


def available_backends() -> list[str]:
    """The backends that can run in this process, best first."""
    reasons = unavailable_reasons()
    return [b for b in BACKENDS if b not in reasons]


def resolve(backend: str, device: torch.device) -> str:
    """The backend a call on tensors of ``device`` uses; raises if it cannot run."""
    if backend == "auto":
        backend = os.environ.get("HARDLOSS_BACKEND", "auto") or "auto"
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    reasons = unavailable_reasons()
    if backend == "auto":
        order = ("cpu",) if device.type == "cpu" else ("cuda", "triton")
        return next((b for b in order if b not in reasons), "reference")
    if backend in reasons:
        raise RuntimeError(f"hardloss_cuda backend {backend!r} is not available: {reasons[backend]}")
    if backend == "cpu" and device.type != "cpu":
        raise RuntimeError(f"backend 'cpu' runs on CPU tensors; input is on {device}")
    if backend == "cuda" and device.type != "cuda":
        raise RuntimeError(f"backend 'cuda' runs on CUDA tensors; input is on {device}")
    if backend == "cuda_emu" and device.type != "cpu":
        raise RuntimeError(f"backend 'cuda_emu' (the CUDA kernels, emulated) runs on CPU tensors; input is on {device}")
    if backend == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("backend 'triton' runs on CPU tensors only under TRITON_INTERPRET=1")
    return backend


def build_info() -> dict:
    """How the compiled extension was built (torch, CUDA, archs), or why there is none."""
    info = _version_check.read_build_info()
    info["extension_loaded"] = _library.C_IMPORT_ERROR is None
    if _library.C_IMPORT_ERROR is not None:
        info["extension_error"] = _library.C_IMPORT_ERROR
    info["runtime_torch"] = torch.__version__
    return info

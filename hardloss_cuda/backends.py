"""The backends, in one table: the ops each one runs, whether it can run here (and why not),
the devices it takes, and which backend a call uses (``resolve``).

``backend="auto"`` (or the environment variable ``HARDLOSS_BACKEND`` when the call says
"auto") takes the first backend of the table, in its order, that is available and picked by
auto for the input's device: for CPU tensors the fused C++ kernel, for CUDA tensors the CUDA
kernel, then Triton; the reference, for any device, comes last. ``cuda_emu`` (the CUDA kernels
run by an emulator on CPU tensors, docs/CUDA_EMU.md) is a test backend: only asked for by name.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch

from . import _library, _version_check

# Looked up once: importlib's finder cannot be traced by torch.compile, and resolve() runs
# inside compiled code.
_HAS_TRITON = importlib.util.find_spec("triton") is not None

OP_KINDS = ("fwd", "bwd", "bwd_inplace", "shard_stats", "soft_shard_stats", "soft_shard_grad")  # the ops of every backend (_schema.py)


@dataclass(frozen=True)
class Backend:
    name: str
    op_names: tuple[str, ...]  # its OP_KINDS under torch.ops.hardloss_cuda
    loaded: bool  # whether those ops are defined in this process (the compiled ones may not be)
    unavailable: Callable[[], str | None]  # why it cannot run here, or None
    wrong_device: Callable[[torch.device], str | None]  # why it cannot take tensors on that device, or None
    picked_by_auto: Callable[[torch.device], bool]  # whether "auto" may take it for tensors on that device
    # what its ops' own argument checks may raise besides _schema.py's ValueError / TypeError:
    # the compiled ops check in C++ (csrc/checks.cpp), whose TORCH_CHECK raises RuntimeError
    op_check_errors: tuple[type, ...] = ()

    def op(self, kind: str):
        """The op ``kind`` (one of OP_KINDS) of this backend."""
        return getattr(torch.ops.hardloss_cuda, self.op_names[OP_KINDS.index(kind)])


def _named_ops(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{op}" for op in OP_KINDS)


def _runs_on(device_type: str, name: str, what: str = ""):
    """The device check of a backend that takes tensors of one device type only."""
    label = "CPU" if device_type == "cpu" else "CUDA"
    return lambda device: (None if device.type == device_type
                           else f"backend '{name}'{what} runs on {label} tensors; input is on {device}")


def _compiled_reason() -> str | None:
    if _library.C_IMPORT_ERROR is not None:
        return f"the C++ extension is not built ({_library.C_IMPORT_ERROR})"
    return None


def _cuda_reason() -> str | None:
    if _compiled_reason() is not None:
        return _compiled_reason()
    if not _library.has_compiled_op("cuda"):
        return "the extension was built without CUDA kernels"
    return None if torch.cuda.is_available() else "no CUDA GPU is available"


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_reason() -> str | None:
    if not _HAS_TRITON:
        return "triton is not installed (pip install triton)"
    if not torch.cuda.is_available() and not _triton_interpreted():
        return "no CUDA GPU is available (set TRITON_INTERPRET=1 to run on CPU tensors)"
    return None


def _triton_device(device: torch.device) -> str | None:
    if device.type == "cpu" and not _triton_interpreted():
        return "backend 'triton' runs on CPU tensors only under TRITON_INTERPRET=1"
    return None


def _not_cpu(device: torch.device) -> bool:
    return device.type != "cpu"


# Best first: the order of available_backends() and of "auto". The compiled library defines
# the unprefixed ops, with CPU and (when built) CUDA kernels; _ops.py defines the others.
_TABLE = (
    Backend("cuda", _named_ops(""), _library.C_IMPORT_ERROR is None, _cuda_reason, _runs_on("cuda", "cuda"),
            picked_by_auto=_not_cpu, op_check_errors=(RuntimeError,)),
    Backend("triton", _named_ops("triton_"), True, _triton_reason, _triton_device, picked_by_auto=_not_cpu),
    Backend("cpu", _named_ops(""), _library.C_IMPORT_ERROR is None, _compiled_reason, _runs_on("cpu", "cpu"),
            picked_by_auto=lambda device: device.type == "cpu", op_check_errors=(RuntimeError,)),
    Backend("cuda_emu", _named_ops("cuda_emu_"), _library.CUDA_EMU is not None, lambda: _library.CUDA_EMU_ERROR,
            _runs_on("cpu", "cuda_emu", " (the CUDA kernels, emulated)"), picked_by_auto=lambda device: False,
            op_check_errors=(RuntimeError,)),
    # last: what "auto" falls back to on any device
    Backend("reference", _named_ops("reference_"), True, lambda: None, lambda device: None,
            picked_by_auto=lambda device: True),
)
TABLE: dict[str, Backend] = {b.name: b for b in _TABLE}
BACKENDS = tuple(TABLE)
# The backends whose ops are defined in this process (the ops' fakes and autograd go on these).
LOADED = tuple(b for b in _TABLE if b.loaded)


def get(name: str) -> Backend:
    """The table entry of a resolved backend name."""
    return TABLE[name]


def unavailable_reasons() -> dict[str, str]:
    """Backend name -> why it cannot run here; backends that can run are absent."""
    reasons = {}
    for b in _TABLE:  # a loop, not a comprehension with :=, which Dynamo cannot trace
        why = b.unavailable()
        if why is not None:
            reasons[b.name] = why
    return reasons


def available_backends() -> list[str]:
    """The backends that can run in this process, best first."""
    reasons = unavailable_reasons()
    return [b for b in BACKENDS if b not in reasons]


def check_backend(backend) -> str:
    """The backend asked for (``HARDLOSS_BACKEND`` in place of "auto"), checked before any tensor
    is seen: a known name, and one that can run here; raises naming the argument or the
    environment variable, and why the backend cannot run. Returns the name (or "auto")."""
    if not isinstance(backend, str) or backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("HARDLOSS_BACKEND", "auto") or "auto"
        if backend not in BACKENDS + ("auto",):
            raise ValueError(f"the environment variable HARDLOSS_BACKEND={backend!r} (read for backend='auto') must "
                             f"be one of {('auto',) + BACKENDS}: unset it or set it to one of them")
    reasons = unavailable_reasons()
    if backend in reasons:
        avail = ", ".join(b for b in BACKENDS if b not in reasons)
        raise RuntimeError(f"hardloss_cuda backend {backend!r} is not available: {reasons[backend]} "
                           f"(available here: {avail}; backend='auto' picks one)")
    return backend


def resolve(backend: str, device: torch.device) -> str:
    """The backend a call on tensors of ``device`` uses; raises if it cannot run."""
    backend = check_backend(backend)
    if backend == "auto":
        reasons = unavailable_reasons()
        return next(b.name for b in _TABLE if b.picked_by_auto(device) and b.name not in reasons)
    why = TABLE[backend].wrong_device(device)
    if why is not None:
        raise RuntimeError(why)
    return backend


def build_info() -> dict:
    """How the compiled extension was built (torch, CUDA, archs), or why there is none."""
    info = _version_check.read_build_info()
    info["extension_loaded"] = _library.C_IMPORT_ERROR is None
    if _library.C_IMPORT_ERROR is not None:
        info["extension_error"] = _library.C_IMPORT_ERROR
    info["runtime_torch"] = torch.__version__
    return info

"""The ops of every backend under one schema (``_schema.py``), and which backend names which:

- ``hardloss_cuda::fwd`` / ``bwd`` / ``bwd_inplace`` / ``shard_stats``: compiled (csrc/), CPU and CUDA kernels;
- ``hardloss_cuda::cuda_emu_{fwd, bwd, bwd_inplace, shard_stats}``: the CUDA kernels on CPU tensors, run by the
  emulator (csrc/cuda/emu, a test build only);
- ``hardloss_cuda::reference_{fwd, bwd, bwd_inplace, shard_stats}``: ``reference.fwd`` / ``bwd``, any device;
- ``hardloss_cuda::triton_{fwd, bwd, bwd_inplace, shard_stats}``: ``hardloss_cuda.triton_kernels.launch``
  (imported on first use, ``_library.triton_launch``).

``_autograd.py`` gives them all the same fake and the same autograd formula.
"""

from __future__ import annotations

import torch

from . import reference
from ._library import C_IMPORT_ERROR, CUDA_EMU, triton_launch
from ._schema import BWD_ARGS, BWD_INPLACE_ARGS, FWD_ARGS, SHARD_STATS_ARGS

_lib = torch.library.Library("hardloss_cuda", "FRAGMENT")


def _reference_bwd_inplace(grad_loss, logits, *args) -> None:
    logits.copy_(reference.bwd(grad_loss, logits, *args))


def _triton(name: str):
    def impl(*args):
        return getattr(triton_launch(), name)(*args)

    return impl


def _define(backend: str, impls: dict, key: str) -> None:
    """hardloss_cuda::<backend>_{fwd, bwd, bwd_inplace} with the schema of the compiled ops."""
    for op, args in (("fwd", FWD_ARGS), ("bwd", BWD_ARGS), ("bwd_inplace", BWD_INPLACE_ARGS),
                     ("shard_stats", SHARD_STATS_ARGS)):
        _lib.define(f"{backend}_{op}{args}")
        for k in (key,) if isinstance(key, str) else key:
            _lib.impl(f"{backend}_{op}", impls[op], k)


_define("reference", {"fwd": reference.fwd, "bwd": reference.bwd, "bwd_inplace": _reference_bwd_inplace,
                     "shard_stats": reference.shard_stats}, "CompositeExplicitAutograd")
# Triton on CPU tensors runs only under TRITON_INTERPRET=1.
_define("triton", {op: _triton(op) for op in ("fwd", "bwd", "bwd_inplace", "shard_stats")}, ("CPU", "CUDA"))


# backend -> (forward, backward, in-place backward) op names under torch.ops.hardloss_cuda
OPS = {b: (f"{b}_fwd", f"{b}_bwd", f"{b}_bwd_inplace") for b in ("reference", "triton")}
if C_IMPORT_ERROR is None:
    OPS.update(cpu=("fwd", "bwd", "bwd_inplace"), cuda=("fwd", "bwd", "bwd_inplace"))
if CUDA_EMU is not None:
    OPS["cuda_emu"] = ("cuda_emu_fwd", "cuda_emu_bwd", "cuda_emu_bwd_inplace")


def fwd_op(backend: str):
    return getattr(torch.ops.hardloss_cuda, OPS[backend][0])


def bwd_op(backend: str):
    return getattr(torch.ops.hardloss_cuda, OPS[backend][1])


def bwd_inplace_op(backend: str):
    return getattr(torch.ops.hardloss_cuda, OPS[backend][2])


def shard_stats_op(backend: str):
    """The backend's ``shard_stats`` (a vocab-parallel loss's per-shard statistics)."""
    name = "shard_stats" if backend in ("cpu", "cuda") else f"{backend}_shard_stats"
    return getattr(torch.ops.hardloss_cuda, name)

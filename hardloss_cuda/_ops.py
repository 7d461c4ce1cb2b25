"""The ops of every backend under one schema (``_schema.py``); ``backends.py``'s table says which
backend names which, and ``fwd_op`` etc. look them up there:

- ``hardloss_cuda::fwd`` / ``bwd`` / ``bwd_inplace`` / ``shard_stats`` / ``soft_shard_stats`` /
  ``soft_shard_grad``: compiled (csrc/), CPU and CUDA kernels;
- ``hardloss_cuda::cuda_emu_{fwd, ..., soft_shard_grad}``: the CUDA kernels on CPU tensors, run by the
  emulator (csrc/cuda/emu, a test build only);
- ``hardloss_cuda::reference_{fwd, ..., soft_shard_grad}``: ``reference.fwd`` / ``bwd``, any device;
- ``hardloss_cuda::triton_{fwd, ..., soft_shard_grad}``: ``hardloss_cuda.triton_kernels.launch``
  (imported on first use, ``_library.triton_launch``).

``_autograd.py`` gives them all the same fake and the same autograd formula.
"""

from __future__ import annotations

import torch

from . import reference
from ._library import triton_launch
from ._schema import (BWD_ARGS, BWD_INPLACE_ARGS, FWD_ARGS, SHARD_STATS_ARGS, SOFT_SHARD_GRAD_ARGS,
                      SOFT_SHARD_STATS_ARGS)
from .backends import OP_KINDS, get

_lib = torch.library.Library("hardloss_cuda", "FRAGMENT")


def _reference_bwd_inplace(grad_loss, logits, *args) -> None:
    logits.copy_(reference.bwd(grad_loss, logits, *args))


def _triton(name: str):
    def impl(*args):
        return getattr(triton_launch(), name)(*args)

    return impl


def _define(backend: str, impls: dict, keys: tuple[str, ...]) -> None:
    """The backend's ops, named by its table entry, with the schema of the compiled ops."""
    for kind, name, args in zip(OP_KINDS, get(backend).op_names, (FWD_ARGS, BWD_ARGS, BWD_INPLACE_ARGS,
                                                                  SHARD_STATS_ARGS, SOFT_SHARD_STATS_ARGS,
                                                                  SOFT_SHARD_GRAD_ARGS)):
        _lib.define(f"{name}{args}")
        for key in keys:
            _lib.impl(name, impls[kind], key)


_define("reference", {"fwd": reference.fwd, "bwd": reference.bwd, "bwd_inplace": _reference_bwd_inplace,
                     "shard_stats": reference.shard_stats, "soft_shard_stats": reference.soft_shard_stats,
                     "soft_shard_grad": reference.soft_shard_grad},
        ("CompositeExplicitAutograd",))
# Triton on CPU tensors runs only under TRITON_INTERPRET=1.
_define("triton", {kind: _triton(kind) for kind in OP_KINDS}, ("CPU", "CUDA"))



def fwd_op(backend: str):
    return get(backend).op("fwd")


def bwd_op(backend: str):
    return get(backend).op("bwd")


def bwd_inplace_op(backend: str):
    return get(backend).op("bwd_inplace")


def shard_stats_op(backend: str):
    """The backend's ``shard_stats`` (a vocab-parallel loss's per-shard statistics)."""
    return get(backend).op("shard_stats")


def soft_shard_stats_op(backend: str):
    """The backend's ``soft_shard_stats`` (a vocab-parallel loss's per-shard soft-row statistics)."""
    return get(backend).op("soft_shard_stats")


def soft_shard_grad_op(backend: str):
    """The backend's ``soft_shard_grad`` (the vocab-parallel soft backward from the kept pass)."""
    return get(backend).op("soft_shard_grad")

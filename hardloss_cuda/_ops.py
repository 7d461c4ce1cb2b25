"""Registration of the ops of every backend under one schema (``_schema.py``).

- ``hardloss_cuda::fwd`` / ``bwd`` / ``bwd_inplace``: compiled (csrc/), CPU and CUDA kernels;
- ``hardloss_cuda::reference_fwd`` / ``reference_bwd`` / ``reference_bwd_inplace``: ``reference.fwd`` /
  ``bwd``, any device;
- ``hardloss_cuda::triton_fwd`` / ``triton_bwd`` / ``triton_bwd_inplace``: ``triton_kernels.launch``
  (imported under a private name, ``triton_launch``).

Every forward op gets the same fake (for torch.compile) and the same autograd formula: the
backward calls the backend's ``bwd`` op, which recomputes the pseudo-gradient from the logits
and the row statistics kept by the forward, scaled by the incoming per-row gradient; the
true gradient for a mixture matrix or probability targets that require it is computed here.
``inplace_backward`` writes the gradient over the logits instead; a mutation of an input
is not allowed in ``register_autograd``, so it goes through ``InplaceFwd`` (an
``autograd.Function``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import torch
from torch import Tensor

from . import _version_check, reference
from ._schema import BWD_ARGS, BWD_INPLACE_ARGS, FWD_ARGS, LSE_COL, LSE_LO_COL, STATS_COLS


def _load_compiled() -> str | None:
    """Import the compiled library (it defines hardloss_cuda::{fwd, bwd, bwd_inplace});
    the reason it is not loaded, or None. Without it the reference (and triton) still work."""
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

_lib = torch.library.Library("hardloss_cuda", "FRAGMENT")


def _reference_bwd_inplace(grad_loss, logits, *args) -> None:
    logits.copy_(reference.bwd(grad_loss, logits, *args))


_TRITON_LAUNCH = None


def triton_launch():
    """``triton_kernels.launch`` of this installation (it sits beside this package), imported
    under the private name ``hardloss_cuda._triton_kernels``: ``triton_kernels`` is a
    top-level name other projects use too, and a foreign one earlier on ``sys.path`` must never
    be picked up. Imported on first use: triton is optional."""
    global _TRITON_LAUNCH
    if _TRITON_LAUNCH is None:
        name = f"{__package__}._triton_kernels"
        if name not in sys.modules:
            pkg = Path(__file__).resolve().parent.parent / "triton_kernels"
            spec = importlib.util.spec_from_file_location(name, pkg / "__init__.py",
                                                          submodule_search_locations=[str(pkg)])
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        _TRITON_LAUNCH = importlib.import_module(f"{name}.launch")
    return _TRITON_LAUNCH


def _triton(name: str):
    def impl(*args):
        return getattr(triton_launch(), name)(*args)

    return impl


def _define(backend: str, impls: dict, key: str) -> None:
    """hardloss_cuda::<backend>_{fwd, bwd, bwd_inplace} with the schema of the compiled ops."""
    for op, args in (("fwd", FWD_ARGS), ("bwd", BWD_ARGS), ("bwd_inplace", BWD_INPLACE_ARGS)):
        _lib.define(f"{backend}_{op}{args}")
        for k in (key,) if isinstance(key, str) else key:
            _lib.impl(f"{backend}_{op}", impls[op], k)


_define("reference", {"fwd": reference.fwd, "bwd": reference.bwd, "bwd_inplace": _reference_bwd_inplace},
        "CompositeExplicitAutograd")
# Triton on CPU tensors runs only under TRITON_INTERPRET=1.
_define("triton", {op: _triton(op) for op in ("fwd", "bwd", "bwd_inplace")}, ("CPU", "CUDA"))


# Read once: the dispatcher query is not traceable by torch.compile, and the answer cannot
# change after the library was loaded.
_COMPILED_FOR = {
    dev: C_IMPORT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("hardloss_cuda::fwd", key)
    for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}


def has_compiled_op(device_type: str) -> bool:
    """Whether the compiled library has a kernel for this device type ('cpu', 'cuda')."""
    return _COMPILED_FOR.get(device_type, False)


# backend -> (forward, backward, in-place backward) op names under torch.ops.hardloss_cuda
OPS = {b: (f"{b}_fwd", f"{b}_bwd", f"{b}_bwd_inplace") for b in ("reference", "triton")}
if C_IMPORT_ERROR is None:
    OPS.update(cpu=("fwd", "bwd", "bwd_inplace"), cuda=("fwd", "bwd", "bwd_inplace"))


def fwd_op(backend: str):
    return getattr(torch.ops.hardloss_cuda, OPS[backend][0])


def bwd_op(backend: str):
    return getattr(torch.ops.hardloss_cuda, OPS[backend][1])


def bwd_inplace_op(backend: str):
    return getattr(torch.ops.hardloss_cuda, OPS[backend][2])


def _fake_fwd(logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad):
    N = logits.shape[0]
    acc = reference.acc_dtype(logits.dtype)
    return logits.new_empty(N, dtype=acc), logits.new_empty((N, STATS_COLS), dtype=acc)


def _fake_bwd(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k):
    return torch.empty_like(logits)


def _true_rows_grad(grad_loss, logits, stats, weight, scale):
    """d loss_i / d q_ij = -w_j log p_ij, times the incoming gradient and `scale`;
    -log p_ij = (lse_i - z_ij) + lse_lo_i, exact for huge logits."""
    lse, lse_lo = stats[:, LSE_COL, None], stats[:, LSE_LO_COL, None]
    g = grad_loss[:, None] * ((lse - logits.to(lse.dtype)) + lse_lo) * scale
    return g if weight is None else g * weight


def _target_grads(ctx, grad_loss, logits, target, weight, mixture, stats):
    """The true gradients of probability targets and of a mixture matrix, when required."""
    d_target = d_mixture = None
    if ctx.needs_input_grad[1] and target.is_floating_point():
        d_target = _true_rows_grad(grad_loss, logits, stats, weight, 1 - ctx.label_smoothing).to(target.dtype)
    if mixture is not None and ctx.needs_input_grad[3]:
        valid = (target != ctx.ignore_index) & (target >= 0) & (target < mixture.shape[0])
        rows_grad = _true_rows_grad(grad_loss * valid, logits, stats, weight, 1.0)
        # Sum over the rows labelled y; index_add_ is deterministic on the CPU. On CUDA a
        # one-hot matmul keeps it deterministic (no atomics).
        y = torch.where(valid, target, 0)
        if mixture.is_cuda:
            onehot = torch.nn.functional.one_hot(y, mixture.shape[0]).to(rows_grad.dtype)
            d_mixture = onehot.T @ rows_grad
        else:
            d_mixture = torch.zeros_like(mixture, dtype=rows_grad.dtype).index_add_(0, y, rows_grad)
        d_mixture = d_mixture.to(mixture.dtype)
    return d_target, d_mixture


def _no_double_backward():
    if torch.is_grad_enabled():
        raise RuntimeError(
            "hardloss_cuda: double backward is not supported: the |eps|^k pseudo-gradient "
            "is not the gradient of a loss (docs/ROW_MATH.md section 3)"
        )


def _setup_context(ctx, inputs, output):
    logits, target, weight, mixture, ignore_index, label_smoothing, k, _compute_grad = inputs
    ctx.ignore_index, ctx.label_smoothing, ctx.k = ignore_index, label_smoothing, k
    ctx.save_for_backward(logits, target, weight, mixture, output[1])


def _autograd_for(bwd_name: str):
    def backward(ctx, grad_loss, _grad_stats):
        _no_double_backward()
        logits, target, weight, mixture, stats = ctx.saved_tensors
        grad_loss = grad_loss.to(stats.dtype)
        d_logits = None
        if ctx.needs_input_grad[0]:
            d_logits = getattr(torch.ops.hardloss_cuda, bwd_name)(
                grad_loss, logits, target, weight, mixture, stats, ctx.ignore_index, ctx.label_smoothing, ctx.k
            )
        d_target, d_mixture = _target_grads(ctx, grad_loss, logits, target, weight, mixture, stats)
        return d_logits, d_target, None, d_mixture, None, None, None, None

    return backward


def _fake_bwd_inplace(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k):
    return None


for _fwd_name, _bwd_name, _inplace_name in set(OPS.values()):
    torch.library.register_fake(f"hardloss_cuda::{_fwd_name}")(_fake_fwd)
    torch.library.register_fake(f"hardloss_cuda::{_bwd_name}")(_fake_bwd)
    torch.library.register_fake(f"hardloss_cuda::{_inplace_name}")(_fake_bwd_inplace)
    torch.library.register_autograd(
        f"hardloss_cuda::{_fwd_name}", _autograd_for(_bwd_name), setup_context=_setup_context
    )


class InplaceFwd(torch.autograd.Function):
    """``inplace_backward=True``: backward writes the pseudo-gradient over the logits and
    returns them as their own gradient, so no (N, C) buffer is allocated at all.

    The write is an in-place op as far as autograd is concerned: the logits' version counter
    (shared with every view of them) is bumped, so a node that saved them and runs later in
    the backward pass (``exp``, ``sigmoid``, another loss on the same logits, a second
    backward with ``retain_graph``) raises autograd's own error instead of reading the
    gradient as if it were the logits."""

    @staticmethod
    def forward(ctx, logits, target, weight, mixture, ignore_index, label_smoothing, k, backend):
        loss, stats = fwd_op(backend)(logits, target, weight, mixture, ignore_index, label_smoothing, k, True)
        ctx.args = (ignore_index, label_smoothing, k)
        ctx.backend = backend
        ctx.save_for_backward(logits, target, weight, mixture, stats)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        _no_double_backward()
        logits, target, weight, mixture, stats = ctx.saved_tensors
        bwd_inplace_op(ctx.backend)(grad_loss.to(stats.dtype).contiguous(), logits, target, weight, mixture,
                                    stats, *ctx.args)
        torch.autograd.graph.increment_version(logits)
        return logits.detach(), None, None, None, None, None, None, None

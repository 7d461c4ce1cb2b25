"""Registration of the ops of every backend under one schema (``_schema.py``).

- ``hardloss_cuda::fwd`` / ``bwd`` / ``bwd_inplace``: compiled (csrc/), CPU and CUDA kernels;
- ``hardloss_cuda::reference_fwd`` / ``reference_bwd``: ``reference.fwd`` / ``bwd``, any device;
- ``hardloss_cuda::triton_fwd`` / ``triton_bwd``: ``triton_kernels.launch.fwd`` / ``bwd``.

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

import torch
from torch import Tensor

from . import _version_check, reference
from ._schema import BWD_ARGS, FWD_ARGS, LSE_COL, STATS_COLS


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
_lib.define("reference_fwd" + FWD_ARGS)
_lib.define("reference_bwd" + BWD_ARGS)
_lib.impl("reference_fwd", reference.fwd, "CompositeExplicitAutograd")
_lib.impl("reference_bwd", reference.bwd, "CompositeExplicitAutograd")


def _triton_fwd(*args):
    from triton_kernels import launch  # imported late: triton is optional

    return launch.fwd(*args)


def _triton_bwd(*args):
    from triton_kernels import launch

    return launch.bwd(*args)


_lib.define("triton_fwd" + FWD_ARGS)
_lib.define("triton_bwd" + BWD_ARGS)
for _key in ("CPU", "CUDA"):  # CPU runs only under TRITON_INTERPRET=1
    _lib.impl("triton_fwd", _triton_fwd, _key)
    _lib.impl("triton_bwd", _triton_bwd, _key)


# Read once: the dispatcher query is not traceable by torch.compile, and the answer cannot
# change after the library was loaded.
_COMPILED_FOR = {
    dev: C_IMPORT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("hardloss_cuda::fwd", key)
    for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}


def has_compiled_op(device_type: str) -> bool:
    """Whether the compiled library has a kernel for this device type ('cpu', 'cuda')."""
    return _COMPILED_FOR.get(device_type, False)


# backend -> (forward op, backward op) names under torch.ops.hardloss_cuda
OPS = {"reference": ("reference_fwd", "reference_bwd"), "triton": ("triton_fwd", "triton_bwd")}
if C_IMPORT_ERROR is None:
    OPS.update(cpu=("fwd", "bwd"), cuda=("fwd", "bwd"))


def fwd_op(backend: str):
    return getattr(torch.ops.hardloss_cuda, OPS[backend][0])


def bwd_op(backend: str):
    return getattr(torch.ops.hardloss_cuda, OPS[backend][1])


def _fake_fwd(logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad):
    N = logits.shape[0]
    acc = reference.acc_dtype(logits.dtype)
    return logits.new_empty(N, dtype=acc), logits.new_empty((N, STATS_COLS), dtype=acc)


def _fake_bwd(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k):
    return torch.empty_like(logits)


def _true_rows_grad(grad_loss, logits, lse, weight, scale):
    """d loss_i / d q_ij = -w_j log p_ij, times the incoming gradient and `scale`."""
    g = grad_loss[:, None] * (lse[:, None] - logits.to(lse.dtype)) * scale
    return g if weight is None else g * weight


def _target_grads(ctx, grad_loss, logits, target, weight, mixture, lse):
    """The true gradients of probability targets and of a mixture matrix, when required."""
    d_target = d_mixture = None
    if ctx.needs_input_grad[1] and target.is_floating_point():
        d_target = _true_rows_grad(grad_loss, logits, lse, weight, 1 - ctx.label_smoothing).to(target.dtype)
    if mixture is not None and ctx.needs_input_grad[3]:
        valid = (target != ctx.ignore_index) & (target >= 0) & (target < mixture.shape[0])
        rows_grad = _true_rows_grad(grad_loss * valid, logits, lse, weight, 1.0)
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
            "is not the gradient of a loss (SPEC.md section 1)"
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
        d_target, d_mixture = _target_grads(ctx, grad_loss, logits, target, weight, mixture, stats[:, LSE_COL])
        return d_logits, d_target, None, d_mixture, None, None, None, None

    return backward


for _fwd_name, _bwd_name in set(OPS.values()):
    torch.library.register_fake(f"hardloss_cuda::{_fwd_name}")(_fake_fwd)
    torch.library.register_fake(f"hardloss_cuda::{_bwd_name}")(_fake_bwd)
    torch.library.register_autograd(
        f"hardloss_cuda::{_fwd_name}", _autograd_for(_bwd_name), setup_context=_setup_context
    )

if C_IMPORT_ERROR is None:

    @torch.library.register_fake("hardloss_cuda::bwd_inplace")
    def _fake_bwd_inplace(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k):
        return None


def bwd_inplace(backend: str, grad_loss: Tensor, logits: Tensor, *args) -> None:
    """The backend's backward, written over ``logits``."""
    if backend in ("cpu", "cuda"):
        torch.ops.hardloss_cuda.bwd_inplace(grad_loss, logits, *args)
    elif backend == "triton":
        from triton_kernels import launch

        launch.bwd(grad_loss, logits, *args, out=logits)
    else:
        logits.copy_(reference.bwd(grad_loss, logits, *args))


class InplaceFwd(torch.autograd.Function):
    """``inplace_backward=True``: backward writes the pseudo-gradient over the logits and
    returns them as their own gradient, so no (N, C) buffer is allocated at all."""

    @staticmethod
    def forward(ctx, logits, target, weight, mixture, ignore_index, label_smoothing, k, backend):
        loss, stats = fwd_op(backend)(logits, target, weight, mixture, ignore_index, label_smoothing, k, True)
        ctx.args = (ignore_index, label_smoothing, k)
        ctx.backend = backend
        ctx.save_for_backward(logits, target, weight, mixture, stats)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        logits, target, weight, mixture, stats = ctx.saved_tensors
        bwd_inplace(ctx.backend, grad_loss.to(stats.dtype).contiguous(), logits, target, weight, mixture, stats,
                    *ctx.args)
        return logits, None, None, None, None, None, None, None

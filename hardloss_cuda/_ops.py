"""Registration of the forward ops of every backend under one schema (``_schema.py``).

- ``hardloss_cuda::fwd`` / ``fwd_inplace`` / ``bwd``: compiled (csrc/), CPU and CUDA kernels;
- ``hardloss_cuda::reference_fwd``: ``reference.rows``, any device;
- ``hardloss_cuda::triton_fwd``: ``triton_kernels.launch.fwd``.

Every functional forward op gets the same fake (for torch.compile) and the same autograd
formula: backward scales the saved pseudo-gradient by the incoming per-row gradient, and
computes the true gradient for a mixture matrix or probability targets that require it.
The in-place variant mutates its input, which ``register_autograd`` does not allow; it is
wrapped in ``InplaceFwd`` (an ``autograd.Function``) instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import torch
from torch import Tensor

from . import _version_check, reference
from ._schema import FWD_ARGS


def _load_compiled() -> str | None:
    """Import the compiled library (it defines hardloss_cuda::{fwd, fwd_inplace, bwd});
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
_lib.impl("reference_fwd", reference.rows, "CompositeExplicitAutograd")

_lib.define("triton_fwd" + FWD_ARGS)


def _triton_fwd(*args):
    from triton_kernels import launch  # imported late: triton is optional

    return launch.fwd(*args)


for _key in ("CPU", "CUDA"):  # CPU runs only under TRITON_INTERPRET=1
    _lib.impl("triton_fwd", _triton_fwd, _key)


# Read once: the dispatcher query is not traceable by torch.compile, and the answer cannot
# change after the library was loaded.
_COMPILED_FOR = {
    dev: C_IMPORT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("hardloss_cuda::fwd", key)
    for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}


def has_compiled_op(device_type: str) -> bool:
    """Whether the compiled library has a kernel for this device type ('cpu', 'cuda')."""
    return _COMPILED_FOR.get(device_type, False)


def _fake_fwd(logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad):
    N, C = logits.shape
    acc = reference.acc_dtype(logits.dtype)
    grad = logits.new_empty((N if compute_grad else 0, C))
    return logits.new_empty(N, dtype=acc), grad, logits.new_empty(N, dtype=acc)


def _scale_rows(grad_loss: Tensor, grad: Tensor) -> Tensor:
    """grad_loss[:, None] * grad, through the compiled kernel when there is one."""
    if has_compiled_op(grad.device.type):
        return torch.ops.hardloss_cuda.bwd(grad_loss, grad)
    return (grad_loss[:, None] * grad).to(grad.dtype)


def _true_rows_grad(grad_loss, logits, lse, weight, scale):
    """d loss_i / d q_ij = -w_j log p_ij, times the incoming gradient and `scale`."""
    g = grad_loss[:, None] * (lse[:, None] - logits.to(lse.dtype)) * scale
    return g if weight is None else g * weight


def _setup_context(ctx, inputs, output):
    logits, target, weight, mixture, ignore_index, label_smoothing, _k, _compute_grad = inputs
    _loss, grad, lse = output
    need_true = (mixture is not None and ctx.needs_input_grad[3]) or (
        target.is_floating_point() and ctx.needs_input_grad[1]
    )
    ctx.ignore_index, ctx.label_smoothing = ignore_index, label_smoothing
    ctx.save_for_backward(grad, logits if need_true else None, target, weight, mixture, lse)


def _backward(ctx, grad_loss, _grad_grad, _grad_lse):
    if torch.is_grad_enabled():
        raise RuntimeError(
            "hardloss_cuda: double backward is not supported: the |eps|^k pseudo-gradient "
            "is not the gradient of a loss (SPEC.md section 1)"
        )
    grad, logits, target, weight, mixture, lse = ctx.saved_tensors
    grad_loss = grad_loss.to(lse.dtype)
    d_logits = d_target = d_mixture = None
    if ctx.needs_input_grad[0]:
        d_logits = _scale_rows(grad_loss, grad)
    if ctx.needs_input_grad[1] and target.is_floating_point():
        d_target = _true_rows_grad(grad_loss, logits, lse, weight, 1 - ctx.label_smoothing)
        d_target = d_target.to(target.dtype)
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
    return d_logits, d_target, None, d_mixture, None, None, None, None


FWD_OPS = {"reference": "reference_fwd", "triton": "triton_fwd"}
if C_IMPORT_ERROR is None:
    FWD_OPS.update(cpu="fwd", cuda="fwd")

    @torch.library.register_fake("hardloss_cuda::fwd_inplace")
    def _fake_fwd_inplace(logits, target, weight, mixture, ignore_index, label_smoothing, k):
        loss, _grad, lse = _fake_fwd(logits, target, weight, mixture, ignore_index, label_smoothing, k, False)
        return loss, lse

    @torch.library.register_fake("hardloss_cuda::bwd")
    def _fake_bwd(grad_loss, grad):
        return torch.empty_like(grad)


for _name in set(FWD_OPS.values()):
    torch.library.register_fake(f"hardloss_cuda::{_name}")(_fake_fwd)
    torch.library.register_autograd(f"hardloss_cuda::{_name}", _backward, setup_context=_setup_context)


class InplaceFwd(torch.autograd.Function):
    """``inplace_backward=True``: the pseudo-gradient is written into the logits' storage in
    the forward pass and scaled in place in backward, so no (N, C) buffer is allocated."""

    @staticmethod
    def forward(ctx, logits, target, weight, mixture, ignore_index, label_smoothing, k, backend):
        if backend in ("cpu", "cuda"):
            loss, lse = torch.ops.hardloss_cuda.fwd_inplace(
                logits, target, weight, mixture, ignore_index, label_smoothing, k
            )
        elif backend == "triton":
            from triton_kernels import launch

            loss, lse = launch.fwd_inplace(logits, target, weight, mixture, ignore_index, label_smoothing, k)
        else:
            loss, grad, lse = reference.rows(logits, target, weight, mixture, ignore_index, label_smoothing, k)
            logits.copy_(grad)
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(logits)
        return loss, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_lse):
        (grad,) = ctx.saved_tensors
        grad.mul_(grad_loss[:, None])
        return grad, None, None, None, None, None, None, None

"""One fake (for torch.compile) and one autograd formula for the forward op of every backend.

The backward calls the backend's ``bwd`` op, which recomputes the pseudo-gradient from the
logits and the row statistics kept by the forward, scaled by the incoming per-row gradient;
the true gradients of a mixture matrix or of probability targets that require them are
``reference.target_grads``. ``inplace_backward`` writes the gradient over the logits instead;
a mutation of an input is not allowed in ``register_autograd``, so it goes through
``InplaceFwd`` (an ``autograd.Function``).
"""

from __future__ import annotations

import torch

from . import reference
from ._ops import OPS, bwd_inplace_op, fwd_op
from ._schema import LSE_COL, STATS_COLS, acc_dtype


def _fake_fwd(logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad, softcap=0.0):
    N = logits.shape[0]
    acc = acc_dtype(logits.dtype)
    return logits.new_empty(N, dtype=acc), logits.new_empty((N, STATS_COLS), dtype=acc)


def _fake_bwd(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap=0.0,
              grad_lse=None):
    return torch.empty_like(logits)


def _no_double_backward():
    if torch.is_grad_enabled():
        raise RuntimeError(
            "hardloss_cuda: double backward is supported at k = 1 only (and not with inplace_backward): "
            "the |eps|^k pseudo-gradient is not the gradient of a loss (docs/ROW_MATH.md section 3)"
        )


def _setup_context(ctx, inputs, output):
    logits, target, weight, mixture, ignore_index, label_smoothing, k, _compute_grad, *rest = inputs
    ctx.ignore_index, ctx.label_smoothing, ctx.k = ignore_index, label_smoothing, k
    ctx.softcap = rest[0] if rest else 0.0
    ctx.save_for_backward(logits, target, weight, mixture, output[1])


def _grad_lse(grad_stats):
    """The incoming gradient of the row's logsumexp, or None when nothing used it. Only the
    LSE_COL column is differentiable (d lse / dz = softmax): LSE_LO_COL is its rounding
    correction, with derivative 0, and the other columns are the backward's own numbers."""
    if grad_stats is None:
        return None
    return grad_stats[:, LSE_COL].contiguous()


def _differentiable_backward(ctx, grad_loss, grad_lse, logits, target, weight, mixture):
    """create_graph=True at k = 1: the gradient g (t softmax(z) - q) of cross-entropy in torch
    ops (q = reference.target_rows, t = sum q), which autograd differentiates again
    (Hessian-vector products, gradient penalties). The same on every backend; the kernels'
    backward is not differentiable."""
    if ctx.k != 1:
        _no_double_backward()
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
        raise RuntimeError("hardloss_cuda: double backward through probability targets or a mixture is not "
                           "supported (only through the logits, at k = 1)")
    acc = acc_dtype(logits.dtype)
    q = reference.target_rows(logits.shape[1], target, weight, mixture, ctx.ignore_index, ctx.label_smoothing, acc)
    z = logits.to(acc)
    if ctx.softcap != 0:
        z = ctx.softcap * torch.tanh(z / ctx.softcap)  # differentiated by autograd (chain rule)
    p = torch.softmax(z, 1)
    grad = grad_loss.to(acc)[:, None] * (q.sum(1, keepdim=True) * p - q)
    if grad_lse is not None:
        grad = grad + grad_lse.to(acc)[:, None] * p
    if ctx.softcap != 0:  # the chain rule through c tanh(x / c), itself differentiable
        grad = grad * (1 - torch.square(z / ctx.softcap))
    return (grad.to(logits.dtype),) + (None,) * 8


def _autograd_for(bwd_name: str):
    def backward(ctx, grad_loss, grad_stats):
        logits, target, weight, mixture, stats = ctx.saved_tensors
        grad_lse = _grad_lse(grad_stats)
        if torch.is_grad_enabled():  # create_graph=True
            return _differentiable_backward(ctx, grad_loss, grad_lse, logits, target, weight, mixture)
        grad_loss = grad_loss.to(stats.dtype)
        d_logits = None
        if ctx.needs_input_grad[0]:
            d_logits = getattr(torch.ops.hardloss_cuda, bwd_name)(
                grad_loss, logits, target, weight, mixture, stats, ctx.ignore_index, ctx.label_smoothing, ctx.k,
                ctx.softcap, grad_lse,
            )
        d_target, d_mixture = reference.target_grads(
            grad_loss, logits, target, weight, mixture, stats, ctx.ignore_index, ctx.label_smoothing,
            need_target=ctx.needs_input_grad[1], need_mixture=ctx.needs_input_grad[3], softcap=ctx.softcap,
        )
        return d_logits, d_target, None, d_mixture, None, None, None, None, None

    return backward


def _fake_bwd_inplace(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k,
                      softcap=0.0, grad_lse=None):
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
    def forward(ctx, logits, target, weight, mixture, ignore_index, label_smoothing, k, softcap, backend):
        loss, stats = fwd_op(backend)(logits, target, weight, mixture, ignore_index, label_smoothing, k, True,
                                      softcap)
        ctx.args = (ignore_index, label_smoothing, k, softcap)
        ctx.backend = backend
        ctx.save_for_backward(logits, target, weight, mixture, stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, grad_stats):
        _no_double_backward()
        logits, target, weight, mixture, stats = ctx.saved_tensors
        bwd_inplace_op(ctx.backend)(grad_loss.to(stats.dtype).contiguous(), logits, target, weight, mixture,
                                    stats, *ctx.args, _grad_lse(grad_stats))
        torch.autograd.graph.increment_version(logits)
        return (logits.detach(),) + (None,) * 8

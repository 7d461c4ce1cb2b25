"""One fake (for torch.compile) and one autograd formula for the forward op of every backend.

The backward calls the backend's ``bwd`` op, which recomputes the pseudo-gradient from the
logits and the row statistics kept by the forward, scaled by the incoming per-row gradient;
the true gradients of a mixture matrix or of probability targets that require them are
``_torch_rows.target_grads``. ``inplace_backward`` writes the gradient over the logits instead;
a mutation of an input is not allowed in ``register_autograd``, so it goes through
``InplaceFwd`` (an ``autograd.Function``). The Python API calls the forward op through
``RowLoss``, an ``autograd.Function`` with the same backward plus what torch.func needs
(``setup_context``, a forward-mode ``jvp``, vmap through the ops' rules in ``_vmap.py``).
"""

from __future__ import annotations

import torch

from . import _torch_rows
from .backends import LOADED, get
from ._ops import bwd_inplace_op, fwd_op
from ._schema import (LSE_COL, SHARD_STATS_COLS, SOFT_SHARD_STATS_COLS, STATS_COLS, acc_dtype, check_op_args,
                      check_op_bwd_args, check_op_kept_eps, check_op_shard_stats_args, check_op_soft_shard_grad_args,
                      check_op_soft_shard_stats_args)
from .validation import in_functorch


# The fakes check what the ops check: they also serve every call with a meta tensor among its
# arguments (the Meta dispatch key wins over CPU), where the kernels' own checks never run.
def _fake_fwd(logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad, softcap=0.0):
    check_op_args(logits, target, weight, mixture)
    N = logits.shape[0]
    acc = acc_dtype(logits.dtype)
    return logits.new_empty(N, dtype=acc), logits.new_empty((N, STATS_COLS), dtype=acc)


def _fake_bwd(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap=0.0,
              grad_lse=None):
    check_op_args(logits, target, weight, mixture)
    check_op_bwd_args(grad_loss, logits, stats, grad_lse)
    return torch.empty_like(logits)


DOUBLE_BACKWARD = ("hardloss_cuda: double backward is supported at k = 1 only (and not with inplace_backward): "
                    "the |eps|^k pseudo-gradient is not the gradient of a loss (docs/ROW_MATH.md section 3)")


def _no_double_backward():
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD)


def _setup_context(ctx, inputs, output):
    logits, target, weight, mixture, ignore_index, label_smoothing, k, _compute_grad, *rest = inputs
    ctx.ignore_index, ctx.label_smoothing, ctx.k = ignore_index, label_smoothing, k
    ctx.softcap = rest[0] if rest else 0.0
    ctx.save_for_backward(logits, target, weight, mixture, output[1])


def lse_grad(grad_stats):
    """The incoming gradient of the row's logsumexp, or None when nothing used it. Only the
    LSE_COL column is differentiable (d lse / dz = softmax): LSE_LO_COL is its rounding
    correction, with derivative 0, and the other columns are the backward's own numbers."""
    if grad_stats is None:
        return None
    return grad_stats[:, LSE_COL].contiguous()


def _differentiable_backward(ctx, grad_loss, grad_lse, logits, target, weight, mixture):
    """create_graph=True at k = 1: the gradient g (t softmax(z) - q) of cross-entropy in torch
    ops (q = _torch_rows.target_rows, t = sum q), which autograd differentiates again
    (Hessian-vector products, gradient penalties). The same on every backend; the kernels'
    backward is not differentiable."""
    if ctx.k != 1:
        _no_double_backward()
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
        raise RuntimeError("hardloss_cuda: double backward through probability targets or a mixture is not "
                           "supported (only through the logits, at k = 1)")
    acc = acc_dtype(logits.dtype)
    q = _torch_rows.target_rows(logits.shape[1], target, weight, mixture, ctx.ignore_index, ctx.label_smoothing, acc)
    x = logits.to(acc)
    z = _torch_rows.softcap_logits(x, ctx.softcap)  # differentiated by autograd (chain rule)
    p = torch.softmax(z, 1)
    t = q.sum(1, keepdim=True)
    grad = grad_loss.to(acc)[:, None] * (t * p - q)
    if grad_lse is not None:
        grad = grad + grad_lse.to(acc)[:, None] * p
    if ctx.softcap != 0:  # the chain rule through c tanh(x / c), itself differentiable
        grad = grad * _torch_rows.softcap_slope(x, ctx.softcap)
    if not target.is_floating_point():  # ignored rows: 0 whatever their logits, as in the kernels
        grad = torch.where((target == ctx.ignore_index)[:, None], 0, grad)
    return (grad.to(logits.dtype),) + (None,) * 8


def _backward(ctx, bwd_name: str, grad_loss, grad_stats):
    """The gradients of (logits, target, weight, mixture, and the 5 non-tensor arguments)."""
    logits, target, weight, mixture, stats = ctx.saved_tensors
    grad_lse = lse_grad(grad_stats)
    # create_graph=True: at k = 1 a differentiable backward. torch.func's grad always runs the
    # backward that way; there, for k != 1, the kernels' backward op is used, whose own autograd
    # raises if anything differentiates it (hessian, nested grad).
    functorch = in_functorch(logits) or (grad_loss is not None and in_functorch(grad_loss))
    if torch.is_grad_enabled() and (ctx.k == 1 or not functorch):
        return _differentiable_backward(ctx, grad_loss, grad_lse, logits, target, weight, mixture)
    if grad_loss is None:  # only the logsumexp was used
        grad_loss = torch.zeros(stats.shape[:-1], dtype=stats.dtype, device=stats.device)
    grad_loss = grad_loss.to(stats.dtype)
    d_logits = None
    if ctx.needs_input_grad[0]:
        args = (grad_loss, logits, target, weight, mixture, stats, ctx.ignore_index, ctx.label_smoothing, ctx.k,
                ctx.softcap, grad_lse)
        bwd = getattr(torch.ops.hardloss_cuda, bwd_name)
        d_logits = PseudoGrad.apply(bwd, *args) if functorch else bwd(*args)
    d_target, d_mixture = _torch_rows.target_grads(
        grad_loss, logits, target, weight, mixture, stats, ctx.ignore_index, ctx.label_smoothing,
        need_target=ctx.needs_input_grad[1], need_mixture=ctx.needs_input_grad[3], softcap=ctx.softcap,
    )
    return d_logits, d_target, None, d_mixture, None, None, None, None, None


def _autograd_for(bwd_name: str):
    return lambda ctx, grad_loss, grad_stats: _backward(ctx, bwd_name, grad_loss, grad_stats)


def _jvp(ctx, t_logits, t_target, t_mixture):
    """Forward-mode derivative of (loss, stats): the true derivative of the loss for every k
    (the pseudo-gradient is a backward-only replacement), in torch ops on the saved inputs:
    d loss_i = sum_j (t_i p_ij - q_ij) dz_c,ij - sum_j dq_ij log p_ij, d lse_i = sum_j p_ij dz_c,ij
    (z_c the soft-capped logits, dz_c = (1 - (z_c / c)^2) dz); the other stats columns have
    tangent 0 (they are not differentiable outputs)."""
    logits, target, weight, mixture, stats = ctx.saved_tensors
    acc = acc_dtype(logits.dtype)
    N, C = logits.shape
    x = logits.to(acc)
    z = _torch_rows.softcap_logits(x, ctx.softcap)
    log_p = torch.log_softmax(z, 1)
    p = log_p.exp()
    t_loss = torch.zeros(N, dtype=acc, device=logits.device)
    t_lse = torch.zeros(N, dtype=acc, device=logits.device)
    if t_logits is not None:
        dz = t_logits.to(acc)
        if ctx.softcap != 0:
            dz = dz * _torch_rows.softcap_slope(x, ctx.softcap)
        q = _torch_rows.target_rows(C, target, weight, mixture, ctx.ignore_index, ctx.label_smoothing, acc)
        t_loss = t_loss + ((q.sum(1, keepdim=True) * p - q) * dz).sum(1)
        t_lse = (p * dz).sum(1)
    w = 1 if weight is None else weight.to(acc)
    dq = None
    if t_target is not None and target.is_floating_point():
        dq = t_target.to(acc) * (1 - ctx.label_smoothing) * w
    if t_mixture is not None and mixture is not None:  # q = w W[y]: linear in W
        dq = _torch_rows.target_rows(C, target, weight, t_mixture, ctx.ignore_index, 0.0, acc)
    if dq is not None:  # q_ij = 0 where log p_ij = -inf contributes 0, not NaN
        t_loss = t_loss - torch.where(dq != 0, dq * log_p, 0).sum(1)
    if not target.is_floating_point():  # ignored rows: loss 0 whatever the logits
        t_loss = torch.where(target == ctx.ignore_index, 0, t_loss)
    # out of place (a batched tangent cannot be written into an unbatched zeros under vmap)
    zeros = torch.zeros_like(stats)
    t_stats = torch.cat([zeros[:, :LSE_COL], t_lse[:, None], zeros[:, LSE_COL + 1:]], 1)
    return t_loss, t_stats


class PseudoGrad(torch.autograd.Function):
    """The backward op inside torch.func transforms (which always build a graph): it batches
    through the op's vmap rule, and differentiating it, in either mode, raises the clear
    error (the |eps|^k pseudo-gradient has no derivative of its own)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(bwd, *args):
        return bwd(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(DOUBLE_BACKWARD)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(DOUBLE_BACKWARD)


class RowLoss(torch.autograd.Function):
    """The forward op of a backend as an ``autograd.Function``: what the Python API calls, so
    that the loss composes with torch.func (``grad``, ``vmap`` through the ops' batching rules
    in ``_vmap.py``, ``jvp`` / forward AD) as well as with autograd and torch.compile. The
    backward is the ops' ``register_autograd`` formula, shared (``_backward``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad, softcap, backend):
        return fwd_op(backend)(logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad,
                               softcap)

    @staticmethod
    def setup_context(ctx, inputs, output):
        *op_inputs, backend = inputs
        _setup_context(ctx, op_inputs, output)
        ctx.bwd_name = get(backend).op_names[1]
        ctx.save_for_forward(*op_inputs[:4], output[1])

    @staticmethod
    def backward(ctx, grad_loss, grad_stats):
        return (*_backward(ctx, ctx.bwd_name, grad_loss, grad_stats), None)


class RowLossJvp(RowLoss):
    """``RowLoss`` with forward-mode AD: what eager code calls (Dynamo cannot trace a custom
    ``jvp``; compiled code calls ``RowLoss``)."""

    @staticmethod
    def jvp(ctx, t_logits, t_target, _t_weight, t_mixture, *_rest):
        return _jvp(ctx, t_logits, t_target, t_mixture)


def _fake_bwd_inplace(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k,
                      softcap=0.0, grad_lse=None):
    _fake_bwd(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap, grad_lse)
    return None


def _fake_shard_stats(logits, target, k, softcap=0.0):
    check_op_shard_stats_args(logits, target)
    return logits.new_empty((logits.shape[0], SHARD_STATS_COLS), dtype=acc_dtype(logits.dtype))


def _fake_soft_shard_stats(logits, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap=0.0,
                           eps=None, side=None):
    check_op_soft_shard_stats_args(logits, target, weight, mixture, stats)
    check_op_kept_eps(logits, eps, side, k)
    return logits.new_empty((logits.shape[0], SOFT_SHARD_STATS_COLS), dtype=acc_dtype(logits.dtype))


def _fake_soft_shard_grad(grad_loss, eps, side, logits, stats, out, softcap=0.0, grad_lse=None):
    check_op_soft_shard_grad_args(grad_loss, eps, side, logits, stats, out, grad_lse)
    return None


# cpu and cuda share the compiled ops: each op once
for _fwd_name, _bwd_name, _inplace_name, _shard_name, _soft_shard_name, _soft_grad_name in {b.op_names for b in LOADED}:
    torch.library.register_fake(f"hardloss_cuda::{_shard_name}")(_fake_shard_stats)
    torch.library.register_fake(f"hardloss_cuda::{_soft_shard_name}")(_fake_soft_shard_stats)
    torch.library.register_fake(f"hardloss_cuda::{_soft_grad_name}")(_fake_soft_shard_grad)
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
                                    stats, *ctx.args, lse_grad(grad_stats))
        torch.autograd.graph.increment_version(logits)
        return (logits.detach(),) + (None,) * 8


from . import _vmap  # noqa: E402,F401  (the ops' batching rules, after the ops' autograd)

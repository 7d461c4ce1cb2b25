"""Batching rules (``torch.library.register_vmap``) for the ops of every backend, so that
``torch.func.vmap`` works over the loss and its gradient (per-sample gradients): a batch of B
problems of N rows each is one call on B * N rows, the rows being independent. A batched class
weight or mixture (different per sample) runs the op once per sample instead."""

from __future__ import annotations

import torch

from .backends import LOADED


def _rows(x, dim, B):
    """x with its batch dim first (expanded when unbatched), the batch folded into the rows."""
    x = x.movedim(dim, 0) if dim is not None else x.expand(B, *x.shape)
    return x.reshape(B * x.shape[1], *x.shape[2:]).contiguous()


def _per_sample(op, info, in_dims, args):
    """Fallback: one call per sample, outputs stacked."""
    outs = []
    for b in range(info.batch_size):
        outs.append(op(*[a.select(d, b) if d is not None else a for a, d in zip(args, in_dims)]))
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(o) for o in zip(*outs)), (0,) * len(outs[0])
    return torch.stack(outs), 0


def _fwd_rule(op):
    def rule(info, in_dims, logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad,
             softcap=0.0):
        args = (logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad, softcap)
        if in_dims[2] is not None or in_dims[3] is not None:
            return _per_sample(op, info, in_dims, args)
        B = info.batch_size
        N = (logits.shape[1] if in_dims[0] is not None else logits.shape[0])
        loss, stats = op(_rows(logits, in_dims[0], B), _rows(target, in_dims[1], B), weight, mixture,
                         ignore_index, label_smoothing, k, compute_grad, softcap)
        return (loss.view(B, N), stats.view(B, N, stats.shape[-1])), (0, 0)

    return rule


def _bwd_rule(op):
    def rule(info, in_dims, grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k,
             softcap=0.0, grad_lse=None):
        args = (grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap,
                grad_lse)
        if in_dims[3] is not None or in_dims[4] is not None:
            return _per_sample(op, info, in_dims, args)
        B = info.batch_size
        shape = logits.shape[1:] if in_dims[1] is not None else logits.shape
        gl = None if grad_lse is None else _rows(grad_lse, in_dims[10], B)
        out = op(_rows(grad_loss, in_dims[0], B), _rows(logits, in_dims[1], B), _rows(target, in_dims[2], B),
                 weight, mixture, _rows(stats, in_dims[5], B), ignore_index, label_smoothing, k, softcap, gl)
        return out.view(B, *shape), 0

    return rule


def _no_inplace(info, in_dims, *args):
    raise RuntimeError("hardloss_cuda: inplace_backward=True is not supported under torch.func.vmap")


for _fwd, _bwd, _inplace, *_shard in {b.op_names for b in LOADED}:
    torch.library.register_vmap(f"hardloss_cuda::{_fwd}", _fwd_rule(getattr(torch.ops.hardloss_cuda, _fwd)))
    torch.library.register_vmap(f"hardloss_cuda::{_bwd}", _bwd_rule(getattr(torch.ops.hardloss_cuda, _bwd)))
    torch.library.register_vmap(f"hardloss_cuda::{_inplace}", _no_inplace)

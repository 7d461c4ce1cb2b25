"""The batch around the row op, the same for every front end and backend: the call's tensors as
the ops take them (rows, targets, weight, mixture), and from the op's per-row (loss, stats) to
the result (row weights, trimming, the reduction with the z-loss, the lse). O(N) tensor ops."""

from __future__ import annotations

import torch
from torch import Tensor

from ._schema import LSE_COL, LSE_LO_COL, acc_dtype
from .trimming import keep_mask

__all__ = ["as_rows", "op_inputs", "row_weights", "row_lse", "reduce_rows", "finish_rows"]


def as_rows(input: Tensor, target: Tensor):
    """(C,) / (N, C) / (N, C, d1, ...) -> (rows, C) logits and matching targets."""
    if input.dim() == 1:
        return input[None], target[None]
    if input.dim() > 2:
        C = input.shape[1]
        input = input.movedim(1, -1).reshape(-1, C)
        target = target.movedim(1, -1).reshape(-1, C) if target.is_floating_point() else target.reshape(-1)
    return input, target


def op_inputs(tgt: Tensor, weight: Tensor | None, mixture: Tensor | None, dtype: torch.dtype):
    """Targets, weight and mixture as the ops take them (int64 labels or probabilities in the
    logits' dtype; weight and mixture in the accumulation dtype, contiguous), and that dtype."""
    acc = acc_dtype(dtype)
    tgt = tgt.to(dtype).contiguous() if tgt.is_floating_point() else tgt.long().contiguous()
    w = None if weight is None else weight.to(acc).contiguous()
    mix = None if mixture is None else mixture.to(acc).contiguous()
    return tgt, w, mix, acc


def row_weights(tgt: Tensor, w: Tensor | None, ignore_index: int, N: int, acc: torch.dtype):
    """(counted rows, their weights in the mean): w[y] for class indices (0 when ignored), 1 for
    probabilities."""
    if tgt.is_floating_point():
        valid = torch.ones(N, dtype=torch.bool, device=tgt.device)
        return valid, valid.to(acc)
    valid = tgt != ignore_index
    return valid, valid.to(acc) if w is None else torch.where(valid, w[torch.where(valid, tgt, 0)], 0)


def row_lse(stats: Tensor, valid: Tensor) -> Tensor:
    """The rows' logsumexp (of the soft-capped logits) from the forward's stats, differentiable
    (its gradient is softmax, added by the backward op); 0 on rows that do not count. A bad row
    (a NaN or +inf logit, or -inf only: the only rows whose lse is not finite) gets NaN, as its
    loss, whatever the backend's kernel left there (docs/ROW_MATH.md section 4)."""
    lse = stats[:, LSE_COL] + stats[:, LSE_LO_COL]
    return torch.where(valid, torch.where(torch.isfinite(lse), lse, torch.nan), 0)


def reduce_rows(loss: Tensor, lse: Tensor | None, valid: Tensor, row_w: Tensor, z_loss: float, reduction: str):
    """The reduction of the per-row losses, plus the z-loss ``z_loss lse^2`` of the counted rows
    (``valid``; unweighted: in ``mean`` divided by their number, as Liger and PaLM do)."""
    zl = None
    if z_loss != 0:  # (z_loss lse) lse: no intermediate lse^2 overflow (fp32 lse > 1.8e19) where the result fits
        lse_v = torch.where(valid, lse, 0)
        zl = (z_loss * lse_v) * lse_v
    if reduction == "none":
        return loss if zl is None else loss + zl
    total = loss.sum()
    if reduction == "sum":
        return total if zl is None else total + zl.sum()
    # Divided as PyTorch divides (row weights summing to 0 give inf or NaN), except that a batch
    # in which no row counts (empty, all ignored) gives 0 rather than NaN (docs/ROW_MATH.md 5).
    # (the denominator of a batch without counted rows is 1, so that no 0 / 0 reaches a
    # gradient: the where below would multiply its NaN by 0)
    any_row = valid.any()
    mean = total / torch.where(any_row, row_w.sum(), 1)
    if zl is not None:
        mean = mean + zl.sum() / valid.sum().clamp_min(1)
    return torch.where(any_row, mean, 0)


def finish_rows(loss: Tensor, stats: Tensor, tgt: Tensor, w: Tensor | None, opts, out_shape, dtype: torch.dtype):
    """From the op's per-row (loss, stats) to what the front end returns: trimming, the reduction
    with the z-loss, the lse when asked for. ``tgt`` and ``w`` as ``op_inputs`` gives them, ``opts``
    the call's ``LossOptions``."""
    valid, row_w = row_weights(tgt, w, opts.ignore_index, loss.shape[0], loss.dtype)
    lse = row_lse(stats, valid) if (opts.return_lse or opts.z_loss != 0) else None
    if opts.trim is not None:
        kept = keep_mask(loss, valid, opts.trim)
        loss = torch.where(kept, loss, 0)
        row_w = torch.where(kept, row_w, 0)
        valid = valid & kept

    out = reduce_rows(loss, lse, valid, row_w, opts.z_loss, opts.reduction)
    out = out.to(dtype).reshape(out_shape) if opts.reduction == "none" else out.to(dtype)
    return (out, lse.reshape(out_shape)) if opts.return_lse else out

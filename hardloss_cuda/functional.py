"""``cross_entropy``: a drop-in for ``torch.nn.functional.cross_entropy`` with the
tunable-sensitivity pseudo-gradient (``k``), MCEL soft targets (``mixture``) and mini-batch
trimming (``trim``). The row op runs on the chosen backend; flattening, reductions and
trimming are O(N) tensor ops shared by every backend."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _autograd, _ops, backends
from ._schema import acc_dtype
from .trimming import keep_mask
from .validation import check_fraction, check_inputs, check_k, scalar_arg

__all__ = ["cross_entropy"]


def _as_rows(input: Tensor, target: Tensor):
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


def _trim_fraction(trim) -> float | None:
    if trim is None:
        return None
    return check_fraction(getattr(trim, "fraction", trim), "trim")


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    k: float = 1.0,
    mixture: Tensor | None = None,
    trim=None,
    inplace_backward: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Cross-entropy whose backward is the normalised ``|eps|^k`` pseudo-gradient.

    The value is the (weighted) cross-entropy ``-sum_j q_j log p_j`` exactly as
    ``F.cross_entropy`` computes it; ``k = 1`` gives its exact gradient.

    Args beyond ``F.cross_entropy``:
        k: sensitivity to large errors (Keren et al.): ``k < 1`` less, ``k > 1`` more.
        mixture: C x C target matrix W (MCEL, Negi et al.); row ``W[y]`` replaces the one-hot
            target. Its gradient is computed when it requires grad.
        trim: kept fraction in (0, 1] of the non-ignored rows with the highest loss (Fassold),
            or an object with a ``fraction`` attribute such as ``MiniBatchTrimming``.
        inplace_backward: write the gradient into ``input``'s storage during the backward pass
            (saves an (N, C) buffer; ``input`` is overwritten and must not be used afterwards).
        backend: "auto", "cuda", "triton", "cpu" or "reference" (``HARDLOSS_BACKEND``
            overrides "auto").
    """
    ignore_index = scalar_arg(ignore_index, "ignore_index", int)
    label_smoothing = scalar_arg(label_smoothing, "label_smoothing", float)
    check_inputs(input, target, weight, ignore_index, reduction, label_smoothing, mixture, inplace_backward)
    k = check_k(k)
    frac = _trim_fraction(trim)
    which = backends.resolve(backend, input.device)

    out_shape = input.shape[:1] + input.shape[2:] if input.dim() > 1 else ()
    logits, tgt = _as_rows(input, target)
    logits = logits.contiguous()
    tgt, w, mix, acc = op_inputs(tgt, weight, mixture, logits.dtype)
    smoothing = float(label_smoothing)

    if inplace_backward and torch.is_grad_enabled() and logits.requires_grad:
        loss = _autograd.InplaceFwd.apply(logits, tgt, w, mix, ignore_index, smoothing, k, which)
    else:
        compute_grad = torch.is_grad_enabled() and logits.requires_grad
        loss, _stats = _ops.fwd_op(which)(logits, tgt, w, mix, ignore_index, smoothing, k, compute_grad)

    valid, row_w = row_weights(tgt, w, ignore_index, logits.shape[0], acc)
    if frac is not None:
        kept = keep_mask(loss, valid, frac)
        loss = torch.where(kept, loss, 0)
        row_w = torch.where(kept, row_w, 0)
        valid = valid & kept

    if reduction == "none":
        return loss.to(input.dtype).reshape(out_shape)
    total = loss.sum()
    if reduction == "sum":
        return total.to(input.dtype)
    # Divided as PyTorch divides (row weights summing to 0 give inf or NaN), except that a batch
    # in which no row counts (empty, all ignored) gives 0 rather than NaN (docs/ROW_MATH.md 5).
    return torch.where(valid.any(), total / row_w.sum(), 0).to(input.dtype)

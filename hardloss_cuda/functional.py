"""``cross_entropy``: a drop-in for ``torch.nn.functional.cross_entropy`` with the
tunable-sensitivity pseudo-gradient (``k``), MCEL soft targets (``mixture``) and mini-batch
trimming (``trim``). The row op runs on the chosen backend; flattening, reductions and
trimming are O(N) tensor ops shared by every backend."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _autograd, backends
from ._schema import LSE_COL, LSE_LO_COL, acc_dtype
from .trimming import keep_mask
from .validation import check_fraction, check_inputs, check_k, check_softcap, check_z_loss, in_functorch, scalar_arg

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
    softcap: float | None = None,
    z_loss: float = 0.0,
    return_lse: bool = False,
    inplace_backward: bool = False,
    backend: str = "auto",
):
    """Cross-entropy whose backward is the normalised ``|eps|^k`` pseudo-gradient.

    The value is the (weighted) cross-entropy ``-sum_j q_j log p_j`` exactly as
    ``F.cross_entropy`` computes it; ``k = 1`` gives its exact gradient.

    Args beyond ``F.cross_entropy``:
        k: sensitivity to large errors (Keren et al.): ``k < 1`` less, ``k > 1`` more.
        mixture: C x C target matrix W (MCEL, Negi et al.); row ``W[y]`` replaces the one-hot
            target. Its gradient is computed when it requires grad.
        trim: kept fraction in (0, 1] of the non-ignored rows with the highest loss (Fassold),
            or an object with a ``fraction`` attribute such as ``MiniBatchTrimming``.
        softcap: None, or c > 0: the logits are read as ``c tanh(z / c)`` (Gemma 2's logit
            soft-capping) inside the kernels, gradient included; no capped copy is stored.
        z_loss: adds ``z_loss * lse**2`` per counted row (PaLM's z-loss; in ``mean`` divided by
            the number of counted rows, unweighted), its gradient ``2 z_loss lse softmax``.
        return_lse: also return the per-row logsumexp of the (capped) logits, shaped as the
            ``reduction="none"`` loss, in float32 (float64 for float64 input), 0 on ignored
            rows; differentiable (its gradient is the softmax).
        inplace_backward: write the gradient into ``input``'s storage during the backward pass
            (saves an (N, C) buffer; ``input`` is overwritten and must not be used afterwards).
        backend: "auto", "cuda", "triton", "cpu" or "reference" (``HARDLOSS_BACKEND``
            overrides "auto"); "cuda_emu" in a test build (docs/CUDA_EMU.md).
    """
    ignore_index = scalar_arg(ignore_index, "ignore_index", int)
    label_smoothing = scalar_arg(label_smoothing, "label_smoothing", float)
    check_inputs(input, target, weight, ignore_index, reduction, label_smoothing, mixture, inplace_backward)
    k = check_k(k)
    cap = check_softcap(softcap, input.dtype)
    z_loss = check_z_loss(z_loss)
    frac = _trim_fraction(trim)
    which = backends.resolve(backend, input.device)

    out_shape = input.shape[:1] + input.shape[2:] if input.dim() > 1 else ()
    logits, tgt = _as_rows(input, target)
    logits = logits.contiguous()
    tgt, w, mix, acc = op_inputs(tgt, weight, mixture, logits.dtype)
    smoothing = float(label_smoothing)

    if inplace_backward and torch.is_grad_enabled() and logits.requires_grad:
        if in_functorch(logits):
            raise RuntimeError("inplace_backward=True cannot be used inside torch.func transforms")
        loss, stats = _autograd.InplaceFwd.apply(logits, tgt, w, mix, ignore_index, smoothing, k, cap, which)
    else:
        # torch.func's grad wraps its inputs: they require grad only as seen from inside
        compute_grad = torch.is_grad_enabled() and (logits.requires_grad or in_functorch(logits))
        args = (logits, tgt, w, mix, ignore_index, smoothing, k, compute_grad, cap)
        # Dynamo cannot trace an autograd.Function with a custom jvp: compiled code takes RowLoss
        fn = _autograd.RowLoss if torch.compiler.is_compiling() else _autograd.RowLossJvp
        loss, stats = fn.apply(*args, which)

    return finish_rows(loss, stats, tgt, w, ignore_index, frac, z_loss, reduction, return_lse, out_shape,
                       input.dtype)


def finish_rows(loss, stats, tgt, w, ignore_index, frac, z_loss, reduction, return_lse, out_shape, dtype):
    """From the op's per-row (loss, stats) to what ``cross_entropy`` returns: trimming, the
    reduction with the z-loss, the lse when asked for (shared with the vocab-parallel loss)."""
    valid, row_w = row_weights(tgt, w, ignore_index, loss.shape[0], loss.dtype)
    lse = row_lse(stats, valid) if (return_lse or z_loss != 0) else None
    if frac is not None:
        kept = keep_mask(loss, valid, frac)
        loss = torch.where(kept, loss, 0)
        row_w = torch.where(kept, row_w, 0)
        valid = valid & kept

    out = reduce_rows(loss, lse, valid, row_w, z_loss, reduction)
    out = out.to(dtype).reshape(out_shape) if reduction == "none" else out.to(dtype)
    return (out, lse.reshape(out_shape)) if return_lse else out

"""Host side: the ``fwd`` / ``bwd`` contract of hardloss_cuda/_schema.py.

The forward pass keeps a few numbers a row (``stats``, hardloss_cuda/_schema.py) instead of the gradient; the backward
pass recomputes the pseudo-gradient from them, scaled by the incoming gradient, in one
elementwise pass that may write over the logits. Per row that is 3 C s bytes of logits
traffic (one-hot: forward read, backward read + write) and no (N, C) buffer held between the
passes; producing the gradient in the forward pass costs 4 C s (the extra read + write to
scale it) and holds an (N, C) buffer. Rows whose incoming gradient is 0 (trimmed away) are
not read in backward at all.

Geometry (config.plan): one program per ROWS rows (several short rows per program, one long
row per program), looping over column blocks of BLOCK columns; the same plan for the forward
and the backward kernels of a problem.

Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before triton was
imported (the tests do that).
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from .._schema import (SHARD_STATS_COLS, SOFT_SHARD_STATS_COLS, STATS_COLS, acc_dtype, check_op_args,
                      check_op_bwd_args, check_op_kept_eps, check_op_shard_stats_args, check_op_soft_shard_grad_args,
                      check_op_soft_shard_stats_args, check_op_softcap)

from .bwd import onehot_bwd_kernel, soft_bwd_kernel, soft_kept_bwd_kernel
from .config import plan
from .fwd import onehot_fwd_kernel, soft_fwd_kernel, soft_shard_kernel
from .rowmath import MIXTURE, PROBS, SMOOTH

__all__ = ["fwd", "bwd", "bwd_inplace", "shard_stats", "soft_shard_stats", "soft_shard_grad"]

def _interpreting() -> bool:
    # triton.jit picks the interpreter when the kernel is decorated (module import), so ask
    # the kernel rather than the environment.
    return type(onehot_fwd_kernel).__name__ == "InterpretedFunction"


def _check(logits, target, weight, mixture) -> None:
    """The ops' checks of memory safety (hardloss_cuda/_schema.py check_op_args), then the device."""
    check_op_args(logits, target, weight, mixture)
    _check_device(logits)


def _check_device(logits) -> None:
    if logits.device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            "triton backend: logits must be a CUDA tensor (CPU tensors need TRITON_INTERPRET=1 "
            "set before triton is imported)"
        )


def _check_bwd(grad_loss, logits, stats, out, grad_lse=None) -> None:
    """bwd's own arguments (check_op_bwd_args), after _check; ``out`` like logits and contiguous."""
    check_op_bwd_args(grad_loss, logits, stats, grad_lse)
    if out is not None:
        if out.shape != logits.shape or out.dtype != logits.dtype or out.device != logits.device:
            raise ValueError(
                f"out: expected {logits.dtype} of shape {tuple(logits.shape)} on {logits.device}, "
                f"got {out.dtype} {tuple(out.shape)} on {out.device}"
            )
        if not out.is_contiguous():
            raise ValueError("out: must be contiguous (out=logits writes the gradient in place)")


def _mode(target, mixture, label_smoothing):
    """None for the one-hot path, else the soft kernel's MODE."""
    if target.is_floating_point():
        return PROBS
    if mixture is not None:
        return MIXTURE
    if label_smoothing > 0:
        return SMOOTH
    return None


def fwd(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mixture: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    k: float,
    compute_grad: bool,
    softcap: float = 0.0,
    *,
    block_cap: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(loss (N,), stats (N, STATS_COLS)), both in the accumulation dtype.

    stats[:, :2] is the row logsumexp as hi + lo; columns 2.. are what ``bwd`` needs (rowmath),
    0 for ignored / out-of-range rows and, when ``compute_grad`` is False, for every row
    (then the one-hot kernel skips sum exp(k (z - m)) and the soft kernel its second pass).
    ``block_cap`` (keyword only, not part of the op) lowers the column block; tests use it.
    """
    _check(logits, target, weight, mixture)
    check_op_softcap(softcap, logits.dtype)
    logits = logits.contiguous()
    N, C = logits.shape
    acc = acc_dtype(logits.dtype)
    loss = torch.empty(N, dtype=acc, device=logits.device)
    stats = torch.empty((N, STATS_COLS), dtype=acc, device=logits.device)
    if N == 0:
        return loss, stats
    target = target.contiguous()
    block, rows, num_warps = plan(N, C, block_cap)
    grid = (triton.cdiv(N, rows),)
    # Unused pointer slots get a harmless tensor; the constexpr flags keep them unread.
    w = weight.contiguous() if weight is not None else loss
    common = dict(HAS_W=weight is not None, GRAD=bool(compute_grad), HAS_CAP=float(softcap) != 0.0, ROWS=rows,
                  BLOCK=block, num_warps=num_warps)
    mode = _mode(target, mixture, label_smoothing)
    if mode is None:
        onehot_fwd_kernel[grid](logits, target, w, loss, stats, N, C, int(ignore_index), float(k),
                                float(softcap), **common)
    else:
        mix = mixture.contiguous() if mixture is not None else loss
        soft_fwd_kernel[grid](logits, target, w, mix, loss, stats, N, C, int(ignore_index),
                              float(label_smoothing), float(k), float(softcap), MODE=mode,
                              EPS=bool(compute_grad) and float(k) != 1.0, **common)
    return loss, stats


def bwd(
    grad_loss: Tensor,
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mixture: Tensor | None,
    stats: Tensor,
    ignore_index: int,
    label_smoothing: float,
    k: float,
    softcap: float = 0.0,
    grad_lse: Tensor | None = None,
    *,
    out: Tensor | None = None,
    block_cap: int | None = None,
) -> Tensor:
    """grad_loss[:, None] * pseudo-gradient, in logits' dtype, from ``stats`` of ``fwd`` (run
    with compute_grad=True on the same inputs).

    One pass: each element of the row is read, turned into its gradient and written. Ignored
    rows give 0 and out-of-range labels NaN, neither reads the row; a row with grad_loss 0 and
    a finite logsumexp gives 0 without reading it. ``out=logits`` writes the gradient over the
    logits (each element is read before it is written, by the same program); ``out=None``
    allocates. Returns ``out``.
    """
    _check(logits, target, weight, mixture)
    check_op_softcap(softcap, logits.dtype)
    _check_bwd(grad_loss, logits, stats, out, grad_lse)
    if out is None:
        logits = logits.contiguous()
        out = torch.empty_like(logits, memory_format=torch.contiguous_format)
    elif out.data_ptr() != logits.data_ptr():
        logits = logits.contiguous()
    elif not logits.is_contiguous():  # out is a contiguous view of the same memory
        raise ValueError("logits: must be contiguous to take the gradient in place (out=logits)")
    # else out is logits: in place.
    N, C = logits.shape
    if N == 0:
        return out
    target = target.contiguous()
    grad_loss = grad_loss.contiguous()  # autograd hands a mean's grad_loss as an expanded view
    stats = stats.contiguous()
    block, rows, num_warps = plan(N, C, block_cap)
    grid = (triton.cdiv(N, rows),)
    w = weight.contiguous() if weight is not None else stats
    glse = grad_lse.contiguous() if grad_lse is not None else stats
    common = dict(HAS_W=weight is not None, HAS_CAP=float(softcap) != 0.0, HAS_GLSE=grad_lse is not None,
                  ROWS=rows, BLOCK=block, num_warps=num_warps)
    mode = _mode(target, mixture, label_smoothing)
    if mode is None:
        onehot_bwd_kernel[grid](grad_loss, logits, target, w, stats, out, glse, N, C, int(ignore_index),
                                float(k), float(softcap), **common)
    else:
        mix = mixture.contiguous() if mixture is not None else stats
        soft_bwd_kernel[grid](grad_loss, logits, target, w, mix, stats, out, glse, N, C,
                              int(ignore_index), float(label_smoothing), float(k), float(softcap), MODE=mode,
                              K_IS_ONE=float(k) == 1.0, **common)
    return out


def bwd_inplace(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap=0.0,
                grad_lse=None) -> None:
    """``bwd`` written over ``logits`` (the op ``triton_bwd_inplace``); a strided view through a
    contiguous buffer, as the compiled op does."""
    out = logits if logits.is_contiguous() else None
    grad = bwd(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap,
               grad_lse, out=out)
    if out is None:
        logits.copy_(grad)


def shard_stats(logits: Tensor, target: Tensor, k: float, softcap: float = 0.0, *,
                block_cap: int | None = None) -> Tensor:
    """(m, s1, sk) per row over the classes j != target (every class for a target outside
    [0, C)), (N, SHARD_STATS_COLS) in the accumulation dtype: the one-hot forward kernel with
    RAW, which stores its statistics before finalising (the op ``triton_shard_stats``)."""
    check_op_shard_stats_args(logits, target)
    _check_device(logits)
    check_op_softcap(softcap, logits.dtype)
    logits = logits.contiguous()
    N, C = logits.shape
    acc = acc_dtype(logits.dtype)
    stats = torch.empty((N, STATS_COLS), dtype=acc, device=logits.device)
    if N > 0:
        block, rows, num_warps = plan(N, C, block_cap)
        # ignore_index -1: a negative label is out of range, so it is never "ignored" here
        onehot_fwd_kernel[(triton.cdiv(N, rows),)](
            logits, target.contiguous(), stats, stats[:, 0], stats, N, C, -1, float(k), float(softcap),
            HAS_W=False, GRAD=True, HAS_CAP=float(softcap) != 0.0, ROWS=rows, BLOCK=block, num_warps=num_warps,
            RAW=True)
    return stats[:, :SHARD_STATS_COLS].contiguous()


def soft_shard_stats(logits: Tensor, target: Tensor, weight: Tensor | None, mixture: Tensor | None, stats: Tensor,
                     ignore_index: int, label_smoothing: float, k: float, softcap: float = 0.0,
                     eps: Tensor | None = None, side: Tensor | None = None, *,
                     block_cap: int | None = None) -> Tensor:
    """A soft row's pass 2 over the classes of ``logits`` given the rows' global lse, t and star
    flag in ``stats``: (N, SOFT_SHARD_STATS_COLS) in the accumulation dtype, unfinalised
    (the op ``triton_soft_shard_stats``; a class-index row without smoothing is q = w_y onehot).
    With ``eps`` and ``side`` (k != 1) the same pass also writes its kept pass into them: per
    class k log|eps_j| and its side (_schema.py; soft_shard_grad reads them)."""
    check_op_soft_shard_stats_args(logits, target, weight, mixture, stats)
    _check_device(logits)
    check_op_softcap(softcap, logits.dtype)
    check_op_kept_eps(logits, eps, side, k)
    logits = logits.contiguous()
    N, C = logits.shape
    out = torch.empty((N, SOFT_SHARD_STATS_COLS), dtype=acc_dtype(logits.dtype), device=logits.device)
    if N > 0:
        block, rows, num_warps = plan(N, C, block_cap)
        stats = stats.contiguous()
        w = weight.contiguous() if weight is not None else stats
        mix = mixture.contiguous() if mixture is not None else stats
        keep = eps is not None  # eps and side: checked contiguous; unused slots get ``out`` (never read)
        soft_shard_kernel[(triton.cdiv(N, rows),)](
            logits, target.contiguous(), w, mix, stats, out, eps if keep else out, side if keep else out, N, C,
            int(ignore_index), float(label_smoothing), float(k), float(softcap),
            MODE=_mode(target, mixture, label_smoothing) or SMOOTH, HAS_W=weight is not None,
            K_IS_ONE=float(k) == 1.0, HAS_CAP=float(softcap) != 0.0, ROWS=rows, BLOCK=block, num_warps=num_warps,
            KEEP=keep)
    return out


def soft_shard_grad(grad_loss: Tensor, eps: Tensor, side: Tensor, logits: Tensor, stats: Tensor, out: Tensor,
                    softcap: float = 0.0, grad_lse: Tensor | None = None, *, block_cap: int | None = None) -> None:
    """bwd of soft rows from soft_shard_stats' kept pass (``eps``, ``side``) and the rows' finalised
    stats in the complete form, written into ``out`` in logits' dtype (the op
    ``triton_soft_shard_grad``, _schema.py). ``out`` may be ``eps`` itself: each element is read
    before it is written, by the same program. The logits are read only for ``grad_lse`` or a softcap."""
    check_op_soft_shard_grad_args(grad_loss, eps, side, logits, stats, out, grad_lse)
    _check_device(logits)
    check_op_softcap(softcap, logits.dtype)
    N, C = logits.shape
    if N * C == 0:
        return
    has_cap, has_glse = float(softcap) != 0.0, grad_lse is not None
    stats = stats.contiguous()
    z = logits.contiguous() if has_cap or has_glse else stats  # unused slots get stats (never read)
    glse = grad_lse.contiguous() if has_glse else stats
    block, rows, num_warps = plan(N, C, block_cap)
    soft_kept_bwd_kernel[(triton.cdiv(N, rows),)](
        grad_loss.contiguous(), eps, side, z, stats, out, glse, N, C, float(softcap), HAS_CAP=has_cap,
        HAS_GLSE=has_glse, READ_Z=has_cap or has_glse, ROWS=rows, BLOCK=block, num_warps=num_warps)

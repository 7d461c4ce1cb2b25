"""Host side: the ``fwd`` / ``fwd_inplace`` contract of hardloss_cuda/_schema.py.

Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before triton was
imported (the tests do that).
"""

from __future__ import annotations

import math

import torch
import triton
from torch import Tensor

from .config import plan
from .onehot import onehot_kernel
from .soft import MIXTURE, PROBS, SMOOTH, soft_kernel

__all__ = ["fwd", "fwd_inplace"]

_LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _interpreting() -> bool:
    # triton.jit picks the interpreter when the kernel is decorated (module import), so ask
    # the kernel rather than the environment.
    return type(onehot_kernel).__name__ == "InterpretedFunction"


def _check(logits, target, weight, mixture, label_smoothing, k) -> None:
    """Shape/dtype/device checks the kernels rely on (cheap, no device sync). Label values
    are not checked here: out-of-range labels give NaN rows inside the kernels."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (N, C), got shape {tuple(logits.shape)}")
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"logits: unsupported dtype {logits.dtype} (float32/16, bfloat16, float64)")
    if logits.device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            "triton backend: logits must be a CUDA tensor (CPU tensors need TRITON_INTERPRET=1 "
            "set before triton_kernels is imported)"
        )
    N, C = logits.shape
    if C == 0:
        raise ValueError("logits: need at least one class (C >= 1)")
    acc = _acc_dtype(logits.dtype)
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(f"target: probabilities must have shape {(N, C)}, got {tuple(target.shape)}")
        if mixture is not None:
            raise ValueError("mixture: only allowed with class-index targets")
    else:
        if target.dtype != torch.int64 or target.shape != (N,):
            raise ValueError(f"target: expected int64 of shape ({N},), got {target.dtype} {tuple(target.shape)}")
    if weight is not None and (weight.shape != (C,) or weight.dtype != acc):
        raise ValueError(f"weight: expected {acc} of shape ({C},), got {weight.dtype} {tuple(weight.shape)}")
    if mixture is not None:
        if mixture.shape != (C, C) or mixture.dtype != acc:
            raise ValueError(f"mixture: expected {acc} of shape ({C}, {C}), got {mixture.dtype} {tuple(mixture.shape)}")
        if label_smoothing > 0:
            raise ValueError("label_smoothing: cannot be combined with a mixture")
    if not (0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"k must be finite and > 0, got {k}")
    for name, t in (("target", target), ("weight", weight), ("mixture", mixture)):
        if t is not None and t.device != logits.device:
            raise ValueError(f"{name}: on {t.device}, logits on {logits.device}")


def _launch(logits, target, weight, mixture, ignore_index, label_smoothing, k, grad, block_cap):
    """Compute loss and lse (accumulation dtype) and, when ``grad`` is given, write the
    pseudo-gradient into it (it may be ``logits`` itself)."""
    N, C = logits.shape
    acc = _acc_dtype(logits.dtype)
    loss = torch.empty(N, dtype=acc, device=logits.device)
    lse = torch.empty(N, dtype=acc, device=logits.device)
    if N == 0:
        return loss, lse
    target = target.contiguous()
    block, rows, num_warps = plan(N, C, block_cap)
    grid = (triton.cdiv(N, rows),)
    # Unused pointer slots get a harmless tensor; the constexpr flags keep them unread.
    w = weight.contiguous() if weight is not None else loss
    g = grad if grad is not None else logits
    common = dict(HAS_W=weight is not None, WRITE_GRAD=grad is not None,
                  ROWS=rows, BLOCK=block, num_warps=num_warps)
    if target.is_floating_point() or mixture is not None or label_smoothing > 0:
        mode = PROBS if target.is_floating_point() else MIXTURE if mixture is not None else SMOOTH
        mix = mixture.contiguous() if mixture is not None else loss
        soft_kernel[grid](logits, target, w, mix, loss, lse, g, N, C, int(ignore_index),
                          float(label_smoothing), float(k), MODE=mode, **common)
    else:
        onehot_kernel[grid](logits, target, w, loss, lse, g, N, C, int(ignore_index),
                            float(k), ONE_TILE=block >= C, **common)
    return loss, lse


def fwd(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mixture: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    k: float,
    compute_grad: bool,
    *,
    block_cap: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, grad, lse) per row; grad in logits' dtype, shape (0, C) unless compute_grad.

    ``block_cap`` (keyword only, not part of the op) lowers the column block; tests use it.
    """
    _check(logits, target, weight, mixture, label_smoothing, k)
    logits = logits.contiguous()
    grad = torch.empty_like(logits) if compute_grad else logits.new_empty((0, logits.shape[1]))
    loss, lse = _launch(logits, target, weight, mixture, ignore_index, label_smoothing, k,
                        grad if compute_grad else None, block_cap)
    return loss, grad, lse


def fwd_inplace(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mixture: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    k: float,
    *,
    block_cap: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(loss, lse); the pseudo-gradient overwrites ``logits`` (each element is read before
    it is written, by the same program)."""
    _check(logits, target, weight, mixture, label_smoothing, k)
    if not logits.is_contiguous():
        raise ValueError("logits: fwd_inplace needs a contiguous tensor")
    return _launch(logits, target, weight, mixture, ignore_index, label_smoothing, k,
                   logits, block_cap)

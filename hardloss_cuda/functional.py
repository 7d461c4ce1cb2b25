"""``cross_entropy``: a drop-in for ``torch.nn.functional.cross_entropy`` with the
tunable-sensitivity pseudo-gradient (``k``), MCEL soft targets (``mixture``) and mini-batch
trimming (``trim``). The row op runs on the chosen backend; flattening, reductions and
trimming are O(N) tensor ops shared by every backend (``_batch.py``)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _autograd
from ._batch import as_rows, finish_rows, op_inputs
from .options import loss_options, positional_order, with_arg_docs
from .validation import autocast_dtype, in_functorch

__all__ = ["cross_entropy"]


@with_arg_docs("k", "mixture", "trim", "softcap", "z_loss", "return_lse", "inplace_backward", "backend")
def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
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

    The arguments of ``F.cross_entropy`` come in its order, its deprecated ``size_average`` and
    ``reduce`` included (they set ``reduction``, with PyTorch's warning). Earlier versions took
    ``(input, target, weight, ignore_index, reduction, label_smoothing)``: a call in that order
    (an int where ``size_average`` is) still works, with a FutureWarning.

    Args beyond ``F.cross_entropy``:
        {args}
    """
    ignore_index, reduction, label_smoothing = positional_order(size_average, ignore_index, reduce, reduction,
                                                                label_smoothing, "hardloss_cuda.cross_entropy")
    opts = loss_options(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                        label_smoothing=label_smoothing, k=k, mixture=mixture, trim=trim, softcap=softcap,
                        z_loss=z_loss, return_lse=return_lse, inplace_backward=inplace_backward, backend=backend)
    out_shape = input.shape[:1] + input.shape[2:] if input.dim() > 1 else ()
    logits, tgt = as_rows(input, target)
    logits = logits.contiguous()
    tgt, w, mix, _acc = op_inputs(tgt, weight, mixture, logits.dtype)
    op_args = (opts.ignore_index, opts.label_smoothing, opts.k)

    if opts.inplace_backward and torch.is_grad_enabled() and logits.requires_grad:
        if in_functorch(logits):
            raise RuntimeError("inplace_backward=True cannot be used inside torch.func transforms")
        loss, stats = _autograd.InplaceFwd.apply(logits, tgt, w, mix, *op_args, opts.softcap, opts.backend)
    else:
        # torch.func's grad wraps its inputs: they require grad only as seen from inside
        compute_grad = torch.is_grad_enabled() and (logits.requires_grad or in_functorch(logits))
        # Dynamo cannot trace an autograd.Function with a custom jvp: compiled code takes RowLoss
        fn = _autograd.RowLoss if torch.compiler.is_compiling() else _autograd.RowLossJvp
        loss, stats = fn.apply(logits, tgt, w, mix, *op_args, compute_grad, opts.softcap, opts.backend)

    # Under autocast F.cross_entropy is on the float32 list: half logits are cast to float32, the loss is
    # float32 and the gradient comes back in the logits' dtype. The kernels accumulate half logits in
    # float32 and round the gradient once: the same result, without a float32 copy of the logits.
    amp = input.dtype in (torch.float16, torch.bfloat16) and autocast_dtype(input.device) is not None
    return finish_rows(loss, stats, tgt, w, opts, out_shape, torch.float32 if amp else input.dtype)

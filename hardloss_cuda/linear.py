"""``linear_cross_entropy``: the classifier matmul and the fused loss together, chunked over the
rows, so that the (N, C) logits of a language-model head never exist at once.

Each chunk of rows gets its logits from one matmul, the backend's forward op turns them into
losses and row statistics, its in-place backward op turns them into the (pseudo-)gradient,
and two more matmuls add the chunk's share of ``grad_input`` and ``grad_weight`` (fp32
accumulators for half inputs). Peak extra memory is one chunk of logits plus O(N D + C D).

- ``mean`` / ``sum``: the incoming gradient is a scalar, so the gradients are computed during
  the forward pass, on the chunk's logits still in the buffer (three matmuls in all, as the
  materialised head), and scaled in backward. Not with ``return_lse`` (see below), and not for
  fp16, whose small gradients would underflow at a unit scale before a loss scaler's factor
  comes (as ``none``: four matmuls).
- ``none``: the incoming gradient is per row; the backward recomputes each chunk's logits from
  the kept row statistics (a fourth matmul) and scales row by row.
- ``trim``: the losses of every row first (matmul + forward op), then the kept rows only get
  the gradient matmuls: at fraction 0.2 that part costs about a fifth.
- ``softcap`` is applied inside the backend's ops; ``z_loss`` adds its gradient
  ``2 z_loss lse softmax`` through the ops' logsumexp gradient, in the same matmuls. The lse
  of ``return_lse`` is differentiable (its gradient is ``softmax`` per row). With it the
  gradients wait for backward, where the loss's and the lse's incoming gradients are known:
  both go into one op call per chunk (four matmuls in all), so that each logit's gradient
  ``(g f_j + g_lse p_j) slope_j`` is rounded once. Computed apart and summed after rounding
  to a half dtype, the two terms' cancellation left 20% errors in bf16 ``grad_input``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _ops
from ._batch import op_inputs, reduce_rows, row_lse, row_weights
from ._schema import STATS_COLS, acc_dtype
from .options import loss_options
from .validation import autocast_dtype, autocast_off, check_chunk_size, float_labels_message
from .trimming import keep_mask

__all__ = ["linear_cross_entropy"]

_CHUNK_ELEMS = 1 << 23  # logits per chunk: 32 MB in fp32


def _chunk_rows(chunk_size, N: int, C: int) -> int:
    check_chunk_size(chunk_size)
    if chunk_size == "auto":
        return max(1, min(N, _CHUNK_ELEMS // max(C, 1)))
    return chunk_size


class _Head:
    """What every chunk needs: the classifier, the targets and the op's options."""

    def __init__(self, W, b, tgt, w, mix, opts, rows):
        self.W, self.b, self.tgt, self.w, self.mix = W, b, tgt, w, mix
        self.args = (opts.ignore_index, opts.label_smoothing, opts.k)
        self.softcap = opts.softcap
        self.backend, self.rows = opts.backend, rows
        self.buf = None

    def logits(self, h: Tensor) -> Tensor:
        """h @ W.T (+ b) into one buffer reused by every chunk (a fresh 32 MB block per chunk
        costs its page faults on the CPU)."""
        if torch.compiler.is_compiling():  # no buffer kept on this object: a side effect to Dynamo
            return torch.addmm(self.b, h, self.W.T) if self.b is not None else torch.mm(h, self.W.T)
        n = h.shape[0]
        if self.buf is None or self.buf.shape[0] < n:
            self.buf = torch.empty((n, self.W.shape[0]), dtype=h.dtype, device=h.device)
        z = self.buf[:n]
        if self.b is not None:
            return torch.addmm(self.b, h, self.W.T, out=z)
        return torch.mm(h, self.W.T, out=z)

    def release(self) -> None:
        if not torch.compiler.is_compiling():
            self.buf = None

    def chunks(self, N: int):
        for a in range(0, N, self.rows):
            yield slice(a, min(a + self.rows, N))

    def forward(self, h: Tensor, idx, compute_grad: bool):
        """Losses, stats and logits (in the shared buffer) of rows idx (a slice or an index tensor)."""
        z = self.logits(h[idx])
        loss, stats = _ops.fwd_op(self.backend)(z, self.tgt[idx], self.w, self.mix, *self.args, compute_grad,
                                                self.softcap)
        return loss, stats, z

    def add_grads(self, h: Tensor, idx, g: Tensor, stats: Tensor, grads, z: Tensor | None = None,
                  g_lse: Tensor | None = None) -> None:
        """The rows' logits z (recomputed when not given) turned into g * their (pseudo-)gradient
        (+ g_lse * softmax) in place, and their share of grad_input (added), grad_weight and
        grad_bias (added)."""
        hc = h[idx]
        G = self.logits(hc) if z is None else z
        _ops.bwd_inplace_op(self.backend)(g, G, self.tgt[idx], self.w, self.mix, stats, *self.args, self.softcap,
                                          g_lse)
        gh, gW, gb = grads
        if gh is not None:
            gh[idx] += (G @ self.W).to(gh.dtype)
        if gW is not None and gW.dtype == G.dtype:
            gW.addmm_(G.T, hc)  # no (C, D) temporary per chunk
        elif gW is not None:  # half inputs: the chunk's product rounded once, summed in fp32
            gW.add_(G.T @ hc)
        if gb is not None:
            gb.add_(G.sum(0, dtype=gb.dtype))


def _grad_buffers(h, W, b, need):
    """grad_input (rows never reached stay 0), and fp32 (fp64) accumulators for grad_weight and
    grad_bias; None where no gradient is needed."""
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    gh = torch.zeros(h.shape, dtype=h.dtype, device=h.device) if need[0] else None
    gW = torch.zeros(W.shape, dtype=acc, device=W.device) if need[1] else None
    gb = torch.zeros(W.shape[0], dtype=acc, device=W.device) if b is not None and need[2] else None
    return gh, gW, gb


def _scales(reduction: str, row_w: Tensor, counted: Tensor):
    """The factors of a row's loss and of its z-loss term in the reduced loss: mean divides the
    losses by their total weight and the z-loss terms by the number of counted rows."""
    one = torch.ones((), dtype=row_w.dtype, device=row_w.device)
    if reduction != "mean":
        return one, one
    return 1 / row_w.sum(), 1 / counted.sum().clamp_min(1).to(row_w.dtype)


def _z_grad(z_loss: float, lse: Tensor, rows: Tensor, scale) -> Tensor | None:
    """The logsumexp gradient of the z-loss, 2 z_loss lse scale, on ``rows`` (0 elsewhere)."""
    if z_loss == 0:
        return None
    return torch.where(rows, 2 * z_loss * lse * scale, 0).contiguous()


class _LinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, W, b, head: _Head, reduction, frac, valid, row_w, z_loss, with_lse):
        ctx.set_materialize_grads(False)  # an unused lse output gives None, not zeros
        N = h.shape[0]
        acc = acc_dtype(h.dtype)
        need = ctx.needs_input_grad[:3]
        grad = any(need)
        loss = torch.empty(N, dtype=acc, device=h.device)
        stats = torch.empty((N, STATS_COLS), dtype=acc, device=h.device)
        # The gradients in forward when the scale is known before the losses and no lse gradient may
        # come. Not for fp16: there they would be rounded at a unit incoming gradient and scaled in
        # backward, and fp16 flushes what lies below 6e-8 (subnormal from 6e-5): the small logit
        # gradients that a loss scaler (torch.amp.GradScaler) multiplies the loss to keep would be
        # lost. In backward they are rounded once, at the incoming gradient's scale, as the
        # materialised head's (one more matmul a chunk). bf16 has float32's range.
        in_forward = grad and reduction != "none" and not with_lse and h.dtype != torch.float16
        direct = in_forward and frac is None
        scales = _scales(reduction, row_w, valid)  # trimming changes them below
        if direct:
            grads = _grad_buffers(h, W, b, need)
            scale, z_scale = scales
        for idx in head.chunks(N):
            loss[idx], st, z = head.forward(h, idx, grad)
            stats[idx] = st
            if direct:  # the chunk's logits are still in the buffer: no second matmul
                g_lse = _z_grad(z_loss, row_lse(st, valid[idx]), valid[idx], z_scale)
                head.add_grads(h, idx, scale.expand(idx.stop - idx.start).to(acc).contiguous(), st, grads, z, g_lse)
        lse = row_lse(stats, valid)

        kept = valid
        if frac is not None:
            kept = keep_mask(loss, valid, frac)
            loss = torch.where(kept, loss, 0)
            row_w = torch.where(kept, row_w, 0)
            scales = _scales(reduction, row_w, kept)
        out = reduce_rows(loss, lse, kept, row_w, z_loss, reduction)

        ctx.head, ctx.need, ctx.z_loss, ctx.device = head, need, z_loss, h.device
        if in_forward and frac is not None:
            # Trimming: the gradient matmuls on the kept rows only, in chunks.
            grads = _grad_buffers(h, W, b, need)
            scale, z_scale = scales
            rows = kept.nonzero().squeeze(1)
            for a in range(0, rows.numel(), head.rows):
                idx = rows[a:a + head.rows]
                # The kept rows' logits come from a matmul of another shape than the forward's
                # chunks, which rounds differently: their statistics are taken again from these
                # logits (with the forward's, exp(z - m) of a confident row's top class is not 1).
                _, st, z = head.forward(h, idx, True)
                g_lse = _z_grad(z_loss, lse[idx], kept[idx], z_scale)
                head.add_grads(h, idx, scale.expand(idx.numel()).to(acc).contiguous(), st, grads, z, g_lse)
            direct = True
        head.release()
        ctx.direct = direct
        if direct:
            ctx.grads = grads  # computed here: backward only scales them
        if grad:  # saved, so that an in-place change of h, W or b before backward raises
            ctx.save_for_backward(h, W, b)
            ctx.stats, ctx.kept, ctx.valid, ctx.lse = stats, kept, valid, lse
            ctx.reduction, ctx.scales = reduction, scales
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        if torch.is_grad_enabled():
            raise RuntimeError("hardloss_cuda.linear_cross_entropy: double backward is not supported")
        with autocast_off(ctx.device):  # the dtypes are the forward's (custom_bwd)
            return _LinearCE._backward(ctx, grad_out, grad_lse)

    @staticmethod
    def _backward(ctx, grad_out, grad_lse):
        head = ctx.head
        h, W, b = ctx.saved_tensors  # the version check; head holds them (or, under autocast, their casts)
        acc = ctx.stats.dtype
        if ctx.direct and grad_out is not None:  # computed in forward: scaled by the scalar
            grads = tuple(None if t is None else t * grad_out.to(t.dtype) for t in ctx.grads)
        else:
            grads = _grad_buffers(h, head.W, head.b, ctx.need)
        g_rows = None
        if not ctx.direct and grad_out is not None:
            # the incoming gradient of each row's loss and of its z-loss term (trimmed rows: none)
            scale, z_scale = ctx.scales
            g = grad_out.to(acc)
            g_rows = torch.where(ctx.kept, g * scale, 0)
            g_z_rows = g_rows if ctx.reduction == "none" else torch.where(ctx.kept, g * z_scale, 0)
        g_lse = None if grad_lse is None else torch.where(ctx.valid, grad_lse.to(acc), 0)
        if g_rows is not None and ctx.z_loss != 0:
            g_z = 2 * ctx.z_loss * ctx.lse * g_z_rows
            g_lse = g_z if g_lse is None else g_lse + g_z
        if g_rows is not None or g_lse is not None:
            # the chunks' logits recomputed (a matmul each) for the per-row or lse gradient
            zero = torch.zeros(h.shape[0], dtype=acc, device=h.device)
            for idx in head.chunks(h.shape[0]):
                head.add_grads(h, idx, (zero if g_rows is None else g_rows)[idx].contiguous(), ctx.stats[idx],
                               grads, g_lse=None if g_lse is None else g_lse[idx].contiguous())
            head.release()
        gh, gW, gb = grads
        out = [gh, None if gW is None else gW.to(W.dtype), None if gb is None else gb.to(b.dtype)]
        return (*out, None, None, None, None, None, None, None)


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    k: float = 1.0,
    mixture: Tensor | None = None,
    trim=None,
    softcap: float | None = None,
    z_loss: float = 0.0,
    return_lse: bool = False,
    chunk_size="auto",
    backend: str = "auto",
) -> Tensor:
    """``cross_entropy(F.linear(input, linear_weight, linear_bias), target, ...)`` without the
    (N, C) logits: chunked over the rows (module docstring).

    ``input`` is (N, D) or (B, T, D) (flattened to rows; ``F.linear_cross_entropy`` takes (N, D)),
    ``linear_weight`` (C, D), ``linear_bias`` (C,); ``target`` class indices of ``input``'s
    leading shape, or probabilities with C last. The other arguments are those of
    ``cross_entropy`` (``softcap``, ``z_loss`` and ``return_lse`` included: with ``return_lse``
    the result is ``(loss, lse)``, lse per row of ``input``'s leading shape in float32, float64
    for float64 input); ``chunk_size`` is the rows per chunk ("auto": 2^23 logits);
    ``ignore_index=None`` is -100, as in ``F.linear_cross_entropy``. Under autocast the matmuls
    run in the autocast dtype and the loss is float32 (docs/RECIPES.md section 2).
    """
    for name, t in (("input", input), ("linear_weight", linear_weight), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if linear_bias is not None and not isinstance(linear_bias, Tensor):
        raise TypeError(f"linear_bias must be a Tensor or None, got {type(linear_bias).__name__}")
    if input.dim() < 1:
        raise ValueError("input must be a tensor (N, D) or (B, T, D), got a 0-dim tensor")
    if linear_weight.dim() != 2 or linear_weight.shape[1] != input.shape[-1]:
        raise ValueError(f"linear_weight must be (C, D) with D = input.shape[-1] = {input.shape[-1]}, "
                         f"got {tuple(linear_weight.shape)}")
    C, D = linear_weight.shape
    if C == 0:  # cross_entropy's check would name its input, the logits
        raise ValueError(f"linear_weight must have at least one row (C >= 1), got {tuple(linear_weight.shape)}")
    if linear_bias is not None and tuple(linear_bias.shape) != (C,):
        raise ValueError(f"linear_bias must have shape ({C},), got {tuple(linear_bias.shape)}")
    for name, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if t is not None and t.device != input.device:
            raise ValueError(f"{name} is on {t.device} but input is on {input.device}: move it to input's device")
    # Under autocast, its rules (those of F.linear, then of the float32 cross_entropy): the
    # matmuls in the autocast dtype, the loss in float32 (custom_fwd / custom_bwd: the work
    # below runs with autocast off, in those dtypes). W and b are cast inside, for the matmuls
    # only: their gradients come back in their own dtype from the float32 accumulators.
    amp = autocast_dtype(input.device)
    cast = (lambda t: t if t is None or t.dtype == torch.float64 else t.to(amp)) if amp is not None else (lambda t: t)
    h_in, W_run, b_run = cast(input), cast(linear_weight).detach(), cast(linear_bias)
    b_run = None if b_run is None else b_run.detach()
    for name, t in (("linear_weight", W_run), ("linear_bias", b_run)):
        if t is not None and t.dtype != h_in.dtype:
            what = f"{name} is {t.dtype} but input is {h_in.dtype}"
            raise ValueError(f"{what}{' (under autocast)' if amp is not None else ''}: the matmul needs one dtype; "
                             f"cast one to the other (e.g. {name}.to(input.dtype)), or run under torch.autocast, "
                             "which casts both float32 and half tensors (not float64) to its dtype")
    # The target of the logits F.linear would give, (*lead, C): class indices of shape lead, or
    # probabilities of shape (*lead, C). Checked, not reshaped: a (T, B) target for (B, T, D)
    # input has the right number of elements and would pair labels with the wrong rows.
    lead = input.shape[:-1]
    want = tuple(lead) + ((C,) if target.is_floating_point() else ())
    if tuple(target.shape) != want:
        if target.is_floating_point() and tuple(target.shape) == tuple(lead):
            raise ValueError(float_labels_message(target, want))
        what = "probabilities" if target.is_floating_point() else "class indices"
        raise ValueError(f"target ({what}) must have shape {want} for input {tuple(input.shape)} and "
                         f"linear_weight {tuple(linear_weight.shape)}, got {tuple(target.shape)}")
    if (isinstance(mixture, Tensor) and mixture.requires_grad) or (target.is_floating_point() and target.requires_grad):
        raise ValueError("linear_cross_entropy: gradients w.r.t. mixture or target are not supported; use "
                         "cross_entropy on materialised logits")
    if ignore_index is None:  # as F.linear_cross_entropy: None is -100 (for class indices)
        ignore_index = -100
    with autocast_off(input.device):
        out, lse = _linear_ce(h_in, W_run, b_run, linear_weight, linear_bias, target, lead, C, D, weight, ignore_index,
                              reduction, label_smoothing, k, mixture, trim, softcap, z_loss, return_lse, chunk_size,
                              backend)
    # the loss in the autocast rules' float32 (the float32 accumulation of half inputs), else in input's dtype
    out_dtype = out.dtype if amp is not None else input.dtype
    out = out.to(out_dtype).reshape(lead) if out.dim() else out.to(out_dtype)
    return (out, lse.reshape(lead)) if return_lse else out


def _linear_ce(input, W_run, b_run, linear_weight, linear_bias, target, lead, C, D, weight, ignore_index, reduction,
               label_smoothing, k, mixture, trim, softcap, z_loss, return_lse, chunk_size, backend):
    """linear_cross_entropy's work on checked (and, under autocast, cast) tensors: the loss (in the
    accumulation dtype; per row for "none") and the lse. ``W_run`` / ``b_run`` are what the
    matmuls use; ``linear_weight`` / ``linear_bias`` what the gradients go to."""
    N = math.prod(lead)
    h = input.reshape(N, D)  # (-1, D) is ambiguous for D = 0
    tgt = target.reshape(N, C) if target.is_floating_point() else target.reshape(N)
    logits_like = h.new_empty(()).expand(N, C)  # validated as cross_entropy's input, never allocated
    opts = loss_options(logits_like, tgt, weight=weight, ignore_index=ignore_index, reduction=reduction,
                        label_smoothing=label_smoothing, k=k, mixture=mixture, trim=trim, softcap=softcap,
                        z_loss=z_loss, return_lse=return_lse, backend=backend)

    tgt, w, mix, acc = op_inputs(tgt, weight, mixture, h.dtype)
    valid, row_w = row_weights(tgt, w, opts.ignore_index, N, acc)
    head = _Head(W_run, b_run, tgt, w, mix, opts, _chunk_rows(chunk_size, N, C))
    return _LinearCE.apply(h.contiguous(), linear_weight, linear_bias, head, opts.reduction, opts.trim, valid,
                           row_w, opts.z_loss, opts.return_lse)

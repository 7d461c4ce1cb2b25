"""Vocab-parallel cross-entropy over ``torch.distributed``: each rank of a group holds a slice of
the classes, ``(N, C_local)`` logits, and the full ``target``; the result is what
``hardloss_cuda.cross_entropy`` gives on the concatenated logits, value and (pseudo-)gradient,
with no rank ever holding more than its slice (docs/DISTRIBUTED.md).

One-hot rows (class indices without smoothing or mixture), every k: each rank's kernel
computes its slice's statistics over the non-target classes (the op ``shard_stats``: max m,
``s1 = sum exp(z - m)``, ``sk = sum exp(k (z - m))``); one all-reduce MAX of m and one
all-reduce SUM of ``(s1, sk, z_y)`` rescaled to the global max (the rank that owns the label
contributes z_y) give the row's global statistics; they are finalised in O(N) torch ops by
``_torch_rows.onehot_finalize`` (row_math.h's, also the reference's), and the backward is each
rank's ``bwd`` op on its slice with these global stats: no communication at all. Forward: 2
collectives of 4 N values.

Label smoothing at k = 1 runs the backend's soft-row kernels on the slice (``_SmoothShard``):
3 all-reduces of O(N) values forward, none backward. Other soft rows (mixtures, smoothing at
k != 1) also run the backend's kernels on the slice (``_SoftShard``), the global rows' q on the
slice's classes given as probability targets (built in torch a chunk of rows at a time; fp16 /
bf16 logits go through a float32 copy of the chunk, so that q is not rounded): the ``fwd`` op
(the slice's loss, lse and t), an all-reduce MAX of 3 N and a SUM of 3 N values (lse, t, the
dominant-class flag, the loss), the op ``soft_shard_stats`` (the soft row's second pass over the
slice given them), an all-reduce MAX of 3 N and a SUM of 4 N values of its statistics, finalised
in O(N) torch ops (``_torch_rows.soft_cols``, the reference's own); the backward, with no
communication, is ``soft_shard_grad`` at k != 1: ``soft_shard_stats`` kept each class's
k log|eps| and side for it (an (N, C_local) buffer in the accumulation dtype, the gradient's own
for float32 / float64 logits, and an int8 one, held from forward to backward), so the slice's
|eps|^k is computed once, as on one device; with ``inplace_backward`` (no (N, C) buffer) and at
k = 1, the ``bwd`` op on the slice with these stats (at k = 1 on q held from the forward, which
the gradient then overwrites). This module holds the reductions across
ranks and no row math of its own: every backend's ``bwd`` reads the stats it is given (the
reference's too). Forward: 4 collectives, 13 N values (52 B a row in float32). Probability
targets are not accepted (they would be sharded like the logits; not needed by the models this
is for).

Collectives are torch's functional collectives (traceable by torch.compile); nothing else
synchronises with the host, except the layout exchange when ``class_start`` / ``num_classes``
are not given and the label range check of eager mode (as ``cross_entropy``).
"""

from __future__ import annotations

from numbers import Integral

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import _functional_collectives as funcol

from . import _torch_rows
from ._autograd import DOUBLE_BACKWARD, lse_grad
from ._batch import finish_rows, op_inputs
from ._ops import bwd_inplace_op, bwd_op, fwd_op, shard_stats_op, soft_shard_grad_op, soft_shard_stats_op
from ._schema import LSE_COL, LSE_LO_COL, SCALE_COL, STATS_COLS, STATS_SOFT_COMPLETE, acc_dtype
from .options import loss_options
from .validation import autocast_dtype

__all__ = ["vocab_parallel_cross_entropy", "shard_layout"]

_INF = float("inf")


def _all_reduce(x: Tensor, op: str, group) -> Tensor:
    return funcol.all_reduce(x, op, group)


def shard_layout(num_local_classes: int, class_start: int | None = None, group=None) -> tuple[int, int]:
    """(class_start, num_classes) of this rank's slice, from every rank's (class_start, size)
    (one ``all_gather_object``): ``class_start`` given on every rank (any order of the slices)
    or on none (slices in rank order). The slices must tile [0, num_classes) exactly."""
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    got = [None] * world
    dist.all_gather_object(got, (class_start, int(num_local_classes)), group=group)
    given = [s is not None for s, _ in got]
    if any(given) and not all(given):
        raise ValueError("class_start must be given on every rank of the group or on none")
    for s, _ in got:  # every rank's, so that every rank raises
        if s is not None:
            _int_arg(s, "class_start")
    if not any(given):
        starts = [sum(n for _, n in got[:r]) for r in range(world)]
        got = [(s, n) for s, (_, n) in zip(starts, got)]
    end = 0
    for s, n in sorted(got):
        if s != end:
            raise ValueError(f"class_start: the ranks' slices (start, size) {got} do not tile the classes "
                             f"(a gap or an overlap at class {end})")
        end = s + n
    return got[rank][0], end


def _int_arg(value, name: str) -> int:
    """class_start / num_classes: an int (a float or a str was truncated or parsed by int())."""
    if isinstance(value, bool) or not isinstance(value, (Integral, torch.SymInt)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


def _from_dtensor(x, target):
    """A DTensor sharded on its class (last) dimension: (local tensor, target, group, class_start,
    num_classes); anything else passes through (with Nones)."""
    try:
        from torch.distributed.tensor import DTensor, Replicate, Shard
    except ImportError:  # pragma: no cover (torch without DTensor)
        return x, target, None, None, None
    if isinstance(target, DTensor):
        target = target.full_tensor()
    if not isinstance(x, DTensor):
        return x, target, None, None, None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    sharded = [i for i, p in enumerate(x.placements) if isinstance(p, Shard) and p.dim % x.ndim == x.ndim - 1]
    others_ok = all(isinstance(p, Replicate) for i, p in enumerate(x.placements) if i not in sharded)
    if len(sharded) != 1 or not others_ok:
        raise ValueError(f"local_logits: a DTensor must be Shard(-1) on one mesh dimension and Replicate on the "
                         f"others, got {x.placements}")
    _, offset = compute_local_shape_and_global_offset(x.shape, x.device_mesh, x.placements)
    group = x.device_mesh.get_group(sharded[0])
    return x.to_local(), target, group, int(offset[-1]), int(x.shape[-1])


def _capped(z: Tensor, softcap: float) -> Tensor:
    return _torch_rows.softcap_logits(z, softcap)


def _slope(x: Tensor, softcap: float) -> Tensor:
    """The cap's slope at the raw logits x (_torch_rows.softcap_slope), 1 without a cap."""
    return _torch_rows.softcap_slope(x, softcap) if softcap != 0 else torch.ones_like(x)


def _labels(tgt: Tensor, ignore_index: int, start: int, C: int, CL: int):
    """(ignored, valid, owned, local label) of the global labels on this rank's slice. The local
    label is what the slice's kernels take: the label where this rank owns it; 0, a stand-in,
    on the other valid rows; -1 (their ignore_index) on ignored rows; CL (out of range: a NaN
    row, as the single-device op) on bad labels."""
    ignored = tgt == ignore_index
    valid = ~ignored & (tgt >= 0) & (tgt < C)
    y = tgt - start
    owned = valid & (y >= 0) & (y < CL)
    return ignored, valid, owned, torch.where(owned, y, torch.where(valid, 0, torch.where(ignored, -1, CL)))


def _no_double_backward():
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD + " (nor through the vocab-parallel loss)")


class _OneHotShard(torch.autograd.Function):
    """One-hot rows: the slice's statistics from the backend's ``shard_stats`` kernel, two
    all-reduces, the bwd kernel on the slice with the global stats."""

    @staticmethod
    def forward(ctx, local, tgt, w, ignore_index, k, softcap, layout, group, backend, inplace):
        (start, C), (N, CL) = layout, local.shape
        acc = acc_dtype(local.dtype)
        ignored, valid, owned, lbl = _labels(tgt, ignore_index, start, C, CL)
        if CL > 0:
            st = shard_stats_op(backend)(local, torch.where(owned, lbl, -1), k, softcap)
            z_y = _capped(local.gather(1, torch.where(owned, lbl, 0)[:, None])[:, 0].to(acc), softcap)
            z_0 = _capped(local[:, 0].to(acc), softcap)
        else:  # an empty slice: nothing to add
            st = torch.tensor([-_INF, 0.0, 0.0], dtype=acc, device=local.device).expand(N, 3)
            z_y = z_0 = torch.zeros(N, dtype=acc, device=local.device)
        m = st[:, 0]
        M = _all_reduce(m, "max", group)
        shift = torch.where(M == -_INF, 0, M)
        part = torch.stack([st[:, 1] * torch.exp(m - shift), st[:, 2] * torch.exp(k * (m - shift)),
                            torch.where(owned, z_y, 0)], 1)
        S1, Sk, z_y = _all_reduce(part, "sum", group).unbind(1)
        sp, hi, lo, f_y, m_out, log_c = _torch_rows.onehot_finalize(M, S1, Sk, z_y, k)

        w_y = torch.ones_like(sp) if w is None else w[torch.where(valid, tgt, 0)]
        loss = torch.where(ignored, 0, w_y * sp).masked_fill(~ignored & ~valid, torch.nan)
        # The bwd kernel writes the scale column at the label: f_y where this rank owns it; else
        # column 0 (a stand-in label) with its own non-target value, so that no fix-up pass is needed.
        scale = torch.where(owned, f_y, torch.exp(k * (z_0 - m_out) + log_c))
        cols = [torch.where(valid, c, 0) for c in (scale, m_out, log_c)]
        stats = torch.stack([hi, lo, *cols, torch.zeros_like(hi)], 1)
        ctx.tgt = lbl
        ctx.w_y = w_y
        ctx.args = (k, softcap, backend, inplace)
        ctx.save_for_backward(local, stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, grad_stats):
        _no_double_backward()
        local, stats = ctx.saved_tensors
        k, softcap, backend, inplace = ctx.args
        if local.shape[1] == 0:
            return (torch.zeros_like(local),) + (None,) * 9
        g = torch.zeros_like(ctx.w_y) if grad_loss is None else grad_loss.to(stats.dtype) * ctx.w_y
        g_lse = lse_grad(grad_stats)
        args = (g.contiguous(), local, ctx.tgt, None, None, stats, -1, 0.0, k, softcap, g_lse)
        grad = _slice_bwd(args, backend, inplace)
        return (_marked(grad, local, inplace),) + (None,) * 9


def _slice_bwd(args, backend, inplace):
    """The bwd op on the slice with the global stats (``args`` as the op takes them). In place,
    the logits' buffer is returned, not yet marked."""
    if inplace:
        bwd_inplace_op(backend)(*args)
        return args[1]
    return bwd_op(backend)(*args)


def _marked(grad, local, inplace):
    """The gradient to return; written into the logits, they are marked as modified so that
    autograd refuses any later use of their old value (an empty slice holds nothing to refuse)."""
    if not inplace or local.numel() == 0:
        return grad
    torch.autograd.graph.increment_version(local)
    return local.detach()


class _SmoothShard(torch.autograd.Function):
    """Label smoothing at k = 1 through the backend's soft-row kernels. The kernels take s / C of
    their own slice; with s' = s C_l / (s C_l + (1 - s) C) and the class weights scaled by
    a = (1 - s) + s C_l / C, their target q' equals the global q = w ((1 - s) onehot + s / C) on
    rows whose label this rank owns. Other rows pass a stand-in label a, the slice's largest
    logit, whose q'_a exceeds q_a by dq = w_a (1 - s): taken out of the loss as dq log s_r
    (s_r = sum exp(z - z_a): no cancellation against a large term, z_a being the max), and
    column a of the gradient is written again from the stats (g (t p_a - q_a), no cancellation of
    t p_a - q'_a + dq either). The slice's loss relative to its own logsumexp lse_r and its
    t_r = sum q then combine as loss = sum_r loss_r + t_r (lse - lse_r): three all-reduces of O(N)
    values. The backward is the bwd kernel with the global lse and t (k = 1: t p - q needs
    nothing else): no communication."""

    @staticmethod
    def forward(ctx, local, tgt, w, ignore_index, s, softcap, layout, group, backend, inplace):
        (start, C), (N, CL) = layout, local.shape
        acc = acc_dtype(local.dtype)
        ignored, valid, owned, lbl = _labels(tgt, ignore_index, start, C, CL)
        w_loc = torch.ones(CL, dtype=acc, device=local.device) if w is None else w[start:start + CL]
        alpha = (1 - s) + s * CL / C
        s_loc = s * CL / (s * CL + (1 - s) * C)
        w_kernel = (w_loc * alpha).contiguous()  # the class weights the slice's kernels take
        stand_in = valid & ~owned
        w_y = torch.ones(N, dtype=acc, device=local.device) if w is None else w[torch.where(valid, tgt, 0)]
        if CL > 0:
            top = local.argmax(1)  # the cap is monotone: also the capped logits' argmax
            lbl = torch.where(stand_in, top, lbl)
            loss, st = fwd_op(backend)(local, lbl, w_kernel, None, -1, s_loc, 1.0, True, softcap)
            hi_r, lo_r = st[:, LSE_COL], st[:, LSE_LO_COL]
            # q'_a - q_a = w_a (alpha ((1 - s') + s' / C_l) - s / C) = w_a (1 - s), exactly
            dq = torch.where(stand_in, w_loc[top] * (1 - s), 0)
            # column a: the stand-in, or the label where this rank owns it (the backward writes it again)
            col_a = local.gather(1, lbl.clamp(0, CL - 1)[:, None])
            x_a, z_a = col_a[:, 0].to(acc), _kernel_capped(col_a, softcap, backend).to(acc)
            corr = dq * ((hi_r - z_a) + lo_r)  # dq log s_r; non-finite for NaN / all -inf rows
            loss = torch.where(torch.isfinite(corr), loss - corr, loss)
            # t_r = sum of the slice's q: s / C of its weights, plus (1 - s) w_y where it owns the label
            t_r = torch.where(valid, s / C * w_loc.sum() + torch.where(owned, (1 - s) * w_y, 0), 0)
            q_a = torch.where(stand_in, w_loc[top] * (s / C), 0)  # the global target at a
            # A slice whose row is all -inf is a bad row to the kernel (NaN); in the whole row its
            # classes only have probability 0: their targets (t_r) make the loss infinite, as PyTorch
            loss = torch.where(hi_r == -_INF, torch.where(t_r != 0, _INF, 0), loss)
        else:
            hi_r = torch.full((N,), -_INF, dtype=acc, device=local.device)
            lo_r = loss = t_r = q_a = z_a = x_a = torch.zeros(N, dtype=acc, device=local.device)
        M = _all_reduce(hi_r, "max", group)
        shift = torch.where(torch.isfinite(M), M, 0)
        L = torch.log(_all_reduce(torch.exp((hi_r - shift) + lo_r), "sum", group))
        hi, lo = _torch_rows.lse_split(shift, L)
        # loss_r + t_r (lse - lse_r); an empty slice (t_r = 0, lse_r = -inf) adds nothing
        part = torch.stack([loss + torch.where(t_r != 0, t_r * ((hi - hi_r) + (lo - lo_r)), 0), t_r], 1)
        loss, t = _all_reduce(part, "sum", group).unbind(1)
        # t - q_y, the target off the label, from the full weights every rank holds: no cancelling
        # (0 at C = 1), no collective
        other = torch.where(valid, s / C * ((C if w is None else w.sum()) - w_y), 0)
        loss = loss.masked_fill(M == -_INF, torch.nan)  # -inf on every rank: a bad row
        loss = torch.where(ignored, 0, loss).masked_fill(~ignored & ~valid, torch.nan)
        # the complete form without a dominant class (_schema.py STATS_SOFT_COMPLETE): at k = 1 the
        # backward reads lse and t only
        stats = torch.stack([hi, lo, torch.where(valid, t, 0), *(torch.zeros_like(hi),) * 2,
                             torch.full_like(hi, STATS_SOFT_COMPLETE)], 1)
        ctx.save_for_backward(local, stats)
        ctx.lbl, ctx.stand_in, ctx.x_a, ctx.q_a = lbl, stand_in, x_a, q_a  # x_a: in place overwrites the logits
        ctx.owned, ctx.other, ctx.z_a = owned, other, z_a
        ctx.args = (w_kernel, s_loc, softcap, backend, inplace)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, grad_stats):
        _no_double_backward()
        local, stats = ctx.saved_tensors
        w_kernel, s_loc, softcap, backend, inplace = ctx.args
        if local.shape[1] == 0:
            return (torch.zeros_like(local),) + (None,) * 9
        g = torch.zeros_like(ctx.q_a) if grad_loss is None else grad_loss.to(stats.dtype)
        g_lse = lse_grad(grad_stats)
        args = (g.contiguous(), local, ctx.lbl, w_kernel, None, stats, -1, s_loc, 1.0, softcap, g_lse)
        grad = _slice_bwd(args, backend, inplace)
        # Column a of the label (or of its stand-in) again, from the stats. The kernel's t p - q' at
        # the label cancels: t and q' are rounded apart (t all-reduced, q' from the slice's scaled
        # weights), so a row whose p_y is 1 (C = 1) got ulps of g instead of 0. Written as
        # t (p_y - 1) + (t - q_y), with p_y - 1 = expm1(z_y - lse) and t - q_y the target off the
        # label from the full class weights (forward), as the single-device kernel's sums do. The stand-in's
        # column: g (t p_a - q_a). Both plus g_lse p, times the slope.
        x_a = ctx.x_a
        t, hi, lo = stats[:, SCALE_COL], stats[:, LSE_COL], stats[:, LSE_LO_COL]
        d = (ctx.z_a - hi) - lo
        p_a = torch.exp(d)
        col = g * torch.where(ctx.owned, t * torch.expm1(d) + ctx.other, t * p_a - ctx.q_a)
        if g_lse is not None:
            col = col + g_lse * p_a
        col = col * _slope(x_a, softcap)
        a = ctx.lbl.clamp(0, local.shape[1] - 1)[:, None]
        with torch.no_grad():
            kernel = grad.gather(1, a)[:, 0]
            ours = ctx.stand_in | (ctx.owned & torch.isfinite(col) & torch.isfinite(kernel))
            grad.scatter_(1, a, torch.where(ours, col.to(grad.dtype), kernel)[:, None])
        return (_marked(grad, local, inplace),) + (None,) * 9


def _kernel_capped(x: Tensor, softcap: float, backend: str) -> Tensor:
    """The capped logits of the (N, 1) column x as the backend's kernels round them (the lse
    of one class is its logit), where finite; torch's elsewhere (the kernel's NaN for a bad
    row). Against the kernels' own lse, torch's tanh rounded otherwise would put ulps into
    p = exp(z - lse) where it should be exactly 1."""
    if softcap == 0 or x.numel() == 0:
        return x[:, 0]
    _loss, st = fwd_op(backend)(x.contiguous(), torch.zeros(x.shape[0], dtype=torch.long, device=x.device), None,
                                None, -1, 0.0, 1.0, True, softcap)
    z = st[:, LSE_COL]
    return torch.where(torch.isfinite(z), z, _capped(x[:, 0].to(z.dtype), softcap))


# Rows per chunk of the soft path's slice ops, from the slice's class count (the same chunks on
# every rank is not needed: the collectives run on all N rows at once): the slice's targets q,
# built in torch, and for fp16 / bf16 logits their float32 copy, are held a chunk at a time
# (about 2^22 elements, 16 MiB in float32).
_CHUNK_ELEMS = 1 << 22


def _row_chunks(N: int, CL: int):
    step = max(1, _CHUNK_ELEMS // max(CL, 1))
    return [slice(a, min(a + step, N)) for a in range(0, N, step)]


class _SliceTargets:
    """The global rows' targets q on this rank's classes [start, start + CL), class weights folded
    in, as the slice's ops take them (probability targets): ``_torch_rows.target_rows`` of the
    concatenated logits restricted to the slice, with the same products (so the same roundings as
    the single-device kernels' q). Filled a chunk of rows at a time into one buffer (no fresh
    pages a chunk). Rows whose label is not valid get some q (their results are masked)."""

    def __init__(self, tgt, valid, w, mix, s, layout, CL, acc):
        start, C = layout
        dev = tgt.device
        self.y = torch.where(valid, tgt, 0)
        self.w = None if w is None else w[start:start + CL]
        self.mix = None if mix is None else mix[:, start:start + CL]
        self.CL, self.acc, self.buf = CL, acc, None
        if mix is None:  # smoothing: w_j s / C off the label, w_y ((1 - s) + s / C) at it (row_math.h q_smoothed)
            s_over_C = torch.tensor(s / C, dtype=acc, device=dev)
            self.base = s_over_C.expand(CL) if w is None else self.w * s_over_C
            owned = valid & (self.y >= start) & (self.y < start + CL)
            self.col = torch.where(owned, self.y - start, 0)
            at = (torch.tensor(1 - s, dtype=acc, device=dev) + s_over_C) * (1 if w is None else w[self.y])
            self.at = torch.where(owned, at, self.base[0] if CL else 0)  # else column 0 keeps its own q
            self.at_max = torch.where(owned, at, -_INF)

    def rows(self, rows, out: Tensor | None = None) -> Tensor:
        """q of the rows ``rows`` (a slice), in the shared buffer or in ``out``."""
        n = rows.stop - rows.start
        if self.buf is None and out is None:
            self.buf = torch.empty(n, self.CL, dtype=self.acc, device=self.y.device)
        q = self.buf[:n] if out is None else out
        if self.mix is None:
            q.copy_(self.base.expand(n, self.CL))
            q.scatter_(1, self.col[rows, None], self.at[rows, None])
        else:
            torch.index_select(self.mix, 0, self.y[rows], out=q)
            if self.w is not None:
                q.mul_(self.w)
        return q

    def range(self, rows, q) -> tuple[Tensor, Tensor]:
        """(min, max) of the rows' q on the slice: for smoothing from the class weights (the min as
        base's: its sign is the row's, which is all the dominant-class test reads)."""
        if self.mix is None:
            return self.base.min().expand(q.shape[0]), torch.maximum(self.base.max(), self.at_max[rows])
        return q.amin(1), q.amax(1)


def _acc_rows(local: Tensor, rows, acc) -> Tensor:
    """The slice's rows in the accumulation dtype (fp16 / bf16: a float32 copy, the values the
    kernels would compute with: the probability targets must be in the logits' dtype, and q in
    bf16 would round the targets)."""
    x = local[rows]
    return x if x.dtype == acc else x.to(acc)


def _soft_raw_reduce(raw: Tensor, group) -> tuple[Tensor, ...]:
    """The ranks' ``soft_shard_stats`` merged (row_math.h soft_eps_merge, star_rest_merge): one
    all-reduce MAX of the three maxima, one all-reduce SUM of the three sums rescaled to them and
    of sum q. Returns the seven columns in their order."""
    m = raw[:, 0:6:2]
    M = _all_reduce(m, "max", group)
    shift = torch.where(M == -_INF, 0, M)  # nothing anywhere: (-inf, 0)
    S = _all_reduce(torch.cat([raw[:, 1:6:2] * torch.exp(m - shift), raw[:, 6:]], 1), "sum", group)
    return M[:, 0], S[:, 0], M[:, 1], S[:, 1], M[:, 2], S[:, 2], S[:, 3]


class _SoftShard(torch.autograd.Function):
    """Mixture rows, and smoothed rows at k != 1, through the backend's kernels on the slice.
    The slice's targets are the global q on its classes, given as probability targets (q built
    in torch a chunk of rows at a time, ``_SliceTargets``; the kernels read q_j as is). Forward: the
    ``fwd`` op on the slice (loss_r, lse_r, t_r = sum of the slice's q), one all-reduce MAX of
    (lse_r, max q, -min q) and one SUM of (exp(lse_r - M), loss_r + t_r (M - lse_r), t_r) give lse,
    t, the dominant-class flag and loss = sum_r (loss_r + t_r (M - lse_r)) + t (lse - M), every
    term >= 0 (no cancellation); then ``soft_shard_stats`` on the slice with them, two
    all-reduces of its raw statistics (``_soft_raw_reduce``), finalised by
    ``_torch_rows.soft_cols`` (the reference's own finalise). The backward is the ``bwd`` op on
    the slice with the global stats: no communication."""

    @staticmethod
    def forward(ctx, local, tgt, w, mix, ignore_index, s, k, softcap, layout, group, backend, compute_grad,
                inplace):
        (start, C), (N, CL) = layout, local.shape
        acc = acc_dtype(local.dtype)
        dev = local.device
        ignored, valid, _owned, _lbl = _labels(tgt, ignore_index, start, C, CL)
        targets = _SliceTargets(tgt, valid, w, mix, s, layout, CL, acc)
        hi_r = torch.full((N,), -_INF, dtype=acc, device=dev)
        lo_r, loss_r, t_r = (torch.zeros(N, dtype=acc, device=dev) for _ in range(3))
        q_max = torch.full((N,), -_INF, dtype=acc, device=dev)
        q_min = torch.full((N,), _INF, dtype=acc, device=dev)
        chunks = _row_chunks(N, CL) if CL > 0 else []  # an empty slice adds nothing
        # k = 1 (a mixture: smoothing at k = 1 is _SmoothShard): q is built once and held to the
        # backward, whose gradient it becomes (float32 / float64 logits), rather than gathered
        # from the mixture three times; not with inplace_backward (no (N, C) buffer wanted).
        held = torch.empty(N, CL, dtype=acc, device=dev) if compute_grad and k == 1 and not inplace else None
        for rows in chunks:
            q = targets.rows(rows, None if held is None else held[rows])
            # k = 1: t_r (the kernels' compensated sum) without the |eps| pass, which needs the global lse
            l, st = fwd_op(backend)(_acc_rows(local, rows, acc), q, None, None, -1, 0.0, 1.0, True, softcap)
            loss_r[rows], hi_r[rows], lo_r[rows], t_r[rows] = l, st[:, LSE_COL], st[:, LSE_LO_COL], st[:, SCALE_COL]
            q_min[rows], q_max[rows] = targets.range(rows, q)
        M, q_max, q_min = _all_reduce(torch.stack([hi_r, q_max, -q_min], 1), "max", group).unbind(1)
        q_min = -q_min
        shift = torch.where(torch.isfinite(M), M, 0)
        # relative to the max of the ranks' lse: (M - lse_r) >= 0 (a slice with no target mass adds 0).
        # A slice whose row is all -inf is a bad row to its kernel (NaN); in the whole row its
        # classes have probability 0, and target mass there makes the loss +inf, as on one device.
        rel = torch.where(hi_r == -_INF, _INF, loss_r + t_r * ((shift - hi_r) - lo_r))
        rel = torch.where(t_r != 0, rel, 0)
        S, loss, t = _all_reduce(torch.stack([torch.exp((hi_r - shift) + lo_r), rel, t_r], 1), "sum", group).unbind(1)
        L = torch.log(S)
        hi, lo = _torch_rows.lse_split(shift, L)
        # a row without a finite lse (a NaN or +inf logit, or -inf only) is NaN, as on one device
        loss = torch.where(t != 0, loss + t * L, loss).masked_fill(~torch.isfinite(hi), torch.nan)
        loss = torch.where(ignored, 0, loss).masked_fill(~ignored & ~valid, torch.nan)
        stats = torch.zeros(N, STATS_COLS, dtype=acc, device=dev)
        stats[:, LSE_COL], stats[:, LSE_LO_COL] = hi, lo
        if compute_grad:
            # row_math.h soft_star on the global row
            star = (t > 0) & (q_min >= 0) & ((16 * (t - q_max) <= t) if k == 1 else (2 * q_max > t))
            given = torch.stack([hi, lo, t, torch.zeros_like(t), torch.zeros_like(t),
                                 STATS_SOFT_COMPLETE + star.to(acc)], 1)  # the flag in the tag column
            raw = torch.tensor([-_INF, 0, -_INF, 0, -_INF, 0, 0], dtype=acc, device=dev).repeat(N, 1)
            # k != 1: the op keeps each class's k log|eps| and side for soft_shard_grad (5 bytes a
            # class in float32, held to backward; the gradient's own buffer for float32 / float64
            # logits), unless inplace_backward asks for no (N, C) buffer: bwd recomputes them then.
            keep = k != 1 and not inplace and CL > 0
            eps = torch.empty(N, CL, dtype=acc, device=dev) if keep else None
            side = torch.empty(N, CL, dtype=torch.int8, device=dev) if keep else None
            for rows in chunks:
                kept = (eps[rows], side[rows]) if keep else ()
                q = targets.rows(rows) if held is None else held[rows]
                raw[rows] = soft_shard_stats_op(backend)(_acc_rows(local, rows, acc), q, None, None, given[rows], -1,
                                                         0.0, k, softcap, *kept)
            cols = _torch_rows.soft_cols(t, star, k, hi, _soft_raw_reduce(raw, group))
            stats[:, SCALE_COL:] = torch.where(valid[:, None], torch.stack(cols, 1), 0)
            ctx.kept = [eps, side] if keep else None
            ctx.held = held
            ctx.save_for_backward(local, stats)
            ctx.rows = (tgt, valid, ignored, w, mix)
            ctx.args = (s, k, softcap, layout, backend, inplace)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, grad_stats):
        _no_double_backward()
        local, stats = ctx.saved_tensors
        tgt, valid, ignored, w, mix = ctx.rows
        s, k, softcap, layout, backend, inplace = ctx.args
        N, CL = local.shape
        acc = stats.dtype
        if CL == 0:
            return (local if inplace else torch.empty_like(local),) + (None,) * 12
        # Ignored rows: g = g_lse = 0 and stats 0 (finite), which the kernels turn into 0 without
        # reading the row (row_math.h grad_row_is_zero); bad labels: g = NaN, a NaN row.
        g = torch.zeros(N, dtype=acc, device=local.device) if grad_loss is None else grad_loss.to(acc)
        g = torch.where(valid, g, torch.where(ignored, 0, torch.nan)).contiguous()
        g_lse = lse_grad(grad_stats)
        if g_lse is not None:
            g_lse = torch.where(ignored, 0, g_lse).contiguous()
        stats = torch.where(valid[:, None], stats, 0)
        if ctx.kept is not None:  # from the forward's kept pass; float32 / float64: over eps itself
            eps, side = ctx.kept
            if local.dtype == acc:
                ctx.kept = None  # used up: a second backward (retain_graph) recomputes below
            out = eps if local.dtype == acc else torch.empty_like(local)
            with torch.no_grad():
                soft_shard_grad_op(backend)(g, eps, side, local, stats.contiguous(), out, softcap, g_lse)
            return (out,) + (None,) * 12
        targets = _SliceTargets(tgt, valid, w, mix, s, layout, CL, acc)
        held = ctx.held  # k = 1: the forward's q
        if held is not None and local.dtype == acc:
            ctx.held, grad = None, held  # used up as the gradient: a second backward rebuilds q
        else:  # the gradient's own buffer only where nothing held becomes it
            grad = local if inplace else torch.empty_like(local)
        for rows in _row_chunks(N, CL):
            q = targets.rows(rows) if held is None else held[rows]
            gl = None if g_lse is None else g_lse[rows]
            args = (q, None, None, stats[rows], -1, 0.0, k, softcap, gl)
            with torch.no_grad():
                if grad is held:  # out of place (q read), then over the rows' q
                    held[rows] = bwd_op(backend)(g[rows], local[rows], *args)
                elif local.dtype == acc:  # the gradient written over its rows' copy of the logits (or over them)
                    if not inplace:
                        grad[rows] = local[rows]
                    bwd_inplace_op(backend)(g[rows], grad[rows], *args)
                else:  # fp16 / bf16: over the rows' float32 copy, then rounded once
                    x = _acc_rows(local, rows, acc)
                    bwd_inplace_op(backend)(g[rows], x, *args)
                    grad[rows] = x
        return (_marked(grad, local, inplace),) + (None,) * 12


def vocab_parallel_cross_entropy(
    local_logits: Tensor,
    target: Tensor,
    *,
    group=None,
    class_start: int | None = None,
    num_classes: int | None = None,
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
    inplace_backward: bool = False,
    backend: str = "auto",
):
    """``hardloss_cuda.cross_entropy`` of logits whose classes are split over the ranks of
    ``group`` (tensor / vocab parallelism); called on every rank of the group.

    Args:
        local_logits: this rank's slice ``(N, C_local)`` (or ``(C_local,)``) of the logits, or a
            DTensor sharded on its last dimension (``Shard(-1)``), whose mesh gives the group.
        target: the full ``(N,)`` class indices, the same on every rank.
        group: the process group (default: the world).
        class_start: the first class of this rank's slice; without it the slices follow the
            rank order. Given with ``num_classes`` (the total), no host exchange is needed (what
            torch.compile and CUDA graphs want); otherwise one ``all_gather_object`` finds the
            layout, and checks that the slices tile the classes (uneven slices are fine).
        weight, ignore_index, reduction, label_smoothing, k, mixture, trim, softcap, z_loss,
        return_lse, inplace_backward, backend: as ``cross_entropy``; ``weight`` and ``mixture``
            are the full ``(C,)`` and ``(C, C)`` tensors on every rank (the gradient of a mixture
            is not computed here). Every rank gets the same loss; trimming keeps the same rows on
            every rank.
    """
    local_logits, target, mesh_group, mesh_start, mesh_C = _from_dtensor(local_logits, target)
    if mesh_group is not None:
        group, class_start, num_classes = mesh_group, mesh_start, mesh_C
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed ProcessGroup or None, got {group!r}")
    if group is None:
        group = dist.group.WORLD
    if not isinstance(local_logits, Tensor):
        raise TypeError(f"local_logits must be a Tensor or a DTensor, got {type(local_logits).__name__}")
    if local_logits.dim() not in (1, 2):
        raise ValueError(f"local_logits must be (N, C_local) or (C_local,), got {tuple(local_logits.shape)}")
    if isinstance(target, Tensor) and target.is_floating_point():
        raise ValueError("target: the vocab-parallel loss takes class indices (probability targets are not "
                         "supported; label_smoothing and mixture are)")
    if class_start is None or num_classes is None:
        start, C = shard_layout(local_logits.shape[-1], class_start, group)
        if num_classes is not None and _int_arg(num_classes, "num_classes") != C:
            raise ValueError(f"num_classes={num_classes}, but the ranks' slices add up to {C} classes")
    else:
        start, C = _int_arg(class_start, "class_start"), _int_arg(num_classes, "num_classes")
        if not (0 <= start and start + local_logits.shape[-1] <= C):
            raise ValueError(f"class_start={start}: the slice of {local_logits.shape[-1]} classes lies outside "
                             f"[0, num_classes={C})")
    opts = loss_options(local_logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                        label_smoothing=label_smoothing, k=k, mixture=mixture, trim=trim, softcap=softcap,
                        z_loss=z_loss, return_lse=return_lse, inplace_backward=inplace_backward, backend=backend,
                        num_classes=C, input_name="local_logits")
    if mixture is not None and mixture.requires_grad and torch.is_grad_enabled():
        raise ValueError("mixture: its gradient is not computed by the vocab-parallel loss")
    ignore_index, s, k, cap, which = opts.ignore_index, opts.label_smoothing, opts.k, opts.softcap, opts.backend

    out_shape = () if local_logits.dim() == 1 else local_logits.shape[:1]
    logits = local_logits[None] if local_logits.dim() == 1 else local_logits
    logits = logits.contiguous()
    tgt, w, mix, _acc = op_inputs(target.reshape(-1), weight, mixture, logits.dtype)
    layout = (start, C)
    inplace = opts.inplace_backward and torch.is_grad_enabled() and logits.requires_grad
    if mix is None and s > 0 and k == 1:
        loss, stats = _SmoothShard.apply(logits, tgt, w, ignore_index, s, cap, layout, group, which, inplace)
    elif mix is not None or s > 0:
        compute_grad = torch.is_grad_enabled() and logits.requires_grad
        loss, stats = _SoftShard.apply(logits, tgt, w, mix, ignore_index, s, k, cap, layout, group, which,
                                       compute_grad, inplace)
    else:
        loss, stats = _OneHotShard.apply(logits, tgt, w, ignore_index, k, cap, layout, group, which, inplace)
    # autocast: a float32 loss for half logits, as cross_entropy (functional.py)
    amp = logits.dtype in (torch.float16, torch.bfloat16) and autocast_dtype(logits.device) is not None
    return finish_rows(loss, stats, tgt, w, opts, out_shape, torch.float32 if amp else logits.dtype)

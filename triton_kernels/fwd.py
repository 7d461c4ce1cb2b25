"""The forward kernels: per row the loss and the stats the backward needs (docs/ROW_MATH.md,
the layout of hardloss_cuda/_schema.py). The math is rowmath.py's.

``onehot_fwd_kernel`` (class index, no label smoothing, no mixture): one read of the row. Over
the non-target classes it keeps the running max m, s1 = sum exp(z - m) and (when the gradient
is wanted) sk = sum exp(k (z - m)); with the target logit z_y that gives the loss, the
logsumexp and stats = (lse, lse_lo, f_y, m, log_c, 0) (rowmath.onehot_finalize).

With ``RAW`` (the op ``shard_stats``) it stores (m, s1, sk) themselves and nothing else; a
label outside [0, C) then excludes no class.

``soft_fwd_kernel`` (label smoothing, a mixture row W[y], probability targets, with or without
class weights; the target row q is recomputed from (target, weight, mixture) wherever it is
needed, never stored):
  pass 1: online logsumexp, t = sum q, min / max q and the loss sum q (m - z) + t log s
          (rowmath.online_lse_loss: without a gradient the row is read once);
  pass 2, only when the gradient is wanted with k != 1 (rowmath.soft_eps_pass): log|eps_j| per
          class, S_neg and an online max/sum of k log eps over the positive classes (so k = 8
          cannot underflow S_pos), the dominant class (qh > 1/2) from the other classes,
          reduced to stats = (lse, lse_lo, t, c_pos, f_star, STATS_SOFT_COMPLETE + star)
          (rowmath.soft_finalize). At k = 1 the stats are the deferred form (lse, lse_lo, t,
          m, log s, STATS_SOFT_DEFERRED + star) (_schema.py): the backward sums f* itself.

``soft_shard_kernel`` (the op ``soft_shard_stats``): a soft row's pass 2 over the classes at hand
given the row's global (lse, lse_lo, t, star) in stats, its statistics stored unfinalised:
(m_neg, s_neg, m_pos, s_pos) of k log|eps| (k != 1), then over the classes but the dominant one
of a row that has one, (m, s) of log p and sum q (row_math.h soft_shard_class). With ``KEEP``
(its kept pass, k != 1) the same pass also stores each class's k log|eps| and side
(rowmath.soft_eps_sums), which bwd.py soft_kept_bwd_kernel (the op soft_shard_grad) reads.

Together with the backward (bwd.py) that is 3 N C s bytes (read, read, write) and a few
numbers a row kept in between, instead of producing the gradient in the forward pass (an
(N, C) buffer held until backward and a read + write to scale it: 4 N C s).
"""

import triton
import triton.language as tl

from .rowmath import (
    finish_rows,
    is_star_k1,
    load_labels,
    load_logits,
    load_stats,
    lse_split,
    onehot_finalize,
    online_lse2,
    online_lse_loss,
    q_tile,
    row_setup,
    soft_eps_pass,
    soft_eps_sums,
    soft_labels,
    soft_loss,
    soft_star,
    soft_tag,
    soft_tag_read,
    softcap,
    store_stats,
)


@triton.jit
def onehot_fwd_kernel(
    z_ptr, y_ptr, w_ptr, loss_ptr, stats_ptr,
    N, C, ignore_index, k: tl.float64, cap: tl.float64,
    HAS_W: tl.constexpr, GRAD: tl.constexpr, HAS_CAP: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
    RAW: tl.constexpr = False,
):
    ACC: tl.constexpr = loss_ptr.dtype.element_ty  # float32, or float64 for float64 logits
    k = tl.full([], k, ACC)  # passed as fp64 so that float64 logits keep k exact
    rows, rmask, row_off, cols0 = row_setup(tl.program_id(0), N, C, ROWS, BLOCK)
    yc, ignored, bad = load_labels(y_ptr, rows, rmask, C, ignore_index)
    valid = (~ignored) & (~bad)
    cap = tl.full([], cap, ACC)
    z_y = tl.load(z_ptr + row_off + yc, mask=rmask, other=0.0).to(ACC)
    if HAS_CAP:
        z_y = softcap(z_y, cap)
    if HAS_W:
        w_y = tl.load(w_ptr + yc, mask=rmask, other=0.0).to(ACC)
    else:
        w_y = tl.full([ROWS], 1.0, ACC)

    # The only pass: statistics over the classes i != y (the target logit is excluded as
    # -inf, which adds nothing). Ignored and bad rows take the same path with yc = label or
    # 0, which still gives the whole row's logsumexp.
    m = tl.full([ROWS], float("-inf"), ACC)
    s1 = tl.zeros([ROWS], ACC)
    sk = tl.zeros([ROWS], ACC)
    for start in range(0, C, BLOCK):
        cols = start + cols0
        z, mask = load_logits(z_ptr, row_off, rmask, cols, C, float("-inf"), ACC, cap, HAS_CAP)
        if RAW:  # shard_stats: an out-of-range label excludes no class
            z = tl.where((cols[None, :] == yc[:, None]) & valid[:, None], float("-inf"), z)
        else:
            z = tl.where(cols[None, :] == yc[:, None], float("-inf"), z)
        m, s1, sk = online_lse2(m, s1, sk, z, k, GRAD)

    if RAW:  # shard_stats: the statistics themselves, unfinalised (a vocab-parallel loss reduces
        zero = tl.zeros([ROWS], ACC)  # them over the ranks first)
        store_stats(stats_ptr, rows, rmask, m, s1, sk, zero, zero, zero)
        return
    lse, lse_lo, nll, f_y, m_out, log_c = onehot_finalize(m, s1, sk, z_y, w_y, k)
    tl.store(loss_ptr + rows, finish_rows(nll, ignored, bad), mask=rmask)
    if GRAD:
        keep = valid
    else:
        keep = rows < 0  # nothing: columns 2.. are 0 without a gradient (see launch.fwd)
    store_stats(stats_ptr, rows, rmask, lse, lse_lo, tl.where(keep, f_y, 0.0),
                tl.where(keep, m_out, 0.0), tl.where(keep, log_c, 0.0), tl.zeros([ROWS], ACC))


@triton.jit
def soft_fwd_kernel(
    z_ptr, t_ptr, w_ptr, mix_ptr, loss_ptr, stats_ptr,
    N, C, ignore_index, s: tl.float64, k: tl.float64, cap: tl.float64,
    MODE: tl.constexpr, HAS_W: tl.constexpr, GRAD: tl.constexpr, EPS: tl.constexpr, HAS_CAP: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = loss_ptr.dtype.element_ty  # float32, or float64 for float64 logits
    s = tl.full([], s, ACC)  # passed as fp64 so that float64 logits keep s and k exact
    k = tl.full([], k, ACC)
    cap = tl.full([], cap, ACC)
    rows, rmask, row_off, cols0 = row_setup(tl.program_id(0), N, C, ROWS, BLOCK)
    yc, ignored, bad = soft_labels(t_ptr, rows, rmask, C, ignore_index, MODE, ROWS)
    valid = (~ignored) & (~bad)

    # Pass 1: lse, t = sum q, min / max q and the loss.
    m = tl.full([ROWS], float("-inf"), ACC)
    se = tl.zeros([ROWS], ACC)
    t = tl.zeros([ROWS], ACC)
    acc = tl.zeros([ROWS], ACC)
    qmin = tl.full([ROWS], float("inf"), ACC)
    qmax = tl.full([ROWS], float("-inf"), ACC)
    for start in range(0, C, BLOCK):
        cols = start + cols0
        z, mask = load_logits(z_ptr, row_off, rmask, cols, C, float("-inf"), ACC, cap, HAS_CAP)
        q = q_tile(t_ptr, w_ptr, mix_ptr, row_off, yc, valid, cols, mask, C, s, MODE, HAS_W, ACC)
        m, se, t, acc, qmin, qmax = online_lse_loss(m, se, t, acc, qmin, qmax, z, q, mask)
    log_s = tl.log(se)
    lse, lse_lo = lse_split(m, log_s)
    tl.store(loss_ptr + rows, finish_rows(soft_loss(m, se, t, acc), ignored, bad), mask=rmask)

    if EPS:  # a gradient with k != 1 (k == 1 needs only lse and t: rowmath.soft_fj)
        # Pass 2: the |eps|^k statistics, written in the complete form (c_pos, f_star).
        star = soft_star(t, qmin, qmax)
        c_pos, f_star = soft_eps_pass(z_ptr, t_ptr, w_ptr, mix_ptr, row_off, rmask & valid, yc, cols0, C, s, m,
                                      log_s, lse, t, star, k, cap, MODE, HAS_W, HAS_CAP, ROWS, BLOCK, ACC)
        store_stats(stats_ptr, rows, rmask, lse, lse_lo, tl.where(valid, t, 0.0),
                    tl.where(valid, c_pos, 0.0), tl.where(valid, f_star, 0.0),
                    tl.where(valid, soft_tag(star, False), 0.0))
    else:
        zero = tl.zeros([ROWS], ACC)
        if GRAD:  # k == 1: the deferred form (m, log s, and whether the dominant class takes f*
            # from the others): bwd.py sums f* in its one pass, no pass 2 here
            t_kept = tl.where(valid, t, 0.0)
            star_k1 = is_star_k1(soft_star(t, qmin, qmax), qmax, t)
            tag = tl.where(valid, soft_tag(star_k1, True), 0.0)
            store_stats(stats_ptr, rows, rmask, lse, lse_lo, t_kept, tl.where(valid, m, 0.0),
                        tl.where(valid, log_s, 0.0), tag)
        else:
            store_stats(stats_ptr, rows, rmask, lse, lse_lo, zero, zero, zero, zero)


@triton.jit
def soft_shard_kernel(
    z_ptr, t_ptr, w_ptr, mix_ptr, st_ptr, out_ptr, kept_ptr, side_ptr,
    N, C, ignore_index, s: tl.float64, k: tl.float64, cap: tl.float64,
    MODE: tl.constexpr, HAS_W: tl.constexpr, K_IS_ONE: tl.constexpr, HAS_CAP: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, KEEP: tl.constexpr,
):
    ACC: tl.constexpr = out_ptr.dtype.element_ty
    s = tl.full([], s, ACC)
    k = tl.full([], k, ACC)
    cap = tl.full([], cap, ACC)
    rows, rmask, row_off, cols0 = row_setup(tl.program_id(0), N, C, ROWS, BLOCK)
    yc, ignored, bad = soft_labels(t_ptr, rows, rmask, C, ignore_index, MODE, ROWS)
    valid = (~ignored) & (~bad)
    lse, lse_lo, t, _c_pos, _f_star, star_col = load_stats(st_ptr, rows, rmask, ACC)
    _deferred, star = soft_tag_read(star_col)
    # log p = (z - lse) - lse_lo: soft_eps_sums's (z - m) - log_s with the row's global lse
    m_neg, s_neg, m_pos, s_pos, m_rest, s_rest, q_rest = soft_eps_sums(
        z_ptr, t_ptr, w_ptr, mix_ptr, row_off, rmask & valid, yc, cols0, C, s, lse, lse_lo, t, star, k, cap, MODE,
        HAS_W, HAS_CAP, K_IS_ONE, ROWS, BLOCK, ACC, kept_ptr, side_ptr, rmask, KEEP)
    base = out_ptr + rows.to(tl.int64) * 7
    ninf = float("-inf")
    tl.store(base, tl.where(valid, m_neg, ninf), mask=rmask)
    tl.store(base + 1, tl.where(valid, s_neg, 0.0), mask=rmask)
    tl.store(base + 2, tl.where(valid, m_pos, ninf), mask=rmask)
    tl.store(base + 3, tl.where(valid, s_pos, 0.0), mask=rmask)
    tl.store(base + 4, tl.where(valid, m_rest, ninf), mask=rmask)
    tl.store(base + 5, tl.where(valid, s_rest, 0.0), mask=rmask)
    tl.store(base + 6, tl.where(valid, q_rest, 0.0), mask=rmask)

"""Soft path (label smoothing, a mixture row W[y], probability targets, with or without
class weights): docs/ROW_MATH.md "Soft path". The target row q is recomputed from
(target, weight, mixture) wherever it is needed, never stored.

Forward (``soft_fwd_kernel``):
  pass 1: online logsumexp, t = sum q and the loss sum q (lse - z) (rowmath.online_lse_loss:
          the loss needs no second pass, so without a gradient the row is read once);
  pass 2, only when the gradient is wanted: log|eps_j| per class, S_neg and an online
          max/sum of k log eps over the positive classes (so k = 8 cannot underflow S_pos),
          the dominant class (qh > 1/2) from the other classes, reduced to
          stats = (lse, lse_lo, t, c_pos, f_star, star) (rowmath.soft_finalize).
Backward (``soft_bwd_kernel``): one pass, elementwise: g_j = gl soft_fj(z_j, q_j, stats),
written in place of the logits if asked.
"""

import triton
import triton.language as tl

from .rowmath import (
    MIXTURE,
    PROBS,
    SMOOTH,
    finish_rows,
    finish_tile,
    load_labels,
    load_stats,
    load_tile,
    log_abs_eps,
    lse_split,
    online_lse,
    online_lse_loss,
    q_tile,
    row_setup,
    skip_rows,
    soft_finalize,
    soft_fj,
    soft_loss,
    soft_star,
    star_log_abs_eps,
    store_stats,
    store_tile,
)

__all__ = ["soft_fwd_kernel", "soft_bwd_kernel", "SMOOTH", "MIXTURE", "PROBS"]


@triton.jit
def soft_labels(t_ptr, rows, rmask, C, ignore_index, MODE: tl.constexpr, ROWS: tl.constexpr):
    """(yc, ignored, bad) for class-index modes; probability rows have no label, nothing is
    ignored or bad."""
    if MODE == 2:
        yc = tl.zeros([ROWS], tl.int64)
        ignored = rows < 0
        bad = rows < 0
    else:
        yc, ignored, bad = load_labels(t_ptr, rows, rmask, C, ignore_index)
    return yc, ignored, bad


@triton.jit
def soft_fwd_kernel(
    z_ptr, t_ptr, w_ptr, mix_ptr, loss_ptr, stats_ptr,
    N, C, ignore_index, s: tl.float64, k: tl.float64,
    MODE: tl.constexpr, HAS_W: tl.constexpr, GRAD: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = loss_ptr.dtype.element_ty  # float32, or float64 for float64 logits
    s = tl.full([], s, ACC)  # passed as fp64 so that float64 logits keep s and k exact
    k = tl.full([], k, ACC)
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
        z, mask = load_tile(z_ptr, row_off, rmask, cols, C, float("-inf"), ACC)
        q = q_tile(t_ptr, w_ptr, mix_ptr, row_off, yc, valid, cols, mask, C, s, MODE, HAS_W, ACC)
        m, se, t, acc, qmin, qmax = online_lse_loss(m, se, t, acc, qmin, qmax, z, q, mask)
    log_s = tl.log(se)
    lse, lse_lo = lse_split(m, log_s)
    tl.store(loss_ptr + rows, finish_rows(soft_loss(m, se, t, acc), ignored, bad), mask=rmask)

    if GRAD:
        # Pass 2: S_neg and the online (m_pos, s_pos) of k log eps over the positive classes;
        # the dominant class (if any) apart, from the logsumexp and the q of the others.
        t_inv = 1.0 / tl.where(t != 0.0, t, 1.0)  # qh = q / t; t == 0 gives f = t F = 0
        star = soft_star(t, qmin, qmax)
        s_neg = tl.zeros([ROWS], ACC)
        m_pos = tl.full([ROWS], float("-inf"), ACC)
        s_pos = tl.zeros([ROWS], ACC)
        m_rest = tl.full([ROWS], float("-inf"), ACC)
        s_rest = tl.zeros([ROWS], ACC)
        q_rest = tl.zeros([ROWS], ACC)
        for start in range(0, C, BLOCK):
            cols = start + cols0
            z, mask = load_tile(z_ptr, row_off, rmask & valid, cols, C, 0.0, ACC)
            q = q_tile(t_ptr, w_ptr, mix_ptr, row_off, yc, valid, cols, mask, C, s,
                       MODE, HAS_W, ACC)
            log_p = (z - m[:, None]) - log_s[:, None]
            other = mask & ~(star[:, None] & (2.0 * q > t[:, None]))
            le, neg = log_abs_eps(log_p, q * t_inv[:, None])
            kl = k * le
            s_neg += tl.sum(tl.where(neg & other, tl.exp(kl), 0.0), 1)
            m_pos, s_pos = online_lse(m_pos, s_pos, tl.where(neg | (~other), float("-inf"), kl))
            m_rest, s_rest = online_lse(m_rest, s_rest, tl.where(other, log_p, float("-inf")))
            q_rest += tl.sum(tl.where(other, q, 0.0), 1)
        le_star, neg_star = star_log_abs_eps(m_rest, s_rest, q_rest, t, lse)
        c_pos, f_star = soft_finalize(s_neg, m_pos, s_pos, t, star, k * le_star, neg_star)
        store_stats(stats_ptr, rows, rmask, lse, lse_lo, tl.where(valid, t, 0.0),
                    tl.where(valid, c_pos, 0.0), tl.where(valid, f_star, 0.0),
                    tl.where(valid & star, 1.0, 0.0))
    else:
        zero = tl.zeros([ROWS], ACC)
        store_stats(stats_ptr, rows, rmask, lse, lse_lo, zero, zero, zero, zero)


@triton.jit
def soft_bwd_kernel(
    gl_ptr, z_ptr, t_ptr, w_ptr, mix_ptr, stats_ptr, out_ptr,
    N, C, ignore_index, s: tl.float64, k: tl.float64,
    MODE: tl.constexpr, HAS_W: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = stats_ptr.dtype.element_ty
    s = tl.full([], s, ACC)
    k = tl.full([], k, ACC)
    rows, rmask, row_off, cols0 = row_setup(tl.program_id(0), N, C, ROWS, BLOCK)
    yc, ignored, bad = soft_labels(t_ptr, rows, rmask, C, ignore_index, MODE, ROWS)
    gl = tl.load(gl_ptr + rows, mask=rmask, other=0.0).to(ACC)
    lse, lse_lo, t, c_pos, f_star, star = load_stats(stats_ptr, rows, rmask, ACC)
    # Rows that read their logits (and target row): valid, and not a zero-gradient row.
    live = rmask & (~ignored) & (~bad) & (~skip_rows(gl, lse, t))
    for start in range(0, C, BLOCK):
        cols = start + cols0
        z, mask = load_tile(z_ptr, row_off, live, cols, C, 0.0, ACC)
        q = q_tile(t_ptr, w_ptr, mix_ptr, row_off, yc, live, cols, mask, C, s, MODE, HAS_W, ACC)
        g = gl[:, None] * soft_fj(z, q, lse, lse_lo, t, c_pos, f_star, star, k)
        g = finish_tile(tl.where(live[:, None], g, 0.0), ignored, bad)
        store_tile(out_ptr, row_off, cols, rmask[:, None] & (cols < C)[None, :], g)

"""Soft path (label smoothing, a mixture row W[y], probability targets, with or without
class weights): ROW_MATH.md "Soft path", three passes over the row.

Pass 1: online lse and t = sum q. Pass 2: log|eps_j| per class, S_neg and an online
max/sum of k log eps over the positive classes (so k = 8 cannot underflow S_pos), and the
loss sum_j q_j (lse - z_j). Pass 3: the gradient.
"""

import triton
import triton.language as tl

from .rowmath import (
    finish_rows,
    finish_tile,
    load_labels,
    load_tile,
    online_lse,
    row_setup,
    store_tile,
)

# Target modes (constexpr MODE).
SMOOTH = 0  # class index with label smoothing: q = w ((1 - s) onehot + s / C)
MIXTURE = 1  # class index with a mixture matrix: q = w W[y]
PROBS = 2  # probability rows: q = w ((1 - s) P + s / C)


@triton.jit
def q_tile(t_ptr, w_ptr, mix_ptr, row_off, yc, valid, cols, mask, C, s,
           MODE: tl.constexpr, HAS_W: tl.constexpr, ACC: tl.constexpr):
    """The target q on a (ROWS, BLOCK) tile, weights folded in (ROW_MATH.md section 1);
    0 outside the row and on invalid (ignored / out-of-range) rows."""
    if MODE == 0:
        q = tl.where(cols[None, :] == yc[:, None], 1.0 - s, 0.0) + s / C
    elif MODE == 1:
        # yc is clamped into [0, C): a bad label never addresses outside W.
        q = tl.load(mix_ptr + yc.to(tl.int64)[:, None] * C + cols[None, :], mask=mask, other=0.0)
        q = q.to(ACC)
    else:
        q = tl.load(t_ptr + row_off[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
        q = q * (1.0 - s) + s / C
    if HAS_W:
        q = q * tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(ACC)[None, :]
    return tl.where(mask & valid[:, None], q, 0.0)


@triton.jit
def log_abs_eps(z, q, lse, t_inv):
    """(k-independent) log|eps_j| and the negative-class flag, eps = p - q / t.
    Classes with no target mass have eps = p > 0: kept in the log domain (z - lse) so that
    a small k does not lose classes whose probability underflows."""
    lp = z - lse[:, None]
    qh = q * t_inv[:, None]
    eps = tl.exp(lp) - qh
    neg = (qh != 0.0) & (eps < 0.0)
    le = tl.where(qh == 0.0, lp, tl.log(tl.abs(eps)))
    return le, neg


@triton.jit
def soft_kernel(
    z_ptr, t_ptr, w_ptr, mix_ptr, loss_ptr, lse_ptr, g_ptr,
    N, C, ignore_index, s: tl.float64, k: tl.float64,
    MODE: tl.constexpr, HAS_W: tl.constexpr, WRITE_GRAD: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = loss_ptr.dtype.element_ty  # float32, or float64 for float64 logits
    s = tl.full([], s, ACC)  # passed as fp64 so that float64 logits keep s and k exact
    k = tl.full([], k, ACC)
    rows, rmask, row_off, cols0 = row_setup(tl.program_id(0), N, C, ROWS, BLOCK)
    if MODE == 2:  # probability rows: no labels, nothing ignored
        yc = tl.zeros([ROWS], tl.int64)
        ignored = rows < 0
        bad = rows < 0
    else:
        yc, ignored, bad = load_labels(t_ptr, rows, rmask, C, ignore_index)
    valid = (~ignored) & (~bad)

    # Pass 1: lse and t = sum q.
    m = tl.full([ROWS], float("-inf"), ACC)
    se = tl.zeros([ROWS], ACC)
    t = tl.zeros([ROWS], ACC)
    for start in range(0, C, BLOCK):
        cols = start + cols0
        z, mask = load_tile(z_ptr, row_off, rmask, cols, C, float("-inf"), ACC)
        m, se = online_lse(m, se, z)
        t += tl.sum(q_tile(t_ptr, w_ptr, mix_ptr, row_off, yc, valid, cols, mask, C, s,
                           MODE, HAS_W, ACC), 1)
    lse = m + tl.log(se)
    t_inv = 1.0 / tl.where(t != 0.0, t, 1.0)  # qh = q / t; t == 0 gives f = t F = 0

    # Pass 2: loss = sum q (lse - z) (no t lse - sum q z cancellation); S_neg; online
    # (m_pos, s_pos) of k log eps over the positive classes.
    loss = tl.zeros([ROWS], ACC)
    s_neg = tl.zeros([ROWS], ACC)
    m_pos = tl.full([ROWS], float("-inf"), ACC)
    s_pos = tl.zeros([ROWS], ACC)
    for start in range(0, C, BLOCK):
        cols = start + cols0
        z, mask = load_tile(z_ptr, row_off, rmask, cols, C, 0.0, ACC)
        q = q_tile(t_ptr, w_ptr, mix_ptr, row_off, yc, valid, cols, mask, C, s,
                   MODE, HAS_W, ACC)
        loss += tl.sum(tl.where(q != 0.0, q * (lse[:, None] - z), 0.0), 1)
        if WRITE_GRAD:
            le, neg = log_abs_eps(z, q, lse, t_inv)
            kl = k * le
            s_neg += tl.sum(tl.where(neg & mask, tl.exp(kl), 0.0), 1)
            m_pos, s_pos = online_lse(m_pos, s_pos, tl.where(neg | (~mask), float("-inf"), kl))
    tl.store(loss_ptr + rows, finish_rows(loss, ignored, bad), mask=rmask)
    tl.store(lse_ptr + rows, lse, mask=rmask)

    if WRITE_GRAD:
        # Pass 3: f = -t |eps|^k on negatives, t S_neg eps^k / S_pos on positives
        # (0 where there is no positive mass: S_pos == 0).
        no_pos = m_pos == float("-inf")
        m_ref = tl.where(no_pos, 0.0, m_pos)
        pos_scale = tl.where(no_pos, 0.0, t * s_neg / tl.where(no_pos, 1.0, s_pos))
        for start in range(0, C, BLOCK):
            cols = start + cols0
            z, mask = load_tile(z_ptr, row_off, rmask, cols, C, 0.0, ACC)
            q = q_tile(t_ptr, w_ptr, mix_ptr, row_off, yc, valid, cols, mask, C, s,
                       MODE, HAS_W, ACC)
            le, neg = log_abs_eps(z, q, lse, t_inv)
            kl = k * le
            f = tl.where(neg, -t[:, None] * tl.exp(kl),
                         pos_scale[:, None] * tl.exp(kl - m_ref[:, None]))
            store_tile(g_ptr, row_off, cols, mask, finish_tile(f, ignored, bad))

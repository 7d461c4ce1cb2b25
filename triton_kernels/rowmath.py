"""Per-row math shared by the Triton kernels: the twin of csrc/row_math.h (docs/ROW_MATH.md).

Every helper works on a tile of ROWS rows: per-row statistics are (ROWS,) vectors, column
blocks are (ROWS, BLOCK) tiles. Only tl.exp/tl.log/tl.maximum & co. are used (no libdevice),
so the same code runs compiled on a GPU and under TRITON_INTERPRET=1.

The forward kernels reduce a row to four numbers, ``stats`` (see STATS below); the backward
kernels rebuild the pseudo-gradient from them elementwise in one pass over the row. The
helpers that produce the four numbers (``onehot_finalize``, ``soft_finalize``) and those that
consume them (``onehot_fj``, ``soft_f``) sit side by side here so that the layout is
written once.
"""

import triton
import triton.language as tl

# stats (N, 4) in the accumulation dtype, column 0 public (hardloss_cuda/_schema.py):
#   one-hot row: (lse, m, log_c, f_y)     f_j = w_y exp(k (z_j - m) + log_c), j != y
#   soft row:    (lse, t, m_pos, pos_scale)   f_j = soft_f(k log|eps_j|, eps_j < 0)
# Ignored / out-of-range rows, and soft rows when the gradient was not asked for, keep
# columns 1..3 at 0.
STATS_COLS = 4


@triton.jit
def row_setup(pid, N, C, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Row indices, row mask, int64 row offsets (N * C can exceed 2**31), column lanes."""
    rows = pid * ROWS + tl.arange(0, ROWS)
    rmask = rows < N
    row_off = rows.to(tl.int64) * C
    cols0 = tl.arange(0, BLOCK)
    return rows, rmask, row_off, cols0


@triton.jit
def load_labels(y_ptr, rows, rmask, C, ignore_index):
    """Labels, ignored / out-of-range flags, and the label clamped into [0, C) so that no
    address is ever formed from an out-of-range label (those rows end as NaN)."""
    y = tl.load(y_ptr + rows, mask=rmask, other=0)
    ignored = y == ignore_index
    in_range = (y >= 0) & (y < C)
    bad = (~ignored) & (~in_range)
    yc = tl.where(in_range, y, 0)
    return yc, ignored, bad


@triton.jit
def load_tile(ptr, row_off, rmask, cols, C, other, ACC: tl.constexpr):
    """One (ROWS, BLOCK) tile of a row-major (N, C) array, upcast right after the load
    (bf16 arithmetic is not to be trusted in the interpreter; fp32 accumulation anyway).
    Rows outside ``rmask`` are not read (masked lanes issue no memory access)."""
    mask = rmask[:, None] & (cols < C)[None, :]
    x = tl.load(ptr + row_off[:, None] + cols[None, :], mask=mask, other=other)
    return x.to(ACC), mask


@triton.jit
def store_tile(ptr, row_off, cols, mask, x):
    tl.store(ptr + row_off[:, None] + cols[None, :], x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def store_stats(ptr, rows, rmask, c0, c1, c2, c3):
    """Row ``rows`` of the (N, 4) stats array: four (ROWS,) vectors."""
    base = ptr + rows.to(tl.int64) * 4
    tl.store(base, c0, mask=rmask)
    tl.store(base + 1, c1, mask=rmask)
    tl.store(base + 2, c2, mask=rmask)
    tl.store(base + 3, c3, mask=rmask)


@triton.jit
def load_stats(ptr, rows, rmask, ACC: tl.constexpr):
    base = ptr + rows.to(tl.int64) * 4
    c0 = tl.load(base, mask=rmask, other=0.0).to(ACC)
    c1 = tl.load(base + 1, mask=rmask, other=0.0).to(ACC)
    c2 = tl.load(base + 2, mask=rmask, other=0.0).to(ACC)
    c3 = tl.load(base + 3, mask=rmask, other=0.0).to(ACC)
    return c0, c1, c2, c3


@triton.jit
def skip_rows(gl, lse):
    """Rows whose gradient is 0 without looking at their logits: incoming gradient 0 and a
    finite logsumexp (so no NaN / inf logit that would make 0 * f NaN). Trimmed-away rows
    of a trimmed mean are such rows; the backward pass does not read them."""
    finite = (lse == lse) & (tl.abs(lse) != float("inf"))
    return (gl == 0.0) & finite


@triton.jit
def online_lse(m, s, x):
    """Fold a tile x into the running per-row (max m, s = sum exp(x - m)).
    -inf entries (masked lanes, excluded classes) add nothing."""
    m_new = tl.maximum(m, tl.max(x, 1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing yet: no -inf - -inf
    s = s * tl.exp(m - m_ref) + tl.sum(tl.exp(x - m_ref[:, None]), 1)
    return m_new, s


@triton.jit
def online_lse2(m, s1, sk, x, k, WITH_SK: tl.constexpr):
    """online_lse for s1 = sum exp(x - m) and sk = sum exp(k (x - m)) with one shared max
    (the one-hot statistics: sk >= 1 once a finite entry was seen, so it never underflows).
    Without WITH_SK (no gradient asked for) sk is left alone: one exp per element less."""
    m_new = tl.maximum(m, tl.max(x, 1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    d_old = m - m_ref
    d = x - m_ref[:, None]
    s1 = s1 * tl.exp(d_old) + tl.sum(tl.exp(d), 1)
    if WITH_SK:
        sk = sk * tl.exp(k * d_old) + tl.sum(tl.exp(k * d), 1)
    return m_new, s1, sk


@triton.jit
def online_lse_loss(m, se, t, acc, z, q):
    """Soft path, pass 1: fold a tile into the running (max m, se = sum exp(z - m),
    t = sum q, acc = sum q (m - z)). The loss sum q (lse - z) is then
    acc + t log(se) (``soft_loss``), so the loss needs no second pass over the row.
    Every term is >= 0 for q >= 0 (m is the running max, and a rise of the max adds
    t (m_new - m_old) >= 0): no t lse - sum q z cancellation. Classes with q = 0 are skipped
    (a -inf logit there adds 0, not 0 * inf); q > 0 on a -inf logit gives an infinite loss."""
    m_new = tl.maximum(m, tl.max(z, 1))
    m_ref_old = tl.where(m == float("-inf"), 0.0, m)
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    se = se * tl.exp(m - m_ref) + tl.sum(tl.exp(z - m_ref[:, None]), 1)
    acc = acc + t * (m_ref - m_ref_old)
    acc += tl.sum(tl.where(q != 0.0, q * (m_ref[:, None] - z), 0.0), 1)
    t += tl.sum(q, 1)
    return m_new, se, t, acc


@triton.jit
def soft_loss(se, t, acc):
    return acc + t * tl.log(se)


@triton.jit
def log1p(x):
    """log(1 + x) accurate for small x >= 0 without libdevice (Goldberg's correction)."""
    u = 1.0 + x
    den = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(u == 1.0, x, tl.log(u) * (x / den))


@triton.jit
def onehot_finalize(m, s1, sk, z_y, w_y, k):
    """row_math.h's onehot_finalize: from the statistics over the non-target classes
    (m, s1, sk) and the target logit z_y, (lse, loss, f_y, m', log_c) with
    f_j = w_y exp(k (z_j - m') + log_c) for j != y (``onehot_fj``).

    With d = lse_not - z_y: loss / w_y = softplus(d) and a = log(1 - p_y) = -softplus(-d),
    both without cancellation. z_y = +inf makes the row NaN (inf - inf, as PyTorch).
    No non-target class with p > 0 (C == 1, or all others -inf): m' = 0, log_c = -inf, so
    every f_j = 0 (and f_y = 0 when C == 1)."""
    no_other = m == float("-inf")
    lse_not = tl.where(no_other, float("-inf"), m + tl.log(s1))
    d = lse_not - z_y
    d = tl.where(z_y == float("inf"), float("nan"), d)
    sp = log1p(tl.exp(-tl.abs(d)))  # NaN in, NaN out
    lse = tl.maximum(lse_not, z_y) + sp  # logaddexp(lse_not, z_y)
    loss = w_y * (tl.maximum(d, 0.0) + sp)  # softplus(d)
    a = tl.minimum(d, 0.0) - sp  # -softplus(-d)
    f_y = 0.0 - w_y * tl.exp(k * a)  # 0 - x: +0 for C == 1
    m_out = tl.where(no_other, 0.0, m)
    log_c = tl.where(no_other, float("-inf"), k * a - tl.log(sk))
    return lse, loss, f_y, m_out, log_c


@triton.jit
def onehot_fj(z, m, log_c, w_y, k):
    """row_math.h's onehot_fj on a (ROWS, BLOCK) tile (per-row m, log_c, w_y)."""
    return w_y[:, None] * tl.exp(k * (z - m[:, None]) + log_c[:, None])


# Soft target modes (constexpr MODE).
SMOOTH = 0  # class index with label smoothing: q = w ((1 - s) onehot + s / C)
MIXTURE = 1  # class index with a mixture matrix: q = w W[y]
PROBS = 2  # probability rows: q = w ((1 - s) P + s / C)


@triton.jit
def q_tile(t_ptr, w_ptr, mix_ptr, row_off, yc, valid, cols, mask, C, s,
           MODE: tl.constexpr, HAS_W: tl.constexpr, ACC: tl.constexpr):
    """The target q on a (ROWS, BLOCK) tile, weights folded in (row_math.h q_smoothed /
    q_mixture / q_probability); 0 outside ``mask`` and on invalid (ignored / out-of-range)
    rows. Nothing is read outside ``mask``."""
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
    """row_math.h's soft_log_abs_eps: (k-independent) log|eps_j| and the negative-class flag,
    eps = p - q / t. Classes with no target mass have eps = p > 0: kept in the log domain
    (z - lse) so that a small k does not lose classes whose probability underflows."""
    lp = z - lse[:, None]
    qh = q * t_inv[:, None]
    eps = tl.exp(lp) - qh
    neg = (qh != 0.0) & (eps < 0.0)
    le = tl.where(qh == 0.0, lp, tl.log(tl.abs(eps)))
    return le, neg


@triton.jit
def soft_finalize(s_neg, m_pos, s_pos, t):
    """row_math.h's soft_finalize: (t, m_pos', pos_scale), f_j = -t |eps_j|^k on the negative
    classes, pos_scale exp(k log eps_j - m_pos') on the others; pos_scale = t S_neg / s_pos,
    0 when no class has eps > 0 (also when s_pos is NaN: the loss carries the NaN)."""
    has_pos = s_pos > 0.0
    m_out = tl.where(has_pos, m_pos, 0.0)
    pos_scale = tl.where(has_pos, t * s_neg / tl.where(has_pos, s_pos, 1.0), 0.0)
    return m_out, pos_scale


@triton.jit
def soft_f(kl, neg, t, m_pos, pos_scale):
    """row_math.h's soft_f on a tile: kl = k log|eps_j| (per-row t, m_pos, pos_scale)."""
    return tl.where(neg, -t[:, None] * tl.exp(kl), pos_scale[:, None] * tl.exp(kl - m_pos[:, None]))


@triton.jit
def finish_rows(x, ignored, bad):
    """Per-row values (ROWS,): 0 on ignored rows, NaN on out-of-range labels."""
    x = tl.where(ignored, 0.0, x)
    return tl.where(bad, float("nan"), x)


@triton.jit
def finish_tile(x, ignored, bad):
    """finish_rows for a (ROWS, BLOCK) tile."""
    x = tl.where(ignored[:, None], 0.0, x)
    return tl.where(bad[:, None], float("nan"), x)

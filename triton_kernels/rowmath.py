"""Per-row math shared by the Triton kernels: the twin of csrc/row_math.h (docs/ROW_MATH.md).

Every helper works on a tile of ROWS rows: per-row statistics are (ROWS,) vectors, column
blocks are (ROWS, BLOCK) tiles. Only tl.exp/tl.log/tl.maximum & co. are used (no libdevice),
so the same code runs compiled on a GPU and under TRITON_INTERPRET=1.

The forward kernels reduce a row to STATS_COLS numbers, ``stats`` (the layout is
hardloss_cuda/_schema.py's, the same as csrc/row_math.h's); the backward kernels rebuild the
pseudo-gradient from them elementwise in one pass over the row. The helpers that produce the
numbers (``onehot_finalize``, ``soft_finalize``) and those that consume them (``onehot_fj``,
``soft_fj``) sit side by side here.

stats per row: (lse, lse_lo, scale, ...):
  one-hot row: (lse, lse_lo, f_y, m, log_c, 0)      f_j = w_y exp(k (z_j - m) + log_c), j != y
  soft row:    (lse, lse_lo, t, c_pos, f_star, COMPLETE + star)   f_j = soft_fj(...)
               (lse, lse_lo, t, m, log_s, DEFERRED + star)     pass 2 first (soft_eps_pass)
  (soft_tag; _schema.py STATS_SOFT_COMPLETE / STATS_SOFT_DEFERRED, csrc/row_math.h)
Ignored / out-of-range rows, and every row when the gradient was not asked for, keep columns
2..5 at 0.
"""

import triton
import triton.language as tl

from .._schema import SIDE_NEG, SIDE_POS, SIDE_STAR, STATS_COLS, STATS_SOFT_COMPLETE, STATS_SOFT_DEFERRED

_COLS: tl.constexpr = tl.constexpr(STATS_COLS)
_SOFT_COMPLETE: tl.constexpr = tl.constexpr(STATS_SOFT_COMPLETE)
_SOFT_DEFERRED: tl.constexpr = tl.constexpr(STATS_SOFT_DEFERRED)
# soft_shard_stats' kept pass: the side of a class (row_math.h kSide*)
_SIDE_POS: tl.constexpr = tl.constexpr(SIDE_POS)
_SIDE_NEG: tl.constexpr = tl.constexpr(SIDE_NEG)
_SIDE_STAR: tl.constexpr = tl.constexpr(SIDE_STAR)


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
def softcap(z, cap):
    """row_math.h softcap_value: cap tanh(z / cap), with tanh(|u|) = -e / (2 + e) for
    e = expm1(-2|u|): Kahan's expm1 from exp and log where -2|u| > -1 (small u, where
    1 - 2 / (exp(2u) + 1) cancels), plain exp - 1 below (no cancellation there, and no log of
    a subnormal exp). No overflow; -inf gives -cap, as torch.tanh; NaN stays NaN."""
    u = z / cap
    x = -2.0 * tl.abs(u)
    w = tl.exp(x)
    near = (x > -1.0) & (w != 1.0)
    kahan = (w - 1.0) * (x / tl.log(tl.where(near, w, 0.5)))
    em1 = tl.where(w == 1.0, x, tl.where(near, kahan, w - 1.0))
    th = -em1 / (2.0 + em1)
    return cap * tl.where(u < 0.0, -th, th)


@triton.jit
def load_logits(ptr, row_off, rmask, cols, C, other, ACC: tl.constexpr, cap, HAS_CAP: tl.constexpr):
    """``load_tile`` of the logits, soft-capped when HAS_CAP (masked lanes keep ``other``)."""
    z, mask = load_tile(ptr, row_off, rmask, cols, C, other, ACC)
    if HAS_CAP:
        z = tl.where(mask, softcap(z, cap), other)
    return z, mask


@triton.jit
def softcap_slope(z, cap):
    """row_math.h softcap_slope: 1 - tanh^2(z / cap) = 4 w / (1 + w)^2, w = exp(-2 |z / cap|), from
    the raw logit z: every term positive, so no cancellation where tanh saturates (1 - (z_c / c)^2
    of the rounded capped value loses it all there). +-inf give 0; NaN stays NaN."""
    w = tl.exp(-2.0 * tl.abs(z / cap))
    return 4.0 * w / ((1.0 + w) * (1.0 + w))


@triton.jit
def load_logits_slope(ptr, row_off, rmask, cols, C, other, ACC: tl.constexpr, cap, HAS_CAP: tl.constexpr):
    """``load_logits``, plus the softcap's slope at each logit (1 without a cap)."""
    z, mask = load_tile(ptr, row_off, rmask, cols, C, other, ACC)
    if HAS_CAP:
        return tl.where(mask, softcap(z, cap), other), mask, softcap_slope(z, cap)
    return z, mask, tl.full(z.shape, 1.0, ACC)


@triton.jit
def finish_grad(g, z, glse, lse, lse_lo, slope, HAS_GLSE: tl.constexpr, HAS_CAP: tl.constexpr):
    """row_math.h finish_grad on a tile: g + glse p (the logsumexp's gradient, z the capped
    logits), times the softcap's slope (``load_logits_slope``)."""
    if HAS_GLSE:
        g = g + glse[:, None] * tl.exp((z - lse[:, None]) - lse_lo[:, None])
    if HAS_CAP:
        g = g * slope
    return g


@triton.jit
def store_tile(ptr, row_off, cols, mask, x):
    tl.store(ptr + row_off[:, None] + cols[None, :], x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def store_stats(ptr, rows, rmask, c0, c1, c2, c3, c4, c5):
    """Row ``rows`` of the (N, STATS_COLS) stats array: six (ROWS,) vectors."""
    base = ptr + rows.to(tl.int64) * _COLS
    tl.store(base, c0, mask=rmask)
    tl.store(base + 1, c1, mask=rmask)
    tl.store(base + 2, c2, mask=rmask)
    tl.store(base + 3, c3, mask=rmask)
    tl.store(base + 4, c4, mask=rmask)
    tl.store(base + 5, c5, mask=rmask)


@triton.jit
def load_stats(ptr, rows, rmask, ACC: tl.constexpr):
    base = ptr + rows.to(tl.int64) * _COLS
    c0 = tl.load(base, mask=rmask, other=0.0).to(ACC)
    c1 = tl.load(base + 1, mask=rmask, other=0.0).to(ACC)
    c2 = tl.load(base + 2, mask=rmask, other=0.0).to(ACC)
    c3 = tl.load(base + 3, mask=rmask, other=0.0).to(ACC)
    c4 = tl.load(base + 4, mask=rmask, other=0.0).to(ACC)
    c5 = tl.load(base + 5, mask=rmask, other=0.0).to(ACC)
    return c0, c1, c2, c3, c4, c5


@triton.jit
def soft_tag(star, DEFERRED: tl.constexpr):
    """row_math.h's soft_tag: a soft row's column 5, the form of columns 3, 4 plus its star
    flag (_schema.py STATS_SOFT_COMPLETE / STATS_SOFT_DEFERRED)."""
    base = _SOFT_DEFERRED if DEFERRED else _SOFT_COMPLETE
    return tl.where(star, 1.0, 0.0) + base


@triton.jit
def soft_tag_read(tag):
    """(deferred, star) of a soft row's column 5 (row_math.h soft_tag_deferred / soft_tag_star)."""
    deferred = tag >= _SOFT_DEFERRED
    return deferred, tag - tl.where(deferred, _SOFT_DEFERRED, _SOFT_COMPLETE) != 0.0


@triton.jit
def finite(x):
    """Neither NaN nor +-inf."""
    return (x == x) & (tl.abs(x) != float("inf"))


@triton.jit
def skip_rows(gl, lse, scale):
    """Rows whose gradient is 0 without looking at their logits: incoming gradient 0 and a
    finite logsumexp and scale (so no NaN / inf logit or infinite class weight that would make
    0 * f NaN). Trimmed-away rows of a trimmed mean are such rows; the backward pass does not
    read them."""
    return (gl == 0.0) & finite(lse) & finite(scale)


@triton.jit
def lse_split(m, L):
    """lse = m + L as a rounded hi and what the rounding lost, lo (0 where hi is not finite):
    log p_j = (z_j - hi) - lo stays exact when |m| is huge."""
    hi = m + L
    lo = tl.where(finite(hi), (m - hi) + L, 0.0)
    return hi, lo


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
def online_lse_loss(m, se, t, acc, qmin, qmax, z, q, mask):
    """Soft path, pass 1: fold a tile into the running (max m, se = sum exp(z - m),
    t = sum q, acc = sum q (m - z), min and max q over ``mask``). The loss sum q (lse - z) is
    then acc + t log(se) (``soft_loss``, row_math.h soft_loss_value), so the loss needs no
    second pass over the row. Every term is >= 0 for q >= 0 (m is the running max, and a rise
    of the max adds t (m_new - m_old) >= 0): no t lse - sum q z cancellation, and nothing taken
    relative to the rounded lse. Classes with q = 0 are skipped (a -inf logit there adds 0,
    not 0 * inf); q > 0 on a -inf logit gives an infinite loss."""
    m_new = tl.maximum(m, tl.max(z, 1))
    m_ref_old = tl.where(m == float("-inf"), 0.0, m)
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    se = se * tl.exp(m - m_ref) + tl.sum(tl.exp(z - m_ref[:, None]), 1)
    acc = acc + t * (m_ref - m_ref_old)
    acc += tl.sum(tl.where(q != 0.0, q * (m_ref[:, None] - z), 0.0), 1)
    t += tl.sum(q, 1)
    qmin = tl.minimum(qmin, tl.min(tl.where(mask, q, float("inf")), 1))
    qmax = tl.maximum(qmax, tl.max(tl.where(mask, q, float("-inf")), 1))
    return m_new, se, t, acc, qmin, qmax


@triton.jit
def soft_loss(m, se, t, acc):
    """A row of nothing but -inf logits has no softmax: NaN, as PyTorch."""
    return tl.where(m == float("-inf"), float("nan"), acc + t * tl.log(se))


@triton.jit
def log1p(x):
    """log(1 + x) accurate for small x >= 0 without libdevice (Goldberg's correction)."""
    u = 1.0 + x
    den = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(u == 1.0, x, tl.log(u) * (x / den))


@triton.jit
def onehot_finalize(m, s1, sk, z_y, w_y, k):
    """row_math.h's onehot_finalize: from the statistics over the non-target classes
    (m, s1, sk) and the target logit z_y, (lse, lse_lo, loss, f_y, m', log_c) with
    f_j = w_y exp(k (z_j - m') + log_c) for j != y (``onehot_fj``).

    With d = lse_not - z_y = (m - z_y) + log s1: loss / w_y = softplus(d) and
    a = log(1 - p_y) = -softplus(-d), both without cancellation and exact for huge logits.
    z_y = +inf, or a row of -inf, makes the row NaN (inf - inf, as PyTorch). No non-target
    class with p > 0 (C == 1, or all others -inf): m' = 0, log_c = -inf, so every f_j = 0
    (and f_y = 0 when C == 1)."""
    no_other = m == float("-inf")
    L1 = tl.log(s1)  # -inf when no other class
    d = (m - z_y) + L1  # relative to the maxima; NaN for a row of -inf, as wanted
    d = tl.where(z_y == float("inf"), float("nan"), d)
    sp = log1p(tl.exp(-tl.abs(d)))  # NaN in, NaN out
    # lse = logaddexp(lse_not, z_y), anchored at the larger maximum
    lse, lse_lo = lse_split(tl.where(d > 0.0, m, z_y), tl.where(d > 0.0, L1 + sp, sp))
    loss = w_y * (tl.maximum(d, 0.0) + sp)  # softplus(d)
    a = tl.minimum(d, 0.0) - sp  # -softplus(-d)
    f_y = 0.0 - w_y * tl.exp(k * a)  # 0 - x: +0 for C == 1
    m_out = tl.where(no_other, 0.0, m)
    log_c = tl.where(no_other, tl.where(d == d, float("-inf"), d), k * a - tl.log(sk))
    return lse, lse_lo, loss, f_y, m_out, log_c


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
def log_abs_eps(log_p, qh):
    """row_math.h's soft_log_abs_eps: (k-independent) log|eps_j| and the negative-class flag,
    eps = p - qh. Classes with no target mass have eps = p > 0: kept in the log domain
    (log p) so that a small k does not lose classes whose probability underflows."""
    eps = tl.exp(log_p) - qh
    neg = (qh != 0.0) & (eps < 0.0)
    le = tl.where(qh == 0.0, log_p, tl.log(tl.abs(eps)))
    return le, neg


@triton.jit
def soft_star(t, qmin, qmax):
    """row_math.h's soft_star: whether a row has a dominant class (qh > 1/2, at most one when
    q >= 0), whose eps is taken from the other classes (star_log_abs_eps)."""
    return (t > 0.0) & (qmin >= 0.0) & (2.0 * qmax > t)


@triton.jit
def is_star_k1(star, q, t):
    """row_math.h's is_star_k1: at k = 1 the dominant class takes f* from the other classes when
    q* >= 15/16 t (t p* - q* cancels there). ``star``: the row's soft_star."""
    return star & (16.0 * (t - q) <= t)


@triton.jit
def star_log_abs_eps(m_rest, s_rest, q_rest, t, lse):
    """row_math.h's star_log_abs_eps: eps* = A - P, A = sum_{i != *} q_i / t, log P the
    logsumexp (m_rest, s_rest) of the other classes' log p: no p* - qh* cancellation. A row
    without a finite ``lse`` is NaN (soft_row_finalize): the other classes alone (none when
    C == 1) cannot see a NaN or +inf dominant logit."""
    # -inf only when nothing was seen (s_rest == 0): a NaN sum must stay NaN.
    log_P = tl.where((m_rest == float("-inf")) & (s_rest == 0.0), float("-inf"), m_rest + tl.log(s_rest))
    A = q_rest / tl.where(t != 0.0, t, 1.0)
    e = A - tl.exp(log_P)
    le = tl.where(A == 0.0, log_P, tl.log(tl.abs(e)))
    neg = tl.where(A == 0.0, log_P > float("-inf"), e < 0.0)
    return tl.where(finite(lse), le, float("nan")), neg


@triton.jit
def _lse_push1(m, s, x):
    """row_math.h's lse_push of one value per row (-inf adds nothing)."""
    m_new = tl.maximum(m, x)
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    return m_new, s * tl.exp(m - m_ref) + tl.exp(x - m_ref)


@triton.jit
def soft_finalize(m_neg, s_neg, m_pos, s_pos, t, star, kl_star, neg_star):
    """row_math.h's soft_finalize: (c_pos, f_star) with f_j = -t |eps_j|^k on the negative
    classes, sign(t) exp(k log eps_j + c_pos) on the others (c_pos = log|t| + log S_neg -
    log s_pos - m_pos, -inf when no class has eps > 0, also when s_pos is NaN: the loss carries
    the NaN), f_star on the dominant class. S_neg = exp(m_neg) s_neg and S_pos are online
    (max, sum) pairs: a large k underflows neither. The dominant class (``star``) joins here."""
    m_neg, s_neg = _lse_push1(m_neg, s_neg, tl.where(star & neg_star, kl_star, float("-inf")))
    m_pos, s_pos = _lse_push1(m_pos, s_pos, tl.where(star & (~neg_star), kl_star, float("-inf")))
    has_pos = s_pos > 0.0
    log_s_neg = tl.where(m_neg == float("-inf"), float("-inf"), m_neg + tl.log(s_neg))
    c_pos = tl.where(has_pos, tl.log(tl.abs(t)) + log_s_neg - tl.log(tl.where(has_pos, s_pos, 1.0)) - m_pos,
                     float("-inf"))
    f_star = tl.where(star, soft_f1(kl_star, neg_star, t, c_pos), 0.0)
    return c_pos, f_star


@triton.jit
def soft_eps_sums(z_ptr, t_ptr, w_ptr, mix_ptr, row_off, rows_in, yc, cols0, C, s, m, log_s, t, star, k,
                  cap, MODE: tl.constexpr, HAS_W: tl.constexpr, HAS_CAP: tl.constexpr, K_IS_ONE: tl.constexpr,
                  ROWS: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
                  kept_ptr=None, side_ptr=None, rmask=None, KEEP: tl.constexpr = False):
    """A soft row's pass 2 over the rows ``rows_in`` (no other row is read), unfinalised
    (row_math.h soft_eps_class / soft_shard_class), with log p = (z - m) - log_s: the online
    (max, sum) of k log|eps| over the negative and the positive classes (none at K_IS_ONE),
    and, in a row with a dominant class (``star``: 2 q > t, at K_IS_ONE 16 (t - q) <= t), the
    logsumexp of the others' log p and the sum of their q. Returns (m_neg, s_neg, m_pos, s_pos,
    m_rest, s_rest, q_rest): finalised by soft_eps_pass, or reduced over ranks first
    (fwd.py soft_shard_kernel, the op soft_shard_stats).

    KEEP (soft_shard_stats' kept pass, k != 1 only; row_math.h soft_shard_class_kept): also
    store per class of the rows ``rmask`` the k log|eps| it pushes into ``kept_ptr`` and its side
    into ``side_ptr`` ((0, SIDE_STAR) at the dominant class; (-inf, SIDE_POS) on the rows of
    ``rmask`` outside ``rows_in``, which soft_kept_f turns into 0)."""
    t_inv = 1.0 / tl.where(t != 0.0, t, 1.0)  # qh = q / t; t == 0 gives f = t F = 0
    m_neg = tl.full([ROWS], float("-inf"), ACC)
    s_neg = tl.zeros([ROWS], ACC)
    m_pos = tl.full([ROWS], float("-inf"), ACC)
    s_pos = tl.zeros([ROWS], ACC)
    m_rest = tl.full([ROWS], float("-inf"), ACC)
    s_rest = tl.zeros([ROWS], ACC)
    q_rest = tl.zeros([ROWS], ACC)
    for start in range(0, C, BLOCK):
        cols = start + cols0
        z, mask = load_logits(z_ptr, row_off, rows_in, cols, C, 0.0, ACC, cap, HAS_CAP)
        q = q_tile(t_ptr, w_ptr, mix_ptr, row_off, yc, rows_in, cols, mask, C, s, MODE, HAS_W, ACC)
        log_p = (z - m[:, None]) - log_s[:, None]
        if K_IS_ONE:
            other = mask & star[:, None] & ~is_star_k1(star[:, None], q, t[:, None])
        else:
            at_star = star[:, None] & (2.0 * q > t[:, None])
            other = mask & ~at_star
            le, neg = log_abs_eps(log_p, q * t_inv[:, None])
            kl = k * le
            m_neg, s_neg = online_lse(m_neg, s_neg, tl.where(neg & other, kl, float("-inf")))
            m_pos, s_pos = online_lse(m_pos, s_pos, tl.where(neg | (~other), float("-inf"), kl))
            other = other & star[:, None]
            if KEEP:
                live = rows_in[:, None]
                side = tl.where(at_star, _SIDE_STAR, tl.where(neg, _SIDE_NEG, _SIDE_POS))
                keep = rmask[:, None] & (cols < C)[None, :]
                store_tile(kept_ptr, row_off, cols, keep, tl.where(live, tl.where(at_star, 0.0, kl), float("-inf")))
                store_tile(side_ptr, row_off, cols, keep, tl.where(live, side, _SIDE_POS))
        m_rest, s_rest = online_lse(m_rest, s_rest, tl.where(other, log_p, float("-inf")))
        q_rest += tl.sum(tl.where(other, q, 0.0), 1)
    return m_neg, s_neg, m_pos, s_pos, m_rest, s_rest, q_rest


@triton.jit
def soft_eps_pass(z_ptr, t_ptr, w_ptr, mix_ptr, row_off, rows_in, yc, cols0, C, s, m, log_s, lse, t, star, k,
                  cap, MODE: tl.constexpr, HAS_W: tl.constexpr, HAS_CAP: tl.constexpr, ROWS: tl.constexpr,
                  BLOCK: tl.constexpr, ACC: tl.constexpr):
    """A soft row's pass 2 (row_math.h soft_eps_class, soft_row_finalize) at k != 1 from the
    row max m and log_s = log sum exp(z - m) of pass 1 (soft_eps_sums), finalised: returns
    (c_pos, f_star) (soft_finalize). The forward's (fwd.py) at k != 1, and the backward's
    (bwd.py) for rows whose stats are in the deferred form (_schema.py STATS_SOFT_DEFERRED)."""
    m_neg, s_neg, m_pos, s_pos, m_rest, s_rest, q_rest = soft_eps_sums(
        z_ptr, t_ptr, w_ptr, mix_ptr, row_off, rows_in, yc, cols0, C, s, m, log_s, t, star, k, cap, MODE, HAS_W,
        HAS_CAP, False, ROWS, BLOCK, ACC)
    le_star, neg_star = star_log_abs_eps(m_rest, s_rest, q_rest, t, lse)
    return soft_finalize(m_neg, s_neg, m_pos, s_pos, t, star, k * le_star, neg_star)


@triton.jit
def soft_f1(kl, neg, t, c_pos):
    """row_math.h's soft_f, elementwise on matching shapes: kl = k log|eps_j|."""
    pos = tl.exp(kl + c_pos)
    return tl.where(neg, -t * tl.exp(kl), tl.where(t < 0.0, -pos, pos))


@triton.jit
def soft_kept_f(kl, side, t, c_pos, f_star):
    """row_math.h's soft_kept_f on a (ROWS, BLOCK) tile (per-row t, c_pos, f_star): f_j from
    soft_shard_stats' kept pass (kl = k log|eps_j|, side) and the row's complete-form stats."""
    f = soft_f1(kl, side == _SIDE_NEG, t[:, None], c_pos[:, None])
    return tl.where(side == _SIDE_STAR, f_star[:, None], f)


@triton.jit
def soft_fj(z, q, lse, lse_lo, t, c_pos, f_star, star, k, K_IS_ONE: tl.constexpr):
    """row_math.h's soft_fj on a (ROWS, BLOCK) tile (per-row lse, lse_lo, t, c_pos, f_star, and
    star as a bool, soft_tag_read): the backward's f_j of a soft row, log p_j = (z_j - lse) - lse_lo. K_IS_ONE: the
    true gradient t p - q, which needs only lse and t (one exp per class)."""
    log_p = (z - lse[:, None]) - lse_lo[:, None]
    if K_IS_ONE:
        f = t[:, None] * tl.exp(log_p) - q  # t == 0: 0, NaN in a row of NaN / +inf logits
    else:
        t_inv = 1.0 / tl.where(t != 0.0, t, 1.0)
        le, neg = log_abs_eps(log_p, q * t_inv[:, None])
        f = soft_f1(k * le, neg, t[:, None], c_pos[:, None])
        is_star = star[:, None] & (2.0 * q > t[:, None])
        f = tl.where(is_star, f_star[:, None], f)
    return f


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
def finish_rows(x, ignored, bad):
    """Per-row values (ROWS,): 0 on ignored rows, NaN on out-of-range labels."""
    x = tl.where(ignored, 0.0, x)
    return tl.where(bad, float("nan"), x)


@triton.jit
def finish_tile(x, ignored, bad):
    """finish_rows for a (ROWS, BLOCK) tile."""
    x = tl.where(ignored[:, None], 0.0, x)
    return tl.where(bad[:, None], float("nan"), x)

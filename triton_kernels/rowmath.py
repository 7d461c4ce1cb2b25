"""Per-row math shared by the one-hot and the soft kernels (docs/ROW_MATH.md).

Every helper works on a tile of ROWS rows: per-row statistics are (ROWS,) vectors, column
blocks are (ROWS, BLOCK) tiles. Only tl.exp/tl.log/tl.maximum & co. are used (no libdevice),
so the same code runs compiled on a GPU and under TRITON_INTERPRET=1.
"""

import triton
import triton.language as tl


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
    (bf16 arithmetic is not to be trusted in the interpreter; fp32 accumulation anyway)."""
    mask = rmask[:, None] & (cols < C)[None, :]
    x = tl.load(ptr + row_off[:, None] + cols[None, :], mask=mask, other=other)
    return x.to(ACC), mask


@triton.jit
def store_tile(ptr, row_off, cols, mask, x):
    tl.store(ptr + row_off[:, None] + cols[None, :], x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def online_lse(m, s, x):
    """Fold a tile x into the running per-row (max m, s = sum exp(x - m)).
    -inf entries (masked lanes, excluded classes) add nothing."""
    m_new = tl.maximum(m, tl.max(x, 1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing yet: no -inf - -inf
    s = s * tl.exp(m - m_ref) + tl.sum(tl.exp(x - m_ref[:, None]), 1)
    return m_new, s


@triton.jit
def online_lse2(m, s1, sk, x, k):
    """online_lse for s1 = sum exp(x - m) and sk = sum exp(k (x - m)) with one shared max
    (the one-hot statistics: sk >= 1 once a finite entry was seen, so it never underflows)."""
    m_new = tl.maximum(m, tl.max(x, 1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    d_old = m - m_ref
    d = x - m_ref[:, None]
    s1 = s1 * tl.exp(d_old) + tl.sum(tl.exp(d), 1)
    sk = sk * tl.exp(k * d_old) + tl.sum(tl.exp(k * d), 1)
    return m_new, s1, sk


@triton.jit
def log1p(x):
    """log(1 + x) accurate for small x >= 0 without libdevice (Goldberg's correction)."""
    u = 1.0 + x
    den = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(u == 1.0, x, tl.log(u) * (x / den))


@triton.jit
def split_target(lse_not, z_y):
    """From lse_not = logsumexp over i != y and the target logit z_y:
    (lse, lse - z_y, a = lse_not - lse = log(1 - p_y)), all without cancellation:
    with d = lse_not - z_y, lse - z_y = softplus(d) and a = -softplus(-d).
    z_y = +inf gives a NaN loss (inf - inf, as PyTorch), not softplus(-inf) = 0."""
    d = lse_not - z_y
    sp = log1p(tl.exp(-tl.abs(d)))
    lse = tl.maximum(lse_not, z_y) + sp
    nll = tl.where(z_y == float("inf"), float("nan"), tl.maximum(d, 0.0) + sp)
    return lse, nll, tl.minimum(d, 0.0) - sp


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

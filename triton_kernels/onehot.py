"""One-hot path (class index, no label smoothing, no mixture): docs/ROW_MATH.md "One-hot path".

Forward (``onehot_fwd_kernel``): one read of the row. Over the non-target classes it keeps
the running max m, s1 = sum exp(z - m) and (when the gradient is wanted) sk =
sum exp(k (z - m)); with the target logit z_y that gives the loss, the logsumexp and
``stats`` = (lse, lse_lo, f_y, m, log_c, 0) (rowmath.onehot_finalize).

Backward (``onehot_bwd_kernel``): one read of the row and one write of the gradient,
elementwise: g_j = gl w_y exp(k (z_j - m) + log_c) for j != y, gl f_y at the label. Nothing
crosses a column block, so any C is a plain loop over blocks and the gradient may overwrite
the logits (each element is read before it is written, by the same program).

Together that is 3 N C s bytes (read, read, write) and 16 bytes a row kept in between,
instead of producing the gradient in the forward pass (2 N C s there, plus an (N, C) buffer
held until backward and a read + write to scale it by the incoming gradient: 4 N C s).
"""

import triton
import triton.language as tl

from .rowmath import (
    finish_rows,
    finish_tile,
    load_labels,
    load_stats,
    load_tile,
    onehot_finalize,
    onehot_fj,
    online_lse2,
    row_setup,
    skip_rows,
    store_stats,
    store_tile,
)


@triton.jit
def onehot_fwd_kernel(
    z_ptr, y_ptr, w_ptr, loss_ptr, stats_ptr,
    N, C, ignore_index, k: tl.float64,
    HAS_W: tl.constexpr, GRAD: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = loss_ptr.dtype.element_ty  # float32, or float64 for float64 logits
    k = tl.full([], k, ACC)  # passed as fp64 so that float64 logits keep k exact
    rows, rmask, row_off, cols0 = row_setup(tl.program_id(0), N, C, ROWS, BLOCK)
    yc, ignored, bad = load_labels(y_ptr, rows, rmask, C, ignore_index)
    valid = (~ignored) & (~bad)
    z_y = tl.load(z_ptr + row_off + yc, mask=rmask, other=0.0).to(ACC)
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
        z, mask = load_tile(z_ptr, row_off, rmask, cols, C, float("-inf"), ACC)
        z = tl.where(cols[None, :] == yc[:, None], float("-inf"), z)
        m, s1, sk = online_lse2(m, s1, sk, z, k, GRAD)

    lse, lse_lo, nll, f_y, m_out, log_c = onehot_finalize(m, s1, sk, z_y, w_y, k)
    tl.store(loss_ptr + rows, finish_rows(nll, ignored, bad), mask=rmask)
    if GRAD:
        keep = valid
    else:
        keep = rows < 0  # nothing: columns 2.. are 0 without a gradient (see launch.fwd)
    store_stats(stats_ptr, rows, rmask, lse, lse_lo, tl.where(keep, f_y, 0.0),
                tl.where(keep, m_out, 0.0), tl.where(keep, log_c, 0.0), tl.zeros([ROWS], ACC))


@triton.jit
def onehot_bwd_kernel(
    gl_ptr, z_ptr, y_ptr, w_ptr, stats_ptr, out_ptr,
    N, C, ignore_index, k: tl.float64,
    HAS_W: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = stats_ptr.dtype.element_ty
    k = tl.full([], k, ACC)
    rows, rmask, row_off, cols0 = row_setup(tl.program_id(0), N, C, ROWS, BLOCK)
    yc, ignored, bad = load_labels(y_ptr, rows, rmask, C, ignore_index)
    gl = tl.load(gl_ptr + rows, mask=rmask, other=0.0).to(ACC)
    lse, _lse_lo, f_y, m, log_c, _unused = load_stats(stats_ptr, rows, rmask, ACC)
    # Rows that read their logits: valid label, and not a zero-gradient (trimmed) row.
    # Ignored rows give 0 and out-of-range labels NaN without a read (finish_tile).
    live = rmask & (~ignored) & (~bad) & (~skip_rows(gl, lse, f_y))
    if HAS_W:
        w_y = tl.load(w_ptr + yc, mask=live, other=0.0).to(ACC)
    else:
        w_y = tl.full([ROWS], 1.0, ACC)
    gw = gl * w_y  # the incoming gradient folded into the per-row coefficients
    gf_y = gl * f_y
    for start in range(0, C, BLOCK):
        cols = start + cols0
        z, _ = load_tile(z_ptr, row_off, live, cols, C, 0.0, ACC)
        g = onehot_fj(z, m, log_c, gw, k)
        g = tl.where(cols[None, :] == yc[:, None], gf_y[:, None], g)
        g = finish_tile(tl.where(live[:, None], g, 0.0), ignored, bad)
        store_tile(out_ptr, row_off, cols, rmask[:, None] & (cols < C)[None, :], g)

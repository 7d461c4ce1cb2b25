"""The backward kernels: grad_loss times the pseudo-gradient, one read of each row and one
write, elementwise from the stats the forward kept (docs/ROW_MATH.md, pass 3). Nothing crosses
a column block, so any C is a plain loop over blocks and the gradient may overwrite the logits
(each element is read before it is written, by the same program). Rows with a zero incoming
gradient and a finite lse and scale (trimmed away) are not read (rowmath.skip_rows).

``onehot_bwd_kernel``: g_j = gl w_y exp(k (z_j - m) + log_c) for j != y, gl f_y at the label.
``soft_bwd_kernel``: g_j = gl soft_fj(z_j, q_j, stats), q_j recomputed.
Both then add the logsumexp's gradient glse p_j and apply the softcap's slope when asked
(rowmath.finish_grad; the logits are read soft-capped, rowmath.load_logits).
"""

import triton
import triton.language as tl

from .rowmath import (
    finish_grad,
    finish_tile,
    load_labels,
    load_logits,
    load_stats,
    onehot_fj,
    q_tile,
    row_setup,
    skip_rows,
    soft_fj,
    soft_labels,
    store_tile,
)


@triton.jit
def _load_glse(glse_ptr, rows, rmask, ACC: tl.constexpr, HAS_GLSE: tl.constexpr):
    """The rows' logsumexp gradient (0 without one)."""
    if HAS_GLSE:
        return tl.load(glse_ptr + rows, mask=rmask, other=0.0).to(ACC)
    return tl.zeros(rows.shape, ACC)


@triton.jit
def onehot_bwd_kernel(
    gl_ptr, z_ptr, y_ptr, w_ptr, stats_ptr, out_ptr, glse_ptr,
    N, C, ignore_index, k: tl.float64, cap: tl.float64,
    HAS_W: tl.constexpr, HAS_CAP: tl.constexpr, HAS_GLSE: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = stats_ptr.dtype.element_ty
    k = tl.full([], k, ACC)
    cap = tl.full([], cap, ACC)
    rows, rmask, row_off, cols0 = row_setup(tl.program_id(0), N, C, ROWS, BLOCK)
    yc, ignored, bad = load_labels(y_ptr, rows, rmask, C, ignore_index)
    gl = tl.load(gl_ptr + rows, mask=rmask, other=0.0).to(ACC)
    lse, lse_lo, f_y, m, log_c, _unused = load_stats(stats_ptr, rows, rmask, ACC)
    glse = _load_glse(glse_ptr, rows, rmask, ACC, HAS_GLSE)
    # Rows that read their logits: valid label, and not a zero-gradient (trimmed) row.
    # Ignored rows give 0 and out-of-range labels NaN without a read (finish_tile).
    live = rmask & (~ignored) & (~bad) & (~(skip_rows(gl, lse, f_y) & (glse == 0.0)))
    if HAS_W:
        w_y = tl.load(w_ptr + yc, mask=live, other=0.0).to(ACC)
    else:
        w_y = tl.full([ROWS], 1.0, ACC)
    gw = gl * w_y  # the incoming gradient folded into the per-row coefficients
    gf_y = gl * f_y
    for start in range(0, C, BLOCK):
        cols = start + cols0
        z, _ = load_logits(z_ptr, row_off, live, cols, C, 0.0, ACC, cap, HAS_CAP)
        g = onehot_fj(z, m, log_c, gw, k)
        g = tl.where(cols[None, :] == yc[:, None], gf_y[:, None], g)
        g = finish_grad(g, z, glse, lse, lse_lo, cap, HAS_GLSE, HAS_CAP)
        g = finish_tile(tl.where(live[:, None], g, 0.0), ignored, bad)
        store_tile(out_ptr, row_off, cols, rmask[:, None] & (cols < C)[None, :], g)


@triton.jit
def soft_bwd_kernel(
    gl_ptr, z_ptr, t_ptr, w_ptr, mix_ptr, stats_ptr, out_ptr, glse_ptr,
    N, C, ignore_index, s: tl.float64, k: tl.float64, cap: tl.float64,
    MODE: tl.constexpr, HAS_W: tl.constexpr, K_IS_ONE: tl.constexpr, HAS_CAP: tl.constexpr,
    HAS_GLSE: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = stats_ptr.dtype.element_ty
    s = tl.full([], s, ACC)
    k = tl.full([], k, ACC)
    cap = tl.full([], cap, ACC)
    rows, rmask, row_off, cols0 = row_setup(tl.program_id(0), N, C, ROWS, BLOCK)
    yc, ignored, bad = soft_labels(t_ptr, rows, rmask, C, ignore_index, MODE, ROWS)
    gl = tl.load(gl_ptr + rows, mask=rmask, other=0.0).to(ACC)
    lse, lse_lo, t, c_pos, f_star, star = load_stats(stats_ptr, rows, rmask, ACC)
    glse = _load_glse(glse_ptr, rows, rmask, ACC, HAS_GLSE)
    # Rows that read their logits (and target row): valid, and not a zero-gradient row.
    live = rmask & (~ignored) & (~bad) & (~(skip_rows(gl, lse, t) & (glse == 0.0)))
    for start in range(0, C, BLOCK):
        cols = start + cols0
        z, mask = load_logits(z_ptr, row_off, live, cols, C, 0.0, ACC, cap, HAS_CAP)
        q = q_tile(t_ptr, w_ptr, mix_ptr, row_off, yc, live, cols, mask, C, s, MODE, HAS_W, ACC)
        g = gl[:, None] * soft_fj(z, q, lse, lse_lo, t, c_pos, f_star, star, k, K_IS_ONE)
        g = finish_grad(g, z, glse, lse, lse_lo, cap, HAS_GLSE, HAS_CAP)
        g = finish_tile(tl.where(live[:, None], g, 0.0), ignored, bad)
        store_tile(out_ptr, row_off, cols, rmask[:, None] & (cols < C)[None, :], g)

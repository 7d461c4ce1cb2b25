"""The backward kernels: grad_loss times the pseudo-gradient, one read of each row and one
write, elementwise from the stats the forward kept (docs/ROW_MATH.md, pass 3). Nothing crosses
a column block but the k = 1 dominant class's sum (below), so any C is a plain loop over blocks
and the gradient may overwrite the logits (each element is read before it is written, by the
same program). Rows with a zero incoming gradient and a finite lse and scale (trimmed away)
are not read (rowmath.skip_rows).

``onehot_bwd_kernel``: g_j = gl w_y exp(k (z_j - m) + log_c) for j != y, gl f_y at the label.
``soft_bwd_kernel``: g_j = gl soft_fj(z_j, q_j, stats), q_j recomputed. Stats in the deferred
form (_schema.py STATS_SOFT_DEFERRED: the CPU forward's, this backend's at k = 1) have no c_pos,
f_star: at k != 1 the program makes pass 2 for those rows first (rowmath.soft_eps_pass, the
forward's), one more read of them; at k = 1 a dominant class with q* >= 15/16 t
(rowmath.is_star_k1) takes minus the others' sum, gathered in the same pass and stored last
(the complete form's f_star where the stats have one).
Both then add the logsumexp's gradient glse p_j and apply the softcap's slope when asked
(rowmath.finish_grad; the logits are read soft-capped with the cap's slope, rowmath.load_logits_slope).

``soft_kept_bwd_kernel`` (the op soft_shard_grad): a soft row's gradient from soft_shard_stats'
kept pass, f_j = rowmath.soft_kept_f(k log|eps_j|, side, complete-form stats), finished the same
way; no log or |eps|^k per class, and the logits are read only for glse or a softcap.
"""

import triton
import triton.language as tl

from .rowmath import (
    finish_grad,
    finish_tile,
    finite,
    is_star_k1,
    load_labels,
    load_logits_slope,
    load_stats,
    load_tile,
    onehot_fj,
    q_tile,
    row_setup,
    skip_rows,
    soft_eps_pass,
    soft_fj,
    soft_kept_f,
    soft_labels,
    soft_tag_read,
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
        z, _, slope = load_logits_slope(z_ptr, row_off, live, cols, C, 0.0, ACC, cap, HAS_CAP)
        g = onehot_fj(z, m, log_c, gw, k)
        g = tl.where(cols[None, :] == yc[:, None], gf_y[:, None], g)
        g = finish_grad(g, z, glse, lse, lse_lo, slope, HAS_GLSE, HAS_CAP)
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
    lse, lse_lo, t, c3, c4, tag = load_stats(stats_ptr, rows, rmask, ACC)
    deferred, star = soft_tag_read(tag)
    glse = _load_glse(glse_ptr, rows, rmask, ACC, HAS_GLSE)
    # Rows that read their logits (and target row): valid, and not a zero-gradient row.
    live = rmask & (~ignored) & (~bad) & (~(skip_rows(gl, lse, t) & (glse == 0.0)))
    # Columns 3, 4: c_pos, f_star (complete form), or m, log s (deferred: the CPU's forward, or
    # this backend's at k = 1). k != 1: the deferred rows make pass 2 here first, one more read
    # of those rows only. k = 1: c_pos is not read, f_star only as the complete form's (below).
    c_pos = c3
    f_star = c4
    if not K_IS_ONE:
        redo = live & deferred
        if tl.max(redo.to(tl.int32), 0) > 0:
            cp2, fs2 = soft_eps_pass(z_ptr, t_ptr, w_ptr, mix_ptr, row_off, redo, yc, cols0, C, s, c3, c4, lse, t,
                                     star, k, cap, MODE, HAS_W, HAS_CAP, ROWS, BLOCK, ACC)
            c_pos = tl.where(redo, cp2, c3)
            f_star = tl.where(redo, fs2, c4)
    # k == 1 and a dominant class with q* >= 15/16 t (rowmath.is_star_k1; stats column 5 from
    # the forward): its f* is the complete form's f_star, or for the deferred form minus the
    # other classes' sum of f (the row sums to 0), written after the loop, which skips it (so
    # each element is still stored once).
    # Per-lane partials, reduced once after the loop (no cross-lane reduction per tile).
    rest = tl.zeros([ROWS, BLOCK], ACC)
    z_star = tl.zeros([ROWS, BLOCK], ACC)
    slope_star = tl.zeros([ROWS, BLOCK], ACC)
    col_star = tl.full([ROWS, BLOCK], -1, tl.int32)
    for start in range(0, C, BLOCK):
        cols = start + cols0
        z, mask, slope = load_logits_slope(z_ptr, row_off, live, cols, C, 0.0, ACC, cap, HAS_CAP)
        q = q_tile(t_ptr, w_ptr, mix_ptr, row_off, yc, live, cols, mask, C, s, MODE, HAS_W, ACC)
        f = soft_fj(z, q, lse, lse_lo, t, c_pos, f_star, star, k, K_IS_ONE)
        g = finish_grad(gl[:, None] * f, z, glse, lse, lse_lo, slope, HAS_GLSE, HAS_CAP)
        g = finish_tile(tl.where(live[:, None], g, 0.0), ignored, bad)
        store_mask = rmask[:, None] & (cols < C)[None, :]
        if K_IS_ONE:
            at_star = mask & is_star_k1(star[:, None], q, t[:, None])
            rest += tl.where(mask & ~at_star, f, 0.0)
            z_star += tl.where(at_star, z, 0.0)
            slope_star += tl.where(at_star, slope, 0.0)
            col_star = tl.maximum(col_star, tl.where(at_star, cols[None, :], -1))
            store_mask = store_mask & ~at_star
        store_tile(out_ptr, row_off, cols, store_mask, g)
    if K_IS_ONE:
        f1 = tl.where(deferred, tl.where(finite(lse), -tl.sum(rest, 1), float("nan")), f_star)  # row_math.h star_f1
        z1, slope1 = tl.sum(z_star, 1), tl.sum(slope_star, 1)
        g = finish_grad((gl * f1)[:, None], z1[:, None], glse, lse, lse_lo, slope1[:, None], HAS_GLSE, HAS_CAP)
        col = tl.max(col_star, 1)
        tl.store(out_ptr + row_off + col, tl.sum(g, 1).to(out_ptr.dtype.element_ty), mask=rmask & (col >= 0))


@triton.jit
def soft_kept_bwd_kernel(
    gl_ptr, kept_ptr, side_ptr, z_ptr, stats_ptr, out_ptr, glse_ptr,
    N, C, cap: tl.float64,
    HAS_CAP: tl.constexpr, HAS_GLSE: tl.constexpr, READ_Z: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = stats_ptr.dtype.element_ty
    cap = tl.full([], cap, ACC)
    rows, rmask, row_off, cols0 = row_setup(tl.program_id(0), N, C, ROWS, BLOCK)
    gl = tl.load(gl_ptr + rows, mask=rmask, other=0.0).to(ACC)
    lse, lse_lo, t, c_pos, f_star, _tag = load_stats(stats_ptr, rows, rmask, ACC)
    glse = _load_glse(glse_ptr, rows, rmask, ACC, HAS_GLSE)
    # bwd's row rules without a label: a zero-gradient row is 0 and a row without a finite lse
    # NaN, neither read; the others read kept / side (and the logits for READ_Z), then write.
    zero = skip_rows(gl, lse, t) & (glse == 0.0)
    live = rmask & (~zero) & finite(lse)
    fill = tl.where(zero, 0.0, float("nan"))
    for start in range(0, C, BLOCK):
        cols = start + cols0
        # out may be kept itself: each element is loaded here before the store below
        kl, mask = load_tile(kept_ptr, row_off, live, cols, C, float("-inf"), ACC)
        side = tl.load(side_ptr + row_off[:, None] + cols[None, :], mask=mask, other=0)
        g = gl[:, None] * soft_kept_f(kl, side, t, c_pos, f_star)
        if READ_Z:  # glse p_j and / or the softcap's slope need the logits
            z, _, slope = load_logits_slope(z_ptr, row_off, live, cols, C, 0.0, ACC, cap, HAS_CAP)
            g = finish_grad(g, z, glse, lse, lse_lo, slope, HAS_GLSE, HAS_CAP)
        g = tl.where(live[:, None], g, fill[:, None])
        store_tile(out_ptr, row_off, cols, rmask[:, None] & (cols < C)[None, :], g)

"""One-hot path (class index, no smoothing, no mixture): ROW_MATH.md "One-hot path".

One read of the row for the statistics over the non-target classes (running max m,
s1 = sum exp(z - m), sk = sum exp(k (z - m))) plus the target logit, then the gradient:
from registers when the row fits in one tile (2 N C s bytes, the floor), else a second
read of the row (3 N C s).
"""

import triton
import triton.language as tl

from .rowmath import (
    finish_rows,
    finish_tile,
    load_labels,
    load_tile,
    online_lse2,
    row_setup,
    split_target,
    store_tile,
)


@triton.jit
def onehot_kernel(
    z_ptr, y_ptr, w_ptr, loss_ptr, lse_ptr, g_ptr,
    N, C, ignore_index, k: tl.float64,
    HAS_W: tl.constexpr, WRITE_GRAD: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, ONE_TILE: tl.constexpr,
):
    ACC: tl.constexpr = loss_ptr.dtype.element_ty  # float32, or float64 for float64 logits
    k = tl.full([], k, ACC)  # passed as fp64 so that float64 logits keep k exact
    rows, rmask, row_off, cols0 = row_setup(tl.program_id(0), N, C, ROWS, BLOCK)
    yc, ignored, bad = load_labels(y_ptr, rows, rmask, C, ignore_index)
    z_y = tl.load(z_ptr + row_off + yc, mask=rmask, other=0.0).to(ACC)
    if HAS_W:
        w_y = tl.load(w_ptr + yc, mask=rmask, other=0.0).to(ACC)
    else:
        w_y = tl.full([ROWS], 1.0, ACC)

    # Pass 1: statistics over the classes i != y.
    m = tl.full([ROWS], float("-inf"), ACC)
    s1 = tl.zeros([ROWS], ACC)
    sk = tl.zeros([ROWS], ACC)
    if ONE_TILE:  # the row fits in one tile: it stays in registers for the gradient
        z_row, mask_row = load_tile(z_ptr, row_off, rmask, cols0, C, float("-inf"), ACC)
        m, s1, sk = online_lse2(m, s1, sk, tl.where(cols0[None, :] == yc[:, None], float("-inf"), z_row), k)
    else:  # streaming: statistics pass now, the gradient pass re-reads the row
        for start in range(0, C, BLOCK):
            cols = start + cols0
            z, mask = load_tile(z_ptr, row_off, rmask, cols, C, float("-inf"), ACC)
            z = tl.where(cols[None, :] == yc[:, None], float("-inf"), z)
            m, s1, sk = online_lse2(m, s1, sk, z, k)

    lse_not = m + tl.log(s1)  # -inf when C == 1
    lse, nll, a = split_target(lse_not, z_y)
    tl.store(loss_ptr + rows, finish_rows(w_y * nll, ignored, bad), mask=rmask)
    tl.store(lse_ptr + rows, lse, mask=rmask)

    if WRITE_GRAD:
        # Pass 2: f_y = -w exp(k a); f_j = w exp(k a + k (z_j - m) - log sk) for j != y.
        # (C == 1 leaves only f_y = -exp(-inf) = 0, as ROW_MATH asks.)
        c = k * a - tl.log(sk)
        f_y = -w_y * tl.exp(k * a)
        if ONE_TILE:
            f = w_y[:, None] * tl.exp(k * (z_row - m[:, None]) + c[:, None])
            f = tl.where(cols0[None, :] == yc[:, None], f_y[:, None], f)
            store_tile(g_ptr, row_off, cols0, mask_row, finish_tile(f, ignored, bad))
        else:
            for start in range(0, C, BLOCK):
                cols = start + cols0
                z, mask = load_tile(z_ptr, row_off, rmask, cols, C, 0.0, ACC)
                f = w_y[:, None] * tl.exp(k * (z - m[:, None]) + c[:, None])
                f = tl.where(cols[None, :] == yc[:, None], f_y[:, None], f)
                store_tile(g_ptr, row_off, cols, mask, finish_tile(f, ignored, bad))

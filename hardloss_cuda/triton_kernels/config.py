"""Launch geometry: column block, rows per program and warps, from the row length C."""

from __future__ import annotations

import triton

# Largest column block. Each live fp32 tile of 8192 columns spread over 16 warps (512
# threads) is 16 registers a thread; the one-hot forward pass keeps about four such tiles
# live (z, exp(z - m), exp(k (z - m)), masks), which still fits without spilling, and a block
# this wide makes the per-block max/sum reductions cheap next to the loads. The backward
# kernels are elementwise (no reduction) and keep fewer. Wider rows loop: every kernel walks
# the row in column blocks, so C has no upper limit.
BLOCK_CAP = 8192

# Short rows (small C) pack several rows into one program so that a program still moves a
# tile of about this many elements instead of a handful of lanes.
ROW_TILE = 4096


def plan(n_rows: int, n_cols: int, block_cap: int | None = None) -> tuple[int, int, int]:
    """(BLOCK, ROWS, num_warps) for an (n_rows, n_cols) problem.

    ``block_cap`` lowers the column block (a power of two); tests use it to exercise the
    column loop on small rows.
    """
    cap = BLOCK_CAP if block_cap is None else block_cap
    if cap < 1 or cap & (cap - 1):
        raise ValueError(f"block_cap must be a power of two >= 1, got {cap}")
    block = min(triton.next_power_of_2(max(n_cols, 1)), cap)
    rows = 1
    if block >= n_cols and block * 2 <= ROW_TILE:  # a short row: give the program more rows
        rows = min(ROW_TILE // block, triton.next_power_of_2(max(n_rows, 1)))
    tile = rows * block
    num_warps = 4 if tile <= 2048 else 8 if tile <= 4096 else 16
    return block, rows, num_warps

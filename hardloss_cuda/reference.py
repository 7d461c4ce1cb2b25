"""Pure-PyTorch reference of the fused op: the oracle every backend is tested against.

``rows`` is docs/CONTRACT.md section 2 for a batch of rows, written with plain tensor ops so it runs
on any device and in float64. It follows docs/ROW_MATH.md line by line: the target row q,
the loss ``-sum q log p``, and the normalised ``|eps|^k`` pseudo-gradient, evaluated in the
log domain where the contract asks for it. It is readable first and fast second.

The oracle only: no shipped code path calls it, besides the ``reference`` backend itself
(``_ops.py`` registers ``fwd`` / ``bwd`` / ``shard_stats`` / ``soft_shard_stats`` /
``soft_shard_grad`` as its ops). It takes the target
row, the soft-target rows and the softcap from ``_torch_rows.py``, which the shipped torch
code uses too (one copy of that math; ``tests/fuzz_oracle.py`` checks both independently).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._schema import (LSE_COL, LSE_LO_COL, SCALE_COL, SIDE_POS, STATS_COLS, TAG_COL, acc_dtype, check_op_args,
                      check_op_bwd_args, check_op_kept_eps, check_op_shard_stats_args, check_op_soft_shard_grad_args,
                      check_op_soft_shard_stats_args, check_op_softcap, soft_tag_star)
from ._torch_rows import (finish_grad, grad_from_stats, lse_split, onehot_finalize, soft_kept, soft_kept_f, soft_pass2,
                          soft_rows, softcap_logits, target_grads, target_rows)

__all__ = ["rows", "fwd", "bwd", "shard_stats", "soft_shard_stats", "soft_shard_grad", "acc_dtype", "target_rows", "target_grads"]


def _softplus(x: Tensor) -> Tensor:
    """log(1 + exp(x)), exact for every x (F.softplus switches to x above a threshold)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def _onehot_rows(zs: Tensor, y: Tensor, w_y: Tensor, k: float, compute_grad: bool):
    """The one-hot path of docs/ROW_MATH.md on max-shifted rows ``zs``: statistics over the
    non-target classes, no cancellation in 1 - p_y. Returns (loss, gradient or None, lse of zs)."""
    is_y = torch.nn.functional.one_hot(y, zs.shape[1]).bool()
    z_not = zs.masked_fill(is_y, float("-inf"))
    z_y = zs.gather(1, y[:, None]).squeeze(1)
    lse_not = torch.logsumexp(z_not, dim=1)  # -inf when C == 1
    d = lse_not - z_y  # log of the odds against the label
    loss = w_y * _softplus(d)
    lse = torch.logaddexp(lse_not, z_y)
    if not compute_grad:
        return loss, None, lse
    a = -_softplus(-d)  # log |eps_y| = log(1 - p_y)
    log_sk = torch.logsumexp(k * z_not, dim=1)  # log sum_{i != y} exp(k z_i)
    f_not = torch.exp(k * a[:, None] + k * zs - log_sk[:, None])  # |eps_y|^k eps_j^k / sum eps_i^k
    # No other class with p > 0 (C == 1, or all others -inf): f_j = 0, not -inf - -inf.
    f_not = torch.where((log_sk == float("-inf"))[:, None], 0, f_not)
    f_y = -torch.exp(k * a)
    grad = torch.where(is_y, f_y[:, None], f_not) * w_y[:, None]
    return loss, grad, lse


def _max_shift(z: Tensor):
    """Rows minus their max, and the max: every formula is taken relative to the row max
    (exact for huge logits, where lse = m + log s cannot hold log s). A row with a NaN or
    +inf logit, or of -inf only, is marked bad: NaN throughout, as PyTorch."""
    m = z.amax(1)
    bad = torch.isnan(m) | torch.isinf(m)  # NaN, +inf, or nothing but -inf: no softmax
    shift = torch.where(torch.isfinite(m), m, 0)
    return z - shift[:, None], shift, bad


def rows(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mixture: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    k: float,
    compute_grad: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row (loss, pseudo-gradient, logsumexp) for logits (N, C), in the accumulation
    dtype except the gradient (logits' dtype; (0, C) unless ``compute_grad``)."""
    loss, grad, lse = _rows(logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad)
    return loss, grad, lse[0] + lse[1]


def _rows(logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad):
    """``rows`` with the logsumexp as (row max m, L = log sum exp(z - m))."""
    N, C = logits.shape
    dt = acc_dtype(logits.dtype)
    zs, shift, bad_row = _max_shift(logits.to(dt))
    if target.is_floating_point() or mixture is not None or label_smoothing > 0:
        q = target_rows(C, target, weight, mixture, ignore_index, label_smoothing, dt)
        loss, grad, lse = soft_rows(zs, q, k, compute_grad)
    else:
        valid = (target != ignore_index) & (target >= 0) & (target < C)
        y = torch.where(valid, target, 0)
        w_y = torch.ones(N, dtype=dt, device=zs.device) if weight is None else weight.to(dt)[y]
        loss, grad, lse = _onehot_rows(zs, y, w_y * valid, k, compute_grad)
    # A NaN or +inf logit, or a row of -inf: NaN loss and gradient (PyTorch's exp(inf - inf)).
    loss = loss.masked_fill(bad_row, float("nan"))
    if compute_grad:
        grad = grad.masked_fill(bad_row[:, None], float("nan"))
    if not target.is_floating_point():
        # Ignored rows: exactly 0 (also when their logits are not finite). Labels outside
        # [0, C): NaN, never a read at the label.
        ignored = target == ignore_index
        bad = ~ignored & ((target < 0) | (target >= C))
        loss = torch.where(ignored, 0, loss).masked_fill(bad, float("nan"))
        if compute_grad:
            grad = torch.where(ignored[:, None], 0, grad).masked_fill(bad[:, None], float("nan"))
    grad = grad.to(logits.dtype) if compute_grad else logits.new_empty((0, C))
    return loss, grad, (shift, lse)


def _onehot_cols(z: Tensor, y: Tensor, w_y: Tensor, k: float):
    """Stats columns 2..5 of one-hot rows of the (capped) logits z as the kernels make them: the
    statistics over the classes j != y (``shard_stats``), finalised by
    ``_torch_rows.onehot_finalize``, the vocab-parallel loss's finalise too: f_y, the max m of the
    other classes, log_c with f_j = w_y exp(k (z_j - m) + log_c), 0. No other class with p > 0:
    m = 0, log_c = -inf."""
    M, S1, Sk = _shard_raw(z, y, k).unbind(1)
    _loss, _hi, _lo, f_y, m, log_c = onehot_finalize(M, S1, Sk, z.gather(1, y[:, None])[:, 0], k)
    return 0 - w_y * (0 - f_y), m, log_c, torch.zeros_like(m)


def _grad_cols(z: Tensor, target, weight, mixture, ignore_index, label_smoothing, k) -> Tensor:
    """Stats columns 2..5 (SCALE_COL on) of the rows of the (capped) logits z in the kernels'
    meaning (_schema.py, csrc/row_math.h "What a row keeps"): one-hot rows (f_y, m, log_c, 0),
    soft rows in the complete form (t, c_pos, f_star, STATS_SOFT_COMPLETE + star); 0 for ignored
    and out-of-range rows. Every backend's bwd reads them (tests/test_stats_exchange.py)."""
    N, C = z.shape
    if target.is_floating_point() or mixture is not None or label_smoothing > 0:
        q = target_rows(C, target, weight, mixture, ignore_index, label_smoothing, z.dtype)
        cols = soft_rows(_max_shift(z)[0], q, k, True, cols=True)[3]
    else:
        valid = (target != ignore_index) & (target >= 0) & (target < C)
        y = torch.where(valid, target, 0)
        w_y = torch.ones(N, dtype=z.dtype, device=z.device) if weight is None else weight.to(z.dtype)[y]
        cols = _onehot_cols(z, y, w_y, k)
    cols = torch.stack(cols, 1)
    if not target.is_floating_point():
        valid = (target != ignore_index) & (target >= 0) & (target < C)
        cols = torch.where(valid[:, None], cols, 0)
    return cols


# The op contract of hardloss_cuda/_schema.py on top of ``rows``: the fwd writes the stats as the
# kernels do (_grad_cols) and the bwd reads them as the kernels do (_torch_rows.grad_from_stats),
# so that stats pass between any two backends; ``rows`` recomputes everything from the logits.


def fwd(logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad, softcap=0.0):
    # the compiled ops' checks: torch ops would broadcast a (1,) target or grad_loss silently
    check_op_args(logits, target, weight, mixture)
    check_op_softcap(softcap, logits.dtype)
    z = softcap_logits(logits.to(acc_dtype(logits.dtype)), softcap)
    loss, _grad, (m, L) = _rows(z, target, weight, mixture, ignore_index, label_smoothing, k, False)
    stats = torch.zeros(logits.shape[0], STATS_COLS, dtype=loss.dtype, device=loss.device)
    # The logsumexp as hi = m + L rounded and lo = (m - hi) + L, what the rounding lost (0 where
    # hi is not finite): -log p_j = (hi - z_j) + lo is exact for huge logits.
    stats[:, LSE_COL], stats[:, LSE_LO_COL] = lse_split(m, L)
    if compute_grad:
        stats[:, SCALE_COL:] = _grad_cols(z, target, weight, mixture, ignore_index, label_smoothing, k)
    return loss, stats


def bwd(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap=0.0,
        grad_lse=None):
    check_op_args(logits, target, weight, mixture)
    check_op_bwd_args(grad_loss, logits, stats, grad_lse)
    check_op_softcap(softcap, logits.dtype)
    # in the accumulation dtype, rounded to the logits' dtype once at the end
    x = logits.to(acc_dtype(logits.dtype))
    return grad_from_stats(grad_loss, x, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap,
                           grad_lse).to(logits.dtype)


def _shard_raw(z: Tensor, target: Tensor, k: float) -> Tensor:
    """(m, s1, sk) per row of z over the classes j != target (every class for a target outside
    [0, C)): row_math.h OneHotStats."""
    C = z.shape[1]
    own = (target >= 0) & (target < C)
    z = z.masked_fill(own[:, None] & (target[:, None] == torch.arange(C, device=z.device)), float("-inf"))
    m = z.amax(1) if C > 0 else z.new_full(z.shape[:1], float("-inf"))
    shift = torch.where(m == float("-inf"), 0, m)[:, None]  # no 0 * inf from an empty row
    s1 = torch.exp(z - shift).sum(1)
    sk = torch.exp(k * (z - shift)).sum(1)
    return torch.stack([m, s1, sk], 1)


def shard_stats(logits, target, k, softcap=0.0):
    """(m, s1, sk) per row over the classes j != target (every class for a target outside
    [0, C)): the one-hot statistics of ROW_MATH.md section 3 before they are finalised."""
    check_op_shard_stats_args(logits, target)
    check_op_softcap(softcap, logits.dtype)
    return _shard_raw(softcap_logits(logits.to(acc_dtype(logits.dtype)), softcap), target, k)


def soft_shard_stats(logits, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap=0.0, eps=None,
                     side=None):
    """A soft row's pass 2 over the classes of ``logits`` given the row's global lse (hi, lo), t and
    star flag (stats columns 0, 1, 2, 5): ``_torch_rows.soft_pass2``'s seven statistics (_schema.py);
    a class-index row without smoothing is the soft row q = w_y onehot(y); ignored and bad rows
    (-inf, 0, -inf, 0, -inf, 0, 0). With ``eps`` and ``side``, also its kept pass
    (``_torch_rows.soft_kept``), (-inf, SIDE_POS) on those rows."""
    check_op_soft_shard_stats_args(logits, target, weight, mixture, stats)
    check_op_softcap(softcap, logits.dtype)
    check_op_kept_eps(logits, eps, side, k)
    z = softcap_logits(logits.to(acc_dtype(logits.dtype)), softcap)
    C = z.shape[1]
    q = target_rows(C, target, weight, mixture, ignore_index, label_smoothing, z.dtype)
    hi, lo, t = stats[:, LSE_COL], stats[:, LSE_LO_COL], stats[:, SCALE_COL]
    log_p, star = (z - hi[:, None]) - lo[:, None], soft_tag_star(stats[:, TAG_COL])
    out = torch.stack(soft_pass2(log_p, q, t, star, k), 1)
    valid = torch.ones_like(t, dtype=torch.bool)
    if not target.is_floating_point():
        valid = (target != ignore_index) & (target >= 0) & (target < C)
        out = torch.where(valid[:, None], out, out.new_tensor([-float("inf"), 0, -float("inf"), 0, -float("inf"), 0, 0]))
    if eps is not None:
        kla, s = soft_kept(log_p, q, t, star, k)
        eps.copy_(torch.where(valid[:, None], kla, -float("inf")))
        side.copy_(torch.where(valid[:, None], s, SIDE_POS))
    return out


def soft_shard_grad(grad_loss, eps, side, logits, stats, out, softcap=0.0, grad_lse=None) -> None:
    """bwd of soft rows from soft_shard_stats' kept pass (_schema.py): ``_torch_rows.soft_kept_f``
    finished as bwd finishes (``finish_grad``), into ``out`` (which may be ``eps``)."""
    check_op_soft_shard_grad_args(grad_loss, eps, side, logits, stats, out, grad_lse)
    check_op_softcap(softcap, logits.dtype)
    x = logits.to(acc_dtype(logits.dtype))
    z = softcap_logits(x, softcap)
    log_p = (z - stats[:, LSE_COL, None]) - stats[:, LSE_LO_COL, None]
    f = soft_kept_f(eps, side, stats)
    out.copy_(finish_grad(grad_loss, f, x, log_p, stats, softcap, grad_lse))

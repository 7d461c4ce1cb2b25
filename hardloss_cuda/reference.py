"""Pure-PyTorch reference of the fused op: the oracle every backend is tested against.

``rows`` is docs/CONTRACT.md section 2 for a batch of rows, written with plain tensor ops so it runs
on any device and in float64. It follows docs/ROW_MATH.md line by line: the target row q,
the loss ``-sum q log p``, and the normalised ``|eps|^k`` pseudo-gradient, evaluated in the
log domain where the contract asks for it. It is readable first and fast second.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._schema import LSE_COL, LSE_LO_COL, STATS_COLS, acc_dtype

__all__ = ["rows", "fwd", "bwd", "shard_stats", "acc_dtype", "target_rows", "target_grads"]


def target_rows(
    num_classes: int,
    target: Tensor,
    weight: Tensor | None,
    mixture: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    dtype: torch.dtype,
) -> Tensor:
    """The target row q of every row (ROW_MATH.md section 1), weights folded in.

    Ignored rows and rows with an out-of-range label get q = 0 (the caller marks the latter
    NaN). Only used for the soft path; the one-hot path never materialises q.
    """
    C = num_classes
    w = torch.ones(C, dtype=dtype, device=target.device) if weight is None else weight.to(dtype)
    if target.is_floating_point():  # probabilities
        q = target.to(dtype)
        if label_smoothing > 0:
            q = q * (1 - label_smoothing) + label_smoothing / C
        return q * w
    valid = (target != ignore_index) & (target >= 0) & (target < C)
    y = torch.where(valid, target, 0)
    if mixture is not None:
        q = mixture.to(dtype)[y]
    else:
        # (y == arange) rather than F.one_hot, which reads the labels (not under torch.func.vmap)
        onehot = y[:, None] == torch.arange(C, device=y.device)
        q = onehot.to(dtype) * (1 - label_smoothing) + label_smoothing / C
    return q * w * valid[:, None]


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


class RowReductions:
    """The reductions over a row's classes that the soft path needs. Here over the whole row;
    ``hardloss_cuda.distributed`` subclasses it to also reduce over the ranks that each hold a
    slice of the classes, so that the same ``_soft_rows`` serves both."""

    def sum(self, x: Tensor, keepdim: bool = False) -> Tensor:
        return x.sum(1, keepdim=keepdim)

    def logsumexp(self, x: Tensor, keepdim: bool = False) -> Tensor:
        """m + log1p(the sum of exp(x - m) over the classes but one max): summed onto the max's
        1, classes of p ~ 1e-15 lost up to half an ulp of 1 each (a float64 confident row's
        loss 1.5 ulp beyond PyTorch's error; found by the fuzz)."""
        if x.shape[1] == 0:
            return torch.logsumexp(x, 1, keepdim=keepdim)
        m = x.amax(1, keepdim=True)
        ok = torch.isfinite(m)  # NaN, +inf or all -inf rows: torch's logsumexp
        e = torch.exp(x - torch.where(ok, m, 0)).scatter(1, x.argmax(1, keepdim=True), 0.0)
        out = torch.where(ok, m + torch.log1p(e.sum(1, keepdim=True)), torch.logsumexp(x, 1, keepdim=True))
        return out if keepdim else out.squeeze(1)

    def all(self, x: Tensor) -> Tensor:
        return x.all(1, keepdim=True)


ROW = RowReductions()


def _soft_rows(zs: Tensor, q: Tensor, k: float, compute_grad: bool, red: RowReductions = ROW):
    """Soft targets on max-shifted rows: f = t F_k(p - q / t) (ROW_MATH.md section 3), log
    domain throughout. Returns (loss, gradient or None, lse of zs); ``red`` reduces over the
    classes."""
    lse = red.logsumexp(zs)
    log_p = zs - lse[:, None]
    loss = -red.sum(torch.where(q != 0, q * log_p, 0))  # q = 0 skipped: -inf logits add 0
    if not compute_grad:
        return loss, None, lse
    t = red.sum(q)
    if k == 1:  # F_1(eps) = eps (S_neg = S_pos): the true gradient t p - q, no |eps| statistics
        f = t[:, None] * log_p.exp() - q
        # A dominant class with q* >= 15/16 t: t p* - q* cancels, f* = q_rest - t P is taken from
        # the other classes (ROW_MATH.md section 3; row_math.h is_star_k1, star_f1). Computed for
        # every row: no data-dependent branch (under ``red`` each rank must reduce alike).
        tc = t[:, None]
        star = (tc > 0) & red.all(q >= 0) & (16 * (tc - q) <= tc)
        log_p_rest = red.logsumexp(log_p.masked_fill(star, float("-inf")), keepdim=True)
        q_rest = red.sum(torch.where(star, 0, q), keepdim=True)
        return loss, torch.where(star, q_rest - tc * log_p_rest.exp(), f), lse
    qh = q / torch.where(t != 0, t, 1)[:, None]
    # log |eps_j|: classes with no target mass are positive with eps = p, kept in log space
    # so that a small k does not lose classes whose probability underflows.
    log_abs_eps = torch.where(qh == 0, log_p, torch.log(torch.abs(log_p.exp() - qh)))
    neg = (qh != 0) & (log_p.exp() < qh)
    # The dominant class (qh > 1/2, at most one when q >= 0): eps = (1 - qh) - (1 - p) with
    # both sums taken over the other classes, 1 - p in the log domain (p - qh cancels when
    # both are near 1).
    star = (qh > 0.5) & (t > 0)[:, None] & red.all(q >= 0)
    log_p_rest = red.logsumexp(log_p.masked_fill(star, float("-inf")), keepdim=True)
    q_rest = red.sum(torch.where(star, 0, qh), keepdim=True)
    eps_star = q_rest - log_p_rest.exp()
    log_abs_eps = torch.where(star, torch.where(q_rest == 0, log_p_rest, eps_star.abs().log()), log_abs_eps)
    neg = torch.where(star, (eps_star < 0) | ((q_rest == 0) & (log_p_rest > float("-inf"))), neg)
    k_log = k * log_abs_eps
    # log S_neg and log S_pos in the log domain: |eps|^k of a large k underflows, their ratio not
    lse_neg = red.logsumexp(torch.where(neg, k_log, float("-inf")))
    k_log_pos = torch.where(neg, float("-inf"), k_log)
    lse_pos = red.logsumexp(k_log_pos)
    f_pos = torch.exp(lse_neg[:, None] + k_log_pos - lse_pos[:, None])
    f_pos = torch.where(torch.isfinite(lse_pos)[:, None], f_pos, 0)
    f = torch.where(neg, -k_log.exp(), f_pos)
    return loss, f * t[:, None], lse


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
        loss, grad, lse = _soft_rows(zs, q, k, compute_grad)
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


# The op contract of hardloss_cuda/_schema.py on top of ``rows``. The reference keeps only
# the logsumexp (hi and lo) between the passes, the other stats columns are 0, and recomputes
# everything in backward: it is the oracle, not a fast path.


def softcap_logits(z: Tensor, softcap: float) -> Tensor:
    """c tanh(z / c) for softcap c > 0, z itself for 0 (ROW_MATH.md section 6)."""
    return z if softcap == 0 else softcap * torch.tanh(z / softcap)


def fwd(logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad, softcap=0.0):
    z = softcap_logits(logits.to(acc_dtype(logits.dtype)), softcap)
    loss, _grad, (m, L) = _rows(z, target, weight, mixture, ignore_index, label_smoothing, k, False)
    stats = torch.zeros(logits.shape[0], STATS_COLS, dtype=loss.dtype, device=loss.device)
    # The logsumexp as hi = m + L rounded and lo = (m - hi) + L, what the rounding lost (0 where
    # hi is not finite): -log p_j = (hi - z_j) + lo is exact for huge logits.
    hi = m + L
    stats[:, LSE_COL], stats[:, LSE_LO_COL] = hi, torch.where(torch.isfinite(hi), (m - hi) + L, 0)
    return loss, stats


def bwd(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap=0.0,
        grad_lse=None):
    # rows on the logits in the accumulation dtype: the gradient comes back unrounded and is
    # rounded to the logits' dtype once, after the scaling.
    z = softcap_logits(logits.to(acc_dtype(logits.dtype)), softcap)
    _loss, grad, lse = rows(z, target, weight, mixture, ignore_index, label_smoothing, k)
    out = grad_loss[:, None] * grad
    if grad_lse is not None:  # d lse / d z = softmax(z)
        out = out + grad_lse[:, None] * torch.exp(z - lse[:, None])
    if softcap != 0:  # d (c tanh(x / c)) / dx = 1 - tanh^2
        out = out * (1 - torch.square(z / softcap))
    if not target.is_floating_point():  # ignored rows stay exactly 0 whatever grad_loss and the logits are
        out = torch.where((target == ignore_index)[:, None], 0, out)
    return out.to(logits.dtype)


def shard_stats(logits, target, k, softcap=0.0):
    """(m, s1, sk) per row over the classes j != target (every class for a target outside
    [0, C)): the one-hot statistics of ROW_MATH.md section 3 before they are finalised."""
    z = softcap_logits(logits.to(acc_dtype(logits.dtype)), softcap)
    C = z.shape[1]
    own = (target >= 0) & (target < C)
    z = z.masked_fill(own[:, None] & (target[:, None] == torch.arange(C, device=z.device)), float("-inf"))
    m = z.amax(1) if C > 0 else z.new_full(z.shape[:1], float("-inf"))
    shift = torch.where(m == float("-inf"), 0, m)[:, None]  # no 0 * inf from an empty row
    s1 = torch.exp(z - shift).sum(1)
    sk = torch.exp(k * (z - shift)).sum(1)
    return torch.stack([m, s1, sk], 1)


def _true_rows_grad(grad_loss, logits, stats, weight, scale, softcap):
    """d loss_i / d q_ij = -w_j log p_ij, times the incoming gradient and `scale`;
    -log p_ij = (lse_i - z_ij) + lse_lo_i, exact for huge logits."""
    lse, lse_lo = stats[:, LSE_COL, None], stats[:, LSE_LO_COL, None]
    g = grad_loss[:, None] * ((lse - softcap_logits(logits.to(lse.dtype), softcap)) + lse_lo) * scale
    return g if weight is None else g * weight


def target_grads(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, *,
                 need_target: bool, need_mixture: bool, softcap: float = 0.0):
    """The true gradients of probability targets and of a mixture matrix (ROW_MATH.md section
    5), each when asked for, else None; ``stats`` is the forward's."""
    d_target = d_mixture = None
    if need_target and target.is_floating_point():
        d_target = _true_rows_grad(grad_loss, logits, stats, weight, 1 - label_smoothing, softcap).to(target.dtype)
    if mixture is not None and need_mixture:
        valid = (target != ignore_index) & (target >= 0) & (target < mixture.shape[0])
        rows_grad = _true_rows_grad(grad_loss * valid, logits, stats, weight, 1.0, softcap)
        # Sum over the rows labelled y; index_add_ is deterministic on the CPU. On CUDA a
        # one-hot matmul keeps it deterministic (no atomics).
        y = torch.where(valid, target, 0)
        if mixture.is_cuda:
            onehot = torch.nn.functional.one_hot(y, mixture.shape[0]).to(rows_grad.dtype)
            d_mixture = onehot.T @ rows_grad
        else:
            d_mixture = torch.zeros_like(mixture, dtype=rows_grad.dtype).index_add_(0, y, rows_grad)
        d_mixture = d_mixture.to(mixture.dtype)
    return d_target, d_mixture

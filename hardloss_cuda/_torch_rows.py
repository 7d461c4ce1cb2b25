"""The per-row math in torch ops that the shipped code needs besides the kernels: the target
row q, the soft-target rows (loss and pseudo-gradient), the soft rows' stats columns from their
mergeable statistics (``soft_pass2``, ``soft_cols``: the vocab-parallel loss finalises its
ranks' reduced statistics with the same ``soft_cols``), the softcap and its slope, and the true
gradients of probability targets and of a mixture. Users: ``_autograd.py`` (double backward,
forward mode, the target / mixture gradients), ``distributed.py`` and the reference.

The reference (``reference.py``, the oracle) reuses these rather than keeping its own copy:
one copy of the math, not two that may drift. What checks them independently of the library
is ``tests/fuzz_oracle.py`` (numpy, float64), against which every backend, the reference
included, is fuzzed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._schema import (LSE_COL, LSE_LO_COL, SCALE_COL, SIDE_NEG, SIDE_POS, SIDE_STAR, STATS_SOFT_COMPLETE,
                      STATS_SOFT_DEFERRED, TAG_COL, soft_tag_star)

__all__ = ["target_rows", "soft_rows", "soft_log_abs_eps", "soft_f", "soft_pass2", "soft_cols", "soft_kept",
           "soft_kept_f", "lse_pair", "lse_split", "finish_grad", "onehot_finalize", "grad_from_stats", "softcap_logits", "softcap_slope", "true_rows_grad", "target_grads"]

_INF = float("inf")


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


def _logsumexp(x: Tensor, keepdim: bool = False) -> Tensor:
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


def lse_pair(x: Tensor) -> tuple[Tensor, Tensor]:
    """(m, s) = (max x, sum exp(x - m)) over dim 1, row_math.h's LseStats of the row: (-inf, 0)
    when it holds nothing but -inf (or no column); NaN or +inf make s NaN (lse_push)."""
    m = x.amax(1) if x.shape[1] > 0 else x.new_full(x.shape[:1], -_INF)
    return m, torch.exp(x - torch.where(m == -_INF, 0, m)[:, None]).sum(1)


def _lse_value(m: Tensor, s: Tensor) -> Tensor:
    return torch.where(m == -_INF, m, m + torch.log(s))


def _lse_push(m: Tensor, s: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """row_math.h lse_push of one value z per row."""
    new = (z > m) | (z != z)
    s = torch.where(new, s * torch.exp(m - z) + torch.exp(z - z), torch.where(z > -_INF, s + torch.exp(z - m), s))
    return torch.where(new, z, m), s


def lse_split(m: Tensor, L: Tensor) -> tuple[Tensor, Tensor]:
    """lse = m + L as its rounding hi and what that lost, lo (0 where hi is not finite):
    row_math.h lse_split. -log p_j = (hi - z_j) + lo is exact for huge logits."""
    hi = m + L
    return hi, torch.where(torch.isfinite(hi), (m - hi) + L, 0)


def onehot_finalize(M: Tensor, S1: Tensor, Sk: Tensor, z_y: Tensor, k: float):
    """row_math.h ``onehot_finalize`` of one-hot rows from their statistics over the classes
    j != y (M = max z_j, S1 = sum exp(z_j - M), Sk = sum exp(k (z_j - M)): the op
    ``shard_stats``' columns, of a whole row or all-reduced over a vocab-parallel loss's ranks)
    and the label's logit z_y; unweighted. Returns (loss, lse hi, lo, f_y, m, log_c) with
    f_j = exp(k (z_j - m) + log_c) off the label; d = log of the odds against the label, no
    cancellation in 1 - p_y (ROW_MATH.md section 3)."""
    L1 = torch.log(S1)  # -inf when no other class
    d = torch.where(z_y == _INF, torch.nan, (M - z_y) + L1)
    tail = torch.log1p(torch.exp(-d.abs()))
    sp, sp_neg = d.clamp_min(0) + tail, (-d).clamp_min(0) + tail
    hi_a, lo_a = lse_split(M, L1 + sp_neg)
    hi_b, lo_b = lse_split(z_y, sp)
    hi, lo = torch.where(d > 0, hi_a, hi_b), torch.where(d > 0, lo_a, lo_b)
    a = -sp_neg
    f_y = 0 - torch.exp(k * a)
    none = M == -_INF  # no non-target class with p > 0: all f_j = 0 (NaN for a NaN row)
    m = torch.where(none, 0, M)
    log_c = torch.where(none, torch.where(d == d, -_INF, d), k * a - (L1 if k == 1 else torch.log(Sk)))
    return sp, hi, lo, f_y, m, log_c


def soft_log_abs_eps(log_p: Tensor, qh: Tensor) -> tuple[Tensor, Tensor]:
    """row_math.h soft_log_abs_eps, elementwise: (log|eps_j|, eps_j < 0) with eps = p - qh.
    Classes with no target mass are positive with eps = p, kept in log space, so that a small k
    does not lose classes whose probability underflows."""
    e = log_p.exp() - qh
    return torch.where(qh == 0, log_p, torch.log(e.abs())), (qh != 0) & (e < 0)


def soft_f(kla: Tensor, neg: Tensor, t: Tensor, c_pos: Tensor) -> Tensor:
    """row_math.h soft_f, elementwise (kla = k log|eps_j|): -t |eps_j|^k on the negative classes,
    sign(t) exp(kla + c_pos) on the others."""
    f_pos = torch.exp(kla + c_pos)
    return torch.where(neg, -t * torch.exp(kla), torch.where(t < 0, -f_pos, f_pos))


def soft_pass2(log_p: Tensor, q: Tensor, t: Tensor, star: Tensor, k: float) -> tuple[Tensor, ...]:
    """The soft rows' pass 2 over the classes at hand (row_math.h soft_shard_class), given log p,
    the rows' t = sum q and dominant-class flags ``star``: their mergeable statistics unfinalised,
    (m_neg, s_neg, m_pos, s_pos) of k log|eps_j| over the negative / positive classes but the
    dominant one, and over the classes but the dominant one (m, s) of log p_j and sum q_j (the
    columns of the op ``soft_shard_stats``). At k == 1 only the latter (is_star_k1)."""
    tc = t[:, None]
    if k == 1:
        at_star = star[:, None] & (16 * (tc - q) <= tc)
        none = torch.full_like(t, -_INF)
        eps = (none, torch.zeros_like(t), none, torch.zeros_like(t))
    else:
        kla, side = soft_kept(log_p, q, t, star, k)
        at_star = side == SIDE_STAR
        eps = (*lse_pair(torch.where(side == SIDE_NEG, kla, -_INF)),
               *lse_pair(torch.where(side == SIDE_POS, kla, -_INF)))
    rest = star[:, None] & ~at_star
    return (*eps, *lse_pair(torch.where(rest, log_p, -_INF)), torch.where(rest, q, 0).sum(1))


def soft_cols(t: Tensor, star: Tensor, k: float, lse: Tensor, raw) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stats columns 2..5 (t, c_pos, f_star, tag: the complete form) of soft rows from their pass-2 statistics
    ``raw`` (``soft_pass2``'s seven, merged over the row): row_math.h soft_row_finalize (k != 1)
    and soft_row_k1, in O(N) torch ops. ``lse``: the rows' logsumexp (a row without a finite one
    is NaN)."""
    m_neg, s_neg, m_pos, s_pos, m_p, s_p, q_rest = raw
    log_P = _lse_value(m_p, s_p)  # the other classes' log sum p
    bad = ~(lse.abs() < _INF)
    zero = torch.zeros_like(t)
    if k == 1:  # star_f1: f* = -(t P - q_rest)
        f_star = torch.where(bad, torch.nan, -(t * torch.exp(log_P) - q_rest))
        return t, zero, torch.where(star, f_star, 0), STATS_SOFT_COMPLETE + star.to(t.dtype)
    # star_log_abs_eps: eps* = A - P, A = q_rest / t
    A = q_rest / torch.where(star, t, 1)
    e = A - torch.exp(log_P)
    neg_star = torch.where(A == 0, log_P > -_INF, e < 0)
    kla = k * torch.where(bad, torch.nan, torch.where(A == 0, log_P, torch.log(e.abs())))
    # soft_finalize: the dominant class joins its side's statistics
    pn, pp = _lse_push(m_neg, s_neg, kla), _lse_push(m_pos, s_pos, kla)
    m_neg, s_neg = (torch.where(star & neg_star, a, b) for a, b in zip(pn, (m_neg, s_neg)))
    m_pos, s_pos = (torch.where(star & ~neg_star, a, b) for a, b in zip(pp, (m_pos, s_pos)))
    c_pos = torch.where(s_pos > 0, (torch.log(t.abs()) + _lse_value(m_neg, s_neg)) - torch.log(s_pos) - m_pos, -_INF)
    f_star = soft_f(kla, neg_star, t, c_pos)
    return t, c_pos, torch.where(star, f_star, 0), STATS_SOFT_COMPLETE + star.to(t.dtype)


def soft_rows(zs: Tensor, q: Tensor, k: float, compute_grad: bool, cols: bool = False):
    """Soft targets on max-shifted rows: f = t F_k(p - q / t) (ROW_MATH.md section 3), log
    domain throughout. Returns (loss, gradient or None, lse of zs). With ``cols`` (and
    ``compute_grad``) a fourth item: the stats columns 2..5 of the rows as the kernels write
    them, (t, c_pos, f_star, star) (csrc/row_math.h SoftRow; ``soft_pass2``, ``soft_cols``)."""
    lse = _logsumexp(zs)
    log_p = zs - lse[:, None]
    loss = -torch.where(q != 0, q * log_p, 0).sum(1)  # q = 0 skipped: -inf logits add 0
    if not compute_grad:
        return loss, None, lse
    t = q.sum(1)
    if cols:  # row_math.h soft_star, then pass 2 and the finalise the kernels make
        qmax = q.amax(1) if q.shape[1] > 0 else torch.zeros_like(t)
        star = (t > 0) & (q >= 0).all(1) & ((16 * (t - qmax) <= t) if k == 1 else (2 * qmax > t))
        extra = (soft_cols(t, star, k, lse, soft_pass2(log_p, q, t, star, k)),)
    else:
        extra = ()
    if k == 1:  # F_1(eps) = eps (S_neg = S_pos): the true gradient t p - q, no |eps| statistics
        f = t[:, None] * log_p.exp() - q
        # A dominant class with q* >= 15/16 t: t p* - q* cancels, f* = q_rest - t P is taken from
        # the other classes (ROW_MATH.md section 3; row_math.h is_star_k1, star_f1).
        tc = t[:, None]
        star = (tc > 0) & (q >= 0).all(1, keepdim=True) & (16 * (tc - q) <= tc)
        log_p_rest = _logsumexp(log_p.masked_fill(star, float("-inf")), keepdim=True)
        q_rest = torch.where(star, 0, q).sum(1, keepdim=True)
        f = torch.where(star, q_rest - tc * log_p_rest.exp(), f)
        return (loss, f, lse, *extra)
    qh = q / torch.where(t != 0, t, 1)[:, None]
    log_abs_eps, neg = soft_log_abs_eps(log_p, qh)
    # The dominant class (qh > 1/2, at most one when q >= 0): eps = (1 - qh) - (1 - p) with
    # both sums taken over the other classes, 1 - p in the log domain (p - qh cancels when
    # both are near 1).
    star = (qh > 0.5) & (t > 0)[:, None] & (q >= 0).all(1, keepdim=True)
    log_p_rest = _logsumexp(log_p.masked_fill(star, float("-inf")), keepdim=True)
    q_rest = torch.where(star, 0, qh).sum(1, keepdim=True)
    eps_star = q_rest - log_p_rest.exp()
    log_abs_eps = torch.where(star, torch.where(q_rest == 0, log_p_rest, eps_star.abs().log()), log_abs_eps)
    neg = torch.where(star, (eps_star < 0) | ((q_rest == 0) & (log_p_rest > float("-inf"))), neg)
    k_log = k * log_abs_eps
    # log S_neg and log S_pos in the log domain: |eps|^k of a large k underflows, their ratio not
    lse_neg = _logsumexp(torch.where(neg, k_log, float("-inf")))
    k_log_pos = torch.where(neg, float("-inf"), k_log)
    lse_pos = _logsumexp(k_log_pos)
    f_pos = torch.exp(lse_neg[:, None] + k_log_pos - lse_pos[:, None])
    f_pos = torch.where(torch.isfinite(lse_pos)[:, None], f_pos, 0)
    f = torch.where(neg, -k_log.exp(), f_pos)
    return (loss, f * t[:, None], lse, *extra)


def _soft_f_from_stats(log_p: Tensor, q: Tensor, stats: Tensor, k: float) -> Tensor:
    """f_j of soft rows from their stats in either form (row_math.h soft_fj, is_star, is_star_k1):
    a deferred row (columns 3, 4 = m, log s) is first completed by pass 2 over its classes here,
    as the CPU and Triton backwards do; every row goes through it (no data-dependent branch)."""
    t, tag = stats[:, SCALE_COL], stats[:, TAG_COL]
    star = soft_tag_star(tag)
    c_pos, f_star = soft_cols(t, star, k, stats[:, LSE_COL], soft_pass2(log_p, q, t, star, k))[1:3]
    complete = tag < STATS_SOFT_DEFERRED
    c_pos = torch.where(complete, stats[:, 3], c_pos)[:, None]
    f_star = torch.where(complete, stats[:, 4], f_star)[:, None]
    tc, star = t[:, None], star[:, None]
    if k == 1:
        return torch.where(star & (16 * (tc - q) <= tc), f_star, tc * torch.exp(log_p) - q)
    log_abs_eps, neg = soft_log_abs_eps(log_p, q / torch.where(tc != 0, tc, 1))
    return torch.where(star & (2 * q > tc), f_star, soft_f(k * log_abs_eps, neg, tc, c_pos))


def grad_from_stats(grad_loss, x, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap,
                    grad_lse=None) -> Tensor:
    """What every backend's ``bwd`` computes (the op contract, _schema.py), in torch ops on the
    logits x in the accumulation dtype (capped here), unrounded: g f_j from the stats
    (one-hot rows: f_y = column 2 at the label, w_y exp(k (z_j - m) + log_c) off it, row_math.h
    onehot_fj; soft rows: ``_soft_f_from_stats``), plus g_lse p_j, times the cap's slope. Rows as
    the kernels treat them: ignored rows 0, bad labels NaN, a row with a non-finite lse NaN, and
    a row with zero incoming gradients and finite stats 0 whatever its logits (row_math.h
    grad_row_is_zero: a trimmed row whose stats were zeroed). The reference backend's bwd, so
    that its stats mean what the kernels' do: the vocab-parallel loss hands every backend's bwd
    the global stats of a slice of the classes."""
    z = softcap_logits(x, softcap)
    N, C = z.shape
    hi, lo, scale = stats[:, LSE_COL], stats[:, LSE_LO_COL], stats[:, SCALE_COL]
    log_p = (z - hi[:, None]) - lo[:, None]
    g = grad_loss.to(z.dtype)
    if target.is_floating_point() or mixture is not None or label_smoothing > 0:
        q = target_rows(C, target, weight, mixture, ignore_index, label_smoothing, z.dtype)
        f = _soft_f_from_stats(log_p, q, stats, k)
    else:
        valid = (target != ignore_index) & (target >= 0) & (target < C)
        y = torch.where(valid, target, 0)
        w_y = torch.ones_like(g) if weight is None else weight.to(z.dtype)[y]
        f = w_y[:, None] * torch.exp(k * (z - stats[:, 3, None]) + stats[:, 4, None])
        f = torch.where(y[:, None] == torch.arange(C, device=z.device), scale[:, None], f)
    out = finish_grad(g, f, x, log_p, stats, softcap, grad_lse)
    if not target.is_floating_point():
        ignored = target == ignore_index
        bad = ~ignored & ((target < 0) | (target >= C))
        out = torch.where(ignored[:, None], 0, out).masked_fill(bad[:, None], torch.nan)
    return out


def finish_grad(g: Tensor, f: Tensor, x: Tensor, log_p: Tensor, stats: Tensor, softcap: float, grad_lse) -> Tensor:
    """g f_j plus g_lse p_j, times the cap's slope at the logits x, with the kernels' row rules: a
    row with a non-finite lse NaN, and one with zero incoming gradients and finite stats 0
    (row_math.h grad_row_is_zero)."""
    hi, scale = stats[:, LSE_COL], stats[:, SCALE_COL]
    out = g[:, None] * f
    zero = (g == 0) & (hi.abs() < _INF) & (scale.abs() < _INF)
    if grad_lse is not None:
        out = out + grad_lse.to(f.dtype)[:, None] * torch.exp(log_p)
        zero = zero & (grad_lse == 0)
    if softcap != 0:
        out = out * softcap_slope(x, softcap)
    return torch.where(zero[:, None], 0, out.masked_fill(~(hi.abs() < _INF)[:, None], torch.nan))


def soft_kept(log_p: Tensor, q: Tensor, t: Tensor, star: Tensor, k: float) -> tuple[Tensor, Tensor]:
    """soft_shard_stats' kept pass at k != 1 (row_math.h soft_shard_class_kept), elementwise:
    (k log|eps_j|, side) with side SIDE_NEG / SIDE_POS, and (0, SIDE_STAR) at the dominant class."""
    at_star = star[:, None] & (2 * q > t[:, None])
    log_abs_eps, neg = soft_log_abs_eps(log_p, q / torch.where(t != 0, t, 1)[:, None])
    side = torch.where(at_star, SIDE_STAR, torch.where(neg, SIDE_NEG, SIDE_POS)).to(torch.int8)
    return torch.where(at_star, 0, k * log_abs_eps), side


def soft_kept_f(kla: Tensor, side: Tensor, stats: Tensor) -> Tensor:
    """row_math.h soft_kept_f, elementwise: f_j from the kept pass and the rows' finalised stats
    (complete form: t, c_pos, f_star in columns 2..4)."""
    t, c_pos, f_star = (stats[:, c, None] for c in (SCALE_COL, 3, 4))
    return torch.where(side == SIDE_STAR, f_star, soft_f(kla, side == SIDE_NEG, t, c_pos))


def softcap_logits(z: Tensor, softcap: float) -> Tensor:
    """c tanh(z / c) for softcap c > 0, z itself for 0 (ROW_MATH.md section 6)."""
    return z if softcap == 0 else softcap * torch.tanh(z / softcap)


def softcap_slope(z: Tensor, softcap: float) -> Tensor:
    """d (c tanh(z / c)) / dz = 1 - tanh^2 at the raw logits z, as 4 w / (1 + w)^2 with
    w = exp(-2 |z / c|): no cancellation where tanh saturates (row_math.h softcap_slope)."""
    w = torch.exp(-2 * (z / softcap).abs())
    return 4 * w / torch.square(1 + w)


def true_rows_grad(grad_loss, logits, stats, weight, scale, softcap):
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
        d_target = true_rows_grad(grad_loss, logits, stats, weight, 1 - label_smoothing, softcap).to(target.dtype)
    if mixture is not None and need_mixture:
        valid = (target != ignore_index) & (target >= 0) & (target < mixture.shape[0])
        rows_grad = true_rows_grad(grad_loss * valid, logits, stats, weight, 1.0, softcap)
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

"""Float64 truth of the fused cross-entropy contract (docs/ROW_MATH.md), written from the
formulas with numpy and ``math.fsum``, independently of ``hardloss_cuda`` (no code of the
library is used), plus the rounding model that says how close a correct implementation in a
given precision can get to it.

Inputs are the values AFTER rounding to the tested dtype, as float64 numpy arrays, so
input rounding is not counted as error. Every row is taken relative to its max (exact for
huge logits); ``1 - p`` of the dominant target class and ``|eps|`` of classes without target
mass are kept in the log domain, so ``|eps|^k`` neither cancels nor underflows where the
exact value does not (``row_truth`` of z = [0, 40], target [0, 1], k = 1/16 gives
+-exp(-40/16) = +-0.082).

The 50-digit mpmath version of the same math (``mp_row``) validates this module
(tests/test_fuzz.py::test_oracle_against_mpmath).

The end of the file is the comparison harness shared by tests/test_fuzz.py and
tests/test_defects.py (``check_against_truth``): it runs the library and PyTorch and judges
their difference from the truth. Only it uses torch and hardloss_cuda.
"""

from __future__ import annotations

import importlib
import math
import sys
from dataclasses import dataclass, field

import numpy as np
import torch  # the harness only (end of the file): the truth is numpy
import torch.nn.functional as F

import hardloss_cuda as hl  # the harness only

INF = math.inf


def _lse(v: np.ndarray) -> float:
    """log sum exp(v) of a 1-D float64 array (-inf entries allowed), relative to its own max."""
    if v.size == 0:
        return -INF
    m = float(v.max())
    if m == -INF:
        return -INF
    # The max's own term is exactly 1: log1p of the exact sum of the others keeps a row of
    # 1 + 1e-17 (one logit far above the rest), where log of the rounded sum gives 0.
    return m + math.log1p(math.fsum(np.exp(v - m).tolist() + [-1.0]))


def target_row(C, y, prob_row, weight, mixture, ignore_index, s):
    """The target row q of ROW_MATH.md section 1 (weights folded in), whether the row counts
    (``valid``), its mean weight ``rw`` and whether it is on the one-hot path.

    ``y`` is the class index (or None with ``prob_row``, a float64 probability row)."""
    w = np.ones(C) if weight is None else weight
    if prob_row is not None:
        q = w * ((1 - s) * prob_row + s / C)
        return q, True, 1.0, False
    if y == ignore_index:
        return np.zeros(C), False, 0.0, False
    assert 0 <= y < C, "the fuzz never draws out-of-range labels"
    if mixture is not None:
        return w * mixture[y], True, float(w[y]), False
    if s > 0:
        onehot = np.zeros(C)
        onehot[y] = 1.0
        return w * ((1 - s) * onehot + s / C), True, float(w[y]), False
    q = np.zeros(C)
    q[y] = w[y]
    return q, True, float(w[y]), True


@dataclass
class Row:
    """One row's truth: loss, pseudo-gradient f (unscaled by the incoming gradient), and
    what the rounding model needs (None for NaN / ignored / t == 0 rows).

    eps_j is a difference of a probability-side term b_j (p_j, or 1 - p_j* for the dominant
    class) and a target-side term a_j (qh_j, or 1 - qh_j*): |eps_j| = |b_j - a_j|, with
    a_j = 0 for classes without target mass."""

    loss: float
    f: np.ndarray
    t: float = 0.0
    ell: np.ndarray | None = None  # log |eps_j| (-inf where eps_j == 0)
    neg: np.ndarray | None = None  # eps_j < 0
    a: np.ndarray | None = None  # target side, linear
    logb: np.ndarray | None = None  # probability side, log
    log2c: float = 0.0
    extra: dict = field(default_factory=dict)


def row_truth(z: np.ndarray, q: np.ndarray, onehot_label, k: float, counts: bool) -> Row:
    """Loss -sum q_j log p_j and pseudo-gradient t F_k(p - q / t) of one row (float64)."""
    C = z.shape[0]
    if not counts:  # ignored row: q = 0, loss 0, f 0 (also for non-finite logits)
        return Row(0.0, np.zeros(C))
    m = float(z.max()) if C else -INF
    if np.isnan(z).any() or m == INF or m == -INF:  # NaN, +inf or an all -inf row: NaN (PyTorch)
        return Row(math.nan, np.full(C, math.nan))
    zs = z - m
    jmax = int(np.argmax(z))
    rest = np.delete(zs, jmax)
    L = math.log1p(math.fsum(np.exp(rest).tolist())) if rest.size else 0.0  # lse of zs, >= 0
    logp = zs - L  # = -(|zs| + L): no cancellation
    log2c = 1.0 + math.log2(C)

    with np.errstate(invalid="ignore"):
        if onehot_label is not None:
            y = onehot_label
            loss = float(q[y] * (-logp[y]))  # IEEE: a zero weight at a -inf label gives NaN (PyTorch)
        else:
            nz = q != 0
            loss = math.fsum((-q[nz] * logp[nz]).tolist())

    t = math.fsum(q.tolist())
    if t == 0:
        return Row(loss, np.zeros(C), t=0.0)
    qh = q / t

    ell = logp.copy()  # classes without target mass: eps_j = p_j, in the log domain
    neg = np.zeros(C, dtype=bool)
    a = np.zeros(C)
    logb = logp.copy()
    js = int(np.argmax(qh))
    dominant = qh[js] > 0.5
    for j in np.nonzero(qh != 0)[0]:
        if dominant and j == js:
            # 1 - p_j* = sum of the other probabilities (log domain), 1 - qh_j* = sum of the
            # other qh; eps_j* = (1 - qh_j*) - (1 - p_j*).
            lb = _lse(np.delete(zs, j)) - L
            aj = math.fsum(np.delete(q, j).tolist()) / t
            if aj == 0:
                e_log, e_neg = lb, lb > -INF
            else:
                e = aj - math.exp(lb)
                e_log, e_neg = (math.log(abs(e)) if e != 0 else -INF), e < 0
        else:
            lb, aj = logp[j], qh[j]
            e = math.exp(lb) - aj
            e_log, e_neg = (math.log(abs(e)) if e != 0 else -INF), e < 0
        ell[j], neg[j], a[j], logb[j] = e_log, e_neg, aj, lb

    kl = k * ell
    log_sneg = _lse(kl[neg])
    log_spos = _lse(kl[~neg])
    f = np.zeros(C)
    f[neg] = -t * np.exp(kl[neg])
    if log_spos > -INF and log_sneg > -INF:
        f[~neg] = t * np.exp(log_sneg + kl[~neg] - log_spos)
    return Row(loss, f, t, ell, neg, a, logb, log2c, extra={"log_sneg": log_sneg, "log_spos": log_spos})


def _log_expm1(E: np.ndarray) -> np.ndarray:
    """log(exp(E) - 1) for E >= 0, without overflow."""
    with np.errstate(divide="ignore"):
        return np.where(E > 30, E, np.log(np.expm1(np.minimum(E, 30))))


def _eps_bounds(row: Row, cu: float):
    """For each class: whether the sign of eps_j is undetermined when b_j carries relative
    error exp(+-cu (L2 + |log b_j|)) and a_j relative error cu L2 (``ill``); the
    log-perturbation ``lp`` of |eps_j| otherwise; and log of an upper bound of |eps_j|."""
    C = row.ell.shape[0]
    ill = np.zeros(C, dtype=bool)
    lp = np.zeros(C)
    log_up = row.ell.copy()
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        x = cu * (row.log2c + np.where(np.isfinite(row.logb), np.abs(row.logb), 0.0))
        lp[row.a == 0] = x[row.a == 0]  # |eps| = b: relative error only
        log_up[row.a == 0] = row.ell[row.a == 0] + x[row.a == 0]
        for j in np.nonzero(row.a != 0)[0]:
            b, aj = math.exp(row.logb[j]), row.a[j]
            b_lo, b_hi = math.exp(row.logb[j] - x[j]), math.exp(min(row.logb[j] + x[j], 700))
            a_lo, a_hi = aj * (1 - cu * row.log2c), aj * (1 + cu * row.log2c)
            lo, hi = b_lo - a_hi, b_hi - a_lo
            mag = max(abs(lo), abs(hi))
            log_up[j] = math.log(mag) if mag > 0 else -INF
            if lo <= 0 <= hi and mag > 0:
                ill[j] = True
            elif row.ell[j] > -INF:
                e = abs(b - aj) if abs(b - aj) > 0 else math.exp(row.ell[j])
                lp[j] = max(math.log(mag / e), math.log(e / min(abs(lo), abs(hi))))
    return ill, lp, log_up


def magnitude_bound(row: Row, k: float, u: float, c: float) -> float:
    """An a-priori bound on max_j |f_j| under the same perturbations: every |F_j| <= S_neg
    <= sum_i |eps_i|^k."""
    if row.ell is None:
        return 0.0
    _ill, _lp, log_up = _eps_bounds(row, c * u)
    return row.t * math.exp(min(_lse(k * log_up), 700))


def pseudo_grad_tolerance(row: Row, k: float, u: float, c: float):
    """Per-element bound on |f_computed - f| for an implementation that evaluates the row in
    arithmetic of unit roundoff ``u`` with at most ``c`` roundings per step (see
    tests/test_fuzz.py for the constant), and whether the row is ill-conditioned (the sign of
    some eps_j is not determined at that precision and its share is not negligible: only
    ``magnitude_bound`` then applies).

    Each |eps_j|^k = exp(k log|eps_j|) carries relative error
    exp(cu (L2 + k |log|eps_j||) + k lp_j) - 1, where L2 = 1 + log2 C counts the sums and
    lp_j is the log-perturbation of |eps_j| itself (``_eps_bounds``: p_j with relative error
    cu (L2 + |log p_j|), qh_j with cu L2; large where p_j - qh_j cancels). The positive
    classes also carry the weighted relative errors of S_neg and S_pos."""
    C = row.f.shape[0]
    if row.ell is None:  # ignored / NaN / t == 0 rows: exact
        return np.zeros(C), False
    cu = c * u
    ell, neg, t = row.ell, row.neg, row.t
    finite = ell > -INF
    ill, lp, log_up = _eps_bounds(row, cu)
    with np.errstate(invalid="ignore", over="ignore"):
        E = cu * (row.log2c + k * np.where(finite, np.abs(ell), 0)) + k * lp
    kl = k * ell
    log_tol_rel = np.where(finite & ~ill, kl + _log_expm1(E), -INF)  # |eps|^k R_j, in logs
    log_B = np.where(ill, k * log_up, -INF)  # bound on |eps_j|^k, either side
    log_sneg, log_spos = row.extra["log_sneg"], row.extra["log_spos"]
    dS_neg = _lse(np.concatenate([log_tol_rel[neg & ~ill], np.log(2) + log_B[ill]]))
    dS_pos = _lse(np.concatenate([log_tol_rel[~neg & ~ill], np.log(2) + log_B[ill]]))
    A_neg = math.exp(min(dS_neg - log_sneg, 700)) if log_sneg > -INF else (INF if dS_neg > -INF else 0.0)
    A_pos = math.exp(min(dS_pos - log_spos, 700)) if log_spos > -INF else (INF if dS_pos > -INF else 0.0)
    if A_neg >= 0.5 or A_pos >= 0.5:
        return np.full(C, INF), True
    tol = np.zeros(C)
    nn = neg & ~ill
    tol[nn] = t * np.exp(log_tol_rel[nn])
    pp = ~neg & ~ill
    R = np.expm1(np.minimum(E, 700))
    tol[pp] = np.abs(row.f[pp]) * ((1 + R[pp]) * (1 + A_neg) / (1 - A_pos) - 1)
    if ill.any():
        ratio = math.exp(min(log_sneg - log_spos, 700)) * (1 + A_neg) / (1 - A_pos) if log_spos > -INF else 0.0
        tol[ill] = np.abs(row.f[ill]) + t * np.exp(log_B[ill]) * max(1.0, ratio)
    return tol, False


# ---------------------------------------------------------------------------- batches


@dataclass
class Batch:
    loss_rows: np.ndarray  # (R,) per-row loss
    f: np.ndarray  # (R, C) pseudo-gradient rows
    valid: np.ndarray  # (R,) rows that count (not ignored)
    rw: np.ndarray  # (R,) mean weight of the row
    rows: list  # Row objects


def batch_truth(z, target, weight, mixture, ignore_index, s, k) -> Batch:
    """Rows of z (R, C) float64; target (R,) int class indices or (R, C) float64 probabilities."""
    R, C = z.shape
    prob = target.dtype.kind == "f"
    rows, loss, valid, rw = [], np.zeros(R), np.zeros(R, dtype=bool), np.zeros(R)
    f = np.zeros((R, C))
    for i in range(R):
        q, counts, w_i, onehot = target_row(
            C, None if prob else int(target[i]), target[i] if prob else None, weight, mixture, ignore_index, s)
        r = row_truth(z[i], q, int(target[i]) if onehot else None, k, counts)
        rows.append(r)
        loss[i], f[i], valid[i], rw[i] = r.loss, r.f, counts, w_i
    return Batch(loss, f, valid, rw, rows)


def keep_mask(loss: np.ndarray, valid: np.ndarray, frac: float) -> np.ndarray:
    """Trimming: the r = max(round(frac n), 1) valid rows with the largest loss (stable)."""
    n = int(valid.sum())
    r = max(round(frac * n), 1)
    order = sorted(np.nonzero(valid)[0].tolist(), key=lambda i: -loss[i])  # sorted() is stable
    keep = np.zeros_like(valid)
    keep[order[:r]] = True
    return keep


def reduce_truth(batch: Batch, reduction: str, keep: np.ndarray, g: np.ndarray | float):
    """Reduced loss and d(loss . g)/dz = scale_i * f_i, with the mean's denominator as
    F.cross_entropy (0 when no row counts). ``keep``: the rows that count after trimming
    (= valid without trimming). Returns (loss, (R, C) gradient)."""
    lr = np.where(keep, batch.loss_rows, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if reduction == "none":
            scale = np.where(keep, g, 0.0)
            return lr, scale[:, None] * batch.f
        total = math.fsum(lr.tolist()) if np.isfinite(lr).all() else float(np.sum(lr))
        if reduction == "sum":
            scale = np.where(keep, float(g), 0.0)
            return total, scale[:, None] * batch.f
        if not keep.any():
            return 0.0, np.zeros_like(batch.f)
        denom = math.fsum(batch.rw[keep].tolist())
        scale = np.where(keep, float(g) / denom, 0.0)
        return np.float64(total) / np.float64(denom), scale[:, None] * batch.f


def capped64(z: np.ndarray, cap: float):
    """(c tanh(z / c), its derivative 1 - tanh^2) in float64; (z, 1) without a cap. The
    derivative as 4 e / (1 + e)^2 with e = exp(-2 |z / c|): no cancellation where tanh
    saturates; +-inf logits give +-c and 0, NaN stays NaN."""
    if cap == 0:
        return z, np.ones_like(z)
    with np.errstate(invalid="ignore", over="ignore"):
        u = z / cap
        e = np.exp(-2 * np.abs(u))
        return cap * np.tanh(u), 4 * e / (1 + e) ** 2


@dataclass
class LseTruth:
    """The float64 truth of the logsumexp terms: lse per row (0 where the row does not count),
    the softmax p (relative to the row max: exact where lse cannot hold log s next to a huge
    logit), the z-loss's per-row weight in the reduced loss, and the incoming gradient of each
    row's lse (``g_lse`` for ``return_lse`` plus the z-loss's 2 z_loss lse zs)."""

    lse: np.ndarray
    p: np.ndarray
    z_scale: np.ndarray
    g_lse: np.ndarray


def lse_truth(zc: np.ndarray, valid, keep, reduction, g_rows, z_loss, g_lse) -> LseTruth:
    R = zc.shape[0]
    lse, p = np.zeros(R), np.zeros_like(zc)
    with np.errstate(invalid="ignore"):
        for i in range(R):
            m = float(zc[i].max()) if zc.shape[1] else -INF
            L = _lse(zc[i] - m) if math.isfinite(m) else math.nan
            lse[i] = (m + L if math.isfinite(m) else math.nan) if valid[i] else 0.0  # a bad row: NaN (its loss too)
            p[i] = np.exp((zc[i] - m) - L)
    n_kept = max(int(keep.sum()), 1)
    zs = np.where(keep, g_rows if reduction == "none" else float(g_rows) / (n_kept if reduction == "mean" else 1), 0.0)
    with np.errstate(invalid="ignore"):
        gl = np.where(valid, 0.0 if g_lse is None else g_lse, 0.0) + np.where(keep, 2 * z_loss * lse * zs, 0.0)
    return LseTruth(lse, p, zs, gl)


def logits_truth(zc, slope, batch: Batch, keep, reduction, g_rows, z_loss, g_lse):
    """The reduced loss (cross-entropy and z-loss), the lse terms, and the gradient of
    ``loss . g + lse . g_lse`` w.r.t. the capped logits (``pre``) and the raw ones."""
    loss, f = reduce_truth(batch, reduction, keep, g_rows)
    lt = lse_truth(zc, batch.valid, keep, reduction, g_rows, z_loss, g_lse)
    if z_loss:
        zl = np.where(keep, z_loss * lt.lse**2, 0.0)
        n_kept = max(int(keep.sum()), 1)
        loss = loss + (zl if reduction == "none" else math.fsum(zl.tolist()) / (n_kept if reduction == "mean" else 1))
    with np.errstate(invalid="ignore", over="ignore"):
        pre = f + np.where(lt.g_lse[:, None] != 0, lt.g_lse[:, None] * lt.p, 0.0)
        grad = np.where(pre == 0, 0.0, pre * slope)  # an ignored row is 0, whatever its logits
    return loss, lt, pre, grad


# ---------------------------------------------------------------------------- mpmath


def mp_row(z, q, k, onehot_label=None, dps=50):
    """The same row math with mpmath, straight from the definitions (eps = p - q / t, no
    log-domain tricks): ``dps`` digits plus what the row's spread can cancel (p_j = 1 - 1e-35
    needs 35 more), so the result is exact to ~50 digits. Returns (loss, f) as float64."""
    import mpmath

    spread = float(np.max(z) - np.min(z)) if len(z) else 0.0
    with mpmath.workdps(dps + int(2 * spread / math.log(10)) + 10):
        zz = [mpmath.mpf(float(v)) for v in z]
        mx = max(zz)
        zz = [v - mx for v in zz]  # exact at this precision
        qq = [mpmath.mpf(float(v)) for v in q]
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in zz))
        logp = [v - lse for v in zz]
        if onehot_label is not None:
            loss = -qq[onehot_label] * logp[onehot_label]
        else:
            loss = -mpmath.fsum(a * b for a, b in zip(qq, logp) if a != 0)
        t = mpmath.fsum(qq)
        if t == 0:
            return float(loss), np.zeros(len(z))
        eps = [mpmath.exp(lp) - a / t for lp, a in zip(logp, qq)]
        kk = mpmath.mpf(k)
        powk = [abs(e) ** kk if e != 0 else mpmath.mpf(0) for e in eps]
        s_neg = mpmath.fsum(pk for pk, e in zip(powk, eps) if e < 0)
        s_pos = mpmath.fsum(pk for pk, e in zip(powk, eps) if e >= 0)
        f = []
        for pk, e in zip(powk, eps):
            if e < 0:
                f.append(-t * pk)
            else:
                f.append(t * s_neg * pk / s_pos if s_pos != 0 else mpmath.mpf(0))
        return float(loss), np.array([float(v) for v in f])


# ============================================================================ comparison harness
# Everything above is the truth (numpy, no library code). Below: calling the library and
# PyTorch and judging the difference (tests/test_fuzz.py, tests/test_defects.py).

C_MODEL = 8.0  # roundings per element in the rounding model (tests/test_fuzz.py docstring)


def soft_cancel_rtol(zc: torch.Tensor, q: torch.Tensor, k: float, u: float, c: float = C_MODEL) -> torch.Tensor:
    """Per element of soft rows (capped logits ``zc`` and target rows ``q``, float64), the
    relative error an evaluation in arithmetic of unit roundoff ``u`` may carry in its
    |eps_j|^k term where eps_j = p_j - q_j / t cancels: p_j's ``c`` roundings at the scale of
    |log p_j| + log2 C, magnified p_j / |eps_j| times, then k-fold (pseudo_grad_tolerance's
    model for lp_j, elementwise). Classes without target mass do not cancel (eps = p)."""
    logp = torch.log_softmax(zc, 1)
    p = logp.exp()
    t = q.sum(1, keepdim=True)
    eps = (p - q / torch.where(t != 0, t, 1)).abs()
    cond = torch.where(q != 0, p / eps, 1.0)
    L2 = 1 + math.log2(max(zc.shape[1], 1))
    return (k * c * u * (logp.abs() + L2) * cond).nan_to_num(0.0, posinf=float("inf"))


def _event(text):
    """hypothesis.event inside a hypothesis test, nothing elsewhere."""
    try:
        import hypothesis
        from hypothesis.control import currently_in_test_context
    except ImportError:
        return
    if currently_in_test_context():
        hypothesis.event(text)


def _load_interpreted():
    """As tests/test_triton_interpreter.py: triton.jit chooses the interpreter when a kernel
    is decorated, so reload the kernel modules if they were imported without it."""
    import hardloss_cuda.triton_kernels.launch as launch

    if type(launch.onehot_fwd_kernel).__name__ != "InterpretedFunction":
        for name in ("rowmath", "fwd", "bwd", "config", "launch"):
            importlib.reload(sys.modules[f"hardloss_cuda.triton_kernels.{name}"])
    return launch


def _trim_is_decidable(batch, frac, dtype):
    """Whether the kept set is the same for any loss values within the library's legitimate
    error: all finite, frac * n not within rounding of a .5 boundary, and a clear loss gap
    at the cut."""
    n = int(batch.valid.sum())
    lv = batch.loss_rows[batch.valid]
    if not np.isfinite(lv).all():
        return False
    fn = frac * n
    if abs(fn - math.floor(fn) - 0.5) < 1e-4 and float(np.float32(frac) * n) != fn:
        return False
    r = max(round(fn), 1)
    if r >= n:
        return True
    srt = np.sort(lv)[::-1]
    rel = 1e-9 if dtype == torch.float64 else 1e-4
    return srt[r - 1] - srt[r] > rel * max(abs(srt[0]), 1e-30)


def judged_options(batch, trim, reduction, dtype):
    """(trim, reduction, kept rows) as the comparison judges them: a trim whose kept set is not
    decided at the dtype's precision (ties at the cut) is dropped, and a mean whose kept rows'
    weights sum to 0 (0 / 0 or x / 0: tested by test_defects against F.cross_entropy) is
    taken as a sum. The library must then be called with these."""
    if trim is not None and batch.valid.any() and not _trim_is_decidable(batch, trim, dtype):
        _event("trim dropped: ties at the cut")
        trim = None
    keep = keep_mask(batch.loss_rows, batch.valid, trim) if trim is not None else batch.valid.copy()
    if reduction == "mean" and keep.any() and math.fsum(batch.rw[keep].tolist()) == 0:
        reduction = "sum"
    _event(f"trim {'on' if trim is not None else 'off'}, reduction {reduction}")
    return trim, reduction, keep


def rows_of(t: torch.Tensor) -> torch.Tensor:
    """(C,) / (N, C) / (N, C, d1, ...) -> (R, C) in the library's row order."""
    if t.dim() == 1:
        return t.reshape(1, -1)
    if t.dim() == 2:
        return t
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def _baseline(x, target, weight, mixture, ignore_index, reduction, s, g, keep, valid, direct, cap=0.0, z_loss=0.0,
              g_lse=None):
    """PyTorch's own value, lse and gradient in the dtype: F.cross_entropy with the same
    arguments (``direct``), or (mixture, trimming) per-row F.cross_entropy with the mixture
    rows as probability targets, masked and reduced in the dtype; of ``c tanh(x / c)`` with a
    cap, plus ``z_loss`` times the kept rows' squared ``torch.logsumexp`` and the lse term
    ``(lse * g_lse).sum()`` when asked for. Returns (loss, lse or None, x.grad)."""
    x = x.detach().clone().requires_grad_(True)
    xz = cap * torch.tanh(x / cap) if cap else x
    dev = x.device
    kt, vt = torch.as_tensor(keep, device=dev), torch.as_tensor(valid, device=dev)
    if direct:
        out = F.cross_entropy(xz, target, weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=s)
    else:
        xr = rows_of(xz)
        if target.is_floating_point():
            y = None
            rows = F.cross_entropy(xr, rows_of(target), weight, reduction="none", label_smoothing=s)
        else:
            y = target.reshape(-1)
            if mixture is not None:
                P = mixture[torch.where(y == ignore_index, 0, y)]
                rows = F.cross_entropy(xr, P, weight, reduction="none")
            else:
                rows = F.cross_entropy(xr, y, weight, ignore_index=ignore_index, reduction="none", label_smoothing=s)
        rows = torch.where(kt, rows, 0)
        if reduction == "none":
            out = rows.reshape(x.shape[:1] + x.shape[2:] if x.dim() > 1 else ())
        elif reduction == "sum":
            out = rows.sum()
        else:
            if y is None:
                rw = torch.ones(rows.shape, dtype=x.dtype, device=dev)
            else:
                ww = weight if weight is not None else torch.ones(xr.shape[1], dtype=x.dtype, device=dev)
                rw = torch.where(vt, ww[torch.where(vt, y, 0)], 0)
            out = rows.sum() / torch.where(kt, rw, 0).sum()
    lse = None
    if z_loss or g_lse is not None:
        lse_rows = torch.logsumexp(rows_of(xz), 1)
        if z_loss:
            zl = z_loss * torch.where(kt, lse_rows, 0).square()
            if reduction == "none":
                out = out + zl.reshape(out.shape)
            else:
                out = out + (zl.sum() if reduction == "sum" else zl.sum() / kt.sum().clamp_min(1))
        lse = torch.where(vt, lse_rows, 0)
    total = (out * g).sum()
    if g_lse is not None:
        total = total + (lse * g_lse.to(lse.dtype).reshape(lse.shape)).sum()
    total.backward()
    return out.detach(), None if lse is None else lse.detach(), x.grad


def _ulp(dtype):
    return float(torch.finfo(dtype).eps)


def _subnormal(dtype):
    return float(torch.finfo(dtype).smallest_normal) * _ulp(dtype)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _u_acc(dtype):
    return 2.0**-53 if dtype == torch.float64 else 2.0**-24


def _nan_inf_check(name, got, truth):
    gn, tn = np.isnan(got), np.isnan(truth)
    assert np.array_equal(gn, tn), (
        f"{name}: NaN pattern differs: got NaN at {np.argwhere(gn & ~tn)[:5].tolist()} (truth finite), "
        f"missing NaN at {np.argwhere(tn & ~gn)[:5].tolist()}; got {got.reshape(-1)[:6].tolist()}")
    ti = np.isinf(truth)
    assert np.array_equal(got[ti], truth[ti]), f"{name}: infinite entries differ: got {got[ti][:5]} truth {truth[ti][:5]}"
    gi = np.isinf(got) & ~tn & ~ti
    assert not gi.any(), f"{name}: infinite where the truth is finite: {np.argwhere(gi)[:5].tolist()}"


def _overflow(truth, dtype):
    """The truth as the dtype can hold it: values that round past its max are infinite."""
    cast = torch.from_numpy(np.ascontiguousarray(truth)).to(dtype).double().numpy()
    return np.where(np.isinf(cast) & np.isfinite(truth), cast, truth)


def _ratio(err, allowed):
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(err == 0, 0.0, err / allowed)
    return float(r.max()) if r.size else 0.0


def _np(t):
    return None if t is None else t.detach().double().cpu().numpy()


def _default_run(backend, target, weight, mixture, ignore_index, s, k, cap, z_loss, want_lse):
    """hl.cross_entropy forward and backward: (loss, lse or None, x.grad) for a leaf x."""

    def run(x, g, g_lse, reduction, trim):
        out = hl.cross_entropy(x, target, weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=s,
                               k=k, mixture=mixture, trim=trim, softcap=cap or None, z_loss=z_loss,
                               return_lse=want_lse, backend=backend)
        out, lse = out if want_lse else (out, None)
        total = (out * g).sum() + (0 if lse is None else (lse * g_lse.to(lse.dtype).reshape(lse.shape)).sum())
        total.backward()
        return out, lse, x.grad

    return run


def check_against_truth(x, target, weight=None, mixture=None, ignore_index=-100, reduction="mean", s=0.0,
                        k=1.0, trim=None, g=None, *, backend, strict=False, softcap=0.0, z_loss=0.0, g_lse=None,
                        run=None, cols=None):
    """Run the library forward and backward (incoming gradient ``g``, random when None) on the
    leaf ``x`` and compare loss and x.grad with the float64 truth under the tolerance of
    tests/test_fuzz.py's docstring. ``strict`` (tests/test_defects.py) is the issue's bar:
    the loss within 2x PyTorch's error + 2 ulp, and at k = 1 the gradient within 2x PyTorch's largest
    error in the row + (2 ulp + 4 u (1 + log2 C)) times the row's largest entry, without the
    per-element rounding model. Returns (error/allowed of the loss, of the gradient).

    The LM options: ``softcap`` (the truth is of c tanh(z / c), its gradient times the slope),
    ``z_loss``, and ``g_lse`` ((R,) incoming gradient of the returned per-row lse, which is then
    compared too). ``run(x, g, g_lse, reduction, trim) -> (loss, lse or None, gradient)``
    replaces the default call of hl.cross_entropy (other front ends: in place, torch.func, the
    vocab-parallel loss); it must use the reduction and trim it is given (the harness drops a
    trim whose kept set ties, and sums a mean whose weights sum to 0). Its gradient may be the
    columns ``cols`` (a slice) of x's only."""
    dtype = x.dtype
    x = x.detach().requires_grad_(True)
    C = x.shape[0] if x.dim() == 1 else x.shape[1]
    z64 = _np(rows_of(x))
    prob = target.is_floating_point()
    t64 = _np(rows_of(target)) if prob else target.reshape(-1).cpu().numpy().copy()
    w64, m64 = _np(weight), _np(mixture)
    zc64, slope64 = capped64(z64, softcap)
    batch = batch_truth(zc64, t64, w64, m64, ignore_index, s, k)
    R = z64.shape[0]
    lm = softcap != 0 or z_loss != 0 or g_lse is not None
    assert not (strict and lm), "strict mode judges the plain loss only"
    trim, reduction, keep = judged_options(batch, trim, reduction, dtype)

    out_shape = x.shape[:1] + x.shape[2:] if (reduction == "none" and x.dim() > 1) else ()
    if g is None:
        g = torch.randn(out_shape, dtype=torch.float64).to(dtype)
    g = g.to(dtype).to(x.device)
    g64 = _np(g)
    g_rows = g64.reshape(-1) if reduction == "none" else float(g64)
    gl = None if g_lse is None else torch.as_tensor(g_lse, dtype=_acc_dtype(dtype)).to(x.device)
    loss_t, lt, pre_t, grad_rows_t = logits_truth(zc64, slope64, batch, keep, reduction, g_rows, z_loss,
                                                  None if gl is None else _np(gl))
    p64 = lt.p
    with np.errstate(invalid="ignore", over="ignore"):
        lse_part = np.where(lt.g_lse[:, None] != 0, lt.g_lse[:, None] * p64, 0.0)

    if run is None:
        run = _default_run(backend, target, weight, mixture, ignore_index, s, k, softcap, z_loss, gl is not None)
    out, lse_got, grad = run(x, g, gl, reduction, trim)
    assert out.dtype == dtype and tuple(out.shape) == tuple(out_shape), (out.dtype, out.shape)
    cols = slice(0, C) if cols is None else cols
    want_shape = x.shape if cols == slice(0, C) else rows_of(x)[:, cols].shape
    assert grad is not None and grad.dtype == dtype and grad.shape == want_shape, (grad, want_shape)

    direct = mixture is None and trim is None
    base_loss, base_lse, base_grad = _baseline(x, target, weight, mixture, ignore_index, reduction, s, g, keep,
                                               batch.valid, direct, softcap, z_loss, gl)
    u = _u_acc(dtype)
    log2R = math.log2(R + 1)
    maxzc = np.array([np.abs(r[np.isfinite(r)]).max(initial=0.0) for r in zc64]) if softcap else np.zeros(R)
    L2 = 1 + math.log2(C)
    # the lse's own error (rounded at its scale, its sums, the capped logits' rounding)
    with np.errstate(invalid="ignore"):
        d_lse = C_MODEL * u * (np.abs(lt.lse) + L2 + maxzc)

    # ---- loss
    got = _np(out).reshape(-1)
    truth = _overflow(np.asarray(loss_t, dtype=np.float64).reshape(-1), dtype)
    if reduction != "none" and np.isfinite(truth).all():
        # the reduction sums the rows (and their z-loss) in the accumulation dtype first: a sum past
        # its max is inf there even where the mean would fit
        with np.errstate(invalid="ignore", over="ignore"):
            rows_sum = np.nansum(np.abs(np.where(keep, batch.loss_rows, 0))) + (
                np.nansum(np.where(keep, z_loss * lt.lse**2, 0.0)) if z_loss else 0.0)
        if rows_sum > float(torch.finfo(_acc_dtype(dtype)).max):
            _event("the reduction's sum overflows the accumulation dtype")
            truth = np.where(np.isfinite(got), truth, got)  # inf (of either sign) is then right too
    _nan_inf_check("loss", got, truth)
    fin = np.isfinite(truth)
    with np.errstate(invalid="ignore"):
        e_torch = np.abs(_np(base_loss).reshape(-1) - truth)
        # the rounding model of a sum of C (and R rows of) non-negative terms in the accumulation dtype
        model = C_MODEL * u * (1 + math.log2(C) + (log2R if reduction != "none" else 0)) * np.abs(truth)
        if lm:  # the capped logits' rounding (t |z_c| a row) and the z-loss's 2 z_loss |lse| d_lse
            t_rows = np.array([abs(r.t) for r in batch.rows])
            e_ce = np.where(keep, C_MODEL * u * t_rows * maxzc, 0.0)
            e_z = np.where(keep, 2 * z_loss * np.abs(lt.lse) * d_lse, 0.0)
            if reduction == "none":
                model = model + e_ce + e_z
            elif reduction == "sum":
                model = model + np.nansum(e_ce) + np.nansum(e_z)
            else:
                rw = abs(math.fsum(batch.rw[keep].tolist())) if keep.any() else 1.0
                model = model + np.nansum(e_ce) / max(rw, 1e-300) + np.nansum(e_z) / max(int(keep.sum()), 1)
    if strict:
        e_torch = np.where(np.isfinite(e_torch), 2 * e_torch, model)  # PyTorch NaN where the contract is not
    else:
        e_torch = np.maximum(np.where(np.isfinite(e_torch), 2 * e_torch, 0), model)
    allowed = e_torch + 2 * _ulp(dtype) * np.abs(truth) + _subnormal(dtype)
    err = np.abs(got - truth)
    r_loss = _ratio(err[fin], allowed[fin])
    if r_loss > 1:
        j = int(np.argmax(np.where(err[fin] == 0, 0, err[fin] / allowed[fin])))
        raise AssertionError(
            f"loss[{j}]: got {got[fin][j]!r} truth {truth[fin][j]!r} torch {_np(base_loss).reshape(-1)[fin][j]!r}; "
            f"error/allowed {r_loss:.3g}; got {got[fin][:4].tolist()} truth {truth[fin][:4].tolist()}")

    # ---- lse (acc dtype, exactly 0 where the row does not count)
    if gl is not None:
        lg = _np(lse_got).reshape(-1)
        assert lse_got.dtype == _acc_dtype(dtype) and lg.shape == (R,), (lse_got.dtype, lse_got.shape)
        assert (lg[~batch.valid] == 0).all(), f"lse not 0 on rows that do not count: {lg[~batch.valid][:4]}"
        _nan_inf_check("lse", lg, lt.lse)
        lf = np.isfinite(lt.lse)
        with np.errstate(invalid="ignore"):
            e_t = np.abs(_np(base_lse).reshape(-1) - lt.lse)
        al = np.maximum(np.where(np.isfinite(e_t), 2 * e_t, 0), d_lse) + _ulp(_acc_dtype(dtype)) * np.abs(lt.lse)
        r_lse = _ratio(np.abs(lg - lt.lse)[lf], al[lf] + 1e-300)
        if r_lse > 1:
            i = int(np.argmax(np.where(lf, np.abs(lg - lt.lse) / (al + 1e-300), 0)))
            raise AssertionError(f"lse[{i}]: got {lg[i]!r} truth {lt.lse[i]!r}; error/allowed {r_lse:.3g}")

    # ---- gradient
    grad_rows = _np(rows_of(grad)) if cols == slice(0, C) else _np(grad).reshape(R, len(range(C)[cols]))
    base_rows = _np(rows_of(base_grad))[:, cols]
    grad_rows_t = _overflow(grad_rows_t[:, cols], dtype)
    _nan_inf_check("grad", grad_rows, grad_rows_t)
    if reduction in ("none", "sum"):
        scale = np.where(keep, g_rows, 0.0)
    else:
        den = math.fsum(batch.rw[keep].tolist()) if keep.any() else 1.0
        scale = np.where(keep, g_rows / den, 0.0)
    tiny_acc = float(torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).smallest_normal)
    r_grad = 0.0
    for i in range(R):
        tr, gt = grad_rows_t[i], grad_rows[i]
        if not np.isfinite(tr).all():
            continue  # NaN / inf pattern checked above
        sc = abs(scale[i])
        sl, pre = slope64[i, cols], pre_t[i, cols]
        floor = (2 * _ulp(dtype) * np.abs(tr).max(initial=0.0) + _subnormal(dtype)
                 + sc * max(batch.rows[i].t, 1.0) * 4 * tiny_acc)
        if backend == "triton" and dtype == torch.bfloat16 and x.device.type == "cpu":
            # The Triton interpreter converts fp32 subnormals to bf16 wrongly (1.4e-42 is
            # stored as ~1e-38; docs/BUILDING.md): on a GPU the conversion is the hardware's.
            floor += float(torch.finfo(torch.bfloat16).smallest_normal)
        with np.errstate(invalid="ignore", divide="ignore"):
            et = np.abs(base_rows[i] - tr)
            # the lse gradient g_lse p_j (p_j: relative error c u (L2 + |log p_j|), g_lse: through d_lse),
            # the slope's absolute error c u, and the products' rounding
            p = np.where(np.isfinite(p64[i, cols]), p64[i, cols], 0.0)
            logp = np.where(p > 0, np.log(p), 0.0)
            # (capped logits are rounded: each carries u |z_c|, which moves log p_j by up to 2 u max |z_c|)
            lm_tol = (sl * (np.abs(lt.g_lse[i]) * C_MODEL * u * (L2 + np.abs(logp) + 2 * maxzc[i])
                            + 2 * z_loss * abs(lt.z_scale[i]) * d_lse[i]) * p
                      + (C_MODEL * u * np.abs(pre) if softcap else 0.0) + C_MODEL * u * np.abs(tr)) if lm else 0.0
        if strict and k == 1.0:
            # 2x PyTorch's largest error in the row, a floor of 2 ulp and the rounding of the
            # row's sums (4 u log2 C) relative to the row's largest entry
            allowed = (2 * float(np.where(np.isfinite(et), et, 0).max(initial=0.0)) + floor
                       + 4 * u * (1 + math.log2(C)) * np.abs(tr).max(initial=0.0))
        else:
            # capped logits: their rounding (u |z_c|) as a larger unit of the row's p (see lm_tol)
            u_i = u * (1 + 2 * maxzc[i] / L2)
            tol_f, ill = pseudo_grad_tolerance(batch.rows[i], k, u_i, C_MODEL)
            if ill:
                _event("an ill-conditioned row (magnitude bound only)")
                bound = sc * magnitude_bound(batch.rows[i], k, u_i, C_MODEL) * (1 + C_MODEL * u * (2 + log2R))
                bound = sl * (bound + np.abs(lse_part[i, cols])) + lm_tol
                worst_j = float(np.max(np.abs(gt) - bound, initial=-1.0))
                assert worst_j <= floor, f"grad row {i} (ill-conditioned): |grad| exceeds the bound by {worst_j:.3g}"
                continue
            model_i = sl * sc * (tol_f[cols] + C_MODEL * u * (2 + log2R) * np.abs(batch.rows[i].f[cols])) + lm_tol
            if k == 1.0:
                model_i = np.maximum(model_i, np.where(np.isfinite(et), 2 * et, 0.0))
            allowed = model_i + floor
        err = np.abs(gt - tr)
        r = _ratio(err, allowed)
        if r > 1:
            j = int(np.argmax(np.where(err == 0, 0, err / allowed)))
            raise AssertionError(
                f"grad row {i}, class {j}: got {gt[j]!r} truth {tr[j]!r} (torch {base_rows[i][j]!r}), "
                f"error/allowed {r:.3g}; row got {gt[:6].tolist()} truth {tr[:6].tolist()}; "
                f"z {z64[i][:6].tolist()} target {t64[i] if t64.ndim == 1 else t64[i][:6].tolist()}")
        r_grad = max(r_grad, r)
    return r_loss, r_grad

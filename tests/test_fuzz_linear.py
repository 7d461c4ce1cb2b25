"""Differential fuzz of ``linear_cross_entropy`` against a float64 truth: random dtypes, (N, D),
(B, T, D) and 1-D hidden states, non-contiguous h and W, bias or none, every target kind
(class indices with weights and ignored rows, smoothing, probabilities, mixtures), k, trimming,
every reduction, softcap, z-loss and the returned lse, chunk sizes from 1 row to "auto", logits
from ordinary to confident (|z| ~ 1e3), and any subset of h, W and b requiring a gradient
(none: a no-grad forward).

The truth is tests/fuzz_oracle.py's on the float64 logits ``h W^T + b`` of the inputs as
rounded to the dtype, propagated to ``grad_h = G W``, ``grad_W = G^T h``, ``grad_b = sum G``.
The bar is the materialised head, ``cross_entropy(F.linear(h, W, b), ...)`` in the same dtype
(torch's matmul, the reference backend): every output within 2x its error against the truth,
per row for the loss (``none``), the lse and ``grad_h``, per tensor for ``grad_W`` and
``grad_b``, plus a floor of a few ulp of the dtype (the loss also within the fuzz's rounding
model of a correct evaluation, as in tests/fuzz_oracle.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

os.environ["TRITON_INTERPRET"] = "1"  # before triton and the kernels are imported

import numpy as np
import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given
from hypothesis import strategies as st

import hardloss_cuda as hl

from . import fuzz_oracle as O
from .fuzz_cases import DTYPES, KS, class_weights
from .fuzz_oracle import _event
# fixtures too: the worst-ratio report at the end of the module, Triton under the interpreter
from .test_fuzz import _record, _report_worst, fuzz, interpreted_triton  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@dataclass(frozen=True)
class LinCase:
    dtype: str
    shape: str  # 2d | 3d | 1d
    N: int  # rows (2d), B (3d)
    T: int  # 3d only
    D: int
    C: int
    bias: bool
    layout: str  # contiguous | h_t | W_t | sliced
    target: str  # index | smooth | probs | mixture
    weight: str  # none | positive | zeros
    ignore: bool
    reduction: str
    k: float
    trim: float | None
    cap: float | None
    z_loss: float
    lse: bool
    chunk: object  # "auto" or rows
    grads: tuple  # which of h, W, b require grad
    scale: float  # of W: logits of ~scale
    seed: int


@st.composite
def lin_cases(draw, max_c=1000):
    dtype = draw(st.sampled_from(list(DTYPES)))
    shape = draw(st.sampled_from(["2d", "2d", "3d", "1d"]))
    C = draw(st.sampled_from([c for c in (1, 2, 3, 7, 33, 300, 1000) if c <= max_c]))
    N = 1 if shape == "1d" else draw(st.integers(0 if shape == "2d" else 1, 24 if C < 300 else 8))
    T = draw(st.integers(1, 4)) if shape == "3d" else 1
    D = draw(st.sampled_from([0, 1, 5, 16, 64]))
    target = draw(st.sampled_from(["index", "index", "smooth", "probs", "mixture"]))
    grads = draw(st.sampled_from([(True, True, True)] * 4 + [(True, False, False), (False, True, True),
                                                             (False, False, True), (False, False, False)]))
    return LinCase(
        dtype=dtype, shape=shape, N=N, T=T, D=D, C=C, bias=draw(st.booleans()),
        layout=draw(st.sampled_from(["contiguous", "h_t", "W_t", "sliced"])), target=target,
        weight=draw(st.sampled_from(["none", "none", "positive", "zeros", "all-zero"])),
        ignore=target in ("index", "mixture") and draw(st.booleans()),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        k=draw(st.one_of(st.sampled_from(KS), st.floats(1 / 16, 8.0))),
        trim=draw(st.one_of(st.none(), st.none(), st.sampled_from([0.25, 0.5, 1.0]), st.floats(0.05, 1.0))),
        cap=draw(st.one_of(st.none(), st.none(), st.sampled_from([3.0, 30.0]), st.floats(0.5, 1e4))),
        z_loss=draw(st.sampled_from([0.0, 0.0, 1e-4, 1e-2])), lse=draw(st.booleans()),
        chunk=draw(st.sampled_from(["auto", "auto", 1, 2, 3, 5, 16])), grads=grads,
        scale=draw(st.sampled_from([1.0, 1.0, 3.0, 30.0, 300.0])), seed=draw(st.integers(0, 2**31 - 1)))


def _make(case: LinCase):
    """(h, W, b, target, weight, mixture, s) in the case's dtype and layout; weight and mixture in
    the accumulation dtype (what the ops take, so the truth sees the same values)."""
    gen = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    lead = {"2d": (case.N,), "3d": (case.N, case.T), "1d": ()}[case.shape]
    R, C, D = math.prod(lead), case.C, case.D

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    h = randn(*lead, D)
    if case.layout == "h_t" and case.shape == "2d":
        h = randn(D, R).t()
    elif case.layout == "sliced":
        h = torch.stack([h, h], -1).reshape(*lead, 2 * D)[..., ::2]
    W = randn(C, D) * case.scale / max(D, 1) ** 0.5
    if case.layout == "W_t":
        W = W.t().contiguous().t()
    b = randn(C) * case.scale / 3 if case.bias else None
    h, W = h.to(dtype), W.to(dtype)
    b = None if b is None else b.to(dtype)
    s = 0.0
    mixture = None
    if case.target == "probs":
        y = torch.softmax(randn(*lead, C) * 2, -1).to(dtype)
    else:
        y = torch.randint(C, lead, generator=gen)
        if case.ignore and R:
            y.view(-1)[torch.rand(R, generator=gen) < 0.3] = -100
        if case.target == "smooth":
            s = float(torch.rand((), generator=gen)) * 0.5 + 1e-3
        elif case.target == "mixture":
            A = torch.rand(C, C, generator=gen, dtype=torch.float64).fill_diagonal_(0)
            A = A / A.sum(1, keepdim=True).clamp_min(1e-300)
            mixture = hl.mcel.simple_mixture(A, 0.3).to(acc)
    weight = class_weights(case.weight, C, gen, acc)
    return h, W, b, y, weight, mixture, s


def _call(fused, h, W, b, y, kw, case, backend):
    """(loss, lse or None) of the fused head, or of the materialised one (torch's matmul in the
    dtype, the reference backend)."""
    if fused:
        return hl.linear_cross_entropy(h, W, y, linear_bias=b, chunk_size=case.chunk, backend=backend, **kw)
    C = W.shape[0]
    logits = F.linear(h, W, b).reshape(-1, C)
    yy = y.reshape(-1, C) if y.is_floating_point() else y.reshape(-1)
    out = hl.cross_entropy(logits, yy, backend="reference", **kw)
    lead = h.shape[:-1]
    if kw.get("return_lse"):
        loss, lse = out
        return (loss.reshape(lead) if kw["reduction"] == "none" else loss), lse.reshape(lead)
    return out.reshape(lead) if kw["reduction"] == "none" else out


def _run(fused, h, W, b, y, kw, case, backend, g, g_lse):
    """loss, lse, and the gradients of loss . g + lse . g_lse w.r.t. the leaves asked for."""
    leaves = [t.detach().clone().requires_grad_(need) if t is not None else None
              for t, need in zip((h, W, b), case.grads)]
    want = [t for t in leaves if t is not None and t.requires_grad]
    with torch.set_grad_enabled(bool(want)):
        out = _call(fused, *leaves, y, kw, case, backend)
        loss, lse = out if case.lse else (out, None)
        grads = [None] * 3
        if want:
            total = (loss * g).sum() + (0 if lse is None else (lse * g_lse.reshape(lse.shape)).sum())
            got = iter(torch.autograd.grad(total, want))
            grads = [next(got) if t is not None and t.requires_grad else None for t in leaves]
    return loss.detach(), None if lse is None else lse.detach(), grads


def _np(t):
    return t.detach().double().cpu().numpy()


def _judge(name, got, mat, truth, dtype, n_rows, floor):
    """The largest error of each of ``n_rows`` rows (1: the whole tensor) within 2x the
    materialised head's largest error in that row + ``floor`` (per element, its row's largest
    taken) + 4 ulp of the row's largest |truth|. Aggregated, so that a materialised error that
    is 0 by luck in one element does not judge ours there; the floor covers rows of one element
    (C = 1, a reduced loss)."""
    got, mat = _np(got).reshape(truth.shape), _np(mat).reshape(truth.shape)
    assert np.array_equal(np.isnan(got), np.isnan(truth)), f"{name}: NaN pattern"
    if truth.size == 0:
        return 0.0
    rows = lambda a: np.broadcast_to(np.nan_to_num(a), truth.shape).reshape(n_rows, -1).max(1)  # noqa: E731
    e, e_m = rows(np.abs(got - truth)), rows(np.abs(mat - truth))
    allowed = 2 * e_m + rows(floor) + 4 * float(torch.finfo(dtype).eps) * rows(np.abs(truth)) + 1e-300
    ratio = e / allowed
    worst = float(ratio.max(initial=0.0))
    if worst > 1:
        i = int(np.argmax(ratio))
        raise AssertionError(f"{name}, row {i} of {n_rows}: largest error {e[i]:.3g} > allowed {allowed[i]:.3g} "
                             f"(materialised head {e_m[i]:.3g}, floor {rows(floor)[i]:.3g})")
    return worst


def _floors(case, h64, W64, b64, batch, keep, reduction, lt, dtype):
    """Floors of the loss and the lse: the matmul's rounding of a logit, a few ulp of
    |h_i| . |W_j| + |b_j| (where the materialised head's own error may be 0 by luck), and for
    the loss the fuzz's rounding model of the row op (tests/fuzz_oracle.py)."""
    R, D = h64.shape
    C = W64.shape[0]
    u_d = float(torch.finfo(dtype).eps) / 2
    u = 2.0**-53 if dtype == torch.float64 else 2.0**-24
    mag = (np.abs(h64) @ np.abs(W64).T + (0 if b64 is None else np.abs(b64))).max(1, initial=0.0)
    dz = 4 * u_d * mag  # a logit's rounding: the capped ones move less (slope <= 1)
    L2 = 1 + math.log2(max(C, 1))
    lse_floor = dz + O.C_MODEL * u * (np.abs(lt.lse) + L2)
    t = np.array([abs(r.t) for r in batch.rows])
    row = np.where(keep, 2 * t * dz + O.C_MODEL * u * L2 * np.abs(batch.loss_rows)
                   + 2 * case.z_loss * np.abs(lt.lse) * lse_floor, 0.0)
    if reduction == "none":
        return row, lse_floor
    total = np.nansum(row) + O.C_MODEL * u * math.log2(R + 1) * abs(np.nansum(np.where(keep, batch.loss_rows, 0)))
    if reduction == "mean":
        total /= max(abs(math.fsum(batch.rw[keep].tolist())), 1e-300) if keep.any() else 1.0
    return np.array(total), lse_floor


def _grad_floors(case, h64, W64, b64, z64, slope, batch, keep, reduction, g_rows, lt, G, lse_floor, dtype):
    """Floors of the gradients: the row op's rounding model on G = d total / dz (tests/
    fuzz_oracle.py's pseudo_grad_tolerance for f, the lse terms', the slope's), G's rounding to
    the dtype, through the gradient matmuls, whose sums add ~u sqrt(n) each. And the logits'
    own rounding to the dtype (dz = u_d |z| + a few ulp of |h| . |W|), which two correct heads
    whose matmuls round differently do not share: p moves by 2 dz relative, a saturated
    softcap's slope by 2 dz / c."""
    R, C = G.shape
    u_d = float(torch.finfo(dtype).eps) / 2
    u = 2.0**-53 if dtype == torch.float64 else 2.0**-24
    cu = O.C_MODEL * u
    tiny = float(torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).smallest_normal)
    L2 = 1 + math.log2(max(C, 1))
    dz = u_d * np.abs(z64) + 4 * u * (np.abs(h64) @ np.abs(W64).T + (0 if b64 is None else np.abs(b64)))
    dzc = slope * dz if case.cap else dz  # as the row op sees it (the cap's slope is <= 1)
    if reduction == "mean":
        den = math.fsum(batch.rw[keep].tolist()) if keep.any() else 1.0
        sc = np.where(keep, g_rows / den, 0.0)
    else:
        sc = np.where(keep, g_rows, 0.0)
    fG = np.zeros((R, C))
    for i in range(R):
        row = batch.rows[i]
        u_i = max(u, float(np.nan_to_num(dzc[i]).max(initial=0.0)) / L2)  # the logits' error as p's unit
        tol_f, ill = O.pseudo_grad_tolerance(row, case.k, u_i, O.C_MODEL)
        if ill:
            tol_f = np.abs(row.f) + O.magnitude_bound(row, case.k, u_i, O.C_MODEL)
        p = np.nan_to_num(lt.p[i])
        with np.errstate(divide="ignore"):
            logp = np.where(p > 0, np.log(np.where(p > 0, p, 1)), 0.0)
        pre = (abs(sc[i]) * (tol_f + cu * np.abs(row.f)) + abs(lt.g_lse[i]) * p * O.C_MODEL * u_i * (L2 - logp)
               + 2 * case.z_loss * abs(lt.z_scale[i]) * lse_floor[i] * p)
        # + the accumulation dtype's underflow: |eps|^k, exp and the slope flush near its smallest normal
        fG[i] = (slope[i] * pre + (cu + u_d) * np.abs(G[i])
                 + 4 * tiny * (abs(sc[i]) * max(row.t, 1.0) + abs(lt.g_lse[i])))
        if case.cap:
            fG[i] += np.abs(G[i]) * 2 * dz[i] / case.cap
    absG = np.abs(G)
    return {"grad_h": fG @ np.abs(W64) + 2 * u * math.sqrt(C + 2) * (absG @ np.abs(W64)),
            "grad_W": fG.T @ np.abs(h64) + 2 * u * math.sqrt(R + 2) * (absG.T @ np.abs(h64)),
            "grad_b": fG.sum(0) + 2 * u * math.sqrt(R + 2) * absG.sum(0)}


def check_linear_case(case: LinCase, backend: str):
    h, W, b, y, weight, mixture, s = _make(case)
    dtype = h.dtype
    C, D = W.shape
    lead = h.shape[:-1]
    R = math.prod(lead)
    _event(f"dtype {case.dtype}, shape {case.shape}, target {case.target}, grads {case.grads}")

    # the float64 truth of the logits h W^T + b of the rounded inputs
    h64, W64 = h.double().reshape(R, D).numpy(), W.double().numpy()
    b64 = None if b is None else b.double().numpy()
    z64 = h64 @ W64.T + (0 if b64 is None else b64)
    t64 = y.double().reshape(R, C).numpy() if y.is_floating_point() else y.reshape(R).numpy().copy()
    zc, slope = O.capped64(z64, case.cap or 0.0)
    batch = O.batch_truth(zc, t64, None if weight is None else weight.double().numpy(),
                          None if mixture is None else mixture.double().numpy(), -100, s, case.k)
    trim, reduction, keep = O.judged_options(batch, case.trim, case.reduction, dtype)
    gen = torch.Generator().manual_seed(case.seed + 1)
    g = torch.randn(lead if reduction == "none" else (), generator=gen, dtype=torch.float64).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g_lse = torch.randn(R, generator=gen, dtype=torch.float64).to(acc)
    g_rows = _np(g).reshape(-1) if reduction == "none" else float(g)
    loss_t, lt, _pre, G = O.logits_truth(zc, slope, batch, keep, reduction, g_rows, case.z_loss,
                                         _np(g_lse) if case.lse else None)
    out_shape = lead if reduction == "none" else ()
    truths = {"loss": np.asarray(loss_t, dtype=np.float64).reshape(out_shape), "lse": lt.lse.reshape(lead),
              "grad_h": (G @ W64).reshape(h.shape), "grad_W": G.T @ h64, "grad_b": G.sum(0)}
    loss_floor, lse_floor = _floors(case, h64, W64, b64, batch, keep, reduction, lt, dtype)
    floors = _grad_floors(case, h64, W64, b64, z64, slope, batch, keep, reduction, g_rows, lt, G, lse_floor, dtype)
    floors["grad_h"] = floors["grad_h"].reshape(h.shape)

    kw = dict(weight=weight, ignore_index=-100, reduction=reduction, label_smoothing=s, k=case.k, mixture=mixture,
              trim=trim, softcap=case.cap, z_loss=case.z_loss, return_lse=case.lse)
    ours = _run(True, h, W, b, y, kw, case, backend, g, g_lse)
    mat = _run(False, h, W, b, y, kw, case, backend, g, g_lse)
    assert ours[0].dtype == dtype and ours[0].shape == truths["loss"].shape
    r = {"loss": _judge("loss", ours[0], mat[0], truths["loss"], dtype, R if reduction == "none" else 1,
                        loss_floor.reshape(out_shape))}
    if case.lse:
        r["lse"] = _judge("lse", ours[1], mat[1], truths["lse"], acc, R, lse_floor.reshape(lead))
    for i, name in enumerate(("grad_h", "grad_W", "grad_b")):
        got, want = ours[2][i], mat[2][i]
        if (got is None) != (want is None):
            raise AssertionError(f"{name}: {got} vs the materialised head's {want}")
        if got is not None:
            assert got.dtype == dtype and got.shape == truths[name].shape, (name, got.dtype, got.shape)
            r[name] = _judge(name, got, want, truths[name], dtype, R if name == "grad_h" else 1, floors[name])
    for name, ratio in r.items():
        _record(backend, f"linear {name}", ratio)


_AVAIL = hl.available_backends()


@pytest.mark.skipif("cpu" not in _AVAIL, reason="the C++ extension is not built")
@fuzz(150)
@given(case=lin_cases())
def test_fuzz_linear_cpu(case):
    check_linear_case(case, "cpu")


@fuzz(60)
@given(case=lin_cases())
def test_fuzz_linear_reference(case):
    check_linear_case(case, "reference")


@fuzz(40)
@given(case=lin_cases(max_c=300))
def test_fuzz_linear_triton(interpreted_triton, case):
    check_linear_case(case, "triton")

"""Differential fuzz of ``cross_entropy``'s LM options and front ends against the float64 truth:
``softcap`` (ordinary, huge and tiny caps), ``z_loss`` and the returned, differentiated
``lse``, on top of tests/fuzz_cases.py's cases (every target kind, k, trimming, layouts,
extreme / tied / -inf / NaN logits), each through one of four front ends:

- ``autograd``: ``loss.backward()``;
- ``inplace``: ``inplace_backward=True`` on a copy of the logits, the gradient of the leaf;
- ``func.grad``: ``torch.func.grad`` of the same scalar;
- ``func.vmap``: per-sample gradients, ``vmap(grad(...))`` over the rows (2-D inputs,
  reduction "none", no trimming: each row is its own batch there).

The truth and the tolerance are tests/fuzz_oracle.py's (``check_against_truth`` with the
softcap, z-loss and lse terms): 2x PyTorch's own error in the same dtype where PyTorch has the
same computation (k = 1), else the rounding model of a correct evaluation in the accumulation
dtype. ``test_harness_catches_planted_errors`` shows that the harness fails on small
deliberate defects (a slope from the raw logits, an lse one part in 1e5 off, a z-loss weight
twice too large).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ["TRITON_INTERPRET"] = "1"  # before triton and the kernels are imported

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given
from hypothesis import strategies as st

import hardloss_cuda as hl

from .fuzz_cases import DTYPES, Case, build, cases
from .fuzz_oracle import _event, check_against_truth, rows_of
# fixtures too: the worst-ratio report at the end of the module, Triton under the interpreter
from .test_fuzz import _record, _report_worst, fuzz, interpreted_triton  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

MODES = ("autograd", "inplace", "func.grad", "func.vmap")


@dataclass(frozen=True)
class LMCase:
    base: Case
    cap: float | None
    z_loss: float
    lse: bool
    mode: str


@st.composite
def lm_cases(draw, **kw):
    base = draw(cases(**kw))
    dtype = DTYPES[base.dtype]
    lo = float(torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).smallest_normal)
    kind = draw(st.sampled_from(["none", "none", "usual", "usual", "float", "huge", "tiny"]))
    cap = {"none": None, "usual": draw(st.sampled_from([1.0, 5.0, 30.0])), "float": draw(st.floats(0.1, 100.0)),
           "huge": 10 ** draw(st.floats(3, 8)), "tiny": lo * 10 ** draw(st.floats(0, 30))}[kind]
    z_loss = draw(st.sampled_from([0.0, 0.0, 1e-4, 1e-2, 0.5]))
    lse = draw(st.booleans())
    modes = ["autograd", "autograd", "inplace", "func.grad"]
    if base.reduction == "none" and base.trim is None and base.d1 is None and base.N > 0:
        modes.append("func.vmap")
    return LMCase(base, cap, z_loss, lse, draw(st.sampled_from(modes)))


def _run(case: LMCase, b, backend):
    """The front end of ``case.mode`` as check_against_truth's ``run``."""
    c = case.base
    kw = dict(weight=b.weight, ignore_index=b.ignore_index, label_smoothing=c.s, k=c.k, mixture=b.mixture,
              softcap=case.cap, z_loss=case.z_loss, return_lse=case.lse, backend=backend)

    def total(out, g, g_lse):
        loss, lse = out if case.lse else (out, None)
        return (loss * g).sum() + (0 if lse is None else (lse * g_lse.to(lse.dtype).reshape(lse.shape)).sum())

    def run(x, g, g_lse, reduction, trim):
        kw["trim"] = trim
        if case.mode in ("autograd", "inplace"):
            xi = x * 1 if case.mode == "inplace" else x  # in place needs a non-leaf
            out = hl.cross_entropy(xi, b.target, reduction=reduction, inplace_backward=case.mode == "inplace", **kw)
            total(out, g, g_lse).backward()
            return (*(out if case.lse else (out, None)), x.grad)
        with torch.no_grad():
            out = hl.cross_entropy(x, b.target, reduction=reduction, **kw)
        if case.mode == "func.grad":
            grad = torch.func.grad(lambda xx: total(hl.cross_entropy(xx, b.target, reduction=reduction, **kw),
                                                    g, g_lse))(x)
        else:  # per-sample: each row alone, its "sum" is the row's loss
            def one(xr, yr, gr, glr):
                return total(hl.cross_entropy(xr, yr, reduction="sum", **kw), gr, glr)

            gl = torch.zeros(x.shape[0], dtype=x.dtype) if g_lse is None else g_lse
            grad = torch.func.vmap(torch.func.grad(one))(x, b.target, g, gl)
        return (*(out if case.lse else (out, None)), grad)

    return run


def check_lm_case(case: LMCase, backend: str):
    b = build(case.base)
    c = case.base
    _event(f"mode {case.mode}")
    _event(f"cap {'none' if case.cap is None else 'on'}, z_loss {case.z_loss > 0}, lse {case.lse}")
    R = rows_of(b.x).shape[0]
    g_lse = torch.randn(R, generator=torch.Generator().manual_seed(c.seed), dtype=torch.float64) if case.lse else None
    r_loss, r_grad = check_against_truth(
        b.x, b.target, b.weight, b.mixture, b.ignore_index, c.reduction, c.s, c.k, c.trim, b.g, backend=backend,
        softcap=case.cap or 0.0, z_loss=case.z_loss, g_lse=g_lse, run=_run(case, b, backend))
    _record(backend, "lm loss", r_loss)
    _record(backend, "lm grad", r_grad)


_AVAIL = hl.available_backends()


@pytest.mark.skipif("cpu" not in _AVAIL, reason="the C++ extension is not built")
@fuzz(300)
@given(case=lm_cases())
def test_fuzz_lm_cpu(case):
    check_lm_case(case, "cpu")


@fuzz(120)
@given(case=lm_cases(max_c=1100))
def test_fuzz_lm_reference(case):
    check_lm_case(case, "reference")


@fuzz(80)
@given(case=lm_cases(max_n=12, max_c=300, big_c=False))
def test_fuzz_lm_triton(interpreted_triton, case):
    check_lm_case(case, "triton")


# ---------------------------------------------------------------------------- the harness's teeth


def _planted(defect):
    """A run of hl.cross_entropy (reference) with one small deliberate defect."""

    def run(x, g, g_lse, _reduction, _trim):
        cap, zl = 3.0, 0.01
        if defect == "slope-of-raw-logits":
            # the softcap's slope 1 - (z / c)^2 from the raw logits instead of the capped ones
            xx = x.detach()
            zc = cap * torch.tanh(xx / cap)
            with torch.no_grad():
                loss, lse = hl.cross_entropy(xx, y, softcap=cap, z_loss=zl, return_lse=True, backend="reference")
            z = zc.clone().requires_grad_()
            l2, lse2 = hl.cross_entropy(z, y, z_loss=zl, return_lse=True, backend="reference")
            ((l2 * g).sum() + (lse2 * g_lse).sum()).backward()
            return loss, lse, z.grad * (1 - torch.square(xx / cap)).clamp_min(0)
        loss, lse = hl.cross_entropy(x, y, softcap=cap, z_loss=zl * (2 if defect == "z-loss-twice" else 1),
                                     return_lse=True, backend="reference")
        if defect == "lse-off":
            lse = lse * (1 + 1e-5)
        ((loss * g).sum() + (lse * g_lse).sum()).backward()
        return loss, lse, x.grad

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 9, generator=gen, dtype=torch.float64) * 2
    y = torch.randint(9, (6,), generator=gen)
    return x, y, run


@pytest.mark.parametrize("defect", ["slope-of-raw-logits", "lse-off", "z-loss-twice", "none"])
def test_harness_catches_planted_errors(defect):
    x, y, run = _planted(defect)
    g_lse = torch.linspace(-1, 1, 6, dtype=torch.float64)
    args = (x, y, None, None, -100, "mean", 0.0, 1.0, None, torch.tensor(1.5, dtype=torch.float64))
    kw = dict(backend="reference", softcap=3.0, z_loss=0.01, g_lse=g_lse, run=run)
    if defect == "none":
        assert max(check_against_truth(*args, **kw)) <= 1
        return
    with pytest.raises(AssertionError):
        check_against_truth(*args, **kw)

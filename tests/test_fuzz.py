"""Property-based differential fuzz of ``hardloss_cuda.cross_entropy`` against a float64 truth.

Every case draws a shape (N up to ~40, C from 1 to ~4100, optional (N, C, d1) inputs), a
dtype, a non-contiguous layout, a reduction, class weights (some 0), ignored rows (default
and in-range ignore_index), label smoothing, probability targets (softmax rows, one-hot
rows, rows not summing to 1), an MCEL mixture, trimming, k, and logits that are ordinary,
extreme (1e3..1e8 and beyond), all equal, tied, very confident, masked with -inf, or NaN /
+inf. The loss and ``x.grad`` (backward with a random incoming gradient) are compared with
``tests/fuzz_oracle.py`` (numpy float64 from the formulas of docs/ROW_MATH.md, on the inputs
as rounded to the tested dtype).

Tolerance (the project's rule): a backend may be no worse than 2x PyTorch's own error in the
same dtype, plus a small floor. PyTorch's own error is that of F.cross_entropy with the same
arguments and dtype (mixtures and trimming: per-row F.cross_entropy with the mixture rows as
probability targets, masked and reduced in the dtype) and, at k = 1, of its autograd
gradient. Where that is tighter than what a correct evaluation in the accumulation dtype
(fp32 for fp16/bf16/fp32, fp64 for fp64) can reach, a rounding model takes over:

- loss: max(2 |torch - truth|, c u (1 + log2 C [+ log2 R for sum / mean]) |truth|)
  + 2 ulp(dtype) |truth| + the dtype's smallest subnormal (the loss is a sum of
  non-negative terms on max-shifted rows: no cancellation);
- gradient, elementwise: max(2 |torch - truth| (k = 1 only), rounding model)
  + 2 ulp(dtype) * max |truth| of the row + subnormal floors. The rounding model
  (``fuzz_oracle.pseudo_grad_tolerance``): relative c u (1 + log2 C + k |log|eps_j||) on
  |eps_j|^k, the perturbation of eps_j itself where p_j - qh_j cancels (p_j carries relative
  error c u (1 + log2 C + |log p_j|), qh_j c u (1 + log2 C)), and the weighted errors of
  S_neg and S_pos on the positive classes, plus c u (2 + log2 R) |f| for the reduction.
  c = 8: after the row statistics each element passes through about eight correctly
  rounded operations (z - lse, exp, - qh, log, * k, exp, * S_neg / S_pos and t, * the
  incoming gradient / the mean's denominator), each at most u; log2 C covers the row sums.
  Rows where the sign of some eps_j is not determined at that precision (p_j = qh_j to
  ~1e-6 in fp32) with a non-negligible share are checked against an a-priori bound
  (|f_j| <= t sum_i |eps_i|^k with every eps_i at the edge of its interval) only.
- NaN exactly where the truth is NaN, infinities equal (values past the dtype's max are
  expected to overflow).

The oracle itself is checked against 50-digit mpmath (``test_oracle_against_mpmath``).

The worst error / allowed ratio per backend is printed at the end of the module.

Profiles: ``HYPOTHESIS_PROFILE=long`` runs 10x the cases of the default (CI) profile.
"""

from __future__ import annotations

import math
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton and the kernels are imported

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings

import hardloss_cuda as hl

from . import fuzz_oracle as O
from .fuzz_cases import KS, Case, build, cases
from .fuzz_oracle import _event, _load_interpreted, _ratio, check_against_truth

settings.register_profile(
    "fuzz-ci",
    deadline=None,
    database=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("long", parent=settings.get_profile("fuzz-ci"))
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fuzz-ci")
SCALE = 10 if _PROFILE == "long" else 1
_BASE = settings.get_profile("long" if _PROFILE == "long" else "fuzz-ci")


def fuzz(n):
    """The profile's settings with n cases (10 n under HYPOTHESIS_PROFILE=long)."""
    return settings(_BASE, max_examples=n * SCALE)


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

# worst error / allowed ratio seen per backend, over the passing comparisons
WORST: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_worst(request):
    yield
    lines = ["", "fuzz: worst error / allowed ratio per backend (1.0 = at the tolerance):"]
    for b, d in sorted(WORST.items()):
        lines.append("  " + b + ": " + ", ".join(f"{k} {v:.3g}" for k, v in sorted(d.items())))
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            print("\n".join(lines))
    else:
        print("\n".join(lines))


def _record(backend, what, ratio):
    d = WORST.setdefault(backend, {})
    if math.isfinite(ratio):
        d[what] = max(d.get(what, 0.0), ratio)


def check_case(case: Case, backend: str):
    b = build(case)
    _event(f"dtype {case.dtype}, target {case.target}")
    C = case.C
    _event(f"C {'1' if C == 1 else '2-17' if C <= 17 else '18-300' if C <= 300 else '>1000'}")
    r_loss, r_grad = check_against_truth(b.x, b.target, b.weight, b.mixture, b.ignore_index, case.reduction, case.s,
                                         case.k, case.trim, b.g, backend=backend)
    _record(backend, "loss", r_loss)
    _record(backend, "grad", r_grad)


# ---------------------------------------------------------------------------- tests

_AVAIL = hl.available_backends()


@pytest.mark.skipif("cpu" not in _AVAIL, reason="the C++ extension is not built")
@fuzz(1500)
@given(case=cases())
def test_fuzz_cpu(case):
    check_case(case, "cpu")


@fuzz(500)
@given(case=cases())
def test_fuzz_reference(case):
    check_case(case, "reference")


@pytest.fixture(scope="module")
def interpreted_triton():
    pytest.importorskip("numpy", reason="the Triton interpreter needs numpy")
    pytest.importorskip("triton", reason="triton is not installed")
    return _load_interpreted()


@fuzz(300)
@given(case=cases(max_n=16, max_c=300, big_c=False))
def test_fuzz_triton(interpreted_triton, case):
    check_case(case, "triton")


@pytest.mark.skipif("cuda_emu" not in _AVAIL, reason="the emulated CUDA backend is not built")
@fuzz(400)
@given(case=cases())
def test_fuzz_cuda_emu(case):
    """The CUDA kernels on the emulator (docs/CUDA_EMU.md), every other case on the small device
    profile (2 SMs, 16 KB of shared memory: grid-stride loops, partial row caches) whatever the
    test seed's profile."""
    from hardloss_cuda import _library

    emu = _library.CUDA_EMU
    previous = emu.set_profile("small" if case.seed % 2 else "h100")
    try:
        check_case(case, "cuda_emu")
    finally:
        emu.set_profile(previous)


# ---------------------------------------------------------------------------- the oracle itself


def _mp_cases(n, seed=1234):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        C = int(rng.integers(1, 7))
        kind = rng.choice(["onehot", "probs", "onehot-probs", "dominant", "smooth"])
        scale = rng.choice([0.1, 1.0, 5.0, 20.0])
        z = rng.standard_normal(C) * scale
        if rng.random() < 0.3:
            z[rng.integers(C)] += rng.uniform(20, 60)  # confident
        k = float(rng.choice(KS)) if rng.random() < 0.5 else float(rng.uniform(1 / 16, 8))
        w = rng.uniform(0.2, 3, C) if rng.random() < 0.4 else np.ones(C)
        y = int(rng.integers(C))
        label = None
        if kind == "onehot":
            q = np.zeros(C)
            q[y] = w[y]
            label = y
        elif kind == "onehot-probs":
            q = np.zeros(C)
            q[y] = w[y]
        elif kind == "dominant":
            q = rng.uniform(0, 0.1, C)
            q[y] = 1.0
            q = q * w
        elif kind == "smooth":
            s = rng.uniform(0.01, 1)
            q = w * ((1 - s) * (np.arange(C) == y) + s / C)
        else:
            q = rng.dirichlet(np.ones(C)) * w
        yield z, q, k, label


def test_oracle_against_mpmath():
    """fuzz_oracle.row_truth against the definitions at 50 digits on a few hundred rows
    (C <= 6, ordinary, large and confident logits, one-hot, dominant, smoothed and soft
    targets, weights): within the float64 rounding model, and the worked example."""
    pytest.importorskip("mpmath")
    worst = 0.0
    for z, q, k, label in _mp_cases(400):
        row = O.row_truth(z, q, label, k, True)
        loss_mp, f_mp = O.mp_row(z, q, k, label)
        assert abs(row.loss - loss_mp) <= 1e-14 * abs(loss_mp) + 1e-300, (z, q, k, row.loss, loss_mp)
        tol, ill = O.pseudo_grad_tolerance(row, k, 2.0**-53, 2.0)
        assert not ill
        err = np.abs(row.f - f_mp)
        r = _ratio(err, tol + 1e-300)
        assert r <= 1, (z, q, k, row.f, f_mp, tol)
        worst = max(worst, r)
    # the worked example: confident row, the probability target equal to the class index
    z = np.array([0.0, 40.0])
    for q, label in ((np.array([0.0, 1.0]), None), (np.array([0.0, 1.0]), 1)):
        f = O.row_truth(z, q, label, 1 / 16, True).f
        np.testing.assert_allclose(f, [math.exp(-2.5), -math.exp(-2.5)], rtol=1e-14)

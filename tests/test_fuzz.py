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
from dataclasses import dataclass

os.environ["TRITON_INTERPRET"] = "1"  # before triton and the kernels are imported

import numpy as np
import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hardloss_cuda as hl

from . import fuzz_oracle as O
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

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KS = [1 / 16, 1 / 4, 1 / 2, 1.0, 2.0, 8.0]

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


# ---------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    dtype: str
    N: int
    C: int
    d1: int | None  # (N, C, d1) input; 0 means a 1-D (C,) input
    layout: str  # contiguous | transposed | sliced
    reduction: str
    weight: str  # none | positive | zeros
    target: str  # index | smooth | mixture | probs
    probs: str  # soft | onehot | unnormalized | mixed (probs only)
    s: float
    ignore: str  # none | default | custom
    trim: float | None
    k: float
    modes: tuple  # logit modes, one drawn per row
    nonfinite: str  # none | ninf | nan
    seed: int


def _pick(draw, weighted):
    """One key of ``weighted`` ({value: weight}) by a drawn integer (shrinks to the first)."""
    items = list(weighted.items())
    i = draw(st.integers(0, sum(w for _, w in items) - 1))
    for v, w in items:
        if i < w:
            return v
        i -= w
    raise AssertionError


LOGIT_MODES = ("normal", "extreme", "equal", "tied", "confident")


@st.composite
def cases(draw, max_n=40, max_c=4100, big_c=True):
    dtype = draw(st.sampled_from(list(DTYPES)))
    cls = _pick(draw, {"tiny": 4, "small": 4, "big": 1 if big_c else 0, "mid": 1})
    if cls == "tiny":
        C = draw(st.sampled_from([1, 2, 3]))
    elif cls == "small":
        C = draw(st.integers(4, 17))
    elif cls == "mid":
        C = draw(st.integers(18, min(300, max_c)))
    else:
        C = draw(st.sampled_from([1000, 1023, 2047, 2049, 4100]))
    shape = _pick(draw, {"2d": 6, "3d": 3, "1d": 1})
    N = draw(st.integers(0, max_n if C <= 300 else min(max_n, 6)))
    d1 = None if shape == "2d" else (0 if shape == "1d" else draw(st.integers(1, 4 if C <= 300 else 2)))
    if d1 == 0:
        N = 1
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced"]))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    weight = _pick(draw, {"none": 3, "positive": 2, "zeros": 1})
    target = _pick(draw, {"index": 4, "smooth": 2, "mixture": 2, "probs": 3})
    probs = draw(st.sampled_from(["soft", "onehot", "unnormalized", "mixed"])) if target == "probs" else "soft"
    s = 0.0
    if target == "smooth" or (target == "probs" and draw(st.booleans())):
        s = draw(st.one_of(st.sampled_from([0.1, 0.5, 1.0]), st.floats(1e-3, 1.0)))
    ignore = "none" if target == "probs" or d1 == 0 else _pick(draw, {"none": 2, "default": 2, "custom": 1})
    trim = None
    if draw(st.integers(0, 3)) == 0:
        trim = draw(st.one_of(st.sampled_from([0.25, 0.5, 0.75, 1.0]), st.floats(0.05, 1.0)))
    k = draw(st.one_of(st.sampled_from(KS), st.floats(1 / 16, 8.0)))
    modes = tuple(m for m in LOGIT_MODES if draw(st.booleans())) or ("normal",)
    nonfinite = _pick(draw, {"none": 8, "ninf": 2 if target == "index" else 0, "nan": 1})
    seed = draw(st.integers(0, 2**31 - 1))
    return Case(dtype, N, C, d1, layout, reduction, weight, target, probs, s, ignore, trim, k, modes, nonfinite, seed)


def _extreme_scale(dtype, gen):
    lo, hi = {torch.float16: (2, 4.3), torch.bfloat16: (3, 30), torch.float32: (3, 8),
              torch.float64: (3, 20)}[dtype]
    if dtype == torch.float32 and torch.rand((), generator=gen) < 0.2:
        hi = 30
    return 10 ** float(lo + (hi - lo) * torch.rand((), generator=gen, dtype=torch.float64))


def _logit_rows(case, R, C, dtype, gen, labels):
    """(R, C) float64 logits (finite unless case.nonfinite), row by row from case.modes."""
    z = torch.randn(R, C, generator=gen, dtype=torch.float64)
    fmax = float(torch.finfo(dtype).max) / 4
    for i in range(R):
        mode = case.modes[int(torch.randint(len(case.modes), (), generator=gen))]
        if mode == "normal":
            z[i] *= [0.1, 1.0, 3.0, 10.0][int(torch.randint(4, (), generator=gen))]
        elif mode == "extreme":
            z[i] *= _extreme_scale(dtype, gen)
        elif mode == "equal":
            vals = [0.0, -5.0, 1e3, 1e4, 1e8, -1e30, 3e4, -3e4]
            v = vals[int(torch.randint(len(vals), (), generator=gen))]
            z[i] = v if abs(v) <= fmax else 1e3
        elif mode == "tied":
            z[i] = torch.randint(0, 3, (C,), generator=gen).double() * [0.5, 2.0, 1e3][int(torch.randint(3, (), generator=gen))]
        elif mode == "confident":
            j = labels[i] if labels is not None and labels[i] >= 0 and torch.rand((), generator=gen) < 0.5 \
                else int(torch.randint(C, (), generator=gen))
            z[i, j] = z[i].max() + 30 + 170 * float(torch.rand((), generator=gen))
        z[i] = z[i].clamp(-fmax, fmax)
    if case.nonfinite == "ninf" and R:
        for i in range(R):
            u = float(torch.rand((), generator=gen))
            if u < 0.3:  # some masked classes
                z[i, torch.rand(C, generator=gen) < 0.4] = -math.inf
            elif u < 0.4:  # all but one class masked
                keep = int(torch.randint(C, (), generator=gen))
                z[i, torch.arange(C) != keep] = -math.inf
            elif u < 0.45:  # the whole row masked
                z[i] = -math.inf
    elif case.nonfinite == "nan" and R:
        i = int(torch.randint(R, (), generator=gen))
        z[i, int(torch.randint(C, (), generator=gen))] = math.nan if torch.rand((), generator=gen) < 0.5 else math.inf
    return z


def _layout(rows64, case, dtype):
    """The logits in ``dtype`` with the case's shape and layout; row n * d1 + d of
    ``rows64`` is the library's row of (n, :, d)."""
    N, C, d1 = case.N, case.C, case.d1
    if d1 == 0:  # 1-D input (C,)
        x = rows64[0].to(dtype)
        return torch.stack([x, x], 1)[:, 0] if case.layout != "contiguous" else x  # stride 2
    if d1 is None:
        base = rows64.reshape(N, C)
        if case.layout == "transposed":
            return base.t().contiguous().to(dtype).t()
        if case.layout == "sliced":
            return torch.stack([base, base], 2).reshape(N, 2 * C).to(dtype)[:, ::2]
        return base.to(dtype)
    base = rows64.reshape(N, d1, C)
    if case.layout == "transposed":
        return base.to(dtype).permute(0, 2, 1)  # (N, C, d1), classes stride 1
    if case.layout == "sliced":
        return torch.stack([base, base], 3).to(dtype)[..., 0].permute(0, 2, 1)
    return base.permute(0, 2, 1).contiguous().to(dtype)


def _from_rows(rows, case):
    """(R, C) -> the case's (N, C, d1) / (N, C) / (C,) shape (inverse of rows_of)."""
    if case.d1 == 0:
        return rows.reshape(case.C)
    if case.d1 is None:
        return rows
    return rows.reshape(case.N, case.d1, case.C).movedim(-1, 1)


@dataclass
class Built:
    x: torch.Tensor  # logits in dtype (leaf)
    target: torch.Tensor
    weight: torch.Tensor | None
    mixture: torch.Tensor | None
    ignore_index: int
    g: torch.Tensor  # incoming gradient (dtype)


def build(case: Case) -> Built:
    gen = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    N, C, d1 = case.N, case.C, case.d1
    R = 1 if d1 == 0 else N * (d1 or 1)
    # class-index targets and ignored rows
    ignore_index = -100
    labels = None
    if case.target != "probs":
        labels = torch.randint(C, (R,), generator=gen)
        if case.ignore == "default":
            labels[torch.rand(R, generator=gen) < 0.25] = -100
        elif case.ignore == "custom":
            ignore_index = int(torch.randint(C, (), generator=gen))
            labels[torch.rand(R, generator=gen) < 0.25] = ignore_index
    rows = _logit_rows(case, R, C, dtype, gen, None if labels is None else labels.tolist())
    x = _layout(rows, case, dtype).detach().requires_grad_(True)
    if labels is not None:
        target = labels.reshape(() if d1 == 0 else (N,) if d1 is None else (N, d1))
    else:
        P = torch.softmax(torch.randn(R, C, generator=gen, dtype=torch.float64) * 2, 1)
        onehot = F.one_hot(torch.randint(C, (R,), generator=gen), C).double()
        unnorm = torch.rand(R, C, generator=gen, dtype=torch.float64) * (0.3 + 3 * torch.rand(R, 1, generator=gen, dtype=torch.float64))
        choice = {"soft": 0, "onehot": 1, "unnormalized": 2}.get(case.probs)
        pick = torch.full((R,), choice) if choice is not None else torch.randint(3, (R,), generator=gen)
        P = torch.where((pick == 0)[:, None], P, torch.where((pick == 1)[:, None], onehot, unnorm))
        target = _from_rows(P.to(dtype), case).contiguous()
        if d1 is None and case.layout == "transposed":
            target = target.t().contiguous().t()
    weight = None
    if case.weight != "none":
        w = 0.2 + 2.8 * torch.rand(C, generator=gen, dtype=torch.float64)
        if case.weight == "zeros":
            w[torch.rand(C, generator=gen) < 0.3] = 0.0
        weight = w.to(dtype)
    mixture = None
    if case.target == "mixture":
        A = torch.rand(C, C, generator=gen, dtype=torch.float64).fill_diagonal_(0)
        A = A / A.sum(1, keepdim=True).clamp_min(1e-300)
        e = 0.5 * float(torch.rand((), generator=gen))
        mixture = ((1 - e) * torch.eye(C, dtype=torch.float64) + e * A).to(dtype)
    out_shape = x.shape[:1] + x.shape[2:] if x.dim() > 1 else ()
    if case.reduction == "none":
        g = torch.randn(out_shape, generator=gen, dtype=torch.float64)
        if g.numel() > 2:
            g.view(-1)[torch.rand(g.numel(), generator=gen) < 0.1] = 0.0
    else:
        g = torch.randn((), generator=gen, dtype=torch.float64) * 2
    return Built(x, target, weight, mixture, ignore_index, g.to(dtype))


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

"""The differential fuzz's cases: a hypothesis strategy over shapes, dtypes, layouts, targets,
options and logit patterns (ordinary, extreme, equal, tied, confident, -inf, NaN / +inf), and
``build``, which turns a drawn case into tensors (shared by tests/test_fuzz.py and
tests/test_fuzz_lm.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KS = [1 / 16, 1 / 4, 1 / 2, 1.0, 2.0, 8.0]


@dataclass(frozen=True)
class Case:
    dtype: str
    N: int
    C: int
    d1: int | None  # (N, C, d1) input; 0 means a 1-D (C,) input
    layout: str  # contiguous | transposed | sliced
    reduction: str
    weight: str  # none | positive | zeros (some classes 0) | all-zero (mean: 0 / 0)
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
    weight = _pick(draw, {"none": 6, "positive": 4, "zeros": 2, "all-zero": 1})
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


def class_weights(kind: str, C: int, gen, dtype):
    """Class weights of a case's ``weight`` kind (none | positive | zeros | all-zero), or None."""
    if kind == "none":
        return None
    w = 0.2 + 2.8 * torch.rand(C, generator=gen, dtype=torch.float64)
    if kind == "zeros":
        w[torch.rand(C, generator=gen) < 0.3] = 0.0
    elif kind == "all-zero":
        w.zero_()
    return w.to(dtype)


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
    weight = class_weights(case.weight, C, gen, dtype)
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



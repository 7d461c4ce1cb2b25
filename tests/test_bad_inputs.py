"""docs/CONTRACT.md section 5 as one table per front end (issue #27): every bad call raises the
row's exception, whose message names the offending argument, on every backend that runs here
(reference, cpu, Triton under TRITON_INTERPRET=1). A row that returns is a bad input accepted
silently; one that raises another type, or does not name the argument, fails too.

Front ends: ``cross_entropy``, ``linear_cross_entropy``, the modules, the vocab-parallel loss (two
gloo ranks, spawned once for all its rows) and the raw ops of each backend (the compiled ones
raise RuntimeError from TORCH_CHECK, also accepted there). ``ACCEPTED`` holds inputs that look bad
but are valid, as ``torch.nn.functional.cross_entropy`` takes them; each is checked against it.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (CPU tensors)

import datetime
import math
import re

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import hardloss_cuda as hl
from hardloss_cuda import backends
from hardloss_cuda._ops import bwd_inplace_op, bwd_op, fwd_op, shard_stats_op, soft_shard_grad_op, soft_shard_stats_op
from hardloss_cuda._schema import STATS_COLS
from hardloss_cuda.distributed import vocab_parallel_cross_entropy

from ._backends import cpu_backends
from .test_distributed import _free_port, _spawn

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's NaN rows

V, T = ValueError, TypeError
_long = torch.long
N, C, D = 4, 5, 3
# Every backend that takes CPU tensors (the inputs below are CPU tensors): the compiled cpu and
# cuda_emu ops check in C++ (csrc/checks.cpp), reference and Triton in _schema.py.
BACKENDS = cpu_backends()


def _x(*shape, dtype=torch.float32):
    return torch.randn(*(shape or (N, C)), dtype=dtype)


def _y():
    return torch.tensor([0, 1, 2, 3])


def _meta(t):  # a tensor on another device, without a GPU
    return t.to("meta")


class _Trim:  # a trim schedule whose fraction is bad
    def __init__(self, fraction):
        self.fraction = fraction


def ce(b, x=None, y=None, **kw):
    return hl.cross_entropy(_x() if x is None else x, _y() if y is None else y, **{"backend": b, **kw})


def lce(b, h=None, W=None, y=None, **kw):
    return hl.linear_cross_entropy(_x(N, D) if h is None else h, _x(C, D) if W is None else W,
                                   _y() if y is None else y, **{"backend": b, **kw})


def _leaf(*shape):
    return _x(*shape).requires_grad_()


def _nonleaf():
    return _leaf() * 1


# (id, the bad call given the backend, exception, regex that the message must match: the argument)
CROSS_ENTROPY = [
    ("input list", lambda b: ce(b, x=_x().tolist()), T, "input"),
    ("input numpy", lambda b: ce(b, x=_x().numpy()), T, "input"),
    ("input int64", lambda b: ce(b, x=torch.ones(N, C, dtype=torch.long)), V, "input"),
    ("input complex", lambda b: ce(b, x=_x().to(torch.complex64)), V, "input"),
    ("input bool", lambda b: ce(b, x=torch.ones(N, C, dtype=torch.bool)), V, "input"),
    ("input 0-dim", lambda b: ce(b, x=torch.tensor(1.0), y=torch.tensor(0)), V, "input"),
    ("input C = 0", lambda b: ce(b, x=_x(N, 0)), V, "input"),
    ("input on meta", lambda b: ce(b, x=_meta(_x())), V, "input"),
    ("target list", lambda b: ce(b, y=[0, 1, 2, 3]), T, "target"),
    ("target numpy", lambda b: ce(b, y=np.arange(N)), T, "target"),
    ("target Python int", lambda b: ce(b, y=1), T, "target"),
    ("target bool", lambda b: ce(b, y=torch.ones(N, dtype=torch.bool)), V, "target"),
    ("target complex", lambda b: ce(b, y=torch.zeros(N, C, dtype=torch.complex64)), V, "target"),
    ("target float of class shape", lambda b: ce(b, y=_y().float()), V, "target"),
    ("target (N, 1)", lambda b: ce(b, y=_y()[:, None]), V, "target"),
    ("target (N + 1,)", lambda b: ce(b, y=torch.arange(N + 1)), V, "target"),
    ("target 0-dim for (N, C)", lambda b: ce(b, y=torch.tensor(1)), V, "target"),
    ("target on meta", lambda b: ce(b, y=_meta(_y())), V, "target"),
    ("probabilities (N, C + 1)", lambda b: ce(b, y=torch.rand(N, C + 1)), V, "target"),
    ("probabilities (C, N)", lambda b: ce(b, y=torch.rand(C, N)), V, "target"),
    ("probabilities with ignore_index", lambda b: ce(b, y=torch.rand(N, C), ignore_index=1), V, "ignore_index"),
    ("(N, C, d) with target (N, d + 1)", lambda b: ce(b, x=_x(N, C, 3), y=torch.zeros(N, 4, dtype=torch.long)),
     V, "target"),
    ("(N, C, d) with target (N d,)", lambda b: ce(b, x=_x(N, C, 3), y=torch.zeros(N * 3, dtype=torch.long)),
     V, "target"),
    ("(N, C, d) with probabilities (N, d, C)", lambda b: ce(b, x=_x(N, C, 3), y=torch.rand(N, 3, C)), V, "target"),
    ("label C", lambda b: ce(b, y=torch.tensor([0, 1, 2, C])), V, "target"),
    ("label -1", lambda b: ce(b, y=torch.tensor([0, 1, 2, -1])), V, "target"),
    ("label -100 with ignore_index=-1", lambda b: ce(b, y=torch.tensor([0, 1, -100, 3]), ignore_index=-1),
     V, "target"),
    ("ignore_index 1.5", lambda b: ce(b, ignore_index=1.5), V, "ignore_index"),
    ("ignore_index -100.0", lambda b: ce(b, ignore_index=-100.0), V, "ignore_index"),
    ("ignore_index float tensor", lambda b: ce(b, ignore_index=torch.tensor(1.0)), V, "ignore_index"),
    ("ignore_index (1,) tensor", lambda b: ce(b, ignore_index=torch.tensor([1])), V, "ignore_index"),
    ("ignore_index bool", lambda b: ce(b, ignore_index=True), V, "ignore_index"),
    ("ignore_index None", lambda b: ce(b, ignore_index=None), V, "ignore_index"),
    ("ignore_index beyond int64", lambda b: ce(b, ignore_index=2**70), V, "ignore_index"),
    ("ignore_index tensor on meta", lambda b: ce(b, ignore_index=_meta(torch.tensor(1))), V, "ignore_index"),
    ("label_smoothing -0.1", lambda b: ce(b, label_smoothing=-0.1), V, "label_smoothing"),
    ("label_smoothing 1.1", lambda b: ce(b, label_smoothing=1.1), V, "label_smoothing"),
    ("label_smoothing NaN", lambda b: ce(b, label_smoothing=float("nan")), V, "label_smoothing"),
    ("label_smoothing NaN tensor", lambda b: ce(b, label_smoothing=torch.tensor(float("nan"))), V,
     "label_smoothing"),
    ("label_smoothing str", lambda b: ce(b, label_smoothing="0.1"), V, "label_smoothing"),
    ("label_smoothing (1,) tensor", lambda b: ce(b, label_smoothing=torch.tensor([0.1])), V, "label_smoothing"),
    ("label_smoothing tensor on meta", lambda b: ce(b, label_smoothing=_meta(torch.tensor(0.1))), V,
     "label_smoothing"),
    ("k 0", lambda b: ce(b, k=0), V, r"\bk\b"),
    ("k -1", lambda b: ce(b, k=-1.0), V, r"\bk\b"),
    ("k NaN", lambda b: ce(b, k=float("nan")), V, r"\bk\b"),
    ("k inf", lambda b: ce(b, k=float("inf")), V, r"\bk\b"),
    ("k above float32", lambda b: ce(b, k=1e39), V, r"\bk\b"),
    ("k denormal in float32", lambda b: ce(b, k=1e-40), V, r"\bk\b"),
    ("k bool", lambda b: ce(b, k=True), V, r"\bk\b"),
    ("k str", lambda b: ce(b, k="1"), V, r"\bk\b"),
    ("k complex", lambda b: ce(b, k=1j), V, r"\bk\b"),
    ("k (2,) tensor", lambda b: ce(b, k=torch.tensor([1.0, 2.0])), V, r"\bk\b"),
    ("k empty tensor", lambda b: ce(b, k=torch.tensor([])), V, r"\bk\b"),
    ("k numpy (2,)", lambda b: ce(b, k=np.array([1.0, 2.0])), V, r"\bk\b"),
    ("k an int beyond float64", lambda b: ce(b, k=10**400), V, r"\bk\b"),
    ("k tensor on meta", lambda b: ce(b, k=_meta(torch.tensor(1.0))), V, r"\bk\b"),
    ("softcap 0 (None is off)", lambda b: ce(b, softcap=0), V, "softcap"),
    ("softcap -1", lambda b: ce(b, softcap=-1.0), V, "softcap"),
    ("softcap NaN", lambda b: ce(b, softcap=float("nan")), V, "softcap"),
    ("softcap inf", lambda b: ce(b, softcap=float("inf")), V, "softcap"),
    ("softcap bool", lambda b: ce(b, softcap=True), V, "softcap"),
    ("softcap below float32's normals", lambda b: ce(b, softcap=1e-46), V, "softcap"),
    ("softcap above bfloat16's range", lambda b: ce(b, x=_x().bfloat16(), softcap=1e39), V, "softcap"),
    ("softcap float64 denormal", lambda b: ce(b, x=_x().double(), softcap=1e-320), V, "softcap"),
    ("z_loss -1", lambda b: ce(b, z_loss=-1.0), V, "z_loss"),
    ("z_loss NaN", lambda b: ce(b, z_loss=float("nan")), V, "z_loss"),
    ("z_loss inf", lambda b: ce(b, z_loss=float("inf")), V, "z_loss"),
    ("z_loss None", lambda b: ce(b, z_loss=None), V, "z_loss"),
    ("z_loss an int beyond float64", lambda b: ce(b, z_loss=10**400), V, "z_loss"),
    ("softcap an int beyond float64", lambda b: ce(b, softcap=-(10**400)), V, "softcap"),
    ("trim 0", lambda b: ce(b, trim=0.0), V, "trim"),
    ("trim 1.5", lambda b: ce(b, trim=1.5), V, "trim"),
    ("trim NaN", lambda b: ce(b, trim=float("nan")), V, "trim"),
    ("trim -0.5", lambda b: ce(b, trim=-0.5), V, "trim"),
    ("trim bool", lambda b: ce(b, trim=True), V, "trim"),
    ("trim str", lambda b: ce(b, trim="0.5"), V, "trim"),
    ("trim schedule with fraction 2", lambda b: ce(b, trim=_Trim(2.0)), V, "trim"),
    ("trim schedule with fraction None", lambda b: ce(b, trim=_Trim(None)), V, "trim"),
    ("trim object()", lambda b: ce(b, trim=object()), V, "trim"),
    ("trim tensor 1.5", lambda b: ce(b, trim=torch.tensor(1.5)), V, "trim"),
    ("trim tensor 0", lambda b: ce(b, trim=torch.tensor(0.0)), V, "trim"),
    ("trim int64 tensor", lambda b: ce(b, trim=torch.tensor(1)), V, "trim"),
    ("trim tensor (2,)", lambda b: ce(b, trim=torch.tensor([0.5, 0.5])), V, "trim"),
    ("reduction 'avg'", lambda b: ce(b, reduction="avg"), V, "reduction"),
    ("reduction None", lambda b: ce(b, reduction=None), V, "reduction"),
    ("reduction 'MEAN'", lambda b: ce(b, reduction="MEAN"), V, "reduction"),
    ("backend 'tpu'", lambda b: ce(b, backend="tpu"), V, "backend"),
    ("backend None", lambda b: ce(b, backend=None), V, "backend"),
    ("weight list", lambda b: ce(b, weight=[1.0] * C), V, "weight"),
    ("weight int64", lambda b: ce(b, weight=torch.ones(C, dtype=torch.long)), V, "weight"),
    ("weight (C + 1,)", lambda b: ce(b, weight=torch.ones(C + 1)), V, "weight"),
    ("weight (1, C)", lambda b: ce(b, weight=torch.ones(1, C)), V, "weight"),
    ("weight 0-dim", lambda b: ce(b, weight=torch.tensor(1.0)), V, "weight"),
    ("weight on meta", lambda b: ce(b, weight=_meta(torch.ones(C))), V, "weight"),
    ("weight requires grad", lambda b: ce(b, weight=torch.ones(C, requires_grad=True)), V, "weight"),
    ("mixture (C, C + 1)", lambda b: ce(b, mixture=torch.rand(C, C + 1)), V, "mixture"),
    ("mixture (C,)", lambda b: ce(b, mixture=torch.rand(C)), V, "mixture"),
    ("mixture list", lambda b: ce(b, mixture=torch.rand(C, C).tolist()), V, "mixture"),
    ("mixture int64", lambda b: ce(b, mixture=torch.ones(C, C, dtype=torch.long)), V, "mixture"),
    ("mixture on meta", lambda b: ce(b, mixture=_meta(torch.rand(C, C))), V, "mixture"),
    ("mixture with probabilities", lambda b: ce(b, y=torch.rand(N, C), mixture=torch.rand(C, C)), V, "mixture"),
    ("mixture with label_smoothing", lambda b: ce(b, mixture=torch.rand(C, C), label_smoothing=0.1), V,
     "label_smoothing"),
    ("inplace_backward on a leaf", lambda b: ce(b, x=_leaf(), inplace_backward=True), V, "inplace_backward"),
    ("inplace_backward on a view of a leaf", lambda b: ce(b, x=_leaf(N, C + 1)[:, :C], inplace_backward=True),
     V, "inplace_backward"),
    ("inplace_backward on a view of a view of a leaf",
     lambda b: ce(b, x=_leaf(N, C + 1)[:, :C].view(N, C), inplace_backward=True), V, "inplace_backward"),
    ("inplace_backward with a learned mixture",
     lambda b: ce(b, x=_nonleaf(), mixture=torch.rand(C, C, requires_grad=True), inplace_backward=True), V,
     "inplace_backward"),
    ("inplace_backward with learned probabilities",
     lambda b: ce(b, x=_nonleaf(), y=torch.rand(N, C, requires_grad=True), inplace_backward=True), V,
     "inplace_backward"),
]

LINEAR = [
    ("input list", lambda b: lce(b, h=_x(N, D).tolist()), T, "input"),
    ("input 0-dim", lambda b: lce(b, h=torch.tensor(1.0)), V, "input"),
    ("input int64 (and linear_weight)",
     lambda b: lce(b, h=torch.ones(N, D, dtype=torch.long), W=torch.ones(C, D, dtype=torch.long)), V, "input"),
    ("linear_weight numpy", lambda b: lce(b, W=_x(C, D).numpy()), T, "linear_weight"),
    ("linear_weight 1-D", lambda b: lce(b, W=_x(C * D)), V, "linear_weight"),
    ("linear_weight 3-D", lambda b: lce(b, W=_x(C, D, 1)), V, "linear_weight"),
    ("linear_weight D mismatch", lambda b: lce(b, W=_x(C, D + 1)), V, "linear_weight"),
    ("linear_weight (D, C)", lambda b: lce(b, W=_x(D, C)), V, "linear_weight"),
    ("linear_weight with C = 0", lambda b: lce(b, W=_x(0, D)), V, "linear_weight"),
    ("linear_weight float64 for float32 input", lambda b: lce(b, W=_x(C, D).double()), V, "linear_weight"),
    ("linear_weight float32 for float16 input", lambda b: lce(b, h=_x(N, D).half()), V, "linear_weight"),
    ("linear_weight on meta", lambda b: lce(b, W=_meta(_x(C, D))), V, "linear_weight"),
    ("linear_bias list", lambda b: lce(b, linear_bias=[0.0] * C), T, "linear_bias"),
    ("linear_bias (C + 1,)", lambda b: lce(b, linear_bias=_x(C + 1)), V, "linear_bias"),
    ("linear_bias (1, C)", lambda b: lce(b, linear_bias=_x(1, C)), V, "linear_bias"),
    ("linear_bias float64", lambda b: lce(b, linear_bias=_x(C).double()), V, "linear_bias"),
    ("linear_bias on meta", lambda b: lce(b, linear_bias=_meta(_x(C))), V, "linear_bias"),
    ("target list", lambda b: lce(b, y=[0, 1, 2, 3]), T, "target"),
    ("target (T, B) for (B, T, D)", lambda b: lce(b, h=_x(2, 3, D), y=torch.zeros(3, 2, dtype=torch.long)), V,
     "target"),
    ("target (N + 1,)", lambda b: lce(b, y=torch.arange(N + 1)), V, "target"),
    ("target (1,) for (D,) input", lambda b: lce(b, h=_x(D), y=torch.tensor([1])), V, "target"),
    ("target bool", lambda b: lce(b, y=torch.zeros(N, dtype=torch.bool)), V, "target"),
    ("target float of class shape", lambda b: lce(b, y=torch.zeros(N)), V, "target"),
    ("probabilities (C, N)", lambda b: lce(b, y=torch.rand(C, N)), V, "target"),
    ("target on meta", lambda b: lce(b, y=_meta(_y())), V, "target"),
    ("label C", lambda b: lce(b, y=torch.tensor([0, 1, 2, C])), V, "target"),
    ("probabilities requiring grad", lambda b: lce(b, y=torch.rand(N, C, requires_grad=True)), V, "target"),
    ("mixture requiring grad", lambda b: lce(b, mixture=torch.rand(C, C, requires_grad=True)), V, "mixture"),
    ("mixture (C, C + 1)", lambda b: lce(b, mixture=torch.rand(C, C + 1)), V, "mixture"),
    ("mixture list", lambda b: lce(b, mixture=torch.rand(C, C).tolist()), V, "mixture"),
    ("weight requires grad", lambda b: lce(b, weight=torch.ones(C, requires_grad=True)), V, "weight"),
    ("weight (C + 1,)", lambda b: lce(b, weight=torch.ones(C + 1)), V, "weight"),
    ("ignore_index 1.5", lambda b: lce(b, ignore_index=1.5), V, "ignore_index"),
    ("ignore_index beyond int64", lambda b: lce(b, ignore_index=-(2**64)), V, "ignore_index"),
    ("label_smoothing 1.5", lambda b: lce(b, label_smoothing=1.5), V, "label_smoothing"),
    ("k 0", lambda b: lce(b, k=0), V, r"\bk\b"),
    ("softcap -1", lambda b: lce(b, softcap=-1), V, "softcap"),
    ("z_loss NaN", lambda b: lce(b, z_loss=float("nan")), V, "z_loss"),
    ("trim 0", lambda b: lce(b, trim=0), V, "trim"),
    ("reduction 'avg'", lambda b: lce(b, reduction="avg"), V, "reduction"),
    ("chunk_size 0", lambda b: lce(b, chunk_size=0), V, "chunk_size"),
    ("chunk_size -1", lambda b: lce(b, chunk_size=-1), V, "chunk_size"),
    ("chunk_size 2.0", lambda b: lce(b, chunk_size=2.0), V, "chunk_size"),
    ("chunk_size bool", lambda b: lce(b, chunk_size=True), V, "chunk_size"),
    ("chunk_size None", lambda b: lce(b, chunk_size=None), V, "chunk_size"),
    ("chunk_size 0 on an empty batch", lambda b: lce(b, h=_x(0, D), y=torch.zeros(0, dtype=torch.long),
                                                     chunk_size=0), V, "chunk_size"),
    ("inplace_backward (not an argument)", lambda b: lce(b, inplace_backward=True), T, "inplace_backward"),
]

_A = torch.softmax(torch.randn(C, C), 1)  # a similarity matrix (rows sum to 1)

MODULES = [
    ("HardCrossEntropyLoss(k=0)", lambda b: hl.HardCrossEntropyLoss(k=0, backend=b), V, r"\bk\b"),
    ("HardCrossEntropyLoss(softcap=-1)", lambda b: hl.HardCrossEntropyLoss(softcap=-1, backend=b), V, "softcap"),
    ("HardCrossEntropyLoss(z_loss=-1)", lambda b: hl.HardCrossEntropyLoss(z_loss=-1, backend=b), V, "z_loss"),
    ("HardCrossEntropyLoss(weight=list)", lambda b: hl.HardCrossEntropyLoss(weight=[1.0] * C, backend=b), V,
     "weight"),
    # checked when the module is built (issue #33), not on the first call as nn.CrossEntropyLoss does
    ("HardCrossEntropyLoss(reduction='avg')", lambda b: hl.HardCrossEntropyLoss(reduction="avg", backend=b), V,
     "reduction"),
    ("HardCrossEntropyLoss(trim=1.5)", lambda b: hl.HardCrossEntropyLoss(trim=1.5, backend=b), V, "trim"),
    ("HardCrossEntropyLoss(backend='tpu')", lambda b: hl.HardCrossEntropyLoss(backend="tpu"), V, "backend"),
    ("HardCrossEntropyLoss(label_smoothing=2)", lambda b: hl.HardCrossEntropyLoss(label_smoothing=2, backend=b), V,
     "label_smoothing"),
    ("HardCrossEntropyLoss(ignore_index=1.5)", lambda b: hl.HardCrossEntropyLoss(ignore_index=1.5, backend=b), V,
     "ignore_index"),
    ("HardCrossEntropyLoss(weight=(1, C))", lambda b: hl.HardCrossEntropyLoss(weight=torch.ones(1, C), backend=b), V,
     "weight"),
    ("HardCrossEntropyLoss(mixture=(C, C + 1))",
     lambda b: hl.HardCrossEntropyLoss(mixture=torch.rand(C, C + 1), backend=b), V, "mixture"),
    ("HardCrossEntropyLoss(mixture=int64)",
     lambda b: hl.HardCrossEntropyLoss(mixture=torch.eye(C, dtype=_long), backend=b), V, "mixture"),
    ("HardLinearCrossEntropyLoss(chunk_size=0)", lambda b: hl.HardLinearCrossEntropyLoss(chunk_size=0, backend=b), V,
     "chunk_size"),
    ("HardLinearCrossEntropyLoss(reduction='avg')",
     lambda b: hl.HardLinearCrossEntropyLoss(reduction="avg", backend=b), V, "reduction"),
    ("HardLinearCrossEntropyLoss(mixture=Parameter)",
     lambda b: hl.HardLinearCrossEntropyLoss(mixture=torch.nn.Parameter(torch.eye(C)), backend=b), V, "mixture"),
    ("HardCrossEntropyLoss(weight=(C + 1,))(...)",
     lambda b: hl.HardCrossEntropyLoss(weight=torch.ones(C + 1), backend=b)(_x(), _y()), V, "weight"),
    ("HardCrossEntropyLoss()(label C)",
     lambda b: hl.HardCrossEntropyLoss(backend=b)(_x(), torch.tensor([0, 1, 2, C])), V, "target"),
    ("HardCrossEntropyLoss(inplace_backward=True)(leaf)",
     lambda b: hl.HardCrossEntropyLoss(inplace_backward=True, backend=b)(_leaf(), _y()), V, "inplace_backward"),
    ("HardLinearCrossEntropyLoss(k=NaN)", lambda b: hl.HardLinearCrossEntropyLoss(k=float("nan"), backend=b), V,
     r"\bk\b"),
    ("HardLinearCrossEntropyLoss(softcap=inf)",
     lambda b: hl.HardLinearCrossEntropyLoss(softcap=float("inf"), backend=b), V, "softcap"),
    ("HardLinearCrossEntropyLoss()(linear_bias (C + 1,))",
     lambda b: hl.HardLinearCrossEntropyLoss(backend=b)(_x(N, D), _x(C, D), _y(), _x(C + 1)), V, "linear_bias"),
    ("MixedCrossEntropyLoss(similarity (C, C + 1))",
     lambda b: hl.MixedCrossEntropyLoss(torch.rand(C, C + 1), backend=b), V, "similarity"),
    ("MixedCrossEntropyLoss(similarity list)", lambda b: hl.MixedCrossEntropyLoss(_A.tolist(), backend=b), T,
     "similarity"),
    ("mcel.simple_mixture(list, eps)", lambda b: hl.mcel.simple_mixture(_A.tolist(), 0.1), T, "similarity"),
    ("MixedCrossEntropyLoss(similarity int64, mode='full')",
     lambda b: hl.MixedCrossEntropyLoss(torch.eye(C, dtype=_long), mode="full", backend=b), V, "similarity"),
    ("MixedCrossEntropyLoss(similarity int64, mode='per_class')",
     lambda b: hl.MixedCrossEntropyLoss(torch.eye(C, dtype=_long), mode="per_class", backend=b), V, "similarity"),
    ("MixedCrossEntropyLoss(mode='learned')", lambda b: hl.MixedCrossEntropyLoss(_A, mode="learned", backend=b), V,
     "mode"),
    ("MixedCrossEntropyLoss(eps=0.5)", lambda b: hl.MixedCrossEntropyLoss(_A, eps=0.5, backend=b), V, "eps"),
    ("MixedCrossEntropyLoss(eps=-0.1)", lambda b: hl.MixedCrossEntropyLoss(_A, eps=-0.1, backend=b), V, "eps"),
    ("MixedCrossEntropyLoss(eps=NaN)", lambda b: hl.MixedCrossEntropyLoss(_A, eps=float("nan"), backend=b), V,
     "eps"),
    ("MixedCrossEntropyLoss(eps=True)", lambda b: hl.MixedCrossEntropyLoss(_A, eps=True, backend=b), V, "eps"),
    ("MixedCrossEntropyLoss(eps='0.1')", lambda b: hl.MixedCrossEntropyLoss(_A, eps="0.1", backend=b), V, "eps"),
    ("MixedCrossEntropyLoss(eps=None)", lambda b: hl.MixedCrossEntropyLoss(_A, eps=None, backend=b), V, "eps"),
    ("mcel.per_class_mixture(A, eps float)", lambda b: hl.mcel.per_class_mixture(_A, 0.1), V, "eps"),
    ("MixedCrossEntropyLoss(c (C + 1,))", lambda b: hl.MixedCrossEntropyLoss(_A, c=torch.ones(C + 1), backend=b), V,
     r"\bc\b"),
    ("MixedCrossEntropyLoss(c='x')", lambda b: hl.MixedCrossEntropyLoss(_A, c="x", backend=b), V, r"\bc\b"),
    ("MixedCrossEntropyLoss(p='2')", lambda b: hl.MixedCrossEntropyLoss(_A, mode="full", p="2", backend=b), V,
     r"\bp\b"),
    ("MixedCrossEntropyLoss(eps=0.6, mode='per_class')",
     lambda b: hl.MixedCrossEntropyLoss(_A, eps=0.6, mode="per_class", backend=b), V, "eps"),
    ("MixedCrossEntropyLoss(mixture=...)(...)",
     lambda b: hl.MixedCrossEntropyLoss(_A, mixture=_A, backend=b)(_x(), _y()), T, "mixture"),
    ("MixedCrossEntropyLoss(label_smoothing=0.1)(...)",
     lambda b: hl.MixedCrossEntropyLoss(_A, label_smoothing=0.1, backend=b)(_x(), _y()), V, "label_smoothing"),
    ("MixedCrossEntropyLoss()(input with C + 1 classes)",
     lambda b: hl.MixedCrossEntropyLoss(_A, backend=b)(_x(N, C + 1), _y()), V, "mixture"),
    ("MixedCrossEntropyLoss()(label C)",
     lambda b: hl.MixedCrossEntropyLoss(_A, backend=b)(_x(), torch.tensor([0, 1, 2, C])), V, "target"),
    ("MixedCrossEntropyLoss(mode='full', inplace_backward=True)(...)",
     lambda b: hl.MixedCrossEntropyLoss(_A, mode="full", inplace_backward=True, backend=b)(_nonleaf(), _y()), V,
     "inplace_backward"),
    ("MiniBatchTrimming(num_epochs=0)", lambda b: hl.MiniBatchTrimming(num_epochs=0), V, "num_epochs"),
    ("MiniBatchTrimming(num_epochs=2.5)", lambda b: hl.MiniBatchTrimming(num_epochs=2.5), V, "num_epochs"),
    ("MiniBatchTrimming(num_epochs='3')", lambda b: hl.MiniBatchTrimming(num_epochs="3"), V, "num_epochs"),
    ("MiniBatchTrimming(start=0)", lambda b: hl.MiniBatchTrimming(num_epochs=3, start=0), V, "start"),
    ("MiniBatchTrimming(end=NaN)", lambda b: hl.MiniBatchTrimming(num_epochs=3, end=float("nan")), V, "end"),
]


# ---------------------------------------------------------------------------- raw ops
# What the ops' memory safety depends on (shapes, dtypes, devices of what they index and read):
# the compiled ops check it with TORCH_CHECK (RuntimeError), the reference and Triton in Python.
# (The ops leave k, label_smoothing and label values to validation.py: docs/CONTRACT.md section 5.)


def _fwd(b, z=None, y=None, w=None, mix=None, ignore_index=-100, softcap=0.0):
    return fwd_op(b)(_x() if z is None else z, _y() if y is None else y, w, mix, ignore_index, 0.0, 1.0, True,
                     softcap)


def _bwd(b, g=None, z=None, y=None, w=None, mix=None, stats=None, g_lse=None, inplace=False):
    op = bwd_inplace_op(b) if inplace else bwd_op(b)
    return op(torch.ones(N) if g is None else g, _x() if z is None else z, _y() if y is None else y, w, mix,
              torch.zeros(N, STATS_COLS) if stats is None else stats, -100, 0.0, 1.0, 0.0, g_lse)


def _shard(b, z=None, y=None, softcap=0.0):
    return shard_stats_op(b)(_x() if z is None else z, _y() if y is None else y, 1.0, softcap)


def _soft_shard(b, z=None, y=None, w=None, mix=None, stats=None, softcap=0.0, kept=(), k=0.5):
    return soft_shard_stats_op(b)(_x() if z is None else z, _y() if y is None else y, w, mix,
                                  torch.zeros(N, STATS_COLS) if stats is None else stats, -100, 0.1, k, softcap, *kept)


def _eps(dtype=torch.float32, shape=(N, C)):
    return torch.zeros(shape, dtype=dtype)


def _side(dtype=torch.int8, shape=(N, C)):
    return torch.zeros(shape, dtype=dtype)


def _kept_grad(b, g=None, eps=None, side=None, z=None, stats=None, out=None, softcap=0.0):
    return soft_shard_grad_op(b)(torch.ones(N) if g is None else g, _eps() if eps is None else eps,
                                 _side() if side is None else side, _x() if z is None else z,
                                 torch.zeros(N, STATS_COLS) if stats is None else stats,
                                 _eps() if out is None else out, softcap, None)


OPS = [
    ("fwd: logits 1-D", lambda b: _fwd(b, z=_x(C), y=torch.tensor(0)), V, "logits"),
    ("fwd: logits 3-D", lambda b: _fwd(b, z=_x(N, C, 2), y=torch.zeros(N, 2, dtype=_long)), V, "logits"),
    ("fwd: logits int64", lambda b: _fwd(b, z=torch.ones(N, C, dtype=_long)), T, "logits"),
    ("fwd: logits C = 0", lambda b: _fwd(b, z=_x(N, 0)), V, "logits"),
    ("fwd: logits list (the schema)", lambda b: _fwd(b, z=_x().tolist()), RuntimeError, "logits"),
    ("fwd: ignore_index 1.5 (the schema)", lambda b: _fwd(b, ignore_index=1.5), RuntimeError, "ignore_index"),
    ("fwd: softcap -1", lambda b: _fwd(b, softcap=-1.0), V, "softcap"),
    ("fwd: target int32", lambda b: _fwd(b, y=_y().int()), V, "target"),
    ("fwd: target bool", lambda b: _fwd(b, y=torch.ones(N, dtype=torch.bool)), V, "target"),
    ("fwd: target (N + 1,)", lambda b: _fwd(b, y=torch.zeros(N + 1, dtype=_long)), V, "target"),
    ("fwd: target (N, 1)", lambda b: _fwd(b, y=_y()[:, None]), V, "target"),
    ("fwd: target (1,)", lambda b: _fwd(b, y=torch.tensor([1])), V, "target"),
    ("fwd: target on meta", lambda b: _fwd(b, y=_meta(_y())), V, "target"),
    ("fwd: probabilities (N, C + 1)", lambda b: _fwd(b, y=torch.rand(N, C + 1)), V, "target"),
    ("fwd: probabilities (1, C)", lambda b: _fwd(b, y=torch.rand(1, C)), V, "target"),
    ("fwd: probabilities float64 for float32 logits", lambda b: _fwd(b, y=torch.rand(N, C, dtype=torch.float64)),
     V, "target"),
    ("fwd: mixture with probabilities", lambda b: _fwd(b, y=torch.rand(N, C), mix=torch.rand(C, C)), V, "mixture"),
    ("fwd: weight (C + 1,)", lambda b: _fwd(b, w=torch.ones(C + 1)), V, "weight"),
    ("fwd: weight (1,)", lambda b: _fwd(b, w=torch.ones(1)), V, "weight"),
    ("fwd: weight (C, 1)", lambda b: _fwd(b, w=torch.ones(C, 1)), V, "weight"),
    ("fwd: weight float64 for float32 logits", lambda b: _fwd(b, w=torch.ones(C, dtype=torch.float64)), V, "weight"),
    ("fwd: weight int64", lambda b: _fwd(b, w=torch.ones(C, dtype=_long)), V, "weight"),
    ("fwd: weight on meta", lambda b: _fwd(b, w=_meta(torch.ones(C))), V, "weight"),
    ("fwd: mixture (C, C + 1)", lambda b: _fwd(b, mix=torch.rand(C, C + 1)), V, "mixture"),
    ("fwd: mixture (1, C)", lambda b: _fwd(b, mix=torch.rand(1, C)), V, "mixture"),
    ("fwd: mixture float64 for float32 logits", lambda b: _fwd(b, mix=torch.rand(C, C, dtype=torch.float64)), V,
     "mixture"),
    ("fwd: mixture on meta", lambda b: _fwd(b, mix=_meta(torch.rand(C, C))), V, "mixture"),
    ("bwd: grad_loss (N + 1,)", lambda b: _bwd(b, g=torch.ones(N + 1)), V, "grad_loss"),
    ("bwd: grad_loss (1,)", lambda b: _bwd(b, g=torch.ones(1)), V, "grad_loss"),
    ("bwd: grad_loss 0-dim", lambda b: _bwd(b, g=torch.tensor(1.0)), V, "grad_loss"),
    ("bwd: grad_loss (N, 1)", lambda b: _bwd(b, g=torch.ones(N, 1)), V, "grad_loss"),
    ("bwd: grad_loss float64 for float32 logits", lambda b: _bwd(b, g=torch.ones(N, dtype=torch.float64)), V,
     "grad_loss"),
    ("bwd: grad_loss on meta", lambda b: _bwd(b, g=_meta(torch.ones(N))), V, "grad_loss"),
    ("bwd: stats (N, STATS_COLS - 1)", lambda b: _bwd(b, stats=torch.zeros(N, STATS_COLS - 1)), V, "stats"),
    ("bwd: stats (1, STATS_COLS)", lambda b: _bwd(b, stats=torch.zeros(1, STATS_COLS)), V, "stats"),
    ("bwd: stats float64", lambda b: _bwd(b, stats=torch.zeros(N, STATS_COLS, dtype=torch.float64)), V, "stats"),
    ("bwd: stats on meta", lambda b: _bwd(b, stats=_meta(torch.zeros(N, STATS_COLS))), V, "stats"),
    ("bwd: grad_lse (1,)", lambda b: _bwd(b, g_lse=torch.ones(1)), V, "grad_lse"),
    ("bwd: grad_lse float64", lambda b: _bwd(b, g_lse=torch.ones(N, dtype=torch.float64)), V, "grad_lse"),
    ("bwd: grad_lse on meta", lambda b: _bwd(b, g_lse=_meta(torch.ones(N))), V, "grad_lse"),
    ("bwd: logits int64", lambda b: _bwd(b, z=torch.ones(N, C, dtype=_long)), T, "logits"),
    ("bwd: target int32", lambda b: _bwd(b, y=_y().int()), V, "target"),
    ("bwd: weight (C + 1,)", lambda b: _bwd(b, w=torch.ones(C + 1)), V, "weight"),
    ("bwd: mixture (C, C + 1)", lambda b: _bwd(b, mix=torch.rand(C, C + 1)), V, "mixture"),
    ("bwd_inplace: grad_loss (1,)", lambda b: _bwd(b, g=torch.ones(1), inplace=True), V, "grad_loss"),
    ("bwd_inplace: stats (N, STATS_COLS - 1)",
     lambda b: _bwd(b, stats=torch.zeros(N, STATS_COLS - 1), inplace=True), V, "stats"),
    ("bwd_inplace: grad_lse float64", lambda b: _bwd(b, g_lse=torch.ones(N, dtype=torch.float64), inplace=True), V,
     "grad_lse"),
    ("bwd_inplace: target int32", lambda b: _bwd(b, y=_y().int(), inplace=True), V, "target"),
    ("bwd_inplace: logits on meta", lambda b: _bwd(b, z=_meta(_x()), inplace=True), V, "logits"),
    ("shard_stats: logits 1-D", lambda b: _shard(b, z=_x(C), y=torch.tensor(0)), V, "logits"),
    ("shard_stats: logits int64", lambda b: _shard(b, z=torch.ones(N, C, dtype=_long)), T, "logits"),
    ("shard_stats: target float (N,)", lambda b: _shard(b, y=_y().float()), V, "target"),
    ("shard_stats: target probabilities", lambda b: _shard(b, y=torch.rand(N, C)), V, "target"),
    ("shard_stats: target int32", lambda b: _shard(b, y=_y().int()), V, "target"),
    ("shard_stats: target (1,)", lambda b: _shard(b, y=torch.tensor([1])), V, "target"),
    ("shard_stats: target on meta", lambda b: _shard(b, y=_meta(_y())), V, "target"),
    ("shard_stats: softcap -1", lambda b: _shard(b, softcap=-1.0), V, "softcap"),
    ("soft_shard_stats: logits 1-D", lambda b: _soft_shard(b, z=_x(C), y=torch.tensor(0)), V, "logits"),
    ("soft_shard_stats: logits int64", lambda b: _soft_shard(b, z=torch.ones(N, C, dtype=_long)), T, "logits"),
    ("soft_shard_stats: target int32", lambda b: _soft_shard(b, y=_y().int()), V, "target"),
    ("soft_shard_stats: weight (C + 1,)", lambda b: _soft_shard(b, w=torch.ones(C + 1)), V, "weight"),
    ("soft_shard_stats: mixture (C, C + 1)", lambda b: _soft_shard(b, mix=torch.rand(C, C + 1)), V, "mixture"),
    ("soft_shard_stats: stats (N, STATS_COLS - 1)",
     lambda b: _soft_shard(b, stats=torch.zeros(N, STATS_COLS - 1)), V, "stats"),
    ("soft_shard_stats: stats float64", lambda b: _soft_shard(b, stats=torch.zeros(N, STATS_COLS, dtype=torch.float64)),
     V, "stats"),
    ("soft_shard_stats: stats on meta", lambda b: _soft_shard(b, stats=_meta(torch.zeros(N, STATS_COLS))), V, "stats"),
    ("soft_shard_stats: softcap -1", lambda b: _soft_shard(b, softcap=-1.0), V, "softcap"),
    ("soft_shard_stats: eps without side", lambda b: _soft_shard(b, kept=(_eps(), None)), V, "side"),
    ("soft_shard_stats: eps at k = 1", lambda b: _soft_shard(b, kept=(_eps(), _side()), k=1.0), V, "eps"),
    ("soft_shard_stats: eps float64", lambda b: _soft_shard(b, kept=(_eps(torch.float64), _side())), V, "eps"),
    ("soft_shard_stats: eps (N, C + 1)", lambda b: _soft_shard(b, kept=(_eps(shape=(N, C + 1)), _side())), V, "eps"),
    ("soft_shard_stats: eps not contiguous", lambda b: _soft_shard(b, kept=(_eps(shape=(C, N)).t(), _side())), V,
     "eps"),
    ("soft_shard_stats: side uint8", lambda b: _soft_shard(b, kept=(_eps(), _side(torch.uint8))), V, "side"),
    ("soft_shard_grad: logits int64", lambda b: _kept_grad(b, z=torch.ones(N, C, dtype=_long)), T, "logits"),
    ("soft_shard_grad: grad_loss (N + 1,)", lambda b: _kept_grad(b, g=torch.ones(N + 1)), V, "grad_loss"),
    ("soft_shard_grad: stats (N, STATS_COLS - 1)", lambda b: _kept_grad(b, stats=torch.zeros(N, STATS_COLS - 1)), V,
     "stats"),
    ("soft_shard_grad: eps (N, C - 1)", lambda b: _kept_grad(b, eps=_eps(shape=(N, C - 1))), V, "eps"),
    ("soft_shard_grad: side bool", lambda b: _kept_grad(b, side=_side(torch.bool)), V, "side"),
    ("soft_shard_grad: out float64", lambda b: _kept_grad(b, out=_eps(torch.float64)), V, "out"),
    ("soft_shard_grad: out on meta", lambda b: _kept_grad(b, out=_meta(_eps())), V, "out"),
    ("soft_shard_grad: softcap -1", lambda b: _kept_grad(b, softcap=-1.0), V, "softcap"),
]


def _failure(call, exc, name) -> str | None:
    """None when ``call()`` raises ``exc`` with a message matching ``name``; else what went wrong."""
    try:
        out = call()
    except exc as e:
        return None if re.search(name, str(e)) else f"{type(e).__name__} does not name {name!r}: {e}"
    except Exception as e:  # noqa: BLE001 (the wrong type is the finding)
        return f"raised {type(e).__name__} ({e}), expected {exc}"
    return f"returned {out!r}: the bad input was accepted"


def _cases(**tables):
    return [pytest.param(r, b, id=f"{t}: {r[0]}-{b}") for t, rows in tables.items() for r in rows for b in BACKENDS]


@pytest.mark.parametrize("row,backend", _cases(cross_entropy=CROSS_ENTROPY, linear=LINEAR, modules=MODULES))
def test_bad_input(row, backend):
    _id, call, exc, name = row
    failure = _failure(lambda: call(backend), exc, name)
    assert failure is None, failure


@pytest.mark.parametrize("row,backend", _cases(ops=OPS))
def test_bad_op_input(row, backend):
    _id, call, exc, name = row
    extra = backends.get(backend).op_check_errors  # e.g. TORCH_CHECK's RuntimeError
    if extra:
        exc = (*extra, *(exc if isinstance(exc, tuple) else (exc,)))
    failure = _failure(lambda: call(backend), exc, name)
    assert failure is None, failure


@pytest.mark.parametrize("backend", BACKENDS)
def test_op_bwd_inplace_on_strided_logits(backend):
    """A strided view of the logits takes the gradient in place as bwd returns it, on every
    backend (the compiled op writes it back through a contiguous buffer)."""
    z, y, g = _x(C, N).T, _y(), torch.rand(N)
    _, stats = fwd_op(backend)(z, y, None, None, -100, 0.0, 0.5, True, 0.0)
    want = bwd_op(backend)(g, z, y, None, None, stats, -100, 0.0, 0.5)
    bwd_inplace_op(backend)(g, z, y, None, None, stats, -100, 0.0, 0.5)
    torch.testing.assert_close(z, want, rtol=0, atol=0)


# ---------------------------------------------------------------------------- accepted


_X = torch.linspace(-3, 3, N * C).reshape(N, C)
_Q = torch.linspace(0, 1, N * C).reshape(N, C)
_W = torch.arange(1.0, C + 1)


def _ref(x, y, **kw):
    return F.cross_entropy(x.double(), y, **kw).float()


# (id, the call given the backend, what F.cross_entropy gives): inputs that look bad and are valid
ACCEPTED = [
    ("ignore_index inside [0, C)", lambda b: ce(b, x=_X, ignore_index=2), lambda: _ref(_X, _y(), ignore_index=2)),
    ("label_smoothing True (F: 1.0)", lambda b: ce(b, x=_X, label_smoothing=True),
     lambda: _ref(_X, _y(), label_smoothing=1.0)),
    ("label_smoothing 0-dim tensor", lambda b: ce(b, x=_X, label_smoothing=torch.tensor(0.2)),
     lambda: _ref(_X, _y(), label_smoothing=0.2)),
    ("ignore_index 0-dim int tensor", lambda b: ce(b, x=_X, ignore_index=torch.tensor(1)),
     lambda: _ref(_X, _y(), ignore_index=1)),
    ("ignore_index NumPy int64", lambda b: ce(b, x=_X, ignore_index=np.int64(1)),
     lambda: _ref(_X, _y(), ignore_index=1)),
    ("uint8 target (F takes Byte)", lambda b: ce(b, x=_X, y=_y().to(torch.uint8)), lambda: _ref(_X, _y())),
    ("probabilities not summing to 1", lambda b: ce(b, x=_X, y=_Q * 3), lambda: _ref(_X, _Q.double() * 3)),
    ("negative probabilities", lambda b: ce(b, x=_X, y=-_Q, label_smoothing=0.2),
     lambda: _ref(_X, -_Q.double(), label_smoothing=0.2)),
    ("class weights of the rows summing to 0 (-inf)", lambda b: ce(b, x=_X, weight=_W - 2.5),
     lambda: _ref(_X, _y(), weight=_W.double() - 2.5)),
    ("a label C that is ignore_index", lambda b: ce(b, x=_X, y=torch.tensor([0, C, 2, C]), ignore_index=C),
     lambda: _ref(_X, torch.tensor([0, C, 2, C]), ignore_index=C)),
    # permissive where F raises: converted, the value F gives for the converted target / weight
    ("int32 target", lambda b: ce(b, x=_X, y=_y().int()), lambda: _ref(_X, _y())),
    ("float16 weight for float32 input", lambda b: ce(b, x=_X, weight=_W.half()),
     lambda: _ref(_X, _y(), weight=_W.double())),
    ("(C,) input, 0-dim target", lambda b: ce(b, x=_X[0], y=torch.tensor(3)), lambda: _ref(_X[0], torch.tensor(3))),
]


@pytest.mark.parametrize("row,backend", _cases(accepted=ACCEPTED))
def test_accepted(row, backend):
    _id, call, want = row
    torch.testing.assert_close(call(backend), want(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- vocab-parallel

# Two ranks, rank 0 owning classes [0, 4) and rank 1 [4, 9) of DC = 9. Every row is bad on every
# rank (a rank that raises alone leaves the others waiting in a collective).
DC = 9
_SLICES = [(0, 4), (4, 5)]


def vp(rank, b, z=None, y=None, **kw):
    start, size = _SLICES[rank]
    z = torch.randn(N, size, dtype=torch.float64) if z is None else z
    return vocab_parallel_cross_entropy(z, torch.tensor([0, 5, 8, 3]) if y is None else y, **{"backend": b, **kw})


def _dtensor(placement):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(torch.randn(N, DC), init_device_mesh("cpu", (2,)), [placement])


def _replicate():
    from torch.distributed.tensor import Replicate

    return _dtensor(Replicate())


def _shard0():
    from torch.distributed.tensor import Shard

    return _dtensor(Shard(0))


VOCAB_PARALLEL = [  # (id, bad call given (rank, backend), exception, regex)
    ("local_logits list", lambda r, b: vp(r, b, z=torch.randn(N, _SLICES[r][1]).tolist()), T, "local_logits"),
    ("local_logits int64", lambda r, b: vp(r, b, z=torch.ones(N, _SLICES[r][1], dtype=torch.long)), V,
     "local_logits"),
    ("local_logits 3-D", lambda r, b: vp(r, b, z=torch.randn(N, _SLICES[r][1], 1)), V, "local_logits"),
    ("local_logits 0-dim", lambda r, b: vp(r, b, z=torch.tensor(1.0), y=torch.tensor(0)), V, "local_logits"),
    ("local_logits a Replicate DTensor", lambda r, b: vp(r, b, z=_replicate()), V, "local_logits"),
    ("local_logits a Shard(0) DTensor", lambda r, b: vp(r, b, z=_shard0()), V, "local_logits"),
    ("target probabilities", lambda r, b: vp(r, b, y=torch.rand(N, DC, dtype=torch.float64)), V, "target"),
    ("target list", lambda r, b: vp(r, b, y=[0, 5, 8, 3]), T, "target"),
    ("target (N + 1,)", lambda r, b: vp(r, b, y=torch.zeros(N + 1, dtype=torch.long)), V, "target"),
    ("target bool", lambda r, b: vp(r, b, y=torch.zeros(N, dtype=torch.bool)), V, "target"),
    ("target on meta", lambda r, b: vp(r, b, y=_meta(_y())), V, "target"),
    ("label num_classes", lambda r, b: vp(r, b, y=torch.tensor([0, 5, 8, DC])), V, "target"),
    ("label -1", lambda r, b: vp(r, b, y=torch.tensor([0, 5, -1, 3])), V, "target"),
    ("class_start overlapping", lambda r, b: vp(r, b, class_start=0), V, "class_start"),
    ("class_start with a gap", lambda r, b: vp(r, b, class_start=(0, 5)[r]), V, "class_start"),
    ("class_start on one rank only", lambda r, b: vp(r, b, class_start=(0, None)[r]), V, "class_start"),
    ("class_start float", lambda r, b: vp(r, b, class_start=float(_SLICES[r][0])), V, "class_start"),
    ("class_start 0.5 with num_classes", lambda r, b: vp(r, b, class_start=_SLICES[r][0] + 0.5, num_classes=DC), V,
     "class_start"),
    ("class_start str with num_classes", lambda r, b: vp(r, b, class_start=str(_SLICES[r][0]), num_classes=DC), V,
     "class_start"),
    ("num_classes 9.5 with class_start", lambda r, b: vp(r, b, class_start=_SLICES[r][0], num_classes=DC + 0.5), V,
     "num_classes"),
    ("num_classes True", lambda r, b: vp(r, b, num_classes=True), V, "num_classes"),
    ("class_start -1 with num_classes", lambda r, b: vp(r, b, class_start=-1, num_classes=DC), V, "class_start"),
    ("class_start past the end with num_classes", lambda r, b: vp(r, b, class_start=(6, 5)[r], num_classes=DC),
     V, "class_start"),
    ("num_classes against the slices' sum", lambda r, b: vp(r, b, num_classes=DC + 1), V, "num_classes"),
    ("num_classes 0 with class_start", lambda r, b: vp(r, b, class_start=_SLICES[r][0], num_classes=0), V,
     "num_classes"),
    ("weight (C_local,)", lambda r, b: vp(r, b, weight=torch.ones(_SLICES[r][1], dtype=torch.float64)), V, "weight"),
    ("weight requires grad", lambda r, b: vp(r, b, weight=torch.ones(DC, requires_grad=True)), V, "weight"),
    ("mixture (C_local, C_local)", lambda r, b: vp(r, b, mixture=torch.rand(_SLICES[r][1], _SLICES[r][1])), V,
     "mixture"),
    ("mixture (C, C_local)", lambda r, b: vp(r, b, mixture=torch.rand(DC, _SLICES[r][1])), V, "mixture"),
    ("mixture requiring grad", lambda r, b: vp(r, b, mixture=torch.rand(DC, DC, requires_grad=True)), V, "mixture"),
    ("mixture list", lambda r, b: vp(r, b, mixture=[[0.0] * DC] * DC), V, "mixture"),
    ("inplace_backward on a leaf",
     lambda r, b: vp(r, b, z=torch.randn(N, _SLICES[r][1], requires_grad=True), inplace_backward=True), V,
     "inplace_backward.*local_logits"),
    ("ignore_index 1.5", lambda r, b: vp(r, b, ignore_index=1.5), V, "ignore_index"),
    ("ignore_index beyond int64", lambda r, b: vp(r, b, ignore_index=2**63), V, "ignore_index"),
    ("label_smoothing NaN", lambda r, b: vp(r, b, label_smoothing=float("nan")), V, "label_smoothing"),
    ("k 0", lambda r, b: vp(r, b, k=0), V, r"\bk\b"),
    ("softcap 0", lambda r, b: vp(r, b, softcap=0), V, "softcap"),
    ("z_loss -1", lambda r, b: vp(r, b, z_loss=-1), V, "z_loss"),
    ("trim 0", lambda r, b: vp(r, b, trim=0), V, "trim"),
    ("reduction 'avg'", lambda r, b: vp(r, b, reduction="avg"), V, "reduction"),
    ("backend 'tpu'", lambda r, b: vp(r, b, backend="tpu"), V, "backend"),
    ("group a str", lambda r, b: vp(r, b, group="world"), T, "group"),
    ("group a str with the layout given",
     lambda r, b: vp(r, b, group="world", class_start=_SLICES[r][0], num_classes=DC), T, "group"),
]


def _vp_worker(rank, world, port):
    # A bounded wait: a row that raised on one rank only would otherwise hang the test.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        failures = []
        for row_id, call, exc, name in VOCAB_PARALLEL:
            for backend in BACKENDS:
                failure = _failure(lambda: call(rank, backend), exc, name)
                if failure:
                    failures.append(f"rank {rank} {row_id}-{backend}: {failure}")
        dist.barrier()
        assert not failures, "\n".join(failures)
    finally:
        dist.destroy_process_group()


def test_vocab_parallel_bad_inputs():
    _spawn(_vp_worker, 2, _free_port())


# ---------------------------------------------------------------------------- softcap's range

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_op_softcap_range_is_schemas(backend, dtype):
    """_schema.softcap_range is the one statement of the caps the ops take; the compiled ops
    restate it in C++ (csrc/checks.cpp check_softcap: called through torch.ops directly, they
    check their own arguments). Every backend's op takes both ends and refuses the next number
    outside, naming softcap."""
    from hardloss_cuda._schema import softcap_range

    lo, hi = softcap_range(dtype)
    x, y = _x(dtype=dtype), _y()
    fwd = fwd_op(backend)
    for cap in (lo, hi):
        loss, _ = fwd(x, y, None, None, -100, 0.0, 1.0, False, cap)
        assert loss.shape == (N,)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    below = torch.nextafter(torch.tensor(lo, dtype=acc), torch.tensor(0.0, dtype=acc)).item()
    for cap in (below, math.inf if acc == torch.float64 else float(torch.finfo(torch.float64).max)):
        exc = (ValueError, *backends.get(backend).op_check_errors)
        failure = _failure(lambda: fwd(x, y, None, None, -100, 0.0, 1.0, False, cap), exc, "softcap")
        assert failure is None, (cap, failure)

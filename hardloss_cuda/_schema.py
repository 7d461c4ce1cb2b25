"""The one op schema shared by every backend.

The compiled library (csrc/ops.cpp) defines ``hardloss_cuda::fwd``, ``bwd``, ``bwd_inplace``
and ``shard_stats`` with these strings in ``TORCH_LIBRARY``; the Python backends (reference,
triton) define ``hardloss_cuda::<backend>_fwd`` etc. with the same argument lists, so that every
backend goes through the same fake/autograd registration.

This module is the one source: csrc/op_schema.h is generated from it (``c_header``, written by
``python scripts/gen_op_schema.py``) and checked in. Python is the source because the Python
backends define their ops from these strings at import, with no compiled library around; the
header is checked in so that a C++-only (CMake) build needs no Python. tests/test_ops.py fails
while the checked-in header differs from ``c_header()``.

Design: the forward pass reads the logits once and keeps a few numbers per row; the backward
pass reads the logits again and writes the gradient once (docs/ROW_MATH.md: 3 N C s bytes,
no (N, C) buffer held between the passes, no host synchronisation). Producing the gradient
in the forward pass instead costs a fourth pass in backward, to scale it by the incoming
gradient, and holds an (N, C) buffer from forward to backward.

``fwd(logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad, softcap)``
for ``logits`` (N, C):

- ``softcap``: 0, or c > 0: every logit z is read as ``c tanh(z / c)`` (Gemma-2's logit
  soft-capping), and everything below is of the capped logits; the backward multiplies the
  gradient by ``1 - tanh^2``. No capped copy of the logits is ever stored.

- ``target``: int64 (N,) class indices, or (N, C) class probabilities in logits' dtype.
- ``weight``: None or (C,) per-class weights; ``mixture``: None or (C, C) target matrix
  (only with class indices). Both in the accumulation dtype ("acc"): float64 for float64
  logits, else float32.
- returns ``loss`` (N,) acc, the per-row weighted loss ``-sum_j q_j log p_j`` (0 for ignored
  rows, NaN for a label outside [0, C) that is not ignore_index), and ``stats``
  (N, STATS_COLS) acc: the row's logsumexp as hi + lo (the mixture / probability-target
  gradients use it), then what the backend's ``bwd`` needs to produce the gradient in one pass
  (column layout below). Columns from SCALE_COL on are only meaningful when ``compute_grad``
  is True (0 otherwise); the reference writes them as the CUDA kernels do, though its own bwd
  reads none of them (docs/ROW_MATH.md: which backends can take each other's stats).
- a label outside [0, C) is never used as an index (no out-of-bounds read); the Python API
  raises on it before calling the op.

``bwd(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k,
softcap, grad_lse)`` returns the pseudo-gradient (docs/ROW_MATH.md section 3) times
``grad_loss[:, None]`` (grad_loss (N,) acc), plus ``grad_lse[:, None] * softmax`` when
``grad_lse`` (N,) acc is given (the gradient of the row's logsumexp: z-loss, ``return_lse``),
times the softcap's ``1 - tanh^2``, in logits' dtype: 0 for ignored rows, NaN for bad labels.
A row with ``grad_loss == 0`` (and ``grad_lse == 0``) and a finite logsumexp and scale gets a
zero gradient without its logits being read (trimmed rows cost no bandwidth). ``bwd_inplace`` writes the same into ``logits`` and returns nothing.

``shard_stats(logits, target, k, softcap)`` returns, per row, the one-hot path's raw statistics
over the classes ``j != target[i]`` (every class when ``target[i]`` lies outside [0, C)):
``(m, s1, sk)`` = (max z_j, sum exp(z_j - m), sum exp(k (z_j - m))), (N, SHARD_STATS_COLS) acc,
``(-inf, 0, 0)`` when no class is left. It is the forward's first half, before
the row is finalised: a vocab-parallel loss (``hardloss_cuda.distributed``) computes it on
each rank's slice of the classes, reduces it over the ranks and finalises it in O(N) torch
ops, then calls ``bwd`` on the slice with the global stats.

``soft_shard_stats(logits, target, weight, mixture, stats, ignore_index, label_smoothing, k,
softcap)`` is the same for soft rows (the targets as fwd takes them): the second pass of a soft
row over the classes of ``logits``, given the row's global logsumexp, t = sum q and dominant-class
flag in ``stats`` (N, STATS_COLS) (columns LSE_COL, LSE_LO_COL, SCALE_COL and 5, as fwd writes
them): per row, (N, SOFT_SHARD_STATS_COLS) acc, row_math.h's mergeable statistics unfinalised,
``(m_neg, s_neg, m_pos, s_pos)`` of ``k log|eps_j|`` over the negative and the positive classes
(the dominant class left out), then over the classes but the dominant one ``(m, s)`` of
``log p_j`` and ``sum q_j`` (0 on rows without a dominant class); at k = 1 only the latter three
(the dominant class by the k = 1 rule, ``is_star_k1``), the first four are then ``(-inf, 0,
-inf, 0)``. Ignored rows and bad labels: ``(-inf, 0, -inf, 0, -inf, 0, 0)``. The vocab-parallel
loss reduces them over the ranks and finalises them (``_torch_rows.soft_cols``).

Its kept pass, at k != 1: given ``eps`` (N, C) acc and ``side`` (N, C) int8 (contiguous, both or
neither), soft_shard_stats also writes per class what the backward needs besides the row's
finalised stats (row_math.h soft_shard_class_kept): ``eps`` = ``k log|eps_j|``, the very value its
statistics sum, and ``side`` = SIDE_NEG for a negative class, SIDE_POS for the others, SIDE_STAR
for the dominant class (eps 0, unused); ``(-inf, SIDE_POS)`` on ignored rows and bad labels.

``soft_shard_grad(grad_loss, eps, side, logits, stats, out, softcap, grad_lse)`` is then ``bwd``
for those rows without a second |eps|^k pass: with the row's finalised stats in the complete
form (c_pos, f_star), ``f_j = f_star`` (SIDE_STAR), ``-t exp(eps_j)`` (SIDE_NEG), ``sign(t)
exp(eps_j + c_pos)`` (SIDE_POS) (row_math.h soft_kept_f), written into ``out`` (N, C) in logits'
dtype as bwd writes it (times grad_loss, plus grad_lse times softmax, times the softcap's
slope; the logits are read only for those two). ``out`` may be ``eps`` itself (float32 /
float64 logits: the buffer becomes the gradient). A row with grad_loss 0 (and grad_lse 0) and a
finite lse and t is 0 without being read. Each pass reads what the other wrote: a vocab-parallel
loss at k != 1 holds eps and side from forward to backward (5 bytes a class in float32) instead
of taking log and exp twice more per class (docs/DISTRIBUTED.md).
"""

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype ("acc") of logits of ``dtype``: float64 stays float64, every
    other dtype computes in float32. loss, stats, weight, mixture and grad_loss are in acc."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def softcap_range(dtype: torch.dtype) -> tuple[float, float]:
    """The caps the ops take for logits of ``dtype`` (besides 0, "off"): the normal positive
    numbers of its accumulation dtype. A float32 cap below 2**-126 rounds to 0 ("off") or a
    denormal there, one above float32's max to inf (inf * tanh(0) is NaN)."""
    fi = torch.finfo(acc_dtype(dtype))
    return float(fi.smallest_normal), float(fi.max)


# The logits' dtypes every backend takes (validation.py and the ops' checks read this one list).
LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_logit_dtype(dtype: torch.dtype, name: str = "logits", error: type = TypeError) -> None:
    if dtype not in LOGIT_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in LOGIT_DTYPES)
        raise error(f"{name}: unsupported dtype {dtype}; expected one of {names}")


def check_softcap_in_range(softcap: float, dtype: torch.dtype, off: str) -> None:
    """Raise naming ``softcap`` and its value unless it lies in ``softcap_range(dtype)``; ``off``
    is how the caller spells "no cap" ("None" in the API, "0 (off)" for the ops)."""
    lo, hi = softcap_range(dtype)
    if not (lo <= softcap <= hi):
        raise ValueError(f"softcap must be {off} or a number in [{lo:.4g}, {hi:.4g}] for {dtype} logits (the "
                         f"kernels compute in {acc_dtype(dtype)}), got {softcap!r}")


def _check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (N, C), got shape {tuple(getattr(logits, 'shape', ()))}")
    check_logit_dtype(logits.dtype)


def check_op_args(logits, target, weight, mixture) -> None:
    """The ops' own checks of what they index and read with: shapes, dtypes and devices (cheap, no
    device sync; csrc/checks.cpp check_fwd_args says the same). Run by the Python backends
    (reference, Triton) and by the fakes, which serve any call with a meta tensor among its
    arguments. The user-facing checks (k, label_smoothing, label values, ...) are
    validation.py's, run before any op; a label out of range gives a NaN row."""
    _check_logits(logits)
    N, C = logits.shape
    if C == 0:
        raise ValueError("logits: need at least one class (C >= 1)")
    acc = acc_dtype(logits.dtype)
    if target.is_floating_point():
        if target.shape != logits.shape or target.dtype != logits.dtype:
            raise ValueError(f"target: probabilities must be {logits.dtype} of shape {(N, C)}, got {target.dtype} "
                             f"{tuple(target.shape)}")
        if mixture is not None:
            raise ValueError("mixture: only allowed with class-index targets")
    elif target.dtype != torch.int64 or target.shape != (N,):
        raise ValueError(f"target: expected int64 of shape ({N},), got {target.dtype} {tuple(target.shape)}")
    if weight is not None and (weight.shape != (C,) or weight.dtype != acc):
        raise ValueError(f"weight: expected {acc} of shape ({C},), got {weight.dtype} {tuple(weight.shape)}")
    if mixture is not None and (mixture.shape != (C, C) or mixture.dtype != acc):
        raise ValueError(f"mixture: expected {acc} of shape ({C}, {C}), got {mixture.dtype} {tuple(mixture.shape)}")
    for name, t in (("target", target), ("weight", weight), ("mixture", mixture)):
        if t is not None and t.device != logits.device:
            raise ValueError(f"{name}: on {t.device}, logits on {logits.device}")


def check_op_bwd_args(grad_loss, logits, stats, grad_lse) -> None:
    """bwd's own arguments, after check_op_args: grad_loss (N,), stats (N, STATS_COLS) and grad_lse
    (N,) when given, in the accumulation dtype on the logits' device (check_bwd_args in C++)."""
    N = logits.shape[0]
    acc = acc_dtype(logits.dtype)
    checked = [("grad_loss", grad_loss, (N,)), ("stats", stats, (N, STATS_COLS))]
    if grad_lse is not None:
        checked.append(("grad_lse", grad_lse, (N,)))
    for name, t, shape in checked:
        if t.shape != shape or t.dtype != acc:
            raise ValueError(f"{name}: expected {acc} of shape {shape}, got {t.dtype} {tuple(t.shape)}")
        if t.device != logits.device:
            raise ValueError(f"{name}: on {t.device}, logits on {logits.device}")


def check_op_shard_stats_args(logits, target) -> None:
    check_op_args(logits, target, None, None)
    if target.is_floating_point():
        raise ValueError("target: shard_stats takes class indices")


def check_op_soft_shard_stats_args(logits, target, weight, mixture, stats) -> None:
    """soft_shard_stats' own arguments: fwd's (check_op_args), and the row's stats (N, STATS_COLS)
    in the accumulation dtype on the logits' device (csrc/checks.cpp check_soft_shard_args)."""
    check_op_args(logits, target, weight, mixture)
    N, acc = logits.shape[0], acc_dtype(logits.dtype)
    if stats.shape != (N, STATS_COLS) or stats.dtype != acc:
        raise ValueError(f"stats: expected {acc} of shape {(N, STATS_COLS)}, got {stats.dtype} {tuple(stats.shape)}")
    if stats.device != logits.device:
        raise ValueError(f"stats: on {stats.device}, logits on {logits.device}")


def check_op_kept_eps(logits, eps, side, k) -> None:
    """soft_shard_stats' optional outputs (csrc/checks.cpp check_kept_eps says the same)."""
    if eps is None and side is None:
        return
    if eps is None or side is None:
        raise ValueError("eps, side: give both or neither")
    if k == 1:
        raise ValueError("eps: the kept pass is for k != 1 (at k = 1 soft_shard_stats takes no |eps|)")
    _check_kept(logits, eps, side)


def _check_like_logits(name, x, logits, dtype) -> None:
    """x: contiguous, of the logits' shape and device, in ``dtype``."""
    if x.shape != logits.shape or x.dtype != dtype or not x.is_contiguous():
        raise ValueError(f"{name}: expected contiguous {dtype} of shape {tuple(logits.shape)}, got {x.dtype} "
                         f"{tuple(x.shape)}")
    if x.device != logits.device:
        raise ValueError(f"{name}: on {x.device}, logits on {logits.device}")


def _check_kept(logits, eps, side) -> None:
    _check_like_logits("eps", eps, logits, acc_dtype(logits.dtype))
    _check_like_logits("side", side, logits, torch.int8)


def check_op_soft_shard_grad_args(grad_loss, eps, side, logits, stats, out, grad_lse) -> None:
    """soft_shard_grad's arguments (csrc/checks.cpp check_soft_shard_grad_args)."""
    _check_logits(logits)
    check_op_bwd_args(grad_loss, logits, stats, grad_lse)
    _check_kept(logits, eps, side)
    _check_like_logits("out", out, logits, logits.dtype)


def check_op_softcap(softcap: float, dtype: torch.dtype) -> None:
    """The ops' own check of ``softcap`` (csrc/checks.cpp check_softcap says the same)."""
    if softcap != 0.0:
        check_softcap_in_range(softcap, dtype, "0 (off)")


FWD_ARGS = (
    "(Tensor logits, Tensor target, Tensor? weight, Tensor? mixture, "
    "int ignore_index, float label_smoothing, float k, bool compute_grad, float softcap=0.) "
    "-> (Tensor, Tensor)"
)
BWD_ARGS = (
    "(Tensor grad_loss, Tensor logits, Tensor target, Tensor? weight, Tensor? mixture, "
    "Tensor stats, int ignore_index, float label_smoothing, float k, float softcap=0., "
    "Tensor? grad_lse=None) -> Tensor"
)
SHARD_STATS_ARGS = "(Tensor logits, Tensor target, float k, float softcap=0.) -> Tensor"
SHARD_STATS_COLS = 3
SOFT_SHARD_STATS_ARGS = (
    "(Tensor logits, Tensor target, Tensor? weight, Tensor? mixture, Tensor stats, int ignore_index, "
    "float label_smoothing, float k, float softcap=0., Tensor(a!)? eps=None, Tensor(b!)? side=None) -> Tensor"
)
# soft_shard_stats' columns: row_math.h SoftEpsStats {m_neg, s_neg, m_pos, s_pos}, then StarRest
# {log p: m, s; sum q} (csrc/row_math.h SoftShardCol)
SOFT_SHARD_STATS_COLS = 7
SOFT_SHARD_GRAD_ARGS = (
    "(Tensor grad_loss, Tensor eps, Tensor side, Tensor logits, Tensor stats, Tensor(a!) out, float softcap=0., "
    "Tensor? grad_lse=None) -> ()"
)
# soft_shard_stats' kept pass (its eps / side outputs): the side of each class (row_math.h kSide*)
SIDE_POS, SIDE_NEG, SIDE_STAR = 0, 1, 2
BWD_INPLACE_ARGS = (
    "(Tensor grad_loss, Tensor(a!) logits, Tensor target, Tensor? weight, Tensor? mixture, "
    "Tensor stats, int ignore_index, float label_smoothing, float k, float softcap=0., "
    "Tensor? grad_lse=None) -> ()"
)

# Columns of ``stats`` (csrc/row_math.h "What a row keeps" has the same layout for C++ and
# CUDA; hardloss_cuda.triton_kernels imports these). 0..2 mean the same for every row:
#   LSE_COL    the row's logsumexp, rounded;
#   LSE_LO_COL what the rounding lost: -log p_j = (lse - z_j) + lse_lo, exact for huge logits;
#   SCALE_COL  one-hot rows f_y, soft rows t = sum q. A row with incoming gradient 0 and a
#              finite lse and scale has gradient 0 without its logits being read.
# 3..5 are the path's own (row_math.h OneHotRow / SoftRow). A soft row's TAG_COL says what its
# columns 3 and 4 hold (docs/ROW_MATH.md), plus 1 when the row has a dominant class (star):
#   STATS_SOFT_COMPLETE + star: c_pos, f_star (the CUDA kernels' and the reference's forward,
#                               Triton's at k != 1);
#   STATS_SOFT_DEFERRED + star: the row max m and log sum exp(z - m); the backward makes the
#                               |eps|^k pass itself (the CPU's forward, Triton's at k = 1).
# Every backward takes both. Columns 2..5 are 0 for ignored and out-of-range rows and when the
# forward was run without compute_grad.
STATS_COLS = 6
LSE_COL = 0
LSE_LO_COL = 1
SCALE_COL = 2
TAG_COL = 5
STATS_SOFT_COMPLETE = 0
STATS_SOFT_DEFERRED = 2


def soft_tag_star(tag):
    """Whether soft rows have a dominant class, from their TAG_COL (row_math.h soft_tag_star)."""
    return (tag - torch.where(tag >= STATS_SOFT_DEFERRED, STATS_SOFT_DEFERRED, STATS_SOFT_COMPLETE)) != 0


# The C++ side of the above (csrc/op_schema.h): the macro each value becomes, in order.
_C_MACROS = (("HL_FWD_ARGS", FWD_ARGS), ("HL_BWD_ARGS", BWD_ARGS), ("HL_BWD_INPLACE_ARGS", BWD_INPLACE_ARGS),
             ("HL_SHARD_STATS_ARGS", SHARD_STATS_ARGS), ("HL_STATS_COLS", STATS_COLS),
             ("HL_SHARD_STATS_COLS", SHARD_STATS_COLS), ("HL_SOFT_SHARD_STATS_ARGS", SOFT_SHARD_STATS_ARGS),
             ("HL_SOFT_SHARD_STATS_COLS", SOFT_SHARD_STATS_COLS), ("HL_STATS_SOFT_COMPLETE", STATS_SOFT_COMPLETE),
             ("HL_STATS_SOFT_DEFERRED", STATS_SOFT_DEFERRED), ("HL_SOFT_SHARD_GRAD_ARGS", SOFT_SHARD_GRAD_ARGS))


def c_header() -> str:
    """csrc/op_schema.h, as scripts/gen_op_schema.py writes it."""
    lines = [
        "// op_schema.h: GENERATED from hardloss_cuda/_schema.py by `python scripts/gen_op_schema.py`;",
        "// edit _schema.py and rerun it (tests/test_ops.py fails while this file differs).",
        "// The ops' argument lists, for csrc/ops.cpp and the emulated backend's cuda_emu_* ops",
        "// (csrc/cuda/emu/ops_emu.cpp), the widths of stats and shard_stats and the soft rows' stats",
        "// tags (csrc/row_math.h).",
        "#pragma once",
        "",
        "// clang-format off",
    ]
    for name, value in _C_MACROS:
        if isinstance(value, str):
            assert '"' not in value and "\\" not in value, value  # written as a C string as is
            value = f'"{value}"'
        lines.append(f"#define {name} {value}")
    lines.append("// clang-format on")
    return "\n".join(lines) + "\n"

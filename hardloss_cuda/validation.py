"""Argument checks of docs/CONTRACT.md section 5: every bad input raises, naming the argument,
before any kernel runs. Data-dependent checks (label range) are skipped while tracing
(torch.compile) or capturing a CUDA graph, where the kernels' own guard applies: an
out-of-range label gives a NaN row and is never read."""

from __future__ import annotations

import contextlib
import math
from numbers import Integral, Real

import torch
from torch import Tensor

from ._schema import check_logit_dtype, check_softcap_in_range

REDUCTIONS = ("mean", "sum", "none")


def in_functorch(t: Tensor) -> bool:
    """Whether t is a torch.func transform's tensor (vmap, grad, jvp): no .item() there.
    (Dynamo cannot trace the query; compiled code answers False.)"""
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def _data_checks_allowed(t: Tensor) -> bool:
    """The label range check reads the labels (one sync). Not while compiling, capturing a
    CUDA graph or inside a torch.func transform: there a label outside [0, C) gives a NaN loss
    (the ops never read out of bounds), as the ops' contract says."""
    if torch.compiler.is_compiling() or in_functorch(t):
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype when autocast is on for tensors of ``device``, else None."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def autocast_off(device: torch.device):
    """A context with autocast off for tensors of ``device`` where it is on (custom_fwd /
    custom_bwd: the work inside runs in the dtypes it is given); else a no-op."""
    return torch.autocast(device.type, enabled=False) if autocast_dtype(device) is not None else contextlib.nullcontext()


# k is used in fp32 by the kernels for every dtype but float64: it must stay a positive
# normal fp32 number there (a smaller k rounds to 0 or a denormal, and |eps|^k turns NaN).
_K_MIN = 2.0**-126
_K_MAX = float(torch.finfo(torch.float32).max)


def _item(t: Tensor, name: str):
    if t.is_meta:  # Tensor.item() raises a RuntimeError that names nothing
        raise ValueError(f"{name} must be a number, got a tensor on the meta device (it has no value)")
    return t.item()


def as_number(value, name: str) -> float:
    """A number given as a Python number or a one-element tensor (its value, as a float); anything
    else raises a ValueError naming the argument."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got a tensor of shape "
                             f"{tuple(value.shape)}")
        value = _item(value, name)
    if not isinstance(value, Real) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float64: infinite, which every range check refuses
        return math.inf if value > 0 else -math.inf


def check_k(k) -> float:
    k = as_number(k, "k")
    if not math.isfinite(k) or not (_K_MIN <= k <= _K_MAX):
        raise ValueError(f"k must be a number in [2**-126, {_K_MAX:.3g}] (a positive normal float32), got {k!r}")
    return float(k)


def check_softcap(softcap, dtype: torch.dtype) -> float:
    """None (off) or a number the kernels can hold for ``dtype`` logits (_schema.softcap_range);
    returned as the ops take it (0.0: off)."""
    if softcap is None:
        return 0.0
    softcap = as_number(softcap, "softcap")
    check_softcap_in_range(softcap, dtype, "None")
    return float(softcap)


def check_z_loss(z_loss) -> float:
    z_loss = as_number(z_loss, "z_loss")
    if not (0 <= z_loss < math.inf):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss!r}")
    return float(z_loss)


def scalar_arg(value, name: str, kind: type):
    """ignore_index / label_smoothing given as a 0-dim tensor or a NumPy integer, as PyTorch
    accepts: the number."""
    if isinstance(value, Tensor):
        if value.dim() != 0:
            raise ValueError(f"{name} must be a number or a 0-dim tensor, got shape {tuple(value.shape)}")
        if kind is int and value.is_floating_point():
            raise ValueError(f"{name} must be an int, got a {value.dtype} tensor")
        return kind(_item(value, name))
    if kind is int and isinstance(value, Integral) and not isinstance(value, bool):
        return int(value)
    return value


def check_fraction(value, name: str) -> float:
    if not isinstance(value, Real) or isinstance(value, bool) or not (0 < value <= 1):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def check_fraction_tensor(value: Tensor, name: str) -> Tensor:
    """A fraction in (0, 1] held in a one-element float tensor (0-dim as returned). Its value is
    checked where it can be read (not while compiling: there it is a graph input, which is what
    keeps a changing fraction from recompiling)."""
    if value.numel() != 1 or not value.is_floating_point():
        raise ValueError(f"{name} must be a number in (0, 1] or a one-element float tensor, got a {value.dtype} "
                         f"tensor of shape {tuple(value.shape)}")
    if _data_checks_allowed(value) and not value.is_meta:
        check_fraction(value.item(), name)
    return value.reshape(())


def check_mixing_weight(eps, name: str = "eps") -> None:
    """A mixing weight (scalar or per-class tensor) must lie in [0, 0.5)."""
    if not isinstance(eps, (Real, Tensor)):  # torch.as_tensor would raise, naming nothing
        raise ValueError(f"{name} must be a number or a float tensor, got {eps!r}")
    t = torch.as_tensor(eps)
    if t.requires_grad:  # a learned weight is kept in range by the penalty, not checked
        return
    if not t.is_floating_point() and t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be a number or a float tensor, got dtype {t.dtype}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()) or bool((t >= 0.5).any()):
        raise ValueError(f"{name} (mixing weight) must lie in [0, 0.5), got {eps!r}")


def check_reduction(reduction) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_ignore_index(ignore_index) -> int:
    # int64, as the ops take it (a larger one overflowed in the comparison with the labels)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool) or not -2**63 <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must be an int (int64), got {ignore_index!r}")
    return ignore_index


def check_label_smoothing(label_smoothing) -> float:
    if not isinstance(label_smoothing, Real) or not (0.0 <= label_smoothing <= 1.0):  # True is 1.0, as in F
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    return float(label_smoothing)


def check_weight(weight, C: int | None = None) -> None:
    """Class weights: a float tensor of shape (C,) (any length when C is not known yet)."""
    if not isinstance(weight, Tensor) or not weight.is_floating_point() or weight.dim() != 1 or (
            C is not None and weight.shape[0] != C):
        want = f"({C},)" if C is not None else "(C,)"
        got = f"a {weight.dtype} tensor of shape {tuple(weight.shape)}" if isinstance(weight, Tensor) else repr(weight)
        raise ValueError(f"weight must be a float tensor of shape {want}, got {got}")


def check_mixture(mixture, C: int | None = None, label_smoothing: float = 0.0) -> None:
    """A mixture: a float C x C tensor (any square when C is not known yet), without smoothing."""
    if not isinstance(mixture, Tensor) or not mixture.is_floating_point():
        got = f"a {mixture.dtype} tensor" if isinstance(mixture, Tensor) else repr(mixture)
        raise ValueError(f"mixture must be a float tensor, got {got}")
    shape = tuple(mixture.shape)
    if C is None and (len(shape) != 2 or shape[0] != shape[1]):
        raise ValueError(f"mixture must be a square C x C matrix, got shape {shape}")
    if C is not None and shape != (C, C):
        raise ValueError(f"mixture must be C x C = ({C}, {C}) for input with {C} classes, got {shape}. A mixture "
                         "built from mcel.lda_similarity has one row per class present in its labels: pass it "
                         "num_classes= so that a missing class is named")
    if label_smoothing > 0:
        raise ValueError("label_smoothing cannot be combined with mixture (fold it into the mixture)")


def check_chunk_size(chunk_size) -> None:
    if isinstance(chunk_size, str) and chunk_size == "auto":
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be 'auto' or a positive int, got {chunk_size!r}")


def float_labels_message(target: Tensor, logits_shape: tuple) -> str:
    """A float target shaped as class indices: the likely mistake is labels left as floats."""
    return (f"target is a {target.dtype} tensor of shape {tuple(target.shape)}, the shape of class indices: "
            "class indices must be an integer tensor (use target.long()); a float target is read as class "
            f"probabilities, of shape {logits_shape}")


def check_inputs(input, target, weight, ignore_index, reduction, label_smoothing, mixture, inplace_backward,
                 num_classes: int | None = None, input_name: str = "input"):
    """Shape, dtype and range checks; returns the number of classes C (``num_classes`` when
    ``input`` holds only a slice of them: a vocab-parallel shard, named ``input_name``)."""
    name = input_name
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(input).__name__}")
    check_logit_dtype(input.dtype, name, ValueError)
    if input.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (the classes)")
    C = num_classes if num_classes is not None else (input.shape[0] if input.dim() == 1 else input.shape[1])
    if C < 1:
        raise ValueError(f"{name} must have at least one class (C >= 1)")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a Tensor, got {type(target).__name__}")
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but {name} is on {input.device}")
    check_reduction(reduction)
    check_ignore_index(ignore_index)
    check_label_smoothing(label_smoothing)

    class_shape = input.shape[:1] + input.shape[2:] if input.dim() > 1 else ()
    if target.is_floating_point():
        if target.shape != input.shape:
            if tuple(target.shape) == tuple(class_shape):
                raise ValueError(float_labels_message(target, tuple(input.shape)))
            raise ValueError(f"target (probabilities) must have {name}'s shape {tuple(input.shape)}, "
                             f"got {tuple(target.shape)}")
        if mixture is not None:
            raise ValueError("mixture needs class-index targets, not probabilities")
        if ignore_index != -100:
            raise ValueError(f"ignore_index={ignore_index} is not supported with probability targets (as in PyTorch)")
    else:
        if target.dtype == torch.bool or target.is_complex():
            raise ValueError(f"target: unsupported dtype {target.dtype}; expected int64 class indices")
        if tuple(target.shape) != tuple(class_shape):
            raise ValueError(f"target (class indices) must have shape {tuple(class_shape)}, got {tuple(target.shape)}")
        if target.numel() and _data_checks_allowed(target):
            labels = torch.where(target == ignore_index, 0, target)
            lo, hi = torch.aminmax(labels)  # one sync when every label is in range
            if bool((lo < 0) | (hi >= C)):
                bad = labels[(labels < 0) | (labels >= C)][0].item()
                raise ValueError(f"target contains class index {bad} outside [0, {C}) that is not ignore_index={ignore_index}")

    if weight is not None:
        check_weight(weight, C)
        if weight.device != input.device:
            raise ValueError(f"weight is on {weight.device} but {name} is on {input.device}")
        if weight.requires_grad and torch.is_grad_enabled():
            raise ValueError("weight: the gradient w.r.t. class weights is not supported (as in PyTorch)")
    if mixture is not None:
        check_mixture(mixture, C, label_smoothing)
        if mixture.device != input.device:
            raise ValueError(f"mixture is on {mixture.device} but {name} is on {input.device}")
    if inplace_backward and input.requires_grad:
        # A view shares its base's storage: writing the gradient into a view of a parameter
        # would overwrite the parameter (PyTorch refuses in-place ops on those too).
        base = input if input._base is None else input._base
        if input.is_leaf or (base.is_leaf and base.requires_grad):
            raise ValueError(
                f"inplace_backward=True overwrites {name} with its gradient; {name} must not be a leaf that "
                "requires grad, nor a view of one"
            )
        if (mixture is not None and mixture.requires_grad) or (target.is_floating_point() and target.requires_grad):
            raise ValueError("inplace_backward=True cannot be used when mixture or target require grad (their gradient needs the logits)")
    return C

"""The keywords every front end shares (``cross_entropy``, ``linear_cross_entropy``,
``vocab_parallel_cross_entropy`` and the modules), checked once and held in one frozen
``LossOptions``; and their documentation, written once (``ARG_DOCS``, ``with_arg_docs``).

The checks themselves are ``validation.py``'s, in the order every front end used: the call's
tensors first (``check_inputs``), then ``k``, ``softcap``, ``z_loss``, ``trim`` and the backend.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from . import backends
from .validation import (check_chunk_size, check_fraction, check_fraction_tensor, check_ignore_index, check_inputs,
                         check_k, check_label_smoothing, check_mixture, check_reduction, check_softcap, check_weight,
                         check_z_loss, scalar_arg)

__all__ = ["LossOptions", "loss_options", "check_module_options", "positional_order", "with_arg_docs", "ARG_DOCS"]


@dataclass(frozen=True)
class LossOptions:
    """The shared keywords of one call, checked and as the ops take them."""

    weight: Tensor | None
    ignore_index: int
    reduction: str
    label_smoothing: float
    k: float
    mixture: Tensor | None
    # the kept fraction: a number, or a 0-dim tensor (a schedule's ``fraction_tensor``: no
    # recompile per epoch under torch.compile); None: no trimming
    trim: float | Tensor | None
    softcap: float  # 0.0: off
    z_loss: float
    return_lse: bool
    inplace_backward: bool
    backend: str  # resolved: never "auto"


def trim_fraction(trim) -> float | Tensor | None:
    """A fraction in (0, 1] (a number or a 0-dim tensor), or an object holding one: a
    ``fraction_tensor`` (``MiniBatchTrimming``) or a ``fraction`` attribute."""
    if trim is None:
        return None
    value = getattr(trim, "fraction_tensor", None)
    if value is None:
        value = getattr(trim, "fraction", trim)
    if isinstance(value, Tensor):
        return check_fraction_tensor(value, "trim")
    return check_fraction(value, "trim")


def loss_options(input: Tensor, target: Tensor, *, weight=None, ignore_index=-100, reduction="mean",
                 label_smoothing=0.0, k=1.0, mixture=None, trim=None, softcap=None, z_loss=0.0, return_lse=False,
                 inplace_backward=False, backend="auto", num_classes: int | None = None,
                 input_name: str = "input") -> LossOptions:
    """The checked options of a call on the logits ``input`` (or a tensor shaped as them) and
    ``target``; ``num_classes`` and ``input_name`` as ``validation.check_inputs``. Raises on
    the first bad argument, with the message of ``validation.py``."""
    ignore_index = scalar_arg(ignore_index, "ignore_index", int)
    label_smoothing = scalar_arg(label_smoothing, "label_smoothing", float)
    check_inputs(input, target, weight, ignore_index, reduction, label_smoothing, mixture, inplace_backward,
                 num_classes=num_classes, input_name=input_name)
    k = check_k(k)
    softcap = check_softcap(softcap, input.dtype)
    z_loss = check_z_loss(z_loss)
    trim = trim_fraction(trim)
    return LossOptions(weight=weight, ignore_index=ignore_index, reduction=reduction,
                       label_smoothing=float(label_smoothing), k=k, mixture=mixture, trim=trim, softcap=softcap,
                       z_loss=z_loss, return_lse=bool(return_lse), inplace_backward=bool(inplace_backward),
                       backend=backends.resolve(backend, input.device))


def check_module_options(*, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, k=1.0,
                         mixture=None, trim=None, softcap=None, z_loss=0.0, backend="auto", chunk_size=None) -> dict:
    """What a module checks when it is built, before any input is seen (issue #33: a bad option
    failed only on the first call): every keyword with the message a call would give, except
    what needs the input (C, the device, the dtype: ``softcap`` is checked against the widest
    range, each call against its dtype's). Returns the options as the module keeps them
    (``ignore_index`` and ``label_smoothing`` as numbers, ``k`` and ``z_loss`` as floats)."""
    if weight is not None:
        check_weight(weight)
    ignore_index = check_ignore_index(scalar_arg(ignore_index, "ignore_index", int))
    label_smoothing = check_label_smoothing(scalar_arg(label_smoothing, "label_smoothing", float))
    if mixture is not None:
        check_mixture(mixture, label_smoothing=label_smoothing)
    check_softcap(softcap, torch.float64)
    trim_fraction(trim)
    backends.check_backend(backend)
    if chunk_size is not None:
        check_chunk_size(chunk_size)
    return dict(ignore_index=ignore_index, reduction=check_reduction(reduction), label_smoothing=label_smoothing,
                k=check_k(k), z_loss=check_z_loss(z_loss))


def positional_order(size_average, ignore_index, reduce, reduction, label_smoothing, where: str, stacklevel: int = 3):
    """``(ignore_index, reduction, label_smoothing)`` of a call (or module) whose positional
    arguments follow ``F.cross_entropy`` / ``nn.CrossEntropyLoss``: ``(weight, size_average,
    ignore_index, reduce, reduction, label_smoothing)``.

    - ``size_average`` / ``reduce`` given as PyTorch's deprecated bools: the reduction they
      mean, with PyTorch's own warning (``legacy_get_string``).
    - ``size_average`` not None nor a bool: the library's order before issue #33, ``(weight,
      ignore_index, reduction, label_smoothing)``, every positional argument one place early;
      read that way, with a FutureWarning.
    """
    if size_average is None and reduce is None:  # keywords, or F's order without the legacy pair
        return ignore_index, reduction, label_smoothing
    if size_average is None or isinstance(size_average, bool):
        if reduce is not None and not isinstance(reduce, bool):
            raise ValueError(f"reduce must be None or a bool (deprecated, as in F.cross_entropy; use reduction=), "
                             f"got {reduce!r}")
        from torch.nn import _reduction
        return ignore_index, _reduction.legacy_get_string(size_average, reduce), label_smoothing
    # the old order: size_average holds ignore_index, ignore_index the reduction, reduce the smoothing
    old_reduction = ignore_index if isinstance(ignore_index, str) else None
    given_twice = [name for name, given in (
        ("ignore_index", old_reduction is None and not (type(ignore_index) is int and ignore_index == -100)),
        ("reduction", old_reduction is not None and reduction != "mean"),
        ("label_smoothing", reduce is not None and label_smoothing != 0.0)) if given]
    if given_twice:
        raise TypeError(f"{where}: {', '.join(given_twice)} given twice: positionally in the old order (weight, "
                        "ignore_index, reduction, label_smoothing) and by keyword; pass them by keyword only")
    warnings.warn(
        f"{where}: the positional arguments after weight now follow F.cross_entropy's order (weight, size_average, "
        f"ignore_index, reduce, reduction, label_smoothing); this call used the old one (weight, ignore_index, "
        f"reduction, label_smoothing) and was read that way. Pass ignore_index, reduction and label_smoothing by "
        "keyword", FutureWarning, stacklevel=stacklevel)
    return (size_average, reduction if old_reduction is None else old_reduction,
            label_smoothing if reduce is None else reduce)


# The shared arguments' documentation, once: the front ends' docstrings take it through
# ``with_arg_docs``.
ARG_DOCS = {
    "k": """k: sensitivity to large errors (Keren et al.): ``k < 1`` less, ``k > 1`` more.""",
    "mixture": """mixture: C x C target matrix W (MCEL, Negi et al.); row ``W[y]`` replaces the one-hot
    target. Its gradient is computed when it requires grad.""",
    "trim": """trim: kept fraction in (0, 1] of the non-ignored rows with the highest loss (Fassold): a
    number, a 0-dim tensor, or a ``MiniBatchTrimming`` (read as its ``fraction_tensor``; any
    other object with a ``fraction`` attribute is read through it). A tensor or a schedule
    changes without a recompile under ``torch.compile``; a changing Python number recompiles.""",
    "softcap": """softcap: None, or c > 0: the logits are read as ``c tanh(z / c)`` (Gemma 2's logit
    soft-capping) inside the kernels, gradient included; no capped copy is stored.""",
    "z_loss": """z_loss: adds ``z_loss * lse**2`` per counted row (PaLM's z-loss; in ``mean`` divided by
    the number of counted rows, unweighted), its gradient ``2 z_loss lse softmax``.""",
    "return_lse": """return_lse: also return the per-row logsumexp of the (capped) logits, shaped as the
    ``reduction="none"`` loss, in float32 (float64 for float64 input), 0 on ignored
    rows; differentiable (its gradient is the softmax).""",
    "inplace_backward": """inplace_backward: write the gradient into the logits' storage during the backward pass
    (saves an (N, C) buffer; the logits are overwritten and must not be used afterwards).""",
    "backend": """backend: "auto", "cuda", "triton", "cpu" or "reference" (``HARDLOSS_BACKEND``
    overrides "auto"); "cuda_emu" in a test build (docs/CUDA_EMU.md).""",
}


def with_arg_docs(*names: str):
    """Decorator: the docstring's ``{args}`` becomes the documentation of ``names``, indented
    as the line that holds it."""
    def decorate(fn):
        if fn.__doc__ is None:  # python -OO
            return fn
        line = next(ln for ln in fn.__doc__.splitlines() if "{args}" in ln)
        indent = line[:len(line) - len(line.lstrip())]
        text = "\n".join(indent + ln for name in names for ln in ARG_DOCS[name].splitlines())
        fn.__doc__ = fn.__doc__.replace(indent + "{args}", text)
        return fn
    return decorate

"""The keywords every front end shares (``cross_entropy``, ``linear_cross_entropy``,
``vocab_parallel_cross_entropy`` and the modules), checked once and held in one frozen
``LossOptions``; and their documentation, written once (``ARG_DOCS``, ``with_arg_docs``).

The checks themselves are ``validation.py``'s, in the order every front end used: the call's
tensors first (``check_inputs``), then ``k``, ``softcap``, ``z_loss``, ``trim`` and the backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import backends
from .validation import check_fraction, check_fraction_tensor, check_inputs, check_k, check_softcap, check_z_loss, scalar_arg

__all__ = ["LossOptions", "loss_options", "check_module_options", "with_arg_docs", "ARG_DOCS"]


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


def check_module_options(k, softcap, z_loss) -> tuple[float, float]:
    """What a module checks when it is built, before any input is seen: ``k`` and ``z_loss``
    (returned checked) and ``softcap`` against the range of every dtype (each call checks the
    range of its own)."""
    k = check_k(k)
    check_softcap(softcap, torch.float64)
    return k, check_z_loss(z_loss)


# The shared arguments' documentation, once: the front ends' docstrings take it through
# ``with_arg_docs``.
ARG_DOCS = {
    "k": """k: sensitivity to large errors (Keren et al.): ``k < 1`` less, ``k > 1`` more.""",
    "mixture": """mixture: C x C target matrix W (MCEL, Negi et al.); row ``W[y]`` replaces the one-hot
    target. Its gradient is computed when it requires grad.""",
    "trim": """trim: kept fraction in (0, 1] of the non-ignored rows with the highest loss (Fassold),
    or an object with a ``fraction`` attribute such as ``MiniBatchTrimming``.""",
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

"""``HardCrossEntropyLoss``: a drop-in for ``torch.nn.CrossEntropyLoss``; ``HardLinearCrossEntropyLoss``,
the LM head's loss as a module. Both check their options when built (``options.check_module_options``)."""

from __future__ import annotations

from torch import Tensor, nn

from .functional import cross_entropy
from .linear import linear_cross_entropy
from .options import check_module_options, positional_order

__all__ = ["HardCrossEntropyLoss", "HardLinearCrossEntropyLoss"]

# The options a module's repr shows when they differ from these defaults (k and reduction always).
_DEFAULTS = dict(ignore_index=-100, label_smoothing=0.0, trim=None, softcap=None, z_loss=0.0, return_lse=False,
                 inplace_backward=False, chunk_size="auto", backend="auto")


class _HardLoss(nn.Module):
    """What both modules share: the checked options, the buffers and the repr."""

    def _set_options(self, name, weight, size_average, ignore_index, reduce, reduction, label_smoothing, mixture,
                     trim, softcap, **rest):
        ignore_index, reduction, label_smoothing = positional_order(size_average, ignore_index, reduce, reduction,
                                                                    label_smoothing, name, stacklevel=4)
        checked = check_module_options(weight=weight, ignore_index=ignore_index, reduction=reduction,
                                       label_smoothing=label_smoothing, mixture=mixture, trim=trim, softcap=softcap,
                                       k=rest["k"], z_loss=rest["z_loss"], backend=rest["backend"],
                                       chunk_size=rest.get("chunk_size"))
        self.register_buffer("weight", weight)
        if isinstance(mixture, nn.Parameter):  # learned
            self.mixture = mixture
        else:
            self.register_buffer("mixture", mixture)
        self.k, self.reduction = checked["k"], checked["reduction"]
        self.ignore_index, self.label_smoothing = checked["ignore_index"], checked["label_smoothing"]
        self.z_loss, self.trim, self.softcap = checked["z_loss"], trim, softcap
        for key in rest.keys() - {"k", "z_loss"}:
            setattr(self, key, rest[key])

    def extra_repr(self) -> str:
        parts = [f"k={self.k}", f"reduction={self.reduction!r}"]
        for key, default in _DEFAULTS.items():
            value = getattr(self, key, default)
            if value is not default and value != default:
                parts.append(f"{key}={value!r}")
        for key in ("weight", "mixture"):
            t = getattr(self, key)
            if t is not None:
                learned = ", learned" if isinstance(t, nn.Parameter) else ""
                parts.append(f"{key}=<{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}{learned}>")
        return ", ".join(parts)


class HardCrossEntropyLoss(_HardLoss):
    """``nn.CrossEntropyLoss`` with the arguments of ``hardloss_cuda.cross_entropy``, in
    ``nn.CrossEntropyLoss``'s positional order (its deprecated ``size_average`` and ``reduce``
    included; the library's earlier order, ``(weight, ignore_index, reduction, label_smoothing)``,
    still works with a FutureWarning). Every option is checked when the module is built.

    ``weight`` and a fixed ``mixture`` are buffers (they follow ``.to()``); a mixture given
    as ``nn.Parameter`` is learned. ``trim`` may be a fraction or a ``MiniBatchTrimming``
    schedule, read on every call.
    """

    def __init__(self, weight: Tensor | None = None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0, *, k: float = 1.0,
                 mixture: Tensor | None = None, trim=None, softcap: float | None = None, z_loss: float = 0.0,
                 return_lse: bool = False, inplace_backward: bool = False, backend: str = "auto"):
        super().__init__()
        self._set_options("HardCrossEntropyLoss", weight, size_average, ignore_index, reduce, reduction,
                          label_smoothing, mixture, trim, softcap, k=k, z_loss=z_loss, return_lse=return_lse,
                          inplace_backward=inplace_backward, backend=backend)

    def forward(self, input: Tensor, target: Tensor):
        return cross_entropy(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
                             label_smoothing=self.label_smoothing, k=self.k, mixture=self.mixture, trim=self.trim,
                             softcap=self.softcap, z_loss=self.z_loss, return_lse=self.return_lse,
                             inplace_backward=self.inplace_backward, backend=self.backend)


class HardLinearCrossEntropyLoss(_HardLoss):
    """``loss(input, linear_weight, target, linear_bias=None)``: ``linear_cross_entropy`` as a
    module, for a language-model head whose classifier lives elsewhere (e.g. tied embeddings).
    The arguments are those of ``HardCrossEntropyLoss``, in its order, plus ``chunk_size``.
    (PyTorch's ``nn.LinearCrossEntropyLoss`` is another design: it owns its classifier.)"""

    def __init__(self, weight: Tensor | None = None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0, *, k: float = 1.0,
                 mixture: Tensor | None = None, trim=None, softcap: float | None = None, z_loss: float = 0.0,
                 return_lse: bool = False, chunk_size="auto", backend: str = "auto"):
        super().__init__()
        if isinstance(mixture, Tensor) and mixture.requires_grad:
            raise ValueError("HardLinearCrossEntropyLoss: a learned mixture is not supported (linear_cross_entropy "
                             "computes no gradient for it); use HardCrossEntropyLoss on materialised logits")
        self._set_options("HardLinearCrossEntropyLoss", weight, size_average, ignore_index, reduce, reduction,
                          label_smoothing, mixture, trim, softcap, k=k, z_loss=z_loss, return_lse=return_lse,
                          chunk_size=chunk_size, backend=backend)

    def forward(self, input: Tensor, linear_weight: Tensor, target: Tensor, linear_bias: Tensor | None = None):
        return linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
                                    ignore_index=self.ignore_index, reduction=self.reduction,
                                    label_smoothing=self.label_smoothing, k=self.k, mixture=self.mixture,
                                    trim=self.trim, softcap=self.softcap, z_loss=self.z_loss,
                                    return_lse=self.return_lse, chunk_size=self.chunk_size, backend=self.backend)

"""``HardCrossEntropyLoss``: a drop-in for ``torch.nn.CrossEntropyLoss``."""

from __future__ import annotations

from torch import Tensor, nn

from .functional import cross_entropy
from .linear import linear_cross_entropy
from .options import check_module_options

__all__ = ["HardCrossEntropyLoss", "HardLinearCrossEntropyLoss"]


class HardCrossEntropyLoss(nn.Module):
    """``nn.CrossEntropyLoss`` with the arguments of ``hardloss_cuda.cross_entropy``.

    ``weight`` and a fixed ``mixture`` are buffers (they follow ``.to()``); a mixture given
    as ``nn.Parameter`` is learned. ``trim`` may be a fraction or a ``MiniBatchTrimming``
    schedule, read on every call.
    """

    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, k: float = 1.0, mixture: Tensor | None = None,
                 trim=None, softcap: float | None = None, z_loss: float = 0.0, return_lse: bool = False,
                 inplace_backward: bool = False, backend: str = "auto"):
        super().__init__()
        self.register_buffer("weight", weight)
        if isinstance(mixture, nn.Parameter):
            self.mixture = mixture
        else:
            self.register_buffer("mixture", mixture)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.k, self.z_loss = check_module_options(k, softcap, z_loss)
        self.trim, self.softcap, self.return_lse = trim, softcap, return_lse
        self.inplace_backward, self.backend = inplace_backward, backend

    def forward(self, input: Tensor, target: Tensor):
        return cross_entropy(input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing,
                             k=self.k, mixture=self.mixture, trim=self.trim, softcap=self.softcap,
                             z_loss=self.z_loss, return_lse=self.return_lse,
                             inplace_backward=self.inplace_backward, backend=self.backend)

    def extra_repr(self) -> str:
        return f"k={self.k}, reduction={self.reduction!r}, ignore_index={self.ignore_index}, backend={self.backend!r}"


class HardLinearCrossEntropyLoss(nn.Module):
    """``loss(input, linear_weight, target, linear_bias=None)``: ``linear_cross_entropy`` as a
    module, for a language-model head whose classifier lives elsewhere (e.g. tied embeddings).
    The arguments are those of ``HardCrossEntropyLoss`` plus ``chunk_size``."""

    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, k: float = 1.0, mixture: Tensor | None = None,
                 trim=None, softcap: float | None = None, z_loss: float = 0.0, return_lse: bool = False,
                 chunk_size="auto", backend: str = "auto"):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("mixture", mixture)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.k, self.z_loss = check_module_options(k, softcap, z_loss)
        self.trim, self.softcap, self.return_lse = trim, softcap, return_lse
        self.chunk_size, self.backend = chunk_size, backend

    def forward(self, input: Tensor, linear_weight: Tensor, target: Tensor, linear_bias: Tensor | None = None):
        return linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
                                    ignore_index=self.ignore_index, reduction=self.reduction,
                                    label_smoothing=self.label_smoothing, k=self.k, mixture=self.mixture,
                                    trim=self.trim, softcap=self.softcap, z_loss=self.z_loss,
                                    return_lse=self.return_lse, chunk_size=self.chunk_size, backend=self.backend)

    def extra_repr(self) -> str:
        return f"k={self.k}, reduction={self.reduction!r}, chunk_size={self.chunk_size!r}, backend={self.backend!r}"

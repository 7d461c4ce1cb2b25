"""hardloss_cuda: fused cross-entropy with tunable sensitivity to hard examples.

One op computes the softmax, the loss and the normalised ``|eps|^k`` pseudo-gradient
(Keren et al.), with MCEL soft targets (Negi et al.) and mini-batch trimming (Fassold).
See docs/CONTRACT.md and docs/ROW_MATH.md for the contract.
"""

import torch  # noqa: F401  (loads libc10 before the compiled extension)

from . import mcel, reference, trimming
from .backends import available_backends, build_info, unavailable_reasons
from .functional import cross_entropy
from .linear import linear_cross_entropy
from .mcel import MixedCrossEntropyLoss
from .modules import HardCrossEntropyLoss, HardLinearCrossEntropyLoss
from .trimming import MiniBatchTrimming
from .trimmed_step import TrimmedStep
from .causal_lm import CausalLMLoss, causal_lm_losses

__version__ = "0.1.0"
__all__ = [
    "cross_entropy", "HardCrossEntropyLoss", "linear_cross_entropy", "HardLinearCrossEntropyLoss",
    "MixedCrossEntropyLoss", "MiniBatchTrimming", "TrimmedStep", "CausalLMLoss", "causal_lm_losses",
    "available_backends", "unavailable_reasons", "build_info", "mcel", "trimming", "reference",
]

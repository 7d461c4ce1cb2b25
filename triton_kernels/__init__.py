"""Triton backend of hardloss_cuda: fused loss / pseudo-gradient kernels (docs/ROW_MATH.md).

``fwd`` -> (loss, stats) and ``bwd`` -> grad_loss[:, None] * pseudo-gradient follow the op
contract of hardloss_cuda/_schema.py; hardloss_cuda registers them as
``hardloss_cuda::triton_fwd`` / ``triton_bwd`` (``bwd(..., out=logits)`` works in place).
"""

from .launch import bwd, fwd

__all__ = ["fwd", "bwd"]

"""Triton backend of hardloss_cuda: fused loss / pseudo-gradient kernels (docs/ROW_MATH.md).

``fwd`` -> (loss, stats) and ``bwd`` -> grad_loss[:, None] * pseudo-gradient follow the op
contract of hardloss_cuda/_schema.py; hardloss_cuda registers them as
``hardloss_cuda::triton_fwd`` / ``triton_bwd`` / ``triton_bwd_inplace``. hardloss_cuda imports
this package from beside itself under a private name (``hardloss_cuda._library.triton_launch``),
never as the top-level ``triton_kernels`` that other projects may install too.
"""

from .launch import bwd, bwd_inplace, fwd

__all__ = ["fwd", "bwd", "bwd_inplace"]

"""Triton backend of hardloss_cuda: fused loss + pseudo-gradient kernels (docs/ROW_MATH.md).

``fwd`` / ``fwd_inplace`` follow the op contract of hardloss_cuda/_schema.py; hardloss_cuda
registers ``fwd`` as ``hardloss_cuda::triton_fwd``.
"""

from .launch import fwd, fwd_inplace

__all__ = ["fwd", "fwd_inplace"]

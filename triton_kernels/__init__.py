"""Triton backend of hardloss_cuda: fused loss / pseudo-gradient kernels (docs/ROW_MATH.md).

``launch.fwd`` -> (loss, stats) and ``launch.bwd`` -> grad_loss[:, None] * pseudo-gradient follow the op
contract of hardloss_cuda/_schema.py; hardloss_cuda registers them as ``hardloss_cuda::triton_fwd`` /
``triton_bwd`` / ``triton_bwd_inplace`` / ``triton_shard_stats`` / ``triton_soft_shard_stats`` /
``triton_soft_shard_grad``.

A subpackage of hardloss_cuda (never a top-level ``triton_kernels``, a name other projects install
too). This file imports nothing: triton is optional, and ``hardloss_cuda.triton_kernels.launch``
(which imports it) is imported on first use only (``hardloss_cuda._library.triton_launch``).
"""

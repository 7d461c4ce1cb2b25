// op_schema.h: the argument lists of the ops hardloss_cuda::{fwd, bwd, bwd_inplace,
// shard_stats}, for csrc/ops.cpp and the emulated backend's cuda_emu_* ops
// (csrc/cuda/emu/ops_emu.cpp). hardloss_cuda/_schema.py has the same strings for the Python
// backends; tests/test_ops.py checks that they all agree.
#pragma once

#define HL_FWD_ARGS                                                                           \
  "(Tensor logits, Tensor target, Tensor? weight, Tensor? mixture, "                          \
  "int ignore_index, float label_smoothing, float k, bool compute_grad, float softcap=0.) " \
  "-> (Tensor, Tensor)"
#define HL_BWD_ARGS                                                                        \
  "(Tensor grad_loss, Tensor logits, Tensor target, Tensor? weight, Tensor? mixture, "     \
  "Tensor stats, int ignore_index, float label_smoothing, float k, float softcap=0., "     \
  "Tensor? grad_lse=None) -> Tensor"
#define HL_BWD_INPLACE_ARGS                                                                     \
  "(Tensor grad_loss, Tensor(a!) logits, Tensor target, Tensor? weight, Tensor? mixture, "     \
  "Tensor stats, int ignore_index, float label_smoothing, float k, float softcap=0., "         \
  "Tensor? grad_lse=None) -> ()"
#define HL_SHARD_STATS_ARGS "(Tensor logits, Tensor target, float k, float softcap=0.) -> Tensor"

// op_schema.h: GENERATED from hardloss_cuda/_schema.py by `python scripts/gen_op_schema.py`;
// edit _schema.py and rerun it (tests/test_ops.py fails while this file differs).
// The ops' argument lists, for csrc/ops.cpp and the emulated backend's cuda_emu_* ops
// (csrc/cuda/emu/ops_emu.cpp), the widths of stats and shard_stats and the soft rows' stats
// tags (csrc/row_math.h).
#pragma once

// clang-format off
#define HL_FWD_ARGS "(Tensor logits, Tensor target, Tensor? weight, Tensor? mixture, int ignore_index, float label_smoothing, float k, bool compute_grad, float softcap=0.) -> (Tensor, Tensor)"
#define HL_BWD_ARGS "(Tensor grad_loss, Tensor logits, Tensor target, Tensor? weight, Tensor? mixture, Tensor stats, int ignore_index, float label_smoothing, float k, float softcap=0., Tensor? grad_lse=None) -> Tensor"
#define HL_BWD_INPLACE_ARGS "(Tensor grad_loss, Tensor(a!) logits, Tensor target, Tensor? weight, Tensor? mixture, Tensor stats, int ignore_index, float label_smoothing, float k, float softcap=0., Tensor? grad_lse=None) -> ()"
#define HL_SHARD_STATS_ARGS "(Tensor logits, Tensor target, float k, float softcap=0.) -> Tensor"
#define HL_STATS_COLS 6
#define HL_SHARD_STATS_COLS 3
#define HL_SOFT_SHARD_STATS_ARGS "(Tensor logits, Tensor target, Tensor? weight, Tensor? mixture, Tensor stats, int ignore_index, float label_smoothing, float k, float softcap=0., Tensor(a!)? eps=None, Tensor(b!)? side=None) -> Tensor"
#define HL_SOFT_SHARD_STATS_COLS 7
#define HL_STATS_SOFT_COMPLETE 0
#define HL_STATS_SOFT_DEFERRED 2
#define HL_SOFT_SHARD_GRAD_ARGS "(Tensor grad_loss, Tensor eps, Tensor side, Tensor logits, Tensor stats, Tensor(a!) out, float softcap=0., Tensor? grad_lse=None) -> ()"
// clang-format on

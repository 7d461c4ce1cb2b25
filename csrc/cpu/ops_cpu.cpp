// hardloss_cuda::{fwd, bwd, bwd_inplace, shard_stats, soft_shard_stats,
// soft_shard_grad} for the CPU dispatch key (the schemas are defined in
// csrc/ops.cpp; the kernels are csrc/cpu/fwd.cpp and bwd.cpp).
#include <torch/library.h>

#include "cpu/hardloss_cpu.h"

TORCH_LIBRARY_IMPL(hardloss_cuda, CPU, m) {
  m.impl("fwd", &hl::cpu::fwd);
  m.impl("bwd", &hl::cpu::bwd);
  m.impl("bwd_inplace", &hl::cpu::bwd_inplace);
  m.impl("shard_stats", &hl::cpu::shard_stats);
  m.impl("soft_shard_stats", &hl::cpu::soft_shard_stats);
  m.impl("soft_shard_grad", &hl::cpu::soft_shard_grad);
}

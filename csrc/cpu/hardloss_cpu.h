// CPU kernels of hardloss_cuda::{fwd, bwd, bwd_inplace, shard_stats, soft_shard_stats,
// soft_shard_grad} (csrc/cpu/ops_cpu.cpp registers them; the
// contract is hardloss_cuda/_schema.py).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace hl {
namespace cpu {

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& logits, const at::Tensor& target,
                                       const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& mixture, int64_t ignore_index,
                                       double label_smoothing, double k, bool compute_grad, double softcap);

at::Tensor bwd(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
               const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
               const at::Tensor& stats, int64_t ignore_index, double label_smoothing, double k, double softcap,
               const std::optional<at::Tensor>& grad_lse);

void bwd_inplace(const at::Tensor& grad_loss, at::Tensor& logits, const at::Tensor& target,
                 const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
                 const at::Tensor& stats, int64_t ignore_index, double label_smoothing, double k, double softcap,
               const std::optional<at::Tensor>& grad_lse);

at::Tensor shard_stats(const at::Tensor& logits, const at::Tensor& target, double k, double softcap);

at::Tensor soft_shard_stats(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& mixture, const at::Tensor& stats, int64_t ignore_index,
                            double label_smoothing, double k, double softcap, const std::optional<at::Tensor>& eps,
                            const std::optional<at::Tensor>& side);

void soft_shard_grad(const at::Tensor& grad_loss, const at::Tensor& eps, const at::Tensor& side,
                     const at::Tensor& logits, const at::Tensor& stats, at::Tensor& out, double softcap,
                     const std::optional<at::Tensor>& grad_lse);

}  // namespace cpu
}  // namespace hl

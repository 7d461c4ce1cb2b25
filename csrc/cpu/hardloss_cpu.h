// CPU kernels of hardloss_cuda::{fwd, fwd_inplace, bwd} (csrc/ops.cpp registers them).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace hl {
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd(const at::Tensor& logits, const at::Tensor& target,
                                                   const std::optional<at::Tensor>& weight,
                                                   const std::optional<at::Tensor>& mixture,
                                                   int64_t ignore_index, double label_smoothing,
                                                   double k, bool compute_grad);

std::tuple<at::Tensor, at::Tensor> fwd_inplace(at::Tensor& logits, const at::Tensor& target,
                                               const std::optional<at::Tensor>& weight,
                                               const std::optional<at::Tensor>& mixture,
                                               int64_t ignore_index, double label_smoothing, double k);

at::Tensor bwd(const at::Tensor& grad_loss, const at::Tensor& grad);

}  // namespace cpu
}  // namespace hl

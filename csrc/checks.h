// Argument checks shared by every compiled backend (CPU kernels, CUDA glue).
// Cheap shape / dtype / device checks only: no data-dependent check (label range, finite
// values) and no device synchronisation, so the ops stay capturable in a CUDA graph. The
// Python API checks label values before calling the op; the kernels turn a bad label into a
// NaN row and never read at it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "row_math.h"  // kStatsCols

namespace hl {

void check_fwd_args(const at::Tensor& logits, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
                    double label_smoothing, double k);

// bwd / bwd_inplace: the fwd checks on (logits, target, weight, mixture), plus grad_loss
// (N,) and stats (N, kStatsCols), both in the accumulation dtype, on the logits' device.
void check_bwd_args(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
                    const at::Tensor& stats, double label_smoothing, double k);

}  // namespace hl

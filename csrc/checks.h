// Argument checks shared by every compiled backend (CPU kernels, CUDA glue): a minimal guard of
// memory safety, what the kernels rely on to index and read (dims, shapes, dtypes, devices).
// The user-facing checks, with messages that name the API's arguments (k, label_smoothing,
// label values, mixing weights, ...), are hardloss_cuda/validation.py's, run before any op.
// No data-dependent check and no device synchronisation, so the ops stay capturable in a CUDA
// graph; the kernels turn a bad label into a NaN row and never read at it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "row_math.h"  // kStatsCols

namespace hl {

// The accumulation dtype ("acc") of logits of dtype t: double stays double, every other dtype
// computes in float (hardloss_cuda/_schema.py acc_dtype). loss, stats, weight, mixture and
// grad_loss are in acc.
inline at::ScalarType acc_scalar_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_fwd_args(const at::Tensor& logits, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture);

// bwd / bwd_inplace: the fwd checks on (logits, target, weight, mixture), plus grad_loss
// (N,) and stats (N, kStatsCols), both in the accumulation dtype, on the logits' device.
void check_bwd_args(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
                    const at::Tensor& stats);

// soft_shard_stats: the fwd checks, plus the rows' stats (N, kStatsCols) in acc on the logits' device.
void check_soft_shard_args(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& mixture, const at::Tensor& stats);

// soft_shard_stats' kept pass (_schema.py): eps and side both given or neither, at k != 1,
// contiguous (N, C) in acc and int8 on the logits' device. Returns whether they are given.
bool check_kept_eps(const at::Tensor& logits, const std::optional<at::Tensor>& eps,
                    const std::optional<at::Tensor>& side, double k);

// soft_shard_grad: grad_loss and stats as bwd's (logits' dtype and shape as fwd's), eps and
// side as soft_shard_stats kept them, out contiguous (N, C) in the logits' dtype.
void check_soft_shard_grad_args(const at::Tensor& grad_loss, const at::Tensor& eps, const at::Tensor& side,
                                const at::Tensor& logits, const at::Tensor& stats, const at::Tensor& out);

// softcap: 0 (off), or a normal positive number of the logits' accumulation type (a float
// cap below FLT_MIN would round to 0, "off"; above FLT_MAX to inf). grad_lse: absent, or acc
// of shape (N,) on the logits' device.
void check_softcap(double softcap, at::ScalarType logits_dtype);
void check_grad_lse(const std::optional<at::Tensor>& grad_lse, const at::Tensor& logits);

}  // namespace hl

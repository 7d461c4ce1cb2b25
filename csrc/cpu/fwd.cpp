// hardloss_cuda::fwd / fwd_inplace on the CPU: rows in parallel (at::parallel_for), each row
// by csrc/cpu/rows.h.
//
// The gradient is produced here, in the forward pass, and backward only scales it (bwd.cpp):
// that is the op contract every backend shares, and what inplace_backward needs (the
// gradient written over the logits, no (N, C) buffer). Measured with
// benchmarks/cpu_kernel_variants.py (fp32, k = 0.5, 2 cores, 2026-11-22), fwd + bwd against
// recomputing in backward (upper bound: a second full fwd; lower bound: one fwd with grad):
//   8192 x 1000:  produce 35.5 ms, recompute 27.4 .. 16.0 ms
//   4096 x 32000: produce 574 ms,  recompute 597 .. 379 ms
// so a recompute kernel that keeps the row statistics (m, log sk) from the forward pass and
// fuses the scaling would win by up to 1.5-2x and hold no (N, C) buffer between the passes.
// It needs a new op in the schema (all backends); until then produce-in-forward stays.
// Much of the produce cost at 8192 x 1000 is allocator churn: the same two calls take
// 14.8 ms when the previous outputs are still alive (fresh 32 MB blocks page-fault).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <memory>

#include "checks.h"
#include "cpu/hardloss_cpu.h"
#include "cpu/rows.h"

namespace hl {
namespace cpu {
namespace {

// Rows per parallel task: at least ~16K elements, so small-C batches are not split finer
// than the threads' start-up cost.
int64_t grain(int64_t C) { return std::max<int64_t>(1, 16384 / C); }

template <typename scalar_t>
void fwd_rows(const at::Tensor& z, const at::Tensor& target, const at::Tensor& weight, const at::Tensor& mixture,
              int64_t ignore_index, double label_smoothing, double k_, scalar_t* grad, at::Tensor& loss,
              at::Tensor& lse) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = z.size(0), C = z.size(1);
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  const acc_t* w = weight.defined() ? weight.const_data_ptr<acc_t>() : nullptr;
  const acc_t* W = mixture.defined() ? mixture.const_data_ptr<acc_t>() : nullptr;
  const bool probs = target.is_floating_point();
  const scalar_t* P = probs ? target.const_data_ptr<scalar_t>() : nullptr;
  const int64_t* Y = probs ? nullptr : target.const_data_ptr<int64_t>();
  acc_t* lossp = loss.mutable_data_ptr<acc_t>();
  acc_t* lsep = lse.mutable_data_ptr<acc_t>();
  const acc_t k = static_cast<acc_t>(k_);
  const acc_t one_minus_s = static_cast<acc_t>(1.0 - label_smoothing);
  const acc_t s_over_C = static_cast<acc_t>(label_smoothing / static_cast<double>(C));
  const bool smooth = label_smoothing > 0.0;

  at::parallel_for(0, N, grain(C), [&](int64_t begin, int64_t end) {
    auto scratch = std::make_unique<Scratch<acc_t>>();
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* row = zp + i * C;
      scalar_t* g = grad != nullptr ? grad + i * C : nullptr;
      auto w_j = [&](int64_t j) { return w != nullptr ? w[j] : acc_t(1); };
      if (probs) {
        const scalar_t* Pi = P + i * C;
        auto q = [&](int64_t j) {
          return q_probability(static_cast<acc_t>(Pi[j]), w_j(j), one_minus_s, s_over_C);
        };
        soft_row(row, g, C, k, q, lossp + i, lsep + i);
        continue;
      }
      const int64_t y = Y[i];
      const int status = label_status(y, C, ignore_index);
      if (status != kLabelValid) {
        invalid_row(row, g, C, status == kLabelIgnored, *scratch, lossp + i, lsep + i);
      } else if (W != nullptr) {
        const acc_t* Wy = W + y * C;
        auto q = [&](int64_t j) { return q_mixture(Wy[j], w_j(j)); };
        soft_row(row, g, C, k, q, lossp + i, lsep + i);
      } else if (smooth) {
        auto q = [&](int64_t j) { return q_smoothed(j == y, w_j(j), one_minus_s, s_over_C); };
        soft_row(row, g, C, k, q, lossp + i, lsep + i);
      } else {
        onehot_row(row, g, C, y, w_j(y), k, *scratch, lossp + i, lsep + i);
      }
    }
  });
}

// Runs the kernel with the gradient written to `grad` (nullptr: loss and lse only).
std::tuple<at::Tensor, at::Tensor> run(const at::Tensor& z, const at::Tensor& target,
                                       const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& mixture, int64_t ignore_index,
                                       double label_smoothing, double k, const at::Tensor* grad) {
  const auto acc = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = at::empty({z.size(0)}, z.options().dtype(acc));
  at::Tensor lse = at::empty({z.size(0)}, z.options().dtype(acc));
  const at::Tensor t = target.contiguous();
  const at::Tensor w = weight.has_value() && weight->defined() ? weight->contiguous() : at::Tensor();
  const at::Tensor W = mixture.has_value() && mixture->defined() ? mixture->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "hardloss_cuda_fwd_cpu", [&] {
    scalar_t* g = grad != nullptr ? grad->mutable_data_ptr<scalar_t>() : nullptr;
    fwd_rows<scalar_t>(z, t, w, W, ignore_index, label_smoothing, k, g, loss, lse);
  });
  return {loss, lse};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd(const at::Tensor& logits, const at::Tensor& target,
                                                   const std::optional<at::Tensor>& weight,
                                                   const std::optional<at::Tensor>& mixture,
                                                   int64_t ignore_index, double label_smoothing,
                                                   double k, bool compute_grad) {
  check_fwd_args(logits, target, weight, mixture, label_smoothing, k);
  const at::Tensor z = logits.contiguous();
  at::Tensor grad = compute_grad ? at::empty_like(z) : at::empty({0, z.size(1)}, z.options());
  auto [loss, lse] = run(z, target, weight, mixture, ignore_index, label_smoothing, k,
                         compute_grad ? &grad : nullptr);
  return {loss, grad, lse};
}

std::tuple<at::Tensor, at::Tensor> fwd_inplace(at::Tensor& logits, const at::Tensor& target,
                                               const std::optional<at::Tensor>& weight,
                                               const std::optional<at::Tensor>& mixture,
                                               int64_t ignore_index, double label_smoothing, double k) {
  check_fwd_args(logits, target, weight, mixture, label_smoothing, k);
  TORCH_CHECK(logits.is_contiguous(), "hardloss_cuda: logits: fwd_inplace needs a contiguous tensor");
  return run(logits, target, weight, mixture, ignore_index, label_smoothing, k, &logits);
}

}  // namespace cpu
}  // namespace hl

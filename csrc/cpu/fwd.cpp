// hardloss_cuda::fwd on the CPU: rows in parallel (at::parallel_for), each row by
// csrc/cpu/rows.h. Returns the loss and the numbers per row (row_math.h kStatsCols) that bwd.cpp needs to
// write the gradient in one pass (hardloss_cuda/_schema.py).
//
// Why the gradient is recomputed in backward rather than produced here: measured with
// benchmarks/cpu_kernel_variants.py (fp32, k = 0.5, 2 cores, 2026-11-22), fwd + bwd when the
// forward writes the gradient and backward scales it, against recomputing in backward:
//   8192 x 1000:  produce 35.5 ms, recompute 27.4 .. 16.0 ms
//   4096 x 32000: produce 574 ms,  recompute 597 .. 379 ms
// Producing costs a fourth pass over (N, C) (the scaling) and an (N, C) buffer that lives
// from forward to backward (fresh 32 MB blocks page-fault); recomputing from the kept row
// statistics reads the logits once more and writes the gradient once, with the scaling fused.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <memory>

#include "checks.h"
#include "cpu/hardloss_cpu.h"
#include "cpu/soft_rows.h"

namespace hl {
namespace cpu {
namespace {

template <typename scalar_t>
void fwd_rows(const at::Tensor& z, const at::Tensor& target, const at::Tensor& weight, const at::Tensor& mixture,
              int64_t ignore_index, double label_smoothing, double k_, bool compute_grad, double softcap,
              at::Tensor& loss, at::Tensor& stats) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = z.size(0), C = z.size(1);
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  const RowTargets<scalar_t, acc_t> rt(target, weight, mixture, C, ignore_index, label_smoothing);
  acc_t* lossp = loss.mutable_data_ptr<acc_t>();
  acc_t* statp = stats.mutable_data_ptr<acc_t>();
  const acc_t k = static_cast<acc_t>(k_), cap = static_cast<acc_t>(softcap);

  at::parallel_for(0, N, grain(C), [&](int64_t begin, int64_t end) {
    auto scratch = std::make_unique<Scratch<acc_t>>();
    auto visit = [&](int64_t i, const auto* row) {  // row: the logits, or the capped acc_t row
      acc_t* st = statp + i * kStatsCols;
      rt.visit(
          i, [&](bool ignored) { invalid_row(row, C, ignored, *scratch, lossp + i, st); },
          [&](int64_t y, acc_t w_y) { onehot_row(row, C, y, w_y, k, compute_grad, *scratch, lossp + i, st); },
          [&](const auto& q) { soft_fwd_row(row, C, q, k, compute_grad, *scratch, lossp + i, st); });
    };
    for (int64_t i = begin; i < end; ++i) {
      if (cap != acc_t(0)) visit(i, capped_row(zp + i * C, C, cap, scratch->zc, scratch->x));
      else visit(i, zp + i * C);
    }
  });
}

}  // namespace

// shard_stats: the one-hot statistics of each row before finalize (row_math.h OneHotStats over
// j != target[i], or over the whole row when target[i] is outside [0, C)), soft-capped first.
at::Tensor shard_stats(const at::Tensor& logits, const at::Tensor& target, double k_, double softcap) {
  check_fwd_args(logits, target, std::nullopt, std::nullopt);
  TORCH_CHECK(!target.is_floating_point(), "hardloss_cuda: shard_stats: target must be class indices");
  check_softcap(softcap, logits.scalar_type());
  const at::Tensor z = logits.contiguous(), t = target.contiguous();
  const int64_t N = z.size(0), C = z.size(1);
  at::Tensor out = at::empty({N, kShardStatsCols}, z.options().dtype(acc_scalar_type(z.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "hardloss_cuda_shard_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const int64_t* yp = t.const_data_ptr<int64_t>();
    acc_t* op = out.mutable_data_ptr<acc_t>();
    const acc_t k = static_cast<acc_t>(k_), cap = static_cast<acc_t>(softcap);
    at::parallel_for(0, N, grain(C), [&](int64_t begin, int64_t end) {
      auto scratch = std::make_unique<Scratch<acc_t>>();
      for (int64_t i = begin; i < end; ++i) {
        const int64_t skip = yp[i] >= 0 && yp[i] < C ? yp[i] : -1;
        const OneHotStats<acc_t> st =
            cap != acc_t(0) ? row_stats(capped_row(zp + i * C, C, cap, scratch->zc, scratch->x), C, skip, k, *scratch)
                            : row_stats(zp + i * C, C, skip, k, *scratch);
        op[i * kShardStatsCols] = st.m;
        op[i * kShardStatsCols + 1] = st.s1;
        op[i * kShardStatsCols + 2] = st.sk;
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& logits, const at::Tensor& target,
                                       const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& mixture, int64_t ignore_index,
                                       double label_smoothing, double k, bool compute_grad, double softcap) {
  check_fwd_args(logits, target, weight, mixture);
  check_softcap(softcap, logits.scalar_type());
  const at::Tensor z = logits.contiguous();
  const auto acc = acc_scalar_type(z.scalar_type());
  at::Tensor loss = at::empty({z.size(0)}, z.options().dtype(acc));
  at::Tensor stats = at::empty({z.size(0), kStatsCols}, z.options().dtype(acc));
  const at::Tensor t = target.contiguous();
  const at::Tensor w = contiguous_or_undefined(weight), W = contiguous_or_undefined(mixture);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "hardloss_cuda_fwd_cpu", [&] {
    fwd_rows<scalar_t>(z, t, w, W, ignore_index, label_smoothing, k, compute_grad, softcap, loss, stats);
  });
  return {loss, stats};
}

}  // namespace cpu
}  // namespace hl

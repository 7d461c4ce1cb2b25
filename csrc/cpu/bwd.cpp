// hardloss_cuda::bwd / bwd_inplace on the CPU: grad_loss[:, None] times the pseudo-gradient,
// recomputed from the logits and the row statistics that fwd.cpp kept (see there for why):
// one read of each row and one write, the scaling fused in. Rows with a zero incoming
// gradient (trimmed away, or reduction="none" with zeros) are not read at all.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/copy.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <memory>

#include "checks.h"
#include "cpu/hardloss_cpu.h"
#include "cpu/soft_rows.h"

namespace hl {
namespace cpu {
namespace {

template <typename scalar_t>
void bwd_rows(const at::Tensor& grad_loss, const at::Tensor& z, const at::Tensor& target, const at::Tensor& weight,
              const at::Tensor& mixture, const at::Tensor& stats, int64_t ignore_index, double label_smoothing,
              double k_, double softcap, const at::Tensor& grad_lse, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = z.size(0), C = z.size(1);
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  const RowTargets<scalar_t, acc_t> rt(target, weight, mixture, C, ignore_index, label_smoothing);
  const acc_t* gl = grad_loss.const_data_ptr<acc_t>();
  const acc_t* statp = stats.const_data_ptr<acc_t>();
  const acc_t k = static_cast<acc_t>(k_), cap = static_cast<acc_t>(softcap);
  const acc_t* glp = grad_lse.defined() ? grad_lse.const_data_ptr<acc_t>() : nullptr;

  at::parallel_for(0, N, grain(C), [&](int64_t begin, int64_t end) {
    auto scratch = std::make_unique<Scratch<acc_t>>();
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* row = zp + i * C;
      scalar_t* o = out + i * C;
      const acc_t* st = statp + i * kStatsCols;
      const acc_t g = gl[i], g_lse = glp != nullptr ? glp[i] : acc_t(0);
      const bool zero = g_lse == acc_t(0) && grad_row_is_zero(g, st[kColLse], st[kColScale]);
      auto fill = [&](acc_t v) { std::fill(o, o + C, static_cast<scalar_t>(v)); };
      auto path = [&](auto&& run) { grad_row(row, o, C, zero, cap, g_lse, st, *scratch, run); };
      rt.visit(
          i, [&](bool ignored) { fill(ignored ? acc_t(0) : hl_nan<acc_t>()); },
          [&](int64_t y, acc_t w_y) {
            path([&](const auto* r, auto* d) { onehot_grad_row(r, d, C, y, w_y, k, g, st, *scratch); });
          },
          [&](const auto& q) { path([&](const auto* r, auto* d) { soft_bwd_row(r, d, C, k, q, g, st, *scratch); }); });
    }
  });
}

void run(const at::Tensor& grad_loss, const at::Tensor& z, const at::Tensor& target,
         const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture, const at::Tensor& stats,
         int64_t ignore_index, double label_smoothing, double k, double softcap,
         const std::optional<at::Tensor>& grad_lse, at::Tensor& out) {
  const at::Tensor w = contiguous_or_undefined(weight), W = contiguous_or_undefined(mixture);
  const at::Tensor gls = contiguous_or_undefined(grad_lse);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "hardloss_cuda_bwd_cpu", [&] {
    bwd_rows<scalar_t>(grad_loss.contiguous(), z, target.contiguous(), w, W, stats.contiguous(), ignore_index,
                       label_smoothing, k, softcap, gls, out.mutable_data_ptr<scalar_t>());
  });
}

}  // namespace

at::Tensor bwd(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
               const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
               const at::Tensor& stats, int64_t ignore_index, double label_smoothing, double k, double softcap,
               const std::optional<at::Tensor>& grad_lse) {
  check_bwd_args(grad_loss, logits, target, weight, mixture, stats);
  check_softcap(softcap, logits.scalar_type());
  check_grad_lse(grad_lse, logits);
  const at::Tensor z = logits.contiguous();
  at::Tensor out = at::empty_like(z);
  run(grad_loss, z, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap, grad_lse, out);
  return out;
}

void bwd_inplace(const at::Tensor& grad_loss, at::Tensor& logits, const at::Tensor& target,
                 const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
                 const at::Tensor& stats, int64_t ignore_index, double label_smoothing, double k, double softcap,
                 const std::optional<at::Tensor>& grad_lse) {
  check_bwd_args(grad_loss, logits, target, weight, mixture, stats);
  check_softcap(softcap, logits.scalar_type());
  check_grad_lse(grad_lse, logits);
  if (logits.is_contiguous()) return run(grad_loss, logits, target, weight, mixture, stats, ignore_index,
                                         label_smoothing, k, softcap, grad_lse, logits);
  // A strided view: compute into a contiguous buffer and write it back (the Python API never
  // gets here, it passes contiguous logits).
  at::Tensor z = logits.contiguous();
  run(grad_loss, z, target, weight, mixture, stats, ignore_index, label_smoothing, k, softcap, grad_lse, z);
  logits.copy_(z);
}

}  // namespace cpu
}  // namespace hl

// hardloss_cuda::bwd on the CPU: grad_loss[:, None] * grad in grad's dtype (the gradient was
// produced by the forward pass; see fwd.cpp for why).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>

#include "checks.h"
#include "cpu/hardloss_cpu.h"

namespace hl {
namespace cpu {

at::Tensor bwd(const at::Tensor& grad_loss, const at::Tensor& grad) {
  check_bwd_args(grad_loss, grad);
  const at::Tensor g = grad.contiguous();
  at::Tensor out = at::empty_like(g);
  const int64_t N = g.size(0), C = g.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "hardloss_cuda_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor gl = grad_loss.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* s = gl.const_data_ptr<acc_t>();
    const scalar_t* in = g.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1)), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const acc_t si = s[i];
        const scalar_t* __restrict src = in + i * C;
        scalar_t* __restrict dst = o + i * C;
        for (int64_t j = 0; j < C; ++j) dst[j] = static_cast<scalar_t>(si * static_cast<acc_t>(src[j]));
      }
    });
  });
  return out;
}

}  // namespace cpu
}  // namespace hl

// ops_cuda.cpp: the torch glue of the CUDA kernels: hardloss_cuda::{fwd, fwd_inplace, bwd}
// for the CUDA dispatch key (the schemas are defined in csrc/ops.cpp, see _schema.py).
//
// Compiled by the host C++ compiler inside the CUDA extension (setup.py adds csrc/cuda/*.cpp
// and -DHL_WITH_CUDA). Lean includes only: ATen/cuda/CUDAContext.h does not build against the
// slim CUDA kit (BUILD_NOTES.md). The kernels themselves are torch-free (csrc/cuda/*.cu).
//
// Each op: the shared argument checks (csrc/checks.h, no data-dependent check and no device
// sync), a device guard, contiguous inputs, outputs allocated on the current stream's
// allocator, one kernel launch on the current stream. No host synchronisation anywhere, so
// the ops can be captured in a CUDA graph.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "checks.h"
#include "cuda/kernels.cuh"

namespace hl {
namespace cuda {
namespace {

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: break;
  }
  TORCH_CHECK(false, "hardloss_cuda: logits: unsupported dtype ", t,
              " (float32, float64, float16 or bfloat16)");
  return DType::kFloat32;  // not reached
}

at::ScalarType acc_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_on_device(const at::Tensor& t, const at::Tensor& ref, const char* name,
                     const char* ref_name = "logits") {
  TORCH_CHECK(t.device() == ref.device(), "hardloss_cuda: ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device());
}

struct Prepared {
  at::Tensor target, weight, mixture;  // contiguous, on the logits' device, kernel dtypes
};

Prepared prepare(const at::Tensor& logits, const at::Tensor& target,
                 const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
                 double label_smoothing, double k) {
  hl::check_fwd_args(logits, target, weight, mixture, label_smoothing, k);
  TORCH_CHECK(logits.is_cuda(), "hardloss_cuda: logits must be a CUDA tensor for the CUDA kernel");
  TORCH_CHECK(logits.dim() == 2, "hardloss_cuda: logits must be (N, C), got ", logits.sizes());
  const int64_t C = logits.size(1);
  TORCH_CHECK(logits.size(0) == 0 || (C >= 1 && C <= kMaxClasses),
              "hardloss_cuda: logits: the number of classes must be in [1, 2^30], got ", C);
  (void)dtype_of(logits.scalar_type());
  const at::ScalarType acc = acc_of(logits.scalar_type());
  Prepared p;
  check_on_device(target, logits, "target");
  if (target.is_floating_point()) {
    // probability targets: (N, C) in the logits' dtype
    p.target = target.to(logits.scalar_type()).contiguous();
  } else {
    p.target = target.to(at::kLong).contiguous();
  }
  if (weight.has_value() && weight->defined()) {
    check_on_device(*weight, logits, "weight");
    p.weight = weight->to(acc).contiguous();
  }
  if (mixture.has_value() && mixture->defined()) {
    check_on_device(*mixture, logits, "mixture");
    p.mixture = mixture->to(acc).contiguous();
  }
  return p;
}

FwdParams make_params(const at::Tensor& z, void* grad, const Prepared& in, const at::Tensor& loss,
                      const at::Tensor& lse, int64_t ignore_index, double label_smoothing,
                      double k) {
  FwdParams p;
  p.logits = z.data_ptr();
  p.grad = grad;
  const bool probs = in.target.is_floating_point();
  p.target = probs ? nullptr : in.target.data_ptr<int64_t>();
  p.probs = probs ? in.target.data_ptr() : nullptr;
  p.weight = in.weight.defined() ? in.weight.data_ptr() : nullptr;
  p.mixture = in.mixture.defined() ? in.mixture.data_ptr() : nullptr;
  p.loss = loss.data_ptr();
  p.lse = lse.data_ptr();
  p.N = z.size(0);
  p.C = z.size(1);
  p.ignore_index = ignore_index;
  p.label_smoothing = label_smoothing;
  p.k = k;
  return p;
}

void launch(const FwdParams& p, at::ScalarType t) {
  if (p.N == 0) return;  // no zero-size grid
  C10_CUDA_CHECK(launch_fwd(p, dtype_of(t), c10::cuda::getCurrentCUDAStream().stream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd(const at::Tensor& logits, const at::Tensor& target,
                                                   const std::optional<at::Tensor>& weight,
                                                   const std::optional<at::Tensor>& mixture,
                                                   int64_t ignore_index, double label_smoothing,
                                                   double k, bool compute_grad) {
  Prepared in = prepare(logits, target, weight, mixture, label_smoothing, k);
  c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor z = logits.contiguous();
  const int64_t N = z.size(0), C = z.size(1);
  const auto acc = z.options().dtype(acc_of(z.scalar_type()));
  at::Tensor loss = at::empty({N}, acc);
  at::Tensor lse = at::empty({N}, acc);
  at::Tensor grad = at::empty({compute_grad ? N : 0, C}, z.options());
  void* gp = (compute_grad && grad.numel() > 0) ? grad.data_ptr() : nullptr;
  launch(make_params(z, gp, in, loss, lse, ignore_index, label_smoothing, k), z.scalar_type());
  return {loss, grad, lse};
}

// The pseudo-gradient overwrites the logits: every thread reads its part of the row (and the
// label's logit) before any thread of the row writes (csrc/cuda/fwd_kernels.cuh).
std::tuple<at::Tensor, at::Tensor> fwd_inplace(at::Tensor& logits, const at::Tensor& target,
                                               const std::optional<at::Tensor>& weight,
                                               const std::optional<at::Tensor>& mixture,
                                               int64_t ignore_index, double label_smoothing, double k) {
  Prepared in = prepare(logits, target, weight, mixture, label_smoothing, k);
  c10::cuda::CUDAGuard guard(logits.device());
  const bool direct = logits.is_contiguous();
  at::Tensor z = direct ? logits : logits.contiguous();
  const int64_t N = z.size(0);
  const auto acc = z.options().dtype(acc_of(z.scalar_type()));
  at::Tensor loss = at::empty({N}, acc);
  at::Tensor lse = at::empty({N}, acc);
  void* gp = z.numel() > 0 ? z.data_ptr() : nullptr;
  launch(make_params(z, gp, in, loss, lse, ignore_index, label_smoothing, k), z.scalar_type());
  if (!direct) logits.copy_(z);
  return {loss, lse};
}

at::Tensor bwd(const at::Tensor& grad_loss, const at::Tensor& grad) {
  hl::check_bwd_args(grad_loss, grad);
  TORCH_CHECK(grad.is_cuda(), "hardloss_cuda: grad must be a CUDA tensor for the CUDA kernel");
  TORCH_CHECK(grad.dim() == 2, "hardloss_cuda: grad must be (N, C), got ", grad.sizes());
  check_on_device(grad_loss, grad, "grad_loss", "grad");
  c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  const at::Tensor gl = grad_loss.to(acc_of(g.scalar_type())).contiguous();
  at::Tensor out = at::empty(g.sizes(), g.options());
  if (g.numel() == 0) return out;
  BwdParams p;
  p.grad_loss = gl.data_ptr();
  p.grad = g.data_ptr();
  p.out = out.data_ptr();
  p.N = g.size(0);
  p.C = g.size(1);
  TORCH_CHECK(p.C <= kMaxClasses, "hardloss_cuda: grad: more than 2^30 classes");
  C10_CUDA_CHECK(launch_bwd(p, dtype_of(g.scalar_type()), c10::cuda::getCurrentCUDAStream().stream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace hl

TORCH_LIBRARY_IMPL(hardloss_cuda, CUDA, m) {
  m.impl("fwd", &hl::cuda::fwd);
  m.impl("fwd_inplace", &hl::cuda::fwd_inplace);
  m.impl("bwd", &hl::cuda::bwd);
}

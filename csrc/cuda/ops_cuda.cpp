// ops_cuda.cpp: hardloss_cuda::{fwd, bwd, bwd_inplace, shard_stats, soft_shard_stats,
// soft_shard_grad} for the CUDA dispatch key
// (the schemas are defined in csrc/ops.cpp, see _schema.py): the shared glue of glue.h on CUDA
// tensors, on the current device and stream.
//
// Compiled by the host C++ compiler inside the CUDA extension (setup.py adds csrc/cuda/*.cpp
// and -DHL_WITH_CUDA).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/glue.h"

namespace hl {
namespace cuda {
namespace {

struct OnCuda {
  static void check_device(const at::Tensor& logits) {
    TORCH_CHECK(logits.is_cuda(), "hardloss_cuda: logits must be a CUDA tensor for the CUDA kernel");
  }
  using Guard = c10::cuda::CUDAGuard;
  static cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
  static void check(cudaError_t err) {
    C10_CUDA_CHECK(err);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void fresh(at::Tensor&) {}
};

using CudaOps = Ops<OnCuda>;

}  // namespace
}  // namespace cuda
}  // namespace hl

TORCH_LIBRARY_IMPL(hardloss_cuda, CUDA, m) {
  m.impl("fwd", &hl::cuda::CudaOps::fwd);
  m.impl("bwd", &hl::cuda::CudaOps::bwd);
  m.impl("bwd_inplace", &hl::cuda::CudaOps::bwd_inplace);
  m.impl("shard_stats", &hl::cuda::CudaOps::shard_stats);
  m.impl("soft_shard_stats", &hl::cuda::CudaOps::soft_shard_stats);
  m.impl("soft_shard_grad", &hl::cuda::CudaOps::soft_shard_grad);
}

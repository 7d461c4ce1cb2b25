// dispatch.cu: the dtype dispatch of the fwd / bwd / kept_grad launchers (launch.h) and the device
// attribute cache the launchers size their grids with. Torch-free; the kernels themselves are
// in fwd_kernels.cuh / bwd_kernels.cuh, instantiated per dtype in fwd_*.cu / bwd_*.cu.
#include <algorithm>
#include <atomic>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/launch.h"

namespace hl {
namespace cuda {

cudaError_t device_info(DeviceInfo* out) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> sms[kMaxDevices];
  static std::atomic<int> smem[kMaxDevices];
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  out->device = dev;
  if (dev < kMaxDevices && sms[dev].load(std::memory_order_relaxed) > 0) {
    out->sms = sms[dev].load(std::memory_order_relaxed);
    out->smem_optin = smem[dev].load(std::memory_order_relaxed);
    return cudaSuccess;
  }
  int n = 0, s = 0;
  err = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&s, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err != cudaSuccess) return err;
  out->sms = std::max(n, 1);
  out->smem_optin = s;
  if (dev < kMaxDevices) {
    smem[dev].store(s, std::memory_order_relaxed);
    sms[dev].store(out->sms, std::memory_order_relaxed);
  }
  return cudaSuccess;
}

cudaError_t launch_fwd(const FwdParams& p, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return launch_fwd_typed<float>(p, stream);
    case DType::kFloat64: return launch_fwd_typed<double>(p, stream);
    case DType::kFloat16: return launch_fwd_typed<__half>(p, stream);
    case DType::kBFloat16: return launch_fwd_typed<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_bwd(const BwdParams& p, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return launch_bwd_typed<float>(p, stream);
    case DType::kFloat64: return launch_bwd_typed<double>(p, stream);
    case DType::kFloat16: return launch_bwd_typed<__half>(p, stream);
    case DType::kBFloat16: return launch_bwd_typed<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_kept_grad(const KeptGradParams& p, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return launch_kept_grad_typed<float>(p, stream);
    case DType::kFloat64: return launch_kept_grad_typed<double>(p, stream);
    case DType::kFloat16: return launch_kept_grad_typed<__half>(p, stream);
    case DType::kBFloat16: return launch_kept_grad_typed<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace hl

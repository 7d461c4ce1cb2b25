// bwd.cu: hardloss_cuda::bwd (out = grad_loss[:, None] * grad, in grad's dtype), the device
// attribute cache, and the dtype dispatch of both launchers. Torch-free.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

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

// TPR threads per row; thread `lane` scales the vectors lane, lane + TPR, ... of its row
// (16-byte, coalesced; scalar element loads when the rows are not 16-byte aligned).
template <typename S, int BLOCK, int TPR>
__global__ void __launch_bounds__(BLOCK)
    bwd_kernel(const acc_type<S>* __restrict__ grad_loss, const S* __restrict__ grad,
               S* __restrict__ out, int64_t N, int C, bool aligned) {
  using A = acc_type<S>;
  constexpr int VEC = Pack<S>::kN;
  constexpr int RPB = BLOCK / TPR;
  const int lane = static_cast<int>(threadIdx.x) % TPR;
  const int grp = static_cast<int>(threadIdx.x) / TPR;
  const int nvec = (C + VEC - 1) / VEC;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * RPB + grp; row < N;
       row += static_cast<int64_t>(gridDim.x) * RPB) {
    const A g = ldg(grad_loss + row);
    const S* in = grad + row * C;
    S* o = out + row * C;
#pragma unroll 4
    for (int v = lane; v < nvec; v += TPR) {
      A x[VEC];
      unpack(load_pack(in, v, C, aligned), x);
#pragma unroll
      for (int e = 0; e < VEC; ++e) x[e] = g * x[e];
      store_pack(o, v, C, aligned, x);
    }
  }
}

template <typename S, int BLOCK, int TPR>
cudaError_t launch_bwd_cfg(const BwdParams& p, bool aligned, int sms, cudaStream_t stream) {
  constexpr int RPB = BLOCK / TPR;
  const int64_t groups = (p.N + RPB - 1) / RPB;
  const int64_t cap = static_cast<int64_t>(sms) * (2048 / BLOCK) * 8;
  const unsigned grid = static_cast<unsigned>(std::min(groups, cap));
  bwd_kernel<S, BLOCK, TPR><<<grid, BLOCK, 0, stream>>>(
      static_cast<const acc_type<S>*>(p.grad_loss), static_cast<const S*>(p.grad),
      static_cast<S*>(p.out), p.N, static_cast<int>(p.C), aligned);
  return cudaGetLastError();
}

template <typename S>
cudaError_t launch_bwd_typed(const BwdParams& p, cudaStream_t stream) {
  if (p.N <= 0 || p.C <= 0) return cudaSuccess;
  if (p.C > kMaxClasses) return cudaErrorInvalidValue;
  DeviceInfo d;
  cudaError_t err = device_info(&d);
  if (err != cudaSuccess) return err;
  constexpr int VEC = Pack<S>::kN;
  const bool aligned = p.C % VEC == 0 && reinterpret_cast<uintptr_t>(p.grad) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(p.out) % 16 == 0;
  const int64_t nvec = (p.C + VEC - 1) / VEC;
  // Few vectors per row: 8 threads per row (16 rows per 128-thread block); up to 32 vectors
  // per lane: a warp per row; longer rows: a 512-thread block per row.
  if (nvec <= 8) return launch_bwd_cfg<S, 128, 8>(p, aligned, d.sms, stream);
  if (nvec <= 32 * 32) return launch_bwd_cfg<S, 256, 32>(p, aligned, d.sms, stream);
  return launch_bwd_cfg<S, 512, 512>(p, aligned, d.sms, stream);
}

template cudaError_t launch_bwd_typed<float>(const BwdParams&, cudaStream_t);
template cudaError_t launch_bwd_typed<double>(const BwdParams&, cudaStream_t);
template cudaError_t launch_bwd_typed<__half>(const BwdParams&, cudaStream_t);
template cudaError_t launch_bwd_typed<__nv_bfloat16>(const BwdParams&, cudaStream_t);

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

}  // namespace cuda
}  // namespace hl

// fwd_launch.cuh: the launcher of the forward kernels (fwd_kernels.cuh): the path by row
// length, grid sizes, and the shared-memory row cache of the streaming soft rows. Instantiated
// once per dtype in csrc/cuda/fwd_{f32,f64,f16,bf16}.cu so the four compile in parallel.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/fwd_kernels.cuh"
#include "cuda/launch.h"

namespace hl {
namespace cuda {

template <typename S, int BLOCK, int TPR, int NV, bool SOFT, bool KEPT>
cudaError_t launch_reg(const FwdArgs<S>& a, const DeviceInfo& d, cudaStream_t stream) {
  constexpr int RPB = BLOCK / TPR;
  const int64_t groups = (a.N + RPB - 1) / RPB;
  // A few waves of resident blocks; the blocks stride over the remaining row groups.
  const int64_t cap = static_cast<int64_t>(d.sms) * (2048 / BLOCK) * 4;
  const unsigned grid = static_cast<unsigned>(std::min(groups, cap));
  if (!SOFT && a.k_is_one) {
    return launch_kernel<fwd_reg_kernel<S, BLOCK, TPR, NV, SOFT, !SOFT, KEPT>>(grid, BLOCK, 0, stream, a);
  }
  return launch_kernel<fwd_reg_kernel<S, BLOCK, TPR, NV, SOFT, false, KEPT>>(grid, BLOCK, 0, stream, a);
}

template <typename S, bool SOFT, bool KEPT>
cudaError_t launch_stream(FwdArgs<S> a, const DeviceInfo& d, cudaStream_t stream) {
  constexpr int BLOCK = 1024;
  // 16 fp32 values (4 fp32 / 2 fp16 vectors) per thread and step; 8 fp64 values.
  constexpr int U = sizeof(acc_type<S>) == 8 ? 4 : 16 / Pack<S>::kN;
  constexpr auto kernel = fwd_stream_kernel<S, BLOCK, U, SOFT, KEPT>;
  // All of the kernel's shared memory is dynamic (fwd_stream_kernel): the reduction scratch,
  // then for soft rows the row cache, as much of the row as the opt-in maximum leaves room for.
  constexpr int kScratch = static_cast<int>(sizeof(ReduceSmem<acc_type<S>>));
  a.ncache = 0;
  size_t smem = kScratch;
  if constexpr (SOFT) {
    // Only the soft rows read the row twice: they alone get the shared-memory row cache.
    constexpr int kMaxDevices = 64;
    static std::atomic<bool> opted_in[kMaxDevices];  // the kernel's limit is raised on that device
    if (d.device >= kMaxDevices || !opted_in[d.device].load(std::memory_order_relaxed)) {
      const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, d.smem_optin);
      if (err != cudaSuccess) return err;
      if (d.device < kMaxDevices) opted_in[d.device].store(true, std::memory_order_relaxed);
    }
    const int nvec = (a.C + Pack<S>::kN - 1) / Pack<S>::kN;
    // soft_shard_stats reads the row once (no pass A): no cache
    a.ncache = a.row_stats != nullptr ? 0 : std::min(nvec, std::max(0, (d.smem_optin - kScratch) / 16));
    smem += static_cast<size_t>(a.ncache) * 16;
  }
  int per_sm = 1;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, BLOCK, smem) != cudaSuccess ||
      per_sm < 1) {
    (void)cudaGetLastError();
    per_sm = 1;
  }
  // Resident blocks only: the rows in flight (and the soft rows' re-read from L2) stay bounded.
  const unsigned grid =
      static_cast<unsigned>(std::min<int64_t>(a.N, static_cast<int64_t>(d.sms) * per_sm));
  return launch_kernel<kernel>(grid, BLOCK, smem, stream, a);
}

// Path by row length (see the top of this file). KEPT: soft_shard_stats' kept pass (FwdArgs::kla).
template <typename S, bool SOFT, bool KEPT>
cudaError_t launch_fwd_path(const FwdArgs<S>& a, const DeviceInfo& d, cudaStream_t stream) {
  using A = acc_type<S>;
  constexpr int VEC = Pack<S>::kN;
  // Vectors per thread in the register path: 32 fp32 values (8 fp32 / 4 fp16 vectors) or
  // 8 fp64 values (4 vectors); fp64 blocks stop at 512 threads (see kRegMinBlocks).
  constexpr bool kF64 = sizeof(A) == 8;
  constexpr int NVMAX = kF64 ? 4 : 32 / VEC;
  const int64_t nvec = (a.C + VEC - 1) / VEC;
  if (nvec <= 4) return launch_reg<S, 128, 4, 1, SOFT, KEPT>(a, d, stream);
  if (nvec <= 8) return launch_reg<S, 128, 8, 1, SOFT, KEPT>(a, d, stream);
  if (nvec <= 16) return launch_reg<S, 128, 16, 1, SOFT, KEPT>(a, d, stream);
  if (nvec <= 32) return launch_reg<S, 128, 32, 1, SOFT, KEPT>(a, d, stream);
  if (nvec <= 64) return launch_reg<S, 128, 32, 2, SOFT, KEPT>(a, d, stream);
  if (nvec <= 128) return launch_reg<S, 128, 32, 4, SOFT, KEPT>(a, d, stream);
  if constexpr (NVMAX >= 8) {
    if (nvec <= 256) return launch_reg<S, 128, 32, 8, SOFT, KEPT>(a, d, stream);
  }
  if (nvec <= 128 * NVMAX) return launch_reg<S, 128, 128, NVMAX, SOFT, KEPT>(a, d, stream);
  if (nvec <= 256 * NVMAX) return launch_reg<S, 256, 256, NVMAX, SOFT, KEPT>(a, d, stream);
  if (nvec <= 512 * NVMAX) return launch_reg<S, 512, 512, NVMAX, SOFT, KEPT>(a, d, stream);
  if constexpr (!kF64) {
    if (nvec <= 1024 * NVMAX) return launch_reg<S, 1024, 1024, NVMAX, SOFT, KEPT>(a, d, stream);
  }
  return launch_stream<S, SOFT, KEPT>(a, d, stream);
}

template <typename S>
cudaError_t launch_fwd_typed(const FwdParams& p, cudaStream_t stream) {
  using A = acc_type<S>;
  DeviceInfo d;
  bool go = false;
  const cudaError_t err = launch_begin(p.N, p.C, &d, &go);
  if (!go) return err;

  FwdArgs<S> a;
  a.logits = static_cast<const S*>(p.logits);
  a.tg = make_target_args<S>(p.tg, p.C);
  a.loss = static_cast<A*>(p.loss);
  a.stats = static_cast<A*>(p.stats);
  a.N = p.N;
  a.C = static_cast<int>(p.C);
  a.ncache = 0;
  a.k = static_cast<A>(p.k);
  a.cap = static_cast<A>(p.softcap);
  a.k_is_one = p.k == 1.0;
  a.compute_grad = p.compute_grad;
  a.raw_stats = p.raw_stats;
  a.row_stats = static_cast<const A*>(p.row_stats);
  a.kla = static_cast<A*>(p.kept_eps);
  a.side = p.kept_side;
  a.aligned = p.C % Pack<S>::kN == 0 && reinterpret_cast<uintptr_t>(p.logits) % 16 == 0;
  if (a.kla != nullptr) return launch_fwd_path<S, true, true>(a, d, stream);  // soft_shard_stats' kept pass
  return is_soft(p.tg) || p.row_stats != nullptr ? launch_fwd_path<S, true, false>(a, d, stream)
                                                 : launch_fwd_path<S, false, false>(a, d, stream);
}

}  // namespace cuda
}  // namespace hl

// device.cuh: what the kernels and launchers use of CUDA, in one place. Compiled by nvcc it is
// the CUDA runtime; compiled for the host with HL_CUDA_EMU (the cuda_emu backend,
// docs/CUDA_EMU.md) it is the emulator of csrc/cuda/emu/, and the same kernel source runs on
// the CPU. Either way fp16 / bf16 are cuda_fp16.h / cuda_bf16.h (their conversions have host
// paths).
//
// Two things the kernels write through macros, because the emulator cannot take them from the
// device syntax:
//   HL_SHARED(T, name);          static shared memory      (__shared__ T name;), T a type name
//                                (an alias for arrays: using Row = float[128];)
//   HL_SHARED_DYNAMIC(T, name);  dynamic shared memory     (extern __shared__ T name[];)
// and every launch goes through launch_kernel<kernel>(grid, block, smem, stream, args...), which
// is kernel<<<grid, block, smem, stream>>>(args...) on the device and runs the grid in the
// emulator.
#pragma once

#ifdef HL_CUDA_EMU
#include "cuda/emu/emu.h"
#else
#include <cuda_runtime.h>
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#ifdef HL_CUDA_EMU
// One allocation per block for each declaration (its tag tells them apart), poisoned and
// bounds-checked by the emulator.
#define HL_SHARED(T, name)                \
  static char hl_shared_site_##name = 0; \
  T& name = *static_cast<T*>(::hl::emu::static_shared(&hl_shared_site_##name, sizeof(T), #name))
#define HL_SHARED_DYNAMIC(T, name) T* const name = static_cast<T*>(::hl::emu::dynamic_shared())
#else
#define HL_SHARED(T, name) __shared__ T name
#define HL_SHARED_DYNAMIC(T, name) extern __shared__ T name[]
#endif

namespace hl {
namespace cuda {

// Launches Kernel over grid x block threads with `smem` bytes of dynamic shared memory on
// `stream`; returns the launch's error (cudaGetLastError), as the launchers report it.
template <auto Kernel, typename... Args>
inline cudaError_t launch_kernel(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args... args) {
#ifdef HL_CUDA_EMU
  (void)stream;  // the emulator runs the grid before returning
  return ::hl::emu::launch<Kernel>(grid, block, smem, args...);
#else
  Kernel<<<grid, block, smem, stream>>>(args...);
  return cudaGetLastError();
#endif
}

}  // namespace cuda
}  // namespace hl

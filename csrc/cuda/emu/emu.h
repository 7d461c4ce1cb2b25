// emu.h: the emulated device as the kernels see it. In an HL_CUDA_EMU build (the cuda_emu
// backend, the emulator's CTests) csrc/cuda/device.cuh includes this header instead of
// <cuda_runtime.h>, and the kernels of csrc/cuda/*.cuh compile for the host unchanged:
//
// - threadIdx, blockIdx, blockDim, gridDim: those of the emulated thread that runs;
// - __syncthreads(): a real barrier over the block's threads (cooperative user-space threads,
//   emu/fiber.h), and __shfl_xor_sync(): an exchange among the lanes of a warp that all call it;
//   a thread that misses a barrier, or a mask that does not name exactly the lanes calling,
//   aborts with a message naming the kernel (emu/grid.cpp);
// - shared memory per block through HL_SHARED / HL_SHARED_DYNAMIC (device.cuh), poisoned and
//   bounds-checked;
// - __ldg / __stcs: plain loads and stores; half / bf16 come from cuda_fp16.h / cuda_bf16.h,
//   whose conversions have host paths;
// - the runtime API the launchers call (cudaGetDevice, cudaDeviceGetAttribute,
//   cudaFuncSetAttribute, occupancy, cudaGetLastError) answers from an emulated device profile
//   (emu/runtime_api.cpp). The declarations and types are CUDA's own host header.
//
// docs/CUDA_EMU.md says what is modelled and what is not.
#pragma once

#include <cuda_runtime_api.h>  // host header: cudaError_t, cudaStream_t, dim3, uint3, uint4, the C API

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

// host_defines.h (through cuda_runtime_api.h) already turns __global__, __device__, __host__
// into nothing and __forceinline__ into always_inline for a host compiler.
#define __launch_bounds__(...)

namespace hl {
namespace emu {

// The built-in variables of the emulated thread that runs (functions, not extern thread_local
// objects: GCC's UBSan takes those for null pointers under -O2).
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();

// One launch: the kernel (address and printable name), the configuration, and the body every
// emulated thread runs: the kernel called with the launch's arguments.
struct Launch {
  const void* kernel;
  const char* name;
  dim3 grid;
  dim3 block;
  size_t smem;
  void (*body)(const void* ctx);
  const void* ctx;
};

// Runs the whole grid before returning (emu/grid.cpp). A configuration the device would refuse
// returns its error; a kernel that breaks the execution model aborts the process.
cudaError_t launch_grid(const Launch& launch);

// The device intrinsics' emulation (emu/grid.cpp); `bits` holds the lane's value.
void syncthreads(const char* file, int line);
uint64_t shfl_xor(unsigned mask, uint64_t bits, int bytes, int lane_mask, int width);
void* static_shared(const void* site, size_t bytes, const char* name);
void* dynamic_shared();

// "... [with auto Kernel = hl::cuda::fwd_reg_kernel<float, 128, 4, 1, false, true, false>]": the
// kernel's name with its template arguments, for the emulator's messages and launch log.
template <auto Kernel>
const char* pretty_name() {
  return __PRETTY_FUNCTION__;
}

template <auto Kernel, typename... Args>
cudaError_t launch(dim3 grid, dim3 block, size_t smem, Args... args) {
  auto call = [&] { Kernel(args...); };  // each thread's call copies the arguments, as the device does
  using Call = decltype(call);
  return launch_grid({reinterpret_cast<const void*>(Kernel), pretty_name<Kernel>(), grid, block, smem,
                      [](const void* c) { (*static_cast<const Call*>(c))(); }, &call});
}

}  // namespace emu
}  // namespace hl

#define threadIdx (::hl::emu::thread_idx())
#define blockIdx (::hl::emu::block_idx())
#define blockDim (::hl::emu::block_dim())
#define gridDim (::hl::emu::grid_dim())
#define __syncthreads() ::hl::emu::syncthreads(__FILE__, __LINE__)

// The device has overloads for the arithmetic types (and half / bf16, not used here).
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  static_assert(std::is_arithmetic<T>::value && sizeof(T) <= 8, "__shfl_xor_sync: arithmetic types only");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = ::hl::emu::shfl_xor(mask, bits, static_cast<int>(sizeof(T)), lane_mask, width);
  std::memcpy(&var, &bits, sizeof(T));
  return var;
}

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

template <typename T>
inline void __stcs(T* p, T v) {
  *p = v;
}

// The C++ forms of two runtime calls, as <cuda_runtime.h> declares them for the device build.
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

template <class T>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, T kernel, int block_size,
                                                                 size_t smem) {
  return ::cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(blocks, reinterpret_cast<const void*>(kernel),
                                                                  block_size, smem, cudaOccupancyDefault);
}

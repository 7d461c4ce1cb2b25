// runtime.h: the emulator's own interface, torch-free: the emulated device profiles, the
// per-kernel attributes the launchers set, the seed of the block and thread orders, and a log
// of launches (what tests assert the launch paths with). Used by emu/grid.cpp,
// emu/runtime_api.cpp, the Python controls in emu/ops_emu.cpp and the CTests in csrc/tests/.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace hl {
namespace emu {

// An emulated device: what the launchers size their grids with. Profile i is device i
// (cudaSetDevice / cudaGetDevice), so the launchers' per-device caches keep working.
struct Profile {
  const char* name;
  int sms;
  int smem_per_block;           // without opt-in: also a kernel's default dynamic limit
  int smem_optin;               // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int smem_per_sm;
  int smem_reserved_per_block;  // what the driver keeps per resident block
  int threads_per_sm;
  int blocks_per_sm;
};

// 0 "h100": an H100 SXM's figures (132 SMs, 227 KB opt-in shared memory per block).
// 1 "small": 2 SMs and 16 KB: the streaming kernels' partial row cache and the grid-stride
//   loops of every kernel run at small C and N.
int profile_count();
const Profile& profile(int device);
int find_profile(const char* name);  // -1: none
int current_device();
bool set_device(int device);  // false: no such profile

// Function attributes, per (device, kernel), as the device keeps them: the dynamic shared
// memory limit (cudaFuncSetAttribute) and the static shared memory the kernel declared, known
// from its first launch on.
struct KernelAttrs {
  int max_dynamic_smem;
  size_t static_smem;
};
KernelAttrs kernel_attrs(int device, const void* kernel);
void set_max_dynamic_smem(int device, const void* kernel, int bytes);
void note_static_smem(int device, const void* kernel, size_t bytes);

// Blocks run in an order shuffled per launch, threads resume in an order shuffled per round:
// both from (seed, launch number). The seed comes from HARDLOSS_CUDA_EMU_SEED when set, else it
// is random; set_seed also restarts the launch numbers. Error messages print both.
void set_seed(uint64_t seed);
uint64_t seed();
uint64_t next_launch_seed(uint64_t* launch_number);

// The launch log (off by default): every launch's kernel, configuration and device.
struct LaunchRecord {
  std::string kernel;
  dim3 grid;
  dim3 block;
  size_t smem;
  int device;
};
void log_launches(bool on);  // also clears the log
void record_launch(const LaunchRecord& r);
std::vector<LaunchRecord> take_launches();

// "hl::cuda::fwd_reg_kernel<float, 128, 4, 1, false, true, false>" from emu::pretty_name's text.
std::string kernel_name(const char* pretty);

void set_last_error(cudaError_t e);

}  // namespace emu
}  // namespace hl

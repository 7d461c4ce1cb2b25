// runtime_api.cpp: the emulated device profiles and the CUDA runtime calls the launchers make
// (declared by CUDA's own cuda_runtime_api.h; defined here for the host, hidden inside the
// library that holds the emulator). A query the emulator does not model returns
// cudaErrorInvalidValue, so a launcher that starts using it fails loudly in the tests.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <utility>

#include "cuda/emu/runtime.h"

namespace hl {
namespace emu {
namespace {

// H100 SXM: 132 SMs, 228 KB of shared memory per SM of which a block may opt in to 227 KB
// (1 KB per block is the driver's), 48 KB without opt-in, 2048 threads and 32 blocks per SM.
const Profile kProfiles[] = {
    {"h100", 132, 48 * 1024, 227 * 1024, 228 * 1024, 1024, 2048, 32},
    {"small", 2, 16 * 1024, 16 * 1024, 2 * 17 * 1024, 1024, 2048, 32},
};
constexpr int kProfileCount = static_cast<int>(sizeof(kProfiles) / sizeof(kProfiles[0]));

std::atomic<int> g_device{0};
thread_local cudaError_t t_last_error = cudaSuccess;

std::mutex g_mu;  // guards everything below
std::map<std::pair<int, const void*>, KernelAttrs> g_attrs;
bool g_logging = false;
std::vector<LaunchRecord> g_log;

uint64_t initial_seed() {
  if (const char* s = std::getenv("HARDLOSS_CUDA_EMU_SEED")) return std::strtoull(s, nullptr, 0);
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}
std::atomic<uint64_t> g_seed{initial_seed()};
std::atomic<uint64_t> g_launches{0};

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

KernelAttrs& attrs_locked(int device, const void* kernel) {
  auto it = g_attrs.find({device, kernel});
  if (it == g_attrs.end()) {
    it = g_attrs.emplace(std::make_pair(device, kernel), KernelAttrs{profile(device).smem_per_block, 0}).first;
  }
  return it->second;
}

}  // namespace

int profile_count() { return kProfileCount; }
const Profile& profile(int device) { return kProfiles[device]; }

int find_profile(const char* name) {
  for (int i = 0; i < kProfileCount; ++i) {
    if (std::string(kProfiles[i].name) == name) return i;
  }
  return -1;
}

int current_device() { return g_device.load(); }

bool set_device(int device) {
  if (device < 0 || device >= kProfileCount) return false;
  g_device.store(device);
  return true;
}

KernelAttrs kernel_attrs(int device, const void* kernel) {
  std::lock_guard<std::mutex> lock(g_mu);
  return attrs_locked(device, kernel);
}

void set_max_dynamic_smem(int device, const void* kernel, int bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  attrs_locked(device, kernel).max_dynamic_smem = bytes;
}

void note_static_smem(int device, const void* kernel, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  KernelAttrs& a = attrs_locked(device, kernel);
  a.static_smem = std::max(a.static_smem, bytes);
}

void set_seed(uint64_t s) {
  g_seed.store(s);
  g_launches.store(0);
}

uint64_t seed() { return g_seed.load(); }

uint64_t next_launch_seed(uint64_t* launch_number) {
  *launch_number = g_launches.fetch_add(1);
  return splitmix64(g_seed.load() ^ splitmix64(*launch_number));
}

void log_launches(bool on) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_logging = on;
  g_log.clear();
}

void record_launch(const LaunchRecord& r) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_logging) g_log.push_back(r);
}

std::vector<LaunchRecord> take_launches() {
  std::lock_guard<std::mutex> lock(g_mu);
  std::vector<LaunchRecord> out;
  out.swap(g_log);
  return out;
}

std::string kernel_name(const char* pretty) {
  std::string s(pretty);
  size_t a = s.find("Kernel = ");
  if (a == std::string::npos) return s;
  a += 9;
  if (a < s.size() && s[a] == '&') ++a;  // clang prints the address-of
  const size_t b = s.rfind(']');
  return s.substr(a, b == std::string::npos || b < a ? std::string::npos : b - a);
}

void set_last_error(cudaError_t e) { t_last_error = e; }

}  // namespace emu
}  // namespace hl

using hl::emu::profile;

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = hl::emu::t_last_error;
  hl::emu::t_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return hl::emu::t_last_error; }

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument (cuda_emu)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (cuda_emu)";
    case cudaErrorInvalidDevice: return "invalid device ordinal (cuda_emu)";
    default: return "unknown error (cuda_emu)";
  }
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = hl::emu::profile_count();
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = hl::emu::current_device();
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return hl::emu::set_device(device) ? cudaSuccess : cudaErrorInvalidDevice;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= hl::emu::profile_count()) return cudaErrorInvalidDevice;
  const hl::emu::Profile& p = profile(device);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = p.sms; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = p.smem_per_block; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = p.smem_optin; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = p.smem_per_sm; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = p.threads_per_sm; return cudaSuccess;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *value = p.blocks_per_sm; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

// As the device: the dynamic limit may not exceed the opt-in maximum less the kernel's static
// shared memory.
cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value) {
  const int dev = hl::emu::current_device();
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  const size_t stat = hl::emu::kernel_attrs(dev, kernel).static_smem;
  if (value < 0 || static_cast<size_t>(value) + stat > static_cast<size_t>(profile(dev).smem_optin))
    return cudaErrorInvalidValue;
  hl::emu::set_max_dynamic_smem(dev, kernel, value);
  return cudaSuccess;
}

// Resident blocks per SM by threads, blocks and shared memory. Registers are not modelled.
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* blocks, const void* kernel, int block_size,
                                                                   size_t smem, unsigned int /*flags*/) {
  const int dev = hl::emu::current_device();
  const hl::emu::Profile& p = profile(dev);
  if (block_size <= 0 || block_size > 1024) return cudaErrorInvalidValue;
  const int warps = (block_size + 31) / 32;
  int n = std::min(p.threads_per_sm / (warps * 32), p.blocks_per_sm);
  const size_t per_block = hl::emu::kernel_attrs(dev, kernel).static_smem + smem + p.smem_reserved_per_block;
  n = std::min<int>(n, static_cast<int>(static_cast<size_t>(p.smem_per_sm) / per_block));
  *blocks = n;
  return cudaSuccess;
}

}  // extern "C"

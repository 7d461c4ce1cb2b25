// Planted bugs: `test_emu_planted_bugs <bug>` runs a tiny kernel with that bug in a child
// process and asserts the emulator's report (kExpected): a message naming the kernel and what
// went wrong, then SIGABRT; or, for out-of-bounds memory in the sanitizer build
// (HL_SANITIZE), the report of AddressSanitizer (or of UBSan's array-index check) and exit
// code 1. `test_emu_planted_bugs clean` runs the same kernels without their bugs and must pass
// everywhere. CTest runs one test per bug (CMakeLists.txt).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/device.cuh"
#include "cuda/emu/fiber.h"  // HL_EMU_ASAN

namespace {

using hl::cuda::launch_kernel;

// A block-wide sum: per warp by shuffles, then across warps through shared memory.
// bug: "divergent_barrier" (only the first half of the block reaches the barrier),
//      "barrier_sites" (odd and even threads wait at different __syncthreads).
__global__ void planted_block_sum(const float* in, float* out, int bug) {
  using Part = float[32];  // HL_SHARED takes a type name
  HL_SHARED(Part, part);
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  if (bug == 1) {
    if (threadIdx.x < blockDim.x / 2) __syncthreads();
  } else if (bug == 2) {
    if (threadIdx.x % 2) {
      __syncthreads();
    } else {
      __syncthreads();
    }
  } else {
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    float s = 0;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) s += part[w];
    out[blockIdx.x] = s;
  }
}

// A warp sum over shuffles.
// bug: "mask_leaves_caller_out" (lanes 16-31 call with the mask of lanes 0-15),
//      "mask_names_absent_lanes" (full mask, but only lanes 0-15 call),
//      "mask_mismatch" (lanes 0-15 with mask 0x0000ffff, lanes 16-31 with the full mask),
//      "reads_outside_mask" (mask 0x0000ffff, xor 16: the source lanes are not in the mask).
__global__ void planted_warp_sum(const float* in, float* out, int bug) {
  const unsigned lane = threadIdx.x % 32;
  float v = in[threadIdx.x];
  if (bug == 1) {
    v += __shfl_xor_sync(0x0000ffffu, v, 1);
  } else if (bug == 2) {
    if (lane < 16) v += __shfl_xor_sync(0xffffffffu, v, 1);
  } else if (bug == 3) {
    v += __shfl_xor_sync(lane < 16 ? 0x0000ffffu : 0xffffffffu, v, 1);
  } else if (bug == 4) {
    if (lane < 16) v += __shfl_xor_sync(0x0000ffffu, v, 16);
  } else {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  }
  out[threadIdx.x] = v;
}

// Shared memory indexed one past either end.
// bug: 1 "shared_past_end", 2 "shared_before_start", 3 "dynamic_past_end" (dynamic shared
// memory of blockDim.x floats), 4 "shared_read_past_end" (a read only: reads the poison).
__global__ void planted_shared_index(float* out, int bug) {
  using Row = float[128];
  HL_SHARED(Row, sh);
  HL_SHARED_DYNAMIC(float, dyn);
  const int t = static_cast<int>(threadIdx.x);
  sh[t] = static_cast<float>(t);
  dyn[t] = static_cast<float>(t);
  if (bug == 1) sh[t + 1] = 1.0f;
  if (bug == 2) sh[t - 1] = 1.0f;
  if (bug == 3) dyn[t + 1] = 1.0f;
  __syncthreads();
  out[t] = bug == 4 ? sh[t + 1] : sh[(t + 1) % 128] + dyn[(t + 1) % 128];
}

// 64 KB of static shared memory: more than the device compiler allows.
__global__ void planted_big_static(float* out) {
  using Big = float[16384];
  HL_SHARED(Big, big);
  big[threadIdx.x] = 1.0f;
  out[threadIdx.x] = big[threadIdx.x];
}

// A global store one element past the output (AddressSanitizer's to find).
__global__ void planted_global_past_end(float* out, int n) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (t <= n) out[t] = 1.0f;
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    std::exit(1);
  }
}

void expect_success(cudaError_t e, const char* what) { check(e == cudaSuccess, what); }

int run(const std::string& bug) {
  const int n = 256;
  std::vector<float> in(n), out(n, 0.0f);
  for (int i = 0; i < n; ++i) in[i] = static_cast<float>(i % 7);

  if (bug == "clean" || bug == "divergent_barrier" || bug == "barrier_sites") {
    const int b = bug == "divergent_barrier" ? 1 : bug == "barrier_sites" ? 2 : 0;
    expect_success(launch_kernel<planted_block_sum>(2u, 128u, 0, nullptr, in.data(), out.data(), b), "block sum");
    for (int k = 0; k < 2; ++k) {
      float s = 0;
      for (int i = 0; i < 128; ++i) s += in[k * 128 + i];
      check(out[k] == s, "block sum value");
    }
  }
  if (bug == "clean" || bug.rfind("mask_", 0) == 0 || bug == "reads_outside_mask") {
    const int b = bug == "mask_leaves_caller_out" ? 1 : bug == "mask_names_absent_lanes" ? 2
                : bug == "mask_mismatch" ? 3 : bug == "reads_outside_mask" ? 4 : 0;
    expect_success(launch_kernel<planted_warp_sum>(1u, 64u, 0, nullptr, in.data(), out.data(), b), "warp sum");
    for (int w = 0; w < 2; ++w) {
      float s = 0;
      for (int i = 0; i < 32; ++i) s += in[w * 32 + i];
      for (int i = 0; i < 32; ++i) check(out[w * 32 + i] == s, "warp sum value");
    }
  }
  if (bug == "clean" || bug.rfind("shared_", 0) == 0 || bug == "dynamic_past_end") {
    const int b = bug == "shared_past_end" ? 1 : bug == "shared_before_start" ? 2 : bug == "dynamic_past_end" ? 3
                : bug == "shared_read_past_end" ? 4 : 0;
    expect_success(launch_kernel<planted_shared_index>(1u, 128u, 128 * sizeof(float), nullptr, out.data(), b),
                   "shared index");
    if (b == 4) {
      // Not an abort: the read past the end reads the poison, NaN (ASan reports it instead).
      check(out[127] != out[127], "a read past a shared array is NaN");
      std::fprintf(stderr, "read past the end of shared array `sh`: NaN\n");
      return 0;
    }
    for (int t = 0; t < 128; ++t) check(out[t] == 2.0f * static_cast<float>((t + 1) % 128), "shared value");
  }
  if (bug == "big_static") {
    expect_success(launch_kernel<planted_big_static>(1u, 32u, 0, nullptr, out.data()), "big static");
  }
  if (bug == "clean" || bug == "global_past_end") {
    // The kernel writes elements [0, n] of a vector of n + 1 (clean) or n elements.
    std::vector<float> small(bug == "clean" ? 64 : 63);
    expect_success(launch_kernel<planted_global_past_end>(1u, 64u, 0, nullptr, small.data(), 63), "global");
    check(small[62] == 1.0f, "global value");
  }
  if (bug == "clean") {
    // What the device refuses at launch comes back as its error code, as cudaGetLastError would.
    check(launch_kernel<planted_warp_sum>(1u, 2048u, 0, nullptr, in.data(), out.data(), 0) ==
              cudaErrorInvalidConfiguration, "a block of 2048 threads");
    check(launch_kernel<planted_warp_sum>(0u, 32u, 0, nullptr, in.data(), out.data(), 0) ==
              cudaErrorInvalidConfiguration, "an empty grid");
    const size_t big = 64 * 1024;  // above the 48 KB a kernel gets without opting in
    check(launch_kernel<planted_shared_index>(1u, 128u, big, nullptr, out.data(), 0) == cudaErrorInvalidValue,
          "64 KB of dynamic shared memory without opting in");
    expect_success(cudaFuncSetAttribute(planted_shared_index, cudaFuncAttributeMaxDynamicSharedMemorySize, int(big)),
                   "opting in to 64 KB on the h100 profile");
    expect_success(launch_kernel<planted_shared_index>(1u, 128u, big, nullptr, out.data(), 0), "64 KB, opted in");
    check(cudaFuncSetAttribute(planted_shared_index, cudaFuncAttributeMaxDynamicSharedMemorySize, 300 * 1024) ==
              cudaErrorInvalidValue, "more than the h100 profile's 227 KB");
    check(cudaSetDevice(1) == cudaSuccess, "the small profile");
    check(cudaFuncSetAttribute(planted_shared_index, cudaFuncAttributeMaxDynamicSharedMemorySize, int(big)) ==
              cudaErrorInvalidValue, "more than the small profile's 16 KB");
    int sms = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 1) == cudaSuccess && sms == 2, "2 SMs");
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrClockRate, 1) == cudaErrorInvalidValue, "an unmodelled attribute");
    check(cudaSetDevice(2) == cudaErrorInvalidDevice, "no third profile");
    check(cudaSetDevice(0) == cudaSuccess, "back to h100");
  }
  std::fprintf(stderr, "%s: no error reported\n", bug.c_str());
  return 0;
}

}  // namespace

// What each planted bug must produce: every text in the child's output, and its ending.
struct Expected {
  const char* bug;
  std::vector<const char*> texts;
  bool abort;  // SIGABRT; else exit code `code`
  int code;
};

#ifdef HL_EMU_ASAN
const char* const kShared = "AddressSanitizer: heap-buffer-overflow|runtime error: index";
const std::vector<Expected> kSharedExpected = {
    {"shared_past_end", {kShared}, false, 1},
    {"shared_before_start", {kShared}, false, 1},
    {"dynamic_past_end", {"AddressSanitizer: heap-buffer-overflow", "planted_shared_index"}, false, 1},
    {"shared_read_past_end", {kShared}, false, 1},
    {"global_past_end", {"AddressSanitizer: heap-buffer-overflow", "planted_global_past_end"}, false, 1},
};
#else
const std::vector<Expected> kSharedExpected = {
    {"shared_past_end",
     {"error in kernel {anonymous}::planted_shared_index",
      "shared memory written out of bounds: bytes at offsets 512..515 of static shared array `sh` (512 bytes)"},
     true, 0},
    {"shared_before_start",
     {"error in kernel {anonymous}::planted_shared_index",
      "shared memory written out of bounds: bytes at offsets -4..-1 of static shared array `sh`"},
     true, 0},
    {"dynamic_past_end",
     {"error in kernel {anonymous}::planted_shared_index",
      "shared memory written out of bounds: bytes at offsets 512..515 of the dynamic shared array"},
     true, 0},
    {"shared_read_past_end", {"read past the end of shared array `sh`: NaN"}, false, 0},
};
#endif

std::vector<Expected> expected() {
  std::vector<Expected> e = {
      {"divergent_barrier",
       {"error in kernel {anonymous}::planted_block_sum",
        "divergent __syncthreads: thread 64 ended without reaching the __syncthreads at", "threads 64-127: ended"},
       true, 0},
      {"barrier_sites", {"error in kernel {anonymous}::planted_block_sum", "divergent __syncthreads: thread"}, true, 0},
      {"mask_leaves_caller_out",
       {"error in kernel {anonymous}::planted_warp_sum",
        "calls __shfl_xor_sync with mask 0x0000ffff, which leaves it out"},
       true, 0},
      {"mask_names_absent_lanes",
       {"error in kernel {anonymous}::planted_warp_sum",
        "__shfl_xor_sync with a mask that does not match the lanes calling it: lane 0 of warp 0 waits with mask "
        "0xffffffff, lane 16 of its mask ended"},
       true, 0},
      {"mask_mismatch",
       {"error in kernel {anonymous}::planted_warp_sum",
        "__shfl_xor_sync with a mask that does not match the lanes calling it: lane 16 of warp 0 waits with mask "
        "0xffffffff, lane 0 of its mask waits at __shfl_xor_sync(mask 0x0000ffff)"},
       true, 0},
      {"reads_outside_mask",
       {"error in kernel {anonymous}::planted_warp_sum",
        "lane 0 of warp 0 reads lane 16 in __shfl_xor_sync, which is not in the mask 0x0000ffff"},
       true, 0},
      {"big_static",
       {"error in kernel {anonymous}::planted_big_static",
        "65536 bytes of static shared memory (`big` the last): the device compiler allows 48 KB"},
       true, 0},
  };
  e.insert(e.end(), kSharedExpected.begin(), kSharedExpected.end());
  return e;
}

// `texts` entries may hold alternatives separated by '|'.
bool contains(const std::string& out, const char* text) {
  std::string alt(text);
  for (size_t a = 0;;) {
    const size_t b = alt.find('|', a);
    if (out.find(alt.substr(a, b == std::string::npos ? std::string::npos : b - a)) != std::string::npos) return true;
    if (b == std::string::npos) return false;
    a = b + 1;
  }
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s clean|<bug>\n", argv[0]);
    return 2;
  }
  const std::string bug = argv[1];
  if (bug == "clean") return run(bug);
  const Expected* want = nullptr;
  static const std::vector<Expected> all = expected();
  for (const Expected& e : all) {
    if (bug == e.bug) want = &e;
  }
  if (want == nullptr) {
    std::fprintf(stderr, "no planted bug %s in this build\n", bug.c_str());
    return 2;
  }
  // The child writes stderr into a pipe; the parent reads it all, then judges.
  int fds[2];
  if (pipe(fds) != 0) return 2;
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    std::_Exit(run(bug));
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  int status = 0;
  waitpid(pid, &status, 0);
  std::fprintf(stderr, "---- the child's output\n%s----\n", out.c_str());
  bool ok = true;
  for (const char* t : want->texts) {
    if (!contains(out, t)) {
      std::fprintf(stderr, "FAILED: the output lacks \"%s\"\n", t);
      ok = false;
    }
  }
  const bool aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  const bool ended_ok = want->abort ? aborted : WIFEXITED(status) && WEXITSTATUS(status) == want->code;
  if (!ended_ok) {
    const std::string got = WIFSIGNALED(status) ? strsignal(WTERMSIG(status))
                                                : "exit code " + std::to_string(WEXITSTATUS(status));
    const std::string wanted = want->abort ? "SIGABRT" : "exit code " + std::to_string(want->code);
    std::fprintf(stderr, "FAILED: the child ended with %s, expected %s\n", got.c_str(), wanted.c_str());
    ok = false;
  }
  std::fprintf(stderr, "planted bug %s: %s\n", bug.c_str(), ok ? "reported as expected" : "NOT reported as expected");
  return ok ? 0 : 1;
}

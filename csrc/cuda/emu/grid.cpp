// grid.cpp: how the emulator runs a launch (emu/emu.h). The blocks run one after another in an
// order shuffled per launch; the threads of a block are fibers (emu/fiber.h) on the launching OS
// thread. A round resumes every runnable thread, in a shuffled order, until it waits (at a
// barrier or a shuffle) or ends; then the waits are resolved:
//   - a shuffle completes when every lane of its mask waits at a shuffle with the same mask;
//     a lane of the mask that ended, waits at a barrier, or uses another mask is an error;
//   - else every thread that has not ended must wait at the same __syncthreads, which releases
//     them; a thread that ended, or one at another __syncthreads, is an error.
// Errors abort with the kernel's name, the block, the launch seed and what each thread does.
// Shared memory is allocated per block, filled with 0xff bytes (NaN for every float type), and
// checked for writes past either end when the block ends (under AddressSanitizer it is
// allocated at its exact size instead, and ASan checks every access).
#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "cuda/emu/emu.h"
#include "cuda/emu/fiber.h"
#include "cuda/emu/runtime.h"

namespace hl {
namespace emu {
namespace {

#ifdef HL_EMU_ASAN
constexpr size_t kStackBytes = 512 * 1024;
constexpr size_t kGuard = 0;  // ASan's redzones instead of canaries
#else
constexpr size_t kStackBytes = 128 * 1024;
constexpr size_t kGuard = 64;  // canary bytes on each side of a shared allocation
#endif
constexpr unsigned char kPoison = 0xff;

enum class State { kReady, kBarrier, kShuffle, kDone };

struct Thread {
  Fiber fiber;
  uint3 idx;
  int tid = 0;  // linear index in the block: warp tid / 32, lane tid % 32
  State state = State::kDone;
  const char* file = nullptr;  // the __syncthreads it waits at
  int line = 0;
  unsigned mask = 0;  // the shuffle it waits at
  int bytes = 0;
  int src = 0;  // the lane it reads
  uint64_t in = 0, out = 0;
};

struct SharedAlloc {
  const void* site;  // HL_SHARED's tag; nullptr: the dynamic shared memory
  const char* name;
  char* base;  // including the canaries
  size_t bytes;
};

struct Block {
  const Launch* launch;
  std::string name;
  int device;
  uint64_t seed, launch_number;
  uint3 idx;
  int nthreads;
  std::vector<SharedAlloc> shared;
  size_t static_bytes = 0;
  Thread* current = nullptr;
};

// Per OS thread: the scheduler's context, the fibers (their stacks are kept between launches),
// and the block that runs.
struct Runner {
  Fiber scheduler;
  std::vector<std::unique_ptr<Thread>> threads;
  Block* block = nullptr;
  ~Runner() {
    for (auto& t : threads) fiber_free(t->fiber);
  }
};
// The hot paths read a plain pointer: a thread_local object with a destructor costs a call to
// its TLS init function on every access.
thread_local Runner* t_run = nullptr;

Runner& runner() {  // created by the first launch of the OS thread, freed when it ends
  thread_local std::unique_ptr<Runner> owner;
  if (owner == nullptr) {
    owner = std::make_unique<Runner>();
    t_run = owner.get();
  }
  return *owner;
}

const char* state_text(const Thread& t, char* buf, size_t n) {
  switch (t.state) {
    case State::kReady: return "runnable";
    case State::kDone: return "ended";
    case State::kBarrier: std::snprintf(buf, n, "waits at __syncthreads (%s:%d)", t.file, t.line); return buf;
    case State::kShuffle: std::snprintf(buf, n, "waits at __shfl_xor_sync(mask 0x%08x)", t.mask); return buf;
  }
  return "?";
}

// What each thread of the block does, runs of equal states merged (the first 16 runs).
void print_threads(const Block& b) {
  char prev[160] = "", cur[160];
  int start = 0, runs = 0;
  for (int i = 0; i <= b.nthreads; ++i) {
    char buf[160] = "";
    if (i < b.nthreads) std::snprintf(cur, sizeof cur, "%s", state_text(*t_run->threads[i], buf, sizeof buf));
    if (i == b.nthreads || std::strcmp(cur, prev) != 0) {
      if (i > 0 && ++runs <= 16) std::fprintf(stderr, "    threads %d-%d: %s\n", start, i - 1, prev);
      std::snprintf(prev, sizeof prev, "%s", cur);
      start = i;
    }
  }
  if (runs > 16) std::fprintf(stderr, "    ... (%d more runs)\n", runs - 16);
}

[[noreturn]] __attribute__((format(printf, 1, 2))) void fail(const char* fmt, ...) {
  const Block* b = t_run != nullptr ? t_run->block : nullptr;
  std::fprintf(stderr, "\nhardloss cuda_emu: error in kernel %s\n", b ? b->name.c_str() : "(none)");
  if (b != nullptr) {
    const Launch& l = *b->launch;
    std::fprintf(stderr,
                 "  block (%u,%u,%u) of grid (%u,%u,%u), block (%u,%u,%u), %zu bytes dynamic shared memory,"
                 " device %d (%s), seed 0x%016llx launch %llu\n",
                 b->idx.x, b->idx.y, b->idx.z, l.grid.x, l.grid.y, l.grid.z, l.block.x, l.block.y, l.block.z,
                 l.smem, b->device, profile(b->device).name, static_cast<unsigned long long>(seed()),
                 static_cast<unsigned long long>(b->launch_number));
  }
  std::fprintf(stderr, "  ");
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  if (b != nullptr) print_threads(*b);
  std::fflush(stderr);
  std::abort();
}

Thread& me() {
  Block* b = t_run != nullptr ? t_run->block : nullptr;
  if (b == nullptr || b->current == nullptr) {
    std::fprintf(stderr, "hardloss cuda_emu: a device intrinsic called outside a kernel\n");
    std::abort();
  }
  return *b->current;
}

// ---------------------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------------------
char* shared_body(const SharedAlloc& a) { return a.base + kGuard; }

SharedAlloc shared_alloc(const void* site, const char* name, size_t bytes) {
  const size_t total = bytes + 2 * kGuard;
  char* base = static_cast<char*>(::operator new(total == 0 ? 1 : total, std::align_val_t(64)));
  std::memset(base, kPoison, total);
  return {site, name, base, bytes};
}

void check_canaries(const SharedAlloc& a) {
  long first = 0, last = 0;  // changed bytes, as offsets from the array's start
  bool hit = false;
  for (size_t i = 0; i < 2 * kGuard; ++i) {
    const size_t at = i < kGuard ? i : kGuard + a.bytes + (i - kGuard);
    if (static_cast<unsigned char>(a.base[at]) == kPoison) continue;
    const long off = static_cast<long>(at) - static_cast<long>(kGuard);
    if (!hit) first = off;
    last = off;
    hit = true;
  }
  if (hit) {
    fail("shared memory written out of bounds: bytes at offsets %ld..%ld of %s shared array `%s` (%zu bytes)", first,
         last, a.site ? "static" : "the dynamic", a.name, a.bytes);
  }
}

// ---------------------------------------------------------------------------------------
// Rounds and waits
// ---------------------------------------------------------------------------------------
void thread_main(void* arg) {
  Thread& t = *static_cast<Thread*>(arg);
  fiber_entered(t_run->scheduler);
  const Launch& l = *t_run->block->launch;
  l.body(l.ctx);
  t.state = State::kDone;
  fiber_exit(t.fiber, t_run->scheduler);
}

void resume(Block& b, Thread& t) {
  b.current = &t;
  fiber_switch(t_run->scheduler, t.fiber);
  b.current = nullptr;
}

void wait(Thread& t) { fiber_switch(t.fiber, t_run->scheduler); }

// Completes the shuffles that wait. Called when no thread is runnable, so a lane that is not
// at its shuffle never will be: any lane of a waiting lane's mask that is elsewhere, or that
// waits with another mask, is an error (checked for every waiting lane before any is released).
bool release_shuffles(Block& b) {
  auto& th = t_run->threads;
  bool waiting = false;
  for (int warp0 = 0; warp0 < b.nthreads; warp0 += 32) {
    unsigned checked = 0;  // lanes whose mask group is checked: each group once
    for (int lane = 0; lane < 32 && warp0 + lane < b.nthreads; ++lane) {
      const Thread& t = *th[warp0 + lane];
      if (t.state != State::kShuffle || (checked >> lane & 1u)) continue;
      waiting = true;
      for (int j = 0; j < 32; ++j) {
        if (!(t.mask >> j & 1u)) continue;
        if (warp0 + j >= b.nthreads) {
          fail("lane %d of warp %d calls __shfl_xor_sync with mask 0x%08x, which names lane %d: the block has no "
               "thread %d",
               lane, warp0 / 32, t.mask, j, warp0 + j);
        }
        const Thread& u = *th[warp0 + j];
        char buf[160];
        if (u.state != State::kShuffle || u.mask != t.mask) {
          fail("__shfl_xor_sync with a mask that does not match the lanes calling it: lane %d of warp %d waits "
               "with mask 0x%08x, lane %d of its mask %s",
               lane, warp0 / 32, t.mask, j, state_text(u, buf, sizeof buf));
        }
        if (u.bytes != t.bytes) {
          fail("__shfl_xor_sync of %d-byte values in lane %d and %d-byte values in lane %d of warp %d", t.bytes,
               lane, u.bytes, j, warp0 / 32);
        }
        if (!(t.mask >> u.src & 1u)) {
          fail("lane %d of warp %d reads lane %d in __shfl_xor_sync, which is not in the mask 0x%08x", j, warp0 / 32,
               u.src, t.mask);
        }
      }
      checked |= t.mask;
    }
  }
  if (!waiting) return false;
  for (int i = 0; i < b.nthreads; ++i) {
    Thread& t = *th[i];
    if (t.state == State::kShuffle) t.out = th[t.tid / 32 * 32 + t.src]->in;
  }
  for (int i = 0; i < b.nthreads; ++i) {
    if (th[i]->state == State::kShuffle) th[i]->state = State::kReady;
  }
  return true;
}

void release_barrier(Block& b) {
  auto& th = t_run->threads;
  const Thread* first = nullptr;
  for (int i = 0; i < b.nthreads && first == nullptr; ++i) {
    if (th[i]->state == State::kBarrier) first = th[i].get();
  }
  if (first == nullptr) fail("no thread can make progress");  // not reached: see release_shuffles
  for (int i = 0; i < b.nthreads; ++i) {
    const Thread& t = *th[i];
    if (t.state == State::kDone) {
      fail("divergent __syncthreads: thread %d ended without reaching the __syncthreads at %s:%d where others wait",
           i, first->file, first->line);
    }
    if (t.state == State::kBarrier && (t.line != first->line || std::strcmp(t.file, first->file) != 0)) {
      fail("divergent __syncthreads: thread %d waits at %s:%d, thread %d at %s:%d", first->tid, first->file,
           first->line, i, t.file, t.line);
    }
  }
  for (int i = 0; i < b.nthreads; ++i) th[i]->state = State::kReady;
}

// The orders' random numbers (splitmix64: cheap, and enough to shuffle).
struct Rng {
  using result_type = uint64_t;
  uint64_t state;
  static constexpr uint64_t min() { return 0; }
  static constexpr uint64_t max() { return ~uint64_t(0); }
  uint64_t operator()() {
    uint64_t x = (state += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  }
};

// Fisher-Yates with the multiply-shift range reduction.
template <typename T>
void shuffle(std::vector<T>& v, Rng& rng) {
  for (size_t i = v.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>((static_cast<unsigned __int128>(rng()) * i) >> 64);
    std::swap(v[i - 1], v[j]);
  }
}

void run_block(Block& b, Rng& rng) {
  const Launch& l = *b.launch;
  auto& th = t_run->threads;
  b.shared.clear();
  b.static_bytes = 0;
  b.shared.push_back(shared_alloc(nullptr, "extern __shared__", l.smem));
  for (int i = 0; i < b.nthreads; ++i) {
    Thread& t = *th[i];
    t.tid = i;
    t.idx = {static_cast<unsigned>(i) % l.block.x, static_cast<unsigned>(i) / l.block.x % l.block.y,
             static_cast<unsigned>(i) / (l.block.x * l.block.y)};
    t.state = State::kReady;
    fiber_start(t.fiber, thread_main, &t);
  }
  std::vector<Thread*> order;
  for (;;) {
    order.clear();
    for (int i = 0; i < b.nthreads; ++i) {
      if (th[i]->state == State::kReady) order.push_back(th[i].get());
    }
    shuffle(order, rng);
    for (Thread* t : order) resume(b, *t);
    bool done = true;
    for (int i = 0; i < b.nthreads && done; ++i) done = th[i]->state == State::kDone;
    if (done) break;
    if (!release_shuffles(b)) release_barrier(b);
  }
  for (const SharedAlloc& a : b.shared) check_canaries(a);
  for (const SharedAlloc& a : b.shared) ::operator delete(a.base, std::align_val_t(64));
  b.shared.clear();
}

bool valid_dims(dim3 d, unsigned mx, unsigned my, unsigned mz) {
  return d.x >= 1 && d.y >= 1 && d.z >= 1 && d.x <= mx && d.y <= my && d.z <= mz;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// The built-in variables and the intrinsics
// ---------------------------------------------------------------------------------------
uint3 thread_idx() { return me().idx; }
uint3 block_idx() {
  (void)me();
  return t_run->block->idx;
}
dim3 block_dim() {
  (void)me();
  return t_run->block->launch->block;
}
dim3 grid_dim() {
  (void)me();
  return t_run->block->launch->grid;
}

void syncthreads(const char* file, int line) {
  Thread& t = me();
  t.state = State::kBarrier;
  t.file = file;
  t.line = line;
  wait(t);
}

uint64_t shfl_xor(unsigned mask, uint64_t bits, int bytes, int lane_mask, int width) {
  Thread& t = me();
  const int lane = t.tid % 32;
  if (!(mask >> lane & 1u)) {
    fail("lane %d of warp %d calls __shfl_xor_sync with mask 0x%08x, which leaves it out", lane, t.tid / 32, mask);
  }
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fail("__shfl_xor_sync with width %d: a power of two up to 32", width);
  }
  // CUDA: a lane reading from a later group of `width` lanes gets its own value.
  int src = lane ^ lane_mask;
  if (src / width > lane / width || src > 31 || src < 0) src = lane;
  t.state = State::kShuffle;
  t.mask = mask;
  t.bytes = bytes;
  t.src = src;
  t.in = bits;
  wait(t);
  return t.out;
}

void* static_shared(const void* site, size_t bytes, const char* name) {
  (void)me();
  Block& b = *t_run->block;
  for (const SharedAlloc& a : b.shared) {
    if (a.site == site) return shared_body(a);
  }
  b.static_bytes += bytes;
  const size_t optin = static_cast<size_t>(profile(b.device).smem_optin);
  if (b.static_bytes > 48 * 1024) {
    fail("%zu bytes of static shared memory (`%s` the last): the device compiler allows 48 KB", b.static_bytes,
         name);
  }
  if (b.static_bytes + b.launch->smem > optin) {
    fail("%zu bytes of static and %zu of dynamic shared memory: more than the device's %zu", b.static_bytes,
         b.launch->smem, optin);
  }
  note_static_smem(b.device, b.launch->kernel, b.static_bytes);
  b.shared.push_back(shared_alloc(site, name, bytes));
  return shared_body(b.shared.back());
}

void* dynamic_shared() {
  (void)me();
  return shared_body(t_run->block->shared.front());
}

cudaError_t launch_grid(const Launch& l) {
  Runner& run = runner();
  if (run.block != nullptr) {
    std::fprintf(stderr, "hardloss cuda_emu: kernel %s launched from inside kernel %s\n", kernel_name(l.name).c_str(),
                 t_run->block->name.c_str());
    std::abort();
  }
  const int device = current_device();
  // What the device refuses at launch.
  const uint64_t nthreads = uint64_t(l.block.x) * l.block.y * l.block.z;
  if (!valid_dims(l.grid, 0x7fffffffu, 65535u, 65535u) || !valid_dims(l.block, 1024u, 1024u, 64u) ||
      nthreads > 1024) {
    set_last_error(cudaErrorInvalidConfiguration);
    return cudaErrorInvalidConfiguration;
  }
  if (l.smem > static_cast<size_t>(kernel_attrs(device, l.kernel).max_dynamic_smem)) {
    set_last_error(cudaErrorInvalidValue);
    return cudaErrorInvalidValue;
  }
  Block b;
  b.launch = &l;
  b.name = kernel_name(l.name);
  b.device = device;
  b.seed = next_launch_seed(&b.launch_number);
  b.nthreads = static_cast<int>(nthreads);
  record_launch({b.name, l.grid, l.block, l.smem, device});

  auto& th = t_run->threads;
  while (th.size() < nthreads) {
    th.push_back(std::make_unique<Thread>());
    fiber_alloc(th.back()->fiber, kStackBytes);
  }
  Rng rng{b.seed};
  const uint64_t nblocks = uint64_t(l.grid.x) * l.grid.y * l.grid.z;
  std::vector<uint64_t> order(nblocks);
  for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
  shuffle(order, rng);
  t_run->block = &b;
  for (uint64_t i : order) {
    b.idx = {static_cast<unsigned>(i % l.grid.x), static_cast<unsigned>(i / l.grid.x % l.grid.y),
             static_cast<unsigned>(i / (uint64_t(l.grid.x) * l.grid.y))};
    run_block(b, rng);
  }
  t_run->block = nullptr;
  return cudaSuccess;
}

}  // namespace emu
}  // namespace hl

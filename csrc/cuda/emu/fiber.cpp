// fiber.cpp: the stack switch of emu/fiber.h.
#include "cuda/emu/fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#ifdef HL_EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#if !HL_EMU_UCONTEXT
// hl_emu_switch(save, to): push the callee-saved registers of the System V x86-64 ABI (rbp, rbx,
// r12-r15) on the running stack, store the stack pointer in *save, load `to`, pop the same from
// there and return into the resumed fiber. The SSE and x87 control words are not switched: every
// fiber runs with the launching thread's, which nothing in a kernel changes (restoring them
// made the switch a third slower).
// hl_emu_trampoline: where a new fiber's first switch "returns" to; its Fiber* is in r12.
asm(R"(
  .text
  .p2align 4
  .globl hl_emu_switch
  .hidden hl_emu_switch
  .type hl_emu_switch, @function
hl_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size hl_emu_switch, .-hl_emu_switch

  .p2align 4
  .globl hl_emu_trampoline
  .hidden hl_emu_trampoline
  .type hl_emu_trampoline, @function
hl_emu_trampoline:
  movq %r12, %rdi
  call hl_emu_fiber_main
  ud2
  .size hl_emu_trampoline, .-hl_emu_trampoline
)");

extern "C" {
void hl_emu_switch(void** save, void* to);
void hl_emu_trampoline();
__attribute__((visibility("hidden"))) void hl_emu_fiber_main(hl::emu::Fiber* f) { f->entry(f->arg); }
}
#endif

namespace hl {
namespace emu {
namespace {

[[noreturn]] void die(const char* what) {
  std::perror(what);
  std::abort();
}

#if HL_EMU_UCONTEXT
void uc_entry(unsigned hi, unsigned lo) {
  Fiber* f = reinterpret_cast<Fiber*>((static_cast<uintptr_t>(hi) << 32) | lo);
  f->entry(f->arg);
}
#endif

}  // namespace

void fiber_alloc(Fiber& f, size_t bytes) {
  if (f.mapping != nullptr) return;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  bytes = (bytes + page - 1) / page * page;
  void* m = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (m == MAP_FAILED) die("hardloss cuda_emu: mmap of a thread stack");
  if (mprotect(m, page, PROT_NONE) != 0) die("hardloss cuda_emu: guard page");  // overflow faults
  f.mapping = m;
  f.mapped = bytes + page;
  f.stack = static_cast<char*>(m) + page;
  f.size = bytes;
}

void fiber_free(Fiber& f) {
  if (f.mapping != nullptr) munmap(f.mapping, f.mapped);
  f.mapping = nullptr;
  f.stack = nullptr;
}

void fiber_start(Fiber& f, void (*entry)(void*), void* arg) {
  f.entry = entry;
  f.arg = arg;
#if HL_EMU_UCONTEXT
  if (getcontext(&f.uc) != 0) die("hardloss cuda_emu: getcontext");
  f.uc.uc_stack.ss_sp = f.stack;
  f.uc.uc_stack.ss_size = f.size;
  f.uc.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(&f);
  makecontext(&f.uc, reinterpret_cast<void (*)()>(uc_entry), 2, static_cast<unsigned>(p >> 32),
              static_cast<unsigned>(p & 0xffffffffu));
#else
  // The frame hl_emu_switch pops: r15, r14, r13, r12 (= &f), rbx, rbp, then the return address
  // hl_emu_trampoline. The top is 16-byte aligned and the frame starts 72 bytes below it, so the
  // trampoline's call sees the ABI's alignment.
  uintptr_t top = reinterpret_cast<uintptr_t>(f.stack + f.size) & ~uintptr_t(15);
  uint64_t* frame = reinterpret_cast<uint64_t*>(top - 72);
  for (int i = 0; i < 6; ++i) frame[i] = 0;
  frame[3] = reinterpret_cast<uint64_t>(&f);  // r12
  frame[6] = reinterpret_cast<uint64_t>(&hl_emu_trampoline);
  f.sp = frame;
#endif
}

void fiber_switch(Fiber& from, Fiber& to) {
#ifdef HL_EMU_ASAN
  __sanitizer_start_switch_fiber(&from.asan_fake_stack, to.stack, to.size);
#endif
#if HL_EMU_UCONTEXT
  if (swapcontext(&from.uc, &to.uc) != 0) die("hardloss cuda_emu: swapcontext");
#else
  hl_emu_switch(&from.sp, to.sp);
#endif
#ifdef HL_EMU_ASAN
  __sanitizer_finish_switch_fiber(from.asan_fake_stack, nullptr, nullptr);
#endif
}

void fiber_exit(Fiber& from, Fiber& to) {
#ifdef HL_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, to.stack, to.size);
#endif
#if HL_EMU_UCONTEXT
  static_cast<void>(from);
  setcontext(&to.uc);
  die("hardloss cuda_emu: setcontext");
#else
  hl_emu_switch(&from.sp, to.sp);
  std::abort();  // a finished fiber is never resumed
#endif
}

void fiber_entered(Fiber& from) {
#ifdef HL_EMU_ASAN
  const void* bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(nullptr, &bottom, &size);
  if (from.mapping == nullptr) {  // the OS thread's own stack
    from.stack = static_cast<char*>(const_cast<void*>(bottom));
    from.size = size;
  }
#else
  static_cast<void>(from);
#endif
}

}  // namespace emu
}  // namespace hl

// fiber.h: cooperative user-space threads for the emulator (emu/grid.cpp runs each thread of a
// block as one). A fiber runs until it switches away itself: at a barrier, a shuffle, or its
// end. On x86-64 the switch saves the callee-saved registers and swaps the stack pointer (a few
// ns; glibc's swapcontext also makes a signal-mask system call, ~300 ns here, and a block of
// 1024 threads switches at every reduction step); elsewhere, or with HL_EMU_UCONTEXT=1, it is
// ucontext. AddressSanitizer is told about every stack switch.
#pragma once

#include <cstddef>

#if !defined(HL_EMU_UCONTEXT)
#if defined(__x86_64__)
#define HL_EMU_UCONTEXT 0
#else
#define HL_EMU_UCONTEXT 1
#endif
#endif
#if HL_EMU_UCONTEXT
#include <ucontext.h>
#endif

// Built with AddressSanitizer (GCC or Clang): fibers announce their stacks, and shared memory is
// allocated at its exact size so that ASan sees every access past it.
#if defined(__SANITIZE_ADDRESS__)
#define HL_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HL_EMU_ASAN 1
#endif
#endif

namespace hl {
namespace emu {

struct Fiber {
  void* sp = nullptr;      // saved stack pointer (x86-64 switch)
  char* stack = nullptr;   // lowest usable address of its stack (the OS thread's: learnt by ASan)
  size_t size = 0;
  void* mapping = nullptr; // what fiber_alloc mapped (guard page included); nullptr: not ours
  size_t mapped = 0;
  void (*entry)(void*) = nullptr;
  void* arg = nullptr;
  void* asan_fake_stack = nullptr;
#if HL_EMU_UCONTEXT
  ucontext_t uc;
#endif
};

// Gives `f` a stack of `bytes` (plus an inaccessible guard page below it), once.
void fiber_alloc(Fiber& f, size_t bytes);
void fiber_free(Fiber& f);

// Makes the next switch to `f` run entry(arg) from the top of its stack. entry must not return:
// it ends with fiber_exit.
void fiber_start(Fiber& f, void (*entry)(void*), void* arg);

// Saves the running context in `from` and resumes `to`; returns when something switches back.
void fiber_switch(Fiber& from, Fiber& to);

// The last switch of a finished fiber `from` (AddressSanitizer drops its fake stack).
[[noreturn]] void fiber_exit(Fiber& from, Fiber& to);

// Called first thing in a fiber's entry: `from` is the fiber that started it (AddressSanitizer
// learns the bounds of the OS thread's stack from it).
void fiber_entered(Fiber& from);

}  // namespace emu
}  // namespace hl

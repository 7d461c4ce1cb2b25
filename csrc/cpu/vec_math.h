// vec_math.h: a branch-free float exp that GCC/Clang auto-vectorise, and the function
// multi-versioning macro for the CPU hot loops.
//
// Why not at::vec::Vectorized<float>::exp: in an extension TU there is no CPU_CAPABILITY
// (no -mavx2), so Vectorized<float> is the generic scalar-array fallback and exp is one libm
// call per element (~4x slower than this, measured). Compiling a TU with -mavx2 instead would
// make inline functions from c10/std headers AVX2 code that the linker may pick for the
// whole .so (illegal instruction on older CPUs). target_clones emits an AVX2+FMA and an
// AVX-512 copy of only the marked leaf loops plus the portable default, picked at load time.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && \
    (__GNUC__ >= 12) && !defined(HL_NO_CLONES)
#define HL_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define HL_CLONES
#endif

#if defined(__GNUC__)
#define HL_INLINE inline __attribute__((always_inline))
#else
#define HL_INLINE inline
#endif

namespace hl {
namespace cpu {

// exp(x) in float, Cephes expf polynomial (max rel. error ~2 ulp on [-87.3, 88.3]).
// exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 (two-constant Cody-Waite).
// x < -87.33 flushes to 0 (no denormals), x > 88.37 gives inf (the kernels only ever take
// exp of arguments <= 0 plus rounding), NaN stays NaN. Needs round-to-nearest mode.
HL_INLINE float fast_exp(float x) {
  const float lo = -87.33654f, hi = 88.37626f;
  float xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float t = xc * 1.44269504088896341f + magic;
  float n = t - magic;
  float r = n * -0.693359375f + xc;
  r = n * 2.12194440e-4f + r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * (r * r) + r + 1.0f;
  int32_t ni = static_cast<int32_t>(n);
  int32_t bits = (ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  y = y * scale;
  y = x < lo ? 0.0f : y;
  y = x > hi ? __builtin_inff() : y;
  y = x != x ? x : y;
  return y;
}

}  // namespace cpu
}  // namespace hl

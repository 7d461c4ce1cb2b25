// vec_math.h: a branch-free float exp and log that GCC/Clang auto-vectorise, and the function
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

// log(x) in float, Cephes logf polynomial (max rel. error ~2 ulp), branch-free like fast_exp:
// x = 2^e f, f in [sqrt(1/2), sqrt(2)), log x = e ln 2 + log1p(f - 1). Subnormal x is scaled
// by 2^25 first (|eps|^k of a tiny eps must not lose classes); log 0 = -inf, log of a negative
// number or NaN is NaN, log inf = inf.
HL_INLINE float fast_log(float x) {
  const bool tiny = x < 1.17549435e-38f;  // subnormal (or <= 0, fixed at the end)
  const float xs = tiny ? x * 33554432.0f : x;
  int32_t bits;
  std::memcpy(&bits, &xs, sizeof(bits));
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126) - (tiny ? 25.0f : 0.0f);
  bits = (bits & 0x007fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  const bool low = f < 0.707106781186547524f;
  e = low ? e - 1.0f : e;
  f = low ? f + f - 1.0f : f - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  float y = f * z * p;
  y = e * -2.12194440e-4f + y;
  y = z * -0.5f + y;
  y = f + y;
  y = e * 0.693359375f + y;
  y = x == 0.0f ? -__builtin_inff() : y;
  y = x < 0.0f ? __builtin_nanf("") : y;
  y = x == __builtin_inff() ? x : y;
  y = x != x ? x : y;
  return y;
}

}  // namespace cpu
}  // namespace hl

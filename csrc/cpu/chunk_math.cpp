#include "cpu/chunk_math.h"

#include <cmath>
#include <limits>

#include "cpu/vec_math.h"
#include "row_math.h"

namespace hl {
namespace cpu {
namespace {

HL_INLINE float exp_of(float x) { return fast_exp(x); }
HL_INLINE float log_of(float x) { return fast_log(x); }
HL_INLINE double exp_of(double x) { return std::exp(x); }

// eps = p - qh lost most of p's digits (|eps| < p / 256) on a class with target mass: see soft_eps.
HL_INLINE bool near_cancel(float e, float p, float qh) { return qh != 0.0f && 256.0f * (e < 0.0f ? -e : e) < p; }

// Such a class's eps again in double, from log p = (x - a) - b as the float loop takes it
// ((m, log s) of the deferred stats, or (lse, lse_lo) of the complete ones) and q / t.
HL_INLINE double eps_in_double(float x, float a, float b, float q, float t_div) {
  return std::exp((static_cast<double>(x) - a) - b) - static_cast<double>(q) / t_div;
}

// 1, 2, ..., kEpsBlock: positions within a block as floats (soft_grad_k1).
struct Iota {
  float v[kEpsBlock];
};
constexpr Iota make_iota() {
  Iota t{};
  for (int64_t i = 0; i < kEpsBlock; ++i) t.v[i] = static_cast<float>(i + 1);
  return t;
}
constexpr Iota kIota = make_iota();

// Reductions keep 16 independent lanes: a single accumulator would serialise the loop
// (float addition is not associative, so the compiler may not reorder it by itself).
constexpr int kLanes = 16;

// A max reduction as an OpenMP simd loop: written with lanes like the sums, GCC left it scalar
// (measured: 52 ns -> 5 ns for 128 floats). NaN entries are skipped or kept, either way the
// row's sum of exponentials carries the NaN.
template <typename T>
HL_INLINE T max_impl(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

template <typename T>
HL_INLINE T sum_impl(const T* x, int64_t n) {
  T lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += x[i + j];
  T s = 0;
  for (; i < n; ++i) s += x[i];
  for (int j = 0; j < kLanes; ++j) s += lane[j];
  return s;
}

template <typename T>
HL_INLINE void exp_map_impl(const T* __restrict x, int64_t n, T m, T k, T c, T w, T* __restrict out) {
  for (int64_t i = 0; i < n; ++i) out[i] = w * exp_of(k * (x[i] - m) + c);
}

template <typename T>
HL_INLINE bool has_nan_impl(const T* x, int64_t n) {
  bool any = false;
  for (int64_t i = 0; i < n; ++i) any |= x[i] != x[i];
  return any;
}

// Fused (no round trip through tmp): 16 independent partial sums of the exponentials.
template <typename T>
HL_INLINE T sum_exp_impl(const T* __restrict x, int64_t n, T m, T k) {
  T lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += exp_of(k * (x[i + j] - m));
  T s = 0;
  for (; i < n; ++i) s += exp_of(k * (x[i] - m));
  for (int j = 0; j < kLanes; ++j) s += lane[j];
  return s;
}

}  // namespace

template <typename T, typename R>
HL_INLINE R chunk_stats_impl(const T* __restrict x, int64_t n, T k) {
  const T m = max_impl(x, n);
  if (m == -std::numeric_limits<T>::infinity())  // nothing but -inf and NaN: a NaN must still poison the row
    return has_nan_impl(x, n) ? R{T(NAN), T(NAN), T(NAN)} : R{m, T(0), T(0)};
  const T s1 = sum_exp_impl(x, n, m, T(1));
  return R{m, s1, k == T(1) ? s1 : sum_exp_impl(x, n, m, k)};
}

HL_CLONES ChunkStats chunk_stats(const float* x, int64_t n, float k) {
  return chunk_stats_impl<float, ChunkStats>(x, n, k);
}
ChunkStatsD chunk_stats(const double* x, int64_t n, double k) { return chunk_stats_impl<double, ChunkStatsD>(x, n, k); }

HL_CLONES void exp_map(const float* x, int64_t n, float m, float k, float c, float w, float* out) {
  exp_map_impl(x, n, m, k, c, w, out);
}
void exp_map(const double* x, int64_t n, double m, double k, double c, double w, double* out) {
  exp_map_impl(x, n, m, k, c, w, out);
}

// tanh(u) in float: 1 - 2 / (exp(2|u|) + 1) with the sign of u for |u| >= 0.625 (tanh >= 0.55
// there: no cancellation), the odd Taylor series to u^21 below (truncation < 2e-9 relative);
// within a few ulp of tanhf. +-inf give +-1, NaN stays NaN.
HL_INLINE float tanh_of(float u) {
  const float a = u < 0.0f ? -u : u, u2 = u * u;
  float p = 9.69153795e-5f;
  p = p * u2 - 2.39129114e-4f;
  p = p * u2 + 5.90027440e-4f;
  p = p * u2 - 1.45583438e-3f;
  p = p * u2 + 3.59212803e-3f;
  p = p * u2 - 8.86323552e-3f;
  p = p * u2 + 2.18694885e-2f;
  p = p * u2 - 5.39682540e-2f;
  p = p * u2 + 1.33333333e-1f;
  p = p * u2 - 3.33333333e-1f;
  const float small = u + u * (u2 * p);
  const float big = 1.0f - 2.0f / (exp_of(2.0f * a) + 1.0f);
  return a < 0.625f ? small : (u < 0.0f ? -big : big);
}

HL_CLONES void softcap_map(const float* __restrict x, int64_t n, float c, float* __restrict out) {
  const float inv = 1.0f / c;
  for (int64_t i = 0; i < n; ++i) out[i] = c * tanh_of(x[i] * inv);
}

// The slope 1 - tanh^2 as row_math.h softcap_slope: 4 / (E + 2 + 1 / E) from the same exp as
// tanh_of where tanh saturates, 1 - t^2 below |u| = 0.625 (t < 0.56: no cancellation).
HL_CLONES void softcap_slope_map(const float* __restrict x, int64_t n, float c, float* __restrict out,
                                 float* __restrict slope) {
  const float inv = 1.0f / c;
  for (int64_t i = 0; i < n; ++i) {
    const float u = x[i] * inv, a = u < 0.0f ? -u : u;
    const float t = tanh_of(u), E = exp_of(2.0f * a);
    out[i] = c * t;
    slope[i] = a < 0.625f ? 1.0f - t * t : 4.0f / (E + 2.0f + 1.0f / E);
  }
}

HL_CLONES void finish_map(const float* __restrict zc, const float* __restrict slope, const float* __restrict gf,
                          int64_t n, float g_lse, float lse, float lse_lo, float* __restrict out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = g_lse != 0.0f ? gf[i] + g_lse * exp_of((zc[i] - lse) - lse_lo) : gf[i];
    out[i] = slope != nullptr ? g * slope[i] : g;
  }
}

HL_CLONES void fill_q(const float* p, const float* w, int64_t n, float a, float b, float* q) {
  if (p != nullptr && w != nullptr) {
    for (int64_t i = 0; i < n; ++i) q[i] = w[i] * (a * p[i] + b);
  } else if (p != nullptr) {
    for (int64_t i = 0; i < n; ++i) q[i] = a * p[i] + b;
  } else if (w != nullptr) {
    for (int64_t i = 0; i < n; ++i) q[i] = w[i] * b;
  } else {
    for (int64_t i = 0; i < n; ++i) q[i] = b;
  }
}

HL_CLONES SoftTerms soft_terms(const float* __restrict x, const float* __restrict q, int64_t n, float m) {
  double lt[kLanes] = {}, ld[kLanes] = {};
  float lmin[kLanes], lmax[kLanes];
  for (int j = 0; j < kLanes; ++j) lmin[j] = __builtin_inff(), lmax[j] = -__builtin_inff();
  auto term = [m](float qi, float xi) { return qi != 0.0f ? qi * (m - xi) : 0.0f; };  // q = 0 on -inf: 0
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const float qi = q[i + j];
      lt[j] += qi;
      ld[j] += term(qi, x[i + j]);
      lmin[j] = qi < lmin[j] ? qi : lmin[j];
      lmax[j] = qi > lmax[j] ? qi : lmax[j];
    }
  SoftTerms r{0.0, 0.0, __builtin_inff(), -__builtin_inff()};
  for (; i < n; ++i) {
    r.t += q[i];
    r.d += term(q[i], x[i]);
    r.qmin = q[i] < r.qmin ? q[i] : r.qmin;
    r.qmax = q[i] > r.qmax ? q[i] : r.qmax;
  }
  for (int j = 0; j < kLanes; ++j) {
    r.t += lt[j];
    r.d += ld[j];
    r.qmin = lmin[j] < r.qmin ? lmin[j] : r.qmin;
    r.qmax = lmax[j] > r.qmax ? lmax[j] : r.qmax;
  }
  return r;
}

// Two loops per block of kEpsBlock classes, each an OpenMP simd loop with its reductions
// (GCC's vectoriser gave up on one fused loop with many accumulators and selects). Each class
// takes one exponential of k log|eps|: relative to 0 for the negatives, to the block's max
// for the positives (a large k must not underflow S_pos).
// row_math.h soft_f with one fast exp: -t exp(kla) on the negatives, sign(t) exp(kla + c_pos) on
// the others (soft_grad_complete from the logits, kept_grad_map from the kept pass).
HL_INLINE float soft_f_of(float kla, bool neg, float t, float sign_t, float c_pos) {
  return (neg ? -t : sign_t) * exp_of(neg ? kla : kla + c_pos);
}

HL_CLONES SoftEpsChunk soft_eps(const float* __restrict x, const float* __restrict q, int64_t n, float m,
                                float log_s, float t_div, float star_t, float k, float* __restrict w,
                                float* __restrict refs, float* __restrict kla, int8_t* __restrict side) {
  const float inf = __builtin_inff();
  float v[kEpsBlock];
  SoftEpsChunk r{-inf, 0.0f, -inf, 0.0f, 0.0, 0.0f};
  for (int64_t a = 0; a < n; a += kEpsBlock) {
    const int64_t b = n - a < kEpsBlock ? n - a : kEpsBlock;
    const float* xa = x + a;
    const float* qa = q + a;
    float* wa = w + a;
    float mp = -inf, mn = -inf, p_rest = 0.0f, q_rest = 0.0f;
    float near = 1.0f;
#pragma omp simd reduction(max : mp, mn, near) reduction(+ : p_rest, q_rest)
    for (int64_t i = 0; i < b; ++i) {
      const float log_p = (xa[i] - m) - log_s;
      const float p = exp_of(log_p), qh = qa[i] / t_div;  // as row_math.h: q / t, not q * (1 / t)
      const float e = p - qh;
      const bool neg = qh != 0.0f && e < 0.0f;
      const bool star = 2.0f * qa[i] > star_t;
      v[i] = star ? -inf : k * (qh == 0.0f ? log_p : log_of(neg ? -e : e));
      const float pos = neg ? -inf : v[i], ng = neg ? v[i] : -inf;
      mp = pos > mp ? pos : mp;
      mn = ng > mn ? ng : mn;
      p_rest += star ? 0.0f : p;
      q_rest += star ? 0.0f : qa[i];
      // the dominant class, or the sign; 2 for a class whose eps cancels (below)
      const float mag = !star && near_cancel(e, p, qh) ? 2.0f : 1.0f;
      wa[i] = star ? inf : (neg ? -mag : mag);
      near = mag > near ? mag : near;
    }
    // Where p - qh cancels (|eps| < p / 256), the float log p = (x - m) - log s (rounded at the
    // scale of log p: 5e-7 at log p = -7) and fast_exp's ~2 ulp lose their digits of p in eps
    // p / |eps|-fold (1e4 at eps 1e-7, p 1e-3), and a small k carries that into the gradient:
    // those classes again in double from the same x, m, log s (test_api's rows_sum_to_zero,
    // seed 865161731: 11x the fp32 reference's error before, 1.3x after).
    if (near > 1.0f)
      for (int64_t i = 0; i < b; ++i) {
        if (wa[i] != 2.0f && wa[i] != -2.0f) continue;
        const double e = eps_in_double(xa[i], m, log_s, qa[i], t_div);
        const bool neg = e < 0.0;
        v[i] = static_cast<float>(k * std::log(neg ? -e : e));
        if (neg) mn = v[i] > mn ? v[i] : mn;
        else mp = v[i] > mp ? v[i] : mp;
        wa[i] = neg ? -1.0f : 1.0f;
      }
    if (kla != nullptr)  // wa: +inf at the dominant class, else the sign
      for (int64_t i = 0; i < b; ++i) {
        const bool star = wa[i] == inf;
        kla[a + i] = star ? 0.0f : v[i];
        side[a + i] = star ? kSideStar : (wa[i] < 0.0f ? kSideNeg : kSidePos);
      }
    const float ref_p = mp == -inf ? 0.0f : mp, ref_n = mn == -inf ? 0.0f : mn;
    refs[2 * (a / kEpsBlock)] = mp;
    refs[2 * (a / kEpsBlock) + 1] = mn;
    float s_neg = 0.0f, s_pos = 0.0f;
#pragma omp simd reduction(+ : s_neg, s_pos)
    for (int64_t i = 0; i < b; ++i) {
      const bool neg = wa[i] < 0.0f;
      const float ev = exp_of(v[i] - (neg ? ref_n : ref_p));
      s_neg += neg ? ev : 0.0f;
      s_pos += neg ? 0.0f : ev;
      wa[i] = wa[i] == inf ? inf : wa[i] * ev;
    }
    const LseStats<float> neg = lse_merge(LseStats<float>{r.m_neg, r.s_neg}, LseStats<float>{mn, s_neg});
    const LseStats<float> pos = lse_merge(LseStats<float>{r.m_pos, r.s_pos}, LseStats<float>{mp, s_pos});
    r.m_neg = neg.m, r.s_neg = neg.s, r.m_pos = pos.m, r.s_pos = pos.s;
    r.p_rest += p_rest;
    r.q_rest += q_rest;  // kEpsBlock terms in float, the blocks in double
  }
  return r;
}

HL_CLONES void soft_scale(const float* __restrict w, const float* __restrict refs, int64_t n, float g_sign,
                          float c_neg, float c_pos, float g_f_star, float* __restrict out) {
  const float inf = __builtin_inff();
  for (int64_t a = 0; a < n; a += kEpsBlock) {
    const int64_t b = n - a < kEpsBlock ? n - a : kEpsBlock;
    // f_j = sign(t) exp(k log eps_j + c_pos) = sign(t) w_j exp(ref + c_pos) on the positives,
    // -t |eps_j|^k = sign(t) w_j exp(ref + log|t|) on the negatives (w_j < 0); 0 for a block
    // without any.
    const float ref_p = refs[2 * (a / kEpsBlock)], ref_n = refs[2 * (a / kEpsBlock) + 1];
    const float f_pos = ref_p == -inf ? 0.0f : g_sign * std::exp(ref_p + c_pos);
    const float f_neg = ref_n == -inf ? 0.0f : g_sign * std::exp(ref_n + c_neg);
    const float* wa = w + a;
    float* oa = out + a;
    for (int64_t i = 0; i < b; ++i) oa[i] = wa[i] == inf ? g_f_star : (wa[i] < 0.0f ? f_neg : f_pos) * wa[i];
  }
}

HL_CLONES void soft_grad_complete(const float* __restrict x, const float* __restrict q, int64_t n, float lse,
                                  float lse_lo, float t, float t_div, float c_pos, float star_t, float k, float g,
                                  float g_f_star, float* __restrict out) {
  const float sign_t = t < 0.0f ? -1.0f : 1.0f;
  float near[kEpsBlock];
  for (int64_t a = 0; a < n; a += kEpsBlock) {
    const int64_t b = n - a < kEpsBlock ? n - a : kEpsBlock;
    const float* xa = x + a;
    const float* qa = q + a;
    float* oa = out + a;
    float any = 0.0f;
#pragma omp simd reduction(max : any)
    for (int64_t i = 0; i < b; ++i) {
      const float log_p = (xa[i] - lse) - lse_lo;
      const float qh = qa[i] / t_div;
      const float p = exp_of(log_p), e = p - qh;
      const bool neg = qh != 0.0f && e < 0.0f;  // row_math.h soft_log_abs_eps
      const float kla = k * (qh == 0.0f ? log_p : log_of(neg ? -e : e));
      const float f = soft_f_of(kla, neg, t, sign_t, c_pos);
      const bool star = 2.0f * qa[i] > star_t;
      oa[i] = star ? g_f_star : g * f;
      near[i] = !star && near_cancel(e, p, qh) ? 1.0f : 0.0f;
      any = near[i] > any ? near[i] : any;
    }
    if (any == 0.0f) continue;
    for (int64_t i = 0; i < b; ++i) {  // a cancelling eps again in double, as soft_eps
      if (near[i] == 0.0f) continue;
      const double e = eps_in_double(xa[i], lse, lse_lo, qa[i], t_div);
      const bool neg = e < 0.0;
      const double kla = k * std::log(neg ? -e : e);
      oa[i] = static_cast<float>(g * (neg ? -t : sign_t) * std::exp(neg ? kla : kla + c_pos));
    }
  }
}

HL_CLONES void kept_grad_map(const float* kla, const int8_t* __restrict side, int64_t n, float g, float t,
                             float c_pos, float g_f_star, float* out) {
  const float sign_t = t < 0.0f ? -1.0f : 1.0f;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = side[i] == kSideStar ? g_f_star : g * soft_f_of(kla[i], side[i] == kSideNeg, t, sign_t, c_pos);
  }
}

HL_CLONES K1Rest soft_grad_k1(const float* __restrict x, const float* __restrict q, int64_t n, float lse,
                              float lse_lo, float t, float g, float star_t, float* __restrict out) {
  K1Rest r{0.0, -1};
  if (star_t == __builtin_inff()) {  // no dominant class: nothing else to gather
    for (int64_t i = 0; i < n; ++i) out[i] = g * (t * exp_of((x[i] - lse) - lse_lo) - q[i]);
    return r;
  }
  // Per block of kEpsBlock classes, one SIMD loop of sums; the dominant class's position is the
  // sum of (j + 1) over the classes that qualify (at most one), read from a table (a float
  // conversion of the loop index, or a max reduction, made GCC's loop 7x slower).
  for (int64_t a = 0; a < n; a += kEpsBlock) {
    const int64_t b = n - a < kEpsBlock ? n - a : kEpsBlock;
    const float* xa = x + a;
    const float* qa = q + a;
    float* oa = out + a;
    float rest = 0.0f, at = 0.0f;
#pragma omp simd reduction(+ : rest, at)
    for (int64_t i = 0; i < b; ++i) {
      const float f = t * exp_of((xa[i] - lse) - lse_lo) - qa[i];
      oa[i] = g * f;
      const bool is_star = 16.0f * (star_t - qa[i]) <= star_t;  // row_math.h is_star_k1
      rest += is_star ? 0.0f : f;
      at += is_star ? kIota.v[i] : 0.0f;
    }
    r.rest += rest;  // kEpsBlock terms in float, the blocks in double
    if (at != 0.0f) r.star = a + static_cast<int64_t>(at) - 1;
  }
  return r;
}

}  // namespace cpu
}  // namespace hl

#include "cpu/chunk_math.h"

#include <cmath>
#include <limits>

#include "cpu/vec_math.h"

namespace hl {
namespace cpu {
namespace {

HL_INLINE float exp_of(float x) { return fast_exp(x); }
HL_INLINE float log_of(float x) { return fast_log(x); }
HL_INLINE double exp_of(double x) { return std::exp(x); }

// Reductions keep 16 independent lanes: a single accumulator would serialise the loop
// (float addition is not associative, so the compiler may not reorder it by itself).
constexpr int kLanes = 16;

template <typename T>
HL_INLINE T max_impl(const T* x, int64_t n) {
  T lane[kLanes];
  for (int j = 0; j < kLanes; ++j) lane[j] = -std::numeric_limits<T>::infinity();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
  T m = -std::numeric_limits<T>::infinity();
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  for (int j = 0; j < kLanes; ++j) m = lane[j] > m ? lane[j] : m;
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

}  // namespace

HL_CLONES float chunk_max(const float* x, int64_t n) { return max_impl(x, n); }
double chunk_max(const double* x, int64_t n) { return max_impl(x, n); }

HL_CLONES bool has_nan(const float* x, int64_t n) { return has_nan_impl(x, n); }
bool has_nan(const double* x, int64_t n) { return has_nan_impl(x, n); }

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

HL_CLONES float sum_exp(const float* x, int64_t n, float m, float k, float* /*tmp*/) {
  return sum_exp_impl(x, n, m, k);
}
double sum_exp(const double* x, int64_t n, double m, double k, double* tmp) {
  exp_map_impl(x, n, m, k, 0.0, 1.0, tmp);
  return sum_impl(tmp, n);
}

HL_CLONES void exp_map(const float* x, int64_t n, float m, float k, float c, float w, float* out) {
  exp_map_impl(x, n, m, k, c, w, out);
}
void exp_map(const double* x, int64_t n, double m, double k, double c, double w, double* out) {
  exp_map_impl(x, n, m, k, c, w, out);
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

namespace {
// log|eps_j| of a class (row_math.h soft_log_abs_eps, branch-free); *neg: eps_j < 0.
HL_INLINE float log_abs_eps(float log_p, float qh, bool* neg) {
  const float e = exp_of(log_p) - qh;
  *neg = qh != 0.0f && e < 0.0f;
  return qh == 0.0f ? log_p : log_of(e < 0.0f ? -e : e);
}
}  // namespace

HL_CLONES double soft_eps(const float* __restrict x, const float* __restrict q, int64_t n, float m, float log_s,
                          float t_div, float k, float* __restrict kla, float* s_neg) {
  float lneg[kLanes] = {};
  double lq[kLanes] = {};
  auto one = [&](int64_t i, float& neg_acc, double& q_acc) {
    bool neg;
    const float v = k * log_abs_eps((x[i] - m) - log_s, q[i] / t_div, &neg);
    neg_acc += neg ? exp_of(v) : 0.0f;
    kla[i] = neg ? -__builtin_inff() : v;
    q_acc += q[i];
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) one(i + j, lneg[j], lq[j]);
  float sn = 0.0f;
  double sq = 0.0;
  for (; i < n; ++i) one(i, sn, sq);
  for (int j = 0; j < kLanes; ++j) sn += lneg[j], sq += lq[j];
  *s_neg += sn;
  return sq;
}

HL_CLONES void soft_grad_k1(const float* __restrict x, const float* __restrict q, int64_t n, float lse,
                            float lse_lo, float t, float g, float* __restrict out) {
  for (int64_t i = 0; i < n; ++i) out[i] = g * (t * exp_of((x[i] - lse) - lse_lo) - q[i]);
}

HL_CLONES void soft_grad(const float* __restrict x, const float* __restrict q, int64_t n, float lse, float lse_lo,
                         float t, float k, float c_pos, float g, float* __restrict out) {
  const float t_div = t != 0.0f ? t : 1.0f;
  const float gs = t < 0.0f ? -g : g;  // sign(t) of the positive classes
  for (int64_t i = 0; i < n; ++i) {
    bool neg;
    const float kla = k * log_abs_eps((x[i] - lse) - lse_lo, q[i] / t_div, &neg);
    // row_math.h soft_f: -t |eps|^k for eps < 0, sign(t) exp(k log eps + c_pos) otherwise
    const float v = exp_of(neg ? kla : kla + c_pos);
    out[i] = neg ? -g * t * v : gs * v;
  }
}

}  // namespace cpu
}  // namespace hl

#include "cpu/chunk_math.h"

#include <cmath>
#include <limits>

#include "cpu/vec_math.h"

namespace hl {
namespace cpu {
namespace {

HL_INLINE float exp_of(float x) { return fast_exp(x); }
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

}  // namespace cpu
}  // namespace hl

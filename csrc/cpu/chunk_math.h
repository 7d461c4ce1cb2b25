// Vectorised loops over a chunk of a row (a few KB, in L1), the only hot loops of the CPU
// kernels: max, sum of exponentials, and the exponential map that writes the gradient.
// The float versions are compiled once per instruction set (HL_CLONES, vec_math.h) and use
// the branch-free fast_exp, so GCC vectorises them; the double versions use libm's exp.
#pragma once

#include <cstdint>

namespace hl {
namespace cpu {

// Elements per chunk: two chunk buffers (input in float, exp terms) stay in L1.
constexpr int64_t kChunk = 2048;

// max of x[0, n), -inf for n == 0; NaN entries are skipped (see has_nan).
float chunk_max(const float* x, int64_t n);
double chunk_max(const double* x, int64_t n);

bool has_nan(const float* x, int64_t n);
bool has_nan(const double* x, int64_t n);

// sum_i exp(k (x_i - m)); tmp holds n scratch elements.
float sum_exp(const float* x, int64_t n, float m, float k, float* tmp);
double sum_exp(const double* x, int64_t n, double m, double k, double* tmp);

// out_i = w exp(k (x_i - m) + c); out must not alias x.
void exp_map(const float* x, int64_t n, float m, float k, float c, float w, float* out);
void exp_map(const double* x, int64_t n, double m, double k, double c, double w, double* out);

}  // namespace cpu
}  // namespace hl

// Vectorised loops over a chunk of a row (a few KB, in L1), the only hot loops of the CPU
// kernels: max, sum of exponentials, the exponential map that writes the one-hot gradient,
// and the soft-target terms (float only: fp64 rows take row_math.h's scalar functions).
// The float versions are compiled once per instruction set (HL_CLONES, vec_math.h) and use
// the branch-free fast_exp, so GCC vectorises them; the double versions use libm's exp.
#pragma once

#include <cstdint>

namespace hl {
namespace cpu {

// Elements per chunk: two chunk buffers (input in float, exp terms) stay in L1.
constexpr int64_t kChunk = 2048;

// (max, sum exp(x - max), sum exp(k (x - max))) of x[0, n) in one call (a short row pays per
// call). Nothing but -inf: (-inf, 0, 0); a NaN with nothing finite: NaN throughout (the max
// skips NaN, the sums carry it).
struct ChunkStats {
  float m, s1, sk;
};
struct ChunkStatsD {
  double m, s1, sk;
};
ChunkStats chunk_stats(const float* x, int64_t n, float k);
ChunkStatsD chunk_stats(const double* x, int64_t n, double k);

// out_i = w exp(k (x_i - m) + c); out must not alias x.
void exp_map(const float* x, int64_t n, float m, float k, float c, float w, float* out);
void exp_map(const double* x, int64_t n, double m, double k, double c, double w, double* out);

// Logit soft-capping and the finish of a row's gradient (row_math.h section 6), vectorised:
// softcap_map: out_i = c tanh(x_i / c); softcap_slope_map also slope_i = 1 - tanh^2(x_i / c)
// (row_math.h softcap_slope); finish_map: out_i = (gf_i + g_lse p_i) slope_i with
// p_i = exp((zc_i - lse) - lse_lo) (g_lse == 0: no exp; slope == nullptr: no cap).
void softcap_map(const float* x, int64_t n, float c, float* out);
void softcap_slope_map(const float* x, int64_t n, float c, float* out, float* slope);
void finish_map(const float* zc, const float* slope, const float* gf, int64_t n, float g_lse, float lse, float lse_lo,
                float* out);

// The target q of a soft row over a chunk: q_j = w_j (a p_j + b); p or w may be null (0 / 1).
void fill_q(const float* p, const float* w, int64_t n, float a, float b, float* q);

// What the forward pass needs of q over a chunk, relative to the chunk's finite max m:
// t = sum q and d = sum_{q_j != 0} q_j (m - x_j), both accumulated in double (a long fp32 row
// summed in float loses ~1e-5), and min / max q (to find a dominant class).
struct SoftTerms {
  double t;
  double d;
  float qmin;
  float qmax;
};
SoftTerms soft_terms(const float* x, const float* q, int64_t n, float m);

// The backward of a soft row at k != 1 (row_math.h soft_eps_class and soft_f, vectorised), in
// two passes over the row. Pass 1, soft_eps over a chunk: log p_j = (x_j - m) - log_s,
// qh_j = q_j / t_div; returns the chunk's SoftEpsStats (k log|eps_j| as online max and sum,
// over the negative and over the positive classes apart) and writes
//   w_j = -exp(k log|eps_j| - refs[2b + 1]) (eps_j < 0),  exp(k log eps_j - refs[2b]) (eps_j >= 0),
//   +inf (dominant)
// with refs[2b] / refs[2b + 1] the max of k log|eps| over the positives / negatives of block b
// (kEpsBlock classes; -inf when none): relative to the block's max, no |eps|^k underflows that
// matters to the sums. The dominant class, 2 q_j > star_t (star_t = +inf: none), is left out of
// the statistics; its own eps needs the others' sum of q (in double) and of p.
constexpr int64_t kEpsBlock = 256;
struct SoftEpsChunk {
  float m_neg;
  float s_neg;
  float m_pos;
  float s_pos;
  double q_rest;
  float p_rest;
};
// kla / side: nullptr, or soft_shard_stats' kept pass over the chunk (row_math.h
// soft_shard_class_kept: k log|eps_j| and the class's side, (0, kSideStar) at the dominant class).
SoftEpsChunk soft_eps(const float* x, const float* q, int64_t n, float m, float log_s, float t_div,
                      float star_t, float k, float* w, float* refs, float* kla = nullptr, int8_t* side = nullptr);

// Pass 2, soft_scale: out_j = g f_j from w once the row's c_pos and f_star are known:
// g_sign = g sign(t), c_neg = log|t| (f_j = -t |eps_j|^k), g_f_star = g f_star.
void soft_scale(const float* w, const float* refs, int64_t n, float g_sign, float c_neg, float c_pos,
                float g_f_star, float* out);

// g f_j of a soft row at k != 1 from stats in the complete form (row_math.h soft_fj; another
// backend's forward made pass 2): log p_j = (x_j - lse) - lse_lo, qh_j = q_j / t_div (t_div:
// t, or 1 when t == 0), f_j = -t |eps_j|^k (eps_j < 0), sign(t) exp(k log eps_j + c_pos)
// (eps_j >= 0), and g_f_star = g f_star on the dominant class, 2 q_j > star_t (+inf: none).
void soft_grad_complete(const float* x, const float* q, int64_t n, float lse, float lse_lo, float t, float t_div,
                        float c_pos, float star_t, float k, float g, float g_f_star, float* out);

// g f_j from soft_shard_stats' kept pass (row_math.h soft_kept_f), the numbers
// soft_grad_complete computes from the logits: -t exp(kla_j) (kSideNeg), sign(t) exp(kla_j +
// c_pos) (kSidePos), g_f_star = g f_star (kSideStar). out may be kla.
void kept_grad_map(const float* kla, const int8_t* side, int64_t n, float g, float t, float c_pos, float g_f_star,
                   float* out);

// g f_j of a soft row at k == 1 over a chunk: g (t p_j - q_j), log p_j = (x_j - lse) - lse_lo
// (the caller handles t == 0). In a row whose dominant class takes f_star at k == 1
// (star_t = t; +inf: none) it also returns the other classes' sum of f_j = t p_j - q_j and the
// dominant class's index in the chunk (-1: not here; row_math.h is_star_k1), whose entry the
// caller rewrites as minus that sum (the row's f sums to 0; row_math.h star_f1).
struct K1Rest {
  double rest;
  int64_t star;
};
K1Rest soft_grad_k1(const float* x, const float* q, int64_t n, float lse, float lse_lo, float t, float g,
                    float star_t, float* out);

}  // namespace cpu
}  // namespace hl

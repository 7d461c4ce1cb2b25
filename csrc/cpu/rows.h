// One row of the fused op on the CPU: loops and dtype glue around csrc/row_math.h, which
// holds all the math. scalar_t is the logits' dtype, acc_t the accumulation type (float for
// float/half/bfloat16, double for double).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu/chunk_math.h"
#include "row_math.h"

namespace hl {
namespace cpu {

// Scratch of one thread: a chunk of the row in acc_t, and the chunk's exp terms.
template <typename acc_t>
struct Scratch {
  acc_t x[kChunk];
  acc_t tmp[kChunk];
};

// Elements [a, a + n) of a row as acc_t: the row itself when no conversion is needed.
template <typename scalar_t, typename acc_t>
inline const acc_t* load(const scalar_t* row, int64_t a, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return row + a;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(row[a + i]);
    return buf;
  }
}

template <typename scalar_t, typename acc_t>
inline void store(scalar_t* row, int64_t a, int64_t n, const acc_t* src) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(row + a, src, n * sizeof(acc_t));
  } else {
    for (int64_t i = 0; i < n; ++i) row[a + i] = static_cast<scalar_t>(src[i]);
  }
}

// One-hot statistics (max, sum exp, sum exp k) of x[0, n), as row_math's OneHotStats.
template <typename acc_t>
inline OneHotStats<acc_t> range_stats(const acc_t* x, int64_t n, acc_t k, acc_t* tmp) {
  if (n == 0) return onehot_init<acc_t>();
  const acc_t m = chunk_max(x, n);
  if (m == -hl_inf<acc_t>()) {  // nothing but -inf and NaN: a NaN must still poison the row
    if (!has_nan(x, n)) return onehot_init<acc_t>();
    return {hl_nan<acc_t>(), hl_nan<acc_t>(), hl_nan<acc_t>()};
  }
  const acc_t s1 = sum_exp(x, n, m, acc_t(1), tmp);
  const acc_t sk = k == acc_t(1) ? s1 : sum_exp(x, n, m, k, tmp);
  return {m, s1, sk};
}

// Statistics over the whole row except class `skip` (-1: none), one read of the row.
template <typename scalar_t, typename acc_t>
inline OneHotStats<acc_t> row_stats(const scalar_t* row, int64_t C, int64_t skip, acc_t k, Scratch<acc_t>& s) {
  OneHotStats<acc_t> st = onehot_init<acc_t>();
  for (int64_t a = 0; a < C; a += kChunk) {
    const int64_t n = std::min(kChunk, C - a);
    const acc_t* x = load(row, a, n, s.x);
    if (skip >= a && skip < a + n) {  // the label splits its chunk in two
      st = onehot_merge(st, range_stats(x, skip - a, k, s.tmp), k);
      st = onehot_merge(st, range_stats(x + (skip - a) + 1, a + n - skip - 1, k, s.tmp), k);
    } else {
      st = onehot_merge(st, range_stats(x, n, k, s.tmp), k);
    }
  }
  return st;
}

// A row whose label is ignore_index (loss 0, gradient 0) or outside [0, C) (NaN, and the
// label is never used as an index). Its logsumexp is still returned.
template <typename scalar_t, typename acc_t>
inline void invalid_row(const scalar_t* row, scalar_t* grad, int64_t C, bool ignored, Scratch<acc_t>& s,
                        acc_t* loss, acc_t* lse) {
  const OneHotStats<acc_t> st = row_stats(row, C, -1, acc_t(1), s);
  *lse = lse_value(LseStats<acc_t>{st.m, st.s1});
  const acc_t v = ignored ? acc_t(0) : hl_nan<acc_t>();
  *loss = v;
  if (grad != nullptr) std::fill(grad, grad + C, static_cast<scalar_t>(v));
}

// One-hot path (SPEC "Numerics"). grad may be the row itself (fwd_inplace): every chunk is
// read before it is written, and z_y is read before the gradient pass.
template <typename scalar_t, typename acc_t>
inline void onehot_row(const scalar_t* row, scalar_t* grad, int64_t C, int64_t y, acc_t w_y, acc_t k,
                       Scratch<acc_t>& s, acc_t* loss, acc_t* lse) {
  const OneHotStats<acc_t> st = row_stats(row, C, y, k, s);
  const OneHotRow<acc_t> r = onehot_finalize(st, static_cast<acc_t>(row[y]), w_y, k);
  *loss = r.loss;
  *lse = r.lse;
  if (grad == nullptr) return;
  for (int64_t a = 0; a < C; a += kChunk) {
    const int64_t n = std::min(kChunk, C - a);
    exp_map(load(row, a, n, s.x), n, r.m, k, r.log_c, r.w_y, s.tmp);  // onehot_fj, vectorised
    store(grad, a, n, s.tmp);
  }
  grad[y] = static_cast<scalar_t>(r.f_y);
}

// Soft path (label smoothing, mixture row, probabilities): three passes over the row with the
// target q_j = q(j), weights folded in. Not the hot path of the library, so plain loops.
template <typename scalar_t, typename acc_t, typename Q>
inline void soft_row(const scalar_t* row, scalar_t* grad, int64_t C, acc_t k, const Q& q, acc_t* loss,
                     acc_t* lse) {
  LseStats<acc_t> ls = lse_init<acc_t>();
  acc_t t = 0;
  for (int64_t j = 0; j < C; ++j) {
    lse_push(ls, static_cast<acc_t>(row[j]));
    t += q(j);
  }
  const acc_t l = lse_value(ls);
  const acc_t t_div = t != acc_t(0) ? t : acc_t(1);  // qh = q / t; t == 0 gives f = 0
  acc_t sum = 0;
  SoftEpsStats<acc_t> es = soft_eps_init<acc_t>();
  for (int64_t j = 0; j < C; ++j) {
    const acc_t z = static_cast<acc_t>(row[j]), qj = q(j);
    sum += soft_loss_term(qj, z, l);
    if (grad != nullptr) {
      bool neg;
      const acc_t la = soft_log_abs_eps(z, l, qj / t_div, &neg);
      soft_eps_push(es, k * la, neg);
    }
  }
  *loss = sum;
  *lse = l;
  if (grad == nullptr) return;
  const SoftRow<acc_t> r = soft_finalize(es, t);
  for (int64_t j = 0; j < C; ++j) {  // reads z_j before writing grad_j: in-place safe
    bool neg;
    const acc_t la = soft_log_abs_eps(static_cast<acc_t>(row[j]), l, q(j) / t_div, &neg);
    grad[j] = static_cast<scalar_t>(soft_f(r, k * la, neg));
  }
}

}  // namespace cpu
}  // namespace hl

// The soft path (label smoothing, mixture rows, probabilities) of the CPU kernel, vectorised
// for float accumulation (fp32 / fp16 / bf16 logits): chunk by chunk, the targets q are
// filled as a float chunk (rows.h *Target::fill) and the loops of chunk_math.h run over
// logits and targets together. fp64 rows take rows.h's scalar soft_row / soft_grad_row.
// The per-row statistics and their merges are row_math.h's, as on every backend.
#pragma once

#include <cstring>
#include <type_traits>

#include "cpu/rows.h"

namespace hl {
namespace cpu {

// Forward. Pass 1, one read of the row: per chunk its max, sum exp and the target terms
// (chunk_math.h soft_terms) relative to its own max r, merged exactly: sum_j q_j (R - z_j)
// moves to a new reference R' by adding t (R' - R), in double. Pass 2 (a gradient with
// k != 1 only): the |eps|^k statistics, the dominant class masked (x = -inf, q = 0) and its
// other classes' log-sum-exp and target mass kept for its own eps (row_math.h StarRest).
template <typename scalar_t, typename Q>
inline void soft_row_vec(const scalar_t* row, int64_t C, float k, const Q& q, bool compute_grad,
                         Scratch<float>& s, float* loss, float* stats) {
  LseStats<float> lse_st = lse_init<float>();
  double t = 0.0, d = 0.0, ref = 0.0;  // d = sum_j q_j (ref - z_j)
  float qmin = hl_inf<float>(), qmax = -hl_inf<float>();
  for (int64_t a = 0; a < C; a += kChunk) {
    const int64_t n = std::min(kChunk, C - a);
    const float* x = load(row, a, n, s.x);
    const float* qc = q.fill(a, n, s.q);
    const float mc = chunk_max(x, n);
    float r = mc;  // the chunk's reference; 0 for a chunk of -inf (and NaN) only
    if (mc == -hl_inf<float>()) {
      r = 0.0f;
      if (has_nan(x, n)) lse_st = lse_merge(lse_st, LseStats<float>{hl_nan<float>(), hl_nan<float>()});
    } else {
      lse_st = lse_merge(lse_st, LseStats<float>{mc, sum_exp(x, n, mc, 1.0f, s.tmp)});
    }
    const SoftTerms st = soft_terms(x, qc, n, r);
    if (a == 0) ref = r;
    if (ref < r) d += t * (r - ref), ref = r;
    d += st.d + st.t * (ref - r);
    t += st.t;
    qmin = st.qmin < qmin ? st.qmin : qmin;
    qmax = st.qmax > qmax ? st.qmax : qmax;
  }
  const float m = lse_st.m, log_s = hl_log(lse_st.s);
  if (m > -hl_inf<float>() && m < hl_inf<float>()) d += t * (m - ref);  // relative to the row max
  const float tf = static_cast<float>(t);
  *loss = soft_loss_value(static_cast<float>(d), tf, m, log_s);
  const LseSplit<float> lse = lse_split(lse_st);
  if (!soft_needs_eps(compute_grad, k))
    return put_stats(stats, lse, compute_grad ? tf : 0.0f, 0.0f, 0.0f, 0.0f);

  const bool star = soft_star(QMass<float>{{tf, 0.0f}, qmin, qmax}, tf);
  const float t_div = tf != 0.0f ? tf : 1.0f;
  SoftEpsStats<float> es = soft_eps_init<float>();
  StarRest<float> rest = star_rest_init<float>();
  for (int64_t a = 0; a < C; a += kChunk) {
    const int64_t n = std::min(kChunk, C - a);
    const float* x = load(row, a, n, s.x);
    const float* qc = q.fill(a, n, s.q);
    if (star) {  // mask the dominant class, if it is in this chunk
      for (int64_t j = 0; j < n; ++j) {
        if (!is_star(true, qc[j], tf)) continue;
        if (x != s.x) std::memcpy(s.x, x, n * sizeof(float)), x = s.x;
        if (qc != s.q) std::memcpy(s.q, qc, n * sizeof(float)), qc = s.q;
        s.x[j] = -hl_inf<float>();
        s.q[j] = 0.0f;
        break;
      }
    }
    float s_neg = 0.0f;
    const double q_rest = soft_eps(x, qc, n, m, log_s, t_div, k, s.tmp, &s_neg);
    const float m_pos = chunk_max(s.tmp, n);
    const float s_pos = m_pos == -hl_inf<float>() ? 0.0f : sum_exp(s.tmp, n, m_pos, 1.0f, nullptr);
    es = soft_eps_merge(es, SoftEpsStats<float>{s_neg, m_pos, s_pos});
    if (star) {  // the other classes' log p = (z - m) - log_s, and their target mass
      const OneHotStats<float> o = range_stats(x, n, 1.0f, s.tmp);
      if (o.m != -hl_inf<float>()) rest.p = lse_merge(rest.p, LseStats<float>{(o.m - m) - log_s, o.s1});
      csum_add(rest.q, static_cast<float>(q_rest));
    }
  }
  const SoftRow<float> r = soft_row_finalize(es, rest, tf, star, k, lse.hi);
  put_stats(stats, lse, r.t, r.c_pos, r.f_star, r.star);
}

// Backward: g f_j chunk by chunk; at k != 1 the dominant class then gets f_star.
template <typename scalar_t, typename Q>
inline void soft_grad_row_vec(const scalar_t* row, scalar_t* out, int64_t C, float k, const Q& q, float g,
                              const float* stats, Scratch<float>& s) {
  const float lse = stats[kColLse], lse_lo = stats[kColLseLo];
  const SoftRow<float> r{stats[kColScale], stats[3], stats[4], stats[5]};
  if (k == 1.0f && r.t == 0.0f) return std::fill(out, out + C, static_cast<scalar_t>(0));  // soft_fj
  for (int64_t a = 0; a < C; a += kChunk) {
    const int64_t n = std::min(kChunk, C - a);
    const float* x = load(row, a, n, s.x);
    const float* qc = q.fill(a, n, s.q);
    if (k == 1.0f) {
      soft_grad_k1(x, qc, n, lse, lse_lo, r.t, g, s.tmp);
    } else {
      soft_grad(x, qc, n, lse, lse_lo, r.t, k, r.c_pos, g, s.tmp);
      if (r.star != 0.0f)
        for (int64_t j = 0; j < n; ++j)
          if (is_star(true, qc[j], r.t)) s.tmp[j] = g * r.f_star;
    }
    store(out, a, n, s.tmp);  // out may be the row itself: every chunk is read before written
  }
}

// The soft rows of either accumulation type.
template <typename scalar_t, typename acc_t, typename Q>
inline void soft_fwd_row(const scalar_t* row, int64_t C, acc_t k, const Q& q, bool compute_grad,
                         Scratch<acc_t>& s, acc_t* loss, acc_t* stats) {
  if constexpr (std::is_same_v<acc_t, float>) {
    soft_row_vec(row, C, k, q, compute_grad, s, loss, stats);
  } else {
    soft_row(row, C, k, q, compute_grad, s, loss, stats);
  }
}

template <typename scalar_t, typename acc_t, typename Q>
inline void soft_bwd_row(const scalar_t* row, scalar_t* out, int64_t C, acc_t k, const Q& q, acc_t g,
                         const acc_t* stats, Scratch<acc_t>& s) {
  if constexpr (std::is_same_v<acc_t, float>) {
    soft_grad_row_vec(row, out, C, k, q, g, stats, s);
  } else {
    soft_grad_row(row, out, C, k, q, g, stats);
  }
}

}  // namespace cpu
}  // namespace hl

// The soft path (label smoothing, mixture rows, probabilities) of the CPU kernel, vectorised
// for float accumulation (fp32 / fp16 / bf16 logits): chunk by chunk, the targets q are
// filled as a float chunk (rows.h *Target::fill) and the loops of chunk_math.h run over
// logits and targets together. fp64 rows take rows.h's scalar soft_row / soft_grad_row, which
// split the work between forward and backward the same way.
// The per-row statistics and their merges are row_math.h's, as on every backend.
#pragma once

#include <cstring>
#include <type_traits>

#include "cpu/rows.h"

namespace hl {
namespace cpu {

// Forward, one read of the row: per chunk its max, sum exp and the target terms
// (chunk_math.h soft_terms) relative to its own max r, merged exactly: sum_j q_j (R - z_j)
// moves to a new reference R' by adding t (R' - R), in double. The |eps|^k statistics are
// the backward's (soft_grad_row_vec).
template <typename scalar_t, typename Q>
inline void soft_row_vec(const scalar_t* row, int64_t C, const Q& q, float k, bool compute_grad, Scratch<float>& s,
                         float* loss, float* stats) {
  LseStats<float> lse_st = lse_init<float>();
  double t = 0.0, d = 0.0, ref = 0.0;  // d = sum_j q_j (ref - z_j)
  float qmin = hl_inf<float>(), qmax = -hl_inf<float>();
  for (int64_t a = 0; a < C; a += kChunk) {
    const int64_t n = std::min(kChunk, C - a);
    const float* x = load(row, a, n, s.x);
    const float* qc = q.fill(a, n, s.q);
    const ChunkStats c = chunk_stats(x, n, 1.0f);
    lse_st = lse_merge(lse_st, LseStats<float>{c.m, c.s1});
    const float r = c.m > -hl_inf<float>() ? c.m : 0.0f;  // the chunk's reference (-inf / NaN only: 0)
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
  put_soft_stats(stats, m, log_s, tf, soft_star(QMass<float>{{tf, 0.0f}, qmin, qmax}, tf, k), compute_grad);
}

// Backward. k == 1: g (t p_j - q_j) chunk by chunk; a dominant class that takes f_star
// (row_math.h is_star_k1) is rewritten at the end: with f_star from stats in the complete form
// (row_math.h soft_tag), or in the deferred form (this kernel's forward) as minus the others'
// sum, gathered in the same pass (the row may be the output). k != 1, complete form: g f_j in
// one pass (chunk_math.h soft_grad_complete). k != 1, deferred form: pass 1 (chunk_math.h
// soft_eps) gathers the |eps|^k statistics and leaves each class's |eps|^k in s.w, pass 2
// scales them by the row's constants (soft_scale); both passes read the row (and q) once.
template <typename scalar_t, typename Q>
inline void soft_grad_row_vec(const scalar_t* row, scalar_t* out, int64_t C, float k, const Q& q, float g,
                              const float* stats, Scratch<float>& s) {
  const float lse = stats[kColLse], lse_lo = stats[kColLseLo], t = stats[kColScale];
  const bool deferred = soft_tag_deferred(stats[kColStar]);
  auto put = [&](int64_t a, int64_t n, auto&& write) {  // write n values at out + a
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (out != row) return write(out + a);
    }
    write(s.tmp);
    store(out, a, n, s.tmp);  // out may be the row itself: this chunk has been read already
  };
  if (k == 1.0f) {
    if (t == 0.0f) {  // no target mass: f = 0, NaN for a row of NaN / +inf logits (soft_fj); g f, so
                      // that g = inf (a mean over zero total weight) gives NaN, as PyTorch
      const float f = hl_abs(lse) < hl_inf<float>() ? 0.0f : hl_nan<float>();
      return std::fill(out, out + C, static_cast<scalar_t>(g * f));
    }
    const float star_t = soft_tag_star(stats[kColStar]) ? t : hl_inf<float>();
    double rest = 0.0;
    int64_t star = -1;
    for (int64_t a = 0; a < C; a += kChunk) {
      const int64_t n = std::min(kChunk, C - a);
      const float* x = load(row, a, n, s.x);
      const float* qc = q.fill(a, n, s.q);
      put(a, n, [&](float* o) {
        const K1Rest r = soft_grad_k1(x, qc, n, lse, lse_lo, t, g, star_t, o);
        rest += r.rest;
        if (r.star >= 0) star = a + r.star;
      });
    }
    if (star < 0) return;
    const float f_star = deferred ? static_cast<float>(star_f1<double>(rest, lse)) : stats[4];
    out[star] = static_cast<scalar_t>(g * f_star);
    return;
  }
  const bool star = soft_tag_star(stats[kColStar]);
  if (!deferred) {
    const float t_div = t != 0.0f ? t : 1.0f, star_t = star ? t : hl_inf<float>();
    const float c_pos = stats[3], g_f_star = g * stats[4];
    for (int64_t a = 0; a < C; a += kChunk) {
      const int64_t n = std::min(kChunk, C - a);
      const float* x = load(row, a, n, s.x);
      const float* qc = q.fill(a, n, s.q);
      put(a, n, [&](float* o) {
        soft_grad_complete(x, qc, n, lse, lse_lo, t, t_div, c_pos, star_t, k, g, g_f_star, o);
      });
    }
    return;
  }
  const float m = stats[kColMax], log_s = stats[kColLogS];  // log p = (z - m) - log s (put_soft_stats)
  const float t_div = t != 0.0f ? t : 1.0f, star_t = star ? t : hl_inf<float>();
  s.w.resize(C);
  s.refs.resize(2 * ((C + kEpsBlock - 1) / kEpsBlock));
  SoftEpsStats<float> es = soft_eps_init<float>();
  StarRest<float> rest = star_rest_init<float>();
  float p_rest = 0.0f;  // sum p_i over the classes other than the dominant one
  for (int64_t a = 0; a < C; a += kChunk) {  // kChunk is a multiple of kEpsBlock
    const int64_t n = std::min(kChunk, C - a);
    const float* x = load(row, a, n, s.x);
    const SoftEpsChunk e = soft_eps(x, q.fill(a, n, s.q), n, m, log_s, t_div, star_t, k, s.w.data() + a,
                                    s.refs.data() + 2 * (a / kEpsBlock));
    es = soft_eps_merge(es, SoftEpsStats<float>{e.m_neg, e.s_neg, e.m_pos, e.s_pos});
    csum_add(rest.q, static_cast<float>(e.q_rest));
    p_rest += e.p_rest;
  }
  // The dominant class's eps* = A - P needs P = sum of the others' p in the log domain when it
  // is tiny (a confident row; small k must still see P^k). Summed as floats, p_i < 2^-126
  // flush to 0, which costs a relative 1e-11 of P >= 1e-20 even for 10^7 classes; below that,
  // one more pass gives the others' log-sum-exp exactly.
  if (star && p_rest >= 1e-20f) {
    rest.p = LseStats<float>{hl_log(p_rest), 1.0f};
  } else if (star) {
    for (int64_t a = 0; a < C; a += kChunk) {
      const int64_t n = std::min(kChunk, C - a);
      const float* x = load(row, a, n, s.x);
      if (x != s.x) std::memcpy(s.x, x, n * sizeof(float));
      for (int64_t j = 0; j < n; ++j)
        if (s.w[a + j] == hl_inf<float>()) s.x[j] = -hl_inf<float>();  // the dominant class
      const OneHotStats<float> o = range_stats(s.x, n, 1.0f);
      if (o.m != -hl_inf<float>()) rest.p = lse_merge(rest.p, LseStats<float>{(o.m - m) - log_s, o.s1});
    }
  }
  const SoftRow<float> r = soft_row_finalize(es, rest, t, star, k, lse);
  const float g_sign = t < 0.0f ? -g : g, c_neg = std::log(std::abs(t));
  for (int64_t a = 0; a < C; a += kChunk) {
    const int64_t n = std::min(kChunk, C - a);
    put(a, n, [&](float* o) { soft_scale(s.w.data() + a, s.refs.data() + 2 * (a / kEpsBlock), n, g_sign,
                                         c_neg, r.c_pos, g * r.f_star, o); });
  }
}

// The soft rows of either accumulation type.
template <typename scalar_t, typename acc_t, typename Q>
inline void soft_fwd_row(const scalar_t* row, int64_t C, const Q& q, acc_t k, bool compute_grad, Scratch<acc_t>& s,
                         acc_t* loss, acc_t* stats) {
  if constexpr (std::is_same_v<acc_t, float>) {
    soft_row_vec(row, C, q, k, compute_grad, s, loss, stats);
  } else {
    soft_row(row, C, q, k, compute_grad, s, loss, stats);
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

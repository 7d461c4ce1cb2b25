// One row of the fused op on the CPU: loops and dtype glue around csrc/row_math.h, which
// holds all the math. scalar_t is the logits' dtype, acc_t the accumulation type (float for
// float/half/bfloat16, double for double).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include <ATen/core/Tensor.h>

#include "cpu/chunk_math.h"
#include "row_math.h"

namespace hl {
namespace cpu {

// Rows per parallel task (forward and backward alike): at least ~16K elements, so small-C
// batches are not split finer than the threads' start-up cost.
inline int64_t grain(int64_t C) { return std::max<int64_t>(1, 16384 / C); }

// An optional weight / mixture as a contiguous tensor, undefined when absent.
inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

// Scratch of one thread: a chunk of the row in acc_t, the chunk's exp terms, its targets.
template <typename acc_t>
struct Scratch {
  acc_t x[kChunk];
  acc_t tmp[kChunk];
  float q[kChunk];       // a soft row's targets (soft_rows.h)
  std::vector<float> w;  // a soft row's |eps|^k at k != 1, and the blocks' references
  std::vector<float> refs;
  std::vector<acc_t> zc;     // a row's soft-capped logits, the cap's slope at each, and its
  std::vector<acc_t> slope;  // gradient before the finish (row_math.h section 6; capped_row,
  std::vector<acc_t> gz;     // finish_row)
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

// Softcap and the logsumexp's gradient (row_math.h section 6): a row that needs either is read
// once into s.zc as acc_t (capped), and the usual paths run on that buffer; in backward the cap's
// slope goes into s.slope on the same read, the paths write g f into s.gz, and finish_row adds
// g_lse p, applies the slope and stores. Rows of a call without either take the paths as
// before, on the logits themselves.
// float rows take the vectorised chunk_math.h loops, double rows row_math.h's scalar functions.
template <typename scalar_t, typename acc_t>
inline const acc_t* capped_row(const scalar_t* row, int64_t C, acc_t cap, std::vector<acc_t>& zc, acc_t* buf,
                               std::vector<acc_t>* slope = nullptr) {
  zc.resize(C);
  const bool with_slope = slope != nullptr && cap != acc_t(0);
  if (with_slope) slope->resize(C);
  if constexpr (std::is_same_v<acc_t, float>) {
    for (int64_t a = 0; a < C; a += kChunk) {
      const int64_t n = std::min(kChunk, C - a);
      const float* x = load(row, a, n, buf);
      if (with_slope) softcap_slope_map(x, n, cap, zc.data() + a, slope->data() + a);
      else if (cap != 0.0f) softcap_map(x, n, cap, zc.data() + a);
      else std::memcpy(zc.data() + a, x, n * sizeof(float));
    }
  } else {
    for (int64_t j = 0; j < C; ++j) {
      const acc_t z = static_cast<acc_t>(row[j]);
      zc[j] = softcap_value(z, cap);
      if (with_slope) (*slope)[j] = softcap_slope(z, cap);
    }
  }
  return zc.data();
}

// slope: the cap's, from capped_row, or nullptr without a cap.
template <typename scalar_t, typename acc_t>
inline void finish_row(const acc_t* zc, const acc_t* slope, const acc_t* gf, int64_t C, acc_t g_lse,
                       const acc_t* stats, scalar_t* out, acc_t* buf) {
  const acc_t lse = stats[kColLse], lse_lo = stats[kColLseLo];
  if constexpr (std::is_same_v<acc_t, float>) {
    for (int64_t a = 0; a < C; a += kChunk) {
      const int64_t n = std::min(kChunk, C - a);
      finish_map(zc + a, slope != nullptr ? slope + a : nullptr, gf + a, n, g_lse, lse, lse_lo, buf);
      store(out, a, n, buf);
    }
  } else {
    for (int64_t j = 0; j < C; ++j) {
      const acc_t g = add_lse_grad(gf[j], zc[j], g_lse, lse, lse_lo);
      out[j] = static_cast<scalar_t>(slope != nullptr ? g * slope[j] : g);
    }
  }
}

// One gradient row by bwd's rules, for every backward of the CPU (bwd.cpp, soft_shard.cpp): a
// zero row is written as zeros; without a softcap or a logsumexp gradient run(row, out) writes
// g f straight from the logits; with either, run(capped acc_t row, s.gz), then finish_row.
template <typename scalar_t, typename acc_t, typename Run>
inline void grad_row(const scalar_t* row, scalar_t* out, int64_t C, bool zero, acc_t cap, acc_t g_lse,
                     const acc_t* stats, Scratch<acc_t>& s, Run&& run) {
  if (zero) return std::fill(out, out + C, static_cast<scalar_t>(0));
  if (cap == acc_t(0) && g_lse == acc_t(0)) return run(row, out);
  const acc_t* zc = capped_row(row, C, cap, s.zc, s.x, &s.slope);
  s.gz.resize(C);
  run(zc, s.gz.data());
  finish_row(zc, cap != acc_t(0) ? s.slope.data() : nullptr, s.gz.data(), C, g_lse, stats, out, s.tmp);
}

// One-hot statistics (max, sum exp, sum exp k) of x[0, n), as row_math's OneHotStats.
template <typename acc_t>
inline OneHotStats<acc_t> range_stats(const acc_t* x, int64_t n, acc_t k) {
  if (n == 0) return onehot_init<acc_t>();
  const auto c = chunk_stats(x, n, k);
  return {c.m, c.s1, c.sk};
}

// Statistics over the whole row except class `skip` (-1: none), one read of the row. The
// chunk holding `skip` is copied with -inf there (one call over it, not a split in two:
// short rows pay per call).
template <typename scalar_t, typename acc_t>
inline OneHotStats<acc_t> row_stats(const scalar_t* row, int64_t C, int64_t skip, acc_t k, Scratch<acc_t>& s) {
  OneHotStats<acc_t> st = onehot_init<acc_t>();
  for (int64_t a = 0; a < C; a += kChunk) {
    const int64_t n = std::min(kChunk, C - a);
    const acc_t* x = load(row, a, n, s.x);
    if (skip >= a && skip < a + n) {
      if (x != s.x) std::memcpy(s.x, x, n * sizeof(acc_t));
      s.x[skip - a] = -hl_inf<acc_t>();
      x = s.x;
    }
    const OneHotStats<acc_t> c = range_stats(x, n, k);
    st = a == 0 ? c : onehot_merge(st, c, k);
  }
  return st;
}

// The stats of a soft row on the CPU, the deferred form (row_math.h soft_tag): lse, t, the row
// max m and log s = log sum exp(z - m), and kSoftDeferred + the dominant-class flag. c_pos and
// f_star are the backward's; it takes log p = (z - m) - log s as the reference does, which
// holds p - q / t to a few ulp of p where they nearly cancel ((z - lse) - lse_lo rounds at the
// scale of lse).
enum SoftCol : int { kColMax = 3, kColLogS = 4 };
template <typename T>
inline void put_soft_stats(T* stats, T m, T log_s, T t, bool star, bool compute_grad) {
  const LseSplit<T> lse = m == -hl_inf<T>() ? LseSplit<T>{m, T(0)} : lse_split(m, log_s);
  if (!compute_grad) return put_stats(stats, lse, T(0), T(0), T(0), T(0));
  put_stats(stats, lse, t, m, log_s, soft_tag<T>(true, star));
}

// Sums over [0, C) in a two-level tree of blocks (kLeaf classes a leaf, kLeaf leaves a node)
// merged with `merge`: a long row's rounding error grows like 2 kLeaf + C / kLeaf^2 additions
// instead of C (an fp32 row of 32000 classes summed one at a time loses ~1e-5 relative).
template <typename St, typename Push, typename Merge>
inline St blocked_reduce(int64_t C, St init, const Push& push, const Merge& merge) {
  constexpr int64_t kLeaf = 32;
  St total = init, node = init;
  int64_t leaves = 0;
  for (int64_t a = 0; a < C; a += kLeaf) {
    St leaf = init;
    for (int64_t j = a; j < std::min(a + kLeaf, C); ++j) push(leaf, j);
    node = merge(node, leaf);
    if (++leaves == kLeaf) total = merge(total, node), node = init, leaves = 0;
  }
  return merge(total, node);
}

// ---------------------------------------------------------------------------------------
// Forward: loss and stats of a row, one read of the row for the one-hot path.
// ---------------------------------------------------------------------------------------

// A row whose label is ignore_index (loss 0) or outside [0, C) (NaN; the label is never used
// as an index). Its logsumexp is still returned.
template <typename scalar_t, typename acc_t>
inline void invalid_row(const scalar_t* row, int64_t C, bool ignored, Scratch<acc_t>& s, acc_t* loss,
                        acc_t* stats) {
  const OneHotStats<acc_t> st = row_stats(row, C, -1, acc_t(1), s);
  *loss = ignored ? acc_t(0) : hl_nan<acc_t>();
  put_stats(stats, lse_split(LseStats<acc_t>{st.m, st.s1}), acc_t(0), acc_t(0), acc_t(0), acc_t(0));
}

// One-hot path (docs/ROW_MATH.md): statistics over the non-target classes, then the row's
// gradient coefficients.
template <typename scalar_t, typename acc_t>
inline void onehot_row(const scalar_t* row, int64_t C, int64_t y, acc_t w_y, acc_t k, bool compute_grad,
                       Scratch<acc_t>& s, acc_t* loss, acc_t* stats) {
  const OneHotStats<acc_t> st = row_stats(row, C, y, k, s);
  const OneHotRow<acc_t> r = onehot_finalize(st, static_cast<acc_t>(row[y]), w_y, k);
  *loss = r.loss;
  if (!compute_grad) return put_stats(stats, {r.lse, r.lse_lo}, acc_t(0), acc_t(0), acc_t(0), acc_t(0));
  put_stats(stats, {r.lse, r.lse_lo}, r.f_y, r.m, r.log_c, acc_t(0));
}

// log s, s = sum exp(z - m) = 1 + s', for a row of finite max m: log1p of s', the classes but
// one max summed apart and compensated. Summed onto the max's 1, classes of p ~ 1e-15 each lost
// up to half an ulp of 1 (a float64 confident row's loss 80 ulp off; found by the fuzz). fp64
// rows only (one more pass); s1 (the row's sum) is returned for any other row.
template <typename scalar_t, typename acc_t>
inline acc_t log_sum_exp_shifted(const scalar_t* row, int64_t C, acc_t m, acc_t s1) {
  if (!(hl_abs(m) < hl_inf<acc_t>())) return hl_log(s1);
  CSum<acc_t> rest{acc_t(0), acc_t(0)};
  bool max_seen = false;
  for (int64_t j = 0; j < C; ++j) {
    const acc_t v = static_cast<acc_t>(row[j]);
    if (!max_seen && v == m) {
      max_seen = true;
      continue;
    }
    csum_add(rest, hl_exp(v - m));
  }
  return hl_log1p(csum_value(rest));
}

// Soft path (label smoothing, mixture row, probabilities) with the target q_j = q(j), weights
// folded in; scalar, for fp64 rows (soft_rows.h has the vectorised float version). One pass
// for the forward: the row max m and s = sum exp(z - m), then t = sum q and the loss relative
// to m (row_math.h soft_loss_push, compensated sums). The |eps|^k statistics are left to the
// backward (soft_eps_row): only it needs them, and only at k != 1.
template <typename scalar_t, typename acc_t, typename Q>
inline void soft_row(const scalar_t* row, int64_t C, const Q& q, acc_t k, bool compute_grad, Scratch<acc_t>& s,
                     acc_t* loss, acc_t* stats) {
  const OneHotStats<acc_t> st = row_stats(row, C, -1, acc_t(1), s);
  const acc_t m = st.m, log_s = log_sum_exp_shifted(row, C, m, st.s1);
  QMass<acc_t> qm = qmass_init<acc_t>();
  CSum<acc_t> acc{acc_t(0), acc_t(0)};
  for (int64_t j = 0; j < C; ++j) {
    const acc_t qj = q(j);
    qmass_push(qm, qj);
    soft_loss_push(acc, qj, static_cast<acc_t>(row[j]), m);
  }
  const acc_t t = csum_value(qm.t);
  *loss = soft_loss_value(csum_value(acc), t, m, log_s);
  put_soft_stats(stats, m, log_s, t, soft_star(qm, t, k), compute_grad);
}

// ---------------------------------------------------------------------------------------
// Backward: g * the pseudo-gradient of a row from its stats, one read and one write. `out`
// may be the row itself (bwd_inplace): every element is read before it is written.
// ---------------------------------------------------------------------------------------

template <typename scalar_t, typename acc_t>
inline void onehot_grad_row(const scalar_t* row, scalar_t* out, int64_t C, int64_t y, acc_t w_y, acc_t k,
                            acc_t g, const acc_t* stats, Scratch<acc_t>& s) {
  const acc_t f_y = stats[kColScale], m = stats[3], log_c = stats[4];
  for (int64_t a = 0; a < C; a += kChunk) {
    const int64_t n = std::min(kChunk, C - a);
    const acc_t* x = load(row, a, n, s.x);
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (out != row) {  // straight into the output: no staging copy
        exp_map(x, n, m, k, log_c, g * w_y, out + a);  // onehot_fj, vectorised
        continue;
      }
    }
    exp_map(x, n, m, k, log_c, g * w_y, s.tmp);
    store(out, a, n, s.tmp);
  }
  out[y] = static_cast<scalar_t>(g * f_y);
}

// The backward's first pass over a soft row at k != 1: its SoftRow (c_pos, f_star) from the
// |eps|^k statistics (blocked_reduce), the dominant class's eps from the other classes.
template <typename scalar_t, typename acc_t, typename Q>
inline SoftRow<acc_t> soft_eps_row(const scalar_t* row, int64_t C, acc_t k, const Q& q, const acc_t* stats) {
  const acc_t m = stats[kColMax], log_s = stats[kColLogS], t = stats[kColScale];
  const bool star = soft_tag_star(stats[kColStar]);
  const acc_t t_div = t != acc_t(0) ? t : acc_t(1);  // qh = q / t; t == 0 gives f = 0
  struct Eps {
    SoftEpsStats<acc_t> es;
    StarRest<acc_t> rest;
  };
  const Eps e = blocked_reduce(
      C, Eps{soft_eps_init<acc_t>(), star_rest_init<acc_t>()},
      [&](Eps& st, int64_t j) {
        soft_eps_class(st.es, st.rest, static_cast<acc_t>(row[j]), q(j), m, log_s, t, t_div, star, k);
      },
      [](Eps a, Eps b) { return Eps{soft_eps_merge(a.es, b.es), star_rest_merge(a.rest, b.rest)}; });
  return soft_row_finalize(e.es, e.rest, t, star, k, stats[kColLse]);
}

// The SoftRow of a soft row at k == 1: t, and for a row with a dominant class its f* from the
// other classes (one more pass over the row, for those rows only).
template <typename scalar_t, typename acc_t, typename Q>
inline SoftRow<acc_t> soft_k1_row(const scalar_t* row, int64_t C, const Q& q, const acc_t* stats) {
  const acc_t m = stats[kColMax], log_s = stats[kColLogS], t = stats[kColScale];
  const bool star = soft_tag_star(stats[kColStar]);
  StarRest<acc_t> rest = star_rest_init<acc_t>();
  auto push = [&](StarRest<acc_t>& st, int64_t j) {
    star_k1_rest_class(st, static_cast<acc_t>(row[j]), q(j), m, log_s, t, star);
  };
  auto merge = [](StarRest<acc_t> a, StarRest<acc_t> b) { return star_rest_merge(a, b); };
  if (star) rest = blocked_reduce(C, rest, push, merge);
  return soft_row_k1(rest, t, star, stats[kColLse]);
}

// Stats in the complete form (another backend's forward) need no pass 2: f_j from them alone
// (row_math.h soft_fj); the deferred form (this kernel's forward) makes it first.
template <typename scalar_t, typename acc_t, typename Q>
inline void soft_grad_row(const scalar_t* row, scalar_t* out, int64_t C, acc_t k, const Q& q, acc_t g,
                          const acc_t* stats) {
  const bool deferred = soft_tag_deferred(stats[kColStar]);
  if (deferred && k != acc_t(1)) {
    const SoftRow<acc_t> r = soft_eps_row(row, C, k, q, stats);  // log p as there: (z - m) - log s
    for (int64_t j = 0; j < C; ++j)
      out[j] = static_cast<scalar_t>(
          g * soft_fj(r, static_cast<acc_t>(row[j]), stats[kColMax], stats[kColLogS], q(j), k));
    return;
  }
  const SoftRow<acc_t> r = deferred ? soft_k1_row(row, C, q, stats) : soft_row_of_stats(stats);
  for (int64_t j = 0; j < C; ++j)
    out[j] = static_cast<scalar_t>(
        g * soft_fj(r, static_cast<acc_t>(row[j]), stats[kColLse], stats[kColLseLo], q(j), k));
}

// ---------------------------------------------------------------------------------------
// The target q of a soft row (row_math.h q_*, class weights folded in): q(j) for one class,
// fill(a, n, buf) for classes [a, a + n) as float (the vectorised path, soft_rows.h), which
// returns buf or, when q is stored as is, a pointer into it.
// ---------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
struct ProbTarget {  // probabilities P_j, optionally smoothed
  const scalar_t* P;
  const acc_t* w;
  acc_t one_minus_s, s_over_C;
  acc_t operator()(int64_t j) const {
    return q_probability(static_cast<acc_t>(P[j]), w != nullptr ? w[j] : acc_t(1), one_minus_s, s_over_C);
  }
  const float* fill(int64_t a, int64_t n, float* buf) const {
    const float* p = load(P, a, n, buf);
    if (w == nullptr && one_minus_s == acc_t(1) && s_over_C == acc_t(0)) return p;
    fill_q(p, w != nullptr ? w + a : nullptr, n, one_minus_s, s_over_C, buf);
    return buf;
  }
};

template <typename acc_t>
struct MixtureTarget {  // row W[y] of the mixture matrix
  const acc_t* Wy;
  const acc_t* w;
  acc_t operator()(int64_t j) const { return q_mixture(Wy[j], w != nullptr ? w[j] : acc_t(1)); }
  const float* fill(int64_t a, int64_t n, float* buf) const {
    if (w == nullptr) return Wy + a;
    fill_q(Wy + a, w + a, n, 1.0f, 0.0f, buf);
    return buf;
  }
};

template <typename acc_t>
struct SmoothedTarget {  // class index y with label smoothing
  int64_t y;
  const acc_t* w;
  acc_t one_minus_s, s_over_C;
  acc_t operator()(int64_t j) const {
    return q_smoothed(j == y, w != nullptr ? w[j] : acc_t(1), one_minus_s, s_over_C);
  }
  const float* fill(int64_t a, int64_t n, float* buf) const {
    fill_q(nullptr, w != nullptr ? w + a : nullptr, n, 0.0f, s_over_C, buf);
    if (y >= a && y < a + n) buf[y - a] = (*this)(y);
    return buf;
  }
};

// ---------------------------------------------------------------------------------------
// Which path a row takes, and its target q, shared by the forward and backward loops.
// ---------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
struct RowTargets {
  const scalar_t* P;  // (N, C) probabilities, or nullptr for class indices
  const int64_t* Y;   // (N,) class indices, or nullptr
  const acc_t* w;     // (C,) class weights, or nullptr
  const acc_t* W;     // (C, C) mixture, or nullptr
  int64_t C;
  int64_t ignore_index;
  acc_t one_minus_s;
  acc_t s_over_C;
  bool smooth;

  RowTargets(const at::Tensor& target, const at::Tensor& weight, const at::Tensor& mixture, int64_t C_,
             int64_t ignore, double label_smoothing)
      : P(target.is_floating_point() ? target.const_data_ptr<scalar_t>() : nullptr),
        Y(target.is_floating_point() ? nullptr : target.const_data_ptr<int64_t>()),
        w(weight.defined() ? weight.const_data_ptr<acc_t>() : nullptr),
        W(mixture.defined() ? mixture.const_data_ptr<acc_t>() : nullptr),
        C(C_),
        ignore_index(ignore),
        one_minus_s(static_cast<acc_t>(1.0 - label_smoothing)),
        s_over_C(static_cast<acc_t>(label_smoothing / static_cast<double>(C_))),
        smooth(label_smoothing > 0.0) {}

  // Calls invalid(ignored), onehot(y, w_y) or soft(q) for row i, q being a *Target above.
  template <typename Invalid, typename OneHot, typename Soft>
  void visit(int64_t i, const Invalid& invalid, const OneHot& onehot, const Soft& soft) const {
    if (P != nullptr) return soft(ProbTarget<scalar_t, acc_t>{P + i * C, w, one_minus_s, s_over_C});
    const int64_t y = Y[i];
    const int status = label_status(y, C, ignore_index);
    if (status != kLabelValid) return invalid(status == kLabelIgnored);
    if (W != nullptr) return soft(MixtureTarget<acc_t>{W + y * C, w});
    if (smooth) return soft(SmoothedTarget<acc_t>{y, w, one_minus_s, s_over_C});
    onehot(y, w != nullptr ? w[y] : acc_t(1));
  }
};

}  // namespace cpu
}  // namespace hl

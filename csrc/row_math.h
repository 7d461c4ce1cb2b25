// row_math.h: the per-row math of docs/ROW_MATH.md, written once for every compiled backend.
//
// Torch-free and allocation-free: plain structs and inline functions, usable from host C++
// (the CPU kernel, the CTest in csrc/tests) and unchanged from CUDA device code
// (csrc/cuda/*.cu), where HL_HOST_DEVICE expands to __host__ __device__.
// Templated on the accumulation type T: float (fp32/fp16/bf16 logits) or double.
//
// Every "online" statistic comes with a push (one element) and a merge (two partial
// statistics), so a kernel may split a row over lanes / threads / warps in any order and
// combine the partials at the end; the result does not depend on the split beyond rounding.
//
// Non-finite logits: a NaN or +inf logit makes the row's sums NaN (as PyTorch's
// log_softmax: exp(inf - inf)); a -inf logit is a class with probability 0 and is skipped.
#pragma once

#include <math.h>
#include <cmath>
#include <cstdint>
#include <limits>

#include "op_schema.h"  // HL_STATS_COLS, HL_SHARD_STATS_COLS

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HL_HOST_DEVICE __host__ __device__
#else
#define HL_HOST_DEVICE
#endif

namespace hl {

// ---------------------------------------------------------------------------------------
// Scalar helpers. ::expf / ::exp etc. resolve to libm on the host and to CUDA's device math
// on the GPU; INFINITY / NAN are constant expressions on both (std::numeric_limits would
// need --expt-relaxed-constexpr in device code).
// ---------------------------------------------------------------------------------------
HL_HOST_DEVICE inline float hl_exp(float x) { return ::expf(x); }
HL_HOST_DEVICE inline double hl_exp(double x) { return ::exp(x); }
HL_HOST_DEVICE inline float hl_log(float x) { return ::logf(x); }
HL_HOST_DEVICE inline double hl_log(double x) { return ::log(x); }
HL_HOST_DEVICE inline float hl_log1p(float x) { return ::log1pf(x); }
HL_HOST_DEVICE inline double hl_log1p(double x) { return ::log1p(x); }
HL_HOST_DEVICE inline float hl_tanh(float x) { return ::tanhf(x); }
HL_HOST_DEVICE inline double hl_tanh(double x) { return ::tanh(x); }
HL_HOST_DEVICE inline float hl_abs(float x) { return ::fabsf(x); }
HL_HOST_DEVICE inline double hl_abs(double x) { return ::fabs(x); }

template <typename T>
HL_HOST_DEVICE inline T hl_inf() { return static_cast<T>(INFINITY); }
template <typename T>
HL_HOST_DEVICE inline T hl_nan() { return static_cast<T>(NAN); }

// softplus(x) = log(1 + exp(x)) without overflow; NaN in, NaN out; softplus(-inf) = 0.
template <typename T>
HL_HOST_DEVICE inline T softplus(T x) {
  return (x > T(0) ? x : T(0)) + hl_log1p(hl_exp(-hl_abs(x)));
}

// ---------------------------------------------------------------------------------------
// Labels
// ---------------------------------------------------------------------------------------
enum LabelStatus : int { kLabelValid = 0, kLabelIgnored = 1, kLabelBad = 2 };

// ignore_index wins even when it lies inside [0, C) (as PyTorch). A bad label must never be
// used to index z[y] or mixture[y]: the row becomes NaN instead.
HL_HOST_DEVICE inline int label_status(int64_t y, int64_t C, int64_t ignore_index) {
  if (y == ignore_index) return kLabelIgnored;
  return (y >= 0 && y < C) ? kLabelValid : kLabelBad;
}

// ---------------------------------------------------------------------------------------
// Online logsumexp (max m, s = sum exp(z - m)): the soft path's pass 1, and lse of rows
// whose label is ignored / bad (lse is still returned for them).
// ---------------------------------------------------------------------------------------
template <typename T>
struct LseStats {
  T m;  // running max (-inf: nothing seen yet)
  T s;  // sum exp(z - m)
};

template <typename T>
HL_HOST_DEVICE inline LseStats<T> lse_init() { return {-hl_inf<T>(), T(0)}; }

template <typename T>
HL_HOST_DEVICE inline void lse_push(LseStats<T>& st, T z) {
  if (z > st.m || z != z) {
    // New max: rescale the old sum (exp(-inf) = 0 when empty). exp(z - z) is 1, or NaN for
    // z = +inf / NaN, which is what makes such a row NaN.
    st.s = st.s * hl_exp(st.m - z) + hl_exp(z - z);
    st.m = z;
  } else if (z > -hl_inf<T>()) {  // -inf adds 0; skipping it avoids exp(-inf - -inf)
    st.s += hl_exp(z - st.m);
  }
}

template <typename T>
HL_HOST_DEVICE inline LseStats<T> lse_merge(LseStats<T> a, LseStats<T> b) {
  T m = a.m > b.m ? a.m : b.m;  // a NaN max always comes with a NaN sum (see push)
  if (m == -hl_inf<T>()) return a;  // both empty
  return {m, a.s * hl_exp(a.m - m) + b.s * hl_exp(b.m - m)};
}

// log(sum exp z); -inf for an empty row.
template <typename T>
HL_HOST_DEVICE inline T lse_value(LseStats<T> st) {
  return st.m == -hl_inf<T>() ? st.m : st.m + hl_log(st.s);
}

// ---------------------------------------------------------------------------------------
// One-hot path (docs/ROW_MATH.md): over the non-target classes i != y only,
// m = max z_i, s1 = sum exp(z_i - m), sk = sum exp(k (z_i - m)).
// ---------------------------------------------------------------------------------------
template <typename T>
struct OneHotStats {
  T m;
  T s1;
  T sk;
};

template <typename T>
HL_HOST_DEVICE inline OneHotStats<T> onehot_init() { return {-hl_inf<T>(), T(0), T(0)}; }

// Add one non-target logit z (the caller skips j == y).
template <typename T>
HL_HOST_DEVICE inline void onehot_push(OneHotStats<T>& st, T z, T k) {
  if (z > st.m || z != z) {  // new max, see lse_push
    T d = st.m - z;
    T zz = z - z;  // 0, or NaN for z = +inf / NaN
    st.s1 = st.s1 * hl_exp(d) + hl_exp(zz);
    st.sk = st.sk * hl_exp(k * d) + hl_exp(k * zz);
    st.m = z;
  } else if (z > -hl_inf<T>()) {
    T d = z - st.m;
    st.s1 += hl_exp(d);
    st.sk += hl_exp(k * d);
  }
}

template <typename T>
HL_HOST_DEVICE inline OneHotStats<T> onehot_merge(OneHotStats<T> a, OneHotStats<T> b, T k) {
  T m = a.m > b.m ? a.m : b.m;
  if (m == -hl_inf<T>()) return a;
  T da = a.m - m, db = b.m - m;
  return {m, a.s1 * hl_exp(da) + b.s1 * hl_exp(db),
          a.sk * hl_exp(k * da) + b.sk * hl_exp(k * db)};
}

// ---------------------------------------------------------------------------------------
// What a row keeps between the passes: kStatsCols numbers (hardloss_cuda/_schema.py has the
// same layout for Python). Columns 0..2 have one meaning for every row:
//   0 lse     logsumexp of the row, rounded (lse = hi + lo with column 1)
//   1 lse_lo  what rounding lse lost: log p_j = (z_j - lse) - lse_lo is exact even when
//             |lse| is huge (a row of 1e8s has lse 1e8 + log C, which fp32 cannot hold)
//   2 scale   one-hot: f_y; soft: t = sum_j q_j. A row with incoming gradient 0, finite lse
//             and finite scale has gradient 0 without its logits being read (trimmed rows).
// then, per path:
//   one-hot: 3 m, 4 log_c, 5 unused      f_j = w_y exp(k (z_j - m) + log_c), j != y
//   soft:    3, 4 as column 5, the tag, says (soft_tag; star = 1 for a row with a dominant class):
//            kSoftComplete + star: 3 c_pos, 4 f_star (SoftRow; f_star at k == 1 too)
//            kSoftDeferred + star: 3 the row max m, 4 log s = log sum exp(z - m)
// Ignored / out-of-range rows, and every row when no gradient was asked for, keep 2..5 at 0.
// c_pos and f_star come from a second pass over the row (pass 2: soft_eps_class,
// soft_row_finalize; at k == 1 only a dominant class's f_star, soft_row_k1). The CUDA forward
// and the reference make it and write the complete form, as Triton's forward does at k != 1.
// The CPU forward leaves it to its backward (it would cost the forward ~5x) and writes the
// deferred form, as Triton's does at k == 1 (its backward sums f* in the same pass). Every
// backward takes both: the CPU and Triton make pass 2 for deferred rows in the row's own
// backward, the CUDA backward in a kernel before its elementwise one (one more read of those rows
// only, csrc/cuda/bwd_complete.cuh). docs/ROW_MATH.md has the table; tests/test_stats_exchange.py
// hands every backend's stats to every other's backward.
// ---------------------------------------------------------------------------------------
constexpr int kStatsCols = HL_STATS_COLS;  // op_schema.h, generated from _schema.py STATS_COLS
// shard_stats (a vocab-parallel loss's per-shard half of the forward, _schema.py): the raw
// OneHotStats {m, s1, sk} of a row over the classes j != y (every class when y is not valid).
constexpr int kShardStatsCols = HL_SHARD_STATS_COLS;
// soft_shard_stats (the same for soft rows, _schema.py): a row's SoftEpsStats and StarRest over
// the classes of the shard, unfinalised (put_soft_shard_stats).
constexpr int kSoftShardStatsCols = HL_SOFT_SHARD_STATS_COLS;
enum StatsCol : int { kColLse = 0, kColLseLo = 1, kColScale = 2, kColStar = 5 };

// A soft row's column 5 (kColStar): the form of its columns 3 and 4, plus its star flag
// (_schema.py STATS_SOFT_COMPLETE / STATS_SOFT_DEFERRED).
constexpr int kSoftComplete = HL_STATS_SOFT_COMPLETE;  // 3 c_pos, 4 f_star
constexpr int kSoftDeferred = HL_STATS_SOFT_DEFERRED;  // 3 m, 4 log s: pass 2 is the backward's
static_assert(kSoftComplete + 1 < kSoftDeferred, "the tags must not overlap");

template <typename T>
HL_HOST_DEVICE inline T soft_tag(bool deferred, bool star) {
  return T((deferred ? kSoftDeferred : kSoftComplete) + (star ? 1 : 0));
}
template <typename T>
HL_HOST_DEVICE inline bool soft_tag_deferred(T tag) { return tag >= T(kSoftDeferred); }
template <typename T>
HL_HOST_DEVICE inline bool soft_tag_star(T tag) {
  return tag - T(soft_tag_deferred(tag) ? kSoftDeferred : kSoftComplete) != T(0);
}

// lse = m + L, L = log sum exp(z - m), as a rounded sum hi and its error lo.
template <typename T>
struct LseSplit {
  T hi;
  T lo;
};

template <typename T>
HL_HOST_DEVICE inline LseSplit<T> lse_split(T m, T L) {
  T hi = m + L;
  // -inf (empty row), NaN: nothing to correct.
  T lo = (hi > -hl_inf<T>() && hi < hl_inf<T>()) ? (m - hi) + L : T(0);
  return {hi, lo};
}

template <typename T>
HL_HOST_DEVICE inline LseSplit<T> lse_split(LseStats<T> st) {
  return st.m == -hl_inf<T>() ? LseSplit<T>{st.m, T(0)} : lse_split(st.m, hl_log(st.s));
}

// A valid row whose gradient is 0 without a read of its logits: no incoming gradient (trimmed
// away), and a finite lse and scale. A non-finite one keeps the row, so that NaN logits or an
// infinite class weight still give NaN (0 * inf), as PyTorch.
template <typename T>
HL_HOST_DEVICE inline bool grad_row_is_zero(T g, T lse, T scale) {
  return g == T(0) && hl_abs(lse) < hl_inf<T>() && hl_abs(scale) < hl_inf<T>();
}

// Write a row's stats: lse (hi, lo), then the path's four numbers.
template <typename T>
HL_HOST_DEVICE inline void put_stats(T* st, LseSplit<T> lse, T c2, T c3, T c4, T c5) {
  st[kColLse] = lse.hi;
  st[kColLseLo] = lse.lo;
  st[kColScale] = c2;
  st[3] = c3;
  st[4] = c4;
  st[5] = c5;
}

// Everything a one-hot row needs after its statistics pass.
template <typename T>
struct OneHotRow {
  T lse;    // logsumexp of the whole row (returned; also for the mixture gradient)
  T lse_lo;
  T loss;   // w_y (lse - z_y)
  T f_y;    // gradient at the label: -w_y |eps_y|^k
  T m;      // f_j = w_y * exp(k (z_j - m) + log_c)   for j != y  (onehot_fj)
  T log_c;  // k a - log sk, a = log(1 - p_y)
  T w_y;
};

// Finalise the statistics of a row with target logit z_y and class weight w_y.
// Everything is taken relative to the maxima, never through lse itself (which is rounded
// at the scale of the logits): with d = lse_not - z_y = (m - z_y) + log s1 (log of the odds
// against the label),
//   loss / w_y = lse - z_y = softplus(d)     (not lse - z_y: that cancels for p_y -> 1)
//   a = lse_not - lse = -softplus(-d) = log(1 - p_y), again without cancellation.
// C == 1 (or every other class at -inf): d = -inf, so loss = 0, f_y = 0, f_j = 0.
// A row with no finite logit, or with z_y = +inf, is NaN throughout (as PyTorch).
template <typename T>
HL_HOST_DEVICE inline OneHotRow<T> onehot_finalize(OneHotStats<T> st, T z_y, T w_y, T k) {
  const T inf = hl_inf<T>();
  const T L1 = hl_log(st.s1);  // -inf when no other class
  T d = (st.m - z_y) + L1;     // -inf - -inf = NaN for an all -inf row, as wanted
  if (z_y == inf) d = hl_nan<T>();  // PyTorch: exp(inf - inf) -> NaN; not loss 0
  // softplus(d) and softplus(-d) share log1p(exp(-|d|)) (short rows pay per libm call)
  const T tail = hl_log1p(hl_exp(-hl_abs(d)));
  const T sp = (d > T(0) ? d : T(0)) + tail, sp_neg = (d < T(0) ? -d : T(0)) + tail;
  OneHotRow<T> r;
  r.loss = w_y * sp;
  // lse = logaddexp(lse_not, z_y), anchored at the larger maximum (z_y = -inf stays exact)
  const LseSplit<T> ls = d > T(0) ? lse_split(st.m, L1 + sp_neg) : lse_split(z_y, sp);
  r.lse = ls.hi;
  r.lse_lo = ls.lo;
  T a = -sp_neg;
  r.f_y = T(0) - w_y * hl_exp(k * a);  // 0 - x: +0 for C == 1, NaN stays NaN
  if (st.m == -inf) {  // no non-target class with p > 0: all f_j = 0 (NaN for a NaN row)
    r.m = T(0);
    r.log_c = d == d ? -inf : d;
  } else {
    r.m = st.m;
    r.log_c = k * a - (k == T(1) ? L1 : hl_log(st.sk));  // k == 1: sk is s1
  }
  r.w_y = w_y;
  return r;
}

// f_j for a non-target class j.
template <typename T>
HL_HOST_DEVICE inline T onehot_fj(const OneHotRow<T>& r, T z_j, T k) {
  return r.w_y * hl_exp(k * (z_j - r.m) + r.log_c);
}

// ---------------------------------------------------------------------------------------
// Soft path: target rows q (ROW_MATH.md section 1, class weights folded in).
// The caller passes one_minus_s = 1 - s and s_over_C = s / C (s = label smoothing).
// ---------------------------------------------------------------------------------------

// Class-index target with label smoothing: w_j ((1 - s)[j == y] + s / C).
template <typename T>
HL_HOST_DEVICE inline T q_smoothed(bool is_label, T w_j, T one_minus_s, T s_over_C) {
  return w_j * ((is_label ? one_minus_s : T(0)) + s_over_C);
}

// Class-index target with a mixture matrix: w_j W[y, j].
template <typename T>
HL_HOST_DEVICE inline T q_mixture(T W_yj, T w_j) { return w_j * W_yj; }

// Probability target P_j: w_j ((1 - s) P_j + s / C). With s = 0 this is exactly w_j P_j.
template <typename T>
HL_HOST_DEVICE inline T q_probability(T P_j, T w_j, T one_minus_s, T s_over_C) {
  return w_j * (one_minus_s * P_j + s_over_C);
}

// A compensated (Neumaier) running sum: the error of a long row's sum stays at a few ulp
// instead of growing with C (a 32000-class fp32 row summed one class at a time loses ~1e-5).
template <typename T>
struct CSum {
  T s;
  T c;
};

template <typename T>
HL_HOST_DEVICE inline void csum_add(CSum<T>& a, T x) {
  T s = a.s + x;
  // An infinite (or NaN) sum carries itself; its error term would be inf - inf = NaN.
  if (hl_abs(s) < hl_inf<T>()) a.c += hl_abs(a.s) >= hl_abs(x) ? (a.s - s) + x : (x - s) + a.s;
  a.s = s;
}

template <typename T>
HL_HOST_DEVICE inline CSum<T> csum_merge(CSum<T> a, CSum<T> b) {
  csum_add(a, b.s);
  a.c += b.c;
  return a;
}

template <typename T>
HL_HOST_DEVICE inline T csum_value(CSum<T> a) { return a.s + a.c; }

// The target mass of a row, read before the loss: t = sum q, and min / max q_j (to find a
// dominant class, see soft_star).
template <typename T>
struct QMass {
  CSum<T> t;
  T qmin;
  T qmax;
};

template <typename T>
HL_HOST_DEVICE inline QMass<T> qmass_init() { return {{T(0), T(0)}, hl_inf<T>(), -hl_inf<T>()}; }

template <typename T>
HL_HOST_DEVICE inline void qmass_push(QMass<T>& a, T q) {
  csum_add(a.t, q);
  a.qmin = q < a.qmin ? q : a.qmin;
  a.qmax = q > a.qmax ? q : a.qmax;
}

// The loss -sum_j q_j log p_j = sum_j q_j (m - z_j) + t log s, with m the row max and
// s = sum exp(z - m): for q >= 0 every term is >= 0 (no t lse - sum q z cancellation), and
// nothing is taken relative to the rounded lse, so a row of 1e8s still gives t log C.
// soft_loss_push adds one class (q_j = 0 is skipped: a -inf logit there adds 0, not 0 * inf;
// q_j > 0 on a -inf logit gives an infinite loss, as PyTorch).
template <typename T>
HL_HOST_DEVICE inline void soft_loss_push(CSum<T>& acc, T q_j, T z_j, T m) {
  if (q_j != T(0)) csum_add(acc, q_j * (m - z_j));
}

// The loss from acc = sum_j q_j (m - z_j). A row of nothing but -inf logits (m = -inf) has no
// softmax: NaN, as PyTorch.
template <typename T>
HL_HOST_DEVICE inline T soft_loss_value(T acc, T t, T m, T log_s) {
  return m == -hl_inf<T>() ? hl_nan<T>() : acc + t * log_s;
}

// ---------------------------------------------------------------------------------------
// Soft path, the |eps|^k statistics: eps_j = p_j - qh_j with qh = q / t (t = sum q > 0).
// ---------------------------------------------------------------------------------------

// A dominant class: with q >= 0, at most one class can have qh_j > 1/2. Its eps = p - qh
// cancels when both are near 1 (a confident row), so for it eps is taken as
// (1 - qh) - (1 - p), both sums over the other classes, 1 - p in the log domain (as the
// one-hot path's a = log(1 - p_y)). `star` says whether the row has one; is_star(q_j) which.
//
// At k == 1 (f = t p - q, no |eps|^k) the dominant class's f* = t p* - q* is taken from the
// other classes only when q* >= 15/16 t (is_star_k1, star_f1): there p* and q* / t are near 1,
// t p* - q* cancels (rounding ~2 u t) and the others' terms are small (~u t (P + A),
// A = 1 - q* / t <= 1/16); with less target mass on q* their sums round as much as t p* - q*.
template <typename T>
HL_HOST_DEVICE inline bool is_star(bool star, T q_j, T t) { return star && T(2) * q_j > t; }

template <typename T>
HL_HOST_DEVICE inline bool is_star_k1(bool star, T q_j, T t) { return star && T(16) * (t - q_j) <= t; }

// Whether a row has a dominant class whose f is f_star: is_star's for k != 1, is_star_k1's at
// k == 1 (qmax is the dominant class's q).
template <typename T>
HL_HOST_DEVICE inline bool soft_star(QMass<T> qm, T t, T k) {
  const bool star = t > T(0) && qm.qmin >= T(0) && T(2) * qm.qmax > t;
  return k == T(1) ? is_star_k1(star, qm.qmax, t) : star;
}

// log |eps_j| of a non-dominant class from log p_j, and whether eps_j < 0. Classes without
// target mass are positive with eps = p, kept in the log domain (small k must not lose
// classes whose p underflows). eps_j == 0 gives -inf (a positive class with zero share).
template <typename T>
HL_HOST_DEVICE inline T soft_log_abs_eps(T log_p, T qh_j, bool* negative) {
  if (qh_j == T(0)) {
    *negative = false;
    return log_p;
  }
  T e = hl_exp(log_p) - qh_j;
  *negative = e < T(0);
  return hl_log(hl_abs(e));
}

// Online (max, sum) pairs of k log|eps_j|, over the negative classes (S_neg = exp(m_neg) s_neg)
// and the positive ones (S_pos), so that a large k cannot underflow either: |eps_j|^k of 1e-6^8
// is 0 in float (and below 2^-126, flushed to 0 by a fast exp), yet only the ratio
// S_neg / S_pos scales the positive classes.
template <typename T>
struct SoftEpsStats {
  T m_neg;
  T s_neg;
  T m_pos;
  T s_pos;
};

template <typename T>
HL_HOST_DEVICE inline SoftEpsStats<T> soft_eps_init() { return {-hl_inf<T>(), T(0), -hl_inf<T>(), T(0)}; }

// kla = k * log|eps_j|.
template <typename T>
HL_HOST_DEVICE inline void soft_eps_push(SoftEpsStats<T>& st, T kla, bool negative) {
  LseStats<T> a = negative ? LseStats<T>{st.m_neg, st.s_neg} : LseStats<T>{st.m_pos, st.s_pos};
  lse_push(a, kla);
  if (negative) {
    st.m_neg = a.m;
    st.s_neg = a.s;
  } else {
    st.m_pos = a.m;
    st.s_pos = a.s;
  }
}

template <typename T>
HL_HOST_DEVICE inline SoftEpsStats<T> soft_eps_merge(SoftEpsStats<T> a, SoftEpsStats<T> b) {
  LseStats<T> neg = lse_merge(LseStats<T>{a.m_neg, a.s_neg}, LseStats<T>{b.m_neg, b.s_neg});
  LseStats<T> pos = lse_merge(LseStats<T>{a.m_pos, a.s_pos}, LseStats<T>{b.m_pos, b.s_pos});
  return {neg.m, neg.s, pos.m, pos.s};
}

// The other classes of a row with a dominant class: log sum p_i (online, in the log domain)
// and sum qh_i over i != star.
template <typename T>
struct StarRest {
  LseStats<T> p;  // of log p_i
  CSum<T> q;      // of q_i
};

template <typename T>
HL_HOST_DEVICE inline StarRest<T> star_rest_init() { return {lse_init<T>(), {T(0), T(0)}}; }

template <typename T>
HL_HOST_DEVICE inline void star_rest_push(StarRest<T>& a, T log_p, T q) {
  lse_push(a.p, log_p);
  csum_add(a.q, q);
}

template <typename T>
HL_HOST_DEVICE inline StarRest<T> star_rest_merge(StarRest<T> a, StarRest<T> b) {
  return {lse_merge(a.p, b.p), csum_merge(a.q, b.q)};
}

// log|eps*| of the dominant class, eps* = p* - qh* = (1 - qh*) - (1 - p*) = A - P with
// A = sum_{i != *} q_i / t and log P = lse of the others' log p.
template <typename T>
HL_HOST_DEVICE inline T star_log_abs_eps(StarRest<T> rest, T t, bool* negative) {
  const T log_P = lse_value(rest.p);
  const T A = csum_value(rest.q) / t;
  if (A == T(0)) {
    *negative = log_P > -hl_inf<T>();
    return log_P;  // eps* = -P (or 0: -inf)
  }
  const T e = A - hl_exp(log_P);
  *negative = e < T(0);
  return hl_log(hl_abs(e));
}

// What the backward needs of a soft row (stats columns 2..5):
//   f_j = -t |eps_j|^k                      (eps_j < 0)
//   f_j = sign(t) exp(k log eps_j + c_pos)  (eps_j >= 0), c_pos = log|t| + log S_neg - log s_pos - m_pos
//   f_j = f_star                            (the dominant class, when star)
// c_pos = -inf when no class has eps > 0.
template <typename T>
struct SoftRow {
  T t;
  T c_pos;
  T f_star;
  T star;  // column 5: soft_tag(false, star), the complete form
};

template <typename T>
HL_HOST_DEVICE inline T soft_f(const SoftRow<T>& r, T kla, bool negative) {
  if (negative) return -r.t * hl_exp(kla);
  T f = hl_exp(kla + r.c_pos);
  return r.t < T(0) ? -f : f;
}

// Finalise: `st` holds every class but the dominant one, whose k log|eps*| (kla_star,
// negative_star) the caller passes when `star`.
template <typename T>
HL_HOST_DEVICE inline SoftRow<T> soft_finalize(SoftEpsStats<T> st, T t, bool star, T kla_star,
                                              bool negative_star) {
  if (star) soft_eps_push(st, kla_star, negative_star);
  SoftRow<T> r;
  r.t = t;
  // No positive class (also when s_pos is NaN: the loss carries the NaN), or t S_neg = 0.
  const bool has_pos = st.s_pos > T(0);
  const T log_s_neg = lse_value(LseStats<T>{st.m_neg, st.s_neg});  // -inf: no negative class
  r.c_pos = has_pos ? (hl_log(hl_abs(t)) + log_s_neg) - hl_log(st.s_pos) - st.m_pos : -hl_inf<T>();
  r.star = soft_tag<T>(false, star);
  r.f_star = star ? soft_f(r, kla_star, negative_star) : T(0);
  return r;
}

// A class's share of `rest` for the k == 1 dominant class (nothing for that class itself, nor
// in a row without a dominant class). m is the row max, log_s = log sum exp(z - m), t = sum q.
template <typename T>
HL_HOST_DEVICE inline void star_k1_rest_class(StarRest<T>& rest, T z_j, T q_j, T m, T log_s, T t, bool star) {
  if (star && !is_star_k1(star, q_j, t)) star_rest_push(rest, (z_j - m) - log_s, q_j);
}

// The soft row's pass 2, one class: the |eps|^k statistics of a non-dominant class (and, in a
// row with a dominant class, its share of `rest`); nothing for the dominant class itself.
// t_div: t, or 1 when t == 0.
template <typename T>
HL_HOST_DEVICE inline void soft_eps_class(SoftEpsStats<T>& es, StarRest<T>& rest, T z_j, T q_j, T m, T log_s,
                                          T t, T t_div, bool star, T k) {
  if (is_star(star, q_j, t)) return;
  const T log_p = (z_j - m) - log_s;
  if (star) star_rest_push(rest, log_p, q_j);
  bool neg;
  const T la = soft_log_abs_eps(log_p, q_j / t_div, &neg);
  soft_eps_push(es, k * la, neg);
}

// soft_shard_stats, one class: the soft row's pass 2 over a shard of its classes given the
// row's global lse = hi + lo, t and star flag (log p_j = (z_j - hi) - lo): soft_eps_class, or at
// k == 1 only the dominant class's rest (star_k1_rest_class; no |eps| statistics needed).
template <typename T>
HL_HOST_DEVICE inline void soft_shard_class(SoftEpsStats<T>& es, StarRest<T>& rest, T z_j, T q_j, T hi, T lo, T t,
                                            bool star, T k) {
  if (k == T(1)) return star_k1_rest_class(rest, z_j, q_j, hi, lo, t, star);
  soft_eps_class(es, rest, z_j, q_j, hi, lo, t, t != T(0) ? t : T(1), star, k);
}

// soft_shard_stats with its kept pass (the optional eps / side outputs, _schema.py): per class
// what the backward's f_j needs besides the row's finalised stats, so that a vocab-parallel
// backward does not take log|eps| and |eps|^k again (soft_shard_grad). kla = k log|eps_j| as
// soft_eps_class pushes it; side kSideNeg for a negative class, kSidePos for the others,
// kSideStar for the dominant class (kla 0, unused). Rows that are not valid: (-inf, kSidePos),
// which soft_kept_f turns into 0 (their stats are 0).
constexpr int8_t kSidePos = 0;
constexpr int8_t kSideNeg = 1;
constexpr int8_t kSideStar = 2;

template <typename T>
struct KeptEps {
  T kla;
  int8_t side;
};

// soft_shard_class at k != 1 and the class's KeptEps, from one evaluation.
template <typename T>
HL_HOST_DEVICE inline KeptEps<T> soft_shard_class_kept(SoftEpsStats<T>& es, StarRest<T>& rest, T z_j, T q_j, T hi,
                                                       T lo, T t, bool star, T k) {
  if (is_star(star, q_j, t)) return {T(0), kSideStar};
  const T log_p = (z_j - hi) - lo;
  if (star) star_rest_push(rest, log_p, q_j);
  bool neg;
  const T kla = k * soft_log_abs_eps(log_p, q_j / (t != T(0) ? t : T(1)), &neg);
  soft_eps_push(es, kla, neg);
  return {kla, neg ? kSideNeg : kSidePos};
}

// f_j of a soft row from its kept pass and the row's finalised stats (complete form): soft_f,
// or f_star for the dominant class. The same numbers soft_fj computes from the logits.
template <typename T>
HL_HOST_DEVICE inline T soft_kept_f(const SoftRow<T>& r, T kla, int8_t side) {
  return side == kSideStar ? r.f_star : soft_f(r, kla, side == kSideNeg);
}

// soft_shard_stats' kSoftShardStatsCols columns of a row: es, then rest (log p: m, s; sum q).
template <typename T>
HL_HOST_DEVICE inline void put_soft_shard_stats(T* out, SoftEpsStats<T> es, StarRest<T> rest) {
  out[0] = es.m_neg;
  out[1] = es.s_neg;
  out[2] = es.m_pos;
  out[3] = es.s_pos;
  out[4] = rest.p.m;
  out[5] = rest.p.s;
  out[6] = csum_value(rest.q);
}

// After pass 2 (statistics merged over the whole row): the dominant class joins, then
// soft_finalize. `lse` is the row's: a row without a finite one (a NaN or +inf logit, or
// nothing but -inf) is NaN throughout, the dominant class too, whose eps is otherwise taken
// from the other classes only (and C == 1 has none).
template <typename T>
HL_HOST_DEVICE inline SoftRow<T> soft_row_finalize(SoftEpsStats<T> es, StarRest<T> rest, T t, bool star, T k,
                                                   T lse) {
  bool neg_star = false;
  T la_star = star ? star_log_abs_eps(rest, t, &neg_star) : T(0);
  if (!(hl_abs(lse) < hl_inf<T>())) la_star = hl_nan<T>();
  return soft_finalize(es, t, star, k * la_star, neg_star);
}

// The k == 1 dominant class's gradient from the other classes (is_star_k1): f sums to 0 over
// the row, so f* = t p* - q* = -rest_f with rest_f = sum_{i != *} (t p_i - q_i) = t P - q_rest
// (P = 1 - p*, q_rest = t - q*). Taken directly, float64 z = (-11.5, 18.7) with q = (0, 1) gave
// f* 1.3e-3 off relative (PyTorch's p - q the same). A row without a finite lse is NaN
// (soft_row_finalize). rest_f is gathered from the others' sums (soft_row_k1), or while the
// CPU and Triton backward write the others' f.
template <typename T>
HL_HOST_DEVICE inline T star_f1(T rest_f, T lse) {
  return hl_abs(lse) < hl_inf<T>() ? -rest_f : hl_nan<T>();
}

// The SoftRow of a row at k == 1: t, and f* of the dominant class (rest: the other classes,
// star_k1_rest_class). c_pos is not used at k == 1.
template <typename T>
HL_HOST_DEVICE inline SoftRow<T> soft_row_k1(StarRest<T> rest, T t, bool star, T lse) {
  const T f_star = star ? star_f1(t * hl_exp(lse_value(rest.p)) - csum_value(rest.q), lse) : T(0);
  return {t, T(0), f_star, soft_tag<T>(false, star)};
}

// f_j of a soft row in the backward pass, from its stats: log p_j = (z_j - lse) - lse_lo.
// k == 1 is the true gradient t p_j - q_j (F_1(eps) = eps): one exp per class, and it needs
// only lse and t from the forward, whose |eps| pass may then be skipped (soft_needs_eps), and
// f_star for a dominant class with q* >= 15/16 t (soft_row_k1).
template <typename T>
HL_HOST_DEVICE inline T soft_fj(const SoftRow<T>& r, T z_j, T lse, T lse_lo, T q_j, T k) {
  const T log_p = (z_j - lse) - lse_lo;
  if (k == T(1)) {
    if (is_star_k1(soft_tag_star(r.star), q_j, r.t)) return r.f_star;
    return r.t * hl_exp(log_p) - q_j;  // t == 0: 0, NaN in a row without a finite lse (as PyTorch)
  }
  if (is_star(soft_tag_star(r.star), q_j, r.t)) return r.f_star;
  const T t_div = r.t != T(0) ? r.t : T(1);
  bool neg;
  const T la = soft_log_abs_eps(log_p, q_j / t_div, &neg);
  return soft_f(r, k * la, neg);
}

// The SoftRow of a soft row's stats in the complete form (soft_tag_deferred false).
template <typename T>
HL_HOST_DEVICE inline SoftRow<T> soft_row_of_stats(const T* st) {
  return {st[kColScale], st[3], st[4], soft_tag<T>(false, soft_tag_star(st[kColStar]))};
}

// Whether the forward pass of a soft row needs the |eps|^k statistics (pass 2): only for a
// gradient with k != 1 (soft_fj).
template <typename T>
HL_HOST_DEVICE inline bool soft_needs_eps(bool compute_grad, T k) { return compute_grad && k != T(1); }

// ---------------------------------------------------------------------------------------
// Logit soft-capping and the gradient of the row's logsumexp (docs/ROW_MATH.md section 6).
// With softcap c > 0 every logit is read as c tanh(z / c) and everything above is of the capped
// logits; the gradient is then multiplied by d(c tanh(z / c))/dz = 1 - tanh^2(z / c). A row
// whose logsumexp has an incoming gradient g_lse (z-loss, return_lse) gets g_lse p_j added first.
// ---------------------------------------------------------------------------------------
template <typename T>
HL_HOST_DEVICE inline T softcap_value(T z, T c) { return c != T(0) ? c * hl_tanh(z / c) : z; }

// The slope 1 - tanh^2(z / c) from the raw logit z, as 4 / (E + 2 + 1 / E), E = exp(2 |z / c|):
// every term positive, so it keeps its relative precision where tanh saturates. (1 - (z_c / c)^2
// of the rounded capped value has an absolute error of a few ulp: all of the slope once
// |z / c| > ~9 in float, 2-10x PyTorch's own error before that.) E = inf gives 0, NaN stays NaN.
template <typename T>
HL_HOST_DEVICE inline T softcap_slope(T z, T c) {
  const T E = hl_exp(T(2) * hl_abs(z / c));
  return T(4) / (E + T(2) + T(1) / E);
}

// g f_j + g_lse p_j, p_j = exp((z_j - lse) - lse_lo), z_j capped: a row's gradient before the slope.
template <typename T>
HL_HOST_DEVICE inline T add_lse_grad(T gf_j, T z_capped, T g_lse, T lse, T lse_lo) {
  return g_lse != T(0) ? gf_j + g_lse * hl_exp((z_capped - lse) - lse_lo) : gf_j;
}

// g_j of a row: add_lse_grad times the softcap's slope at the raw logit (c = 0: no cap).
template <typename T>
HL_HOST_DEVICE inline T finish_grad(T gf_j, T z_raw, T z_capped, T g_lse, T lse, T lse_lo, T c) {
  const T g = add_lse_grad(gf_j, z_capped, g_lse, lse, lse_lo);
  return c != T(0) ? g * softcap_slope(z_raw, c) : g;
}

}  // namespace hl

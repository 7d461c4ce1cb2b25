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
// One-hot path (SPEC "Numerics"): over the non-target classes i != y only,
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

// Everything a one-hot row needs after its statistics pass.
template <typename T>
struct OneHotRow {
  T lse;    // logsumexp of the whole row (returned; also for the mixture gradient)
  T loss;   // w_y (lse - z_y)
  T f_y;    // gradient at the label: -w_y |eps_y|^k
  T m;      // f_j = w_y * exp(k (z_j - m) + log_c)   for j != y  (onehot_fj)
  T log_c;  // k a - log sk, a = log(1 - p_y)
  T w_y;
};

// Finalise the statistics of a row with target logit z_y and class weight w_y.
// With d = lse_not - z_y (log of the odds against the label):
//   loss / w_y = lse - z_y = softplus(d)     (not lse - z_y: that cancels for p_y -> 1)
//   a = lse_not - lse = -softplus(-d) = log(1 - p_y), again without cancellation.
// C == 1 (or every other class at -inf): lse_not = -inf, so loss = 0, f_y = 0, f_j = 0.
template <typename T>
HL_HOST_DEVICE inline OneHotRow<T> onehot_finalize(OneHotStats<T> st, T z_y, T w_y, T k) {
  const T inf = hl_inf<T>();
  T lse_not = st.m == -inf ? -inf : st.m + hl_log(st.s1);
  T d = lse_not - z_y;
  if (z_y == inf) d = hl_nan<T>();  // PyTorch: exp(inf - inf) -> NaN; not loss 0
  T sp = softplus(d);
  OneHotRow<T> r;
  r.loss = w_y * sp;
  // lse = logaddexp(lse_not, z_y), anchored at the larger one (z_y = -inf stays exact)
  r.lse = d > T(0) ? lse_not + softplus(-d) : z_y + sp;
  T a = -softplus(-d);
  r.f_y = T(0) - w_y * hl_exp(k * a);  // 0 - x: +0 for C == 1, NaN stays NaN
  if (st.m == -inf) {  // no non-target class with p > 0: all f_j = 0 (and no NaN from -inf - -inf)
    r.m = T(0);
    r.log_c = -inf;
  } else {
    r.m = st.m;
    r.log_c = k * a - hl_log(st.sk);
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

// One term of the loss -sum_j q_j log p_j = sum_j q_j (lse - z_j). Classes with q_j = 0 are
// skipped so that a -inf logit there gives 0, not 0 * inf. (Summed after pass 1 rather than
// as t lse - sum q z, which cancels for large logits.)
template <typename T>
HL_HOST_DEVICE inline T soft_loss_term(T q_j, T z_j, T lse) {
  return q_j != T(0) ? q_j * (lse - z_j) : T(0);
}

// ---------------------------------------------------------------------------------------
// Soft path, pass 2: eps_j = p_j - qh_j with qh = q / t (t = sum q > 0).
// ---------------------------------------------------------------------------------------

// log |eps_j|, and whether eps_j < 0. Classes without target mass are positive with
// eps = p, kept in the log domain (small k must not lose classes whose p underflows).
// eps_j == 0 gives -inf (a positive class with zero share).
template <typename T>
HL_HOST_DEVICE inline T soft_log_abs_eps(T z_j, T lse, T qh_j, bool* negative) {
  T lp = z_j - lse;
  if (qh_j == T(0)) {
    *negative = false;
    return lp;
  }
  T e = hl_exp(lp) - qh_j;
  *negative = e < T(0);
  return hl_log(hl_abs(e));
}

// S_neg = sum_{eps<0} |eps|^k, and an online (max, sum) of k log eps over the positives so
// that a large k cannot underflow S_pos = exp(m_pos) * s_pos.
template <typename T>
struct SoftEpsStats {
  T s_neg;
  T m_pos;
  T s_pos;
};

template <typename T>
HL_HOST_DEVICE inline SoftEpsStats<T> soft_eps_init() { return {T(0), -hl_inf<T>(), T(0)}; }

// kla = k * log|eps_j|.
template <typename T>
HL_HOST_DEVICE inline void soft_eps_push(SoftEpsStats<T>& st, T kla, bool negative) {
  if (negative) {
    st.s_neg += hl_exp(kla);
    return;
  }
  LseStats<T> pos{st.m_pos, st.s_pos};
  lse_push(pos, kla);
  st.m_pos = pos.m;
  st.s_pos = pos.s;
}

template <typename T>
HL_HOST_DEVICE inline SoftEpsStats<T> soft_eps_merge(SoftEpsStats<T> a, SoftEpsStats<T> b) {
  LseStats<T> pos = lse_merge(LseStats<T>{a.m_pos, a.s_pos}, LseStats<T>{b.m_pos, b.s_pos});
  return {a.s_neg + b.s_neg, pos.m, pos.s};
}

// Pass 3 coefficients: f_j = -t |eps_j|^k (negative), pos_scale * exp(kla_j - m_pos)
// (positive). pos_scale = t S_neg / s_pos, 0 when no positive class has eps > 0.
template <typename T>
struct SoftRow {
  T t;
  T m_pos;
  T pos_scale;
};

template <typename T>
HL_HOST_DEVICE inline SoftRow<T> soft_finalize(SoftEpsStats<T> st, T t) {
  SoftRow<T> r;
  r.t = t;
  bool has_pos = st.s_pos > T(0);  // false also for NaN: the loss carries the NaN
  r.m_pos = has_pos ? st.m_pos : T(0);
  r.pos_scale = has_pos ? t * st.s_neg / st.s_pos : T(0);
  return r;
}

template <typename T>
HL_HOST_DEVICE inline T soft_f(const SoftRow<T>& r, T kla, bool negative) {
  return negative ? -r.t * hl_exp(kla) : r.pos_scale * hl_exp(kla - r.m_pos);
}

}  // namespace hl

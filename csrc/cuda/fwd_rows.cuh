// fwd_rows.cuh: what the forward kernels (fwd_kernels.cuh) compute per row, shared by both
// paths: the kernel arguments, how a finished row is written (loss and stats, the layout of
// row_math.h), the merge operators of the group reductions, and the soft rows' two passes over
// values in registers. Torch-free; the math itself is csrc/row_math.h's.
#pragma once

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/launch.h"

namespace hl {
namespace cuda {

template <typename S>
struct FwdArgs {
  using A = acc_type<S>;
  const S* logits;
  TargetArgs<S> tg;
  A* loss;   // (N,)
  A* stats;  // (N, kStatsCols)
  int64_t N;
  int C;
  int ncache;  // fwd_stream_kernel, soft rows: vectors of each row cached in shared memory
  A k;
  A cap;       // softcap: 0, or c (unpack_logits)
  bool aligned;
  bool k_is_one;
  bool compute_grad;
  bool raw_stats;  // FwdParams::raw_stats (shard_stats, soft_shard_stats)
  const A* row_stats;  // FwdParams::row_stats (soft_shard_stats), or nullptr
  A* kla;              // FwdParams::kept_eps / kept_side (soft_shard_stats' kept pass), or nullptr:
  int8_t* side;        // the pass-B loops test it once per row (soft_pass_b_push_kept)
};

template <typename A>
__device__ __forceinline__ void write_row(A* loss, A* stats, int64_t row, A l, LseSplit<A> lse, A c2, A c3, A c4,
                                          A c5) {
  loss[row] = l;
  put_stats(stats + row * kStatsCols, lse, c2, c3, c4, c5);
}

// One-hot row: finalise the merged statistics (over i != y, or over every class when the
// label is not valid) and write loss and stats. One thread per row.
template <typename S>
__device__ __forceinline__ void finish_onehot_row(const FwdArgs<S>& a, int64_t row, const RowInfo& ri,
                                                  OneHotStats<acc_type<S>> st, acc_type<S> z_y) {
  using A = acc_type<S>;
  if (a.raw_stats) {  // shard_stats: the statistics themselves, for a reduction across ranks
    A* st_out = a.stats + row * kStatsCols;
    st_out[0] = st.m;
    st_out[1] = st.s1;
    st_out[2] = st.sk;
    return;
  }
  if (ri.y >= 0) {
    const A w_y = class_weight(a.tg, ri.y);
    const OneHotRow<A> rr = onehot_finalize(st, z_y, w_y, a.k);
    if (a.compute_grad) {
      write_row(a.loss, a.stats, row, rr.loss, {rr.lse, rr.lse_lo}, rr.f_y, rr.m, rr.log_c, A(0));
    } else {
      write_row(a.loss, a.stats, row, rr.loss, {rr.lse, rr.lse_lo}, A(0), A(0), A(0), A(0));
    }
  } else {
    // No label excluded: {m, s1} are the logsumexp statistics of the whole row.
    write_row(a.loss, a.stats, row, invalid_fill<A>(ri.status), lse_split(LseStats<A>{st.m, st.s1}), A(0), A(0),
              A(0), A(0));
  }
}

template <typename A>
struct SoftPassB;

// Soft row: loss (before the label rule), lse and the finalised |eps|^k row; soft_shard_stats
// (raw_stats): the group's merged pass-B statistics `raw` instead. One thread.
template <typename S>
__device__ __forceinline__ void finish_soft_row(const FwdArgs<S>& a, int64_t row, const RowInfo& ri,
                                                acc_type<S> loss, LseSplit<acc_type<S>> lse,
                                                const SoftRow<acc_type<S>>& sr,
                                                const SoftPassB<acc_type<S>>& raw) {
  using A = acc_type<S>;
  if (a.raw_stats) {
    A* out = a.stats + row * kSoftShardStatsCols;
    if (ri.status == kLabelValid) put_soft_shard_stats(out, raw.es, raw.rest);
    else put_soft_shard_stats(out, soft_eps_init<A>(), star_rest_init<A>());
    return;
  }
  if (ri.status == kLabelValid && a.compute_grad) {
    write_row(a.loss, a.stats, row, loss, lse, sr.t, sr.c_pos, sr.f_star, sr.star);
  } else {
    write_row(a.loss, a.stats, row, ri.status == kLabelValid ? loss : invalid_fill<A>(ri.status), lse, A(0),
              A(0), A(0), A(0));
  }
}

template <typename A>
struct OneHotMergeOp {
  A k;
  __device__ __forceinline__ OneHotStats<A> operator()(OneHotStats<A> u, OneHotStats<A> v) const {
    return onehot_merge(u, v, k);
  }
};
struct LseMergeOp {
  template <typename A>
  __device__ __forceinline__ LseStats<A> operator()(LseStats<A> u, LseStats<A> v) const {
    return lse_merge(u, v);
  }
};
struct SoftEpsMergeOp {
  template <typename A>
  __device__ __forceinline__ SoftEpsStats<A> operator()(SoftEpsStats<A> u, SoftEpsStats<A> v) const {
    return soft_eps_merge(u, v);
  }
};
struct SumOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A u, A v) const {
    return u + v;
  }
};
struct MinOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A u, A v) const {
    return v < u ? v : u;
  }
};
struct MaxOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A u, A v) const {
    return v > u ? v : u;
  }
};

// ---------------------------------------------------------------------------------------
// The soft rows' two passes over values in registers, shared by both kernel paths (row_math.h
// does the math). Pass A: lse, t = sum q, min / max q. Pass B: the loss relative to the row
// max and, with compute_grad, the |eps|^k statistics (soft_eps_class). Each thread pushes
// its classes, then soft_pass_a_reduce / soft_pass_b_finish combine the group (every thread
// of the group calls them: no divergent call).
// ---------------------------------------------------------------------------------------
// The row's view after pass A: what pass B needs.
template <typename A>
struct SoftRowCtx {
  LseSplit<A> lse;
  A m;
  A log_s;
  A t;
  A t_div;
  bool star;
};

// The thread-local pass A (lse stats and row_math.h's QMass of its classes) combined over
// the group.
template <int TPR, typename A>
__device__ __forceinline__ SoftRowCtx<A> soft_pass_a_reduce(LseStats<A> ls, QMass<A> qm, A k,
                                                              ReduceSmem<A>& red) {
  ls = group_reduce<TPR>(ls, LseMergeOp{}, red);
  SoftRowCtx<A> c;
  c.t = group_reduce<TPR>(csum_value(qm.t), SumOp{}, red);
  qm.qmin = group_reduce<TPR>(qm.qmin, MinOp{}, red);
  qm.qmax = group_reduce<TPR>(qm.qmax, MaxOp{}, red);
  c.m = ls.m;
  c.log_s = hl_log(ls.s);
  c.lse = lse_split(ls);
  c.t_div = c.t != A(0) ? c.t : A(1);  // t == 0: q = 0, f = 0 (as the reference)
  c.star = soft_star(qm, c.t, k);
  return c;
}

// soft_shard_stats: the row's view as given (FwdArgs::row_stats, the global row's lse, t and
// star): log p_j = (z_j - hi) - lo, as row_math.h soft_shard_class.
template <typename A>
__device__ __forceinline__ SoftRowCtx<A> soft_ctx_given(const A* row_stats, int64_t row) {
  const A* st = row_stats + row * kStatsCols;
  SoftRowCtx<A> c;
  c.lse = {st[kColLse], st[kColLseLo]};
  c.m = c.lse.hi;
  c.log_s = c.lse.lo;
  c.t = st[kColScale];
  c.t_div = c.t != A(0) ? c.t : A(1);
  c.star = soft_tag_star(st[kColStar]);
  return c;
}

template <typename A>
struct SoftPassB {
  CSum<A> loss;
  SoftEpsStats<A> es;
  StarRest<A> rest;
};

template <typename A>
__device__ __forceinline__ SoftPassB<A> soft_pass_b_init() {
  return {{A(0), A(0)}, soft_eps_init<A>(), star_rest_init<A>()};
}

template <typename A>
__device__ __forceinline__ void soft_pass_b_push(SoftPassB<A>& b, const SoftRowCtx<A>& c, A z, A q, A k,
                                                 bool grad) {
  soft_loss_push(b.loss, q, z, c.m);
  if (soft_needs_eps(grad, k)) {
    soft_eps_class(b.es, b.rest, z, q, c.m, c.log_s, c.t, c.t_div, c.star, k);
  } else if (grad) {
    star_k1_rest_class(b.rest, z, q, c.m, c.log_s, c.t, c.star);  // k == 1: the dominant class's f*
  }
}

// soft_pass_b_push for soft_shard_stats' kept pass (FwdArgs::kla, so row_stats and k != 1:
// c.m, c.log_s are the given hi, lo): the same statistics through row_math.h
// soft_shard_class_kept, and class j's KeptEps stored at *kla, *side ((-inf, kSidePos) when the
// row's label is not valid; nothing when !store: a register-path group past the last row).
template <typename A>
__device__ __forceinline__ void soft_pass_b_push_kept(SoftPassB<A>& b, const SoftRowCtx<A>& c, A z, A q, A k,
                                                      bool valid, bool store, A* kla, int8_t* side) {
  soft_loss_push(b.loss, q, z, c.m);
  const KeptEps<A> e = soft_shard_class_kept(b.es, b.rest, z, q, c.m, c.log_s, c.t, c.star, k);
  if (store) {
    *kla = valid ? e.kla : -hl_inf<A>();
    *side = valid ? e.side : kSidePos;
  }
}

// Pass B of a row through `pass_b`, the kernel's loop over its classes (it calls push(z, q, j)):
// the plain push, or with KEPT the kept pass's, which also stores each class's k log|eps| and
// side at (r, j). store: false for a register-path group past the last row.
template <bool KEPT, typename S, typename PassB>
__device__ __forceinline__ void soft_pass_b_run(const FwdArgs<S>& a, PassB&& pass_b, SoftPassB<acc_type<S>>& pb,
                                                const SoftRowCtx<acc_type<S>>& ctx, int64_t r, const RowInfo& ri,
                                                int C, acc_type<S> k, bool store) {
  using A = acc_type<S>;
  if constexpr (!KEPT) {
    pass_b([&](A z, A q, int) { soft_pass_b_push(pb, ctx, z, q, k, a.compute_grad); });
  } else {
    const bool valid = ri.status == kLabelValid;
    A* kla = a.kla + r * C;
    int8_t* side = a.side + r * C;
    pass_b([&](A z, A q, int j) { soft_pass_b_push_kept(pb, ctx, z, q, k, valid, store, kla + j, side + j); });
  }
}

// Loss and SoftRow of the group's row (the same in every thread of the group); `raw` gets the
// merged statistics before they are finalised (soft_shard_stats).
template <int TPR, typename A>
__device__ __forceinline__ A soft_pass_b_finish(SoftPassB<A> b, const SoftRowCtx<A>& c, A k, bool grad,
                                                ReduceSmem<A>& red, SoftRow<A>* sr, SoftPassB<A>* raw = nullptr) {
  const A loss = soft_loss_value(group_reduce<TPR>(csum_value(b.loss), SumOp{}, red), c.t, c.m, c.log_s);
  *sr = {c.t, A(0), A(0), A(0)};
  if (!grad) return loss;
  // Every thread of the group reduces (star differs between the rows of a warp's groups).
  if (soft_needs_eps(grad, k)) b.es = group_reduce<TPR>(b.es, SoftEpsMergeOp{}, red);
  b.rest.p = group_reduce<TPR>(b.rest.p, LseMergeOp{}, red);
  b.rest.q = {group_reduce<TPR>(csum_value(b.rest.q), SumOp{}, red), A(0)};
  if (raw != nullptr) *raw = b;
  *sr = soft_needs_eps(grad, k) ? soft_row_finalize(b.es, b.rest, c.t, c.star, k, c.lse.hi)
                                : soft_row_k1(b.rest, c.t, c.star, c.lse.hi);
  return loss;
}

}  // namespace cuda
}  // namespace hl

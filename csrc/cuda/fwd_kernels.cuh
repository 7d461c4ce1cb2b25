// fwd_kernels.cuh: the forward kernels (per row: loss, and the stats the backward needs)
// and their launcher, templated on the logits' type. Torch-free; instantiated once per dtype in
// csrc/cuda/fwd_{f32,f64,f16,bf16}.cu so the four compile in parallel.
//
// What a row produces (hardloss_cuda/_schema.py, csrc/cuda/launch.h): loss, and
// stats = (lse, m, log_c, f_y) of row_math.h's OneHotRow for one-hot rows, or
// (t, c_pos, f_star, star) of SoftRow for soft rows, after (lse, lse_lo). No gradient is written here: the
// backward (bwd_kernels.cuh) reads the row once more and produces grad_loss * f in one pass
// from these numbers. Bytes (docs/CONTRACT.md section 4): the forward reads the logits once
// (N C s), the backward reads them once and writes the gradient once (2 N C s): 3 N C s in
// all, with no (N, C) buffer held between the passes.
//
// The math is csrc/row_math.h's (docs/ROW_MATH.md): the one-hot statistics (OneHotStats,
// onehot_merge, onehot_finalize), the soft path (lse, soft_loss_term, soft_log_abs_eps,
// SoftEpsStats, soft_finalize) and the label rules (label_status). The kernels only decide who
// holds which elements and how partial statistics meet.
//
// Paths, by the number of 16-byte vectors per row nvec = ceil(C / kN), kN = 16 / sizeof(T)
// (fp32 4, fp16/bf16 8, fp64 2 elements per vector):
//
//  1. fwd_reg_kernel, the row in registers (all of a thread's loads issued at once):
//     a. sub-warp / warp per row (TPR = 4, 8, 16 or 32 threads per row, 128-thread blocks, so
//        32 to 4 rows per block) for nvec <= 32 * NVMAX: C <= 1024 for fp32/fp16/bf16, <= 256
//        for fp64. Small rows need many rows in flight per SM and no block barrier; a group
//        never spans two warps, so its reduction is shuffles only.
//     b. block per row (128 to 1024 threads, NVMAX vectors = 32 fp32 values per thread, 8 for
//        fp64) up to nvec <= 1024 * NVMAX: C <= 32768 (fp32/fp16/bf16), 4096 (fp64, at most 512
//        threads). The block is the smallest power of two that holds the row, >= 128 threads.
//  2. fwd_stream_kernel, block of 1024 threads per row, for longer rows, U vectors per thread
//     and step in flight.
//     - one-hot rows: one pass (the statistics need each logit once, plus z_y); no shared
//       memory, so the occupancy is not limited by a row cache.
//     - soft rows: a pass for lse and t = sum q, then a pass for the loss (and, with
//       compute_grad, the |eps|^k statistics), which needs lse first. The first pass copies the
//       row into dynamic shared memory, as much of it as fits (227 KB on H100: fp32 C <= ~58000,
//       bf16 C <= ~116000 entirely); the second reads the cached part from there and re-reads
//       only the rest from global memory, where it is usually still in L2 (the grid holds
//       about one row per SM in flight).
//
// Soft targets (label smoothing, mixture rows, probability targets, class weights with them):
// the target row q_j is recomputed in each pass from the read-only cache (weight, mixture row
// W[y], probability row) rather than kept. Without compute_grad (evaluation) the |eps|^k
// statistics are skipped and stats 1..3 are 0.
//
// The mixture gradient dW is not computed here: hardloss_cuda/_ops.py derives it in Python
// from the returned lse with a one-hot matmul, which is deterministic (no atomics needed).
//
// Labels: a label outside [0, C) that is not ignore_index is never used as an index (not for
// z[y], weight[y] or mixture[y]); its row gets loss NaN. Ignored rows get loss 0. Both still
// return the row's logsumexp, and stats 1..3 = 0.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
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
  bool aligned;
  bool k_is_one;
  bool compute_grad;
};

template <typename A>
__device__ __forceinline__ void write_row(A* loss, A* stats, int64_t row, A l, LseSplit<A> lse, A c2, A c3, A c4,
                                          A c5) {
  loss[row] = l;
  A* st = stats + row * kStatsCols;
  st[kColLse] = lse.hi;
  st[kColLseLo] = lse.lo;
  st[2] = c2;
  st[3] = c3;
  st[4] = c4;
  st[5] = c5;
}

// One-hot row: finalise the merged statistics (over i != y, or over every class when the
// label is not valid) and write loss and stats. One thread per row.
template <typename S>
__device__ __forceinline__ void finish_onehot_row(const FwdArgs<S>& a, int64_t row, const RowInfo& ri,
                                                  OneHotStats<acc_type<S>> st, acc_type<S> z_y) {
  using A = acc_type<S>;
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

// Soft row: loss (before the label rule), lse and the finalised |eps|^k row. One thread.
template <typename S>
__device__ __forceinline__ void finish_soft_row(const FwdArgs<S>& a, int64_t row, const RowInfo& ri,
                                                acc_type<S> loss, LseSplit<acc_type<S>> lse,
                                                const SoftRow<acc_type<S>>& sr) {
  using A = acc_type<S>;
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
template <typename A>
struct SoftPassA {
  A t;
  A qmin;
  A qmax;
};

template <typename A>
__device__ __forceinline__ void soft_pass_a_push(SoftPassA<A>& p, A q) {
  p.t += q;
  p.qmin = q < p.qmin ? q : p.qmin;
  p.qmax = q > p.qmax ? q : p.qmax;
}

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

template <int TPR, typename A>
__device__ __forceinline__ SoftRowCtx<A> soft_pass_a_reduce(LseStats<A> ls, SoftPassA<A> p, ReduceSmem<A>& red) {
  ls = group_reduce<TPR>(ls, LseMergeOp{}, red);
  SoftRowCtx<A> c;
  c.t = group_reduce<TPR>(p.t, SumOp{}, red);
  QMass<A> qm = qmass_init<A>();
  qm.qmin = group_reduce<TPR>(p.qmin, MinOp{}, red);
  qm.qmax = group_reduce<TPR>(p.qmax, MaxOp{}, red);
  c.m = ls.m;
  c.log_s = hl_log(ls.s);
  c.lse = lse_split(ls);
  c.t_div = c.t != A(0) ? c.t : A(1);  // t == 0: q = 0, f = 0 (as the reference)
  c.star = soft_star(qm, c.t);
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
  if (grad) soft_eps_class(b.es, b.rest, z, q, c.m, c.log_s, c.t, c.t_div, c.star, k);
}

// Loss and SoftRow of the group's row (the same in every thread of the group).
template <int TPR, typename A>
__device__ __forceinline__ A soft_pass_b_finish(SoftPassB<A> b, const SoftRowCtx<A>& c, A k, bool grad,
                                                ReduceSmem<A>& red, SoftRow<A>* sr) {
  const A acc = group_reduce<TPR>(csum_value(b.loss), SumOp{}, red);
  // A row of nothing but -inf logits has no softmax: NaN, as PyTorch.
  const A loss = c.m == -hl_inf<A>() ? hl_nan<A>() : acc + c.t * c.log_s;
  *sr = {A(0), A(0), A(0), A(0)};
  if (grad) {
    b.es = group_reduce<TPR>(b.es, SoftEpsMergeOp{}, red);
    b.rest.p = group_reduce<TPR>(b.rest.p, LseMergeOp{}, red);
    b.rest.q = {group_reduce<TPR>(csum_value(b.rest.q), SumOp{}, red), A(0)};
    *sr = soft_row_finalize(b.es, b.rest, c.t, c.star, k);
  }
  return loss;
}

// ---------------------------------------------------------------------------------------
// Path 1: the row in registers. Thread `lane` of a group of TPR threads holds the vectors
// v = i * TPR + lane, i < NV (coalesced: consecutive lanes, consecutive 16-byte vectors).
// ---------------------------------------------------------------------------------------
// fp32 accumulation: at least 1024 threads resident per SM (a 64-register cap), enough loads
// in flight. fp64: 512 (128 registers; double exp / log need many, and spill under 64).
template <typename S, int BLOCK>
constexpr int kRegMinBlocks = (sizeof(acc_type<S>) == 8 ? 512 : 1024) / BLOCK > 0
                                  ? (sizeof(acc_type<S>) == 8 ? 512 : 1024) / BLOCK
                                  : 1;

// K_IS_ONE (one-hot rows with k == 1: one exp per element) is a template argument here: as a
// runtime select inside the unrolled statistics it made ptxas spill at 32 values per thread.
template <typename S, int BLOCK, int TPR, int NV, bool SOFT, bool K_IS_ONE>
__global__ void __launch_bounds__(BLOCK, (kRegMinBlocks<S, BLOCK>)) fwd_reg_kernel(const FwdArgs<S> a) {
  using A = acc_type<S>;
  constexpr int VEC = Pack<S>::kN;
  constexpr int E = NV * VEC;
  constexpr int RPB = BLOCK / TPR;  // rows per block
  static_assert(TPR == BLOCK || TPR <= 32, "a group is a sub-warp, a warp or the block");
  __shared__ ReduceSmem<A> red;

  const int lane = static_cast<int>(threadIdx.x) % TPR;
  const int grp = static_cast<int>(threadIdx.x) / TPR;
  const int C = a.C;
  const A k = a.k;

  // Every condition around a group_reduce below is uniform over the warp (TPR <= 32: the
  // shuffles take the full mask) or the block (TPR == BLOCK): the loop bound, SOFT and
  // a.compute_grad. Rows differ only in data.
  for (int64_t row0 = static_cast<int64_t>(blockIdx.x) * RPB; row0 < a.N;
       row0 += static_cast<int64_t>(gridDim.x) * RPB) {
    const int64_t row = row0 + grp;
    const bool active = row < a.N;
    // Groups past the last row compute on the last row (every lane must take part in the
    // shuffles) but store nothing.
    const int64_t r = active ? row : a.N - 1;
    const RowInfo ri = row_info(a.tg, r);
    const S* zrow = a.logits + r * C;
    A z_y = A(0);
    if (!SOFT && ri.y >= 0) z_y = to_acc(zrow[ri.y]);

    A x[E];
#pragma unroll
    for (int i = 0; i < NV; ++i) unpack(load_pack(zrow, i * TPR + lane, C, a.aligned), &x[i * VEC]);

    if constexpr (!SOFT) {
      const OneHotStats<A> loc = onehot_stats_regs<NV, VEC, K_IS_ONE>(x, lane, TPR, ri.y, k);
      const OneHotStats<A> st = group_reduce<TPR>(loc, OneHotMergeOp<A>{k}, red);
      if (active && lane == 0) finish_onehot_row(a, row, ri, st, z_y);
    } else {
      // Pass A: lse, t = sum q, min / max q.
      SoftPassA<A> pa = {A(0), hl_inf<A>(), -hl_inf<A>()};
#pragma unroll
      for (int i = 0; i < NV; ++i) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const int j = (i * TPR + lane) * VEC + e;
          if (j < C) soft_pass_a_push(pa, soft_q(a.tg, r, ri, j));
        }
      }
      const SoftRowCtx<A> ctx = soft_pass_a_reduce<TPR>(lse_stats_regs(x), pa, red);
      // Pass B: loss and, for the backward, the |eps|^k statistics.
      SoftPassB<A> pb = soft_pass_b_init<A>();
#pragma unroll
      for (int i = 0; i < NV; ++i) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const int j = (i * TPR + lane) * VEC + e;
          if (j < C) soft_pass_b_push(pb, ctx, x[i * VEC + e], soft_q(a.tg, r, ri, j), k, a.compute_grad);
        }
      }
      SoftRow<A> sr;
      const A loss = soft_pass_b_finish<TPR>(pb, ctx, k, a.compute_grad, red, &sr);
      if (active && lane == 0) finish_soft_row(a, row, ri, loss, ctx.lse, sr);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Path 2: streaming, one block per row. Per pass, thread t handles the vectors
// v = vb + u * BLOCK + t (u < U) of each step vb: U independent 16-byte loads in flight.
// Soft rows: vectors v < a.ncache are copied to shared memory by the first pass and read
// from there by the second; each such vector is only ever touched by the thread that loaded
// it (no barrier needed between the copy and the read). One-hot rows: a.ncache == 0.
// ---------------------------------------------------------------------------------------
template <typename S>
__device__ __forceinline__ Pack<S> fetch_pack(const Pack<S>* cache, const S* zrow, int v,
                                              const FwdArgs<S>& a) {
  return v < a.ncache ? cache[v] : load_pack(zrow, v, a.C, a.aligned);
}

template <typename S, int BLOCK, int U, bool SOFT>
__global__ void __launch_bounds__(BLOCK) fwd_stream_kernel(const FwdArgs<S> a) {
  using A = acc_type<S>;
  constexpr int VEC = Pack<S>::kN;
  constexpr int E = U * VEC;
  constexpr int STEP = BLOCK * U;
  extern __shared__ uint4 cache_raw[];
  Pack<S>* cache = reinterpret_cast<Pack<S>*>(cache_raw);
  __shared__ ReduceSmem<A> red;

  const int tid = static_cast<int>(threadIdx.x);
  const int C = a.C;
  const int nvec = (C + VEC - 1) / VEC;
  const A k = a.k;

  for (int64_t r = blockIdx.x; r < a.N; r += gridDim.x) {
    const RowInfo ri = row_info(a.tg, r);
    const S* zrow = a.logits + r * C;
    if constexpr (!SOFT) {
      // One pass: every logit once (and z_y, a broadcast load).
      const A z_y = ri.y >= 0 ? to_acc(zrow[ri.y]) : A(0);
      OneHotStats<A> st = onehot_init<A>();
      for (int vb = 0; vb < nvec; vb += STEP) {
        A x[E];
#pragma unroll
        for (int u = 0; u < U; ++u) unpack(load_pack(zrow, vb + u * BLOCK + tid, C, a.aligned), &x[u * VEC]);
        st = onehot_merge(st, onehot_stats_regs<U, VEC>(x, vb + tid, BLOCK, ri.y, k, a.k_is_one), k);
      }
      st = group_reduce<BLOCK>(st, OneHotMergeOp<A>{k}, red);
      if (tid == 0) finish_onehot_row(a, r, ri, st, z_y);
    } else {
      // Pass A: lse, t and min / max q; the row goes to the shared-memory cache.
      LseStats<A> ls = lse_init<A>();
      SoftPassA<A> pa = {A(0), hl_inf<A>(), -hl_inf<A>()};
      for (int vb = 0; vb < nvec; vb += STEP) {
        A x[E];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int v = vb + u * BLOCK + tid;
          const Pack<S> p = load_pack(zrow, v, C, a.aligned);
          if (v < a.ncache) cache[v] = p;
          unpack(p, &x[u * VEC]);
        }
        ls = lse_merge(ls, lse_stats_regs(x));
#pragma unroll
        for (int u = 0; u < U; ++u) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const int j = (vb + u * BLOCK + tid) * VEC + e;
            if (j < C) soft_pass_a_push(pa, soft_q(a.tg, r, ri, j));
          }
        }
      }
      const SoftRowCtx<A> ctx = soft_pass_a_reduce<BLOCK>(ls, pa, red);
      // Pass B: loss and, for the backward, the |eps|^k statistics.
      SoftPassB<A> pb = soft_pass_b_init<A>();
      for (int vb = 0; vb < nvec; vb += STEP) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int v = vb + u * BLOCK + tid;
          A x[VEC];
          unpack(fetch_pack(cache, zrow, v, a), x);
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const int j = v * VEC + e;
            if (j < C) soft_pass_b_push(pb, ctx, x[e], soft_q(a.tg, r, ri, j), k, a.compute_grad);
          }
        }
      }
      SoftRow<A> sr;
      const A loss = soft_pass_b_finish<BLOCK>(pb, ctx, k, a.compute_grad, red, &sr);
      if (tid == 0) finish_soft_row(a, r, ri, loss, ctx.lse, sr);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Launcher
// ---------------------------------------------------------------------------------------
template <typename S, int BLOCK, int TPR, int NV, bool SOFT>
cudaError_t launch_reg(const FwdArgs<S>& a, const DeviceInfo& d, cudaStream_t stream) {
  constexpr int RPB = BLOCK / TPR;
  const int64_t groups = (a.N + RPB - 1) / RPB;
  // A few waves of resident blocks; the blocks stride over the remaining row groups.
  const int64_t cap = static_cast<int64_t>(d.sms) * (2048 / BLOCK) * 4;
  const unsigned grid = static_cast<unsigned>(std::min(groups, cap));
  if (!SOFT && a.k_is_one) {
    fwd_reg_kernel<S, BLOCK, TPR, NV, SOFT, !SOFT><<<grid, BLOCK, 0, stream>>>(a);
  } else {
    fwd_reg_kernel<S, BLOCK, TPR, NV, SOFT, false><<<grid, BLOCK, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <typename S, bool SOFT>
cudaError_t launch_stream(FwdArgs<S> a, const DeviceInfo& d, cudaStream_t stream) {
  constexpr int BLOCK = 1024;
  // 16 fp32 values (4 fp32 / 2 fp16 vectors) per thread and step; 8 fp64 values.
  constexpr int U = sizeof(acc_type<S>) == 8 ? 4 : 16 / Pack<S>::kN;
  auto kernel = fwd_stream_kernel<S, BLOCK, U, SOFT>;
  a.ncache = 0;
  size_t smem = 0;
  if constexpr (SOFT) {
    // Only the soft rows read the row twice: they alone get the shared-memory row cache.
    constexpr int kMaxDevices = 64;
    static std::atomic<int> dyn_limit[kMaxDevices];  // 0: not configured yet on that device
    int limit = d.device < kMaxDevices ? dyn_limit[d.device].load(std::memory_order_relaxed) : 0;
    if (limit == 0) {
      cudaFuncAttributes attr;
      cudaError_t err = cudaFuncGetAttributes(&attr, kernel);
      if (err != cudaSuccess) return err;
      limit = std::max(16, d.smem_optin - static_cast<int>(attr.sharedSizeBytes));
      limit -= limit % 16;
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit);
      if (err != cudaSuccess) return err;
      if (d.device < kMaxDevices) dyn_limit[d.device].store(limit, std::memory_order_relaxed);
    }
    const int nvec = (a.C + Pack<S>::kN - 1) / Pack<S>::kN;
    a.ncache = std::min(nvec, limit / 16);
    smem = static_cast<size_t>(a.ncache) * 16;
  }
  int per_sm = 1;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, BLOCK, smem) != cudaSuccess ||
      per_sm < 1) {
    (void)cudaGetLastError();
    per_sm = 1;
  }
  // Resident blocks only: the rows in flight (and the soft rows' re-read from L2) stay bounded.
  const unsigned grid =
      static_cast<unsigned>(std::min<int64_t>(a.N, static_cast<int64_t>(d.sms) * per_sm));
  kernel<<<grid, BLOCK, smem, stream>>>(a);
  return cudaGetLastError();
}

// Path by row length (see the top of this file).
template <typename S, bool SOFT>
cudaError_t launch_fwd_path(const FwdArgs<S>& a, const DeviceInfo& d, cudaStream_t stream) {
  using A = acc_type<S>;
  constexpr int VEC = Pack<S>::kN;
  // Vectors per thread in the register path: 32 fp32 values (8 fp32 / 4 fp16 vectors) or
  // 8 fp64 values (4 vectors); fp64 blocks stop at 512 threads (see kRegMinBlocks).
  constexpr bool kF64 = sizeof(A) == 8;
  constexpr int NVMAX = kF64 ? 4 : 32 / VEC;
  const int64_t nvec = (a.C + VEC - 1) / VEC;
  if (nvec <= 4) return launch_reg<S, 128, 4, 1, SOFT>(a, d, stream);
  if (nvec <= 8) return launch_reg<S, 128, 8, 1, SOFT>(a, d, stream);
  if (nvec <= 16) return launch_reg<S, 128, 16, 1, SOFT>(a, d, stream);
  if (nvec <= 32) return launch_reg<S, 128, 32, 1, SOFT>(a, d, stream);
  if (nvec <= 64) return launch_reg<S, 128, 32, 2, SOFT>(a, d, stream);
  if (nvec <= 128) return launch_reg<S, 128, 32, 4, SOFT>(a, d, stream);
  if constexpr (NVMAX >= 8) {
    if (nvec <= 256) return launch_reg<S, 128, 32, 8, SOFT>(a, d, stream);
  }
  if (nvec <= 128 * NVMAX) return launch_reg<S, 128, 128, NVMAX, SOFT>(a, d, stream);
  if (nvec <= 256 * NVMAX) return launch_reg<S, 256, 256, NVMAX, SOFT>(a, d, stream);
  if (nvec <= 512 * NVMAX) return launch_reg<S, 512, 512, NVMAX, SOFT>(a, d, stream);
  if constexpr (!kF64) {
    if (nvec <= 1024 * NVMAX) return launch_reg<S, 1024, 1024, NVMAX, SOFT>(a, d, stream);
  }
  return launch_stream<S, SOFT>(a, d, stream);
}

template <typename S>
cudaError_t launch_fwd_typed(const FwdParams& p, cudaStream_t stream) {
  using A = acc_type<S>;
  if (p.N <= 0) return cudaSuccess;
  if (p.C < 1 || p.C > kMaxClasses) return cudaErrorInvalidValue;
  DeviceInfo d;
  cudaError_t err = device_info(&d);
  if (err != cudaSuccess) return err;

  FwdArgs<S> a;
  a.logits = static_cast<const S*>(p.logits);
  a.tg = make_target_args<S>(p.tg, p.C);
  a.loss = static_cast<A*>(p.loss);
  a.stats = static_cast<A*>(p.stats);
  a.N = p.N;
  a.C = static_cast<int>(p.C);
  a.ncache = 0;
  a.k = static_cast<A>(p.k);
  a.k_is_one = p.k == 1.0;
  a.compute_grad = p.compute_grad;
  a.aligned = p.C % Pack<S>::kN == 0 && reinterpret_cast<uintptr_t>(p.logits) % 16 == 0;
  return is_soft(p.tg) ? launch_fwd_path<S, true>(a, d, stream) : launch_fwd_path<S, false>(a, d, stream);
}

}  // namespace cuda
}  // namespace hl

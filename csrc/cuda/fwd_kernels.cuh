// fwd_kernels.cuh: the forward kernels (per row: loss, and the stats the backward needs),
// templated on the logits' type; torch-free. What a row computes, shared by both, is
// fwd_rows.cuh; the launcher (path by row length, grids) is fwd_launch.cuh.
//
// With softcap c != 0 every logit is read as c tanh(z / c) where it is loaded (unpack_logits),
// the padding past C stays -inf; the row cache holds the logits as stored.
//
// What a row produces (row_math.h "What a row keeps"): loss, and stats = (lse, lse_lo) then
// (f_y, m, log_c) of OneHotRow for one-hot rows or (t, c_pos, f_star, star) of SoftRow for
// soft rows. No gradient is written here: the backward (bwd_kernels.cuh) reads the row once
// more and produces grad_loss * f in one pass from these numbers. Bytes (docs/CONTRACT.md section 4): the forward reads the logits once
// (N C s), the backward reads them once and writes the gradient once (2 N C s): 3 N C s in
// all, with no (N, C) buffer held between the passes.
//
// The math is csrc/row_math.h's (docs/ROW_MATH.md): the one-hot statistics (OneHotStats,
// onehot_merge, onehot_finalize), the soft path (QMass, soft_loss_push, soft_eps_class,
// soft_row_finalize) and the label rules (label_status). The kernels only decide who
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
// statistics are skipped and stats columns 2.. are 0.
//
// The mixture gradient dW is not computed here: hardloss_cuda/reference.py (target_grads) derives it
// from the returned lse with a one-hot matmul, which is deterministic (no atomics needed).
//
// Labels: a label outside [0, C) that is not ignore_index is never used as an index (not for
// z[y], weight[y] or mixture[y]); its row gets loss NaN. Ignored rows get loss 0. Both still
// return the row's logsumexp, and stats columns 2.. = 0.
#pragma once

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/fwd_rows.cuh"
#include "cuda/launch.h"

namespace hl {
namespace cuda {

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
// KEPT (soft_shard_stats' kept pass, FwdArgs::kla): a template argument too, so that the plain
// soft kernels keep their registers (as a runtime branch it doubled their spills); it implies
// row_stats, so those kernels have no pass A.
template <typename S, int BLOCK, int TPR, int NV, bool SOFT, bool K_IS_ONE, bool KEPT>
__global__ void __launch_bounds__(BLOCK, (kRegMinBlocks<S, BLOCK>)) fwd_reg_kernel(const FwdArgs<S> a) {
  using A = acc_type<S>;
  constexpr int VEC = Pack<S>::kN;
  constexpr int E = NV * VEC;
  constexpr int RPB = BLOCK / TPR;  // rows per block
  static_assert(TPR == BLOCK || TPR <= 32, "a group is a sub-warp, a warp or the block");
  HL_SHARED(ReduceSmem<A>, red);

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
    if (!SOFT && ri.y >= 0) z_y = softcap_value(to_acc(zrow[ri.y]), a.cap);

    A x[E];
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int v = i * TPR + lane;
      unpack_logits(load_pack(zrow, v, C, a.aligned), v, C, a.cap, &x[i * VEC]);
    }

    if constexpr (!SOFT) {
      const OneHotStats<A> loc = onehot_stats_regs<NV, VEC, K_IS_ONE>(x, lane, TPR, ri.y, k);
      const OneHotStats<A> st = group_reduce<TPR>(loc, OneHotMergeOp<A>{k}, red);
      if (active && lane == 0) finish_onehot_row(a, row, ri, st, z_y);
    } else {
      // Pass A: lse, t = sum q, min / max q; soft_shard_stats: given (a.row_stats).
      QMass<A> pa = qmass_init<A>();
      if (!KEPT && a.row_stats == nullptr) {
#pragma unroll
        for (int i = 0; i < NV; ++i) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const int j = (i * TPR + lane) * VEC + e;
            if (j < C) qmass_push(pa, soft_q(a.tg, r, ri, j));
          }
        }
      }
      const SoftRowCtx<A> ctx = KEPT || a.row_stats != nullptr
                                    ? soft_ctx_given(a.row_stats, r)
                                    : soft_pass_a_reduce<TPR>(lse_stats_regs(x), pa, k, red);
      // Pass B: loss and, for the backward, the |eps|^k statistics; soft_shard_stats' kept pass
      // (KEPT) also stores each class's k log|eps| and side.
      SoftPassB<A> pb = soft_pass_b_init<A>();
      auto pass_b = [&](auto push) {
#pragma unroll
        for (int i = 0; i < NV; ++i) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const int j = (i * TPR + lane) * VEC + e;
            if (j < C) push(x[i * VEC + e], soft_q(a.tg, r, ri, j), j);
          }
        }
      };
      soft_pass_b_run<KEPT>(a, pass_b, pb, ctx, r, ri, C, k, active);
      SoftRow<A> sr;
      SoftPassB<A> raw = pb;
      const A loss = soft_pass_b_finish<TPR>(pb, ctx, k, a.compute_grad, red, &sr, &raw);
      if (active && lane == 0) finish_soft_row(a, row, ri, loss, ctx.lse, sr, raw);
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

template <typename S, int BLOCK, int U, bool SOFT, bool KEPT>
__global__ void __launch_bounds__(BLOCK) fwd_stream_kernel(const FwdArgs<S> a) {
  using A = acc_type<S>;
  constexpr int VEC = Pack<S>::kN;
  constexpr int E = U * VEC;
  constexpr int STEP = BLOCK * U;
  // One dynamic allocation (launch_stream sizes it): the reduction scratch, then the row cache.
  HL_SHARED_DYNAMIC(uint4, smem_raw);
  static_assert(sizeof(ReduceSmem<A>) % sizeof(uint4) == 0, "the row cache stays 16-byte aligned");
  ReduceSmem<A>& red = *reinterpret_cast<ReduceSmem<A>*>(smem_raw);
  Pack<S>* cache = reinterpret_cast<Pack<S>*>(smem_raw + sizeof(ReduceSmem<A>) / sizeof(uint4));

  const int tid = static_cast<int>(threadIdx.x);
  const int C = a.C;
  const int nvec = (C + VEC - 1) / VEC;
  const A k = a.k;

  for (int64_t r = blockIdx.x; r < a.N; r += gridDim.x) {
    const RowInfo ri = row_info(a.tg, r);
    const S* zrow = a.logits + r * C;
    if constexpr (!SOFT) {
      // One pass: every logit once (and z_y, a broadcast load).
      const A z_y = ri.y >= 0 ? softcap_value(to_acc(zrow[ri.y]), a.cap) : A(0);
      OneHotStats<A> st = onehot_init<A>();
      for (int vb = 0; vb < nvec; vb += STEP) {
        A x[E];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int v = vb + u * BLOCK + tid;
          unpack_logits(load_pack(zrow, v, C, a.aligned), v, C, a.cap, &x[u * VEC]);
        }
        st = onehot_merge(st, onehot_stats_regs<U, VEC>(x, vb + tid, BLOCK, ri.y, k, a.k_is_one), k);
      }
      st = group_reduce<BLOCK>(st, OneHotMergeOp<A>{k}, red);
      if (tid == 0) finish_onehot_row(a, r, ri, st, z_y);
    } else {
      // Pass A: lse, t and min / max q; the row goes to the shared-memory cache.
      // soft_shard_stats: given (a.row_stats), no pass A (the launcher sets no cache).
      LseStats<A> ls = lse_init<A>();
      QMass<A> pa = qmass_init<A>();
      for (int vb = 0; !KEPT && a.row_stats == nullptr && vb < nvec; vb += STEP) {
        A x[E];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int v = vb + u * BLOCK + tid;
          const Pack<S> p = load_pack(zrow, v, C, a.aligned);
          if (v < a.ncache) cache[v] = p;  // as stored: capped again when read back
          unpack_logits(p, v, C, a.cap, &x[u * VEC]);
        }
        ls = lse_merge(ls, lse_stats_regs(x));
#pragma unroll
        for (int u = 0; u < U; ++u) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const int j = (vb + u * BLOCK + tid) * VEC + e;
            if (j < C) qmass_push(pa, soft_q(a.tg, r, ri, j));
          }
        }
      }
      const SoftRowCtx<A> ctx = KEPT || a.row_stats != nullptr ? soft_ctx_given(a.row_stats, r)
                                                               : soft_pass_a_reduce<BLOCK>(ls, pa, k, red);
      // Pass B: loss and, for the backward, the |eps|^k statistics; soft_shard_stats' kept pass
      // (KEPT, as fwd_reg_kernel's) also stores each class's k log|eps| and side.
      SoftPassB<A> pb = soft_pass_b_init<A>();
      auto pass_b = [&](auto push) {
        for (int vb = 0; vb < nvec; vb += STEP) {
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int v = vb + u * BLOCK + tid;
            A x[VEC];
            unpack_logits(fetch_pack(cache, zrow, v, a), v, C, a.cap, x);
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
              const int j = v * VEC + e;
              if (j < C) push(x[e], soft_q(a.tg, r, ri, j), j);
            }
          }
        }
      };
      soft_pass_b_run<KEPT>(a, pass_b, pb, ctx, r, ri, C, k, true);
      SoftRow<A> sr;
      SoftPassB<A> raw = pb;
      const A loss = soft_pass_b_finish<BLOCK>(pb, ctx, k, a.compute_grad, red, &sr, &raw);
      if (tid == 0) finish_soft_row(a, r, ri, loss, ctx.lse, sr, raw);
    }
  }
}

}  // namespace cuda
}  // namespace hl

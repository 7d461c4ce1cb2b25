// fwd_kernels.cuh: the forward kernels (loss, pseudo-gradient, lse per row) and their
// launcher, templated on the logits' type. Torch-free; instantiated once per dtype in
// csrc/cuda/fwd_{f32,f64,f16,bf16}.cu so the four compile in parallel.
//
// The math is csrc/row_math.h's (docs/ROW_MATH.md): the one-hot statistics (OneHotStats,
// onehot_merge, onehot_finalize, onehot_fj), the soft path (lse, soft_loss_term,
// soft_log_abs_eps, SoftEpsStats, soft_finalize, soft_f) and the label rules (label_status).
// The kernels only decide who holds which elements and how partial statistics meet.
//
// Paths, by the number of 16-byte vectors per row nvec = ceil(C / kN), kN = 16 / sizeof(T)
// (fp32 4, fp16/bf16 8, fp64 2 elements per vector):
//
//  1. fwd_reg_kernel, row in registers, logits read once, gradient written once:
//     a. sub-warp / warp per row (TPR = 4, 8, 16 or 32 threads per row, 128-thread blocks, so
//        32 to 4 rows per block) for nvec <= 32 * NVMAX: C <= 1024 for fp32/fp16/bf16, <= 256
//        for fp64. Small rows need many rows in flight per SM and no block barrier; a group
//        never spans two warps, so its reduction is shuffles only.
//     b. block per row (128 to 1024 threads, NVMAX vectors = 32 fp32 values per thread, 8 for
//        fp64) up to nvec <= 1024 * NVMAX: C <= 32768 (fp32/fp16/bf16), 4096 (fp64, at most 512
//        threads). The block is the smallest power of two that holds the row, >= 128 threads.
//  2. fwd_stream_kernel, block of 1024 threads per row, for longer rows: statistics pass then
//     gradient pass. The first pass also copies the row into dynamic shared memory, as much of
//     it as fits (227 KB on H100: fp32 C <= ~58000, bf16 C <= ~116000 entirely); the gradient
//     pass reads the cached part from shared memory and re-reads only the rest from global
//     memory, where it is usually still in L2 (the grid holds about one row per SM in flight,
//     e.g. 132 x 256 KB for bf16 C = 131072, well under the 50 MB L2). The gradient is stored
//     with streaming (evict-first) stores so it does not push those rows out of L2.
//
// Soft targets (label smoothing, mixture rows, probability targets, class weights with them)
// take the same paths with three passes over the row (lse and t = sum q; loss and the
// |eps|^k statistics; gradient); the target row q_j is recomputed in each pass from the
// read-only cache (weight, mixture row W[y], probability row) rather than kept.
//
// The mixture gradient dW is not computed here: hardloss_cuda/_ops.py derives it in Python
// from the returned lse with a one-hot matmul, which is deterministic (no atomics needed).
//
// Labels: a label outside [0, C) that is not ignore_index is never used as an index (not for
// z[y], weight[y] or mixture[y]); its row gets loss NaN and gradient NaN. Ignored rows get
// loss 0 and gradient 0. Both still return the row's logsumexp.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace hl {
namespace cuda {

template <typename S>
struct FwdArgs {
  using A = acc_type<S>;
  const S* logits;
  S* grad;  // may alias logits (fwd_inplace); nullptr: no gradient
  const int64_t* target;
  const S* probs;
  const A* weight;
  const A* mixture;
  A* loss;
  A* lse;
  int64_t N;
  int64_t ignore_index;
  int C;
  int ncache;  // fwd_stream_kernel: vectors of each row cached in shared memory
  A k;
  A one_minus_s;
  A s_over_C;
  bool soft;
  bool aligned;
  bool k_is_one;
};

struct RowInfo {
  int status;  // kLabelValid / kLabelIgnored / kLabelBad (always valid for probabilities)
  int y;       // the label when it is valid (< C <= 2^30), else -1: the only value ever
               // used as an index
};

template <typename S>
__device__ __forceinline__ RowInfo row_info(const FwdArgs<S>& a, int64_t row) {
  if (a.target == nullptr) return {kLabelValid, -1};
  const int64_t y = ldg(a.target + row);
  const int status = label_status(y, static_cast<int64_t>(a.C), a.ignore_index);
  return {status, status == kLabelValid ? static_cast<int>(y) : -1};
}

// q_j of ROW_MATH.md section 1 (class weights folded in) for j < C.
template <typename S>
__device__ __forceinline__ acc_type<S> soft_q(const FwdArgs<S>& a, int64_t row, const RowInfo& ri,
                                              int j) {
  using A = acc_type<S>;
  const A w = a.weight != nullptr ? ldg(a.weight + j) : A(1);
  if (a.probs != nullptr) {
    return q_probability(to_acc(ldg(a.probs + row * a.C + j)), w, a.one_minus_s, a.s_over_C);
  }
  if (ri.status != kLabelValid) return A(0);  // ignored / bad label: q = 0, nothing read at y
  if (a.mixture != nullptr) return q_mixture(ldg(a.mixture + static_cast<int64_t>(ri.y) * a.C + j), w);
  return q_smoothed(j == ri.y, w, a.one_minus_s, a.s_over_C);
}

// The gradient value of a row whose label is not valid: 0 when ignored, NaN when bad.
template <typename A>
__device__ __forceinline__ A invalid_fill(int status) {
  return status == kLabelIgnored ? A(0) : hl_nan<A>();
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

template <typename S, int BLOCK, int TPR, int NV, bool SOFT>
__global__ void __launch_bounds__(BLOCK, (kRegMinBlocks<S, BLOCK>)) fwd_reg_kernel(const FwdArgs<S> a) {
  using A = acc_type<S>;
  constexpr int VEC = Pack<S>::kN;
  constexpr int E = NV * VEC;
  constexpr int RPB = BLOCK / TPR;  // rows per block
  static_assert(TPR == BLOCK || TPR <= 32, "a group is a sub-warp, a warp or the block");
  static_assert(E <= 32, "the soft path keeps one sign bit per element in a uint32");
  __shared__ ReduceSmem<A> red;

  const int lane = static_cast<int>(threadIdx.x) % TPR;
  const int grp = static_cast<int>(threadIdx.x) / TPR;
  const int C = a.C;
  const A k = a.k;

  for (int64_t row0 = static_cast<int64_t>(blockIdx.x) * RPB; row0 < a.N;
       row0 += static_cast<int64_t>(gridDim.x) * RPB) {
    const int64_t row = row0 + grp;
    const bool active = row < a.N;
    // Groups past the last row compute on the last row (every lane must take part in the
    // shuffles) but store nothing.
    const int64_t r = active ? row : a.N - 1;
    const RowInfo ri = row_info(a, r);
    const S* zrow = a.logits + r * C;
    // The label's logit, read before any lane of the row writes its gradient (fwd_inplace).
    A z_y = A(0);
    if (!SOFT && ri.y >= 0) z_y = to_acc(zrow[ri.y]);

    A x[E];
#pragma unroll
    for (int i = 0; i < NV; ++i) unpack(load_pack(zrow, i * TPR + lane, C, a.aligned), &x[i * VEC]);

    A loss, lse;
    S* grow = a.grad != nullptr ? a.grad + r * C : nullptr;
    if constexpr (!SOFT) {
      const OneHotStats<A> loc = onehot_stats_regs<NV, VEC>(x, lane, TPR, ri.y, k, a.k_is_one);
      const OneHotStats<A> st = group_reduce<TPR>(loc, OneHotMergeOp<A>{k}, red);
      const A w_y = (ri.y >= 0 && a.weight != nullptr) ? ldg(a.weight + ri.y) : A(1);
      const OneHotRow<A> rr = onehot_finalize(st, z_y, w_y, k);
      if (ri.y >= 0) {
        loss = rr.loss;
        lse = rr.lse;
      } else {
        lse = lse_value(LseStats<A>{st.m, st.s1});  // over every class (no label excluded)
        loss = invalid_fill<A>(ri.status);
      }
      if constexpr (TPR <= 32) __syncwarp();  // orders the z_y reads before the stores
      if (grow != nullptr && active) {
        // onehot_fj = w_y x_j exp(k (m_loc - m) + log_c), x_j = exp(k (z_j - m_loc)) (common.cuh)
        const A scale = hl_exp(k * (loc.m - rr.m) + rr.log_c);
        const A fill = invalid_fill<A>(ri.status);
#pragma unroll
        for (int i = 0; i < NV; ++i) {
          const int v = i * TPR + lane;
          A f[VEC];
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const int j = v * VEC + e;
            f[e] = ri.y < 0 ? fill : (j == ri.y ? rr.f_y : rr.w_y * x[i * VEC + e] * scale);
          }
          store_pack(grow, v, C, a.aligned, f);
        }
      }
    } else {
      // Pass A: lse and t = sum q.
      const LseStats<A> ls = group_reduce<TPR>(lse_stats_regs(x), LseMergeOp{}, red);
      A t_loc = A(0);
#pragma unroll
      for (int i = 0; i < NV; ++i) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const int j = (i * TPR + lane) * VEC + e;
          if (j < C) t_loc += soft_q(a, r, ri, j);
        }
      }
      const A t = group_reduce<TPR>(t_loc, SumOp{}, red);
      lse = lse_value(ls);
      const A t_div = t != A(0) ? t : A(1);  // t == 0: q = 0, f = 0 (as the reference)
      // Pass B: loss and the |eps|^k statistics; x becomes k log|eps_j|.
      A loss_loc = A(0);
      SoftEpsStats<A> es = soft_eps_init<A>();
      uint32_t neg_bits = 0;
#pragma unroll
      for (int i = 0; i < NV; ++i) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const int j = (i * TPR + lane) * VEC + e;
          if (j < C) {
            const A q = soft_q(a, r, ri, j);
            const A z = x[i * VEC + e];
            loss_loc += soft_loss_term(q, z, lse);
            bool neg;
            const A kla = k * soft_log_abs_eps(z, lse, q / t_div, &neg);
            soft_eps_push(es, kla, neg);
            x[i * VEC + e] = kla;
            if (neg) neg_bits |= 1u << (i * VEC + e);
          }
        }
      }
      loss = group_reduce<TPR>(loss_loc, SumOp{}, red);
      es = group_reduce<TPR>(es, SoftEpsMergeOp{}, red);
      const SoftRow<A> sr = soft_finalize(es, t);
      if (ri.status != kLabelValid) loss = invalid_fill<A>(ri.status);
      // Pass C: the gradient.
      if (grow != nullptr && active) {
        const A fill = invalid_fill<A>(ri.status);
        const bool valid = ri.status == kLabelValid;
#pragma unroll
        for (int i = 0; i < NV; ++i) {
          A f[VEC];
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const int b = i * VEC + e;
            f[e] = valid ? soft_f(sr, x[b], ((neg_bits >> b) & 1u) != 0) : fill;
          }
          store_pack(grow, i * TPR + lane, C, a.aligned, f);
        }
      }
    }
    if (active && lane == 0) {
      a.loss[row] = loss;
      a.lse[row] = lse;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Path 2: streaming, one block per row. Per pass, thread t handles the vectors
// v = vb + u * BLOCK + t (u < U) of each step vb: U independent 16-byte loads in flight.
// Vectors v < a.ncache are copied to shared memory by the first pass and read from there
// afterwards; each such vector is only ever touched by the thread that loaded it.
// ---------------------------------------------------------------------------------------
template <typename S>
__device__ __forceinline__ Pack<S> fetch_pack(const Pack<S>* cache, const S* zrow, int v,
                                              const FwdArgs<S>& a) {
  return v < a.ncache ? cache[v] : load_pack(zrow, v, a.C, a.aligned);
}

template <typename S>
__device__ __forceinline__ void store_pack_stream(S* row, int v, int C, bool aligned,
                                                  const acc_type<S>* vals) {
  constexpr int kN = Pack<S>::kN;
  const int j0 = v * kN;
  if (j0 >= C) return;
  if (aligned) {
    Pack<S> p;
#pragma unroll
    for (int e = 0; e < kN; ++e) p.v[e] = from_acc<S>(vals[e]);
    __stcs(reinterpret_cast<uint4*>(row + j0), *reinterpret_cast<const uint4*>(&p));
  } else {
    store_pack(row, v, C, aligned, vals);
  }
}

template <typename S, int BLOCK, int U, bool SOFT>
__global__ void __launch_bounds__(BLOCK) fwd_stream_kernel(const FwdArgs<S> a) {
  using A = acc_type<S>;
  constexpr int VEC = Pack<S>::kN;
  constexpr int E = U * VEC;
  constexpr int STEP = BLOCK * U;
  static_assert(E <= 32, "the soft path keeps one sign bit per element in a uint32");
  extern __shared__ uint4 cache_raw[];
  Pack<S>* cache = reinterpret_cast<Pack<S>*>(cache_raw);
  __shared__ ReduceSmem<A> red;

  const int tid = static_cast<int>(threadIdx.x);
  const int C = a.C;
  const int nvec = (C + VEC - 1) / VEC;
  const A k = a.k;

  for (int64_t r = blockIdx.x; r < a.N; r += gridDim.x) {
    const RowInfo ri = row_info(a, r);
    const S* zrow = a.logits + r * C;
    S* grow = a.grad != nullptr ? a.grad + r * C : nullptr;
    A loss, lse;
    if constexpr (!SOFT) {
      // Read before the first barrier, hence before any thread writes the row (fwd_inplace).
      const A z_y = ri.y >= 0 ? to_acc(zrow[ri.y]) : A(0);
      OneHotStats<A> st = onehot_init<A>();
      for (int vb = 0; vb < nvec; vb += STEP) {
        A x[E];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int v = vb + u * BLOCK + tid;
          const Pack<S> p = load_pack(zrow, v, C, a.aligned);
          if (v < a.ncache) cache[v] = p;
          unpack(p, &x[u * VEC]);
        }
        st = onehot_merge(st, onehot_stats_regs<U, VEC>(x, vb + tid, BLOCK, ri.y, k, a.k_is_one), k);
      }
      st = group_reduce<BLOCK>(st, OneHotMergeOp<A>{k}, red);
      const A w_y = (ri.y >= 0 && a.weight != nullptr) ? ldg(a.weight + ri.y) : A(1);
      const OneHotRow<A> rr = onehot_finalize(st, z_y, w_y, k);
      if (ri.y >= 0) {
        loss = rr.loss;
        lse = rr.lse;
      } else {
        lse = lse_value(LseStats<A>{st.m, st.s1});
        loss = invalid_fill<A>(ri.status);
      }
      if (grow != nullptr) {
        const A fill = invalid_fill<A>(ri.status);
        for (int vb = 0; vb < nvec; vb += STEP) {
          Pack<S> p[U];
#pragma unroll
          for (int u = 0; u < U; ++u) p[u] = fetch_pack(cache, zrow, vb + u * BLOCK + tid, a);
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int v = vb + u * BLOCK + tid;
            A f[VEC];
            unpack(p[u], f);
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
              const int j = v * VEC + e;
              f[e] = ri.y < 0 ? fill : (j == ri.y ? rr.f_y : onehot_fj(rr, f[e], k));
            }
            store_pack_stream(grow, v, C, a.aligned, f);
          }
        }
      }
    } else {
      // Pass A: lse and t.
      LseStats<A> ls = lse_init<A>();
      A t_loc = A(0);
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
            if (j < C) t_loc += soft_q(a, r, ri, j);
          }
        }
      }
      ls = group_reduce<BLOCK>(ls, LseMergeOp{}, red);
      const A t = group_reduce<BLOCK>(t_loc, SumOp{}, red);
      lse = lse_value(ls);
      const A t_div = t != A(0) ? t : A(1);
      // Pass B: loss and the |eps|^k statistics.
      A loss_loc = A(0);
      SoftEpsStats<A> es = soft_eps_init<A>();
      for (int vb = 0; vb < nvec; vb += STEP) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int v = vb + u * BLOCK + tid;
          A x[VEC];
          unpack(fetch_pack(cache, zrow, v, a), x);
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const int j = v * VEC + e;
            if (j < C) {
              const A q = soft_q(a, r, ri, j);
              loss_loc += soft_loss_term(q, x[e], lse);
              bool neg;
              const A kla = k * soft_log_abs_eps(x[e], lse, q / t_div, &neg);
              soft_eps_push(es, kla, neg);
            }
          }
        }
      }
      loss = group_reduce<BLOCK>(loss_loc, SumOp{}, red);
      es = group_reduce<BLOCK>(es, SoftEpsMergeOp{}, red);
      const SoftRow<A> sr = soft_finalize(es, t);
      if (ri.status != kLabelValid) loss = invalid_fill<A>(ri.status);
      // Pass C: the gradient.
      if (grow != nullptr) {
        const A fill = invalid_fill<A>(ri.status);
        const bool valid = ri.status == kLabelValid;
        for (int vb = 0; vb < nvec; vb += STEP) {
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int v = vb + u * BLOCK + tid;
            A f[VEC];
            unpack(fetch_pack(cache, zrow, v, a), f);
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
              const int j = v * VEC + e;
              if (!valid) {
                f[e] = fill;
              } else if (j < C) {
                bool neg;
                const A kla = k * soft_log_abs_eps(f[e], lse, soft_q(a, r, ri, j) / t_div, &neg);
                f[e] = soft_f(sr, kla, neg);
              }
            }
            store_pack_stream(grow, v, C, a.aligned, f);
          }
        }
      }
    }
    if (tid == 0) {
      a.loss[r] = loss;
      a.lse[r] = lse;
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
  fwd_reg_kernel<S, BLOCK, TPR, NV, SOFT><<<grid, BLOCK, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename S, bool SOFT>
cudaError_t launch_stream(FwdArgs<S> a, const DeviceInfo& d, cudaStream_t stream) {
  constexpr int BLOCK = 1024;
  // 16 fp32 values (4 fp32 / 2 fp16 vectors) per thread and step; 8 fp64 values.
  constexpr int U = sizeof(acc_type<S>) == 8 ? 4 : 16 / Pack<S>::kN;
  auto kernel = fwd_stream_kernel<S, BLOCK, U, SOFT>;
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
  const size_t smem = static_cast<size_t>(a.ncache) * 16;
  int per_sm = 1;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, BLOCK, smem) != cudaSuccess ||
      per_sm < 1) {
    (void)cudaGetLastError();
    per_sm = 1;
  }
  // Resident blocks only: the rows in flight (and their re-read from L2) stay bounded.
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
  a.grad = static_cast<S*>(p.grad);
  a.target = p.target;
  a.probs = static_cast<const S*>(p.probs);
  a.weight = static_cast<const A*>(p.weight);
  a.mixture = static_cast<const A*>(p.mixture);
  a.loss = static_cast<A*>(p.loss);
  a.lse = static_cast<A*>(p.lse);
  a.N = p.N;
  a.ignore_index = p.ignore_index;
  a.C = static_cast<int>(p.C);
  a.ncache = 0;
  a.k = static_cast<A>(p.k);
  a.k_is_one = p.k == 1.0;
  a.one_minus_s = static_cast<A>(1.0 - p.label_smoothing);
  a.s_over_C = static_cast<A>(p.label_smoothing / static_cast<double>(p.C));
  // The soft path exactly where the reference takes it (reference.rows).
  a.soft = p.probs != nullptr || p.mixture != nullptr || p.label_smoothing > 0.0;
  auto al16 = [](const void* q) { return q == nullptr || reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  a.aligned = p.C % Pack<S>::kN == 0 && al16(p.logits) && al16(p.grad);
  return a.soft ? launch_fwd_path<S, true>(a, d, stream) : launch_fwd_path<S, false>(a, d, stream);
}

}  // namespace cuda
}  // namespace hl

// common.cuh: device helpers shared by the CUDA kernels (torch-free).
//
// - acc type and conversions for float / double / __half / __nv_bfloat16;
// - the target description of a row (TargetArgs: class index, probabilities, weight, mixture,
//   smoothing), its label status and q_j (row_math.h's q_* functions), for fwd and bwd alike;
// - 16-byte packs: vectorised, coalesced loads and stores with a scalar fallback for rows that
//   are not 16-byte aligned (C % (16 / sizeof(scalar_t)) != 0, or an odd base pointer);
// - warp-shuffle versions of row_math.h's statistics and a group reduction (a sub-warp group,
//   a warp, or the whole block through shared memory) that merges with row_math.h's merge
//   functions in a fixed order, so every thread of the group ends with bitwise the same value;
// - onehot_stats_regs / lse_stats_regs: the thread-local part of row_math.h's online
//   statistics for values already in registers (see the comment there).
#pragma once

#include <algorithm>
#include <cstdint>

#include "cuda/device.cuh"
#include "cuda/launch.h"
#include "row_math.h"

namespace hl {
namespace cuda {

// The device's figures the launchers size grids with; cached per device after the first
// call (attribute queries only: no stream work, safe during CUDA graph capture). dispatch.cu.
struct DeviceInfo {
  int device;
  int sms;         // multiprocessors
  int smem_optin;  // max shared memory per block after cudaFuncSetAttribute
};
cudaError_t device_info(DeviceInfo* out);

// The start of every launcher: N == 0 launches nothing (*go = false), C must be in
// [1, kMaxClasses], and the device's figures size the grid.
inline cudaError_t launch_begin(int64_t N, int64_t C, DeviceInfo* d, bool* go) {
  *go = false;
  if (N <= 0) return cudaSuccess;
  if (C < 1 || C > kMaxClasses) return cudaErrorInvalidValue;
  const cudaError_t err = device_info(d);
  *go = err == cudaSuccess;
  return err;
}

// One launch of a row-tiled elementwise kernel (bwd_kernel, kept_grad_kernel): BLOCK threads in
// groups of TPR, each group a tile of TPR * U 16-byte vectors of a row of VEC elements; sets
// a.tiles_per_row, and a grid of a few waves of resident blocks, the groups striding over the
// remaining tiles.
template <int VEC, int BLOCK, int TPR, int U, auto Kernel, typename Args>
cudaError_t launch_row_tiles(Args a, const DeviceInfo& d, cudaStream_t stream) {
  constexpr int GPB = BLOCK / TPR;
  constexpr int TILE = TPR * U;
  const int64_t nvec = (static_cast<int64_t>(a.C) + VEC - 1) / VEC;
  a.tiles_per_row = (nvec + TILE - 1) / TILE;
  const int64_t blocks = (a.N * a.tiles_per_row + GPB - 1) / GPB;
  const int64_t cap = static_cast<int64_t>(d.sms) * (2048 / BLOCK) * 4;
  const unsigned grid = static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, cap)));
  return launch_kernel<Kernel>(grid, BLOCK, 0, stream, a);
}

// A tile shape of launch_row_tiles: TPR lanes a row group, U vectors a lane.
template <int TPR_, int U_>
struct RowTile {
  static constexpr int TPR = TPR_, U = U_;
};

// The tile shape by row length (nvec vectors): the smallest group that holds a short row in one
// tile (sub-warp groups up to 16 vectors), then a warp with up to MAXU vectors a lane (8: 4 KB
// tiles). launch(RowTile<TPR, U>{}) launches with that shape.
template <int MAXU, typename Launch>
cudaError_t launch_by_row_length(int64_t nvec, Launch&& launch) {
  static_assert(MAXU == 4 || MAXU == 8, "the ladder's last rung is 4 or 8 vectors a lane");
  if (nvec <= 4) return launch(RowTile<4, 1>{});
  if (nvec <= 8) return launch(RowTile<8, 1>{});
  if (nvec <= 16) return launch(RowTile<16, 1>{});
  if (nvec <= 32) return launch(RowTile<32, 1>{});
  if (nvec <= 64) return launch(RowTile<32, 2>{});
  if constexpr (MAXU == 8) {
    if (nvec <= 128) return launch(RowTile<32, 4>{});
  }
  return launch(RowTile<32, MAXU>{});
}

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------
template <typename S>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename S>
using acc_type = typename AccOf<S>::type;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename S>
__device__ __forceinline__ S from_acc(acc_type<S> x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Read-only (non-coherent) cache loads, for inputs the kernel never writes: target, weight,
// mixture rows, probability targets, grad_loss, stats. The logits are read with plain loads
// because bwd_inplace writes the gradient over them in the same kernel.
template <typename T>
__device__ __forceinline__ T ldg(const T* p) { return __ldg(p); }
template <>
__device__ __forceinline__ int64_t ldg<int64_t>(const int64_t* p) {
  return static_cast<int64_t>(__ldg(reinterpret_cast<const long long*>(p)));
}

// ---------------------------------------------------------------------------------------
// 16-byte packs. Vector v of a row holds elements [v * kN, v * kN + kN).
// `aligned` (decided once per launch) means: C % kN == 0 and the row pointers are 16-byte
// aligned, so a vector is either entirely inside the row or entirely outside.
// Elements outside the row read as -inf, which every statistic skips.
// ---------------------------------------------------------------------------------------
template <typename S>
struct alignas(16) Pack {
  static constexpr int kN = 16 / static_cast<int>(sizeof(S));
  S v[kN];
};

template <typename S, bool kReadOnly = false>
__device__ __forceinline__ Pack<S> load_pack_fill(const S* row, int v, int C, bool aligned, acc_type<S> fill) {
  constexpr int kN = Pack<S>::kN;
  Pack<S> p;
  const int j0 = v * kN;
  if (aligned) {
    if (j0 < C) {
      const uint4* src = reinterpret_cast<const uint4*>(row + j0);
      *reinterpret_cast<uint4*>(&p) = kReadOnly ? __ldg(src) : *src;
    } else {
#pragma unroll
      for (int e = 0; e < kN; ++e) p.v[e] = from_acc<S>(fill);
    }
  } else {
#pragma unroll
    for (int e = 0; e < kN; ++e) {
      p.v[e] = (j0 + e < C) ? (kReadOnly ? ldg(row + j0 + e) : row[j0 + e]) : from_acc<S>(fill);
    }
  }
  return p;
}

// Vector v of a logits row with plain (coherent) loads: the backward may write the same
// row in place. Elements past C read as -inf (they add nothing to a max or a sum of exp).
template <typename S>
__device__ __forceinline__ Pack<S> load_pack(const S* row, int v, int C, bool aligned) {
  return load_pack_fill<S>(row, v, C, aligned, -hl_inf<acc_type<S>>());
}

template <typename S>
__device__ __forceinline__ void unpack(const Pack<S>& p, acc_type<S>* out) {
#pragma unroll
  for (int e = 0; e < Pack<S>::kN; ++e) out[e] = to_acc(p.v[e]);
}

// Vector v of a logits row as the kernels see it (row_math.h section 6): with softcap c != 0
// each logit j < C is read as c tanh(z / c) (-inf as -c); the padding past C stays -inf.
template <typename S>
__device__ __forceinline__ void unpack_logits(const Pack<S>& p, int v, int C, acc_type<S> cap, acc_type<S>* out) {
  constexpr int kN = Pack<S>::kN;
  unpack(p, out);
  if (cap != acc_type<S>(0)) {
#pragma unroll
    for (int e = 0; e < kN; ++e) {
      if (v * kN + e < C) out[e] = softcap_value(out[e], cap);
    }
  }
}

// The same, keeping the logits as stored in raw: the backward takes the softcap's slope at the
// raw logit (row_math.h softcap_slope), where it keeps its relative precision.
template <typename S>
__device__ __forceinline__ void unpack_logits(const Pack<S>& p, int v, int C, acc_type<S> cap, acc_type<S>* raw,
                                              acc_type<S>* out) {
  constexpr int kN = Pack<S>::kN;
  unpack(p, raw);
#pragma unroll
  for (int e = 0; e < kN; ++e) {
    out[e] = cap != acc_type<S>(0) && v * kN + e < C ? softcap_value(raw[e], cap) : raw[e];
  }
}

// Store the kN values vals[0..kN) at vector v of `row` (elements past C are not written),
// with the streaming (evict-first) hint: the gradient is written once and not read again by
// this kernel, so it should not push inputs that are still to be read out of L2.
template <typename S>
__device__ __forceinline__ void store_pack_stream(S* row, int v, int C, bool aligned,
                                                  const acc_type<S>* vals) {
  constexpr int kN = Pack<S>::kN;
  const int j0 = v * kN;
  if (j0 >= C) return;
  Pack<S> p;
#pragma unroll
  for (int e = 0; e < kN; ++e) p.v[e] = from_acc<S>(vals[e]);
  if (aligned) {
    __stcs(reinterpret_cast<uint4*>(row + j0), *reinterpret_cast<const uint4*>(&p));
  } else {
#pragma unroll
    for (int e = 0; e < kN; ++e) {
      if (j0 + e < C) row[j0 + e] = p.v[e];
    }
  }
}

// Vector v of a read-only row (probability targets) through the read-only cache; elements
// past C read as 0 (callers only use j < C).
template <typename S>
__device__ __forceinline__ Pack<S> load_pack_ro(const S* row, int v, int C, bool aligned) {
  return load_pack_fill<S, true>(row, v, C, aligned, acc_type<S>(0));
}

// ---------------------------------------------------------------------------------------
// The target of a row (ROW_MATH.md section 1), shared by the forward and backward kernels.
// ---------------------------------------------------------------------------------------
template <typename S>
struct TargetArgs {
  using A = acc_type<S>;
  const int64_t* target;  // nullptr: probability targets
  const S* probs;         // (N, C) or nullptr
  const A* weight;        // (C,) or nullptr
  const A* mixture;       // (C, C) or nullptr
  int64_t ignore_index;
  int C;
  A one_minus_s;  // 1 - label_smoothing
  A s_over_C;     // label_smoothing / C
};

template <typename S>
inline TargetArgs<S> make_target_args(const TargetParams& p, int64_t C) {
  using A = acc_type<S>;
  TargetArgs<S> t;
  t.target = p.target;
  t.probs = static_cast<const S*>(p.probs);
  t.weight = static_cast<const A*>(p.weight);
  t.mixture = static_cast<const A*>(p.mixture);
  t.ignore_index = p.ignore_index;
  t.C = static_cast<int>(C);
  t.one_minus_s = static_cast<A>(1.0 - p.label_smoothing);
  t.s_over_C = static_cast<A>(p.label_smoothing / static_cast<double>(C));
  return t;
}

struct RowInfo {
  int status;  // kLabelValid / kLabelIgnored / kLabelBad (always valid for probabilities)
  int y;       // the label when it is valid (< C <= 2^30), else -1: the only value ever
               // used as an index
};

template <typename S>
__device__ __forceinline__ RowInfo row_info(const TargetArgs<S>& a, int64_t row) {
  if (a.target == nullptr) return {kLabelValid, -1};
  const int64_t y = ldg(a.target + row);
  const int status = label_status(y, static_cast<int64_t>(a.C), a.ignore_index);
  return {status, status == kLabelValid ? static_cast<int>(y) : -1};
}

// Class weight w_j (1 without weights), j < C.
template <typename S>
__device__ __forceinline__ acc_type<S> class_weight(const TargetArgs<S>& a, int j) {
  return a.weight != nullptr ? ldg(a.weight + j) : acc_type<S>(1);
}

// q_j of ROW_MATH.md section 1 (class weights folded in) for j < C, probability read here.
template <typename S>
__device__ __forceinline__ acc_type<S> soft_q(const TargetArgs<S>& a, int64_t row, const RowInfo& ri,
                                              int j) {
  using A = acc_type<S>;
  const A w = class_weight(a, j);
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

// ---------------------------------------------------------------------------------------
// Shuffles of row_math.h's statistics
// ---------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ T shfl_xor(T v, int off) {
  return __shfl_xor_sync(0xffffffffu, v, off);
}
template <typename T>
__device__ __forceinline__ OneHotStats<T> shfl_xor(OneHotStats<T> v, int off) {
  return {shfl_xor(v.m, off), shfl_xor(v.s1, off), shfl_xor(v.sk, off)};
}
template <typename T>
__device__ __forceinline__ LseStats<T> shfl_xor(LseStats<T> v, int off) {
  return {shfl_xor(v.m, off), shfl_xor(v.s, off)};
}
template <typename T>
__device__ __forceinline__ SoftEpsStats<T> shfl_xor(SoftEpsStats<T> v, int off) {
  return {shfl_xor(v.m_neg, off), shfl_xor(v.s_neg, off), shfl_xor(v.m_pos, off), shfl_xor(v.s_pos, off)};
}

// Scratch for one block-wide reduction: one partial per warp (at most 32 warps), each at most
// four acc values wide.
template <typename A>
struct alignas(16) ReduceSmem {
  A buf[32 * 4];
};

// Reduce `v` over the TPR consecutive threads of a group (TPR a power of two; TPR <= 32: a
// sub-warp or warp, shuffles only; TPR > 32: the whole block, TPR == blockDim.x).
// Butterfly shuffles: each step merges (a, b) in one lane and (b, a) in its partner; the
// merges of row_math.h are commutative in floating point (max, a * x + b * y), so all lanes
// hold bitwise the same result. Across warps, every thread merges the per-warp partials in
// warp order: the same value everywhere, no broadcast needed, deterministic.
// Every thread of the warp (TPR <= 32) or block (TPR > 32) must call it: no divergent call.
template <int TPR, typename T, typename A, typename Merge>
__device__ __forceinline__ T group_reduce(T v, Merge merge, ReduceSmem<A>& smem) {
  static_assert(sizeof(T) <= 4 * sizeof(A), "partial too wide for ReduceSmem");
  constexpr int kWarpPart = TPR < 32 ? TPR : 32;
#pragma unroll
  for (int off = kWarpPart / 2; off > 0; off >>= 1) v = merge(v, shfl_xor(v, off));
  if constexpr (TPR > 32) {
    constexpr int kWarps = TPR / 32;
    T* part = reinterpret_cast<T*>(smem.buf);
    const int warp = static_cast<int>(threadIdx.x) / 32;
    if ((threadIdx.x & 31) == 0) part[warp] = v;
    __syncthreads();
    v = part[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) v = merge(v, part[w]);
    __syncthreads();  // the scratch may be reused by the next reduction
  }
  return v;
}

// ---------------------------------------------------------------------------------------
// Thread-local statistics of values held in registers.
//
// x[i * VEC + e] is element j = (v0 + i * vs) * VEC + e of the row (-inf past C). Instead of
// onehot_push per element (a compare, and a rescale with two more exp on every new max),
// take the thread's max first and then sum the exponentials against it: the same
// OneHotStats {m, s1, sk} up to rounding, with the same non-finite rules as onehot_push
// (a NaN or +inf logit makes the sums NaN, -inf logits are skipped), merged across threads
// with onehot_merge. K_IS_ONE (k == 1): sk = s1, one exp per element instead of two. A
// template argument, not a runtime select inside the unrolled loop: the select made ptxas
// spill in the 32-values-per-thread kernels.
// (Candidate for row_math.h: "onehot_stats_of_block(z, n, y, k)".)
// ---------------------------------------------------------------------------------------
template <int NV, int VEC, bool K_IS_ONE, typename T>
__device__ __forceinline__ OneHotStats<T> onehot_stats_regs(const T (&x)[NV * VEC], int v0, int vs,
                                                            int y, T k) {
  const T inf = hl_inf<T>();
  T m = -inf;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const int j = (v0 + i * vs) * VEC + e;
      const T z = x[i * VEC + e];
      if (j != y && (z > m || z != z)) m = z;
    }
  }
  T s1 = T(0), sk = T(0);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const int j = (v0 + i * vs) * VEC + e;
      const T z = x[i * VEC + e];
      if (j != y && z != -inf) {  // NaN passes (and makes the sums NaN, as onehot_push)
        const T d = z - m;
        s1 += hl_exp(d);
        if constexpr (!K_IS_ONE) sk += hl_exp(k * d);
      }
    }
  }
  return {m, s1, K_IS_ONE ? s1 : sk};
}

// onehot_stats_regs with k == 1 decided once, outside the unrolled loops.
template <int NV, int VEC, typename T>
__device__ __forceinline__ OneHotStats<T> onehot_stats_regs(const T (&x)[NV * VEC], int v0, int vs,
                                                            int y, T k, bool k_is_one) {
  return k_is_one ? onehot_stats_regs<NV, VEC, true>(x, v0, vs, y, k)
                  : onehot_stats_regs<NV, VEC, false>(x, v0, vs, y, k);
}

// LseStats of the values x[0..n) (-inf skipped, NaN / +inf make the sum NaN, as lse_push).
template <int N, typename T>
__device__ __forceinline__ LseStats<T> lse_stats_regs(const T (&x)[N]) {
  const T inf = hl_inf<T>();
  T m = -inf;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if (x[i] > m || x[i] != x[i]) m = x[i];
  }
  T s = T(0);
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if (x[i] != -inf) s += hl_exp(x[i] - m);
  }
  return {m, s};
}

}  // namespace cuda
}  // namespace hl

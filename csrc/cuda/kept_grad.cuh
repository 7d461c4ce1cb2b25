// kept_grad.cuh: the kernel of hardloss_cuda::soft_shard_grad (_schema.py) and its launcher,
// templated on the logits' type; torch-free. Instantiated with the backward kernels in
// csrc/cuda/bwd_{f32,f64,f16,bf16}.cu (and so in the emulator's emu/kernels_*.cpp).
//
// The backward of a vocab-parallel shard's soft rows from soft_shard_stats' kept pass: f_j is
// row_math.h soft_kept_f of the kept (k log|eps_j|, side) and the row's finalised stats in the
// complete form (t, c_pos, f_star), so no log or |eps|^k is taken again. Then the row is
// finished as bwd_kernel finishes it (row_math.h finish_grad: g_lse p_j added, times the
// softcap's slope at the raw logit); the logits are read only for those two, decided per row.
// Row rules as bwd_kernel's: grad_loss 0 (and grad_lse 0 or absent) with a finite lse and t
// writes 0 and reads nothing else; a row without a finite lse is NaN. There is no label here:
// soft_shard_stats kept (-inf, kSidePos) for ignored rows and bad labels, whose stats are 0, so
// they come out 0 unless the caller's stats say otherwise.
//
// Work split as bwd_kernel's: tiles of TPR * U 16-byte vectors of the logits' dtype, a group of
// TPR threads per tile, lane l holding vectors v0 + u * TPR + l; eps and side are read for the
// same elements (eps as 16-byte packs of acc, side as one VEC-byte word when aligned).
//
// out may be eps itself (fp32 / fp64 logits: the kept buffer becomes the gradient): every
// element is loaded and stored by the same thread, all loads first, with plain (coherent) loads
// and no __restrict__.
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda/common.cuh"
#include "cuda/launch.h"

namespace hl {
namespace cuda {

template <typename S>
struct KeptGradArgs {
  using A = acc_type<S>;
  const A* grad_loss;  // (N,)
  const A* grad_lse;   // (N,) or nullptr
  const A* eps;        // (N, C); may alias out
  const int8_t* side;  // (N, C)
  const S* logits;     // (N, C), or nullptr when neither a softcap nor grad_lse is given
  const A* stats;      // (N, kStatsCols), complete form
  S* out;              // (N, C)
  int64_t N;
  int64_t tiles_per_row;
  int C;
  A cap;               // softcap: 0, or c
  bool z_aligned;      // logits: C % kN == 0 and a 16-byte aligned base
  bool out_aligned;    // out: the same
  bool eps_aligned;    // eps: C % Pack<A>::kN == 0 and a 16-byte aligned base
  bool side_aligned;   // side: C % kN == 0 and a kN-byte aligned base
};

// An unsigned word of N bytes: side's kN bytes of one vector in one load.
template <int N>
struct SideWord;
template <>
struct SideWord<2> {
  using T = uint16_t;
};
template <>
struct SideWord<4> {
  using T = uint32_t;
};
template <>
struct SideWord<8> {
  using T = uint2;
};

// side at the kN elements of vector v (past C: kSidePos, not used).
template <int kN>
__device__ __forceinline__ void load_side(const int8_t* row, int v, int C, bool aligned, int8_t (&out)[kN]) {
  const int j0 = v * kN;
  if (aligned) {
    using W = typename SideWord<kN>::T;
    const W w = j0 < C ? *reinterpret_cast<const W*>(row + j0) : W{};
    std::memcpy(out, &w, kN);
  } else {
#pragma unroll
    for (int e = 0; e < kN; ++e) out[e] = j0 + e < C ? row[j0 + e] : kSidePos;
  }
}

template <typename S, int BLOCK, int TPR, int U>
__global__ void __launch_bounds__(BLOCK) kept_grad_kernel(const KeptGradArgs<S> a) {
  using A = acc_type<S>;
  constexpr int VEC = Pack<S>::kN;
  constexpr int EPV = VEC / Pack<A>::kN;  // eps packs per vector of logits (2 for fp16 / bf16)
  constexpr int GPB = BLOCK / TPR;
  constexpr int TILE = TPR * U;
  static_assert(TPR <= 32 && BLOCK % TPR == 0, "a group is a sub-warp or a warp");
  static_assert(EPV >= 1 && EPV * Pack<A>::kN == VEC, "eps packs tile a vector of logits");

  const int lane = static_cast<int>(threadIdx.x) % TPR;
  const int grp = static_cast<int>(threadIdx.x) / TPR;
  const int C = a.C;
  const int64_t ntiles = a.N * a.tiles_per_row;

  for (int64_t tile = static_cast<int64_t>(blockIdx.x) * GPB + grp; tile < ntiles;
       tile += static_cast<int64_t>(gridDim.x) * GPB) {
    const int64_t row = a.tiles_per_row == 1 ? tile : tile / a.tiles_per_row;
    const int v0 = static_cast<int>(tile - row * a.tiles_per_row) * TILE;
    const A* st = a.stats + row * kStatsCols;
    const A gl = ldg(a.grad_loss + row);
    const A g_lse = a.grad_lse != nullptr ? ldg(a.grad_lse + row) : A(0);
    const A lse = ldg(st + kColLse);
    const A lse_lo = ldg(st + kColLseLo);
    const A t = ldg(st + kColScale);
    S* orow = a.out + row * C;

    // Rows whose gradient needs nothing per class: 0 (as bwd_kernel), or NaN without a finite lse.
    const bool zero = g_lse == A(0) && grad_row_is_zero(gl, lse, t);
    if (zero || !(hl_abs(lse) < hl_inf<A>())) {
      A f[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) f[e] = zero ? A(0) : hl_nan<A>();
#pragma unroll
      for (int u = 0; u < U; ++u) store_pack_stream(orow, v0 + u * TPR + lane, C, a.out_aligned, f);
      continue;
    }

    // All of this thread's loads first (in flight together; and before any store: out may be eps).
    const bool read_z = a.cap != A(0) || g_lse != A(0);
    const A* erow = a.eps + row * C;
    const int8_t* srow = a.side + row * C;
    // = {}: GCC's -Wuninitialized does not see load_pack_fill's uint4 loads fill a pack, and z is
    // loaded only when read_z.
    Pack<A> ep[U][EPV] = {};
    int8_t sd[U][VEC];
    Pack<S> z[U] = {};
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = v0 + u * TPR + lane;
#pragma unroll
      for (int i = 0; i < EPV; ++i) ep[u][i] = load_pack_fill<A>(erow, v * EPV + i, C, a.eps_aligned, A(0));
      load_side<VEC>(srow, v, C, a.side_aligned, sd[u]);
      if (read_z) z[u] = load_pack(a.logits + row * C, v, C, a.z_aligned);
    }

    const SoftRow<A> sr = {t, ldg(st + 3), ldg(st + 4), A(0)};  // soft_kept_f reads t, c_pos, f_star
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = v0 + u * TPR + lane;
      A kla[VEC], zr[VEC] = {}, zc[VEC] = {}, f[VEC];
#pragma unroll
      for (int i = 0; i < EPV; ++i) unpack(ep[u][i], &kla[i * Pack<A>::kN]);
      if (read_z) unpack_logits(z[u], v, C, a.cap, zr, zc);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const A gf = gl * soft_kept_f(sr, kla[e], sd[u][e]);
        f[e] = read_z ? finish_grad(gf, zr[e], zc[e], g_lse, lse, lse_lo, a.cap) : gf;
      }
      store_pack_stream(orow, v, C, a.out_aligned, f);
    }
  }
}

template <typename S, int TPR, int U>
cudaError_t launch_kept_grad_cfg(const KeptGradArgs<S>& a, const DeviceInfo& d, cudaStream_t stream) {
  constexpr int BLOCK = 256;
  return launch_row_tiles<Pack<S>::kN, BLOCK, TPR, U, kept_grad_kernel<S, BLOCK, TPR, U>>(a, d, stream);
}

// Tile shape by row length, as launch_bwd_path's but at most 4 vectors a lane: eps is acc, so
// an fp16 vector brings 32 bytes of it.
template <typename S>
cudaError_t launch_kept_grad_typed(const KeptGradParams& p, cudaStream_t stream) {
  using A = acc_type<S>;
  DeviceInfo d;
  bool go = false;
  const cudaError_t err = launch_begin(p.N, p.C, &d, &go);
  if (!go) return err;

  constexpr int VEC = Pack<S>::kN;
  auto al = [](const void* q, int bytes) { return reinterpret_cast<uintptr_t>(q) % bytes == 0; };
  KeptGradArgs<S> a;
  a.grad_loss = static_cast<const A*>(p.grad_loss);
  a.grad_lse = static_cast<const A*>(p.grad_lse);
  a.eps = static_cast<const A*>(p.eps);
  a.side = p.side;
  a.logits = static_cast<const S*>(p.logits);
  a.stats = static_cast<const A*>(p.stats);
  a.out = static_cast<S*>(p.out);
  a.N = p.N;
  a.tiles_per_row = 1;  // set by launch_kept_grad_cfg
  a.C = static_cast<int>(p.C);
  a.cap = static_cast<A>(p.softcap);
  const bool c_vec = p.C % VEC == 0;
  a.z_aligned = c_vec && p.logits != nullptr && al(p.logits, 16);
  a.out_aligned = c_vec && al(p.out, 16);
  a.eps_aligned = p.C % Pack<A>::kN == 0 && al(p.eps, 16);
  a.side_aligned = c_vec && al(p.side, VEC);
  return launch_by_row_length<4>((p.C + VEC - 1) / VEC, [&](auto tile) {
    using T = decltype(tile);
    return launch_kept_grad_cfg<S, T::TPR, T::U>(a, d, stream);
  });
}

}  // namespace cuda
}  // namespace hl

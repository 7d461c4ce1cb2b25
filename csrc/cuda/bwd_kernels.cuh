// bwd_kernels.cuh: the backward kernel (grad = grad_loss[:, None] * f, f the pseudo-gradient of
// docs/ROW_MATH.md section 3) and its launcher, templated on the logits' type. Torch-free; instantiated
// once per dtype in csrc/cuda/bwd_{f32,f64,f16,bf16}.cu so the four compile in parallel.
//
// One elementwise pass: the forward (fwd_kernels.cuh) left kStatsCols numbers per row in `stats`
// (csrc/cuda/launch.h), so f_j needs only z_j, the row's coefficients and, for soft rows,
// q_j. Each element is read once and written once (2 N C s bytes; the forward's N C s makes
// the contract's 3 N C s). The math is row_math.h's, unchanged from what the forward used for its
// statistics:
//   one-hot row: f_j = onehot_fj(r, z_j, k) for j != y, f_y = r.f_y, with r.m, r.log_c, r.f_y
//                from stats and r.w_y = weight[y] (1 without weights);
//   soft row:    f_j = soft_fj(r, z_j, lse, lse_lo, q_j, k), q_j from q_smoothed / q_mixture /
//                q_probability, r = (t, c_pos, f_star, star) from stats in the complete form
//                (row_math.h soft_tag). A row in the deferred form (the CPU's forward, Triton's
//                at k = 1) has no c_pos, f_star yet, and making them takes a reduction over the
//                row: soft_stats_complete_kernel (bwd_complete.cuh), launched first, writes them
//                into a scratch copy (BwdParams::stats_work), which this kernel reads for those
//                rows. One more read of the deferred rows only.
// Then row_math.h's finish_grad: g_lse p_j added (the incoming gradient of the row's logsumexp,
// grad_lse), times the softcap's slope at the raw logit; z_j above is the capped one (unpack_logits).
// Rows whose gradient does not depend on the logits are written without reading them:
// ignored rows (0), bad labels (NaN; the label is never used as an index), and rows with
// grad_loss == 0, no logsumexp gradient and a finite lse and scale (0: rows removed by
// trimming cost no read).
//
// Work split: a row is cut into tiles of TILE = TPR * U 16-byte vectors; a group of TPR
// threads (a sub-warp or a warp, no reduction anywhere) takes one tile, lane l holding the
// vectors v0 + u * TPR + l (u < U; coalesced, U loads in flight per thread). The tiles of all
// rows are numbered row-major and the groups of a 1-D grid stride over them, so a few huge
// rows (C = 262144: 64+ tiles each) and many small rows (one tile each, TPR chosen so the
// tile just holds the row) both fill the GPU; no grid.y, so N is not limited to 65535.
// Row offsets are 64-bit (N * C may exceed 2^31), in-row indices 32-bit (C <= 2^30).
//
// In place (bwd_inplace: out == logits): every element is loaded and stored by the same
// thread, loads first; no thread reads an element another thread writes (one-hot rows do not
// need z_y: f_y comes from stats). So the logits are read with plain (coherent) loads and
// neither pointer is __restrict__.
#pragma once

#include <cstdint>

#include "cuda/bwd_complete.cuh"
#include "cuda/common.cuh"
#include "cuda/launch.h"

namespace hl {
namespace cuda {

template <typename S>
struct BwdArgs {
  using A = acc_type<S>;
  const A* grad_loss;  // (N,)
  const A* grad_lse;   // (N,) or nullptr
  const S* logits;     // (N, C)
  S* out;              // (N, C); may alias logits
  const A* stats;      // (N, kStatsCols)
  const A* work;       // soft rows: (N, kStatsCols), the deferred rows completed (bwd_complete.cuh)
  TargetArgs<S> tg;
  int64_t N;
  int64_t tiles_per_row;
  int C;
  A k;
  A cap;               // softcap: 0, or c
  bool aligned;        // logits and out: C % kN == 0 and 16-byte aligned base pointers
  bool probs_aligned;  // probability targets: the same
};

template <typename S, int BLOCK, int TPR, int U, bool SOFT>
__global__ void __launch_bounds__(BLOCK) bwd_kernel(const BwdArgs<S> a) {
  using A = acc_type<S>;
  constexpr int VEC = Pack<S>::kN;
  constexpr int GPB = BLOCK / TPR;  // groups (tiles in flight) per block
  constexpr int TILE = TPR * U;     // vectors per tile
  static_assert(TPR <= 32 && BLOCK % TPR == 0, "a group is a sub-warp or a warp");

  const int lane = static_cast<int>(threadIdx.x) % TPR;
  const int grp = static_cast<int>(threadIdx.x) / TPR;
  const int C = a.C;
  const A k = a.k;
  const int64_t ntiles = a.N * a.tiles_per_row;

  for (int64_t tile = static_cast<int64_t>(blockIdx.x) * GPB + grp; tile < ntiles;
       tile += static_cast<int64_t>(gridDim.x) * GPB) {
    const int64_t row = a.tiles_per_row == 1 ? tile : tile / a.tiles_per_row;
    const int v0 = static_cast<int>(tile - row * a.tiles_per_row) * TILE;
    const RowInfo ri = row_info(a.tg, row);
    const A* st = a.stats + row * kStatsCols;
    const A gl = ldg(a.grad_loss + row);
    const A g_lse = a.grad_lse != nullptr ? ldg(a.grad_lse + row) : A(0);
    const A lse = ldg(st + kColLse);
    const A lse_lo = ldg(st + kColLseLo);
    const A scale = ldg(st + kColScale);
    S* orow = a.out + row * C;

    // The gradient does not depend on the logits: write it without reading them.
    if (ri.status != kLabelValid || (g_lse == A(0) && grad_row_is_zero(gl, lse, scale))) {
      const A fill = ri.status != kLabelValid ? invalid_fill<A>(ri.status) : A(0);
      A f[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) f[e] = fill;
#pragma unroll
      for (int u = 0; u < U; ++u) store_pack_stream(orow, v0 + u * TPR + lane, C, a.aligned, f);
      continue;
    }

    // All of this thread's loads first (in flight together; and before any store: in place).
    const S* zrow = a.logits + row * C;
    Pack<S> z[U];
#pragma unroll
    for (int u = 0; u < U; ++u) z[u] = load_pack(zrow, v0 + u * TPR + lane, C, a.aligned);

    if constexpr (!SOFT) {
      OneHotRow<A> r;
      r.lse = lse;
      r.loss = A(0);  // not used here
      r.lse_lo = lse_lo;
      r.f_y = scale;
      r.m = ldg(st + 3);
      r.log_c = ldg(st + 4);
      r.w_y = class_weight(a.tg, ri.y);  // ri.y valid: the status is kLabelValid
      const A gf_y = gl * r.f_y;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int v = v0 + u * TPR + lane;
        A zr[VEC], zc[VEC], f[VEC];
        unpack_logits(z[u], v, C, a.cap, zr, zc);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const int j = v * VEC + e;
          const A gf = j == ri.y ? gf_y : gl * onehot_fj(r, zc[e], k);
          f[e] = finish_grad(gf, zr[e], zc[e], g_lse, lse, lse_lo, a.cap);
        }
        store_pack_stream(orow, v, C, a.aligned, f);
      }
    } else {
      const A tag = ldg(st + kColStar);
      const A* cs = soft_tag_deferred(tag) ? a.work + row * kStatsCols : st;  // c_pos, f_star from here
      const SoftRow<A> sr = {scale, ldg(cs + 3), ldg(cs + 4), soft_tag<A>(false, soft_tag_star(tag))};
      const S* prow = a.tg.probs != nullptr ? a.tg.probs + row * C : nullptr;
      // A mixture comes only with class indices; the label is valid here.
      const A* wrow = (a.tg.mixture != nullptr && ri.y >= 0)
                          ? a.tg.mixture + static_cast<int64_t>(ri.y) * C
                          : nullptr;
      Pack<S> pq[U] = {};  // read only with prow
      if (prow != nullptr) {
#pragma unroll
        for (int u = 0; u < U; ++u) pq[u] = load_pack_ro(prow, v0 + u * TPR + lane, C, a.probs_aligned);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int v = v0 + u * TPR + lane;
        A zr[VEC], zc[VEC], f[VEC] = {};  // f past C is not stored
        A pr[VEC];
        unpack_logits(z[u], v, C, a.cap, zr, zc);
        if (prow != nullptr) {
          unpack(pq[u], pr);
        } else {
#pragma unroll
          for (int e = 0; e < VEC; ++e) pr[e] = A(0);
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const int j = v * VEC + e;
          if (j < C) {
            const A w = class_weight(a.tg, j);
            A q;
            if (prow != nullptr) {
              q = q_probability(pr[e], w, a.tg.one_minus_s, a.tg.s_over_C);
            } else if (wrow != nullptr) {
              q = q_mixture(ldg(wrow + j), w);
            } else {
              q = q_smoothed(j == ri.y, w, a.tg.one_minus_s, a.tg.s_over_C);
            }
            f[e] = finish_grad(gl * soft_fj(sr, zc[e], lse, lse_lo, q, k), zr[e], zc[e], g_lse, lse, lse_lo, a.cap);
          }
        }
        store_pack_stream(orow, v, C, a.aligned, f);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Launcher
// ---------------------------------------------------------------------------------------
template <typename S, int TPR, int U, bool SOFT>
cudaError_t launch_bwd_cfg(const BwdArgs<S>& a, const DeviceInfo& d, cudaStream_t stream) {
  constexpr int BLOCK = 256;
  return launch_row_tiles<Pack<S>::kN, BLOCK, TPR, U, bwd_kernel<S, BLOCK, TPR, U, SOFT>>(a, d, stream);
}

template <typename S, bool SOFT>
cudaError_t launch_bwd_path(const BwdArgs<S>& a, const DeviceInfo& d, cudaStream_t stream) {
  const int64_t nvec = (static_cast<int64_t>(a.C) + Pack<S>::kN - 1) / Pack<S>::kN;
  return launch_by_row_length<8>(nvec, [&](auto tile) {
    using T = decltype(tile);
    return launch_bwd_cfg<S, T::TPR, T::U, SOFT>(a, d, stream);
  });
}

template <typename S>
cudaError_t launch_bwd_typed(const BwdParams& p, cudaStream_t stream) {
  using A = acc_type<S>;
  DeviceInfo d;
  bool go = false;
  const cudaError_t err = launch_begin(p.N, p.C, &d, &go);
  if (!go) return err;

  auto al16 = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  BwdArgs<S> a;
  a.grad_loss = static_cast<const A*>(p.grad_loss);
  a.grad_lse = static_cast<const A*>(p.grad_lse);
  a.logits = static_cast<const S*>(p.logits);
  a.out = static_cast<S*>(p.out);
  a.stats = static_cast<const A*>(p.stats);
  a.work = static_cast<const A*>(p.stats_work);
  a.tg = make_target_args<S>(p.tg, p.C);
  a.N = p.N;
  a.tiles_per_row = 1;  // set by launch_bwd_cfg
  a.C = static_cast<int>(p.C);
  a.k = static_cast<A>(p.k);
  a.cap = static_cast<A>(p.softcap);
  const bool c_vec = p.C % Pack<S>::kN == 0;
  a.aligned = c_vec && al16(p.logits) && al16(p.out);
  a.probs_aligned = c_vec && p.tg.probs != nullptr && al16(p.tg.probs);
  if (!is_soft(p.tg)) return launch_bwd_path<S, false>(a, d, stream);
  CompleteArgs<S> c;
  c.grad_loss = a.grad_loss;
  c.grad_lse = a.grad_lse;
  c.logits = a.logits;
  c.stats = a.stats;
  c.work = static_cast<A*>(p.stats_work);
  c.tg = a.tg;
  c.N = a.N;
  c.C = a.C;
  c.k = a.k;
  c.cap = a.cap;
  c.aligned = c_vec && al16(p.logits);
  const cudaError_t e = launch_soft_stats_complete(c, d, stream);
  if (e != cudaSuccess) return e;
  return launch_bwd_path<S, true>(a, d, stream);
}

}  // namespace cuda
}  // namespace hl

// bwd_complete.cuh: the kernel the backward launches before bwd_kernel for soft rows, which
// completes the stats of the rows in the deferred form (row_math.h soft_tag: columns 3, 4 hold
// the row max m and log sum exp(z - m), as the CPU forward and Triton's at k = 1 write them).
// bwd_kernel tiles rows over blocks and reduces nothing, so a row's pass 2 (c_pos, f_star) is
// made here: one block per row, the forward's own pass B (fwd_rows.cuh soft_pass_b_push /
// soft_pass_b_finish, its loss discarded) from the stats' m and log s. It writes the completed
// row into BwdParams::stats_work, never into the caller's stats.
//
// Cost: a read of column 5 for every soft row; one more read of the row only for the deferred
// rows the backward reads (not the ignored, bad or zero-gradient ones), and at k == 1 only for
// those with a dominant class (soft_row_k1; the others need t alone). Rows in the complete form
// (the CUDA forward's own) are left alone: bwd_kernel reads them from the caller's stats.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/fwd_rows.cuh"
#include "cuda/launch.h"

namespace hl {
namespace cuda {

template <typename S>
struct CompleteArgs {
  using A = acc_type<S>;
  const A* grad_loss;  // (N,)
  const A* grad_lse;   // (N,) or nullptr
  const S* logits;     // (N, C)
  const A* stats;      // (N, kStatsCols), the caller's
  A* work;             // (N, kStatsCols): the deferred rows, completed
  TargetArgs<S> tg;
  int64_t N;
  int C;
  A k;
  A cap;
  bool aligned;
};

// Whether bwd_kernel reads a soft row's columns 3..5: a valid label and a gradient that
// depends on the logits (its own test, bwd_kernels.cuh).
template <typename A>
__device__ __forceinline__ bool bwd_reads_row(int status, A gl, A g_lse, const A* st) {
  return status == kLabelValid && !(g_lse == A(0) && grad_row_is_zero(gl, ldg(st + kColLse), ldg(st + kColScale)));
}

template <typename S, int BLOCK>
__global__ void __launch_bounds__(BLOCK) soft_stats_complete_kernel(const CompleteArgs<S> a) {
  using A = acc_type<S>;
  constexpr int VEC = Pack<S>::kN;
  HL_SHARED(ReduceSmem<A>, red);
  const int tid = static_cast<int>(threadIdx.x);
  const int C = a.C;
  const int nvec = (C + VEC - 1) / VEC;
  const A k = a.k;

  // Every branch below is uniform over the block (the row's stats and label, k): the group
  // reductions of soft_pass_b_finish are reached by all threads or none.
  for (int64_t r = blockIdx.x; r < a.N; r += gridDim.x) {
    const A* st = a.stats + r * kStatsCols;
    const A tag = ldg(st + kColStar);
    if (!soft_tag_deferred(tag)) continue;  // complete: bwd_kernel reads the caller's stats
    const RowInfo ri = row_info(a.tg, r);
    const A gl = ldg(a.grad_loss + r), g_lse = a.grad_lse != nullptr ? ldg(a.grad_lse + r) : A(0);
    if (!bwd_reads_row(ri.status, gl, g_lse, st)) continue;

    SoftRowCtx<A> c;
    c.lse = {ldg(st + kColLse), ldg(st + kColLseLo)};
    c.t = ldg(st + kColScale);
    c.m = ldg(st + 3);
    c.log_s = ldg(st + 4);
    c.t_div = c.t != A(0) ? c.t : A(1);
    c.star = soft_tag_star(tag);
    SoftRow<A> sr = {c.t, A(0), A(0), soft_tag<A>(false, false)};  // k == 1 without a dominant class
    if (soft_needs_eps(true, k) || c.star) {
      SoftPassB<A> pb = soft_pass_b_init<A>();
      const S* zrow = a.logits + r * C;
      for (int v = tid; v < nvec; v += BLOCK) {
        A x[VEC];
        unpack_logits(load_pack(zrow, v, C, a.aligned), v, C, a.cap, x);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const int j = v * VEC + e;
          if (j < C) soft_pass_b_push(pb, c, x[e], soft_q(a.tg, r, ri, j), k, true);
        }
      }
      soft_pass_b_finish<BLOCK>(pb, c, k, true, red, &sr);
    }
    if (tid == 0) put_stats(a.work + r * kStatsCols, c.lse, sr.t, sr.c_pos, sr.f_star, sr.star);
  }
}

template <typename S>
cudaError_t launch_soft_stats_complete(const CompleteArgs<S>& a, const DeviceInfo& d, cudaStream_t stream) {
  constexpr int BLOCK = 256;
  // Resident blocks only (2048 / BLOCK per SM): most rows are complete and cost one load.
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(a.N, static_cast<int64_t>(d.sms) * (2048 / BLOCK)));
  return launch_kernel<soft_stats_complete_kernel<S, BLOCK>>(grid, BLOCK, 0, stream, a);
}

}  // namespace cuda
}  // namespace hl

// launch.h: the host-side interface of the CUDA kernels of hardloss_cuda::{fwd, bwd,
// bwd_inplace, shard_stats, soft_shard_stats, soft_shard_grad}. Torch-free and host-compiler
// safe (no device code, no cuda_fp16.h): included by the torch glue csrc/cuda/ops_cuda.cpp and
// by the kernel files csrc/cuda/*.cu.
//
// Contract (hardloss_cuda/_schema.py): the forward reads the logits once and keeps kStatsCols
// numbers per row (stats); the backward reads the logits again and writes the gradient once, scaled by
// grad_loss, with the logsumexp's gradient and the softcap fused in. Pointers are raw and
// untyped; `dtype` says what the logits are. The accumulation type ("acc") is double for
// float64 logits and float otherwise: loss, stats, weight, mixture, grad_loss and grad_lse are
// in acc, the gradient and probability targets in the logits' dtype.
// Every tensor is contiguous and on the current device. The launchers only enqueue work on
// `stream` (no allocation, no host synchronisation: capturable in a CUDA graph) and return
// cudaGetLastError() after the launch; N == 0 launches nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "row_math.h"  // kStatsCols: torch-free, host-compiler safe

namespace hl {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// stats (N, kStatsCols) in acc: the layout of row_math.h ("What a row keeps").
using hl::kStatsCols;

// The target description shared by fwd and bwd.
struct TargetParams {
  const int64_t* target;   // (N,) class indices, or nullptr for probability targets
  const void* probs;       // (N, C) probability targets in the logits' dtype, or nullptr
  const void* weight;      // (C,) class weights in acc, or nullptr
  const void* mixture;     // (C, C) mixture matrix in acc, or nullptr
  int64_t ignore_index;
  double label_smoothing;
};

// The soft path exactly where the reference takes it (reference.rows): probability targets,
// a mixture, or label smoothing. Otherwise the one-hot path.
inline bool is_soft(const TargetParams& p) {
  return p.probs != nullptr || p.mixture != nullptr || p.label_smoothing > 0.0;
}

struct FwdParams {
  const void* logits;      // (N, C) logits, only read
  TargetParams tg;
  void* loss;              // (N,) acc
  void* stats;             // (N, kStatsCols) acc
  int64_t N;
  int64_t C;               // 1 <= C <= kMaxClasses when N > 0
  double k;
  bool compute_grad;       // false: the soft rows skip their |eps|^k statistics
  bool raw_stats;          // shard_stats: one-hot rows write their OneHotStats {m, s1, sk}
                           // unfinalised into stats columns 0..2 (every class when the label is
                           // not valid), nothing else; soft rows given row_stats their
                           // SoftEpsStats and StarRest (put_soft_shard_stats) into stats, then
                           // (N, kSoftShardStatsCols): soft_shard_stats
  double softcap;          // 0, or c > 0: every logit is read as c tanh(z / c) (row_math.h
                           // section 6); the padding past C stays -inf
  const void* row_stats = nullptr;  // soft_shard_stats: (N, kStatsCols) acc, each row's global
                           // lse, t and star flag (columns 0, 1, 2, 5); every row takes the soft
                           // path (a class-index row without smoothing: q = w_y onehot(y))
  void* kept_eps = nullptr;    // soft_shard_stats' kept pass (k != 1, with row_stats), or nullptr:
  int8_t* kept_side = nullptr; // (N, C) acc k log|eps_j| and int8 side of each class (row_math.h
                           // soft_shard_class_kept), (-inf, kSidePos) on rows whose label is not valid
};

struct BwdParams {
  const void* grad_loss;   // (N,) acc
  const void* logits;      // (N, C)
  void* out;               // (N, C) gradient in the logits' dtype; == logits for bwd_inplace
  TargetParams tg;
  const void* stats;       // (N, kStatsCols) acc, written by a forward (compute_grad = true):
                           // a soft row's columns 3, 4 in either form of row_math.h soft_tag
  void* stats_work;        // soft rows (is_soft): (N, kStatsCols) acc scratch, where the launcher
                           // completes the rows of the deferred form before the bwd kernel
                           // reads them (the caller's stats are never written); else unused
  int64_t N;
  int64_t C;
  double k;
  double softcap;          // as FwdParams: the gradient is of the capped logits, times the slope
  const void* grad_lse;    // (N,) acc or nullptr: the incoming gradient of each row's logsumexp,
                           // g_lse p_j added before the slope (row_math.h finish_grad)
};

// soft_shard_grad (_schema.py): the gradient of soft rows from soft_shard_stats' kept pass.
struct KeptGradParams {
  const void* grad_loss;   // (N,) acc
  const void* grad_lse;    // (N,) acc or nullptr
  const void* eps;         // (N, C) acc, k log|eps_j| (may be == out: fp32 / fp64 logits)
  const int8_t* side;      // (N, C) int8, kSidePos / kSideNeg / kSideStar
  const void* logits;      // (N, C): read only with a softcap or grad_lse
  const void* stats;       // (N, kStatsCols) acc, the rows' finalised stats in the complete form
  void* out;               // (N, C) gradient in the logits' dtype
  int64_t N;
  int64_t C;
  double softcap;
};

// In-row indices are 32-bit (vector index * 16 bytes stays far from overflow); row offsets
// (row * C) are 64-bit, so N * C may exceed 2^31.
constexpr int64_t kMaxClasses = int64_t(1) << 30;

cudaError_t launch_fwd(const FwdParams& p, DType dtype, cudaStream_t stream);
cudaError_t launch_bwd(const BwdParams& p, DType dtype, cudaStream_t stream);
cudaError_t launch_kept_grad(const KeptGradParams& p, DType dtype, cudaStream_t stream);

// The typed launchers behind the three above, explicitly instantiated for float, double,
// __half and __nv_bfloat16 in csrc/cuda/fwd_*.cu and csrc/cuda/bwd_*.cu (kept_grad: with bwd).
template <typename scalar_t>
cudaError_t launch_fwd_typed(const FwdParams& p, cudaStream_t stream);
template <typename scalar_t>
cudaError_t launch_bwd_typed(const BwdParams& p, cudaStream_t stream);
template <typename scalar_t>
cudaError_t launch_kept_grad_typed(const KeptGradParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace hl

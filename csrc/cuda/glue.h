// glue.h: the torch side of the CUDA kernels' ops hardloss_cuda::{fwd, bwd, bwd_inplace,
// shard_stats, soft_shard_stats, soft_shard_grad}, written once for the device build (csrc/cuda/ops_cuda.cpp:
// CUDA tensors) and the emulated one (csrc/cuda/emu/ops_emu.cpp: the cuda_emu backend, CPU
// tensors). The policy `Dev` says where the tensors live and how a launch is reported:
//   static void check_device(const at::Tensor& logits);
//   struct Guard { explicit Guard(at::Device); };   the device guard (or nothing)
//   static cudaStream_t stream();                   the stream the kernels are queued on
//   static void check(cudaError_t launch_error);     raises a launch's error
//   static void fresh(at::Tensor& out);              a new output before the kernel writes it
//                                                    (the emulator fills it with NaN, so an
//                                                    element the kernel never writes shows)
//
// Each op: the shared argument checks (csrc/checks.h, no data-dependent check and no device
// sync), a device guard, contiguous inputs, outputs allocated on the current stream's
// allocator, one kernel launch on the current stream. No host synchronisation anywhere, so
// the ops can be captured in a CUDA graph. Lean includes only: ATen/cuda/CUDAContext.h does not
// build against the slim CUDA kit (docs/BUILDING.md). The kernels themselves are torch-free
// (csrc/cuda/*.cuh, launch.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <limits>
#include <optional>
#include <tuple>

#include "checks.h"
#include "cuda/launch.h"

namespace hl {
namespace cuda {

inline DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: break;
  }
  TORCH_CHECK(false, "hardloss_cuda: logits: unsupported dtype ", t, " (float32, float64, float16 or bfloat16)");
  return DType::kFloat32;  // not reached
}

struct Prepared {
  at::Tensor target, weight, mixture;  // contiguous (weight / mixture undefined when absent)
};

// After hl::check_fwd_args / check_bwd_args (dtypes, shapes, devices): what only the CUDA
// kernels add, C within their index range, and contiguous inputs.
inline Prepared prepare_inputs(const at::Tensor& logits, const at::Tensor& target,
                               const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture) {
  const int64_t C = logits.size(1);
  TORCH_CHECK(logits.size(0) == 0 || (C >= 1 && C <= kMaxClasses),
              "hardloss_cuda: logits: the number of classes must be in [1, 2^30], got ", C);
  Prepared p;
  p.target = target.contiguous();
  if (weight.has_value() && weight->defined()) p.weight = weight->contiguous();
  if (mixture.has_value() && mixture->defined()) p.mixture = mixture->contiguous();
  return p;
}

inline TargetParams target_params(const Prepared& in, int64_t ignore_index, double label_smoothing) {
  TargetParams t;
  const bool probs = in.target.is_floating_point();
  t.target = probs ? nullptr : in.target.data_ptr<int64_t>();
  t.probs = probs ? in.target.data_ptr() : nullptr;
  t.weight = in.weight.defined() ? in.weight.data_ptr() : nullptr;
  t.mixture = in.mixture.defined() ? in.mixture.data_ptr() : nullptr;
  t.ignore_index = ignore_index;
  t.label_smoothing = label_smoothing;
  return t;
}

template <class Dev>
struct Ops {
  static Prepared prepare(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& mixture) {
    Dev::check_device(logits);
    return prepare_inputs(logits, target, weight, mixture);
  }

  static at::Tensor empty(at::IntArrayRef size, const at::TensorOptions& options) {
    at::Tensor t = at::empty(size, options);
    Dev::fresh(t);
    return t;
  }

  // The forward ops' shared prologue, after each op's own argument check: the softcap's check,
  // the targets as the kernels take them (prepare), the device guard, emplaced into the caller's
  // `guard` (which holds it through the launch), then under it the contiguous logits, N and the
  // options of the accumulation dtype (loss and stats).
  struct FwdInputs {
    Prepared in;
    at::Tensor z;
    int64_t N;
    at::TensorOptions acc;
  };
  static FwdInputs fwd_inputs(const at::Tensor& logits, const at::Tensor& target,
                              const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
                              double softcap, std::optional<typename Dev::Guard>& guard) {
    hl::check_softcap(softcap, logits.scalar_type());
    FwdInputs f;
    f.in = prepare(logits, target, weight, mixture);
    guard.emplace(logits.device());
    f.z = logits.contiguous();
    f.N = f.z.size(0);
    f.acc = f.z.options().dtype(hl::acc_scalar_type(f.z.scalar_type()));
    return f;
  }

  // One forward launch over the N >= 1 rows of z: losses and stats (raw_stats: shard_stats' columns;
  // row_stats: soft_shard_stats, with eps / side its kept pass).
  static void launch_fwd_into(const at::Tensor& z, const TargetParams& tg, double k, bool compute_grad,
                              bool raw_stats, double softcap, const at::Tensor& loss, const at::Tensor& stats,
                              const at::Tensor& row_stats = at::Tensor(), const at::Tensor& eps = at::Tensor(),
                              const at::Tensor& side = at::Tensor()) {
    FwdParams p;
    p.logits = z.data_ptr();
    p.tg = tg;
    p.loss = loss.data_ptr();
    p.stats = stats.data_ptr();
    p.N = z.size(0);
    p.C = z.size(1);
    p.k = k;
    p.compute_grad = compute_grad;
    p.raw_stats = raw_stats;
    p.softcap = softcap;
    p.row_stats = row_stats.defined() ? row_stats.data_ptr() : nullptr;
    p.kept_eps = eps.defined() ? eps.data_ptr() : nullptr;
    p.kept_side = side.defined() ? side.data_ptr<int8_t>() : nullptr;
    Dev::check(launch_fwd(p, dtype_of(z.scalar_type()), Dev::stream()));
  }

  static std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& logits, const at::Tensor& target,
                                                const std::optional<at::Tensor>& weight,
                                                const std::optional<at::Tensor>& mixture, int64_t ignore_index,
                                                double label_smoothing, double k, bool compute_grad, double softcap) {
    hl::check_fwd_args(logits, target, weight, mixture);
    std::optional<typename Dev::Guard> guard;
    const FwdInputs f = fwd_inputs(logits, target, weight, mixture, softcap, guard);
    at::Tensor loss = empty({f.N}, f.acc);
    at::Tensor stats = empty({f.N, hl::kStatsCols}, f.acc);
    if (f.N == 0) return {loss, stats};  // no zero-size grid
    launch_fwd_into(f.z, target_params(f.in, ignore_index, label_smoothing), k, compute_grad, false, softcap, loss,
                    stats);
    return {loss, stats};
  }

  // shard_stats (_schema.py): the one-hot forward kernels with FwdParams::raw_stats, which write
  // each row's OneHotStats {m, s1, sk} (over j != target, or every class for a target outside
  // [0, C)) into stats columns 0..2 instead of finalising the row.
  static at::Tensor shard_stats(const at::Tensor& logits, const at::Tensor& target, double k, double softcap) {
    hl::check_fwd_args(logits, target, std::nullopt, std::nullopt);
    TORCH_CHECK(!target.is_floating_point(), "hardloss_cuda: shard_stats: target must be class indices");
    std::optional<typename Dev::Guard> guard;
    const FwdInputs f = fwd_inputs(logits, target, std::nullopt, std::nullopt, softcap, guard);
    at::Tensor stats = empty({f.N, hl::kStatsCols}, f.acc);
    if (f.N > 0) {
      // No label is ignored: every row excludes its target when it lies in [0, C), none otherwise.
      launch_fwd_into(f.z, target_params(f.in, std::numeric_limits<int64_t>::min(), 0.0), k, true, true, softcap,
                      empty({f.N}, f.acc), stats);
    }
    return stats.narrow(1, 0, hl::kShardStatsCols).contiguous();
  }

  // soft_shard_stats (_schema.py): the soft forward kernels given each row's global lse, t and
  // star flag (FwdParams::row_stats), with FwdParams::raw_stats: no pass A, and pass B's
  // statistics written unfinalised (put_soft_shard_stats). With eps / side (checked contiguous,
  // so written in place) pass B also keeps each class's k log|eps| and side (FwdParams::kept_eps).
  static at::Tensor soft_shard_stats(const at::Tensor& logits, const at::Tensor& target,
                                     const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
                                     const at::Tensor& stats, int64_t ignore_index, double label_smoothing, double k,
                                     double softcap, const std::optional<at::Tensor>& eps,
                                     const std::optional<at::Tensor>& side) {
    hl::check_soft_shard_args(logits, target, weight, mixture, stats);
    std::optional<typename Dev::Guard> guard;
    const FwdInputs f = fwd_inputs(logits, target, weight, mixture, softcap, guard);
    const bool kept = hl::check_kept_eps(logits, eps, side, k);
    at::Tensor out = empty({f.N, hl::kSoftShardStatsCols}, f.acc);
    if (f.N > 0) {
      launch_fwd_into(f.z, target_params(f.in, ignore_index, label_smoothing), k, true, true, softcap,
                      empty({f.N}, f.acc), out, stats.contiguous(), kept ? *eps : at::Tensor(),
                      kept ? *side : at::Tensor());
    }
    return out;
  }

  // grad_loss, stats and grad_lse: checked by hl::check_bwd_args / check_grad_lse (acc dtype,
  // shapes, device); made contiguous here (autograd may hand an expanded grad_loss).
  static void launch_bwd_into(const at::Tensor& grad_loss, const at::Tensor& z, const Prepared& in,
                              const at::Tensor& stats, int64_t ignore_index, double label_smoothing, double k,
                              double softcap, const std::optional<at::Tensor>& grad_lse, const at::Tensor& out) {
    const int64_t N = z.size(0);
    if (N == 0) return;  // no zero-size grid (C >= 1 is checked)
    const at::Tensor gl = grad_loss.contiguous();
    const at::Tensor st = stats.contiguous();
    const at::Tensor g_lse = grad_lse.has_value() && grad_lse->defined() ? grad_lse->contiguous() : at::Tensor();
    BwdParams p;
    p.grad_loss = gl.data_ptr();
    p.logits = z.data_ptr();
    p.out = out.data_ptr();
    p.tg = target_params(in, ignore_index, label_smoothing);
    p.stats = st.data_ptr();
    // The soft rows' completed stats (bwd_complete.cuh): the rows of the deferred form only, so
    // the emulator's NaN fill shows a read of any other row. Freed on return: the caching
    // allocator hands it out again only to work queued after the kernels on this stream.
    at::Tensor work;
    if (is_soft(p.tg)) work = empty(st.sizes(), st.options());
    p.stats_work = work.defined() ? work.data_ptr() : nullptr;
    p.N = N;
    p.C = z.size(1);
    p.k = k;
    p.softcap = softcap;
    p.grad_lse = g_lse.defined() ? g_lse.data_ptr() : nullptr;
    Dev::check(launch_bwd(p, dtype_of(z.scalar_type()), Dev::stream()));
  }

  // The backward's checks (arguments, cap, grad_lse), then its inputs as the kernels take them.
  static Prepared prepare_bwd(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                              const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
                              const at::Tensor& stats, double softcap, const std::optional<at::Tensor>& grad_lse) {
    hl::check_bwd_args(grad_loss, logits, target, weight, mixture, stats);
    hl::check_softcap(softcap, logits.scalar_type());
    hl::check_grad_lse(grad_lse, logits);
    return prepare(logits, target, weight, mixture);
  }

  static at::Tensor bwd(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                        const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
                        const at::Tensor& stats, int64_t ignore_index, double label_smoothing, double k,
                        double softcap, const std::optional<at::Tensor>& grad_lse) {
    Prepared in = prepare_bwd(grad_loss, logits, target, weight, mixture, stats, softcap, grad_lse);
    typename Dev::Guard guard(logits.device());
    const at::Tensor z = logits.contiguous();
    at::Tensor out = empty(z.sizes(), z.options());
    launch_bwd_into(grad_loss, z, in, stats, ignore_index, label_smoothing, k, softcap, grad_lse, out);
    return out;
  }

  // The gradient overwrites the logits: each element is read before it is written, by the same
  // thread (csrc/cuda/bwd_kernels.cuh). Non-contiguous logits: through a contiguous copy.
  static void bwd_inplace(const at::Tensor& grad_loss, at::Tensor& logits, const at::Tensor& target,
                          const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
                          const at::Tensor& stats, int64_t ignore_index, double label_smoothing, double k,
                          double softcap, const std::optional<at::Tensor>& grad_lse) {
    Prepared in = prepare_bwd(grad_loss, logits, target, weight, mixture, stats, softcap, grad_lse);
    typename Dev::Guard guard(logits.device());
    const bool direct = logits.is_contiguous();
    at::Tensor z = direct ? logits : logits.contiguous();
    launch_bwd_into(grad_loss, z, in, stats, ignore_index, label_smoothing, k, softcap, grad_lse, z);
    if (!direct) logits.copy_(z);
  }

  // soft_shard_grad (_schema.py): bwd of soft rows from soft_shard_stats' kept pass
  // (kept_grad.cuh), into `out` (checked contiguous; it may be eps itself). The logits are passed
  // (contiguous) only when a softcap or grad_lse may make the kernel read them.
  static void soft_shard_grad(const at::Tensor& grad_loss, const at::Tensor& eps, const at::Tensor& side,
                              const at::Tensor& logits, const at::Tensor& stats, at::Tensor& out, double softcap,
                              const std::optional<at::Tensor>& grad_lse) {
    hl::check_soft_shard_grad_args(grad_loss, eps, side, logits, stats, out);
    hl::check_softcap(softcap, logits.scalar_type());
    hl::check_grad_lse(grad_lse, logits);
    Dev::check_device(logits);
    const int64_t N = logits.size(0), C = logits.size(1);
    TORCH_CHECK(N == 0 || C <= kMaxClasses, "hardloss_cuda: logits: the number of classes must be in [1, 2^30], got ",
                C);
    if (N == 0 || C == 0) return;  // no zero-size grid
    typename Dev::Guard guard(logits.device());
    const bool has_lse = grad_lse.has_value() && grad_lse->defined();
    const at::Tensor z = softcap != 0.0 || has_lse ? logits.contiguous() : at::Tensor();
    const at::Tensor gl = grad_loss.contiguous(), st = stats.contiguous();
    const at::Tensor g_lse = has_lse ? grad_lse->contiguous() : at::Tensor();
    KeptGradParams p;
    p.grad_loss = gl.data_ptr();
    p.grad_lse = g_lse.defined() ? g_lse.data_ptr() : nullptr;
    p.eps = eps.data_ptr();
    p.side = side.data_ptr<int8_t>();
    p.logits = z.defined() ? z.data_ptr() : nullptr;
    p.stats = st.data_ptr();
    p.out = out.data_ptr();
    p.N = N;
    p.C = C;
    p.softcap = softcap;
    Dev::check(launch_kept_grad(p, dtype_of(logits.scalar_type()), Dev::stream()));
  }
};

}  // namespace cuda
}  // namespace hl

#include "checks.h"

#include <limits>

#include <c10/util/Exception.h>

namespace hl {
namespace {

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_same_device(const at::Tensor& t, const at::Tensor& logits, const char* name) {
  TORCH_CHECK(t.device() == logits.device(), "hardloss_cuda: ", name, " is on ", t.device(),
              " but logits is on ", logits.device());
}

// logits: 2-D, of a float dtype the kernels take.
void check_logits(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2, "hardloss_cuda: logits must be 2-D (N, C), got shape ", logits.sizes());
  TORCH_CHECK(is_float_dtype(logits.scalar_type()), "hardloss_cuda: logits: unsupported dtype ",
              logits.scalar_type(), " (float32, float64, float16 or bfloat16)");
}

// grad_loss: (N,) in the accumulation dtype, on the logits' device.
void check_grad_loss(const at::Tensor& grad_loss, const at::Tensor& logits) {
  const int64_t N = logits.size(0);
  const at::ScalarType acc = acc_scalar_type(logits.scalar_type());
  check_same_device(grad_loss, logits, "grad_loss");
  TORCH_CHECK(grad_loss.dim() == 1 && grad_loss.size(0) == N && grad_loss.scalar_type() == acc,
              "hardloss_cuda: grad_loss: expected ", acc, " of shape (", N, "), got ",
              grad_loss.scalar_type(), " ", grad_loss.sizes());
}

}  // namespace

void check_fwd_args(const at::Tensor& logits, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture) {
  check_logits(logits);
  const int64_t N = logits.size(0), C = logits.size(1);
  TORCH_CHECK(C >= 1, "hardloss_cuda: logits must have at least one class (C >= 1)");
  const at::ScalarType acc = acc_scalar_type(logits.scalar_type());
  check_same_device(target, logits, "target");
  if (target.is_floating_point()) {
    TORCH_CHECK(target.dim() == 2 && target.size(0) == N && target.size(1) == C,
                "hardloss_cuda: target: class probabilities must have shape (", N, ", ", C, "), got ",
                target.sizes());
    TORCH_CHECK(target.scalar_type() == logits.scalar_type(), "hardloss_cuda: target: probabilities must have the logits' dtype ",
                logits.scalar_type(), ", got ", target.scalar_type());
    TORCH_CHECK(!(mixture.has_value() && mixture->defined()),
                "hardloss_cuda: mixture: only allowed with class-index targets");
  } else {
    TORCH_CHECK(target.scalar_type() == at::kLong && target.dim() == 1 && target.size(0) == N,
                "hardloss_cuda: target: class indices must be int64 of shape (", N, "), got ",
                target.scalar_type(), " ", target.sizes());
  }
  if (weight.has_value() && weight->defined()) {
    check_same_device(*weight, logits, "weight");
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == C && weight->scalar_type() == acc,
                "hardloss_cuda: weight: expected ", acc, " of shape (", C, "), got ",
                weight->scalar_type(), " ", weight->sizes());
  }
  if (mixture.has_value() && mixture->defined()) {
    check_same_device(*mixture, logits, "mixture");
    TORCH_CHECK(mixture->dim() == 2 && mixture->size(0) == C && mixture->size(1) == C &&
                    mixture->scalar_type() == acc,
                "hardloss_cuda: mixture: expected ", acc, " of shape (", C, ", ", C, "), got ",
                mixture->scalar_type(), " ", mixture->sizes());
  }
}

namespace {
// The stats a bwd or soft_shard_stats call reads: (N, kStatsCols) in the accumulation dtype.
void check_stats(const at::Tensor& stats, const at::Tensor& logits) {
  const at::ScalarType acc = acc_scalar_type(logits.scalar_type());
  check_same_device(stats, logits, "stats");
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == logits.size(0) && stats.size(1) == kStatsCols &&
                  stats.scalar_type() == acc,
              "hardloss_cuda: stats: expected ", acc, " of shape (", logits.size(0), ", ", kStatsCols, "), got ",
              stats.scalar_type(), " ", stats.sizes());
}

// soft_shard_stats' kept pass and soft_shard_grad's out: contiguous, the logits' shape and
// device, in `dtype`.
void check_like_logits(const at::Tensor& x, const at::Tensor& logits, at::ScalarType dtype, const char* name) {
  check_same_device(x, logits, name);
  TORCH_CHECK(x.sizes() == logits.sizes() && x.scalar_type() == dtype && x.is_contiguous(), "hardloss_cuda: ", name,
              ": expected contiguous ", dtype, " of shape ", logits.sizes(), ", got ", x.scalar_type(), " ",
              x.sizes());
}
}  // namespace

void check_bwd_args(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mixture,
                    const at::Tensor& stats) {
  check_fwd_args(logits, target, weight, mixture);
  check_grad_loss(grad_loss, logits);
  check_stats(stats, logits);
}

void check_soft_shard_args(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& mixture, const at::Tensor& stats) {
  check_fwd_args(logits, target, weight, mixture);
  check_stats(stats, logits);
}

bool check_kept_eps(const at::Tensor& logits, const std::optional<at::Tensor>& eps,
                    const std::optional<at::Tensor>& side, double k) {
  const bool has_eps = eps.has_value() && eps->defined(), has_side = side.has_value() && side->defined();
  if (!has_eps && !has_side) return false;
  TORCH_CHECK(has_eps && has_side, "hardloss_cuda: eps, side: give both or neither");
  TORCH_CHECK(k != 1.0, "hardloss_cuda: eps: the kept pass is for k != 1 (at k = 1 soft_shard_stats takes no |eps|)");
  check_like_logits(*eps, logits, acc_scalar_type(logits.scalar_type()), "eps");
  check_like_logits(*side, logits, at::kChar, "side");
  return true;
}

void check_soft_shard_grad_args(const at::Tensor& grad_loss, const at::Tensor& eps, const at::Tensor& side,
                                const at::Tensor& logits, const at::Tensor& stats, const at::Tensor& out) {
  check_logits(logits);
  check_grad_loss(grad_loss, logits);
  check_stats(stats, logits);
  check_like_logits(eps, logits, acc_scalar_type(logits.scalar_type()), "eps");
  check_like_logits(side, logits, at::kChar, "side");
  check_like_logits(out, logits, logits.scalar_type(), "out");
}

// _schema.py softcap_range in C++ (the normal positive numbers of the accumulation type), for
// calls through torch.ops that skip the Python checks; tests/test_bad_inputs.py
// test_op_softcap_range_is_schemas holds the two to the same ends.
void check_softcap(double softcap, at::ScalarType logits_dtype) {
  if (softcap == 0.0) return;
  const bool dbl = acc_scalar_type(logits_dtype) == at::kDouble;
  const double lo = dbl ? std::numeric_limits<double>::min() : double(std::numeric_limits<float>::min());
  const double hi = dbl ? std::numeric_limits<double>::max() : double(std::numeric_limits<float>::max());
  TORCH_CHECK(softcap >= lo && softcap <= hi, "hardloss_cuda: softcap must be 0 (off) or a number in [", lo, ", ", hi,
              "] for ", logits_dtype, " logits (the kernels compute in ", acc_scalar_type(logits_dtype), "), got ",
              softcap);
}

void check_grad_lse(const std::optional<at::Tensor>& grad_lse, const at::Tensor& logits) {
  if (!grad_lse.has_value() || !grad_lse->defined()) return;
  const at::ScalarType acc = acc_scalar_type(logits.scalar_type());
  check_same_device(*grad_lse, logits, "grad_lse");
  TORCH_CHECK(grad_lse->dim() == 1 && grad_lse->size(0) == logits.size(0) && grad_lse->scalar_type() == acc,
              "hardloss_cuda: grad_lse: expected ", acc, " of shape (", logits.size(0), "), got ",
              grad_lse->scalar_type(), " ", grad_lse->sizes());
}

}  // namespace hl

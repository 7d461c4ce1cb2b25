// hardloss_cuda::soft_shard_stats on the CPU (hardloss_cuda/_schema.py): a soft row's pass 2 over
// the classes of this shard, given the row's global lse (hi, lo), t and dominant-class flag
// (stats columns 0, 1, 2, 5), as the unfinalised row_math.h SoftEpsStats and StarRest
// (put_soft_shard_stats). float rows at k != 1 take the backward's vectorised chunk loop
// (chunk_math.h soft_eps, relative to hi and lo); fp64 rows and k == 1 (only rows with a
// dominant class have anything to gather) row_math.h's soft_shard_class, class by class.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <memory>
#include <type_traits>

#include "checks.h"
#include "cpu/hardloss_cpu.h"
#include "cpu/rows.h"

namespace hl {
namespace cpu {
namespace {

template <typename acc_t>
struct ShardRow {
  SoftEpsStats<acc_t> es;
  StarRest<acc_t> rest;
};

// Class by class, in blocks (rows.h blocked_reduce).
template <typename acc_t, typename Z, typename Q>
ShardRow<acc_t> shard_row_scalar(const Z* row, int64_t C, const Q& q, acc_t hi, acc_t lo, acc_t t, bool star,
                                 acc_t k) {
  return blocked_reduce(
      C, ShardRow<acc_t>{soft_eps_init<acc_t>(), star_rest_init<acc_t>()},
      [&](ShardRow<acc_t>& st, int64_t j) {
        soft_shard_class(st.es, st.rest, static_cast<acc_t>(row[j]), q(j), hi, lo, t, star, k);
      },
      [](ShardRow<acc_t> a, ShardRow<acc_t> b) {
        return ShardRow<acc_t>{soft_eps_merge(a.es, b.es), star_rest_merge(a.rest, b.rest)};
      });
}

// float rows at k != 1: soft_eps chunk by chunk (its per-class output s.w is not kept). The
// others' sum of p is summed as floats there; below 1e-20 (p_i < 2^-126 flush to 0) one more
// pass takes their log-sum-exp exactly, as the backward does (soft_rows.h).
template <typename Z, typename Q>
ShardRow<float> shard_row_vec(const Z* row, int64_t C, const Q& q, float hi, float lo, float t, bool star, float k,
                              Scratch<float>& s) {
  const float t_div = t != 0.0f ? t : 1.0f, star_t = star ? t : hl_inf<float>();
  s.w.resize(kChunk);
  s.refs.resize(2 * (kChunk / kEpsBlock));
  ShardRow<float> r{soft_eps_init<float>(), star_rest_init<float>()};
  float p_rest = 0.0f;
  for (int64_t a = 0; a < C; a += kChunk) {
    const int64_t n = std::min(kChunk, C - a);
    const float* x = load(row, a, n, s.x);
    const SoftEpsChunk e = soft_eps(x, q.fill(a, n, s.q), n, hi, lo, t_div, star_t, k, s.w.data(), s.refs.data());
    r.es = soft_eps_merge(r.es, SoftEpsStats<float>{e.m_neg, e.s_neg, e.m_pos, e.s_pos});
    if (star) csum_add(r.rest.q, static_cast<float>(e.q_rest));  // rest: rows with a dominant class only
    p_rest += e.p_rest;
  }
  if (star && p_rest >= 1e-20f) {
    r.rest.p = LseStats<float>{hl_log(p_rest), 1.0f};
  } else if (star) {
    for (int64_t j = 0; j < C; ++j) {
      if (!is_star(true, q(j), t)) lse_push(r.rest.p, (static_cast<float>(row[j]) - hi) - lo);
    }
  }
  return r;
}

template <typename scalar_t>
void shard_rows(const at::Tensor& z, const at::Tensor& target, const at::Tensor& weight, const at::Tensor& mixture,
                const at::Tensor& stats, int64_t ignore_index, double label_smoothing, double k_, double softcap,
                at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = z.size(0), C = z.size(1);
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  const acc_t* sp = stats.const_data_ptr<acc_t>();
  acc_t* op = out.mutable_data_ptr<acc_t>();
  // a class-index row without smoothing or mixture is read as the soft row q = w_y onehot(y)
  const RowTargets<scalar_t, acc_t> rt(target, weight, mixture, C, ignore_index, label_smoothing);
  const acc_t k = static_cast<acc_t>(k_), cap = static_cast<acc_t>(softcap);
  at::parallel_for(0, N, grain(C), [&](int64_t begin, int64_t end) {
    auto scratch = std::make_unique<Scratch<acc_t>>();
    for (int64_t i = begin; i < end; ++i) {
      const acc_t* st = sp + i * kStatsCols;
      const acc_t hi = st[kColLse], lo = st[kColLseLo], t = st[kColScale];
      const bool star = soft_tag_star(st[kColStar]);
      auto put = [&](const ShardRow<acc_t>& r) { put_soft_shard_stats(op + i * kSoftShardStatsCols, r.es, r.rest); };
      auto soft = [&](const auto& q) {
        auto go = [&](const auto* row) {
          if (k == acc_t(1) && !star) return put({soft_eps_init<acc_t>(), star_rest_init<acc_t>()});
          if constexpr (std::is_same_v<acc_t, float>) {
            if (k != acc_t(1)) return put(shard_row_vec(row, C, q, hi, lo, t, star, k, *scratch));
          }
          put(shard_row_scalar(row, C, q, hi, lo, t, star, k));
        };
        if (cap != acc_t(0)) go(capped_row(zp + i * C, C, cap, scratch->zc, scratch->x));
        else go(zp + i * C);
      };
      rt.visit(
          i, [&](bool) { put({soft_eps_init<acc_t>(), star_rest_init<acc_t>()}); },
          [&](int64_t y, acc_t) { soft(SmoothedTarget<acc_t>{y, rt.w, acc_t(1), acc_t(0)}); }, soft);
    }
  });
}

}  // namespace

at::Tensor soft_shard_stats(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& mixture, const at::Tensor& stats, int64_t ignore_index,
                            double label_smoothing, double k, double softcap) {
  check_soft_shard_args(logits, target, weight, mixture, stats);
  check_softcap(softcap, logits.scalar_type());
  const at::Tensor z = logits.contiguous(), t = target.contiguous(), st = stats.contiguous();
  const at::Tensor w = contiguous_or_undefined(weight), W = contiguous_or_undefined(mixture);
  at::Tensor out = at::empty({z.size(0), kSoftShardStatsCols}, z.options().dtype(acc_scalar_type(z.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "hardloss_cuda_soft_shard_stats_cpu", [&] {
    shard_rows<scalar_t>(z, t, w, W, st, ignore_index, label_smoothing, k, softcap, out);
  });
  return out;
}

}  // namespace cpu
}  // namespace hl

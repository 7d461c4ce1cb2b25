// hardloss_cuda::soft_shard_stats and soft_shard_grad on the CPU (hardloss_cuda/_schema.py).
// soft_shard_stats: a soft row's pass 2 over
// the classes of this shard, given the row's global lse (hi, lo), t and dominant-class flag
// (stats columns 0, 1, 2, 5), as the unfinalised row_math.h SoftEpsStats and StarRest
// (put_soft_shard_stats). float rows at k != 1 take the backward's vectorised chunk loop
// (chunk_math.h soft_eps, relative to hi and lo); fp64 rows and k == 1 (only rows with a
// dominant class have anything to gather) row_math.h's soft_shard_class, class by class. With
// eps / side it also keeps each class's k log|eps| and side (soft_shard_class_kept).
// soft_shard_grad: bwd of those rows from the kept pass (row_math.h soft_kept_f), no logits
// read unless a softcap or a logsumexp gradient needs them.
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

// The kept pass's outputs of one row (_schema.py soft_shard_stats), or nullptr.
template <typename acc_t>
struct Kept {
  acc_t* kla;
  int8_t* side;
  void fill_invalid(int64_t C) const {  // (-inf, kSidePos): f = 0 from the row's zeroed stats
    if (kla == nullptr) return;
    std::fill(kla, kla + C, -hl_inf<acc_t>());
    std::fill(side, side + C, kSidePos);
  }
};

// Class by class, in blocks (rows.h blocked_reduce).
template <typename acc_t, typename Z, typename Q>
ShardRow<acc_t> shard_row_scalar(const Z* row, int64_t C, const Q& q, acc_t hi, acc_t lo, acc_t t, bool star,
                                 acc_t k, Kept<acc_t> kept) {
  return blocked_reduce(
      C, ShardRow<acc_t>{soft_eps_init<acc_t>(), star_rest_init<acc_t>()},
      [&](ShardRow<acc_t>& st, int64_t j) {
        const acc_t z = static_cast<acc_t>(row[j]);
        if (kept.kla == nullptr) return soft_shard_class(st.es, st.rest, z, q(j), hi, lo, t, star, k);
        const KeptEps<acc_t> e = soft_shard_class_kept(st.es, st.rest, z, q(j), hi, lo, t, star, k);
        kept.kla[j] = e.kla;
        kept.side[j] = e.side;
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
                              Scratch<float>& s, Kept<float> kept) {
  const float t_div = t != 0.0f ? t : 1.0f, star_t = star ? t : hl_inf<float>();
  s.w.resize(kChunk);
  s.refs.resize(2 * (kChunk / kEpsBlock));
  ShardRow<float> r{soft_eps_init<float>(), star_rest_init<float>()};
  float p_rest = 0.0f;
  for (int64_t a = 0; a < C; a += kChunk) {
    const int64_t n = std::min(kChunk, C - a);
    const float* x = load(row, a, n, s.x);
    const SoftEpsChunk e = soft_eps(x, q.fill(a, n, s.q), n, hi, lo, t_div, star_t, k, s.w.data(), s.refs.data(),
                                    kept.kla != nullptr ? kept.kla + a : nullptr,
                                    kept.side != nullptr ? kept.side + a : nullptr);
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
                at::Tensor& out, const at::Tensor& eps, const at::Tensor& side) {
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
      const Kept<acc_t> kept{eps.defined() ? eps.mutable_data_ptr<acc_t>() + i * C : nullptr,
                             side.defined() ? side.mutable_data_ptr<int8_t>() + i * C : nullptr};
      auto soft = [&](const auto& q) {
        auto go = [&](const auto* row) {
          if (k == acc_t(1) && !star) return put({soft_eps_init<acc_t>(), star_rest_init<acc_t>()});
          if constexpr (std::is_same_v<acc_t, float>) {
            if (k != acc_t(1)) return put(shard_row_vec(row, C, q, hi, lo, t, star, k, *scratch, kept));
          }
          put(shard_row_scalar(row, C, q, hi, lo, t, star, k, kept));
        };
        if (cap != acc_t(0)) go(capped_row(zp + i * C, C, cap, scratch->zc, scratch->x));
        else go(zp + i * C);
      };
      rt.visit(
          i,
          [&](bool) {
            kept.fill_invalid(C);
            put({soft_eps_init<acc_t>(), star_rest_init<acc_t>()});
          },
          [&](int64_t y, acc_t) { soft(SmoothedTarget<acc_t>{y, rt.w, acc_t(1), acc_t(0)}); }, soft);
    }
  });
}

}  // namespace

at::Tensor soft_shard_stats(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& mixture, const at::Tensor& stats, int64_t ignore_index,
                            double label_smoothing, double k, double softcap, const std::optional<at::Tensor>& eps,
                            const std::optional<at::Tensor>& side) {
  check_soft_shard_args(logits, target, weight, mixture, stats);
  check_softcap(softcap, logits.scalar_type());
  const bool kept = check_kept_eps(logits, eps, side, k);
  const at::Tensor z = logits.contiguous(), t = target.contiguous(), st = stats.contiguous();
  const at::Tensor w = contiguous_or_undefined(weight), W = contiguous_or_undefined(mixture);
  at::Tensor out = at::empty({z.size(0), kSoftShardStatsCols}, z.options().dtype(acc_scalar_type(z.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "hardloss_cuda_soft_shard_stats_cpu", [&] {
    shard_rows<scalar_t>(z, t, w, W, st, ignore_index, label_smoothing, k, softcap, out,
                         kept ? *eps : at::Tensor(), kept ? *side : at::Tensor());
  });
  return out;
}

namespace {

// soft_shard_grad's g f_j over a chunk of a row (row_math.h soft_kept_f): float vectorised with
// fast_exp, as soft_grad_complete computes the same numbers from the logits.
template <typename acc_t>
void kept_grad_chunk(const acc_t* kla, const int8_t* side, int64_t n, acc_t g, acc_t t, acc_t c_pos, acc_t f_star,
                     acc_t* out) {
  if constexpr (std::is_same_v<acc_t, float>) {
    kept_grad_map(kla, side, n, g, t, c_pos, g * f_star, out);
  } else {
    const SoftRow<acc_t> r{t, c_pos, f_star, acc_t(0)};
    for (int64_t j = 0; j < n; ++j) out[j] = g * soft_kept_f(r, kla[j], side[j]);
  }
}

template <typename scalar_t>
void kept_grad_rows(const at::Tensor& grad_loss, const at::Tensor& eps, const at::Tensor& side, const at::Tensor& z,
                    const at::Tensor& stats, double softcap, const at::Tensor& grad_lse, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = z.size(0), C = z.size(1);
  const acc_t* gl = grad_loss.const_data_ptr<acc_t>();
  const acc_t* glp = grad_lse.defined() ? grad_lse.const_data_ptr<acc_t>() : nullptr;
  const acc_t* ep = eps.const_data_ptr<acc_t>();
  const int8_t* sp = side.const_data_ptr<int8_t>();
  const acc_t* statp = stats.const_data_ptr<acc_t>();
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const acc_t cap = static_cast<acc_t>(softcap);
  at::parallel_for(0, N, grain(C), [&](int64_t begin, int64_t end) {
    auto s = std::make_unique<Scratch<acc_t>>();
    for (int64_t i = begin; i < end; ++i) {
      const acc_t* st = statp + i * kStatsCols;
      const acc_t g = gl[i], g_lse = glp != nullptr ? glp[i] : acc_t(0);
      const acc_t lse = st[kColLse], t = st[kColScale], c_pos = st[3], f_star = st[4];
      scalar_t* o = op + i * C;
      const bool zero = g_lse == acc_t(0) && grad_row_is_zero(g, lse, t);
      if (!zero && !(hl_abs(lse) < hl_inf<acc_t>())) {  // as bwd: a row without a finite lse is NaN
        std::fill(o, o + C, static_cast<scalar_t>(hl_nan<acc_t>()));
        continue;
      }
      const acc_t* kla = ep + i * C;
      const int8_t* sd = sp + i * C;
      // g f from the kept pass, not from the row (read only for a softcap or g_lse); out may
      // be eps: each chunk is read into s.tmp before it is written.
      grad_row(zp + i * C, o, C, zero, cap, g_lse, st, *s, [&](const auto*, auto* d) {
        for (int64_t a = 0; a < C; a += kChunk) {
          const int64_t n = std::min(kChunk, C - a);
          kept_grad_chunk(kla + a, sd + a, n, g, t, c_pos, f_star, s->tmp);
          store(d, a, n, s->tmp);
        }
      });
    }
  });
}

}  // namespace

void soft_shard_grad(const at::Tensor& grad_loss, const at::Tensor& eps, const at::Tensor& side,
                     const at::Tensor& logits, const at::Tensor& stats, at::Tensor& out, double softcap,
                     const std::optional<at::Tensor>& grad_lse) {
  check_soft_shard_grad_args(grad_loss, eps, side, logits, stats, out);
  check_softcap(softcap, logits.scalar_type());
  check_grad_lse(grad_lse, logits);
  const at::Tensor g_lse = grad_lse.has_value() && grad_lse->defined() ? grad_lse->contiguous() : at::Tensor();
  // the logits are read only for a softcap or a logsumexp gradient (no copy of them otherwise)
  const at::Tensor z = softcap != 0.0 || g_lse.defined() ? logits.contiguous() : logits;
  const at::Tensor gl = grad_loss.contiguous(), st = stats.contiguous();
  if (z.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "hardloss_cuda_soft_shard_grad_cpu", [&] {
    kept_grad_rows<scalar_t>(gl, eps, side, z, st, softcap, g_lse, out);
  });
}

}  // namespace cpu
}  // namespace hl

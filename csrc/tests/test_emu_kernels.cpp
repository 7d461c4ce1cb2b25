// The CUDA kernels (csrc/cuda, through launch.h) on the emulator, torch-free, against a host
// oracle: the same row_math.h functions applied one class at a time in double precision on the
// same (rounded) inputs. Every launch path of both emulated profiles (emu/runtime.h): sub-warp
// groups, warp rows, block rows up to 1024 threads, streaming rows with a full and a partial
// row cache; fp64, fp32, fp16, bf16; rows that are misaligned or whose C is not a multiple of
// the 16-byte vector; one-hot rows (k = 1 and not, class weights, ignored and bad labels), label
// smoothing, probability targets, mixtures; softcap and a logsumexp gradient; fwd with and
// without the gradient, shard_stats's raw statistics, bwd and bwd_inplace (bitwise the same),
// rows with a zero incoming gradient; soft_shard_stats (the soft forward with raw_stats and
// row_stats) on every row, given its lse (some split floor + rest, so that lo counts), t and
// star flag: rows with and without a dominant class at k == 1 and k != 1 (counted: each must
// occur), one-hot rows as q = w_y onehot(y), ignored and bad rows (-inf, 0, -inf, 0, -inf, 0, 0);
// at k != 1 also its kept pass (FwdParams::kept_eps / kept_side: the same statistics bitwise,
// every class written, (-inf, kSidePos) on rows whose label is not valid, f of the kept values as
// the oracle's) and soft_shard_grad from it (launch_kept_grad, against the oracle's gradient; out
// over eps itself for fp32 / fp64, bitwise the same).
// Run by CTest under AddressSanitizer and UBSan (`make emu-sanitize`): memory errors abort.
// Usage: test_emu_kernels [seed]
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/device.cuh"
#include "cuda/emu/runtime.h"
#include "cuda/launch.h"
#include "row_math.h"

namespace {

using namespace hl;
using hl::cuda::DType;

int g_failures = 0;
int g_cases = 0;
int g_shard_rows[2][2] = {};  // soft_shard_stats rows by [k == 1][star]
int g_kept_sides[3] = {};     // soft_shard_stats' kept pass: classes by side (valid rows)

// ---------------------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------------------
template <typename S>
struct Elem;
template <>
struct Elem<float> {
  using A = float;
  static constexpr DType kType = DType::kFloat32;
  static constexpr const char* kName = "fp32";
  static float from(double x) { return static_cast<float>(x); }
  static double to(float x) { return x; }
  static constexpr double kTol = 2e-5;
  static constexpr double kTiny = 1.4e-45;  // the smallest subnormal: the rounding of a tiny output
};
template <>
struct Elem<double> {
  using A = double;
  static constexpr DType kType = DType::kFloat64;
  static constexpr const char* kName = "fp64";
  static double from(double x) { return x; }
  static double to(double x) { return x; }
  static constexpr double kTol = 1e-11;
  static constexpr double kTiny = 4.9e-324;
};
template <>
struct Elem<__half> {
  using A = float;
  static constexpr DType kType = DType::kFloat16;
  static constexpr const char* kName = "fp16";
  static __half from(double x) { return __float2half_rn(static_cast<float>(x)); }
  static double to(__half x) { return __half2float(x); }
  static constexpr double kTol = 2e-3;
  static constexpr double kTiny = 6e-8;
};
template <>
struct Elem<__nv_bfloat16> {
  using A = float;
  static constexpr DType kType = DType::kBFloat16;
  static constexpr const char* kName = "bf16";
  static __nv_bfloat16 from(double x) { return __float2bfloat16_rn(static_cast<float>(x)); }
  static double to(__nv_bfloat16 x) { return __bfloat162float(x); }
  static constexpr double kTol = 1.6e-2;
  static constexpr double kTiny = 9.2e-41;
};

// ---------------------------------------------------------------------------------------
// A case and its inputs
// ---------------------------------------------------------------------------------------
enum class Kind { kOneHot, kWeighted, kSmooth, kProbs, kMixture };
const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kOneHot: return "onehot";
    case Kind::kWeighted: return "weighted";
    case Kind::kSmooth: return "smooth";
    case Kind::kProbs: return "probs";
    case Kind::kMixture: return "mixture";
  }
  return "?";
}

struct Case {
  int64_t N, C;
  Kind kind;
  double k;
  bool misaligned;  // the logits (and probabilities) start one element past a 16-byte boundary
  double cap;       // softcap (0: off)
  bool lse_grad;    // bwd with a logsumexp gradient
};

// The oracle's view of a row's target: q_j (class weights folded in), or the one-hot label.
struct Inputs {
  std::vector<double> z;       // (N, C), the logits as the kernel reads them (capped)
  std::vector<double> z_raw;   // (N, C), the logits as stored (the softcap's slope is taken there)
  std::vector<int64_t> y;      // (N,) or empty
  std::vector<double> probs;   // (N, C) or empty, as the kernel reads them
  std::vector<double> weight;  // (C,) or empty
  std::vector<double> mix;     // (C, C) or empty
  std::vector<double> gl;      // (N,)
  std::vector<double> g_lse;   // (N,) or empty
  double s = 0;
  int64_t ignore = -100;
};

// ---------------------------------------------------------------------------------------
// The oracle: row_math.h, one class at a time, in double
// ---------------------------------------------------------------------------------------
struct RowRef {
  double loss, lse;
  std::vector<double> f;  // the pseudo-gradient (NaN row: bad label)
  OneHotStats<double> raw;
};

// q_j of row i (class weights folded in); a valid row only. A class-index row without smoothing
// or mixture is q = w_y onehot(y).
double oracle_q(const Inputs& in, int64_t i, int64_t C, int64_t j) {
  const double w = in.weight.empty() ? 1.0 : in.weight[j];
  if (!in.probs.empty()) return q_probability(in.probs[i * C + j], w, 1 - in.s, in.s / C);
  if (!in.mix.empty()) return q_mixture(in.mix[in.y[i] * C + j], w);
  return q_smoothed(j == in.y[i], w, 1 - in.s, in.s / C);
}

RowRef oracle_row(const Inputs& in, int64_t i, int64_t C, double k) {
  const double* z = &in.z[i * C];
  RowRef r;
  r.f.assign(C, 0.0);
  const bool soft = !in.probs.empty() || !in.mix.empty() || in.s > 0;
  const int status = in.y.empty() ? kLabelValid : label_status(in.y[i], C, in.ignore);
  const int64_t y = status == kLabelValid && !in.y.empty() ? in.y[i] : -1;
  // raw statistics over j != y (every class when the label is not valid): shard_stats
  r.raw = onehot_init<double>();
  for (int64_t j = 0; j < C; ++j) {
    if (j != (in.y.empty() ? -1 : (in.y[i] >= 0 && in.y[i] < C ? in.y[i] : -1))) onehot_push(r.raw, z[j], k);
  }
  LseStats<double> ls = lse_init<double>();
  for (int64_t j = 0; j < C; ++j) lse_push(ls, z[j]);
  r.lse = lse_value(ls);
  if (status != kLabelValid) {
    r.loss = status == kLabelIgnored ? 0.0 : NAN;
    r.f.assign(C, status == kLabelIgnored ? 0.0 : NAN);
    return r;
  }
  auto w = [&](int64_t j) { return in.weight.empty() ? 1.0 : in.weight[j]; };
  if (!soft) {
    OneHotStats<double> st = onehot_init<double>();
    for (int64_t j = 0; j < C; ++j) {
      if (j != y) onehot_push(st, z[j], k);
    }
    const OneHotRow<double> row = onehot_finalize(st, z[y], w(y), k);
    r.loss = row.loss;
    for (int64_t j = 0; j < C; ++j) r.f[j] = j == y ? row.f_y : onehot_fj(row, z[j], k);
    return r;
  }
  auto q = [&](int64_t j) { return oracle_q(in, i, C, j); };
  QMass<double> qm = qmass_init<double>();
  for (int64_t j = 0; j < C; ++j) qmass_push(qm, q(j));
  const double t = csum_value(qm.t), m = ls.m, log_s = std::log(ls.s);
  const double t_div = t != 0 ? t : 1;
  const bool star = soft_star(qm, t, k);
  CSum<double> loss = {0, 0};
  SoftEpsStats<double> es = soft_eps_init<double>();
  StarRest<double> rest = star_rest_init<double>();
  for (int64_t j = 0; j < C; ++j) {
    soft_loss_push(loss, q(j), z[j], m);
    if (k != 1) {
      soft_eps_class(es, rest, z[j], q(j), m, log_s, t, t_div, star, k);
    } else {
      star_k1_rest_class(rest, z[j], q(j), m, log_s, t, star);
    }
  }
  r.loss = soft_loss_value(csum_value(loss), t, m, log_s);
  const SoftRow<double> sr =
      k != 1 ? soft_row_finalize(es, rest, t, star, k, r.lse) : soft_row_k1(rest, t, star, r.lse);
  const LseSplit<double> sp = lse_split(ls);
  for (int64_t j = 0; j < C; ++j) r.f[j] = soft_fj(sr, z[j], sp.hi, sp.lo, q(j), k);
  return r;
}

// soft_shard_stats of row i (every row takes the soft path there): the row's given stats
// (hi, lo, t, NaN, NaN, tag) in the accumulation type A, from a double computation of its lse
// and t, tag = kSoftComplete + soft_star; and the seven columns soft_shard_class and
// put_soft_shard_stats make of those same numbers in double. Not a valid label: q = 0, no
// class pushed, (-inf, 0, -inf, 0, -inf, 0, 0). Returns the row's star flag.
template <typename A>
bool oracle_soft_shard(const Inputs& in, int64_t i, int64_t C, double k, A* given, double* want) {
  const double* z = &in.z[i * C];
  LseStats<double> ls = lse_init<double>();
  for (int64_t j = 0; j < C; ++j) lse_push(ls, z[j]);
  const LseSplit<double> sp = lse_split(ls);
  // Odd rows split lse as floor(lse) + the rest: as valid (log p_j = (z_j - hi) - lo), and a
  // kernel that drops lo is off by up to 1 there, not by a rounding error below the tolerance.
  const A hi = static_cast<A>(i % 2 ? std::floor(sp.hi) : sp.hi);
  const A lo = static_cast<A>((sp.hi - static_cast<double>(hi)) + sp.lo);
  const bool valid = in.y.empty() || label_status(in.y[i], C, in.ignore) == kLabelValid;
  QMass<double> qm = qmass_init<double>();
  for (int64_t j = 0; valid && j < C; ++j) qmass_push(qm, oracle_q(in, i, C, j));
  const double t_d = csum_value(qm.t);
  const bool star = soft_star(qm, t_d, k);
  const A t = static_cast<A>(t_d);
  const A row[kStatsCols] = {hi, lo, t, static_cast<A>(NAN), static_cast<A>(NAN), soft_tag<A>(false, star)};
  std::copy(row, row + kStatsCols, given);
  SoftEpsStats<double> es = soft_eps_init<double>();
  StarRest<double> rest = star_rest_init<double>();
  for (int64_t j = 0; valid && j < C; ++j) {
    soft_shard_class<double>(es, rest, z[j], oracle_q(in, i, C, j), hi, lo, t, star, k);
  }
  put_soft_shard_stats(want, es, rest);
  return star;
}

// soft_shard_stats' kept pass of row i in double (row_math.h soft_shard_class_kept, from the
// same given stats as oracle_soft_shard), and the row's complete stats (SoftRow) that finalising
// the shard's statistics makes (soft_row_finalize, the whole row in one shard). Not a valid label:
// (-inf, kSidePos) for every class and the empty row's SoftRow.
template <typename A>
SoftRow<double> oracle_kept(const Inputs& in, int64_t i, int64_t C, double k, const A* given, double* kla,
                            int8_t* side) {
  const double* z = &in.z[i * C];
  const double hi = given[kColLse], lo = given[kColLseLo], t = given[kColScale];
  const bool star = soft_tag_star(given[kColStar]);
  const bool valid = in.y.empty() || label_status(in.y[i], C, in.ignore) == kLabelValid;
  SoftEpsStats<double> es = soft_eps_init<double>();
  StarRest<double> rest = star_rest_init<double>();
  for (int64_t j = 0; j < C; ++j) {
    const KeptEps<double> e = valid ? soft_shard_class_kept<double>(es, rest, z[j], oracle_q(in, i, C, j), hi, lo, t,
                                                                     star, k)
                                    : KeptEps<double>{-INFINITY, kSidePos};
    kla[j] = e.kla;
    side[j] = e.side;
  }
  return soft_row_finalize(es, rest, t, star, k, hi);
}

// ---------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------
void fail(const std::string& what, const Case& c, const char* type, const char* profile) {
  if (++g_failures <= 30) {
    std::fprintf(stderr, "FAILED %s: %s N=%lld C=%lld %s k=%g%s softcap %g%s, profile %s\n", what.c_str(), type,
                 static_cast<long long>(c.N), static_cast<long long>(c.C), kind_name(c.kind), c.k,
                 c.misaligned ? " misaligned" : "", c.cap, c.lse_grad ? " grad_lse" : "", profile);
  }
}

bool close(double got, double want, double tol) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  return std::fabs(got - want) <= tol * (std::fabs(want) + 1.0);
}

template <typename S>
void run_case(const Case& c, std::mt19937_64& rng) {
  using E = Elem<S>;
  using A = typename E::A;
  const char* prof = emu::profile(emu::current_device()).name;
  ++g_cases;
  const int64_t N = c.N, C = c.C;
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> unif;
  Inputs in;
  // Logits as stored (rounded to S), one element of slack in front when misaligned.
  const size_t off = c.misaligned ? 1 : 0;
  std::vector<S> zbuf(off + N * C);
  in.z.resize(N * C);
  in.z_raw.resize(N * C);
  for (int64_t e = 0; e < N * C; ++e) {
    zbuf[off + e] = E::from(3 * normal(rng));
    in.z_raw[e] = E::to(zbuf[off + e]);
    in.z[e] = softcap_value(in.z_raw[e], c.cap);
  }
  std::vector<S> pbuf;
  std::vector<A> wbuf, mbuf;
  if (c.kind == Kind::kProbs) {
    pbuf.resize(off + N * C);
    in.probs.resize(N * C);
    for (int64_t i = 0; i < N; ++i) {
      double sum = 0;
      std::vector<double> e(C);
      for (int64_t j = 0; j < C; ++j) sum += e[j] = std::exp(2 * normal(rng));
      for (int64_t j = 0; j < C; ++j) {
        pbuf[off + i * C + j] = E::from(e[j] / sum);
        in.probs[i * C + j] = E::to(pbuf[off + i * C + j]);
      }
    }
  } else {
    in.y.resize(N);
    for (int64_t i = 0; i < N; ++i) in.y[i] = static_cast<int64_t>(rng() % static_cast<uint64_t>(C));
    if (N > 2) in.y[1] = in.ignore;                          // ignored
    if (N > 3) in.y[3] = C + static_cast<int64_t>(rng() % 3);  // bad label: NaN row
  }
  if (c.kind == Kind::kWeighted || c.kind == Kind::kSmooth || c.kind == Kind::kProbs) {
    wbuf.resize(C);
    in.weight.resize(C);
    for (int64_t j = 0; j < C; ++j) in.weight[j] = wbuf[j] = static_cast<A>(0.5 + unif(rng));
  }
  if (c.kind == Kind::kSmooth) in.s = 0.1;
  if (c.kind == Kind::kProbs) in.s = 0.05;
  if (c.kind == Kind::kMixture) {
    mbuf.resize(C * C);
    in.mix.resize(C * C);
    for (int64_t a = 0; a < C; ++a) {
      double sum = 0;
      for (int64_t b = 0; b < C; ++b) sum += in.mix[a * C + b] = a == b ? 0 : unif(rng);
      for (int64_t b = 0; b < C; ++b) {
        const double v = (a == b ? 0.8 : 0.0) + 0.2 * in.mix[a * C + b] / (sum > 0 ? sum : 1);
        in.mix[a * C + b] = mbuf[a * C + b] = static_cast<A>(v);
      }
    }
  }
  in.gl.resize(N);
  std::vector<A> glbuf(N), glsebuf;
  for (int64_t i = 0; i < N; ++i) in.gl[i] = glbuf[i] = static_cast<A>(i % 5 == 2 ? 0.0 : normal(rng));
  if (c.lse_grad) {
    in.g_lse.resize(N);
    glsebuf.resize(N);
    for (int64_t i = 0; i < N; ++i) in.g_lse[i] = glsebuf[i] = static_cast<A>(i % 5 == 2 && i % 2 ? 0.0 : normal(rng));
  }

  cuda::TargetParams tg;
  tg.target = in.y.empty() ? nullptr : in.y.data();
  tg.probs = pbuf.empty() ? nullptr : pbuf.data() + off;
  tg.weight = wbuf.empty() ? nullptr : wbuf.data();
  tg.mixture = mbuf.empty() ? nullptr : mbuf.data();
  tg.ignore_index = in.ignore;
  tg.label_smoothing = in.s;

  // Outputs of exactly their size, NaN-filled: AddressSanitizer sees a write past them, and an
  // element the kernels never write stays NaN.
  std::vector<A> loss(N, NAN), stats(N * kStatsCols, NAN), loss2(N, NAN), stats2(N * kStatsCols, NAN);
  cuda::FwdParams fp{zbuf.data() + off, tg, loss.data(), stats.data(), N, C, c.k, true, false, c.cap};
  if (cuda::launch_fwd(fp, E::kType, nullptr) != cudaSuccess) return fail("fwd launch", c, E::kName, prof);
  cuda::FwdParams fp2 = fp;
  fp2.loss = loss2.data();
  fp2.stats = stats2.data();
  fp2.compute_grad = false;
  if (cuda::launch_fwd(fp2, E::kType, nullptr) != cudaSuccess) return fail("fwd launch", c, E::kName, prof);

  std::vector<S> grad(N * C, E::from(NAN));
  std::vector<A> work(N * kStatsCols, NAN);
  cuda::BwdParams bp{glbuf.data(), zbuf.data() + off, grad.data(), tg, stats.data(), work.data(), N, C, c.k, c.cap,
                     glsebuf.empty() ? nullptr : glsebuf.data()};
  if (cuda::launch_bwd(bp, E::kType, nullptr) != cudaSuccess) return fail("bwd launch", c, E::kName, prof);
  std::vector<S> inplace = zbuf;
  cuda::BwdParams bpi = bp;
  bpi.logits = bpi.out = inplace.data() + off;
  if (cuda::launch_bwd(bpi, E::kType, nullptr) != cudaSuccess) return fail("bwd_inplace launch", c, E::kName, prof);
  if (std::memcmp(inplace.data() + off, grad.data(), N * C * sizeof(S)) != 0) {
    fail("bwd_inplace != bwd", c, E::kName, prof);
  }

  const bool onehot = c.kind == Kind::kOneHot || c.kind == Kind::kWeighted;
  // Soft rows: the same backward from the deferred form of their stats (row_math.h soft_tag, the
  // CPU forward's: the row max m and log sum exp(z - m) in columns 3, 4), which the launcher
  // completes in stats_work first (bwd_complete.cuh); the caller's stats stay as they were.
  std::vector<S> dgrad;
  if (!onehot) {
    std::vector<A> dstats = stats;
    for (int64_t i = 0; i < N; ++i) {
      A* st = &dstats[i * kStatsCols];
      if (!in.y.empty() && label_status(in.y[i], C, in.ignore) != kLabelValid) continue;  // 2..5 are 0
      LseStats<double> ls = lse_init<double>();
      for (int64_t j = 0; j < C; ++j) lse_push(ls, in.z[i * C + j]);
      st[3] = static_cast<A>(ls.m);
      st[4] = static_cast<A>(std::log(ls.s));
      st[kColStar] = soft_tag<A>(true, soft_tag_star(st[kColStar]));
    }
    const std::vector<A> dcopy = dstats;
    dgrad.assign(N * C, E::from(NAN));
    std::vector<A> dwork(N * kStatsCols, NAN);
    cuda::BwdParams bpd = bp;
    bpd.stats = dstats.data();
    bpd.stats_work = dwork.data();
    bpd.out = dgrad.data();
    if (cuda::launch_bwd(bpd, E::kType, nullptr) != cudaSuccess) {
      return fail("bwd launch (deferred)", c, E::kName, prof);
    }
    if (std::memcmp(dstats.data(), dcopy.data(), dstats.size() * sizeof(A)) != 0) {
      fail("bwd wrote into the caller's stats", c, E::kName, prof);
    }
  }

  std::vector<A> raw(N * kStatsCols, NAN), raw_loss(N, NAN);
  if (onehot) {
    cuda::FwdParams rp = fp;
    rp.tg.ignore_index = INT64_MIN;
    rp.tg.weight = nullptr;
    rp.loss = raw_loss.data();
    rp.stats = raw.data();
    rp.raw_stats = true;
    if (cuda::launch_fwd(rp, E::kType, nullptr) != cudaSuccess) return fail("shard_stats launch", c, E::kName, prof);
  }

  // soft_shard_stats: the soft forward with raw_stats and each row's given stats (the case's
  // targets; one-hot rows as q = w_y onehot(y)). Columns 3, 4 of the given stats are NaN: the
  // kernel must not read them.
  std::vector<A> given(N * kStatsCols), shard(N * kSoftShardStatsCols, NAN), shard_loss(N, NAN);
  std::vector<double> shard_want(N * kSoftShardStatsCols);
  for (int64_t i = 0; i < N; ++i) {
    const bool star = oracle_soft_shard<A>(in, i, C, c.k, &given[i * kStatsCols], &shard_want[i * kSoftShardStatsCols]);
    ++g_shard_rows[c.k == 1][star];
  }
  {
    cuda::FwdParams sp = fp;
    sp.loss = shard_loss.data();
    sp.stats = shard.data();
    sp.raw_stats = true;
    sp.row_stats = given.data();
    if (cuda::launch_fwd(sp, E::kType, nullptr) != cudaSuccess) {
      return fail("soft_shard_stats launch", c, E::kName, prof);
    }
  }

  // k != 1 soft rows amplify the rounding of eps; with a softcap, p_j and f_j are of the
  // capped logit, rounded once more.
  const double tol = E::kTol * (c.k != 1 && !onehot ? 10 : 1) * (c.cap != 0 ? 10 : 1);
  const double acc_tol = sizeof(A) == 8 ? 1e-11 : 2e-5;

  // soft_shard_stats' kept pass (k != 1): the same launch keeping (k log|eps|, side) in buffers
  // of exactly their size, filled with values no class can have; then soft_shard_grad from them
  // and the row's complete stats (the given lse, t and star, c_pos and f_star finalised by the
  // oracle), into a fresh output and, for fp32 / fp64, over the eps buffer itself.
  if (c.k != 1) {
    std::vector<A> kla(N * C, A(7)), shard_k(N * kSoftShardStatsCols, NAN), shard_kloss(N, NAN);
    std::vector<int8_t> side(N * C, int8_t(9));
    cuda::FwdParams kp = fp;
    kp.loss = shard_kloss.data();
    kp.stats = shard_k.data();
    kp.raw_stats = true;
    kp.row_stats = given.data();
    kp.kept_eps = kla.data();
    kp.kept_side = side.data();
    if (cuda::launch_fwd(kp, E::kType, nullptr) != cudaSuccess) {
      return fail("soft_shard_stats launch (kept pass)", c, E::kName, prof);
    }
    if (std::memcmp(shard_k.data(), shard.data(), shard.size() * sizeof(A)) != 0) {
      fail("soft_shard_stats: the kept pass changed the statistics", c, E::kName, prof);
    }
    std::vector<A> complete(N * kStatsCols);
    std::vector<double> kla_want(N * C), f_want(N * C);
    std::vector<int8_t> side_want(N * C);
    for (int64_t i = 0; i < N; ++i) {
      const A* gv = &given[i * kStatsCols];
      const SoftRow<double> sr = oracle_kept<A>(in, i, C, c.k, gv, &kla_want[i * C], &side_want[i * C]);
      const A row[kStatsCols] = {gv[kColLse], gv[kColLseLo], gv[kColScale], static_cast<A>(sr.c_pos),
                                 static_cast<A>(sr.f_star), gv[kColStar]};
      std::copy(row, row + kStatsCols, &complete[i * kStatsCols]);
      const bool valid = in.y.empty() || label_status(in.y[i], C, in.ignore) == kLabelValid;
      double scale = 0;
      for (int64_t j = 0; j < C; ++j) {
        f_want[i * C + j] = soft_kept_f(sr, kla_want[i * C + j], side_want[i * C + j]);
        if (std::isfinite(f_want[i * C + j])) scale = std::max(scale, std::fabs(f_want[i * C + j]));
      }
      // the row's SoftRow as the kernels read it (in A), applied to the kept and the oracle's values
      const SoftRow<double> sra = {complete[i * kStatsCols + kColScale], complete[i * kStatsCols + 3],
                                   complete[i * kStatsCols + 4], 0.0};
      for (int64_t j = 0; j < C; ++j) {
        const int64_t e = i * C + j;
        const bool side_ok = side[e] == kSidePos || side[e] == kSideNeg || side[e] == kSideStar;
        bool ok = side_ok;
        if (ok && !valid) ok = side[e] == kSidePos && kla[e] == -hl_inf<A>();
        if (ok && valid) {
          ++g_kept_sides[side[e]];
          // side may differ from the oracle's only where eps_j is at rounding level: compare f
          const double got = soft_kept_f(sra, static_cast<double>(kla[e]), side[e]);
          const double want = soft_kept_f(sra, kla_want[e], side_want[e]);
          ok = std::isnan(want) ? std::isnan(got) : std::fabs(got - want) <= tol * (std::fabs(want) + scale);
        }
        if (!ok) {
          fail("soft_shard_stats kept pass row " + std::to_string(i) + " class " + std::to_string(j) + ": got (" +
                   std::to_string(kla[e]) + ", " + std::to_string(side[e]) + ") want (" + std::to_string(kla_want[e]) +
                   ", " + std::to_string(side_want[e]) + ")",
               c, E::kName, prof);
          break;
        }
      }
    }
    std::vector<S> kgrad(N * C, E::from(NAN));
    cuda::KeptGradParams gp{glbuf.data(), glsebuf.empty() ? nullptr : glsebuf.data(), kla.data(), side.data(),
                            zbuf.data() + off, complete.data(), kgrad.data(), N, C, c.cap};
    if (cuda::launch_kept_grad(gp, E::kType, nullptr) != cudaSuccess) {
      return fail("soft_shard_grad launch", c, E::kName, prof);
    }
    if constexpr (sizeof(S) == sizeof(A)) {  // out over eps: the buffer becomes the gradient
      std::vector<A> over = kla;
      cuda::KeptGradParams gpi = gp;
      gpi.eps = gpi.out = over.data();
      if (cuda::launch_kept_grad(gpi, E::kType, nullptr) != cudaSuccess) {
        return fail("soft_shard_grad launch (out = eps)", c, E::kName, prof);
      }
      if (std::memcmp(over.data(), kgrad.data(), N * C * sizeof(S)) != 0) {
        fail("soft_shard_grad: out = eps differs", c, E::kName, prof);
      }
    }
    for (int64_t i = 0; i < N; ++i) {
      const double g_lse = in.g_lse.empty() ? 0.0 : in.g_lse[i];
      const double hi = complete[i * kStatsCols + kColLse], lo = complete[i * kStatsCols + kColLseLo];
      std::vector<double> want_row(C);
      double scale = 0;
      for (int64_t j = 0; j < C; ++j) {
        want_row[j] = finish_grad(in.gl[i] * f_want[i * C + j], in.z_raw[i * C + j], in.z[i * C + j], g_lse, hi, lo,
                                  c.cap);
        if (std::isfinite(want_row[j])) scale = std::max(scale, std::fabs(want_row[j]));
      }
      const bool exact_zero = in.gl[i] == 0 && g_lse == 0;  // the given lse and t are finite
      for (int64_t j = 0; j < C; ++j) {
        const double want = want_row[j], got = E::to(kgrad[i * C + j]);
        const bool ok = exact_zero ? got == 0
                                   : std::fabs(got - want) <= tol * (std::fabs(want) + scale) + E::kTiny;
        if (!ok) {
          fail("soft_shard_grad row " + std::to_string(i) + " class " + std::to_string(j) + ": got " +
                   std::to_string(got) + " want " + std::to_string(want),
               c, E::kName, prof);
          break;
        }
      }
    }
  }
  for (int64_t i = 0; i < N; ++i) {
    const RowRef r = oracle_row(in, i, C, c.k);
    if (!close(loss[i], r.loss, acc_tol * 4)) fail("loss row " + std::to_string(i), c, E::kName, prof);
    if (!close(stats[i * kStatsCols], r.lse, acc_tol)) fail("lse row " + std::to_string(i), c, E::kName, prof);
    if (!(loss2[i] == loss[i] || (std::isnan(loss2[i]) && std::isnan(loss[i]))))
      fail("loss without the gradient differs", c, E::kName, prof);
    for (int col = 2; col < kStatsCols; ++col) {
      if (stats2[i * kStatsCols + col] != 0) fail("stats without the gradient: column 2.. not 0", c, E::kName, prof);
    }
    // row_math.h's finish_grad on the oracle's f: p at the capped logit, the slope at the raw one
    const double g_lse = in.g_lse.empty() ? 0.0 : in.g_lse[i];
    const bool ignored = !in.y.empty() && in.y[i] == in.ignore;
    std::vector<double> want_row(C);
    double scale = 0;
    for (int64_t j = 0; j < C; ++j) {
      want_row[j] = ignored ? 0.0 : finish_grad(in.gl[i] * r.f[j], in.z_raw[i * C + j], in.z[i * C + j], g_lse, r.lse,
                                                0.0, c.cap);
      if (std::isfinite(want_row[j])) scale = std::max(scale, std::fabs(want_row[j]));
    }
    for (const std::vector<S>* g : {&grad, &dgrad}) {
      if (g->empty()) continue;  // one-hot rows: no deferred form
      const char* form = g == &grad ? "" : " (deferred stats)";
      for (int64_t j = 0; j < C; ++j) {
        const double want = want_row[j], got = E::to((*g)[i * C + j]);
        const bool exact_zero = ignored || (in.gl[i] == 0 && g_lse == 0 && std::isfinite(r.lse));
        const bool ok = std::isnan(want) ? std::isnan(got)
                        : exact_zero        ? got == 0
                                            : std::fabs(got - want) <= tol * (std::fabs(want) + scale) + E::kTiny;
        if (!ok) {
          fail("grad row " + std::to_string(i) + " class " + std::to_string(j) + form + ": got " +
                   std::to_string(got) + " want " + std::to_string(want),
               c, E::kName, prof);
          break;
        }
      }
    }
    if (onehot) {
      const A* st = &raw[i * kStatsCols];
      if (!close(st[0], r.raw.m, c.cap != 0 ? acc_tol : 0.0) || !close(st[1], r.raw.s1, acc_tol * 4) ||
          !close(st[2], r.raw.sk, acc_tol * 4))
        fail("shard_stats row " + std::to_string(i), c, E::kName, prof);
    }
    // a row whose label is not valid: exactly the empty statistics
    const double shard_tol = in.y.empty() || label_status(in.y[i], C, in.ignore) == kLabelValid ? acc_tol * 4 : 0.0;
    for (int col = 0; col < kSoftShardStatsCols; ++col) {
      const double got = shard[i * kSoftShardStatsCols + col], want = shard_want[i * kSoftShardStatsCols + col];
      if (!close(got, want, shard_tol)) {
        fail("soft_shard_stats row " + std::to_string(i) + " column " + std::to_string(col) + ": got " +
                 std::to_string(got) + " want " + std::to_string(want),
             c, E::kName, prof);
        break;
      }
    }
  }
}

// Row lengths reaching every forward path (fwd_launch.cuh) and backward tile (bwd_kernels.cuh)
// for a type with kN elements per 16-byte vector: vectors per row 1, 4, 8, 16, 32, 64, 128, 256
// (fp32), then block rows of 128 .. 1024 threads, then streaming rows; each C one less than a
// multiple of the vector (the scalar tail) except the streaming one.
std::vector<int64_t> path_lengths(int kN, bool f64) {
  const int nvmax = f64 ? 4 : 32 / kN;
  std::vector<int64_t> nvecs = {1, 4, 8, 16, 32, 64, 128};
  if (nvmax >= 8) nvecs.push_back(256);
  for (int block = 128; block <= (f64 ? 512 : 1024); block *= 2) nvecs.push_back(int64_t(block) * nvmax);
  std::vector<int64_t> out;
  for (int64_t v : nvecs) out.push_back(v * kN - (kN > 1 ? 1 : 0));
  out.push_back(nvecs.back() * kN + kN);  // the streaming kernel, a multiple of the vector
  return out;
}

template <typename S>
void run_type(std::mt19937_64& rng) {
  constexpr int kN = 16 / static_cast<int>(sizeof(S));
  const bool f64 = sizeof(S) == 8;
  const double ks[] = {1.0, 0.5, 2.0};
  int n = 0;
  for (int64_t C : path_lengths(kN, f64)) {
    const int64_t N = C <= 1024 ? 37 : C <= 8192 ? 5 : 3;  // 37: a partly empty last block
    for (Kind kind : {Kind::kOneHot, Kind::kWeighted, Kind::kSmooth, Kind::kProbs, Kind::kMixture}) {
      if (kind == Kind::kMixture && C > 1024) continue;
      Case c{N, C, kind, ks[n % 3], (n % 2) == 1, n % 4 == 3 ? 2.5 : 0.0, n % 3 != 1};
      ++n;
      run_case<S>(c, rng);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 0) : std::random_device{}();
  std::printf("test_emu_kernels: seed %llu (test_emu_kernels %llu reproduces)\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  emu::set_seed(seed);
  std::mt19937_64 rng(seed);
  for (int dev = 0; dev < emu::profile_count(); ++dev) {
    emu::set_device(dev);
    run_type<float>(rng);
    run_type<double>(rng);
    run_type<__half>(rng);
    run_type<__nv_bfloat16>(rng);
  }
  // soft_shard_stats saw rows with and without a dominant class, at k == 1 and k != 1
  for (int k1 = 0; k1 < 2; ++k1) {
    for (int star = 0; star < 2; ++star) {
      if (g_shard_rows[k1][star] == 0) {
        std::fprintf(stderr, "FAILED soft_shard_stats: no row with k %s 1 and star %d\n", k1 ? "==" : "!=", star);
        ++g_failures;
      }
    }
  }
  // the kept pass saw every side
  for (int side = 0; side < 3; ++side) {
    if (g_kept_sides[side] == 0) {
      std::fprintf(stderr, "FAILED soft_shard_stats kept pass: no class with side %d\n", side);
      ++g_failures;
    }
  }
  std::printf("test_emu_kernels: %d cases, %d failures\n", g_cases, g_failures);
  return g_failures == 0 ? 0 : 1;
}

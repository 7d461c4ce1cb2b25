// CTest of csrc/row_math.h without torch: the one-hot and soft-path functions against a
// direct long-double evaluation of docs/CONTRACT.md section 2 (explicit eps, not the stable rewrite),
// chunked merges against sequential pushes, and the extreme cases of docs/ROW_MATH.md.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "row_math.h"

using ld = long double;
static int failures = 0;

static void expect_close(const char* what, double got, ld want, double rtol, double atol) {
  const bool ok = std::isnan((double)want) ? std::isnan(got)
                                            : std::fabs(got - (double)want) <= atol + rtol * std::fabs((double)want);
  if (!ok) {
    ++failures;
    std::printf("FAIL %s: got %.17g, want %.17Lg\n", what, got, want);
  }
}

// Keren et al. directly: eps = p - onehot(y), f_y = -w|eps_y|^k, f_j = w|eps_y|^k eps_j^k / sum.
static std::vector<ld> naive_onehot(const std::vector<double>& z, int y, ld w, ld k, ld* loss, ld* lse) {
  ld m = z[0];
  for (double v : z) m = std::max<ld>(m, v);
  ld s = 0;
  for (double v : z) s += std::exp((ld)v - m);
  *lse = m + std::log(s);
  *loss = w * (*lse - z[y]);
  std::vector<ld> eps(z.size()), f(z.size());
  ld sum = 0;
  for (size_t j = 0; j < z.size(); ++j) eps[j] = std::exp((ld)z[j] - *lse) - (j == (size_t)y);
  for (size_t j = 0; j < z.size(); ++j)
    if (j != (size_t)y) sum += std::pow(eps[j], k);
  const ld ey = std::pow(std::fabs(eps[y]), k);
  for (size_t j = 0; j < z.size(); ++j) f[j] = j == (size_t)y ? -w * ey : (sum > 0 ? w * ey * std::pow(eps[j], k) / sum : 0);
  return f;
}

// The library's one-hot path on a row, split into `parts` chunks merged with onehot_merge.
template <typename T>
static void lib_onehot(const std::vector<double>& z, int y, T w, T k, int parts, T* loss, T* lse, std::vector<T>* f) {
  const size_t C = z.size();
  hl::OneHotStats<T> st = hl::onehot_init<T>();
  for (int p = 0; p < parts; ++p) {
    hl::OneHotStats<T> part = hl::onehot_init<T>();
    for (size_t j = p * C / parts; j < (p + 1) * C / parts; ++j)
      if (j != (size_t)y) hl::onehot_push(part, (T)z[j], k);
    st = hl::onehot_merge(st, part, k);
  }
  const hl::OneHotRow<T> r = hl::onehot_finalize(st, (T)z[y], w, k);
  *loss = r.loss;
  *lse = r.lse;
  f->assign(C, T(0));
  for (size_t j = 0; j < C; ++j) (*f)[j] = j == (size_t)y ? r.f_y : hl::onehot_fj(r, (T)z[j], k);
}

template <typename T>
static void check_onehot(const char* name, const std::vector<double>& z, int y, double k, double rtol) {
  ld nl, nlse;
  const std::vector<ld> nf = naive_onehot(z, y, 1.5L, k, &nl, &nlse);
  ld fmax = 0;
  for (ld v : nf) fmax = std::max(fmax, std::fabs(v));
  for (int parts : {1, 3, 7}) {
    T loss, lse;
    std::vector<T> f;
    lib_onehot<T>(z, y, T(1.5), T(k), parts, &loss, &lse, &f);
    char what[160];
    std::snprintf(what, sizeof what, "%s k=%g parts=%d loss", name, k, parts);
    expect_close(what, loss, nl, rtol, rtol);
    std::snprintf(what, sizeof what, "%s k=%g parts=%d lse", name, k, parts);
    expect_close(what, lse, nlse, rtol, rtol);
    for (size_t j = 0; j < z.size(); ++j) {
      std::snprintf(what, sizeof what, "%s k=%g parts=%d f[%zu]", name, k, parts, j);
      expect_close(what, f[j], nf[j], rtol, rtol * (double)fmax);
    }
  }
}

// The library's soft path on a row, as the CPU kernel runs it (csrc/cpu/rows.h soft_row):
// pass 1 lse, t and the loss; pass 2 the |eps|^k statistics, the dominant class apart;
// then f_j as the backward computes it from the stats.
template <typename T>
static void lib_soft(const std::vector<double>& zd, const std::vector<double>& qd, T k, T* loss, std::vector<T>* f) {
  const size_t C = zd.size();
  std::vector<T> z(zd.begin(), zd.end()), q(qd.begin(), qd.end());
  hl::LseStats<T> ls = hl::lse_init<T>();
  for (T v : z) hl::lse_push(ls, v);
  const T log_s = std::log(ls.s);
  hl::QMass<T> qm = hl::qmass_init<T>();
  hl::CSum<T> acc{0, 0};
  for (size_t j = 0; j < C; ++j) hl::qmass_push(qm, q[j]), hl::soft_loss_push(acc, q[j], z[j], ls.m);
  const T t = hl::csum_value(qm.t);
  *loss = hl::soft_loss_value(hl::csum_value(acc), t, ls.m, log_s);
  const bool star = hl::soft_star(qm, t, k);
  hl::SoftEpsStats<T> es = hl::soft_eps_init<T>();
  hl::StarRest<T> rest = hl::star_rest_init<T>();
  const hl::LseSplit<T> lse = hl::lse_split(ls);
  hl::SoftRow<T> r;
  if (k == T(1)) {  // f = t p - q, the dominant class (q* >= 15/16 t) from the others
    for (size_t j = 0; j < C; ++j) hl::star_k1_rest_class(rest, z[j], q[j], ls.m, log_s, t, star);
    r = hl::soft_row_k1(rest, t, star, lse.hi);
  } else {
    for (size_t j = 0; j < C; ++j) hl::soft_eps_class(es, rest, z[j], q[j], ls.m, log_s, t, t, star, k);
    r = hl::soft_row_finalize(es, rest, t, star, k, lse.hi);
  }
  f->assign(C, T(0));
  for (size_t j = 0; j < C; ++j) (*f)[j] = hl::soft_fj(r, z[j], lse.hi, lse.lo, q[j], k);
  if (k == T(1)) return;
  // The vocab-parallel path: soft_shard_stats' kept pass given the row's lse, then f_j from it
  // (soft_kept_f): the same statistics and the same f_j, to the bit.
  hl::SoftEpsStats<T> es2 = hl::soft_eps_init<T>();
  hl::StarRest<T> rest2 = hl::star_rest_init<T>();
  for (size_t j = 0; j < C; ++j) {
    const hl::KeptEps<T> e = hl::soft_shard_class_kept(es2, rest2, z[j], q[j], lse.hi, lse.lo, t, star, k);
    expect_close("kept f", hl::soft_kept_f(r, e.kla, e.side), (*f)[j], 0, 0);
  }
  const hl::SoftRow<T> r2 = hl::soft_row_finalize(es2, rest2, t, star, k, lse.hi);
  expect_close("kept c_pos", r2.c_pos, r.c_pos, 1e-14, 0);
}

// Soft path for a target row q: f = t F_k(p - q / t) against the explicit formula.
static void check_soft(const std::vector<double>& z, const std::vector<double>& q, double k) {
  const size_t C = z.size();
  double loss;
  std::vector<double> f;
  lib_soft<double>(z, q, k, &loss, &f);
  ld m = z[0], s = 0, t = 0, sneg = 0, spos = 0, want_loss = 0;
  for (double v : z) m = std::max<ld>(m, v);
  for (double v : z) s += std::exp((ld)v - m);
  for (double v : q) t += v;
  std::vector<ld> eps(C);
  for (size_t j = 0; j < C; ++j) {
    const ld lp = (ld)z[j] - m - std::log(s);
    want_loss -= q[j] * lp;
    eps[j] = std::exp(lp) - q[j] / t;
    (eps[j] < 0 ? sneg : spos) += std::pow(std::fabs(eps[j]), (ld)k);
  }
  expect_close("soft loss", loss, want_loss, 1e-12, 1e-14);
  for (size_t j = 0; j < C; ++j) {
    const ld want = eps[j] < 0 ? -t * std::pow(-eps[j], (ld)k) : t * sneg * std::pow(eps[j], (ld)k) / spos;
    char what[96];
    std::snprintf(what, sizeof what, "soft k=%g f[%zu]", k, j);
    expect_close(what, f[j], want, 1e-9, 1e-12);
  }
}

int main() {
  std::mt19937_64 gen(12345);
  std::normal_distribution<double> normal(0.0, 3.0);
  const double ks[] = {1.0 / 16, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0};
  for (int C : {2, 3, 10, 257}) {
    std::vector<double> z(C);
    for (double& v : z) v = normal(gen);
    const int y = (int)(gen() % C);
    for (double k : ks) {
      check_onehot<double>("random double", z, y, k, 1e-10);
      check_onehot<float>("random float", z, y, k, 2e-5);
    }
    std::vector<double> q(C);
    double qs = 0;
    for (double& v : q) qs += (v = std::exp(normal(gen) / 3));
    for (double& v : q) v /= qs;
    for (double k : ks) check_soft(z, q, k);
    q[y] += 2.0;  // a dominant class (qh > 1/2), and t != 1
    for (double k : ks) check_soft(z, q, k);
    q[y] += 36.0;  // q* >= 15/16 t: at k = 1 too, f* is taken from the other classes
    for (double k : ks) check_soft(z, q, k);
  }
  // C = 1: loss 0 and f = 0, for every k.
  for (double k : ks) {
    float loss, lse;
    std::vector<float> f;
    lib_onehot<float>({3.0}, 0, 1.0f, (float)k, 1, &loss, &lse, &f);
    expect_close("C=1 loss", loss, 0, 0, 0);
    expect_close("C=1 f", f[0], 0, 0, 0);
    expect_close("C=1 lse", lse, 3, 0, 0);
  }
  // p_y -> 1 and logits of 1e4: finite, and 1 - p_y without cancellation.
  for (double k : ks) {
    float loss, lse;
    std::vector<float> f;
    lib_onehot<float>({1e4, -1e4, 0.0, 1e4 - 30}, 0, 1.0f, (float)k, 2, &loss, &lse, &f);
    const ld a = std::log(std::exp(-30.0L) + std::exp(-1e4L) + std::exp(-2e4L));  // log(1 - p_y), approx.
    expect_close("p_y->1 f_y", f[0], -std::exp(k * a), 1e-4, 1e-37);  // may underflow float
    bool finite = std::isfinite(loss) && std::isfinite(lse);
    for (float v : f) finite = finite && std::isfinite(v);
    if (!finite) ++failures, std::printf("FAIL p_y->1: non-finite output (k=%g)\n", k);
  }
  // -inf logits are classes with probability 0; NaN and +inf poison the row (as PyTorch).
  {
    float loss, lse;
    std::vector<float> f;
    lib_onehot<float>({1.0, -INFINITY, 2.0}, 0, 1.0f, 0.5f, 1, &loss, &lse, &f);
    expect_close("-inf class f", f[1], 0, 0, 0);
    lib_onehot<float>({1.0, NAN, 2.0}, 0, 1.0f, 0.5f, 1, &loss, &lse, &f);
    if (!std::isnan(loss)) ++failures, std::printf("FAIL NaN logit: loss %g is not NaN\n", loss);
    lib_onehot<float>({INFINITY, 1.0, 2.0}, 0, 1.0f, 0.5f, 1, &loss, &lse, &f);
    if (!std::isnan(loss)) ++failures, std::printf("FAIL +inf target logit: loss %g is not NaN\n", loss);
  }
  // Extreme logits: everything relative to the row max, never through the rounded lse.
  // fp32 [1e8, 1e8, 1e8]: loss log 3 (not log 2 or 0), f = (-2/3, 1/3, 1/3) at k = 1; a row
  // of -1e30 (C = 5): loss log 5.
  {
    float loss, lse;
    std::vector<float> f;
    lib_onehot<float>({1e8, 1e8, 1e8}, 0, 1.0f, 1.0f, 1, &loss, &lse, &f);
    expect_close("1e8 loss", loss, std::log(3.0L), 1e-6, 0);
    expect_close("1e8 f_y", f[0], -2.0L / 3, 1e-6, 0);
    expect_close("1e8 f_1", f[1], 1.0L / 3, 1e-6, 0);
    lib_onehot<float>({-1e30, -1e30, -1e30, -1e30, -1e30}, 2, 1.0f, 0.5f, 3, &loss, &lse, &f);
    expect_close("-1e30 loss", loss, std::log(5.0L), 1e-6, 0);
    lib_soft<float>({1e8, 1e8, 1e8}, {0.9f + 0.1f / 3, 0.1f / 3, 0.1f / 3}, 1.0f, &loss, &f);
    expect_close("1e8 smoothed loss", loss, std::log(3.0L), 1e-6, 0);
    expect_close("1e8 smoothed f_0", f[0], 1.0L / 3 - (0.9L + 0.1L / 3), 1e-5, 0);
  }
  // A confident soft row, small k: z = (0, 40), q = (0, 1) must give the one-hot path's
  // f = (e^{-40/16}, -e^{-40/16}) in double, where p_1 = 1 - e^{-40} rounds to 1.
  {
    double loss;
    std::vector<double> f;
    lib_soft<double>({0.0, 40.0}, {0.0, 1.0}, 1.0 / 16, &loss, &f);
    const ld want = std::exp(-40.0L / 16) / std::pow(1 + std::exp(-40.0L), 1.0L / 16);
    expect_close("confident soft f_0", f[0], want, 1e-12, 0);
    expect_close("confident soft f_1", f[1], -want, 1e-12, 0);
  }
  // k = 1, a confident row with q = (0, 1) (the fuzz's float64 case): t p_1 - q_1 cancels
  // (it gave f_1 1.3e-3 off relative); f_1 = -f_0 from the other class is exact.
  {
    double loss;
    std::vector<double> f;
    lib_soft<double>({-11.461092231976014, 18.727763768553416}, {0.0, 1.0}, 1.0, &loss, &f);
    const ld e = std::exp(-11.461092231976014L - 18.727763768553416L), p0 = e / (1 + e);
    expect_close("confident soft k=1 f_0", f[0], p0, 1e-14, 0);
    expect_close("confident soft k=1 f_1", f[1], -p0, 1e-14, 0);
  }
  // Every class at -inf: NaN throughout, as PyTorch.
  {
    float loss, lse;
    std::vector<float> f;
    lib_onehot<float>({-INFINITY, -INFINITY, -INFINITY}, 1, 1.0f, 0.5f, 1, &loss, &lse, &f);
    for (float v : f)
      if (!std::isnan(v)) ++failures, std::printf("FAIL all -inf row: f %g is not NaN\n", v);
  }
  // Labels: ignore_index wins inside [0, C); out-of-range labels are bad, never indexed.
  if (hl::label_status(3, 5, 3) != hl::kLabelIgnored || hl::label_status(5, 5, -100) != hl::kLabelBad ||
      hl::label_status(-1, 5, -100) != hl::kLabelBad || hl::label_status(4, 5, -100) != hl::kLabelValid)
    ++failures, std::printf("FAIL label_status\n");
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("row_math: all checks passed\n");
  return 0;
}

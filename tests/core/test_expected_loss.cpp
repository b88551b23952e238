// Closed-form posterior-expected loss against a Monte-Carlo estimate (the paper's Eq. 9 proxy), and the
// Gaussian cell moments against numerical quadrature.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "bayesq/codebook/design.h"
#include "bayesq/codebook/expected_loss.h"

using namespace bayesq;

namespace {
WeightedRow random_row(std::size_t n, double tau, uint32_t seed, std::vector<float>* w_out = nullptr,
                       std::vector<float>* p_out = nullptr) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::lognormal_distribution<float> lognormal(3.0f, 1.0f);
  std::vector<float> w(n), p(n);
  for (auto& x : w) x = normal(rng);
  for (auto& x : p) x = lognormal(rng);
  if (w_out) *w_out = w;
  if (p_out) *p_out = p;
  return WeightedRow::build(w.data(), p.data(), n, tau);
}
}  // namespace

TEST(ExpectedLoss, ClosedFormMatchesMonteCarloWithinThreeStandardErrors) {
  for (double tau : {0.0, 0.25, 1.0, 4.0}) {
    const WeightedRow row = random_row(64, tau, 11);
    const std::vector<Codebook> codebooks = {
        Codebook::uniform_asymmetric(2, 0.03, -0.05),
        Codebook::uniform_symmetric(3, 0.02),
        Codebook::lloyd(2, {-0.08, -0.01, 0.02, 0.09}),
        design_lloyd(row, 3, LloydParams{}, UniformParams{}),
    };
    for (const Codebook& cb : codebooks) {
      const double closed = expected_loss(cb, row);
      const MonteCarloEstimate mc = monte_carlo_loss(cb, row, tau == 0.0 ? 10 : 1'000'000 / 64, 5);
      if (tau == 0.0) {
        EXPECT_NEAR(closed, mc.mean, 1e-12 * (1.0 + closed));
        EXPECT_NEAR(closed, plugin_loss(cb, row), 1e-12 * (1.0 + closed));
      } else {
        ASSERT_GT(mc.standard_error, 0.0);
        EXPECT_LE(std::fabs(closed - mc.mean), 3.0 * mc.standard_error)
            << "tau " << tau << " kind " << codebook_kind_name(cb.kind) << " closed " << closed << " mc " << mc.mean
            << " se " << mc.standard_error;
      }
    }
  }
}

TEST(ExpectedLoss, CellMomentsMatchQuadrature) {
  // One Gaussian N(0.3, 0.2^2), cells (-inf, 0], (0, 0.25], (0.25, inf) with reference points -0.1, 0.1, 0.5.
  const float mu = 0.3f, pi = 25.0f;  // sigma^2 = 1/pi = 0.04, tau = 1 -> s = 0.2
  const WeightedRow row = WeightedRow::build(&mu, &pi, 1, 1.0);
  const std::vector<double> boundaries = {0.0, 0.25}, reference = {-0.1, 0.1, 0.5};
  const CellMoments m = cell_moments(row, boundaries, reference);
  const double s = 0.2;
  const double lo[] = {-10.0, 0.0, 0.25}, hi[] = {0.0, 0.25, 10.0};
  for (int k = 0; k < 3; ++k) {
    double q0 = 0, q1 = 0, q2 = 0;
    const int steps = 200000;
    const double h = (hi[k] - lo[k]) / steps;
    for (int i = 0; i < steps; ++i) {  // midpoint rule
      const double x = lo[k] + (i + 0.5) * h;
      const double density = std::exp(-0.5 * (x - mu) * (x - mu) / (s * s)) / (s * std::sqrt(2.0 * M_PI));
      q0 += density * h;
      q1 += (x - reference[k]) * density * h;
      q2 += (x - reference[k]) * (x - reference[k]) * density * h;
    }
    EXPECT_NEAR(m.w0[k], pi * q0, 1e-6);
    EXPECT_NEAR(m.w1[k], pi * q1, 1e-6);
    EXPECT_NEAR(m.w2[k], pi * q2, 1e-6);
  }
}

TEST(ExpectedLoss, CellMomentsEqualThePerCellFormulaBitForBit) {
  // The smooth path evaluates each boundary once for its two cells; the plain reference below evaluates both ends
  // of every cell with normal_mass and the density, as the formula reads. Equal to the last bit, for narrow and
  // wide posteriors (a point touching one cell, a few, or all), duplicate boundaries and points on a boundary.
  for (double tau : {0.01, 1.0, 400.0}) {
    std::vector<float> w, p;
    WeightedRow row = random_row(300, tau, 21, &w, &p);
    std::vector<double> levels = {-0.2, -0.1, -0.05, -0.05, -0.02, 0.0, 0.01, 0.03, 0.06, 0.12};
    std::vector<double> boundaries(levels.size() - 1);
    for (std::size_t k = 0; k + 1 < levels.size(); ++k) boundaries[k] = 0.5 * (levels[k] + levels[k + 1]);
    row.mu[7] = boundaries[3];  // exactly on a boundary (z = 0)
    const CellMoments m = cell_moments(row, boundaries, levels);

    CellMoments want;
    want.w0.assign(levels.size(), 0.0);
    want.w1.assign(levels.size(), 0.0);
    want.w2.assign(levels.size(), 0.0);
    const double inf = INFINITY;
    for (std::size_t i = 0; i < row.size(); ++i) {
      const double mu = row.mu[i], s = row.stddev[i], pi = row.precision[i];
      const std::size_t first = std::lower_bound(boundaries.begin(), boundaries.end(), mu - 9.0 * s) - boundaries.begin();
      const std::size_t last = std::lower_bound(boundaries.begin(), boundaries.end(), mu + 9.0 * s) - boundaries.begin();
      if (first == last) {
        const double e = mu - levels[first];
        want.w0[first] += pi;
        want.w1[first] += pi * e;
        want.w2[first] += pi * (e * e + s * s);
        continue;
      }
      for (std::size_t k = first; k <= last; ++k) {
        const double a = k == first ? -inf : (boundaries[k - 1] - mu) / s;
        const double b = k == last ? inf : (boundaries[k] - mu) / s;
        const double mass = normal_mass(a, b), pa = normal_pdf(a), pb = normal_pdf(b);
        const double apa = std::isinf(a) ? 0.0 : a * pa, bpb = std::isinf(b) ? 0.0 : b * pb;
        const double e = mu - levels[k];
        want.w0[k] += pi * mass;
        want.w1[k] += pi * (e * mass + s * (pa - pb));
        want.w2[k] += pi * std::max(0.0, e * e * mass + 2.0 * e * s * (pa - pb) + s * s * (mass + apa - bpb));
      }
    }
    for (std::size_t k = 0; k < levels.size(); ++k) {
      EXPECT_EQ(m.w0[k], want.w0[k]) << "tau " << tau << " cell " << k;
      EXPECT_EQ(m.w1[k], want.w1[k]) << "tau " << tau << " cell " << k;
      EXPECT_EQ(m.w2[k], want.w2[k]) << "tau " << tau << " cell " << k;
    }
  }
}

TEST(ExpectedLoss, NormalMassIsStableInTheTails) {
  // Q(8) - Q(9) = 6.220960574271784e-16 - 1.128588405953840e-19 (upper normal tail probabilities).
  EXPECT_NEAR(normal_mass(8.0, 9.0), 6.219831985865830e-16, 1e-27);
  EXPECT_NEAR(normal_mass(-9.0, -8.0), 6.219831985865830e-16, 1e-27);
  EXPECT_DOUBLE_EQ(normal_mass(-INFINITY, INFINITY), 1.0);
}

TEST(ExpectedLoss, SingleValueCodebookHasTheExactGaussianSecondMoment) {
  // All levels equal c: E[(c - w)^2] = (mu - c)^2 + s^2, so L = 1/2 sum_i pi_i ((mu_i - c)^2 + tau / pi_i).
  std::vector<float> w, p;
  const double tau = 3.0;
  const WeightedRow row = random_row(100, tau, 4, &w, &p);
  const Codebook cb = Codebook::uniform_asymmetric(2, 0.0, 0.015625);
  double exact = 0.0;
  for (std::size_t i = 0; i < w.size(); ++i) exact += 0.5 * (p[i] * (w[i] - 0.015625) * (w[i] - 0.015625) + tau);
  EXPECT_NEAR(expected_loss(cb, row), exact, 1e-9 * exact);
}

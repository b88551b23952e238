#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "bayesq/codebook/design.h"
#include "bayesq/codebook/expected_loss.h"
#include "bayesq/codebook/kmeans_dp.h"

using namespace bayesq;

namespace {
struct Sample {
  std::vector<float> w, p;
};

// Small random inputs: a mixture of two or three Gaussians with log-normal importances.
Sample random_sample(std::mt19937& rng, std::size_t n) {
  Sample s;
  std::uniform_int_distribution<int> modes(1, 3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::lognormal_distribution<float> lognormal(0.0f, 1.0f);
  const int m = modes(rng);
  std::vector<float> centers(static_cast<std::size_t>(m));
  for (auto& c : centers) c = 2.0f * normal(rng);
  for (std::size_t i = 0; i < n; ++i) {
    s.w.push_back(centers[i % centers.size()] + 0.5f * normal(rng));
    s.p.push_back(lognormal(rng));
  }
  return s;
}
}  // namespace

TEST(Lloyd, WithinOnePercentOfTheExactOptimumOnAverage) {
  std::mt19937 rng(2024);
  std::uniform_int_distribution<int> sizes(12, 60);
  double ratio_sum = 0.0;
  int cases = 0;
  for (int bits = 1; bits <= 3; ++bits) {
    for (int c = 0; c < 100; ++c) {
      const Sample s = random_sample(rng, static_cast<std::size_t>(sizes(rng)));
      const WeightedRow row = WeightedRow::build(s.w.data(), s.p.data(), s.w.size(), 0.0);
      const KMeansSolution optimum = optimal_weighted_kmeans(row, 1 << bits);
      const Codebook uniform = design_uniform(row, bits, CodebookKind::uniform_asymmetric, UniformParams{});
      double loss = 0.0;
      int iterations = 0;
      lloyd_levels(row, 1 << bits, std::vector<double>(uniform.levels.begin(), uniform.levels.end()), LloydParams{},
                   &loss, &iterations);
      const double optimal_loss = 0.5 * optimum.cost;  // the DP counts sum w (x - c)^2, the loss has a 1/2
      EXPECT_GE(loss, optimal_loss * (1.0 - 1e-9)) << "the oracle is a lower bound";
      ratio_sum += optimal_loss > 0.0 ? loss / optimal_loss : 1.0;
      ++cases;
    }
  }
  const double mean_ratio = ratio_sum / cases;
  RecordProperty("mean_ratio_to_optimum", std::to_string(mean_ratio));
  EXPECT_LE(mean_ratio, 1.01) << "mean Lloyd / optimum over " << cases << " cases";
}

TEST(Lloyd, WideRowsStayWithinOnePercentOfTheOptimumAtEveryWidth) {
  // Rows larger than the DP start's point budget (so it starts from a compressed problem), heavy-tailed
  // importances, 2 to 64 levels: plain Lloyd from quantiles is several times the optimum here.
  std::mt19937 rng(77);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::lognormal_distribution<float> lognormal(0.0f, 2.0f);
  for (int bits = 1; bits <= 6; ++bits) {
    double ratio_sum = 0.0;
    const int rows = 5;
    for (int r = 0; r < rows; ++r) {
      std::vector<float> w(900), p(900);
      for (auto& x : w) x = normal(rng);
      for (auto& x : p) x = lognormal(rng);
      const WeightedRow row = WeightedRow::build(w.data(), p.data(), w.size(), 0.0);
      const double optimum = 0.5 * optimal_weighted_kmeans_fast(row, 1 << bits).cost;
      const Codebook uniform = design_uniform(row, bits, CodebookKind::uniform_asymmetric, UniformParams{});
      double loss = 0.0;
      int iterations = 0;
      lloyd_levels(row, 1 << bits, std::vector<double>(uniform.levels.begin(), uniform.levels.end()), LloydParams{},
                   &loss, &iterations);
      ratio_sum += loss / optimum;
    }
    EXPECT_LE(ratio_sum / rows, 1.01) << bits << " bits";
  }
}

TEST(KMeansOracle, FastDpEqualsTheQuadraticDp) {
  std::mt19937 rng(4);
  for (int c = 0; c < 40; ++c) {
    const Sample s = random_sample(rng, 30 + static_cast<std::size_t>(c) * 5);
    const WeightedRow row = WeightedRow::build(s.w.data(), s.p.data(), s.w.size(), 0.0);
    for (int k : {1, 2, 3, 5, 8, 16}) {
      const double slow = optimal_weighted_kmeans(row, k).cost, fast = optimal_weighted_kmeans_fast(row, k).cost;
      EXPECT_NEAR(fast, slow, 1e-9 * (1.0 + slow)) << "n " << row.size() << " k " << k;
    }
  }
}

TEST(Lloyd, NeverWorseThanTheUniformCodebook) {
  std::mt19937 rng(99);
  for (int c = 0; c < 100; ++c) {
    const Sample s = random_sample(rng, 40);
    for (double tau : {0.0, 0.5}) {
      const WeightedRow row = WeightedRow::build(s.w.data(), s.p.data(), s.w.size(), tau);
      for (int bits = 1; bits <= 4; ++bits) {
        DesignStats lloyd_stats, uniform_stats;
        const Codebook lloyd = design_lloyd(row, bits, LloydParams{}, UniformParams{}, &lloyd_stats);
        const Codebook uniform =
            design_uniform(row, bits, CodebookKind::uniform_asymmetric, UniformParams{}, &uniform_stats);
        // The uniform levels as a (fp16) table are what Lloyd could have started from.
        const Codebook uniform_table =
            Codebook::lloyd(bits, std::vector<double>(uniform.levels.begin(), uniform.levels.end()));
        EXPECT_LE(expected_loss(lloyd, row), expected_loss(uniform_table, row));
        EXPECT_DOUBLE_EQ(lloyd_stats.loss, expected_loss(lloyd, row));
        EXPECT_DOUBLE_EQ(uniform_stats.loss, expected_loss(uniform, row));
      }
    }
  }
}

TEST(Lloyd, IterationsNeverIncreaseTheLossAtPositiveTau) {
  std::mt19937 rng(5);
  const Sample s = random_sample(rng, 200);
  const WeightedRow row = WeightedRow::build(s.w.data(), s.p.data(), s.w.size(), 1.0);
  const auto start = weighted_quantile_levels(row, 8);
  std::vector<double> boundaries(7);
  for (int k = 0; k < 7; ++k) boundaries[k] = 0.5 * (start[k] + start[k + 1]);
  const CellMoments m0 = cell_moments(row, boundaries, start);
  double initial = 0.0;
  for (double v : m0.w2) initial += 0.5 * v;
  double loss = 0.0;
  int iterations = 0;
  lloyd_iterate(row, start, LloydParams{}, &loss, &iterations);
  EXPECT_LT(loss, initial);
  EXPECT_GT(iterations, 0);
  // And the full design, which starts from the optimum of the Gauss-Hermite proxy, does at least as well.
  DesignStats stats;
  design_lloyd(row, 3, LloydParams{}, UniformParams{}, &stats);
  EXPECT_LE(stats.loss, loss * (1.0 + 1e-3));
}

TEST(Uniform, RangeSearchBeatsMinMaxOnHeavyTails) {
  // Student-t-like weights: the min-max range wastes levels on outliers; the search must clip.
  std::mt19937 rng(8);
  std::student_t_distribution<float> t(2.0f);
  std::vector<float> w(512);
  for (auto& x : w) x = 0.01f * t(rng);
  const WeightedRow row = WeightedRow::build(w.data(), nullptr, w.size(), 0.0);
  for (int bits = 2; bits <= 4; ++bits) {
    const Codebook minmax = Codebook::uniform_asymmetric(bits, (row.max() - row.min()) / ((1 << bits) - 1), row.min());
    DesignStats stats;
    const Codebook searched = design_uniform(row, bits, CodebookKind::uniform_asymmetric, UniformParams{}, &stats);
    EXPECT_LT(expected_loss(searched, row), 0.8 * expected_loss(minmax, row)) << bits << " bits";
    const Codebook symmetric = design_uniform(row, bits, CodebookKind::uniform_symmetric, UniformParams{});
    EXPECT_EQ(symmetric.kind, CodebookKind::uniform_symmetric);
    EXPECT_EQ(symmetric.levels.front(), -symmetric.levels.back());
  }
}

TEST(Uniform, SearchIsNearTheBestOfAFineGrid) {
  // Brute force over a fine (lo, hi) grid: the search result is within 2% of the best grid point.
  std::mt19937 rng(12);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::lognormal_distribution<float> lognormal(0.0f, 1.0f);
  std::vector<float> w(300), p(300);
  for (std::size_t i = 0; i < w.size(); ++i) {
    w[i] = normal(rng) * (i % 10 == 0 ? 4.0f : 1.0f);
    p[i] = lognormal(rng);
  }
  const WeightedRow row = WeightedRow::build(w.data(), p.data(), w.size(), 0.0);
  const int bits = 2;
  double best = INFINITY;
  const int grid = 120;
  for (int a = 0; a < grid; ++a)
    for (int b = 0; b < grid; ++b) {
      const double lo = row.min() + (row.max() - row.min()) * 0.5 * a / grid;
      const double hi = row.max() - (row.max() - row.min()) * 0.5 * b / grid;
      best = std::min(best, expected_loss(Codebook::uniform_asymmetric(bits, (hi - lo) / 3.0, lo), row));
    }
  DesignStats stats;
  design_uniform(row, bits, CodebookKind::uniform_asymmetric, UniformParams{}, &stats);
  EXPECT_LE(stats.loss, best * 1.02);
}

TEST(KMeansOracle, MatchesBruteForceOnTinyInputs) {
  // Every contiguous partition of 7 sorted points into 3 clusters.
  const std::vector<float> w = {-2.0f, -1.5f, -0.1f, 0.0f, 0.3f, 2.0f, 2.2f};
  const std::vector<float> p = {1.0f, 2.0f, 0.5f, 1.0f, 3.0f, 1.0f, 0.2f};
  const WeightedRow row = WeightedRow::build(w.data(), p.data(), w.size(), 0.0);
  auto sse = [&](std::size_t i, std::size_t j) {
    double s0 = 0, s1 = 0;
    for (std::size_t k = i; k < j; ++k) {
      s0 += row.precision[k];
      s1 += row.precision[k] * row.mu[k];
    }
    const double c = s1 / s0;
    double e = 0;
    for (std::size_t k = i; k < j; ++k) e += row.precision[k] * (row.mu[k] - c) * (row.mu[k] - c);
    return e;
  };
  double best = INFINITY;
  for (std::size_t a = 1; a < 7; ++a)
    for (std::size_t b = a + 1; b < 7; ++b) best = std::min(best, sse(0, a) + sse(a, b) + sse(b, 7));
  EXPECT_NEAR(optimal_weighted_kmeans(row, 3).cost, best, 1e-12);
}

TEST(GainPreserving, SquaredErrorDesignsShrinkAndTheRescaleRestoresUnitGain) {
  // Oracle: the gain sum pi q w / sum pi w^2 computed directly from the decoded levels. On zero-centred rows like
  // a layer's weights (Gaussian, heavy-tailed) a squared-error design has gain below one (Lloyd's centroid
  // condition) and the rescaled codebook has gain one (up to fp16 metadata); it is a positive multiple of the
  // input's levels and keeps its kind. On any row
  // (random mixtures away from zero) the gain is never moved further from one.
  std::mt19937 rng(17);
  auto gain = [](const Codebook& cb, const WeightedRow& row) {
    double num = 0.0, den = 0.0;
    for (std::size_t i = 0; i < row.size(); ++i) {
      num += row.precision[i] * cb.decode(cb.encode(row.mu[i])) * row.mu[i];
      den += row.precision[i] * row.mu[i] * row.mu[i];
    }
    return num / den;
  };
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::student_t_distribution<float> student(3.0f);
  std::lognormal_distribution<float> lognormal(0.0f, 1.0f);
  for (int trial = 0; trial < 12; ++trial) {
    std::vector<float> w(512), p(512);
    for (std::size_t i = 0; i < w.size(); ++i) {
      w[i] = trial % 2 ? normal(rng) : 0.01f * student(rng);
      p[i] = trial % 3 ? lognormal(rng) : 1.0f;
    }
    const WeightedRow row = WeightedRow::build(w.data(), p.data(), w.size(), 0.0);
    for (int bits : {1, 2, 3, 4}) {
      const Codebook uniform = design_uniform(row, bits, CodebookKind::uniform_asymmetric, UniformParams{});
      const Codebook lloyd = design_lloyd(row, bits, LloydParams{}, UniformParams{});
      for (const Codebook* cb : {&uniform, &lloyd}) {
        const double before = gain(*cb, row);
        EXPECT_LT(before, 1.0 - 1e-3) << bits << " bits, trial " << trial;
        const Codebook rescaled = rescale_levels(*cb, row, LevelScale::gain);
        EXPECT_EQ(rescaled.kind, cb->kind);
        const double after = gain(rescaled, row);
        EXPECT_LE(std::abs(after - 1.0), std::abs(before - 1.0));
        // Within the factor's clamp (a 1-bit table fitted to a few heavy weights can have a level near zero and a
        // gain under 1/4) the gain is one up to the fp16 rounding of the metadata.
        if (before > 0.25) {
          EXPECT_NEAR(after, 1.0, 2e-3) << bits << " bits, trial " << trial;
        }
        // The energy target: sum pi q^2 = sum pi w^2. The nearest-level steps can run the factor into its clamp
        // on a design that fits its row badly (a uniform grid placed on a few heavy weights, gain near 1/3), so
        // only designs with a gain above 1/2.
        const Codebook equal_energy = rescale_levels(*cb, row, LevelScale::energy);
        double q2 = 0.0, w2 = 0.0;
        for (std::size_t i = 0; i < row.size(); ++i) {
          const double q = equal_energy.decode(equal_energy.encode(row.mu[i]));
          q2 += row.precision[i] * q * q;
          w2 += row.precision[i] * row.mu[i] * row.mu[i];
        }
        if (before > 0.5) {
          EXPECT_NEAR(q2 / w2, 1.0, 4e-3) << bits << " bits, trial " << trial;
        }
        // A positive multiple of the input's levels: the ratio read off the largest level, every level within the
        // fp16 rounding of the metadata (2^-11 relative per table level or per scale and offset; 2e-3 of the
        // largest level covers both and the ratio's own rounding).
        std::size_t top = 0;
        for (std::size_t k = 0; k < cb->levels.size(); ++k)
          if (std::abs(cb->levels[k]) > std::abs(cb->levels[top])) top = k;
        const double ratio = double(rescaled.levels[top]) / double(cb->levels[top]);
        EXPECT_GT(ratio, 1.0);
        for (std::size_t k = 0; k < cb->levels.size(); ++k)
          EXPECT_NEAR(rescaled.levels[k], ratio * cb->levels[k], 2e-3 * std::abs(rescaled.levels[top]));
      }
    }
  }
  for (int trial = 0; trial < 8; ++trial) {
    const Sample s = random_sample(rng, 400);
    const WeightedRow row = WeightedRow::build(s.w.data(), s.p.data(), s.w.size(), 0.0);
    for (int bits : {1, 2, 3}) {
      const Codebook lloyd = design_lloyd(row, bits, LloydParams{}, UniformParams{});
      EXPECT_LE(std::abs(gain(rescale_levels(lloyd, row, LevelScale::gain), row) - 1.0), std::abs(gain(lloyd, row) - 1.0));
    }
  }
  // An all-zero row has no gain to restore: unchanged.
  const std::vector<float> zeros(16, 0.0f);
  const WeightedRow zero_row = WeightedRow::build(zeros.data(), nullptr, zeros.size(), 0.0);
  const Codebook cb = design_uniform(zero_row, 2, CodebookKind::uniform_asymmetric, UniformParams{});
  EXPECT_EQ(rescale_levels(cb, zero_row, LevelScale::gain).levels, cb.levels);
  // none leaves any codebook as designed.
  const Codebook designed = design_lloyd(WeightedRow::build(zeros.data(), nullptr, 4, 0.0), 1, LloydParams{}, UniformParams{});
  EXPECT_EQ(rescale_levels(designed, zero_row, LevelScale::none).levels, designed.levels);
}

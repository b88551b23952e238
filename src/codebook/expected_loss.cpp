#include "bayesq/codebook/expected_loss.h"

#include <cmath>
#include <random>

namespace bayesq {

namespace {
double half_sum_w2(const Codebook& codebook, const WeightedRow& row) {
  std::vector<double> reference(codebook.levels.begin(), codebook.levels.end());
  const CellMoments m = cell_moments(row, codebook.boundaries, reference);
  double total = 0.0;
  for (double v : m.w2) total += v;
  return 0.5 * total;
}
}  // namespace

double expected_loss(const Codebook& codebook, const WeightedRow& row) { return half_sum_w2(codebook, row); }

double plugin_loss(const Codebook& codebook, const WeightedRow& row) {
  double total = 0.0;
  for (std::size_t i = 0; i < row.size(); ++i) {
    const double e = double(codebook.decode(codebook.encode(row.mu[i]))) - row.mu[i];
    total += row.precision[i] * e * e;
  }
  return 0.5 * total;
}

MonteCarloEstimate monte_carlo_loss(const Codebook& codebook, const WeightedRow& row, int64_t samples,
                                    uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  double mean = 0.0, m2 = 0.0;
  for (int64_t t = 0; t < samples; ++t) {
    double draw = 0.0;
    for (std::size_t i = 0; i < row.size(); ++i) {
      const double s = row.stddev.empty() ? 0.0 : row.stddev[i];
      const double w = row.mu[i] + s * normal(rng);
      const double e = double(codebook.decode(codebook.encode(w))) - w;
      draw += 0.5 * row.precision[i] * e * e;
    }
    // Welford's running mean and variance.
    const double delta = draw - mean;
    mean += delta / double(t + 1);
    m2 += delta * (draw - mean);
  }
  MonteCarloEstimate est;
  est.mean = mean;
  est.standard_error = samples > 1 ? std::sqrt(m2 / double(samples - 1) / double(samples)) : 0.0;
  return est;
}

}  // namespace bayesq

#include "bayesq/codebook/kmeans_dp.h"

#include <algorithm>
#include <limits>

namespace bayesq {

KMeansSolution optimal_weighted_kmeans(const WeightedRow& row, int clusters) {
  const std::size_t n = row.size();
  KMeansSolution solution;
  if (n == 0 || clusters <= 0) return solution;
  const std::size_t k_max = std::min<std::size_t>(static_cast<std::size_t>(clusters), n);
  // Weighted SSE of sorted points [i, j) about their weighted mean.
  auto cost = [&](std::size_t i, std::size_t j) {
    const double s0 = row.s0[j] - row.s0[i];
    if (s0 <= 0.0) return 0.0;
    const double s1 = row.s1[j] - row.s1[i];
    const double s2 = row.s2[j] - row.s2[i];
    return std::max(0.0, s2 - s1 * s1 / s0);
  };
  const double inf = std::numeric_limits<double>::infinity();
  // best[k][j]: optimal cost of the first j points in k clusters; split[k][j]: start of the last cluster.
  std::vector<std::vector<double>> best(k_max + 1, std::vector<double>(n + 1, inf));
  std::vector<std::vector<std::size_t>> split(k_max + 1, std::vector<std::size_t>(n + 1, 0));
  best[0][0] = 0.0;
  for (std::size_t k = 1; k <= k_max; ++k) {
    for (std::size_t j = k; j <= n; ++j) {
      for (std::size_t i = k - 1; i < j; ++i) {
        if (best[k - 1][i] == inf) continue;
        const double c = best[k - 1][i] + cost(i, j);
        if (c < best[k][j]) {
          best[k][j] = c;
          split[k][j] = i;
        }
      }
    }
  }
  std::size_t k_best = 1;
  for (std::size_t k = 1; k <= k_max; ++k)
    if (best[k][n] < best[k_best][n]) k_best = k;
  solution.cost = best[k_best][n];
  std::size_t j = n;
  for (std::size_t k = k_best; k >= 1; --k) {
    const std::size_t i = split[k][j];
    const double s0 = row.s0[j] - row.s0[i];
    const double center = s0 > 0.0 ? row.center + (row.s1[j] - row.s1[i]) / s0 : row.mu[i];
    solution.centers.push_back(center);
    j = i;
  }
  std::sort(solution.centers.begin(), solution.centers.end());
  return solution;
}

}  // namespace bayesq

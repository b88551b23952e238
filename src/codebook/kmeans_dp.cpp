#include "bayesq/codebook/kmeans_dp.h"

#include <algorithm>
#include <cstdint>
#include <functional>
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

KMeansSolution optimal_weighted_kmeans_fast(const WeightedRow& row, int clusters) {
  const std::size_t n = row.size();
  KMeansSolution solution;
  if (n == 0 || clusters <= 0) return solution;
  const std::size_t k_max = std::min<std::size_t>(static_cast<std::size_t>(clusters), n);
  auto cost = [&](std::size_t i, std::size_t j) {
    const double s0 = row.s0[j] - row.s0[i];
    if (s0 <= 0.0) return 0.0;
    const double s1 = row.s1[j] - row.s1[i];
    return std::max(0.0, (row.s2[j] - row.s2[i]) - s1 * s1 / s0);
  };
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> previous(n + 1, inf), current(n + 1, inf);
  // split[k][j]: start of the last of k clusters covering the first j points.
  std::vector<std::vector<uint32_t>> split(k_max + 1, std::vector<uint32_t>(n + 1, 0));
  for (std::size_t j = 1; j <= n; ++j) previous[j] = cost(0, j);
  std::size_t best_k = 1;
  double best_cost = previous[n];
  for (std::size_t k = 2; k <= k_max; ++k) {
    std::fill(current.begin(), current.end(), inf);
    // Fill current[j] for j in [lo, hi] knowing the best split lies in [opt_lo, opt_hi].
    std::function<void(std::size_t, std::size_t, std::size_t, std::size_t)> solve =
        [&](std::size_t lo, std::size_t hi, std::size_t opt_lo, std::size_t opt_hi) {
          if (lo > hi) return;
          const std::size_t mid = lo + (hi - lo) / 2;
          std::size_t best_i = opt_lo;
          double best = inf;
          for (std::size_t i = opt_lo; i <= std::min(mid - 1, opt_hi); ++i) {
            const double c = previous[i] + cost(i, mid);
            if (c < best) {
              best = c;
              best_i = i;
            }
          }
          current[mid] = best;
          split[k][mid] = static_cast<uint32_t>(best_i);
          if (mid > lo) solve(lo, mid - 1, opt_lo, best_i);
          solve(mid + 1, hi, best_i, opt_hi);
        };
    solve(k, n, k - 1, n - 1);
    std::swap(previous, current);
    if (previous[n] < best_cost) {
      best_cost = previous[n];
      best_k = k;
    }
  }
  solution.cost = best_cost;
  std::size_t j = n;
  for (std::size_t k = best_k; k >= 1; --k) {
    const std::size_t i = k == 1 ? 0 : split[k][j];
    const double s0 = row.s0[j] - row.s0[i];
    solution.centers.push_back(s0 > 0.0 ? row.center + (row.s1[j] - row.s1[i]) / s0 : row.mu[i]);
    j = i;
  }
  std::sort(solution.centers.begin(), solution.centers.end());
  return solution;
}

WeightedRow compress_sorted(const WeightedRow& row, std::size_t size) {
  const std::size_t n = row.size();
  if (n <= size || size == 0) return row;
  std::vector<float> values, weights;
  values.reserve(size);
  weights.reserve(size);
  for (std::size_t g = 0; g < size; ++g) {
    const std::size_t begin = g * n / size, end = (g + 1) * n / size;
    const double s0 = row.s0[end] - row.s0[begin];
    const double mean = s0 > 0.0 ? row.center + (row.s1[end] - row.s1[begin]) / s0 : 0.5 * (row.mu[begin] + row.mu[end - 1]);
    values.push_back(static_cast<float>(mean));
    weights.push_back(static_cast<float>(s0));
  }
  return WeightedRow::build(values.data(), weights.data(), values.size(), 0.0);
}

}  // namespace bayesq

// Exact optimal weighted 1-D k-means by dynamic programming over sorted points: the oracle that weighted
// Lloyd-Max (tau = 0) is tested against. In 1-D the optimal clusters are contiguous runs of the sorted points, so
//   D[k][j] = min_{i < j} D[k-1][i] + cost(i, j),  cost(i, j) = weighted SSE of points i..j-1 around their mean,
// computed from prefix sums. O(K n^2) time: a test oracle for small n, not a production path.
#pragma once

#include <vector>

#include "bayesq/codebook/weighted_row.h"

namespace bayesq {

struct KMeansSolution {
  std::vector<double> centers;  // ascending, at most `clusters` (fewer when there are fewer distinct points)
  double cost = 0.0;            // sum_i w_i (x_i - center)^2  (no 1/2 factor)
};

KMeansSolution optimal_weighted_kmeans(const WeightedRow& row, int clusters);

}  // namespace bayesq

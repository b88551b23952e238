// Exact optimal weighted 1-D k-means by dynamic programming over sorted points. In 1-D the optimal clusters are
// contiguous runs of the sorted points, so
//   D[k][j] = min_{i < j} D[k-1][i] + cost(i, j),  cost(i, j) = weighted SSE of points i..j-1 about their mean,
// with cost(i, j) from prefix sums in O(1).
//  - optimal_weighted_kmeans: the plain O(K n^2) recursion, the test oracle.
//  - optimal_weighted_kmeans_fast: O(K n log n). The interval cost satisfies the quadrangle inequality, so the
//    best start of the last cluster never moves left as j grows; each layer is solved by divide and conquer over
//    that monotone argmin (Gronlund et al., "Fast exact k-means, k-medians and Bregman divergence clustering in
//    1D", 2017). Used to initialise Lloyd-Max.
#pragma once

#include <cstddef>
#include <vector>

#include "bayesq/codebook/weighted_row.h"

namespace bayesq {

struct KMeansSolution {
  std::vector<double> centers;  // ascending, at most `clusters` (fewer when there are fewer points)
  double cost = 0.0;            // sum_i w_i (x_i - center)^2  (no 1/2 factor)
};

KMeansSolution optimal_weighted_kmeans(const WeightedRow& row, int clusters);
KMeansSolution optimal_weighted_kmeans_fast(const WeightedRow& row, int clusters);

// At most `size` weighted points standing in for a tau = 0 row: runs of consecutive sorted points of (nearly)
// equal count merged into their weighted mean with their summed weight. The row itself when it is that small.
WeightedRow compress_sorted(const WeightedRow& row, std::size_t size);

}  // namespace bayesq

// Codebook design for one row or group (METHOD.md §3):
//  - design_uniform: 2^bits equally spaced levels whose range minimises the expected loss: a grid over how far
//    each end of the min-max range shrinks towards the middle, then alternating golden-section searches on each
//    end (one parameter, the reach, for the symmetric kind).
//  - design_lloyd: weighted Lloyd-Max on the posterior mixture, stopped when the relative improvement falls under
//    `relative_tolerance` or after `max_iterations`. Started from the exact optimum of the point set (compressed
//    to a few hundred weighted points) and from the uniform design, best kept; weighted quantiles replace the
//    exact start for codebooks wider than dp_max_levels. It never returns a codebook worse than the uniform one
//    (if uniform wins, its levels become the table).
// At tau > 0 both search on the row's Gauss-Hermite proxy and finish with exact evaluations (Lloyd also with a
// few exact Gaussian-cell iterations). Both round metadata to fp16 and report the exact loss of the rounded
// codebook.
#pragma once

#include "bayesq/codebook/codebook.h"
#include "bayesq/codebook/weighted_row.h"

namespace bayesq {

struct UniformParams {
  int grid_points = 12;         // shrink factors of each end of the min-max range, 1.0 down to min_shrink
  double min_shrink = 0.2;
  int golden_iterations = 16;   // per end and round
  int rounds = 2;               // alternating (lo, hi) rounds after the grid
};

struct LloydParams {
  int max_iterations = 100;
  double relative_tolerance = 1e-6;
  int dp_max_levels = 64;         // start from the exact 1-D optimum (kmeans_dp.h) for codebooks up to this size
  int dp_points = 256;            // ... of the points compressed to max(dp_points, dp_points_per_level * levels)
  int dp_points_per_level = 16;   //     weighted points
  int exact_polish_iterations = 20;  // tau > 0: exact Gaussian-cell iterations after the proxy design
};

struct DesignStats {
  int iterations = 0;            // Lloyd iterations run
  bool fell_back_to_uniform = false;
  double loss = 0.0;             // expected loss (row's tau) of the returned, fp16-rounded codebook
};

Codebook design_uniform(const WeightedRow& row, int bits, CodebookKind kind, const UniformParams& params,
                        DesignStats* stats = nullptr);

// uniform_design: the uniform codebook at the same bits if the caller already has it (else designed here).
Codebook design_lloyd(const WeightedRow& row, int bits, const LloydParams& lloyd, const UniformParams& uniform,
                      DesignStats* stats = nullptr, const Codebook* uniform_design = nullptr);

// The Lloyd-Max search of design_lloyd on a tau = 0 point set, before fp16 rounding and the uniform safeguard:
// best of the starts, unrounded levels; `loss` receives their loss. Exposed for tests.
std::vector<double> lloyd_levels(const WeightedRow& points, int count, const std::vector<double>& uniform_levels,
                                 const LloydParams& params, double* loss, int* iterations);

// Lloyd-Max iterations from given starting levels (empty cells re-seeded by splitting the worst cell). Returns
// the best levels seen; `loss` receives their expected loss.
std::vector<double> lloyd_iterate(const WeightedRow& row, std::vector<double> levels, const LloydParams& params,
                                  double* loss, int* iterations);

// Levels at the weighted quantiles (k + 1/2) / K of the row's weights.
std::vector<double> weighted_quantile_levels(const WeightedRow& row, int count);

}  // namespace bayesq

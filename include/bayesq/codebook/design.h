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

#include <string>

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

// Note [Gain-preserving codebooks]: a codebook that minimises squared error (Lloyd's centroid condition, and
// nearly so the clipped uniform grid) satisfies sum_i pi_i q_i w_i = sum_i pi_i q_i^2, so the row's gain along its
// own weights, g = sum pi q w / sum pi w^2 = 1 - |w - q|^2 / |w|^2, is below one: the quantized layer passes its
// signal shrunk by its relative error, plus noise, and the shrink compounds through the layers (the quickstart
// CNN's logits came out 30% smaller at 2 bits in the data-free mode, KL 0.132 against RTN's 0.112 although
// agreement was higher; RTN's min-max grid rounds without bias). GPTQ-style feedback does not undo it: a least-
// squares fit is a projection and shrinks too. This scales the levels about zero until the gain is one, each
// weight going to its nearest scaled level (fixed-point steps factor <- factor / g, at most 32, until
// |g - 1| <= 1e-4; the step nearest one is kept; where the moving cell ends keep it from one, a last step scales
// by 1/g with the cells held), metadata re-rounded to fp16. The scaled codebook is wider than the squared-error
// design, so it also clips the outer weights less. LevelScale::energy makes |q| = |w| instead (the square root of
// the gain's correction, same steps): the milder choice where a per-example normalisation follows and undoes
// most of the shrink (effective_level_scale in config.h picks). Test KL at 2.04 / 3.04 bits on the quickstart
// CNN: data-free 0.132 / 0.0072 unscaled, 0.0136 / 0.00076 at unit gain (RTN 0.112 / 0.0104; keeping the
// design's cells from the start instead, exact gain one and more error: 0.082 / 0.0035); the default K-FAC
// 0.00435 / 0.00030 unscaled, 0.00284 / 0.00018 at unit gain. Rows with no energy are returned unchanged.
enum class LevelScale {
  automatic,  // bayesq: energy on models with per-example normalisation, gain on the others (config.h)
  none,       // the squared-error design as it is
  gain,       // sum pi q w = sum pi w^2
  energy,     // sum pi q^2 = sum pi w^2
};
const char* level_scale_name(LevelScale scale);
LevelScale level_scale_from_name(const std::string& name);  // throws UserError(usage) on an unknown name

// The codebook's levels scaled about zero so that `scale` holds (none and automatic: the codebook unchanged).
Codebook rescale_levels(const Codebook& codebook, const WeightedRow& row, LevelScale scale);

// Levels at the weighted quantiles (k + 1/2) / K of the row's weights.
std::vector<double> weighted_quantile_levels(const WeightedRow& row, int count);

}  // namespace bayesq

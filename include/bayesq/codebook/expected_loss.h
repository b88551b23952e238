// Posterior-expected loss of a scalar quantizer (METHOD.md §2):
//   L(Q) = 1/2 sum_i pi_i E_{w ~ N(mu_i, tau sigma_i^2)} [(Q(w) - w)^2],  sigma_i^2 = 1 / pi_i,
// in closed form (Gaussian cell integrals), and a Monte-Carlo estimate of the same quantity used to test it.
#pragma once

#include <cstdint>

#include "bayesq/codebook/codebook.h"
#include "bayesq/codebook/weighted_row.h"

namespace bayesq {

// Closed form, at the row's own tau.
double expected_loss(const Codebook& codebook, const WeightedRow& row);

// Plug-in loss 1/2 sum_i pi_i (Q(mu_i) - mu_i)^2 (tau = 0), whatever the row's tau.
double plugin_loss(const Codebook& codebook, const WeightedRow& row);

struct MonteCarloEstimate {
  double mean = 0.0;
  double standard_error = 0.0;
};

// samples draws of the whole row (one w_i per weight per draw); deterministic for a given seed.
MonteCarloEstimate monte_carlo_loss(const Codebook& codebook, const WeightedRow& row, int64_t samples,
                                    uint64_t seed);

}  // namespace bayesq

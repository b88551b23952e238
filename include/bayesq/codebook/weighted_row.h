// WeightedRow: the data one codebook is fitted to, i.e. the posterior mixture sum_i pi_i N(mu_i, s_i^2)
// with s_i^2 = tau * sigma_i^2 = tau / pi_i (METHOD.md §2). At tau = 0 it is a weighted point set.
//
// CellMoments are the per-cell sums every codebook computation needs. For cells (t_{k-1}, t_k] and reference
// points r_k (usually the current levels):
//   W0_k = sum_i pi_i P_i(cell k)
//   W1_k = sum_i pi_i E_i[(x - r_k) 1{x in cell k}]
//   W2_k = sum_i pi_i E_i[(x - r_k)^2 1{x in cell k}]
// so the expected loss of levels r is 1/2 sum_k W2_k and the Lloyd centroid of cell k is r_k + W1_k / W0_k.
// Gaussian cell integrals, with alpha, beta the standardised cell ends and e = mu - r:
//   int phi = P,  int (e + s z) phi = e P + s (phi(alpha) - phi(beta)),
//   int (e + s z)^2 phi = e^2 P + 2 e s (phi(alpha) - phi(beta)) + s^2 (P + alpha phi(alpha) - beta phi(beta)).
#pragma once

#include <cstddef>
#include <vector>

namespace bayesq {

struct WeightedRow {
  std::vector<double> mu;         // ascending
  std::vector<double> precision;  // pi_i >= 0, same order as mu
  std::vector<double> stddev;     // s_i = sqrt(tau / pi_i); empty when tau == 0
  double tau = 0.0;
  // Prefix sums over the sorted points, centred at `center` for accuracy: S_j[k] = sum_{i<k} pi_i (mu_i - c)^j.
  std::vector<double> s0, s1, s2;
  double center = 0.0;

  // values: n weights; precision: n precisions (nullptr = all ones). Non-finite input is the caller's to reject.
  // `order`, when given, receives where each sorted point came from: mu[k] = values[order[k]].
  static WeightedRow build(const float* values, const float* precision, std::size_t n, double tau,
                           std::vector<std::size_t>* order = nullptr);

  // A tau = 0 point set standing in for the Gaussian mixture during searches: each N(mu_i, s_i^2) becomes the five
  // Gauss-Hermite nodes mu_i + s_i x_j with weights pi_i w_j (exact for polynomials of degree <= 9). Searches
  // run on it at O(K log n) per evaluation; reported losses always come from the closed form on the row itself.
  WeightedRow gauss_hermite_proxy() const;

  std::size_t size() const { return mu.size(); }
  double total_weight() const { return s0.empty() ? 0.0 : s0.back(); }
  double min() const { return mu.front(); }
  double max() const { return mu.back(); }
};

struct CellMoments {
  std::vector<double> w0, w1, w2;
};

// boundaries: K-1 ascending cell ends; reference: K points. Exact for tau = 0; for tau > 0 each Gaussian is
// integrated over the cells within 9 standard deviations of its mean (the outermost of those extend to +-inf,
// so masses sum to exactly one per weight).
CellMoments cell_moments(const WeightedRow& row, const std::vector<double>& boundaries,
                         const std::vector<double>& reference);

// Standard normal density and the stable mass of (alpha, beta].
double normal_pdf(double z);
double normal_mass(double alpha, double beta);

}  // namespace bayesq

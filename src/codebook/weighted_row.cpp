#include "bayesq/codebook/weighted_row.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace bayesq {

namespace {
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kTailSigmas = 9.0;  // beyond 9 sd the Gaussian mass is below 1e-18
}  // namespace

double normal_pdf(double z) { return std::isinf(z) ? 0.0 : kInvSqrt2Pi * std::exp(-0.5 * z * z); }

double normal_mass(double alpha, double beta) {
  if (!(beta > alpha)) return 0.0;
  // Upper tails erfc(x / sqrt 2) / 2 avoid cancellation when both ends sit in the same tail.
  auto upper = [](double x) { return 0.5 * std::erfc(x * kInvSqrt2); };
  if (alpha >= 0.0) return upper(alpha) - upper(beta);
  if (beta <= 0.0) return upper(-beta) - upper(-alpha);
  return 1.0 - upper(-alpha) - upper(beta);
}

WeightedRow WeightedRow::build(const float* values, const float* precision, std::size_t n, double tau,
                               std::vector<std::size_t>* sorted_from) {
  WeightedRow row;
  row.tau = tau;
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return values[a] < values[b]; });
  row.mu.resize(n);
  row.precision.resize(n);
  for (std::size_t k = 0; k < n; ++k) {
    row.mu[k] = values[order[k]];
    row.precision[k] = precision ? std::max(0.0, double(precision[order[k]])) : 1.0;
  }
  if (tau > 0.0) {
    row.stddev.resize(n);
    for (std::size_t k = 0; k < n; ++k)
      row.stddev[k] = row.precision[k] > 0.0 ? std::sqrt(tau / row.precision[k]) : 0.0;
  }
  row.center = n ? 0.5 * (row.mu.front() + row.mu.back()) : 0.0;
  if (sorted_from) *sorted_from = order;
  row.s0.assign(n + 1, 0.0);
  row.s1.assign(n + 1, 0.0);
  row.s2.assign(n + 1, 0.0);
  for (std::size_t k = 0; k < n; ++k) {
    const double p = row.precision[k];
    const double y = row.mu[k] - row.center;
    row.s0[k + 1] = row.s0[k] + p;
    row.s1[k + 1] = row.s1[k] + p * y;
    row.s2[k + 1] = row.s2[k] + p * y * y;
  }
  return row;
}

WeightedRow WeightedRow::gauss_hermite_proxy() const {
  // Probabilists' Gauss-Hermite rule, 5 nodes: roots of He_5, weights normalised to the standard normal.
  static constexpr double kNodes[5] = {-2.85697001387280565, -1.35562617997426587, 0.0, 1.35562617997426587,
                                       2.85697001387280565};
  static constexpr double kWeights[5] = {0.0112574113277206889, 0.222075922005612645, 0.533333333333333333,
                                         0.222075922005612645, 0.0112574113277206889};
  const std::size_t n = size();
  std::vector<float> values, weights;
  values.reserve(5 * n);
  weights.reserve(5 * n);
  for (std::size_t i = 0; i < n; ++i) {
    const double s = stddev.empty() ? 0.0 : stddev[i];
    for (int j = 0; j < 5; ++j) {
      if (s == 0.0 && j != 2) continue;
      values.push_back(static_cast<float>(mu[i] + s * kNodes[j]));
      weights.push_back(static_cast<float>(precision[i] * (s == 0.0 ? 1.0 : kWeights[j])));
    }
  }
  return build(values.data(), weights.data(), values.size(), 0.0);
}

CellMoments cell_moments(const WeightedRow& row, const std::vector<double>& boundaries,
                         const std::vector<double>& reference) {
  const std::size_t cells = reference.size();
  CellMoments m;
  m.w0.assign(cells, 0.0);
  m.w1.assign(cells, 0.0);
  m.w2.assign(cells, 0.0);
  const std::size_t n = row.size();
  const bool smooth = row.tau > 0.0 && !row.stddev.empty();

  if (!smooth) {
    // Cell k holds the sorted points in (t_{k-1}, t_k]: a contiguous index range, summed from prefix sums. Its end
    // is the upper bound of t_k, searched from the cell's start by doubling steps: O(log cell size), where a search
    // of the whole rest of the row would cost O(log n) per cell (Lloyd runs with 64 cells spend most time here).
    std::size_t begin = 0;
    const double* mu = row.mu.data();
    for (std::size_t k = 0; k < cells; ++k) {
      std::size_t end = n;
      if (k + 1 < cells) {
        const double t = boundaries[k];
        std::size_t lo = begin, hi = begin, step = 1;  // mu[begin, lo) <= t, and mu[hi] > t where hi < n
        while (hi < n && !(t < mu[hi])) {
          lo = hi + 1;
          hi = lo + step;
          step <<= 1;
        }
        end = static_cast<std::size_t>(std::upper_bound(mu + lo, mu + std::min(hi, n), t) - mu);
      }
      if (end > begin) {
        const double s0 = row.s0[end] - row.s0[begin];
        const double s1 = row.s1[end] - row.s1[begin];
        const double s2 = row.s2[end] - row.s2[begin];
        const double d = reference[k] - row.center;
        m.w0[k] = s0;
        m.w1[k] = s1 - d * s0;
        m.w2[k] = std::max(0.0, s2 - 2.0 * d * s1 + d * d * s0);
      }
      begin = end;
    }
    return m;
  }

  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> at(boundaries.size()), tail(boundaries.size()), density(boundaries.size());
  for (std::size_t i = 0; i < n; ++i) {
    const double p = row.precision[i];
    if (p <= 0.0) continue;
    const double mu = row.mu[i];
    const double s = row.stddev[i];
    // Cells touched by [mu - 9s, mu + 9s]; the first and last of them extend to -inf / +inf.
    const std::size_t first = static_cast<std::size_t>(
        std::lower_bound(boundaries.begin(), boundaries.end(), mu - kTailSigmas * s) - boundaries.begin());
    const std::size_t last = static_cast<std::size_t>(
        std::lower_bound(boundaries.begin(), boundaries.end(), mu + kTailSigmas * s) - boundaries.begin());
    if (first == last || s == 0.0) {
      const std::size_t k = s == 0.0 ? static_cast<std::size_t>(
                                           std::lower_bound(boundaries.begin(), boundaries.end(), mu) - boundaries.begin())
                                     : first;
      // Whole mass in one cell: E[(x - r)] = mu - r, E[(x - r)^2] = (mu - r)^2 + s^2.
      const double e = mu - reference[k];
      m.w0[k] += p;
      m.w1[k] += p * e;
      m.w2[k] += p * (e * e + s * s);
      continue;
    }
    // Each boundary z_j = (t_j - mu) / s is shared by two cells: evaluate its tail and density once. tail[j] is
    // the small one of the two tails, Q(|z_j|) with Q(x) = erfc(x / sqrt 2) / 2, so each cell's mass below is
    // normal_mass's own expression, bit for bit (Q(inf) = 0 stands in for an open end).
    for (std::size_t j = first; j < last; ++j) {
      const double z = (boundaries[j] - mu) / s;
      at[j] = z;
      tail[j] = 0.5 * std::erfc((z >= 0.0 ? z : -z) * kInvSqrt2);
      density[j] = normal_pdf(z);
    }
    for (std::size_t k = first; k <= last; ++k) {
      const bool open_below = k == first, open_above = k == last;
      const double alpha = open_below ? -inf : at[k - 1];
      const double beta = open_above ? inf : at[k];
      const double tail_a = open_below ? 0.0 : tail[k - 1], tail_b = open_above ? 0.0 : tail[k];
      double mass = 0.0;
      if (beta > alpha) {
        if (alpha >= 0.0) mass = tail_a - tail_b;
        else if (beta <= 0.0) mass = tail_b - tail_a;
        else mass = 1.0 - tail_a - tail_b;
      }
      const double pa = open_below ? 0.0 : density[k - 1], pb = open_above ? 0.0 : density[k];
      const double apa = std::isinf(alpha) ? 0.0 : alpha * pa;
      const double bpb = std::isinf(beta) ? 0.0 : beta * pb;
      const double e = mu - reference[k];
      const double first_moment = e * mass + s * (pa - pb);
      const double second_moment = e * e * mass + 2.0 * e * s * (pa - pb) + s * s * (mass + apa - bpb);
      m.w0[k] += p * mass;
      m.w1[k] += p * first_moment;
      m.w2[k] += p * std::max(0.0, second_moment);
    }
  }
  return m;
}

}  // namespace bayesq

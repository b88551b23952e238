#include "bayesq/codebook/design.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "bayesq/codebook/expected_loss.h"
#include "bayesq/codebook/kmeans_dp.h"
#include "bayesq/common/errors.h"

namespace bayesq {

namespace {

constexpr double kGoldenRatio = 0.61803398874989484820;  // (sqrt 5 - 1) / 2

// Expected loss of an ascending set of levels (no fp16 rounding): 1/2 sum_k W2_k.
double levels_loss(const WeightedRow& row, const std::vector<double>& levels) {
  if (row.tau == 0.0 && levels.size() > 1 && row.size() < levels.size() * 8) {
    // Few points per level: one pass over the points beats a binary search per cell. The points are sorted, so
    // the first level >= x (lower_bound) only moves forward: a merge of the two sorted lists.
    double total = 0.0;
    auto it = levels.begin();
    for (std::size_t i = 0; i < row.size(); ++i) {
      const double x = row.mu[i];
      while (it != levels.end() && *it < x) ++it;
      double e = std::numeric_limits<double>::infinity();
      if (it != levels.end()) e = *it - x;
      if (it != levels.begin()) e = std::min(std::fabs(e), x - *(it - 1));
      total += row.precision[i] * e * e;
    }
    return 0.5 * total;
  }
  std::vector<double> boundaries(levels.size() - 1);
  for (std::size_t k = 0; k + 1 < levels.size(); ++k) boundaries[k] = 0.5 * (levels[k] + levels[k + 1]);
  const CellMoments m = cell_moments(row, boundaries, levels);
  double total = 0.0;
  for (double v : m.w2) total += v;
  return 0.5 * total;
}

std::vector<double> uniform_levels(int count, double lo, double hi) {
  std::vector<double> levels(static_cast<std::size_t>(count));
  const double step = (hi - lo) / double(count - 1);
  for (int k = 0; k < count; ++k) levels[static_cast<std::size_t>(k)] = lo + step * k;
  return levels;
}

// Minimises f on [a, b] by golden-section search, keeping the best point seen (starting from best_x, *best_f).
template <typename F>
double golden_section(F&& f, double a, double b, int iterations, double best_x, double* best_f) {
  double bx = best_x, bf = *best_f;
  if (!(b > a)) return bx;
  double x1 = b - kGoldenRatio * (b - a), x2 = a + kGoldenRatio * (b - a);
  double f1 = f(x1), f2 = f(x2);
  auto note = [&](double x, double fx) {
    if (fx < bf) {
      bf = fx;
      bx = x;
    }
  };
  note(x1, f1);
  note(x2, f2);
  for (int it = 0; it < iterations; ++it) {
    if (f1 < f2) {
      b = x2;
      x2 = x1;
      f2 = f1;
      x1 = b - kGoldenRatio * (b - a);
      f1 = f(x1);
      note(x1, f1);
    } else {
      a = x1;
      x1 = x2;
      f1 = f2;
      x2 = a + kGoldenRatio * (b - a);
      f2 = f(x2);
      note(x2, f2);
    }
  }
  *best_f = bf;
  return bx;
}

Codebook make_uniform(CodebookKind kind, int bits, double lo, double hi) {
  const int count = 1 << bits;
  if (kind == CodebookKind::uniform_symmetric)
    return Codebook::uniform_symmetric(bits, 2.0 * std::max(std::fabs(lo), std::fabs(hi)) / double(count - 1));
  return Codebook::uniform_asymmetric(bits, (hi - lo) / double(count - 1), lo);
}

double exact_loss(const Codebook& cb, const WeightedRow& row) { return expected_loss(cb, row); }

}  // namespace

std::vector<double> weighted_quantile_levels(const WeightedRow& row, int count) {
  std::vector<double> levels(static_cast<std::size_t>(count), row.size() ? row.mu.front() : 0.0);
  const double total = row.total_weight();
  if (row.size() == 0) return levels;
  if (!(total > 0.0)) return uniform_levels(count, row.min(), row.max());
  // Quantile (k + 1/2) / K of the weights; when a heavy point would repeat a level, take the next distinct point
  // while enough distinct points remain (a repeated level starts an empty cell that Lloyd could never fill).
  std::size_t distinct_after = 0;  // distinct values strictly above mu[idx], counted lazily below
  std::vector<std::size_t> next_distinct(row.size(), row.size());
  for (std::size_t i = row.size(); i-- > 0;)
    next_distinct[i] = (i + 1 < row.size() && row.mu[i + 1] != row.mu[i]) ? i + 1
                       : (i + 1 < row.size() ? next_distinct[i + 1] : row.size());
  std::vector<std::size_t> distinct_from(row.size() + 1, 0);
  for (std::size_t i = row.size(); i-- > 0;)
    distinct_from[i] = 1 + (next_distinct[i] < row.size() ? distinct_from[next_distinct[i]] : 0);
  (void)distinct_after;
  std::size_t idx = 0;
  bool placed = false;
  for (int k = 0; k < count; ++k) {
    const double target = (double(k) + 0.5) / double(count) * total;
    std::size_t q = idx;
    while (q + 1 < row.size() && row.s0[q + 1] < target) ++q;
    const std::size_t remaining_levels = static_cast<std::size_t>(count - k);
    if (placed && row.mu[q] == levels[static_cast<std::size_t>(k - 1)] && next_distinct[q] < row.size() &&
        distinct_from[next_distinct[q]] >= remaining_levels)
      q = next_distinct[q];
    levels[static_cast<std::size_t>(k)] = row.mu[q];
    idx = q;
    placed = true;
  }
  return levels;
}

namespace {

struct LloydRun {
  std::vector<double> levels;
  double loss = std::numeric_limits<double>::infinity();
  int iterations = 0;
};

// Plain Lloyd-Max. An empty cell is re-seeded half a standard deviation beside the level of the cell with the
// largest distortion (splitting it), so no level is wasted while the data has more distinct points than levels.
LloydRun run_lloyd(const WeightedRow& row, std::vector<double> levels, const LloydParams& params, int budget) {
  std::sort(levels.begin(), levels.end());
  std::vector<double> boundaries(levels.size() - 1);
  LloydRun best;
  best.levels = levels;
  double previous = std::numeric_limits<double>::infinity();
  int it = 0;
  for (;;) {
    for (std::size_t k = 0; k + 1 < levels.size(); ++k) boundaries[k] = 0.5 * (levels[k] + levels[k + 1]);
    const CellMoments m = cell_moments(row, boundaries, levels);
    double current = 0.0;
    for (double v : m.w2) current += v;
    current *= 0.5;
    if (current < best.loss) {
      best.loss = current;
      best.levels = levels;
    }
    const bool converged =
        std::isfinite(previous) && previous - current <= params.relative_tolerance * previous;
    if (converged || it >= budget || current == 0.0) break;
    previous = current;
    ++it;
    std::vector<std::size_t> empty;
    for (std::size_t k = 0; k < levels.size(); ++k) {
      if (m.w0[k] > 0.0) levels[k] += m.w1[k] / m.w0[k];
      else empty.push_back(k);
    }
    if (!empty.empty()) {
      std::vector<double> distortion = m.w2;
      for (std::size_t e : empty) {
        const std::size_t worst =
            static_cast<std::size_t>(std::max_element(distortion.begin(), distortion.end()) - distortion.begin());
        if (!(distortion[worst] > 0.0) || !(m.w0[worst] > 0.0)) break;
        const double spread = std::sqrt(distortion[worst] / m.w0[worst]);
        levels[e] = levels[worst] + 0.5 * spread;
        levels[worst] -= 0.5 * spread;
        distortion[worst] = 0.0;
      }
      previous = std::numeric_limits<double>::infinity();  // a re-seed may raise the loss for one step
    }
    std::sort(levels.begin(), levels.end());
  }
  best.iterations = it;
  return best;
}

}  // namespace

std::vector<double> lloyd_iterate(const WeightedRow& row, std::vector<double> levels, const LloydParams& params,
                                  double* loss, int* iterations) {
  LloydRun run = run_lloyd(row, std::move(levels), params, params.max_iterations);
  if (loss) *loss = run.loss;
  if (iterations) *iterations = run.iterations;
  return run.levels;
}

Codebook design_uniform(const WeightedRow& row, int bits, CodebookKind kind, const UniformParams& params,
                        DesignStats* stats) {
  BQ_ASSERT(kind != CodebookKind::lloyd, "design_uniform needs a uniform kind");
  DesignStats out;
  if (row.size() == 0) {
    if (stats) *stats = out;
    return make_uniform(kind, bits, 0.0, 0.0);
  }
  const int count = 1 << bits;
  // The search objective: the row itself at tau = 0, its Gauss-Hermite proxy otherwise.
  const WeightedRow proxy = row.tau > 0.0 ? row.gauss_hermite_proxy() : WeightedRow{};
  const WeightedRow& search = row.tau > 0.0 ? proxy : row;

  double lo0 = row.min(), hi0 = row.max();
  if (kind == CodebookKind::uniform_symmetric) {
    const double reach = std::max(std::fabs(lo0), std::fabs(hi0));
    lo0 = -reach;
    hi0 = reach;
  }
  const double mid = 0.5 * (lo0 + hi0);
  auto raw_loss = [&](double lo, double hi) {
    if (kind == CodebookKind::uniform_symmetric) {
      const double reach = std::max(std::fabs(lo), std::fabs(hi));
      return levels_loss(search, uniform_levels(count, -reach, reach));
    }
    return levels_loss(search, uniform_levels(count, lo, hi));
  };

  double best_lo = lo0, best_hi = hi0, best = raw_loss(lo0, hi0);
  if (hi0 > lo0) {
    // Clipping matters most at low bit-widths; wide codebooks get a coarser grid.
    const int g = std::max(2, count > 16 ? params.grid_points / 2 : params.grid_points);
    const double shrink_step = (1.0 - params.min_shrink) / double(g - 1);
    auto end_at = [&](int a, double edge) { return mid + (1.0 - shrink_step * a) * (edge - mid); };
    if (kind == CodebookKind::uniform_symmetric) {
      for (int a = 1; a < g; ++a) {
        const double f = raw_loss(-end_at(a, hi0), end_at(a, hi0));
        if (f < best) {
          best = f;
          best_hi = end_at(a, hi0);
        }
      }
      const double step = shrink_step * hi0;
      double reach = golden_section([&](double r) { return raw_loss(-r, r); }, std::max(0.0, best_hi - step),
                                    std::min(hi0, best_hi + step), params.golden_iterations * params.rounds, best_hi,
                                    &best);
      best_lo = -reach;
      best_hi = reach;
    } else {
      // Each end shrinks independently: a (grid x grid) search, then alternating golden sections.
      for (int a = 0; a < g; ++a)
        for (int b = 0; b < g; ++b) {
          if (a == 0 && b == 0) continue;
          const double lo = end_at(a, lo0), hi = end_at(b, hi0);
          const double f = raw_loss(lo, hi);
          if (f < best) {
            best = f;
            best_lo = lo;
            best_hi = hi;
          }
        }
      const double step_lo = shrink_step * (mid - lo0), step_hi = shrink_step * (hi0 - mid);
      for (int round = 0; round < params.rounds; ++round) {
        best_lo = golden_section([&](double lo) { return raw_loss(lo, best_hi); }, std::max(lo0, best_lo - step_lo),
                                 std::min(mid, best_lo + step_lo), params.golden_iterations, best_lo, &best);
        best_hi = golden_section([&](double hi) { return raw_loss(best_lo, hi); }, std::max(mid, best_hi - step_hi),
                                 std::min(hi0, best_hi + step_hi), params.golden_iterations, best_hi, &best);
      }
    }
  }
  // Exact losses of the fp16-rounded search result and of the rounded min-max range; keep the better.
  Codebook searched = make_uniform(kind, bits, best_lo, best_hi);
  Codebook minmax = make_uniform(kind, bits, lo0, hi0);
  const double searched_loss = exact_loss(searched, row);
  const double minmax_loss = exact_loss(minmax, row);
  out.loss = std::min(searched_loss, minmax_loss);
  if (stats) *stats = out;
  return searched_loss <= minmax_loss ? searched : minmax;
}

std::vector<double> lloyd_levels(const WeightedRow& points, int count, const std::vector<double>& uniform_levels,
                                 const LloydParams& params, double* loss, int* iterations) {
  // Starting points: the exact optimum of the (compressed) point set where affordable, the uniform design, and
  // weighted quantiles; Lloyd-Max from each, best kept. Plain Lloyd from one start often stalls far from the
  // optimum once there are more than a few levels.
  std::vector<std::vector<double>> starts;
  if (count <= params.dp_max_levels) {
    const std::size_t budget =
        std::max<std::size_t>(params.dp_points, static_cast<std::size_t>(params.dp_points_per_level * count));
    std::vector<double> centers = optimal_weighted_kmeans_fast(compress_sorted(points, budget), count).centers;
    while (!centers.empty() && static_cast<int>(centers.size()) < count) centers.push_back(centers.back());
    if (!centers.empty()) starts.push_back(std::move(centers));
  } else {
    starts.push_back(weighted_quantile_levels(points, count));
  }
  if (!uniform_levels.empty()) starts.push_back(uniform_levels);
  LloydRun best;
  int total_iterations = 0;
  for (auto& start : starts) {
    LloydRun run = run_lloyd(points, std::move(start), params, params.max_iterations);
    total_iterations += run.iterations;
    if (run.loss < best.loss) best = std::move(run);
  }
  if (loss) *loss = best.loss;
  if (iterations) *iterations = total_iterations;
  return best.levels;
}

Codebook design_lloyd(const WeightedRow& row, int bits, const LloydParams& lloyd, const UniformParams& uniform,
                      DesignStats* stats, const Codebook* uniform_design) {
  const int count = 1 << bits;
  DesignStats out;
  if (row.size() == 0) {
    if (stats) *stats = out;
    return Codebook::lloyd(bits, std::vector<double>(static_cast<std::size_t>(count), 0.0));
  }
  const Codebook uniform_cb =
      uniform_design ? *uniform_design : design_uniform(row, bits, CodebookKind::uniform_asymmetric, uniform);
  const std::vector<double> uniform_levels(uniform_cb.levels.begin(), uniform_cb.levels.end());
  std::vector<double> levels;
  int iterations = 0;
  if (row.tau > 0.0) {
    // Design on the Gauss-Hermite proxy (cheap), then polish with exact Gaussian-cell iterations, which can
    // only lower the exact loss.
    levels = lloyd_levels(row.gauss_hermite_proxy(), count, uniform_levels, lloyd, nullptr, &iterations);
    LloydParams polish = lloyd;
    polish.max_iterations = std::min(lloyd.max_iterations, lloyd.exact_polish_iterations);
    int polish_iterations = 0;
    levels = lloyd_iterate(row, levels, polish, nullptr, &polish_iterations);
    iterations += polish_iterations;
  } else {
    levels = lloyd_levels(row, count, uniform_levels, lloyd, nullptr, &iterations);
  }
  Codebook lloyd_cb = Codebook::lloyd(bits, levels);
  const double lloyd_loss = exact_loss(lloyd_cb, row);
  out.iterations = iterations;
  // The uniform design's levels as a table (fp16-rounded like any table): Lloyd never returns worse than that.
  Codebook fallback = Codebook::lloyd(bits, uniform_levels);
  const double fallback_loss = exact_loss(fallback, row);
  if (fallback_loss < lloyd_loss) {
    out.fell_back_to_uniform = true;
    out.loss = fallback_loss;
    if (stats) *stats = out;
    return fallback;
  }
  out.loss = lloyd_loss;
  if (stats) *stats = out;
  return lloyd_cb;
}

const char* level_scale_name(LevelScale scale) {
  switch (scale) {
    case LevelScale::automatic: return "auto";
    case LevelScale::none: return "none";
    case LevelScale::gain: return "gain";
    case LevelScale::energy: return "energy";
  }
  return "?";
}

LevelScale level_scale_from_name(const std::string& name) {
  for (LevelScale s : {LevelScale::automatic, LevelScale::none, LevelScale::gain, LevelScale::energy})
    if (name == level_scale_name(s)) return s;
  throw UserError(ExitCode::usage, "unknown level scale '" + name + "' (expected auto, none, gain or energy)");
}

Codebook rescale_levels(const Codebook& codebook, const WeightedRow& row, LevelScale scale) {
  if (scale != LevelScale::gain && scale != LevelScale::energy) return codebook;
  // Sums over the sorted means from the row's centred prefix sums: sum pi x over a run of points is
  // S1 + c S0, sum pi x^2 is S2 + 2 c S1 + c^2 S0; so a gain costs O(K log n), whatever the row's tau.
  const std::size_t n = row.size();
  if (n == 0) return codebook;
  const double c = row.center;
  const double energy = row.s2[n] + 2.0 * c * row.s1[n] + c * c * row.s0[n];
  if (!(energy > 0.0) || !std::isfinite(energy)) return codebook;
  // The quantity that must be one: the gain sum pi q w / E, or the energy ratio sum pi q^2 / E. A factor f
  // with the cells held multiplies the first by f and the second by f^2.
  const double power = scale == LevelScale::gain ? 1.0 : 2.0;
  auto gain = [&](const Codebook& cb) {
    // Cell k holds the points in (t_{k-1}, t_k], as Codebook::encode assigns them.
    double projected = 0.0;
    std::size_t begin = 0;
    for (std::size_t k = 0; k < cb.levels.size(); ++k) {
      std::size_t end = n;
      if (k < cb.boundaries.size())
        end = static_cast<std::size_t>(
            std::upper_bound(row.mu.begin() + static_cast<std::ptrdiff_t>(begin), row.mu.end(), cb.boundaries[k]) -
            row.mu.begin());
      if (end > begin) {
        const double level = cb.levels[k];
        projected += scale == LevelScale::gain
                         ? level * ((row.s1[end] - row.s1[begin]) + c * (row.s0[end] - row.s0[begin]))
                         : level * level * (row.s0[end] - row.s0[begin]);
      }
      begin = end;
    }
    return projected / energy;
  };
  auto scaled = [](const Codebook& base, double factor) {
    switch (base.kind) {
      case CodebookKind::lloyd: {
        std::vector<double> levels(base.levels.begin(), base.levels.end());
        for (double& v : levels) v *= factor;
        return Codebook::lloyd(base.bits, levels);
      }
      case CodebookKind::uniform_asymmetric:
        return Codebook::uniform_asymmetric(base.bits, double(base.scale) * factor, double(base.offset) * factor);
      case CodebookKind::uniform_symmetric: break;
    }
    return Codebook::uniform_symmetric(base.bits, double(base.scale) * factor);
  };
  // Fixed-point steps factor <- factor / g^(1/power) with nearest-level cells; the step with the ratio nearest
  // one is kept (the input included). Where the cells' movement keeps it from one (an asymmetric table on a
  // skewed row: scaling about zero moves its cell ends across many points), a last step scales the levels with
  // the cells held, where the ratio is the factor to the power.
  Codebook best = codebook;
  double g = gain(codebook);
  double best_gain = g, best_factor = 1.0;
  double factor = 1.0;
  for (int step = 0; step < 32 && std::abs(best_gain - 1.0) > 1e-4 && g > 0.0; ++step) {
    factor = std::clamp(factor / std::pow(g, 1.0 / power), 0.25, 4.0);
    Codebook cb = scaled(codebook, factor);
    g = gain(cb);
    if (std::abs(g - 1.0) < std::abs(best_gain - 1.0)) {
      best_gain = g;
      best_factor = factor;
      best = std::move(cb);
    }
  }
  if (std::abs(best_gain - 1.0) > 1e-4 && best_gain > 0.0) {
    const double last = std::clamp(best_factor / std::pow(best_gain, 1.0 / power), 0.25, 4.0) / best_factor;
    Codebook held = scaled(best, last);
    held.boundaries = best.boundaries;
    if (std::abs(gain(held) - 1.0) < std::abs(best_gain - 1.0)) best = std::move(held);
  }
  return best;
}

}  // namespace bayesq

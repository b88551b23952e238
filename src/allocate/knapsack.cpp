#include "bayesq/allocate/knapsack.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <queue>
#include <tuple>

#include "bayesq/common/errors.h"
#include "bayesq/common/parallel.h"

namespace bayesq {

namespace {

int cheapest(const std::vector<KnapsackOption>& options) {
  int best = 0;
  for (int i = 1; i < static_cast<int>(options.size()); ++i) {
    const auto& o = options[static_cast<std::size_t>(i)];
    const auto& b = options[static_cast<std::size_t>(best)];
    if (o.cost < b.cost || (o.cost == b.cost && o.loss < b.loss)) best = i;
  }
  return best;
}

void finish(const KnapsackProblem& problem, KnapsackSolution& s) {
  s.cost = 0;
  s.loss = 0.0;
  for (std::size_t b = 0; b < problem.blocks.size(); ++b) {
    const auto& o = problem.blocks[b][static_cast<std::size_t>(s.choice[b])];
    s.cost += o.cost;
    s.loss += o.loss;
  }
  s.feasible = s.cost <= problem.budget;
}

// Spends what is left of the budget: repeatedly the option (hull or not) with the largest loss reduction that
// fits. Returns the number of changes.
int64_t fill_pass(const KnapsackProblem& problem, std::vector<int>& choice, int64_t used) {
  const std::size_t n = problem.blocks.size();
  int64_t changes = 0;
  for (;;) {
    double best_gain = 0.0;
    std::size_t best_block = n;
    int best_option = -1;
    for (std::size_t b = 0; b < n; ++b) {
      const auto& cur = problem.blocks[b][static_cast<std::size_t>(choice[b])];
      for (std::size_t o = 0; o < problem.blocks[b].size(); ++o) {
        const auto& opt = problem.blocks[b][o];
        const double gain = cur.loss - opt.loss;
        if (gain > best_gain && used + (opt.cost - cur.cost) <= problem.budget) {
          best_gain = gain;
          best_block = b;
          best_option = static_cast<int>(o);
        }
      }
    }
    if (best_block == n) return changes;
    const auto& cur = problem.blocks[best_block][static_cast<std::size_t>(choice[best_block])];
    used += problem.blocks[best_block][static_cast<std::size_t>(best_option)].cost - cur.cost;
    choice[best_block] = best_option;
    ++changes;
  }
}

}  // namespace

int64_t minimum_cost(const KnapsackProblem& problem) {
  int64_t total = 0;
  for (const auto& options : problem.blocks) {
    BQ_ASSERT(!options.empty(), "a block without options");
    total += options[static_cast<std::size_t>(cheapest(options))].cost;
  }
  return total;
}

std::vector<int> lower_convex_hull(const std::vector<KnapsackOption>& options) {
  std::vector<int> order(options.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    const auto& x = options[static_cast<std::size_t>(a)];
    const auto& y = options[static_cast<std::size_t>(b)];
    return std::tie(x.cost, x.loss, a) < std::tie(y.cost, y.loss, b);
  });
  std::vector<int> hull;
  for (int idx : order) {
    const auto& p = options[static_cast<std::size_t>(idx)];
    // Only points that strictly lower the loss can be upgrades.
    if (!hull.empty()) {
      const auto& last = options[static_cast<std::size_t>(hull.back())];
      if (p.loss >= last.loss) continue;
      if (p.cost == last.cost) hull.pop_back();
    }
    // Pop while the last point is not below the segment from its predecessor to p (non-convex turn).
    while (hull.size() >= 2) {
      const auto& a = options[static_cast<std::size_t>(hull[hull.size() - 2])];
      const auto& b = options[static_cast<std::size_t>(hull.back())];
      const long double cross = (static_cast<long double>(b.cost - a.cost)) * (p.loss - a.loss) -
                                (static_cast<long double>(b.loss - a.loss)) * (p.cost - a.cost);
      if (cross <= 0) hull.pop_back();
      else break;
    }
    hull.push_back(idx);
  }
  return hull;
}

KnapsackSolution solve_greedy(const KnapsackProblem& problem) {
  const std::size_t n = problem.blocks.size();
  KnapsackSolution s;
  s.choice.resize(n);
  std::vector<std::vector<int>> hulls(n);
  std::vector<std::size_t> position(n, 0);
  int64_t used = 0;
  for (std::size_t b = 0; b < n; ++b) {
    hulls[b] = lower_convex_hull(problem.blocks[b]);
    s.choice[b] = hulls[b][0];
    used += problem.blocks[b][static_cast<std::size_t>(s.choice[b])].cost;
    for (std::size_t h = 1; h < hulls[b].size(); ++h) {
      const auto& lo = problem.blocks[b][static_cast<std::size_t>(hulls[b][h - 1])];
      const auto& hi = problem.blocks[b][static_cast<std::size_t>(hulls[b][h])];
      s.largest_upgrade_gain = std::max(s.largest_upgrade_gain, lo.loss - hi.loss);
    }
  }
  if (used > problem.budget) {
    finish(problem, s);
    return s;
  }
  // Max-heap of next upgrades keyed by gamma; ties broken by block index for determinism.
  using Entry = std::pair<double, std::size_t>;
  auto cmp = [](const Entry& a, const Entry& b) {
    return a.first < b.first || (a.first == b.first && a.second > b.second);
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(cmp)> heap(cmp);
  auto push_next = [&](std::size_t b) {
    const std::size_t h = position[b];
    if (h + 1 >= hulls[b].size()) return;
    const auto& cur = problem.blocks[b][static_cast<std::size_t>(hulls[b][h])];
    const auto& nxt = problem.blocks[b][static_cast<std::size_t>(hulls[b][h + 1])];
    heap.push({(cur.loss - nxt.loss) / static_cast<double>(nxt.cost - cur.cost), b});
  };
  for (std::size_t b = 0; b < n; ++b) push_next(b);
  while (!heap.empty()) {
    const std::size_t b = heap.top().second;
    heap.pop();
    const auto& cur = problem.blocks[b][static_cast<std::size_t>(hulls[b][position[b]])];
    const auto& nxt = problem.blocks[b][static_cast<std::size_t>(hulls[b][position[b] + 1])];
    if (used + (nxt.cost - cur.cost) > problem.budget) continue;  // retires this block's hull chain
    used += nxt.cost - cur.cost;
    ++position[b];
    s.choice[b] = hulls[b][position[b]];
    ++s.upgrades;
    push_next(b);
  }
  s.fill_upgrades = fill_pass(problem, s.choice, used);
  finish(problem, s);
  return s;
}

KnapsackSolution solve_dp(const KnapsackProblem& problem, int64_t max_states) {
  const std::size_t n = problem.blocks.size();
  KnapsackSolution s;
  s.choice.assign(n, 0);
  std::vector<int64_t> base(n);
  int64_t base_total = 0;
  int64_t unit = 0;
  for (std::size_t b = 0; b < n; ++b) {
    base[b] = problem.blocks[b][static_cast<std::size_t>(cheapest(problem.blocks[b]))].cost;
    base_total += base[b];
    for (const auto& o : problem.blocks[b]) unit = std::gcd(unit, o.cost - base[b]);
  }
  if (base_total > problem.budget) {
    for (std::size_t b = 0; b < n; ++b) s.choice[b] = cheapest(problem.blocks[b]);
    finish(problem, s);
    return s;
  }
  if (unit == 0) unit = 1;
  const int64_t capacity_bits = problem.budget - base_total;
  int64_t capacity = capacity_bits / unit;
  if (capacity > max_states) {
    // Coarsen: extra costs rounded up, so every DP solution stays feasible.
    unit = unit * ((capacity + max_states - 1) / max_states);
    capacity = capacity_bits / unit;
    s.exact = false;
  }
  s.resolution = unit;
  // Each option's extra cost over its block's cheapest, in DP units (rounded up); options beyond the capacity can
  // never be chosen. widest[b]: the largest of block b's.
  std::vector<std::vector<int64_t>> units(n);
  std::vector<int64_t> widest(n, 0);
  for (std::size_t b = 0; b < n; ++b) {
    BQ_ASSERT(problem.blocks[b].size() < 256, "too many options for one block");
    for (const auto& o : problem.blocks[b]) {
      units[b].push_back((o.cost - base[b] + unit - 1) / unit);
      if (units[b].back() <= capacity) widest[b] = std::max(widest[b], units[b].back());
    }
  }
  // Note [States the DP needs]: best_b[c], the least loss of blocks 0..b in at most c units, is needed only for
  // c in [lo_b, hi_b]:
  //  - hi_b = min(capacity, widest[0] + ... + widest[b]): from there on every choice of blocks 0..b fits, so
  //    best_b and the option chosen for block b are those at hi_b (the same sums in the same order, bit for bit);
  //    a read above hi_b reads hi_b.
  //  - lo_b = max(0, capacity - (widest[b+1] + ... + widest[n-1])), or hi_b if that is lower: the trace back
  //    from the full capacity never goes lower, nor does block b+1 read lower.
  // The values at those states, and the options chosen, are those of the DP over every state (test
  // Knapsack.DpOverTheStatesItNeedsIsThePlainDp), at a fraction of the work when the budget is far from both ends;
  // the states of a block are independent, so they are computed in parallel.
  std::vector<int64_t> lo(n), hi(n);
  int64_t sum = 0;
  for (std::size_t b = 0; b < n; ++b) {
    sum = std::min(capacity, sum + widest[b]);
    hi[b] = sum;
  }
  sum = 0;
  for (std::size_t b = n; b-- > 0;) {
    lo[b] = std::min(hi[b], std::max<int64_t>(0, capacity - sum));  // above hi[b]: read at hi[b]
    sum = std::min(capacity, sum + widest[b]);
  }
  // choice_at[offset[b] + c - lo[b]]: option of block b in the optimum that uses at most c units for blocks 0..b.
  std::vector<std::size_t> offset(n + 1, 0);
  for (std::size_t b = 0; b < n; ++b) offset[b + 1] = offset[b] + static_cast<std::size_t>(hi[b] - lo[b] + 1);
  std::vector<uint8_t> choice_at(offset[n], 0);
  const double inf = std::numeric_limits<double>::infinity();
  // best_{b-1} over [prev_lo, prev_hi]; before block 0 every state holds the empty choice, loss 0.
  std::vector<double> best(1, 0.0), next;
  int64_t prev_lo = 0, prev_hi = 0;
  constexpr int64_t kStatesPerTask = 1 << 14;
  for (std::size_t b = 0; b < n; ++b) {
    const std::vector<KnapsackOption>& options = problem.blocks[b];
    const std::vector<int64_t>& w = units[b];
    next.assign(static_cast<std::size_t>(hi[b] - lo[b] + 1), inf);
    const int64_t tasks = (hi[b] - lo[b] + kStatesPerTask) / kStatesPerTask;
    parallel_for(static_cast<std::size_t>(tasks), [&](std::size_t task) {
      const int64_t first = lo[b] + static_cast<int64_t>(task) * kStatesPerTask;
      const int64_t last = std::min(hi[b], first + kStatesPerTask - 1);
      double* least = next.data() + (first - lo[b]);
      uint8_t* chosen = choice_at.data() + offset[b] + static_cast<std::size_t>(first - lo[b]);
      // Options in order, a strictly lower loss replacing the one kept: the plain DP's choice at every state.
      for (std::size_t o = 0; o < options.size(); ++o) {
        const int64_t from = std::max(first, w[o]);
        if (from > last) continue;
        const double loss = options[o].loss;
        const uint8_t id = static_cast<uint8_t>(o);
        // States whose read lies within best_{b-1}'s range, then those that read its last state.
        const int64_t split = std::min(last, prev_hi + w[o]);
        const int64_t shift = first - w[o] - prev_lo;  // state first + i reads best_{b-1} at i + shift
        for (int64_t i = from - first; i <= split - first; ++i) {
          const double v = best[static_cast<std::size_t>(i + shift)] + loss;
          if (v < least[i]) {
            least[i] = v;
            chosen[i] = id;
          }
        }
        const double top = best[static_cast<std::size_t>(prev_hi - prev_lo)] + loss;
        for (int64_t i = std::max(from, split + 1) - first; i <= last - first; ++i)
          if (top < least[i]) {
            least[i] = top;
            chosen[i] = id;
          }
      }
    });
    std::swap(best, next);
    prev_lo = lo[b];
    prev_hi = hi[b];
  }
  int64_t c = capacity;
  for (std::size_t b = n; b-- > 0;) {
    const int o = choice_at[offset[b] + static_cast<std::size_t>(std::min(c, hi[b]) - lo[b])];
    s.choice[b] = o;
    c -= units[b][static_cast<std::size_t>(o)];
  }
  if (!s.exact) {
    // Costs were rounded up: spend the slack that left.
    int64_t used = 0;
    for (std::size_t b = 0; b < n; ++b) used += problem.blocks[b][static_cast<std::size_t>(s.choice[b])].cost;
    s.fill_upgrades = fill_pass(problem, s.choice, used);
  }
  finish(problem, s);
  return s;
}

}  // namespace bayesq

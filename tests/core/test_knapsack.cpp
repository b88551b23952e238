// Greedy vs exact DP vs brute force on random multiple-choice knapsacks (METHOD.md §4).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <random>

#include "bayesq/allocate/knapsack.h"
#include "bayesq/common/parallel.h"

using namespace bayesq;

namespace {

// Random per-block options shaped like loss tables: cost grows with bits, loss mostly falls (sometimes not).
KnapsackProblem random_problem(std::mt19937& rng, int blocks, int options) {
  std::uniform_int_distribution<int> numel(3, 40), meta(0, 12);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  KnapsackProblem p;
  for (int b = 0; b < blocks; ++b) {
    const int n = numel(rng);
    std::vector<KnapsackOption> opts;
    double loss = 10.0 * unit(rng) + 1.0;
    for (int o = 0; o < options; ++o) {
      const int bits = o + 1 + (o >= 5 ? 1 : 0);
      loss *= 0.2 + 0.7 * unit(rng);
      if (unit(rng) < 0.1) loss *= 1.5;  // an occasional non-monotone step
      opts.push_back({static_cast<int64_t>(n * bits + meta(rng) * (1 << (bits / 2))), loss});
    }
    p.blocks.push_back(opts);
  }
  return p;
}

// The cost of every block's dearest option.
int64_t maximum_cost(const KnapsackProblem& p) {
  int64_t total = 0;
  for (const auto& options : p.blocks) {
    int64_t most = 0;
    for (const auto& o : options) most = std::max(most, o.cost);
    total += most;
  }
  return total;
}

double brute_force(const KnapsackProblem& p) {
  double best = std::numeric_limits<double>::infinity();
  std::function<void(std::size_t, int64_t, double)> go = [&](std::size_t b, int64_t cost, double loss) {
    if (cost > p.budget) return;
    if (b == p.blocks.size()) {
      best = std::min(best, loss);
      return;
    }
    for (const auto& o : p.blocks[b]) go(b + 1, cost + o.cost, loss + o.loss);
  };
  go(0, 0, 0.0);
  return best;
}

// The multiple-choice knapsack DP over every state up to the capacity, one block after the other, options in
// order with a strictly lower loss replacing the one kept (the allocator's DP before Note [States the DP needs]):
// the choices solve_dp must make, bit for bit. Coarsened as solve_dp does, and then, as it does, the slack spent
// by the largest loss reduction that fits, one option at a time.
std::vector<int> plain_dp(const KnapsackProblem& p, int64_t max_states) {
  const std::size_t n = p.blocks.size();
  std::vector<int64_t> base(n);
  int64_t base_total = 0, unit = 0;
  for (std::size_t b = 0; b < n; ++b) {
    base[b] = std::numeric_limits<int64_t>::max();
    for (const auto& o : p.blocks[b]) base[b] = std::min(base[b], o.cost);
    base_total += base[b];
    for (const auto& o : p.blocks[b]) unit = std::gcd(unit, o.cost - base[b]);
  }
  if (unit == 0) unit = 1;
  int64_t capacity = (p.budget - base_total) / unit;
  const bool coarse = capacity > max_states;
  if (coarse) {
    unit *= (capacity + max_states - 1) / max_states;
    capacity = (p.budget - base_total) / unit;
  }
  const std::size_t states = static_cast<std::size_t>(capacity) + 1;
  std::vector<double> best(states, 0.0), next(states);
  std::vector<std::vector<int>> choice(n, std::vector<int>(states, 0));
  for (std::size_t b = 0; b < n; ++b) {
    std::fill(next.begin(), next.end(), std::numeric_limits<double>::infinity());
    for (std::size_t o = 0; o < p.blocks[b].size(); ++o) {
      const int64_t w = (p.blocks[b][o].cost - base[b] + unit - 1) / unit;
      for (int64_t c = w; c <= capacity; ++c) {
        const double v = best[static_cast<std::size_t>(c - w)] + p.blocks[b][o].loss;
        if (v < next[static_cast<std::size_t>(c)]) {
          next[static_cast<std::size_t>(c)] = v;
          choice[b][static_cast<std::size_t>(c)] = static_cast<int>(o);
        }
      }
    }
    std::swap(best, next);
  }
  std::vector<int> out(n);
  int64_t c = capacity;
  for (std::size_t b = n; b-- > 0;) {
    out[b] = choice[b][static_cast<std::size_t>(c)];
    c -= (p.blocks[b][static_cast<std::size_t>(out[b])].cost - base[b] + unit - 1) / unit;
  }
  if (!coarse) return out;
  int64_t used = 0;
  for (std::size_t b = 0; b < n; ++b) used += p.blocks[b][static_cast<std::size_t>(out[b])].cost;
  for (;;) {
    double gain = 0.0;
    std::size_t block = n;
    int option = -1;
    for (std::size_t b = 0; b < n; ++b)
      for (std::size_t o = 0; o < p.blocks[b].size(); ++o) {
        const auto& cur = p.blocks[b][static_cast<std::size_t>(out[b])];
        const auto& opt = p.blocks[b][o];
        if (cur.loss - opt.loss > gain && used + opt.cost - cur.cost <= p.budget) {
          gain = cur.loss - opt.loss;
          block = b;
          option = static_cast<int>(o);
        }
      }
    if (block == n) return out;
    used += p.blocks[block][static_cast<std::size_t>(option)].cost - p.blocks[block][static_cast<std::size_t>(out[block])].cost;
    out[block] = option;
  }
}

}  // namespace

TEST(Knapsack, DpOverTheStatesItNeedsIsThePlainDp) {
  // Many blocks, budgets from the cheapest allocation to beyond the dearest, exact and coarsened, and losses on a
  // coarse grid so that equal sums (ties the option order decides) are common.
  std::mt19937 rng(41);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::uniform_int_distribution<int> option_count(1, 14), block_count(1, 40);
  int coarsened = 0, compared = 0;
  for (int trial = 0; trial < 120; ++trial) {
    KnapsackProblem p = random_problem(rng, block_count(rng), option_count(rng));
    if (trial % 2 == 1)
      for (auto& options : p.blocks)
        for (auto& o : options) o.loss = std::round(o.loss * 4.0) / 4.0;
    const int64_t lo = minimum_cost(p), hi = maximum_cost(p);
    p.budget = lo + static_cast<int64_t>(unit(rng) * 1.2 * double(hi - lo));
    const int64_t max_states = trial % 3 == 0 ? 50 : 2'000'000;
    const std::vector<int> expected = plain_dp(p, max_states);
    for (int threads : {1, 3}) {
      set_num_threads(threads);
      KnapsackSolution dp = solve_dp(p, max_states);
      set_num_threads(0);
      ++(dp.exact ? compared : coarsened);
      EXPECT_EQ(dp.choice, expected) << "trial " << trial << ", " << threads << " threads";
    }
  }
  EXPECT_GT(compared, 60);
  EXPECT_GT(coarsened, 20);
}

TEST(Knapsack, DpEqualsBruteForceAndGreedyIsWithinOneUpgrade) {
  std::mt19937 rng(17);
  std::uniform_int_distribution<int> block_count(1, 10);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int trial = 0; trial < 60; ++trial) {
    // Brute force over up to 10 blocks x 6 options (6^10 leaves) is slow: keep the large cases few.
    const int blocks = trial < 4 ? 10 : std::min(block_count(rng), 7);
    KnapsackProblem p = random_problem(rng, blocks, 6);
    const int64_t lo = minimum_cost(p), hi = maximum_cost(p);
    p.budget = lo + static_cast<int64_t>(unit(rng) * double(hi - lo));
    const double exact = brute_force(p);
    const KnapsackSolution dp = solve_dp(p);
    const KnapsackSolution greedy = solve_greedy(p);
    ASSERT_TRUE(dp.feasible);
    ASSERT_TRUE(greedy.feasible);
    EXPECT_TRUE(dp.exact);
    EXPECT_LE(dp.cost, p.budget);
    EXPECT_LE(greedy.cost, p.budget);
    EXPECT_NEAR(dp.loss, exact, 1e-9 * (1.0 + exact)) << "trial " << trial;
    EXPECT_GE(greedy.loss, exact - 1e-9 * (1.0 + exact));
    EXPECT_LE(greedy.loss, exact + greedy.largest_upgrade_gain + 1e-9) << "trial " << trial;
  }
}

TEST(Knapsack, GreedyIsOptimalAtItsBreakpoints) {
  std::mt19937 rng(23);
  for (int trial = 0; trial < 40; ++trial) {
    KnapsackProblem p = random_problem(rng, 8, 6);
    // Walk the greedy path with an unlimited budget: the cumulative cost after each hull upgrade (in gamma order)
    // is a breakpoint. Re-solve with that exact budget; greedy must equal the DP optimum.
    std::vector<std::vector<int>> hulls;
    std::vector<std::pair<double, std::pair<int, int>>> upgrades;  // (gamma, (block, hull step))
    int64_t cost = 0;
    for (std::size_t b = 0; b < p.blocks.size(); ++b) {
      hulls.push_back(lower_convex_hull(p.blocks[b]));
      cost += p.blocks[b][hulls[b][0]].cost;
      for (std::size_t h = 1; h < hulls[b].size(); ++h) {
        const auto& x = p.blocks[b][hulls[b][h - 1]];
        const auto& y = p.blocks[b][hulls[b][h]];
        upgrades.push_back({(x.loss - y.loss) / double(y.cost - x.cost), {int(b), int(h)}});
      }
    }
    std::stable_sort(upgrades.begin(), upgrades.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    std::vector<int64_t> breakpoints = {cost};
    for (const auto& u : upgrades) {
      const auto& hull = hulls[static_cast<std::size_t>(u.second.first)];
      const auto& blk = p.blocks[static_cast<std::size_t>(u.second.first)];
      cost += blk[hull[u.second.second]].cost - blk[hull[u.second.second - 1]].cost;
      breakpoints.push_back(cost);
    }
    for (int64_t budget : breakpoints) {
      p.budget = budget;
      const KnapsackSolution greedy = solve_greedy(p);
      const KnapsackSolution dp = solve_dp(p);
      EXPECT_NEAR(greedy.loss, dp.loss, 1e-9 * (1.0 + dp.loss)) << "trial " << trial << " budget " << budget;
    }
  }
}

TEST(Knapsack, LowerConvexHullDropsDominatedAndNonConvexPoints) {
  // (1,10) (2,4) (3,3.5) (4,1) (5,2): (3,3.5) lies above the segment (2,4)-(4,1); (5,2) is dominated.
  const std::vector<KnapsackOption> options = {{1, 10.0}, {2, 4.0}, {3, 3.5}, {4, 1.0}, {5, 2.0}};
  EXPECT_EQ(lower_convex_hull(options), (std::vector<int>{0, 1, 3}));
}

TEST(Knapsack, CoarsenedDpStaysFeasible) {
  std::mt19937 rng(31);
  KnapsackProblem p = random_problem(rng, 10, 6);
  p.budget = minimum_cost(p) + 150;
  const KnapsackSolution coarse = solve_dp(p, 20);
  EXPECT_FALSE(coarse.exact);
  EXPECT_GT(coarse.resolution, 1);
  EXPECT_LE(coarse.cost, p.budget);
  EXPECT_GE(coarse.loss, solve_dp(p).loss - 1e-12);
}

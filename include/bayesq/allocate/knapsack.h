// Multiple-choice knapsack over per-block options (METHOD.md §4): choose one option per block to minimise the
// summed loss subject to the summed cost <= budget. Costs are integers (bits).
//
//  - solve_greedy: the paper's allocator on each block's lower convex hull of (cost, loss): start every block at
//    its cheapest option, then repeatedly apply the upgrade with the largest gamma = dL / dC that still fits,
//    from a max-heap (O(K log K) for K upgrades); an upgrade that no longer fits retires its block. On hulls
//    this solves the LP relaxation up to one fractional upgrade, so it is optimal whenever the budget falls on a
//    greedy breakpoint and otherwise within the largest single upgrade's loss reduction of the optimum.
//    A final fill pass spends any budget left on the option (hull or not) with the largest loss reduction that
//    fits, which can only lower the loss.
//  - solve_dp: exact dynamic programming over cost, in units of the gcd of the options' extra costs; if the
//    capacity exceeds max_states units, costs are rounded *up* to a coarser unit (still feasible, no longer
//    exact; the fill pass then spends the rounding slack) and the result says so.
// Note [Greedy and big blocks]: greedy can be far from the optimum when one block holds much of the model: after
// the small high-gamma upgrades, that block's next upgrade no longer fits. On a Fashion-MNIST CNN whose first
// linear layer holds 75% of the weights, greedy at 2.05 bits left it at 1 bit for 3x the KL of the DP's choice.
// That is why bayesq defaults to the DP.
#pragma once

#include <cstdint>
#include <vector>

namespace bayesq {

struct KnapsackOption {
  int64_t cost = 0;
  double loss = 0.0;
};

struct KnapsackProblem {
  std::vector<std::vector<KnapsackOption>> blocks;  // at least one option per block
  int64_t budget = 0;
};

struct KnapsackSolution {
  std::vector<int> choice;  // option index per block
  int64_t cost = 0;
  double loss = 0.0;
  bool feasible = false;
  // greedy
  int64_t upgrades = 0;       // hull upgrades applied
  int64_t fill_upgrades = 0;  // fill-pass upgrades
  double largest_upgrade_gain = 0.0;  // largest loss reduction among the hull upgrades of any block
  // dp
  int64_t resolution = 1;  // cost unit of the DP table, in bits
  bool exact = true;
};

int64_t minimum_cost(const KnapsackProblem& problem);
// Indices of a block's options on its lower convex hull, in ascending cost (first = cheapest, lowest loss).
std::vector<int> lower_convex_hull(const std::vector<KnapsackOption>& options);

KnapsackSolution solve_greedy(const KnapsackProblem& problem);
KnapsackSolution solve_dp(const KnapsackProblem& problem, int64_t max_states = 2'000'000);

}  // namespace bayesq

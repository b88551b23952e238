// LossTable -> Allocation: one (bit-width, codebook kind) per block under a global budget (METHOD.md §4).
//
// The budget is an average over quantized weights with metadata included:
//   sum_b C_b <= floor(B * sum_b numel_b),
// where blocks kept in floating point (--keep-fp) count neither in the sum of costs nor in the weights.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bayesq/allocate/knapsack.h"
#include "bayesq/common/errors.h"
#include "bayesq/table/loss_table.h"

namespace bayesq {

enum class AllocatorKind { greedy, dp };
const char* allocator_kind_name(AllocatorKind kind);
AllocatorKind allocator_kind_from_name(const std::string& name);  // throws UserError(usage)

// Blocks whose name matches `pattern` (std::regex, ECMAScript, search semantics) must use min..max bits.
struct BitsRule {
  std::string pattern;
  int min_bits = 1;
  int max_bits = 8;
};

struct AllocationParams {
  double bits_per_weight = 3.0;
  AllocatorKind allocator = AllocatorKind::dp;  // Note [Greedy and big blocks] in knapsack.h
  std::vector<std::string> keep_fp;  // regexes of blocks left in floating point
  std::vector<BitsRule> rules;
  bool certify = false;              // greedy: also solve the DP and report the gap
  int64_t dp_max_states = 2'000'000;
  // The entries each block may choose from, per table block and entry (empty: all of them). Every allowed entry
  // must be measured (LossEntry::measured); the option prefilter gives each budget its own set.
  std::vector<std::vector<bool>> allowed_entries;
};

struct BlockChoice {
  std::string name;
  bool keep_fp = false;
  int entry = -1;  // index into the table's entries; -1 when kept in floating point
  int bits = 0;
  CodebookKind kind = CodebookKind::lloyd;
  int64_t cost_bits = 0;      // code_bits + metadata_bits
  int64_t code_bits = 0;
  int64_t metadata_bits = 0;
  double expected_loss = 0.0;
};

struct Allocation {
  std::vector<BlockChoice> blocks;
  std::string allocator;
  double bits_per_weight = 0.0;   // the budget asked for
  int64_t budget_bits = 0;
  int64_t used_bits = 0;
  int64_t quantized_weights = 0;
  double expected_loss = 0.0;
  int64_t upgrades = 0, fill_upgrades = 0;
  int64_t dp_resolution_bits = 0;
  bool dp_exact = true;
  bool certified = false;
  double dp_optimum_loss = 0.0;
  double certify_gap = 0.0;       // greedy loss - DP loss
  bool certify_exact = true;

  double average_bits() const { return quantized_weights ? double(used_bits) / double(quantized_weights) : 0.0; }
  double average_code_bits() const;  // without metadata
  int find(const std::string& name) const;
};

// A budget below the cheapest allocation the table and the rules allow. A usage error like any other; it also
// carries that smallest budget, so `compare` can record the row as infeasible and go on with the others.
class InfeasibleBudget : public UserError {
 public:
  InfeasibleBudget(const std::string& message, double smallest_bits)
      : UserError(ExitCode::usage, message), smallest_bits_(smallest_bits) {}
  double smallest_bits() const { return smallest_bits_; }  // metadata included, rounded up to 1e-4

 private:
  double smallest_bits_;
};

// Throws UserError(usage) when a rule leaves a block no candidate, and InfeasibleBudget when the budget cannot be
// met (the message gives the smallest budget that fits).
Allocation allocate(const LossTable& table, const AllocationParams& params);

// The knapsack behind an allocation (exposed for tests): options per non-fp block, in table-entry order.
KnapsackProblem make_knapsack(const LossTable& table, const AllocationParams& params,
                              std::vector<int>* block_of_problem, std::vector<std::vector<int>>* entry_of_option);

void to_json(nlohmann::json& j, const BlockChoice& c);
void to_json(nlohmann::json& j, const Allocation& a);

}  // namespace bayesq

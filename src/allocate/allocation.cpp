#include "bayesq/allocate/allocation.h"

#include <cmath>
#include <iomanip>
#include <regex>
#include <sstream>

#include "bayesq/common/errors.h"

namespace bayesq {

const char* allocator_kind_name(AllocatorKind kind) { return kind == AllocatorKind::dp ? "dp" : "greedy"; }

AllocatorKind allocator_kind_from_name(const std::string& name) {
  if (name == "greedy") return AllocatorKind::greedy;
  if (name == "dp") return AllocatorKind::dp;
  BQ_FAIL(ExitCode::usage, "unknown allocator '", name, "' (expected greedy or dp)");
}

namespace {
std::regex compile(const std::string& pattern) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    BQ_FAIL(ExitCode::usage, "invalid regular expression '", pattern, "': ", e.what());
  }
}

bool matches_any(const std::vector<std::regex>& patterns, const std::string& name) {
  for (const auto& p : patterns)
    if (std::regex_search(name, p)) return true;
  return false;
}
}  // namespace

double Allocation::average_code_bits() const {
  int64_t code = 0;
  for (const auto& b : blocks) code += b.code_bits;
  return quantized_weights ? double(code) / double(quantized_weights) : 0.0;
}

int Allocation::find(const std::string& name) const {
  for (std::size_t i = 0; i < blocks.size(); ++i)
    if (blocks[i].name == name) return static_cast<int>(i);
  return -1;
}

KnapsackProblem make_knapsack(const LossTable& table, const AllocationParams& params,
                              std::vector<int>* block_of_problem, std::vector<std::vector<int>>* entry_of_option) {
  std::vector<std::regex> keep;
  for (const auto& p : params.keep_fp) keep.push_back(compile(p));
  std::vector<std::pair<std::regex, BitsRule>> rules;
  for (const auto& r : params.rules) {
    BQ_CHECK(r.min_bits <= r.max_bits, ExitCode::usage, "bits rule for '", r.pattern, "' has min ", r.min_bits,
             " > max ", r.max_bits);
    rules.emplace_back(compile(r.pattern), r);
  }
  BQ_ASSERT(params.allowed_entries.empty() || params.allowed_entries.size() == table.blocks.size(),
            "allowed entries for ", params.allowed_entries.size(), " blocks of ", table.blocks.size());
  KnapsackProblem problem;
  int64_t weights = 0;
  for (std::size_t b = 0; b < table.blocks.size(); ++b) {
    const BlockLosses& block = table.blocks[b];
    if (matches_any(keep, block.name)) continue;
    int lo = 1, hi = 8;
    for (const auto& rule : rules)
      if (std::regex_search(block.name, rule.first)) {
        lo = std::max(lo, rule.second.min_bits);
        hi = std::min(hi, rule.second.max_bits);
      }
    std::vector<KnapsackOption> options;
    std::vector<int> entries;
    const std::vector<bool>* allowed = params.allowed_entries.empty() ? nullptr : &params.allowed_entries[b];
    BQ_ASSERT(!allowed || allowed->size() == block.entries.size(), "allowed entries of ", block.name, ": ",
              allowed ? allowed->size() : 0, " for ", block.entries.size(), " entries");
    for (std::size_t e = 0; e < block.entries.size(); ++e) {
      const LossEntry& entry = block.entries[e];
      if (entry.bits < lo || entry.bits > hi) continue;
      if (allowed && !(*allowed)[e]) continue;
      BQ_ASSERT(entry.measured, "block ", block.name, ": the allocator was offered an unmeasured entry (", entry.bits,
                " bits, ", codebook_kind_name(entry.kind), ")");
      options.push_back({entry.cost.total(), entry.expected_loss});
      entries.push_back(static_cast<int>(e));
    }
    BQ_CHECK(!options.empty(), ExitCode::usage, "the bits rules leave block '", block.name,
             "' no candidate bit-width (allowed ", lo, "..", hi, ")");
    problem.blocks.push_back(std::move(options));
    if (block_of_problem) block_of_problem->push_back(static_cast<int>(b));
    if (entry_of_option) entry_of_option->push_back(std::move(entries));
    weights += block.numel();
  }
  problem.budget = static_cast<int64_t>(std::floor(params.bits_per_weight * static_cast<double>(weights)));
  return problem;
}

Allocation allocate(const LossTable& table, const AllocationParams& params) {
  BQ_CHECK(params.bits_per_weight > 0.0 && std::isfinite(params.bits_per_weight), ExitCode::usage,
           "budget must be a positive number of bits per weight");
  std::vector<int> block_of;
  std::vector<std::vector<int>> entry_of;
  const KnapsackProblem problem = make_knapsack(table, params, &block_of, &entry_of);
  int64_t weights = 0;
  for (int b : block_of) weights += table.blocks[static_cast<std::size_t>(b)].numel();
  BQ_CHECK(weights > 0, ExitCode::usage, "every block is kept in floating point: nothing to allocate");

  const int64_t min_cost = minimum_cost(problem);
  if (min_cost > problem.budget) {
    const double smallest = std::ceil(double(min_cost) / double(weights) * 1e4) / 1e4;
    std::ostringstream msg;
    msg << std::fixed << std::setprecision(4) << "a budget of " << params.bits_per_weight
        << " bits per weight cannot be met under the constraints; the smallest budget that fits is " << smallest
        << " bits per weight (metadata included)";
    throw InfeasibleBudget(msg.str(), smallest);
  }

  KnapsackSolution solution =
      params.allocator == AllocatorKind::dp ? solve_dp(problem, params.dp_max_states) : solve_greedy(problem);
  BQ_ASSERT(solution.feasible, "allocator returned an infeasible solution");

  Allocation a;
  a.allocator = allocator_kind_name(params.allocator);
  a.bits_per_weight = params.bits_per_weight;
  a.budget_bits = problem.budget;
  a.used_bits = solution.cost;
  a.quantized_weights = weights;
  a.expected_loss = solution.loss;
  a.upgrades = solution.upgrades;
  a.fill_upgrades = solution.fill_upgrades;
  a.dp_resolution_bits = params.allocator == AllocatorKind::dp ? solution.resolution : 0;
  a.dp_exact = solution.exact;
  if (params.certify && params.allocator == AllocatorKind::greedy) {
    const KnapsackSolution dp = solve_dp(problem, params.dp_max_states);
    a.certified = true;
    a.dp_optimum_loss = dp.loss;
    a.certify_gap = solution.loss - dp.loss;
    a.certify_exact = dp.exact;
    a.dp_resolution_bits = dp.resolution;
  }

  std::vector<int> problem_of(table.blocks.size(), -1);
  for (std::size_t p = 0; p < block_of.size(); ++p) problem_of[static_cast<std::size_t>(block_of[p])] = static_cast<int>(p);
  for (std::size_t b = 0; b < table.blocks.size(); ++b) {
    BlockChoice c;
    c.name = table.blocks[b].name;
    const int p = problem_of[b];
    if (p < 0) {
      c.keep_fp = true;
    } else {
      const int option = solution.choice[static_cast<std::size_t>(p)];
      c.entry = entry_of[static_cast<std::size_t>(p)][static_cast<std::size_t>(option)];
      const LossEntry& e = table.blocks[b].entries[static_cast<std::size_t>(c.entry)];
      c.bits = e.bits;
      c.kind = e.kind;
      c.cost_bits = e.cost.total();
      c.code_bits = e.cost.code_bits;
      c.metadata_bits = e.cost.metadata_bits;
      c.expected_loss = e.expected_loss;
    }
    a.blocks.push_back(c);
  }
  return a;
}

void to_json(nlohmann::json& j, const BlockChoice& c) {
  j = nlohmann::json{{"name", c.name}, {"keep_fp", c.keep_fp}};
  if (!c.keep_fp) {
    j["bits"] = c.bits;
    j["kind"] = codebook_kind_name(c.kind);
    j["cost_bits"] = c.cost_bits;
    j["code_bits"] = c.code_bits;
    j["metadata_bits"] = c.metadata_bits;
    j["expected_loss"] = c.expected_loss;
  }
}

void to_json(nlohmann::json& j, const Allocation& a) {
  j = nlohmann::json{{"allocator", a.allocator},
                     {"bits_per_weight", a.bits_per_weight},
                     {"budget_bits", a.budget_bits},
                     {"used_bits", a.used_bits},
                     {"budget_used", a.budget_bits ? double(a.used_bits) / double(a.budget_bits) : 0.0},
                     {"quantized_weights", a.quantized_weights},
                     {"average_bits", a.average_bits()},
                     {"average_code_bits", a.average_code_bits()},
                     {"expected_loss", a.expected_loss},
                     {"upgrades", a.upgrades},
                     {"fill_upgrades", a.fill_upgrades},
                     {"blocks", a.blocks}};
  if (a.allocator == "dp" || a.certified) {
    j["dp_resolution_bits"] = a.dp_resolution_bits;
    j["dp_exact"] = a.certified ? a.certify_exact : a.dp_exact;
  }
  if (a.certified) {
    j["dp_optimum_loss"] = a.dp_optimum_loss;
    j["certify_gap"] = a.certify_gap;
  }
}

}  // namespace bayesq

// `bayesq quantize`: the whole pipeline from a model file to quantized model files and reports. Kept free of
// libtorch headers so the command-line tool compiles quickly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bayesq/allocate/allocation.h"

namespace bayesq {

struct QuantizeOptions {
  std::string model, output, calib, report, posterior;
  std::string method = "bayesq";          // bayesq | rtn | gptq | hawq
  std::vector<double> bits{3.0};          // one output per budget
  std::string format = "packed";          // packed | fake
  std::string device = "cpu";
  uint64_t seed = 0;
  int64_t batch_size = 32;
  std::string output_index;
  int64_t group_size = 0;
  // Calibration
  std::string curvature = "hutchinson";   // hutchinson | fisher | kfac (bayesq); hawq always uses hutchinson
  std::string curvature_loss = "auto";
  int64_t probes = 8;
  int64_t max_examples = 0;
  double damp = 0.01;
  // Tables
  std::vector<int> candidates{1, 2, 3, 4, 5, 6, 8};  // 1 bit included so budgets near 2.0 stay feasible with metadata
  std::string codebook = "auto";          // lloyd | uniform | uniform-symmetric | auto (lloyd and uniform)
  double tau = 0.0;
  std::string table_loss = "measured";    // measured | expected (see Note [Measured tables] in session.cpp)
  int64_t measure_examples = 128;         // calibration examples a measured table scores
  // GPTQ (gptq, and the error feedback of bayesq with kfac)
  double percdamp = 0.01;
  bool act_order = false;
  int64_t gptq_block_size = 128;
  bool one_shot = false;                  // gptq: all layer inputs from the float model instead of sequentially
  // Distillation (0 steps: off)
  int64_t distill_steps = 0;
  double distill_lr = 1e-4;
  int64_t teacher_samples = 1;
  double distill_holdout = 0.1;
  int64_t distill_eval_every = 25;
  // Allocation
  std::string allocator = "dp";           // dp (exact or finely coarsened knapsack) | greedy (the paper's)
  bool certify = false;
  std::vector<std::string> keep_fp;
  std::vector<BitsRule> rules;
  int threads = 0;
  std::vector<std::string> command_line;
  std::string config_file;
};

struct QuantizeOutcome {
  std::vector<std::string> outputs;
  std::vector<std::string> reports;
  std::vector<nlohmann::json> report_json;
};

QuantizeOutcome run_quantize(const QuantizeOptions& options);

// "{bits}" in `pattern` becomes the budget; without it, several budgets get "-<bits>b" before the extension.
std::string output_name(const std::string& pattern, double bits, bool several);

// Allowed range of --bits (average bits per weight, metadata included).
constexpr double kMinBudget = 1.0;
constexpr double kMaxBudget = 16.0;

}  // namespace bayesq

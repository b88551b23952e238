// `bayesq quantize`: the whole pipeline from a model file to quantized model files and reports. Kept free of
// libtorch headers so the command-line tool compiles quickly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bayesq/pipeline/config.h"

namespace bayesq {

struct QuantizeOptions {
  std::string model, calib, posterior;  // inputs: the model, calibration data, a saved posterior (.bqp)
  std::string output, report;           // outputs; "{bits}" is replaced by the budget (see output_name)
  std::string html;                     // the report as one HTML file (report/html_report.h); "{bits}" as above
  std::vector<double> bits{3.0};        // one output per budget
  std::string format = "packed";        // packed | fake
  RunContext run;
  MethodConfig method;
  std::vector<std::string> command_line;
  std::string config_file;
};

// Everything but the command line, as the report's "config" states it (the method resolved as it ran).
nlohmann::json options_json(const QuantizeOptions& o);

struct QuantizeOutcome {
  std::vector<std::string> outputs;
  std::vector<std::string> reports;
  std::vector<std::string> html_reports;
  std::vector<nlohmann::json> report_json;
};

QuantizeOutcome run_quantize(const QuantizeOptions& options);

// "{bits}" in `pattern` becomes the budget; without it, several budgets get "-<bits>b" before the extension.
std::string output_name(const std::string& pattern, double bits, bool several);
// Without -o: beside the model, its name with ".bq<bits>" before the extension (bits with at least one decimal:
// rn50.pt at 3 bits is rn50.bq3.0.pt), which is never the model's own name.
std::string default_output_name(const std::string& model, double bits);
// The model file a budget of this run writes.
std::string output_path(const QuantizeOptions& o, double bits);

// Allowed range of --bits (average bits per weight, metadata included).
constexpr double kMinBudget = 1.0;
constexpr double kMaxBudget = 16.0;

// Usage checks that need no file: the method's needs against the inputs given, budgets, ranges. Throws
// UserError(usage).
void check_method_inputs(const MethodConfig& method, const std::string& calib, const std::string& posterior);

}  // namespace bayesq

// `bayesq compare`: one process, one calibration shared by every method, then for each method and budget:
// quantize, write the packed file (for its size), evaluate against the float model, and tabulate. Free of
// libtorch headers.
//
// Methods are the specs of methods.h (variant[/modifier...][+distill], e.g. gptq/act, bayesq/kfac+distill), each
// applied on top of the shared options; a spec without +distill is not distilled.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bayesq/pipeline/quantize.h"

namespace bayesq {

struct CompareOptions {
  QuantizeOptions base;              // model, calib, device, seed, batch size, calibration and allocation defaults
  std::string data;                  // evaluation file
  std::vector<std::string> methods{"rtn", "gptq", "gptq/act", "hawq", "bayesq/hutchinson", "bayesq/kfac"};  // specs
  std::string keep_models;           // folder for the quantized files ("" : a temporary folder, removed)
  std::string json_output;           // write the full results here too
  std::string markdown_output;
  std::string html_output;  // the results as one HTML file (report/html_report.h)
  int64_t eval_batch_size = 256;
  bool match_uniform = false;        // allocating methods also run at the uniform methods' actual average bits
  bool resume = false;               // keep the rows json_output already holds from a stopped run of the same
                                     // comparison (same model, data and run context) whose result key
                                     // (config.h) equals this run's; compute only the others
};

struct CompareOutcome {
  nlohmann::json results;            // rows, shared timings, configuration
  std::string markdown;              // the table
};

CompareOutcome run_compare(const CompareOptions& options);

}  // namespace bayesq

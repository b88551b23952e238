// `bayesq compare`: one process, one calibration shared by every method, then for each method and budget:
// quantize, write the packed file (for its size), evaluate against the float model, and tabulate. Free of
// libtorch headers.
//
// A method is written base[/modifier...][+distill]: base rtn | gptq | hawq | bayesq; modifiers act (GPTQ
// act-order), kfac | fisher (bayesq curvature), lloyd | uniform (only that codebook kind), tau1 (posterior
// temperature 1), greedy (the paper's allocator), measured (measured-loss table). Examples: gptq/act,
// bayesq/kfac, bayesq/kfac+distill, bayesq/lloyd/tau1.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bayesq/pipeline/quantize.h"

namespace bayesq {

struct CompareOptions {
  QuantizeOptions base;              // model, calib, device, seed, batch size, calibration and allocation defaults
  std::string data;                  // evaluation file
  std::vector<std::string> methods{"rtn", "gptq", "gptq/act", "hawq", "bayesq", "bayesq/kfac"};
  std::string keep_models;           // folder for the quantized files ("" : a temporary folder, removed)
  std::string json_output;           // write the full results here too
  std::string markdown_output;
  int64_t eval_batch_size = 256;
  bool match_uniform = false;        // allocating methods also run at the uniform methods' actual average bits
  bool resume = false;               // keep the rows json_output already holds from a stopped run of the same
                                     // comparison (same model file, data, seed, device); compute only the others
};

struct CompareOutcome {
  nlohmann::json results;            // rows, shared timings, configuration
  std::string markdown;              // the table
};

CompareOutcome run_compare(const CompareOptions& options);

// Parses a method string into quantize options (on top of `base`); throws UserError(usage) when unknown.
QuantizeOptions method_options(const QuantizeOptions& base, const std::string& method);

}  // namespace bayesq

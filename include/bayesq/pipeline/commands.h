// The other subcommands' library side (the CLI parses and prints, these do the work). Free of libtorch headers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bayesq/pipeline/config.h"

namespace bayesq {

struct CalibrateOptions {
  std::string model, calib, output;
  CurvatureParams curvature;
  RunContext run;
};

// Writes the posterior artifact; returns per-block curvature stats and provenance.
nlohmann::json run_calibrate(const CalibrateOptions& options);

struct EvalOptions {
  std::vector<std::string> models;  // one or more, each scored on `data` against the same reference
  std::string data, reference;
  RunContext run;  // its batch_size is the evaluation batch (256 unless set)

  EvalOptions() { run.batch_size = 256; }
};

// One result object per model, in order (an array).
nlohmann::json run_eval(const EvalOptions& options);

// `bayesq report`: the HTML of a quantize report or compare JSON (report/html_report.h), written to `output`
// (default: the input's name with .html for .json); returns the path written.
std::string run_report(const std::string& input, const std::string& output);

// Blocks of a float model, or the per-block bits and codebooks recorded in a bayesq output.
nlohmann::json run_inspect(const std::string& model_path);

}  // namespace bayesq

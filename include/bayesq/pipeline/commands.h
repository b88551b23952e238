// The other subcommands' library side (the CLI parses and prints, these do the work). Free of libtorch headers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace bayesq {

struct CalibrateOptions {
  std::string model, calib, output;
  std::string curvature = "hutchinson";
  std::string curvature_loss = "auto";
  int64_t probes = 8;
  int64_t batch_size = 32;
  int64_t max_examples = 0;
  std::string output_index;
  std::string device = "cpu";
  uint64_t seed = 0;
  int threads = 0;
};

// Writes the posterior artifact; returns per-block curvature stats and provenance.
nlohmann::json run_calibrate(const CalibrateOptions& options);

struct EvalOptions {
  std::string model, data, reference;
  int64_t batch_size = 256;
  std::string output_index;
  std::string device = "cpu";
  int threads = 0;
};

nlohmann::json run_eval(const EvalOptions& options);

// Blocks of a float model, or the per-block bits and codebooks recorded in a bayesq output.
nlohmann::json run_inspect(const std::string& model_path);

}  // namespace bayesq

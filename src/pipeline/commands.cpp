#include "bayesq/pipeline/commands.h"

#include <torch/script.h>

#include "bayesq/calibrate/curvature.h"
#include "bayesq/common/atomic_file.h"
#include "bayesq/common/errors.h"
#include "bayesq/data/data_file.h"
#include "bayesq/eval/evaluate.h"
#include "bayesq/export/model_writer.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/model_file.h"
#include "bayesq/pipeline/device.h"
#include "bayesq/posterior/posterior.h"

namespace bayesq {

nlohmann::json run_calibrate(const CalibrateOptions& options) {
  BQ_CHECK(!options.model.empty() && !options.calib.empty() && !options.output.empty(), ExitCode::usage,
           "calibrate needs --model, --calib and -o");
  check_output_path(options.output);
  const Compute compute = start_run(options.run);
  LoadedModel model = load_model(options.model);
  check_finite_weights(model.module, options.model);
  const BlockIndex index = discover_blocks(model.module);
  BQ_CHECK(!index.blocks.empty(), ExitCode::input, "model has no quantizable block: ", options.model);
  const DataFile calib = DataFile::load(options.calib);
  CurvatureSet set = estimate_curvature(model.module, index, calib, options.curvature, compute, options.model);
  set.model_hash = model.hash;
  save_curvature(set, options.output);
  nlohmann::json blocks = nlohmann::json::array();
  for (const auto& b : set.blocks) blocks.push_back(b);
  return nlohmann::json{{"model", options.model},      {"model_hash", set.model_hash}, {"data", options.calib},
                        {"data_hash", set.data_hash},  {"examples", set.examples},     {"estimator", set.estimator},
                        {"loss", set.loss},            {"probes", set.probes},         {"seed", set.seed},
                        {"device", set.device},        {"seconds", set.seconds},       {"output", options.output},
                        {"blocks", blocks}};
}

nlohmann::json run_eval(const EvalOptions& options) {
  BQ_CHECK(!options.model.empty() && !options.data.empty(), ExitCode::usage, "eval needs --model and --data");
  const Compute compute = start_run(options.run);
  LoadedModel model = load_model(options.model);
  const DataFile data = DataFile::load(options.data);
  LoadedModel reference;
  if (!options.reference.empty()) reference = load_model(options.reference);
  EvalParams params;
  params.batch_size = options.run.batch_size;
  params.output = options.run.output_index;
  params.device = compute.device;
  const EvalResult r = evaluate(model.module, options.reference.empty() ? nullptr : &reference.module, data, params,
                                options.model);
  nlohmann::json j = r;
  j["model"] = options.model;
  j["data"] = options.data;
  if (!options.reference.empty()) j["reference"] = options.reference;
  return j;
}

nlohmann::json run_inspect(const std::string& model_path) {
  LoadedModel model = load_model(model_path);
  nlohmann::json out{{"model", model_path}, {"file_bytes", model.file_bytes}};
  if (model.module.hasattr(kMetadataAttribute)) {
    out["quantized"] = nlohmann::json::parse(model.module.attr(kMetadataAttribute).toStringRef());
    return out;
  }
  const BlockIndex index = discover_blocks(model.module);
  nlohmann::json blocks = nlohmann::json::array();
  for (const auto& b : index.blocks) {
    nlohmann::json entry = b;
    entry["numel"] = b.numel();
    entry["bytes"] = b.numel() * (b.dtype == "float64" ? 8 : b.dtype == "float32" ? 4 : 2);
    entry["share"] = index.model_parameter_count ? double(b.numel()) / double(index.model_parameter_count) : 0.0;
    blocks.push_back(entry);
  }
  out["blocks"] = blocks;
  out["model_parameter_count"] = index.model_parameter_count;
  out["model_parameter_bytes"] = index.model_parameter_bytes;
  out["quantizable_weights"] = index.quantizable_weight_count();
  return out;
}

}  // namespace bayesq

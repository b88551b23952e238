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
#include "bayesq/report/html_report.h"

#include <filesystem>
#include <map>
#include <fstream>
#include <sstream>

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
  BQ_CHECK(!options.models.empty() && !options.data.empty(), ExitCode::usage, "eval needs --model and --data");
  const Compute compute = start_run(options.run);
  LoadedModel reference;
  if (!options.reference.empty()) reference = load_model(options.reference);
  // A model named as its own reference (the float row of a table) is loaded and run once, as the reference.
  std::vector<bool> is_reference;
  std::vector<LoadedModel> models(options.models.size());
  for (std::size_t m = 0; m < models.size(); ++m) {
    is_reference.push_back(!options.reference.empty() && same_file(options.models[m], options.reference));
    if (!is_reference[m]) models[m] = load_model(options.models[m]);
  }
  const DataFile data = DataFile::load(options.data);
  EvalParams params;
  params.batch_size = options.run.batch_size;
  params.output = options.run.output_index;
  params.device = compute.device;
  std::vector<torch::jit::Module*> modules;
  for (std::size_t m = 0; m < models.size(); ++m)
    modules.push_back(is_reference[m] ? &reference.module : &models[m].module);
  const std::vector<EvalResult> results = evaluate_models(
      modules, options.reference.empty() ? nullptr : &reference.module, data, params, options.models);
  nlohmann::json out = nlohmann::json::array();
  for (std::size_t m = 0; m < results.size(); ++m) {
    nlohmann::json j = results[m];
    j["model"] = options.models[m];
    j["data"] = options.data;
    if (!options.reference.empty()) j["reference"] = options.reference;
    out.push_back(std::move(j));
  }
  return out;
}

std::string run_report(const std::string& input, const std::string& output) {
  namespace fs = std::filesystem;
  std::error_code ec;
  BQ_CHECK(fs::is_regular_file(input, ec), ExitCode::input, "no such report file (or not a regular file): ", input);
  // Reports of the largest models are a few MiB; a file far past that is not one of ours.
  constexpr std::uintmax_t kMaxReportBytes = std::uintmax_t(256) << 20;
  BQ_CHECK(fs::file_size(input, ec) <= kMaxReportBytes, ExitCode::input, "report larger than 256 MiB: ", input);
  nlohmann::json json;
  try {
    std::ifstream in(input);
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    BQ_FAIL(ExitCode::input, "not a JSON file (", e.what(), "): ", input);
  }
  std::string path = output;
  if (path.empty()) {
    const fs::path p(input);
    path = (p.extension() == ".json" ? fs::path(p).replace_extension(".html") : fs::path(input + ".html")).string();
  }
  check_output_path(path);
  check_distinct_files({{"-o", path}}, {{"json", input}});
  write_text_file(path, report_html(json, input));
  return path;
}

nlohmann::json run_inspect(const std::string& model_path) {
  LoadedModel model = load_model(model_path);
  nlohmann::json out{{"model", model_path}, {"file_bytes", model.file_bytes}};
  if (model.module.hasattr(kMetadataAttribute)) {
    out["quantized"] = nlohmann::json::parse(model.module.attr(kMetadataAttribute).toStringRef());
    return out;
  }
  DiscoveryStats discovery;
  const BlockIndex index = discover_blocks(model.module, &discovery);
  // Every parameter that is no block, and why: what a quantized file keeps in floating point.
  std::map<std::string, std::string> reasons;
  for (const std::string& s : discovery.skipped) {
    const std::size_t colon = s.find(": ");
    if (colon != std::string::npos) reasons[s.substr(0, colon)] = s.substr(colon + 2);
  }
  nlohmann::json left = nlohmann::json::array();
  for (const auto& p : model.module.named_parameters(true)) {
    if (index.find(p.name) >= 0) continue;
    std::string reason = reasons.count(p.name) ? reasons[p.name]
                         : p.value.dim() < 2   ? "one-dimensional (a bias or a norm's scale): always float"
                         : !p.value.is_floating_point() ? "not floating point"
                                                        : "not the weight of a supported operation (README: what is and is not a block)";
    left.push_back({{"name", p.name}, {"shape", p.value.sizes().vec()}, {"numel", p.value.numel()}, {"reason", reason}});
  }
  nlohmann::json blocks = nlohmann::json::array();
  for (const auto& b : index.blocks) {
    nlohmann::json entry = b;
    entry["numel"] = b.numel();
    entry["bytes"] = b.numel() * (b.dtype == "float64" ? 8 : b.dtype == "float32" ? 4 : 2);
    entry["share"] = index.model_parameter_count ? double(b.numel()) / double(index.model_parameter_count) : 0.0;
    blocks.push_back(entry);
  }
  out["blocks"] = blocks;
  out["left_float"] = left;
  out["model_parameter_count"] = index.model_parameter_count;
  out["model_parameter_bytes"] = index.model_parameter_bytes;
  out["quantizable_weights"] = index.quantizable_weight_count();
  return out;
}

}  // namespace bayesq

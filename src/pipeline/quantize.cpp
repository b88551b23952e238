#include "bayesq/pipeline/quantize.h"

#include <chrono>
#include <cmath>
#include <iomanip>
#include <sstream>

#include <torch/script.h>
#include <torch/version.h>

#include "bayesq/calibrate/curvature.h"
#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/common/atomic_file.h"
#include "bayesq/common/errors.h"
#include "bayesq/common/log.h"
#include "bayesq/common/parallel.h"
#include "bayesq/export/model_writer.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/block_tensor.h"
#include "bayesq/model/model_file.h"
#include "bayesq/pipeline/device.h"
#include "bayesq/pipeline/memory.h"
#include "bayesq/posterior/posterior.h"
#include "bayesq/table/loss_table.h"

namespace bayesq {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::string format_bits(double bits) {
  std::ostringstream out;
  out << bits;
  return out.str();
}

void validate(const QuantizeOptions& o) {
  BQ_CHECK(!o.model.empty(), ExitCode::usage, "--model is required");
  BQ_CHECK(!o.output.empty(), ExitCode::usage, "-o/--output is required");
  BQ_CHECK(!o.bits.empty(), ExitCode::usage, "--bits is required");
  BQ_CHECK(o.method == "rtn" || o.method == "bayesq", ExitCode::usage, "unknown method '", o.method,
           "' (expected bayesq or rtn)");
  for (double b : o.bits) {
    BQ_CHECK(std::isfinite(b) && b >= kMinBudget && b <= kMaxBudget, ExitCode::usage, "--bits ", b,
             " is outside the allowed range ", kMinBudget, "..", kMaxBudget);
    if (o.method == "rtn")
      BQ_CHECK(b == std::floor(b) && b >= 2 && b <= 8, ExitCode::usage, "--bits ", b,
               ": rtn uses one bit-width for every block, a whole number from 2 to 8");
  }
  output_format_from_name(o.format);
  parse_device(o.device);
  BQ_CHECK(o.batch_size > 0, ExitCode::usage, "--batch-size must be positive");
  BQ_CHECK(o.group_size >= 0, ExitCode::usage, "--group-size must be >= 0 (0: one codebook per row)");
  BQ_CHECK(o.damp >= 0.0, ExitCode::usage, "--damp must be >= 0");
  BQ_CHECK(o.tau >= 0.0 && o.tau <= 1.0, ExitCode::usage, "--posterior-temp must be in [0, 1]");
  BQ_CHECK(o.probes >= 1, ExitCode::usage, "--probes must be >= 1");
  if (o.method == "bayesq")
    BQ_CHECK(!o.calib.empty() || !o.posterior.empty(), ExitCode::usage,
             "--method bayesq needs calibration data (--calib) or a saved posterior (--posterior); "
             "--method rtn needs neither");
  for (std::size_t i = 0; i < o.bits.size(); ++i) {
    check_output_path(output_name(o.output, o.bits[i], o.bits.size() > 1));
    if (!o.report.empty()) check_output_path(output_name(o.report, o.bits[i], o.bits.size() > 1));
  }
}

std::vector<CodebookKind> codebook_kinds(const std::string& name) {
  if (name == "auto") return {CodebookKind::lloyd, CodebookKind::uniform_asymmetric};
  return {codebook_kind_from_name(name)};
}

nlohmann::json options_json(const QuantizeOptions& o) {
  nlohmann::json rules = nlohmann::json::array();
  for (const auto& r : o.rules) rules.push_back({{"pattern", r.pattern}, {"min_bits", r.min_bits}, {"max_bits", r.max_bits}});
  return nlohmann::json{{"model", o.model},
                        {"output", o.output},
                        {"calib", o.calib},
                        {"posterior", o.posterior},
                        {"method", o.method},
                        {"bits", o.bits},
                        {"format", o.format},
                        {"device", o.device},
                        {"seed", o.seed},
                        {"batch_size", o.batch_size},
                        {"output_index", o.output_index},
                        {"group_size", o.group_size},
                        {"curvature", o.curvature},
                        {"curvature_loss", o.curvature_loss},
                        {"probes", o.probes},
                        {"max_examples", o.max_examples},
                        {"damp", o.damp},
                        {"candidates", o.candidates},
                        {"codebook", o.codebook},
                        {"posterior_temp", o.tau},
                        {"allocator", o.allocator},
                        {"certify", o.certify},
                        {"keep_fp", o.keep_fp},
                        {"rules", rules},
                        {"config_file", o.config_file}};
}

// Weights and precisions of every block as row-major [rows, cols] arrays.
struct BlockArrays {
  std::vector<std::vector<float>> weights, precision;
};

BlockArrays block_arrays(const torch::jit::Module& module, const BlockIndex& index,
                         const std::vector<BlockPosterior>* posteriors) {
  BlockArrays a;
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    const BlockInfo& info = index.blocks[b];
    const torch::Tensor w = find_tensor(module, info.name);
    a.weights.push_back(block_rows_vector(w, info));
    if (posteriors) {
      const auto& p = (*posteriors)[b].precision;
      const torch::Tensor t = torch::from_blob(const_cast<float*>(p.data()), info.shape, torch::kFloat32);
      a.precision.push_back(block_rows_vector(t, info));
    }
  }
  return a;
}

}  // namespace

std::string output_name(const std::string& pattern, double bits, bool several) {
  const std::string tag = format_bits(bits);
  const auto at = pattern.find("{bits}");
  if (at != std::string::npos) return pattern.substr(0, at) + tag + pattern.substr(at + 6);
  if (!several) return pattern;
  const auto slash = pattern.find_last_of('/');
  const auto dot = pattern.find_last_of('.');
  const bool has_ext = dot != std::string::npos && (slash == std::string::npos || dot > slash);
  return has_ext ? pattern.substr(0, dot) + "-" + tag + "b" + pattern.substr(dot) : pattern + "-" + tag + "b";
}

QuantizeOutcome run_quantize(const QuantizeOptions& options) {
  const auto start = Clock::now();
  validate(options);
  if (options.threads > 0) {
    set_num_threads(options.threads);
    torch::set_num_threads(options.threads);
  }
  const torch::Device device = parse_device(options.device);
  reset_peak_device_bytes(options.device);
  nlohmann::json timings;

  auto t = Clock::now();
  LoadedModel model = load_model(options.model);
  model.module.eval();
  check_finite_weights(model.module, options.model);
  DiscoveryStats discovery;
  const BlockIndex index = discover_blocks(model.module, &discovery);
  BQ_CHECK(!index.blocks.empty(), ExitCode::input, "model has no quantizable block (no convolution, linear or "
           "parameter matmul in its forward graph): ", options.model);
  for (const auto& s : discovery.skipped) log::info("left in floating point: ", s);
  log::info(options.model, ": ", index.blocks.size(), " blocks, ", index.quantizable_weight_count(),
            " quantizable weights");
  timings["load"] = seconds_since(t);

  // Posterior (bayesq only).
  std::vector<BlockPosterior> posteriors;
  CurvatureSet curvature;
  if (options.method == "bayesq") {
    t = Clock::now();
    if (!options.posterior.empty()) {
      curvature = load_curvature(options.posterior);
      BQ_CHECK(curvature.model_hash == model.hash, ExitCode::input, "posterior ", options.posterior,
               " was computed for another model (model hash ", curvature.model_hash, ", this model ", model.hash,
               "): ", options.model);
    } else {
      const DataFile calib = DataFile::load(options.calib);
      CurvatureParams cp;
      cp.estimator = options.curvature;
      cp.loss = options.curvature_loss;
      cp.probes = options.probes;
      cp.batch_size = options.batch_size;
      cp.max_examples = options.max_examples;
      cp.output = options.output_index;
      cp.device = options.device;
      cp.seed = options.seed;
      curvature = estimate_curvature(model.module, index, calib, cp, options.model);
      curvature.model_hash = model.hash;
    }
    for (const BlockInfo& info : index.blocks) {
      const int at = curvature.find(info.name);
      BQ_CHECK(at >= 0, ExitCode::input, "posterior ", options.posterior, " has no block '", info.name, "'");
      const CurvatureStats& c = curvature.blocks[static_cast<std::size_t>(at)];
      BQ_CHECK(static_cast<int64_t>(c.diagonal.size()) == info.numel(), ExitCode::input, "posterior block '",
               info.name, "' has ", c.diagonal.size(), " entries, the model's ", info.numel());
      posteriors.push_back(fit_posterior(c, curvature.examples, PosteriorParams{options.damp}));
      if (posteriors.back().fallback)
        log::warn("block ", info.name, ": posterior fallback (", posteriors.back().fallback_reason, ")");
    }
    model.module.to(torch::kCPU);
    timings["calibrate"] = seconds_since(t);
  }

  t = Clock::now();
  const BlockArrays arrays = block_arrays(model.module, index, options.method == "bayesq" ? &posteriors : nullptr);
  auto block_weights = [&](std::size_t b, bool weighted) {
    const BlockInfo& info = index.blocks[b];
    return BlockWeights{arrays.weights[b].data(), weighted ? arrays.precision[b].data() : nullptr, info.rows(),
                        info.cols()};
  };
  LossTable table;
  LossTableParams table_params;
  if (options.method == "bayesq") {
    table_params.candidates = options.candidates;
    table_params.kinds = codebook_kinds(options.codebook);
    table_params.quantizer.group_size = options.group_size;
    table_params.quantizer.tau = options.tau;
    std::vector<BlockTableInput> inputs;
    for (std::size_t b = 0; b < index.blocks.size(); ++b) inputs.push_back({index.blocks[b].name, block_weights(b, true)});
    table = build_loss_table(inputs, table_params);
    for (const auto& bl : table.blocks)
      if (!bl.monotone) log::info("block ", bl.name, ": expected loss is not monotone in bits");
    timings["table"] = seconds_since(t);
  }

  QuantizeOutcome outcome;
  const bool several = options.bits.size() > 1;
  for (double budget : options.bits) {
    nlohmann::json budget_timings = timings;
    std::vector<QuantizedBlock> quantized(index.blocks.size());
    std::vector<const QuantizedBlock*> slots(index.blocks.size(), nullptr);
    Allocation allocation;
    t = Clock::now();
    if (options.method == "rtn") {
      for (std::size_t b = 0; b < index.blocks.size(); ++b) {
        quantized[b] = quantize_block_rtn(block_weights(b, false), static_cast<int>(budget), options.group_size);
        slots[b] = &quantized[b];
      }
    } else {
      AllocationParams ap;
      ap.bits_per_weight = budget;
      ap.allocator = allocator_kind_from_name(options.allocator);
      ap.keep_fp = options.keep_fp;
      ap.rules = options.rules;
      ap.certify = options.certify;
      allocation = allocate(table, ap);
      budget_timings["allocate"] = seconds_since(t);
      t = Clock::now();
      for (std::size_t b = 0; b < index.blocks.size(); ++b) {
        const BlockChoice& choice = allocation.blocks[b];
        if (choice.keep_fp) continue;
        QuantizerParams qp = table_params.quantizer;
        qp.kind = choice.kind;
        quantized[b] = quantize_block(block_weights(b, true), choice.bits, qp);
        slots[b] = &quantized[b];
      }
    }
    budget_timings["quantize"] = seconds_since(t);

    t = Clock::now();
    const std::string path = output_name(options.output, budget, several);
    const WriteStats written =
        write_quantized_model(model.module, index, slots, output_format_from_name(options.format), path);
    budget_timings["write"] = seconds_since(t);
    budget_timings["total"] = seconds_since(start);
    outcome.outputs.push_back(path);

    // Report.
    nlohmann::json blocks = nlohmann::json::array();
    int64_t weights = 0, code_bits = 0, metadata_bits = 0;
    for (std::size_t b = 0; b < index.blocks.size(); ++b) {
      const BlockInfo& info = index.blocks[b];
      nlohmann::json entry{{"name", info.name}, {"shape", info.shape}, {"op", op_kind_name(info.op)}};
      if (!slots[b]) {
        entry["keep_fp"] = true;
      } else {
        const QuantizedBlock& q = quantized[b];
        const BlockCost cost = q.cost();
        weights += info.numel();
        code_bits += cost.code_bits;
        metadata_bits += cost.metadata_bits;
        entry["bits"] = q.bits;
        entry["kind"] = codebook_kind_name(q.kind);
        entry["code_bytes"] = cost.code_bits / 8;
        entry["metadata_bytes"] = cost.metadata_bits / 8;
        entry["expected_loss"] = q.expected_loss;
        entry["realised_loss"] = q.plugin_loss;
      }
      if (!posteriors.empty()) entry["posterior"] = posteriors[b];
      blocks.push_back(entry);
    }
    nlohmann::json report{
        {"bayesq_version", "0.1.0"},
        {"command_line", options.command_line},
        {"config", options_json(options)},
        {"seed", options.seed},
        {"libtorch_version", TORCH_VERSION},
        {"device", device_description(device)},
        {"method", options.method},
        {"bits", budget},
        {"model", {{"path", options.model}, {"hash", model.hash}, {"bytes", model.file_bytes}}},
        {"output", path},
        {"blocks", blocks},
        {"totals",
         {{"quantized_weights", weights},
          {"average_bits", weights ? double(code_bits + metadata_bits) / double(weights) : 0.0},
          {"average_bits_without_metadata", weights ? double(code_bits) / double(weights) : 0.0},
          {"code_bytes", code_bits / 8},
          {"metadata_bytes", metadata_bits / 8},
          {"file_bytes", written.file_bytes},
          {"float_model_bytes", model.file_bytes},
          {"compression", model.file_bytes ? double(written.file_bytes) / double(model.file_bytes) : 0.0}}},
        {"file", written},
        {"timings", budget_timings},
        {"peak_memory", {{"host_bytes", peak_host_bytes()}, {"device_bytes", peak_device_bytes(options.device)}}}};
    if (options.method == "bayesq") {
      report["allocation"] = allocation;
      report["posterior_temp"] = options.tau;
      report["curvature"] = {{"estimator", curvature.estimator}, {"loss", curvature.loss},
                             {"examples", curvature.examples},   {"probes", curvature.probes},
                             {"seconds", curvature.seconds},     {"data_hash", curvature.data_hash}};
    }
    if (!discovery.skipped.empty()) report["left_in_floating_point"] = discovery.skipped;
    log::info("wrote ", path, " (", written.file_bytes, " bytes, ", report["totals"]["average_bits"].get<double>(),
              " bits per weight with metadata)");
    if (!options.report.empty()) {
      const std::string report_path = output_name(options.report, budget, several);
      write_text_file(report_path, report.dump(2) + "\n");
      outcome.reports.push_back(report_path);
    }
    outcome.report_json.push_back(std::move(report));
  }
  return outcome;
}

}  // namespace bayesq

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
#include "bayesq/distill/distill.h"
#include "bayesq/export/model_writer.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/block_tensor.h"
#include "bayesq/model/model_file.h"
#include "bayesq/pipeline/device.h"
#include "bayesq/pipeline/memory.h"
#include "bayesq/pipeline/session.h"
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
  BQ_CHECK(o.method == "rtn" || o.method == "bayesq" || o.method == "gptq" || o.method == "hawq", ExitCode::usage,
           "unknown method '", o.method, "' (expected bayesq, rtn, gptq or hawq)");
  BQ_CHECK(o.curvature == "hutchinson" || o.curvature == "fisher" || o.curvature == "kfac", ExitCode::usage,
           "unknown curvature '", o.curvature, "' (expected hutchinson, fisher or kfac)");
  for (double b : o.bits) {
    BQ_CHECK(std::isfinite(b) && b >= kMinBudget && b <= kMaxBudget, ExitCode::usage, "--bits ", b,
             " is outside the allowed range ", kMinBudget, "..", kMaxBudget);
    if (o.method == "rtn" || o.method == "gptq")
      BQ_CHECK(b == std::floor(b) && b >= 2 && b <= 8, ExitCode::usage, "--bits ", b, ": ", o.method,
               " uses one bit-width for every block, a whole number from 2 to 8");
  }
  output_format_from_name(o.format);
  parse_device(o.device);
  BQ_CHECK(o.batch_size > 0, ExitCode::usage, "--batch-size must be positive");
  BQ_CHECK(o.group_size >= 0, ExitCode::usage, "--group-size must be >= 0 (0: one codebook per row)");
  BQ_CHECK(o.damp >= 0.0, ExitCode::usage, "--damp must be >= 0");
  BQ_CHECK(o.percdamp >= 0.0, ExitCode::usage, "--percdamp must be >= 0");
  BQ_CHECK(o.gptq_block_size >= 1, ExitCode::usage, "--gptq-block-size must be >= 1");
  BQ_CHECK(o.tau >= 0.0 && o.tau <= 1.0, ExitCode::usage, "--posterior-temp must be in [0, 1]");
  BQ_CHECK(o.probes >= 1, ExitCode::usage, "--probes must be >= 1");
  BQ_CHECK(o.table_loss == "expected" || o.table_loss == "measured", ExitCode::usage, "--table-loss must be "
           "expected or measured");
  BQ_CHECK(o.distill_steps >= 0, ExitCode::usage, "--distill-steps must be >= 0");
  if (o.distill_steps > 0) {
    BQ_CHECK(!o.calib.empty(), ExitCode::usage, "distillation needs calibration data (--calib)");
    BQ_CHECK(o.distill_lr > 0.0, ExitCode::usage, "--distill-lr must be positive");
    BQ_CHECK(o.teacher_samples >= 1, ExitCode::usage, "--teacher-samples must be >= 1");
    BQ_CHECK(o.teacher_samples == 1 || (o.method == "bayesq" && o.curvature != "kfac"), ExitCode::usage,
             "--teacher-samples > 1 samples the diagonal posterior: use --method bayesq with hutchinson or fisher");
    BQ_CHECK(o.distill_holdout >= 0.0 && o.distill_holdout < 1.0, ExitCode::usage,
             "--distill-holdout must be in [0, 1)");
    BQ_CHECK(o.distill_eval_every >= 1, ExitCode::usage, "--distill-eval-every must be >= 1");
  }
  if (o.method == "bayesq" && o.curvature != "kfac")
    BQ_CHECK(!o.calib.empty() || !o.posterior.empty(), ExitCode::usage,
             "--method bayesq needs calibration data (--calib) or a saved posterior (--posterior); "
             "--method rtn needs neither");
  if (o.method == "gptq" || o.method == "hawq" || o.curvature == "kfac")
    BQ_CHECK(!o.calib.empty(), ExitCode::usage, "--method ", o.method,
             o.curvature == "kfac" ? " with --curvature kfac" : "", " needs calibration data (--calib)");
  for (std::size_t i = 0; i < o.bits.size(); ++i) {
    check_output_path(output_name(o.output, o.bits[i], o.bits.size() > 1));
    if (!o.report.empty()) check_output_path(output_name(o.report, o.bits[i], o.bits.size() > 1));
  }
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
                        {"table_loss", o.table_loss},
                        {"measure_examples", o.measure_examples},
                        {"percdamp", o.percdamp},
                        {"act_order", o.act_order},
                        {"gptq_block_size", o.gptq_block_size},
                        {"one_shot", o.one_shot},
                        {"distill_steps", o.distill_steps},
                        {"distill_lr", o.distill_lr},
                        {"teacher_samples", o.teacher_samples},
                        {"distill_holdout", o.distill_holdout},
                        {"allocator", o.allocator},
                        {"certify", o.certify},
                        {"keep_fp", o.keep_fp},
                        {"rules", rules},
                        {"config_file", o.config_file}};
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

static nlohmann::json quantized_model_report(Session& session, const MethodConfig& config, const QuantizedModel& q,
                                      const WriteStats& written, double bits) {
  const BlockIndex& index = session.index();
  std::vector<BlockPosterior> const* posteriors = nullptr;
  if (config.method == "bayesq" && config.curvature != "kfac") posteriors = &session.posteriors(config.damp);
  nlohmann::json blocks = nlohmann::json::array();
  int64_t weights = 0, code_bits = 0, metadata_bits = 0;
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    const BlockInfo& info = index.blocks[b];
    nlohmann::json entry{{"name", info.name}, {"shape", info.shape}, {"op", op_kind_name(info.op)}};
    if (!q.present[b]) {
      entry["keep_fp"] = true;
    } else {
      const QuantizedBlock& block = q.blocks[b];
      const BlockCost cost = block.cost();
      weights += info.numel();
      code_bits += cost.code_bits;
      metadata_bits += cost.metadata_bits;
      entry["bits"] = block.bits;
      entry["kind"] = codebook_kind_name(block.kind);
      entry["code_bytes"] = cost.code_bits / 8;
      entry["metadata_bytes"] = cost.metadata_bits / 8;
      entry["expected_loss"] = q.allocation ? q.allocation->blocks[b].expected_loss : block.expected_loss;
      entry["realised_loss"] = block.plugin_loss;
    }
    if (posteriors) entry["posterior"] = (*posteriors)[b];
    blocks.push_back(entry);
  }
  nlohmann::json report{
      {"method", config.to_json()},
      {"bits", bits},
      {"blocks", blocks},
      {"totals",
       {{"quantized_weights", weights},
        {"average_bits", weights ? double(code_bits + metadata_bits) / double(weights) : 0.0},
        {"average_bits_without_metadata", weights ? double(code_bits) / double(weights) : 0.0},
        {"code_bytes", code_bits / 8},
        {"metadata_bytes", metadata_bits / 8},
        {"file_bytes", written.file_bytes},
        {"float_model_bytes", session.model().file_bytes},
        {"compression", session.model().file_bytes ? double(written.file_bytes) / double(session.model().file_bytes)
                                                   : 0.0}}},
      {"file", written},
      {"details", q.details}};
  if (q.allocation) report["allocation"] = *q.allocation;
  if (config.method == "bayesq" || config.method == "hawq") {
    report["posterior_temp"] = config.tau;
    report["loss_table"] = session.table(config);  // cached: what the allocator read
  }
  return report;
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
  Session session(options);
  const MethodConfig config = method_config(options);

  QuantizeOutcome outcome;
  const bool several = options.bits.size() > 1;
  for (double budget : options.bits) {
    QuantizedModel q = session.quantize(config, budget);
    auto t = Clock::now();
    torch::jit::Module to_write = session.model().module;
    nlohmann::json distillation;
    if (options.distill_steps > 0) {
      DistillResult d = session.distill_quantized(options, config, q);
      to_write = d.module;
      distillation = d.report;
      q.timings["distill"] = seconds_since(t);
      t = Clock::now();
    }
    const std::string path = output_name(options.output, budget, several);
    const WriteStats written = write_quantized_model(to_write, session.index(), q.slots(),
                                                     output_format_from_name(options.format), path);
    nlohmann::json timings = session.timings();
    for (const auto& item : q.timings.items()) timings[item.key()] = item.value();
    timings["write"] = seconds_since(t);
    timings["total"] = seconds_since(start);
    outcome.outputs.push_back(path);

    nlohmann::json report = quantized_model_report(session, config, q, written, budget);
    report["bayesq_version"] = "0.1.0";
    report["command_line"] = options.command_line;
    report["config"] = options_json(options);
    report["seed"] = options.seed;
    report["libtorch_version"] = TORCH_VERSION;
    report["device"] = device_description(device);
    report["model"] = {{"path", options.model}, {"hash", session.model().hash}, {"bytes", session.model().file_bytes}};
    report["output"] = path;
    report["timings"] = timings;
    report["peak_memory"] = {{"host_bytes", peak_host_bytes()}, {"device_bytes", peak_device_bytes(options.device)}};
    if (config.method == "bayesq" && config.curvature != "kfac") {
      const CurvatureSet& c = session.curvature();
      report["curvature"] = {{"estimator", c.estimator}, {"loss", c.loss},         {"examples", c.examples},
                             {"probes", c.probes},       {"seconds", c.seconds},   {"data_hash", c.data_hash},
                             {"notes", c.notes}};
    }
    if (!distillation.is_null()) report["distillation"] = distillation;
    if (!session.skipped().empty()) report["left_in_floating_point"] = session.skipped();
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

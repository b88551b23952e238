#include "bayesq/pipeline/quantize.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include <torch/script.h>
#include <torch/version.h>

#include "bayesq/calibrate/curvature.h"
#include "bayesq/common/atomic_file.h"
#include "bayesq/common/errors.h"
#include "bayesq/common/log.h"
#include "bayesq/common/timer.h"
#include "bayesq/export/model_writer.h"
#include "bayesq/pipeline/device.h"
#include "bayesq/pipeline/memory.h"
#include "bayesq/pipeline/quantize_model.h"
#include "bayesq/pipeline/session.h"
#include "bayesq/report/html_report.h"

namespace bayesq {

namespace {

std::string format_bits(double bits) {
  std::ostringstream out;
  out << bits;
  return out.str();
}

void validate(const QuantizeOptions& o) {
  BQ_CHECK(!o.model.empty(), ExitCode::usage, "--model is required");
  BQ_CHECK(!o.bits.empty(), ExitCode::usage, "--bits is required");
  const MethodConfig method = o.method.resolved(!o.calib.empty(), !o.posterior.empty());
  const bool whole = method.variant().whole_bits;
  for (double b : o.bits) {
    BQ_CHECK(std::isfinite(b) && b >= kMinBudget && b <= kMaxBudget, ExitCode::usage, "--bits ", b,
             " is outside the allowed range ", kMinBudget, "..", kMaxBudget);
    if (whole)
      BQ_CHECK(b == std::floor(b) && b >= 2 && b <= 8, ExitCode::usage, "--bits ", b, ": ",
               method_name(method.method), " uses one bit-width for every block, a whole number from 2 to 8");
  }
  output_format_from_name(o.format);
  o.run.validate();
  method.validate();
  check_method_inputs(method, o.calib, o.posterior);
  BQ_CHECK(method.curvature != Curvature::kfac || method.calibration.loss == "auto", ExitCode::usage,
           "--curvature-loss applies to the diagonal curvature (hutchinson, fisher); K-FAC samples its labels from "
           "the model: drop it, or add --curvature hutchinson");
  // Every output a new name or a regular file, no two the same file, none an input.
  std::vector<std::pair<std::string, std::string>> outputs;
  for (std::size_t i = 0; i < o.bits.size(); ++i) {
    outputs.emplace_back("-o", output_path(o, o.bits[i]));
    if (!o.report.empty()) outputs.emplace_back("--report", output_name(o.report, o.bits[i], o.bits.size() > 1));
    if (!o.html.empty()) outputs.emplace_back("--html", output_name(o.html, o.bits[i], o.bits.size() > 1));
  }
  for (const auto& out : outputs) check_output_path(out.second);
  check_distinct_files(outputs, {{"--model", o.model}, {"--calib", o.calib}, {"--posterior", o.posterior}});
}

nlohmann::json quantized_model_report(Session& session, const MethodConfig& config, const BudgetResult& r,
                                      double bits) {
  const BlockIndex& index = session.index();
  const QuantizedModel& q = r.quantized;
  const std::vector<BlockPosterior>* posteriors =
      config.variant().table == TableKind::posterior ? &session.posteriors(config) : nullptr;
  nlohmann::json blocks = nlohmann::json::array();
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    const BlockInfo& info = index.blocks[b];
    nlohmann::json entry{{"name", info.name}, {"shape", info.shape}, {"op", op_kind_name(info.op)}};
    if (!q.present[b]) {
      entry["keep_fp"] = true;
    } else {
      const QuantizedBlock& block = q.blocks[b];
      const BlockCost cost = block.cost();
      entry["bits"] = block.bits;
      entry["kind"] = codebook_kind_name(block.kind);
      entry["code_bytes"] = cost.code_bits / 8;
      entry["metadata_bytes"] = cost.metadata_bits / 8;
      entry["expected_loss"] = q.allocation ? q.allocation->blocks[b].expected_loss : block.expected_loss;
      entry["realised_loss"] = block.plugin_loss;
    }
    if (posteriors) entry["posterior"] = (*posteriors)[b];
    else if (config.variant().table == TableKind::kfac)  // K-FAC's diagonal: N G_rr A_jj + lambda (gptq/kfac.h)
      entry["posterior"] = {{"kind", "kfac"},
                            {"precision_quantiles", precision_quantiles(session.kfac_precision(config.posterior.damp)[b])}};
    blocks.push_back(entry);
  }
  const int64_t float_bytes = session.model().file_bytes;
  nlohmann::json report{
      {"method", config},
      {"bits", bits},
      {"blocks", blocks},
      {"totals",
       {{"quantized_weights", r.weights},
        {"average_bits", r.average_bits()},
        {"average_bits_without_metadata", r.average_code_bits()},
        {"code_bytes", r.code_bits / 8},
        {"metadata_bytes", r.metadata_bits / 8},
        {"file_bytes", r.written.file_bytes},
        {"float_model_bytes", float_bytes},
        {"compression", float_bytes ? double(r.written.file_bytes) / double(float_bytes) : 0.0}}},
      {"file", r.written},
      {"details", q.details}};
  if (q.allocation) report["allocation"] = *q.allocation;
  if (config.variant().table != TableKind::none) {
    report["posterior_temp"] = config.table.quantizer.tau;
    report["loss_table"] = session.table(config);  // cached: what the allocator read
    // The codebooks' level scale as it ran (`auto` in the config settles on the model).
    report["level_scale"] = {{"scale", level_scale_name(effective_level_scale(config, session.index()))},
                             {"per_example_norms", session.index().per_example_norms}};
  }
  const TableKind table = config.variant().table;
  if ((table == TableKind::posterior || table == TableKind::hawq_trace) && config.curvature != Curvature::data_free) {
    // The estimator as it ran (Note [Double backward probe]: Hutchinson may have become Fisher).
    const CurvatureSet& c = session.curvature(config.curvature_params());
    report["curvature"] = {{"estimator", c.estimator}, {"loss", c.loss},       {"examples", c.examples},
                           {"probes", c.probes},       {"seconds", c.seconds}, {"data_hash", c.data_hash},
                           {"notes", c.notes},          {"unfolded_convolutions", c.unfolded_convolutions}};
    if (!c.examples_per_rank.empty())
      report["curvature"]["per_rank"] = {{"examples", c.examples_per_rank}, {"seconds", c.seconds_per_rank}};
  }
  if (table == TableKind::kfac) {
    // Note [Backward probe]: whether G came from the model's backward or is the identity.
    const std::vector<LayerStats>& stats = session.kfac_stats();
    const std::string fallback = stats.empty() ? std::string() : stats.front().gradient_fallback;
    report["kfac_statistics"] = {{"output_gradients", fallback.empty()}, {"note", fallback}};
  }
  if (!r.distillation.is_null()) report["distillation"] = r.distillation;
  if (!r.joint_calibration_kl.is_null()) report["joint_calibration_kl"] = r.joint_calibration_kl;
  if (!r.holdout.is_null()) report["holdout"] = r.holdout;
  if (session.has_calibration()) report["calibration_split"] = session.calibration_split();
  return report;
}

void quantize_every_budget(const QuantizeOptions& options, Session& session, const MethodConfig& config,
                           const Compute& compute, OutputFormat format, Clock::time_point start,
                           QuantizeOutcome& outcome, std::vector<std::string>& written) {
  const bool several = options.bits.size() > 1;
  const bool writes = session.world().rank() == 0;
  for (double budget : options.bits) {
    const std::string path = output_path(options, budget);
    const BudgetResult r = run_budget(session, config, budget, writes ? path : std::string(), format);
    if (writes) written.push_back(path);
    nlohmann::json timings = session.timings();
    for (const auto& item : r.timings.items()) timings[item.key()] = item.value();
    timings["total"] = seconds_since(start);
    if (!writes) continue;  // the job's outputs, reports included, are rank 0's to write
    outcome.outputs.push_back(path);

    nlohmann::json report = quantized_model_report(session, config, r, budget);
    report["bayesq_version"] = "0.1.0";
    report["command_line"] = options.command_line;
    report["config"] = options_json(options);
    report["seed"] = options.run.seed;
    report["libtorch_version"] = TORCH_VERSION;
    report["device"] = device_description(compute.device);
    report["model"] = {{"path", options.model}, {"hash", session.model().hash}, {"bytes", session.model().file_bytes}};
    report["output"] = path;
    report["timings"] = timings;
    report["peak_memory"] = {{"host_bytes", peak_host_bytes()}, {"device_bytes", peak_device_bytes(compute.device)}};
    if (compute.device.is_cuda()) report["peak_memory"]["device_bytes_by_stage"] = stage_peaks();
    if (!session.skipped().empty()) report["left_in_floating_point"] = session.skipped();
    if (!session.distributed_report().is_null()) report["distributed"] = session.distributed_report();
    log::info("wrote ", path, " (", r.written.file_bytes, " bytes, ", r.average_bits(),
              " bits per weight with metadata)");
    if (!options.report.empty()) {
      const std::string report_path = output_name(options.report, budget, several);
      write_text_file(report_path, report.dump(2) + "\n");
      written.push_back(report_path);
      outcome.reports.push_back(report_path);
    }
    if (!options.html.empty()) {
      const std::string html_path = output_name(options.html, budget, several);
      write_text_file(html_path, quantize_report_html(report));
      written.push_back(html_path);
      outcome.html_reports.push_back(html_path);
    }
    outcome.report_json.push_back(std::move(report));
  }
}

}  // namespace

void check_method_inputs(const MethodConfig& method, const std::string& calib, const std::string& posterior) {
  const MethodVariant& v = method.variant();
  const std::string name = v.spec;
  if (v.needs_calibration && v.accepts_posterior)
    BQ_CHECK(!calib.empty() || !posterior.empty(), ExitCode::usage, "--method ", name,
             " needs calibration data (--calib) or a saved posterior (--posterior); --method rtn needs neither");
  else if (v.needs_calibration)
    BQ_CHECK(!calib.empty(), ExitCode::usage, "--method ", name, " needs calibration data (--calib)");
  if (method.distill.steps > 0)
    BQ_CHECK(!calib.empty(), ExitCode::usage, "distillation needs calibration data (--calib)");
}

nlohmann::json options_json(const QuantizeOptions& o) {
  return nlohmann::json{{"model", o.model},
                        {"calib", o.calib},
                        {"posterior", o.posterior},
                        {"output", o.output},
                        {"report", o.report},
                        {"html", o.html},
                        {"bits", o.bits},
                        {"format", o.format},
                        {"run", o.run},
                        {"method", o.method.resolved(!o.calib.empty(), !o.posterior.empty())},
                        {"config_file", o.config_file}};
}

std::string default_output_name(const std::string& model, double bits) {
  char tag[32];
  std::snprintf(tag, sizeof tag, bits == std::floor(bits) ? "%.1f" : "%g", bits);
  const std::filesystem::path path(model);
  return (path.parent_path() / (path.stem().string() + ".bq" + tag + ".pt")).string();
}

std::string output_path(const QuantizeOptions& o, double bits) {
  return o.output.empty() ? default_output_name(o.model, bits) : output_name(o.output, bits, o.bits.size() > 1);
}

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
  // A job of several processes (torchrun, srun): every rank runs the same pipeline, splits the per-block work
  // with the others, and rank 0 alone writes (Note [Multi-process jobs] in distributed/world.h).
  options.run.validate();  // --dist-timeout before it is used
  const std::shared_ptr<const World> world =
      World::join(launch_from_environment(), std::chrono::milliseconds(int64_t(options.run.dist_timeout) * 1000),
                  exchange_from_name(options.run.dist_backend));
  if (world->rank() != 0) log::set_level(log::Level::warn);
  const Compute compute = start_run(options.run, world->local_rank());
  reset_peak_device_bytes(compute.device);
  Session session({options.model, options.calib, options.posterior, options.run.holdout, options.run.measure_disjoint},
                  compute, world);
  const MethodConfig config = options.method.resolved(session.has_calibration(), !options.posterior.empty());
  if (config.curvature == Curvature::data_free)
    log::warn("no calibration data: data-free mode (each weight's precision from its block's weights alone); "
              "--calib FILE gives better models");
  if (config.table.quantizer.level_scale == LevelScale::automatic) {
    const auto& norms = session.index().per_example_norms;
    log::info("codebook levels scaled to unit ",
              norms.empty() ? std::string("gain (no per-example normalisation in the model)")
                            : "energy (the model normalises each example: " + norms.front() + ")");
  }
  const OutputFormat format = output_format_from_name(options.format);
  check_budgets(session, config, options.bits);  // every budget before any file is written

  QuantizeOutcome outcome;
  // What this run wrote, removed again if a later budget fails: a failed run leaves no output.
  std::vector<std::string> written;
  try {
    quantize_every_budget(options, session, config, compute, format, start, outcome, written);
    world->finish();  // rank 0 may serve the store: it stays until every rank is done with it
  } catch (...) {
    std::error_code ec;
    for (const std::string& path : written) std::filesystem::remove(path, ec);
    throw;
  }
  return outcome;
}

}  // namespace bayesq

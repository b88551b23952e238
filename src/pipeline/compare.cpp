#include "bayesq/pipeline/compare.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include <torch/script.h>
#include <torch/version.h>

#include "bayesq/common/atomic_file.h"
#include "bayesq/common/errors.h"
#include "bayesq/common/log.h"
#include "bayesq/common/timer.h"
#include "bayesq/data/data_file.h"
#include "bayesq/eval/evaluate.h"
#include "bayesq/export/model_writer.h"
#include "bayesq/model/model_file.h"
#include "bayesq/pipeline/device.h"
#include "bayesq/pipeline/memory.h"
#include "bayesq/pipeline/quantize_model.h"
#include "bayesq/pipeline/session.h"
#include "bayesq/report/html_report.h"

namespace bayesq {

namespace fs = std::filesystem;

namespace {

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string file_tag(std::string method, double bits) {
  for (char& c : method)
    if (c == '/' || c == '+') c = '_';
  std::ostringstream out;
  out << method << "-" << bits << "b.pt";
  return out.str();
}

// Rows of an earlier run of this comparison, from its JSON (complete or stopped), for --resume. The file must
// name the same run (model hash, calibration and evaluation files, seed, device): rows of another run are never
// mixed in. A missing file is a fresh start.
std::vector<nlohmann::json> earlier_rows(const std::string& path, const nlohmann::json& run) {
  std::vector<nlohmann::json> rows;
  if (!fs::exists(path)) return rows;
  nlohmann::json doc;
  try {
    std::ifstream in(path);
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    BQ_FAIL(ExitCode::input, "--resume: not a JSON file of bayesq compare: ", path);
  }
  BQ_CHECK(doc.is_object() && doc.contains("rows") && doc["rows"].is_array(), ExitCode::input,
           "--resume: not a JSON file of bayesq compare: ", path);
  BQ_CHECK(doc.value("run", nlohmann::json()) == run, ExitCode::usage, "--resume: ", path,
           " holds rows of another run (model, calibration or evaluation file, seed or device differ); remove it or "
           "write elsewhere");
  for (const auto& r : doc["rows"])
    if (r.value("method", "") != "float") rows.push_back(r);
  return rows;
}

// The earlier row of this method and budget, if it was made with the same result key (result_key: every setting
// that changes this method's model, and nothing else). Infeasibility does not depend on distillation.
const nlohmann::json* kept_row(const std::vector<nlohmann::json>& earlier, const std::string& method, double bits,
                               const nlohmann::json& key) {
  nlohmann::json key_without_distill = key;
  key_without_distill.erase("distill");
  for (const auto& r : earlier) {
    if (r.value("method", "") != method || r.value("bits", -1.0) != bits || !r.contains("key")) continue;
    if (r["key"] == key) return &r;
    nlohmann::json other = r["key"];
    other.erase("distill");
    if (r.value("infeasible", false) && other == key_without_distill) return &r;
  }
  return nullptr;
}

}  // namespace

CompareOutcome run_compare(const CompareOptions& options) {
  const auto start = Clock::now();
  const QuantizeOptions& base = options.base;
  BQ_CHECK(!base.model.empty() && !base.calib.empty() && !options.data.empty(), ExitCode::usage,
           "compare needs --model, --calib and --data");
  BQ_CHECK(!options.methods.empty() && !base.bits.empty(), ExitCode::usage, "compare needs --methods and --bits");
  BQ_CHECK(!options.resume || !options.json_output.empty(), ExitCode::usage,
           "--resume needs --json-output (the file whose rows it keeps)");
  std::vector<MethodConfig> per_method;
  for (const auto& m : options.methods) {
    bool distilled = false;
    MethodConfig c = parse_method_spec(base.method, m, &distilled).resolved(true);
    if (!distilled) c.distill.steps = 0;
    c.validate();
    check_method_inputs(c, base.calib, "");
    per_method.push_back(c);
  }
  if (!options.json_output.empty()) check_output_path(options.json_output);
  if (!options.markdown_output.empty()) check_output_path(options.markdown_output);
  if (!options.html_output.empty()) check_output_path(options.html_output);

  std::string folder = options.keep_models;
  const bool temporary = folder.empty();
  if (temporary) folder = (fs::temp_directory_path() / ("bayesq-compare-" + std::to_string(::getpid()))).string();
  std::error_code ec;
  fs::create_directories(folder, ec);
  BQ_CHECK(!ec, ExitCode::io, "cannot create folder for the quantized models (", ec.message(), "): ", folder);

  const Compute compute = start_run(base.run);
  const std::string device = device_description(compute.device);
  Session session({base.model, base.calib, "", base.run.holdout, base.run.measure_disjoint}, compute);
  // What makes two runs the same comparison, for --resume; each row also carries its method's result key.
  nlohmann::json run = base.run;
  run.erase("threads");  // does not change results
  run.update({{"model_hash", session.model().hash}, {"calib", base.calib}, {"data", options.data}, {"device", device}});
  const std::vector<nlohmann::json> earlier =
      options.resume ? earlier_rows(options.json_output, run) : std::vector<nlohmann::json>{};
  auto write_partial = [&](const nlohmann::json& rows) {
    // After every row: a long comparison that is stopped keeps what it measured (and --resume goes on from it).
    if (!options.json_output.empty())
      write_text_file(options.json_output,
                      nlohmann::json{{"partial", true}, {"run", run}, {"rows", rows}}.dump(2) + "\n");
  };
  const DataFile eval_data = DataFile::load(options.data);
  EvalParams eval_params;
  eval_params.batch_size = options.eval_batch_size;
  eval_params.output = base.run.output_index;
  eval_params.device = compute.device;
  torch::jit::Module reference = session.model().module.clone();

  nlohmann::json rows = nlohmann::json::array();
  {
    torch::jit::Module float_model = session.model().module.clone();
    const EvalResult r = evaluate(float_model, nullptr, eval_data, eval_params, base.model);
    nlohmann::json row = r;
    row["method"] = "float";
    row["file_bytes"] = session.model().file_bytes;
    row["agreement"] = 1.0;
    row["mean_kl"] = 0.0;
    rows.push_back(row);
  }

  // With match_uniform, allocating methods also run at the average bits (metadata included) that the whole-bit
  // uniform methods actually use at each whole budget, so rows compare at equal file sizes.
  std::vector<double> matched;
  if (options.match_uniform)
    for (double bits : base.bits) {
      if (bits != std::floor(bits)) continue;
      int64_t cost = 0, weights = 0;
      for (const BlockInfo& info : session.index().blocks) {
        cost += block_cost(info.rows(), info.cols(), static_cast<int>(bits), CodebookKind::uniform_asymmetric,
                           base.method.table.quantizer.group_size).total();
        weights += info.numel();
      }
      matched.push_back(std::floor(double(cost) / double(weights) * 1e4) / 1e4);
    }

  for (std::size_t m = 0; m < options.methods.size(); ++m) {
    const std::string& spec = options.methods[m];
    const MethodConfig& config = per_method[m];
    const bool whole = config.variant().whole_bits;
    const nlohmann::json key = result_key(config);
    check_budgets(session, config, {});  // --keep-fp and the fp16 range; each budget's feasibility is its row's
    std::vector<double> budgets = base.bits;
    if (!whole) budgets.insert(budgets.end(), matched.begin(), matched.end());
    for (double bits : budgets) {
      if (whole && bits != std::floor(bits)) continue;  // whole bits only
      log::info("compare: ", spec, " at ", bits, " bits");
      if (const nlohmann::json* kept = kept_row(earlier, spec, bits, key)) {
        log::info("compare: ", spec, " at ", bits, " bits: row kept from ", options.json_output);
        rows.push_back(*kept);
        write_partial(rows);
        continue;
      }
      reset_peak_device_bytes(compute.device);
      const std::string path = (fs::path(folder) / file_tag(spec, bits)).string();
      std::optional<BudgetResult> result;
      try {
        result = run_budget(session, config, bits, path, OutputFormat::packed);
      } catch (const InfeasibleBudget& e) {
        // One budget below what this method can reach (its metadata, or --min-bits rules) should not cost the
        // rest of a long comparison: the row says so, and the run goes on.
        log::warn("compare: ", spec, " at ", bits, " bits: ", e.what(), "; row left empty");
        rows.push_back({{"method", spec}, {"label", config.label()}, {"bits", bits}, {"infeasible", true},
                        {"smallest_bits", e.smallest_bits()}, {"config", config}, {"key", key}});
        write_partial(rows);
        continue;
      }
      const BudgetResult& r = *result;
      const int64_t peak = peak_device_bytes(compute.device);
      nlohmann::json timings = r.timings;
      auto t = Clock::now();
      torch::jit::Module quantized =
          r.dequantized ? *r.dequantized : dequantized_module(r.module, session.index(), r.quantized.slots());
      const EvalResult e = evaluate(quantized, &reference, eval_data, eval_params, base.model);
      timings["eval"] = seconds_since(t);
      nlohmann::json row = e;
      row["method"] = spec;
      row["label"] = config.label() +
                     (config.distill.steps > 0 ? " + distill " + std::to_string(config.distill.steps) : "");
      row["bits"] = bits;
      row["average_bits"] = r.average_bits();
      row["average_bits_without_metadata"] = r.average_code_bits();
      row["file_bytes"] = r.written.file_bytes;
      row["timings"] = timings;
      row["peak_device_bytes"] = peak;
      if (compute.device.is_cuda()) row["peak_device_bytes_by_stage"] = stage_peaks();
      row["config"] = config;
      row["key"] = key;
      if (!r.distillation.is_null()) row["distill"] = r.distillation;
      if (!r.joint_calibration_kl.is_null()) row["joint_calibration_kl"] = r.joint_calibration_kl;
      if (!r.holdout.is_null()) row["holdout"] = r.holdout;
      if (r.quantized.allocation) {
        std::vector<int> chosen;
        for (const auto& b : r.quantized.allocation->blocks) chosen.push_back(b.keep_fp ? 0 : b.bits);
        row["bits_per_block"] = chosen;
      }
      rows.push_back(row);
      if (temporary) fs::remove(path, ec);
      write_partial(rows);
    }
  }
  if (temporary) fs::remove_all(folder, ec);

  CompareOutcome out;
  out.results = {{"model", base.model},
                 {"calib", base.calib},
                 {"data", options.data},
                 {"device", device},
                 {"libtorch_version", TORCH_VERSION},
                 {"seed", base.run.seed},
                 {"run", run},
                 {"shared_timings", session.timings()},
                 {"calibration_split", session.has_calibration() ? session.calibration_split() : nlohmann::json()},
                 {"total_seconds", seconds_since(start)},
                 {"rows", rows}};
  if (!options.json_output.empty()) write_text_file(options.json_output, out.results.dump(2) + "\n");
  std::ostringstream md;
  md << "| method | bits | avg bits | w/o meta | file (KiB) | top-1 (%) | NLL | ECE (%) | agree (%) | KL(float‖q) | "
        "quantize (s) | eval (s) | peak dev (MiB) |\n"
     << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& r : rows) {
    const bool is_float = r["method"] == "float";
    if (r.value("infeasible", false)) {
      md << "| " << r["method"].get<std::string>() << " | " << fixed(r["bits"].get<double>(), 2)
         << " | infeasible: needs at least " << fixed(r["smallest_bits"].get<double>(), 4)
         << " | | | | | | | | | | |\n";
      continue;
    }
    md << "| " << r["method"].get<std::string>() << " | " << (is_float ? "32" : fixed(r["bits"].get<double>(), 2))
       << " | " << (is_float ? "-" : fixed(r["average_bits"].get<double>(), 3)) << " | "
       << (is_float ? "-" : fixed(r["average_bits_without_metadata"].get<double>(), 3)) << " | "
       << fixed(double(r["file_bytes"].get<int64_t>()) / 1024.0, 1) << " | "
       << (r.contains("top1") ? fixed(100 * r["top1"].get<double>(), 2) : "-") << " | "
       << (r.contains("nll") ? fixed(r["nll"].get<double>(), 4) : "-") << " | "
       << (r.contains("ece") ? fixed(100 * r["ece"].get<double>(), 2) : "-") << " | "
       << fixed(100 * r["agreement"].get<double>(), 2) << " | " << fixed(r["mean_kl"].get<double>(), 5) << " | "
       << (is_float ? "-" : fixed(r["timings"]["quantize_total"].get<double>() +
                                       r["timings"].value("distill", 0.0), 1))
       << " | " << (is_float ? "-" : fixed(r["timings"]["eval"].get<double>(), 1)) << " | "
       << (is_float ? "-" : fixed(double(r["peak_device_bytes"].get<int64_t>()) / 1048576.0, 0)) << " |\n";
  }
  md << "\nShared, once for all rows:";
  const nlohmann::json shared = session.timings();  // a copy: items() must not outlive it
  for (const auto& item : shared.items())
    md << " " << item.key() << " " << fixed(item.value().get<double>(), 1) << " s;";
  md << " total " << fixed(seconds_since(start), 1) << " s (" << device << ").\n";
  out.markdown = md.str();
  if (!options.markdown_output.empty()) write_text_file(options.markdown_output, out.markdown);
  if (!options.html_output.empty()) write_text_file(options.html_output, compare_report_html(out.results));
  return out;
}

}  // namespace bayesq

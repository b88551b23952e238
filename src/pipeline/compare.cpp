#include "bayesq/pipeline/compare.h"

#include <chrono>
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
#include "bayesq/data/data_file.h"
#include "bayesq/eval/evaluate.h"
#include "bayesq/export/model_writer.h"
#include "bayesq/model/model_file.h"
#include "bayesq/pipeline/device.h"
#include "bayesq/pipeline/memory.h"
#include "bayesq/pipeline/session.h"

namespace bayesq {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, separator);) out.push_back(part);
  return out;
}

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

// The earlier row of this method and budget, if it was made with the same configuration and distillation steps.
const nlohmann::json* kept_row(const std::vector<nlohmann::json>& earlier, const std::string& method, double bits,
                               const nlohmann::json& config, int distill_steps) {
  for (const auto& r : earlier) {
    if (r.value("method", "") != method || r.value("bits", -1.0) != bits || r.value("config", nlohmann::json()) != config)
      continue;
    if (r.value("infeasible", false)) return &r;  // infeasibility does not depend on distillation
    const int steps = r.contains("distill") ? r["distill"].value("steps", -1) : 0;
    if (steps == distill_steps) return &r;
  }
  return nullptr;
}

}  // namespace

QuantizeOptions method_options(const QuantizeOptions& base, const std::string& method) {
  QuantizeOptions o = base;
  const std::vector<std::string> distill_parts = split(method, '+');
  BQ_CHECK(!distill_parts.empty() && distill_parts.size() <= 2, ExitCode::usage, "bad method '", method, "'");
  if (distill_parts.size() == 2) {
    BQ_CHECK(distill_parts[1] == "distill", ExitCode::usage, "bad method '", method, "' (only +distill follows)");
    if (o.distill_steps == 0) o.distill_steps = 500;
  } else {
    o.distill_steps = 0;
  }
  const std::vector<std::string> parts = split(distill_parts[0], '/');
  o.method = parts.at(0);
  BQ_CHECK(o.method == "rtn" || o.method == "gptq" || o.method == "hawq" || o.method == "bayesq", ExitCode::usage,
           "unknown method '", o.method, "' in '", method, "'");
  for (std::size_t i = 1; i < parts.size(); ++i) {
    const std::string& m = parts[i];
    if (m == "act") o.act_order = true;
    else if (m == "kfac" || m == "fisher" || m == "hutchinson") o.curvature = m;
    else if (m == "lloyd" || m == "uniform") o.codebook = m;
    else if (m == "tau1") o.tau = 1.0;
    else if (m == "greedy" || m == "dp") o.allocator = m;
    else if (m == "measured" || m == "expected") o.table_loss = m;
    else BQ_FAIL(ExitCode::usage, "unknown modifier '", m, "' in method '", method, "'");
  }
  return o;
}

CompareOutcome run_compare(const CompareOptions& options) {
  const auto start = Clock::now();
  BQ_CHECK(!options.base.model.empty() && !options.base.calib.empty() && !options.data.empty(), ExitCode::usage,
           "compare needs --model, --calib and --data");
  BQ_CHECK(!options.methods.empty() && !options.base.bits.empty(), ExitCode::usage, "compare needs --methods and --bits");
  BQ_CHECK(!options.resume || !options.json_output.empty(), ExitCode::usage,
           "--resume needs --json-output (the file whose rows it keeps)");
  std::vector<QuantizeOptions> per_method;
  for (const auto& m : options.methods) per_method.push_back(method_options(options.base, m));
  if (!options.json_output.empty()) check_output_path(options.json_output);
  if (!options.markdown_output.empty()) check_output_path(options.markdown_output);

  std::string folder = options.keep_models;
  const bool temporary = folder.empty();
  if (temporary) folder = (fs::temp_directory_path() / ("bayesq-compare-" + std::to_string(::getpid()))).string();
  std::error_code ec;
  fs::create_directories(folder, ec);
  BQ_CHECK(!ec, ExitCode::io, "cannot create folder for the quantized models (", ec.message(), "): ", folder);

  const torch::Device device = parse_device(options.base.device);
  Session session(options.base);
  // What makes two runs the same comparison, for --resume (the rows also carry each method's configuration).
  const nlohmann::json run = {{"model_hash", session.model().hash}, {"calib", options.base.calib},
                              {"data", options.data},                {"seed", options.base.seed},
                              {"device", device_description(device)}};
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
  eval_params.output = options.base.output_index;
  eval_params.device = options.base.device;
  torch::jit::Module reference = session.model().module.clone();

  nlohmann::json rows = nlohmann::json::array();
  {
    torch::jit::Module float_model = session.model().module.clone();
    const EvalResult r = evaluate(float_model, nullptr, eval_data, eval_params, options.base.model);
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
    for (double bits : options.base.bits) {
      if (bits != std::floor(bits)) continue;
      int64_t cost = 0, weights = 0;
      for (const BlockInfo& info : session.index().blocks) {
        cost += block_cost(info.rows(), info.cols(), static_cast<int>(bits), CodebookKind::uniform_asymmetric,
                           options.base.group_size).total();
        weights += info.numel();
      }
      matched.push_back(std::floor(double(cost) / double(weights) * 1e4) / 1e4);
    }

  for (std::size_t m = 0; m < options.methods.size(); ++m) {
    const QuantizeOptions& o = per_method[m];
    const MethodConfig config = method_config(o);
    std::vector<double> budgets = options.base.bits;
    if (o.method == "bayesq" || o.method == "hawq") budgets.insert(budgets.end(), matched.begin(), matched.end());
    for (double bits : budgets) {
      if ((o.method == "rtn" || o.method == "gptq") && bits != std::floor(bits)) continue;  // whole bits only
      log::info("compare: ", options.methods[m], " at ", bits, " bits");
      if (const nlohmann::json* kept = kept_row(earlier, options.methods[m], bits, config.to_json(), o.distill_steps)) {
        log::info("compare: ", options.methods[m], " at ", bits, " bits: row kept from ", options.json_output);
        rows.push_back(*kept);
        write_partial(rows);
        continue;
      }
      reset_peak_device_bytes(o.device);
      nlohmann::json timings = nlohmann::json::object();
      auto t = Clock::now();
      std::optional<QuantizedModel> quantized_or_none;
      try {
        quantized_or_none = session.quantize(config, bits);
      } catch (const InfeasibleBudget& e) {
        // One budget below what this method can reach (its metadata, or --min-bits rules) should not cost the
        // rest of a long comparison: the row says so, and the run goes on.
        log::warn("compare: ", options.methods[m], " at ", bits, " bits: ", e.what(), "; row left empty");
        rows.push_back({{"method", options.methods[m]}, {"label", config.label()}, {"bits", bits},
                        {"infeasible", true}, {"smallest_bits", e.smallest_bits()}, {"config", config.to_json()}});
        write_partial(rows);
        continue;
      }
      QuantizedModel& q = *quantized_or_none;
      timings = q.timings;
      timings["quantize_total"] = seconds_since(t);
      torch::jit::Module to_write = session.model().module;
      nlohmann::json distill_report;
      if (o.distill_steps > 0) {
        t = Clock::now();
        DistillResult distilled = session.distill_quantized(o, config, q);
        timings["distill"] = seconds_since(t);
        to_write = distilled.module;
        distill_report = std::move(distilled.report);  // held-out KL at step 0 and best, best step, curve
      }
      const int64_t peak = peak_device_bytes(o.device);
      const std::string path = (fs::path(folder) / file_tag(options.methods[m], bits)).string();
      const WriteStats written = write_quantized_model(to_write, session.index(), q.slots(), OutputFormat::packed, path);
      t = Clock::now();
      torch::jit::Module quantized = dequantized_module(to_write, session.index(), q.slots());
      const EvalResult r = evaluate(quantized, &reference, eval_data, eval_params, o.model);
      timings["eval"] = seconds_since(t);
      int64_t weights = 0, code = 0, meta = 0;
      for (std::size_t b = 0; b < q.blocks.size(); ++b) {
        if (!q.present[b]) continue;
        const BlockCost c = q.blocks[b].cost();
        weights += session.index().blocks[b].numel();
        code += c.code_bits;
        meta += c.metadata_bits;
      }
      nlohmann::json row = r;
      row["method"] = options.methods[m];
      row["label"] = config.label() + (o.distill_steps > 0 ? " + distill " + std::to_string(o.distill_steps) : "");
      row["bits"] = bits;
      row["average_bits"] = double(code + meta) / double(weights);
      row["average_bits_without_metadata"] = double(code) / double(weights);
      row["file_bytes"] = written.file_bytes;
      row["timings"] = timings;
      row["peak_device_bytes"] = peak;
      row["config"] = config.to_json();
      if (!distill_report.is_null()) row["distill"] = distill_report;
      if (q.allocation) {
        std::vector<int> chosen;
        for (const auto& b : q.allocation->blocks) chosen.push_back(b.keep_fp ? 0 : b.bits);
        row["bits_per_block"] = chosen;
      }
      rows.push_back(row);
      if (temporary) fs::remove(path, ec);
      write_partial(rows);
    }
  }
  if (temporary) fs::remove_all(folder, ec);

  CompareOutcome out;
  out.results = {{"model", options.base.model},
                 {"calib", options.base.calib},
                 {"data", options.data},
                 {"device", device_description(device)},
                 {"libtorch_version", TORCH_VERSION},
                 {"seed", options.base.seed},
                 {"run", run},
                 {"shared_timings", session.timings()},
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
  md << " total " << fixed(seconds_since(start), 1) << " s (" << device_description(device) << ").\n";
  out.markdown = md.str();
  if (!options.markdown_output.empty()) write_text_file(options.markdown_output, out.markdown);
  return out;
}

}  // namespace bayesq

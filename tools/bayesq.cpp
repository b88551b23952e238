// The `bayesq` command-line tool: argument parsing and printing only; the work happens in the library.
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>

#include <CLI/CLI.hpp>

#include "bayesq/common/atomic_file.h"
#include "bayesq/common/errors.h"
#include "bayesq/distributed/world.h"
#include "bayesq/common/log.h"
#include "bayesq/common/progress.h"
#include "bayesq/codebook/codebook.h"
#include "bayesq/pipeline/commands.h"
#include "bayesq/pipeline/compare.h"
#include "bayesq/pipeline/quantize.h"
#include "json_config.h"

#include <torch/version.h>

namespace {

using bayesq::ExitCode;

// --tf32 / --no-tf32 (Note [TF32 off by default] in pipeline/device.h), on every subcommand that runs a model.
constexpr const char* kTf32Help =
    "CUDA: allow TF32 in cuDNN convolutions and cuBLAS products (faster, about 1e-3 relative error; off: full fp32)";

// Errors are one line: a newline in a path or a library message would split them.
std::string one_line(std::string text) {
  for (std::size_t at = 0; (at = text.find('\n', at)) != std::string::npos; at += 2) text.replace(at, 1, "\\n");
  return text;
}

// A comma-separated list option ("3,3.5", or a config file's [3, 3.5]) parsed strictly: an empty item ("3,,4")
// or one that is not wholly a number is a usage error, not a value dropped or read as 0.
template <typename T>
std::vector<T> parse_list(const std::vector<std::string>& texts, const char* option) {
  std::vector<T> out;
  for (const std::string& text : texts) {
    std::stringstream in(text);
    std::string item;
    bool any = false;
    while (std::getline(in, item, ',')) {
      any = true;
      std::size_t used = 0;
      T value{};
      try {
        if constexpr (std::is_integral_v<T>) value = static_cast<T>(std::stoi(item, &used));
        else value = static_cast<T>(std::stod(item, &used));
      } catch (const std::exception&) {
        used = 0;
      }
      BQ_CHECK(!item.empty() && used == item.size(), ExitCode::usage, option, ": '", text,
               "' is not a comma-separated list of numbers");
      out.push_back(value);
    }
    BQ_CHECK(any && text.back() != ',', ExitCode::usage, option, ": '", text,
             "' is not a comma-separated list of numbers");
  }
  return out;
}

// "REGEX=N" for --min-bits / --max-bits.
bayesq::BitsRule parse_rule(const std::string& text, bool minimum) {
  const auto eq = text.find_last_of('=');
  BQ_CHECK(eq != std::string::npos && eq > 0, ExitCode::usage, "bits rule '", text, "' must read REGEX=BITS");
  bayesq::BitsRule rule;
  rule.pattern = text.substr(0, eq);
  int bits = 0;
  try {
    bits = std::stoi(text.substr(eq + 1));
  } catch (const std::exception&) {
    BQ_FAIL(ExitCode::usage, "bits rule '", text, "' must end in a whole number of bits");
  }
  BQ_CHECK(bits >= 1 && bits <= 8, ExitCode::usage, "bits rule '", text, "': bits must be 1..8");
  (minimum ? rule.min_bits : rule.max_bits) = bits;
  return rule;
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

void print_eval(const nlohmann::json& r) {
  std::printf("%-12s %10s\n", "examples", std::to_string(r["examples"].get<int64_t>()).c_str());
  if (r.contains("top1")) {
    std::printf("%-12s %10s\n", "top-1 (%)", fixed(100.0 * r["top1"].get<double>(), 2).c_str());
    std::printf("%-12s %10s\n", "NLL", fixed(r["nll"].get<double>(), 4).c_str());
    std::printf("%-12s %10s\n", "perplexity", fixed(r["perplexity"].get<double>(), 3).c_str());
    std::printf("%-12s %10s\n", "ECE (%)", fixed(100.0 * r["ece"].get<double>(), 2).c_str());
  }
  if (r.contains("agreement")) {
    std::printf("%-12s %10s\n", "agreement (%)", fixed(100.0 * r["agreement"].get<double>(), 2).c_str());
    std::printf("%-12s %10s\n", "KL(ref||m)", fixed(r["mean_kl"].get<double>(), 5).c_str());
  }
}

void print_inspect(const nlohmann::json& r) {
  if (r.contains("quantized")) {
    const auto& q = r["quantized"];
    std::printf("%s: bayesq output, %s format, %lld bytes\n", r["model"].get<std::string>().c_str(),
                q["format"].get<std::string>().c_str(), static_cast<long long>(r["file_bytes"].get<int64_t>()));
    std::printf("%-44s %-8s %-18s %5s %-18s %8s\n", "block", "op", "shape", "bits", "codebook", "group");
    for (const auto& b : q["blocks"]) {
      std::printf("%-44s %-8s %-18s %5s %-18s %8s\n", b["name"].get<std::string>().c_str(),
                  b["op"].get<std::string>().c_str(), b["shape"].dump().c_str(),
                  b.contains("bits") ? std::to_string(b["bits"].get<int>()).c_str() : "fp",
                  b.contains("kind") ? b["kind"].get<std::string>().c_str() : "-",
                  b.contains("group_size") ? std::to_string(b["group_size"].get<int64_t>()).c_str() : "-");
    }
    return;
  }
  std::printf("%-44s %-19s %-20s %6s %12s %10s %7s\n", "block", "op", "shape", "groups", "weights", "bytes", "share");
  int64_t weights = 0, bytes = 0;
  for (const auto& b : r["blocks"]) {
    const std::string groups = b.contains("conv") ? std::to_string(b["conv"]["groups"].get<int64_t>()) : "-";
    std::printf("%-44s %-19s %-20s %6s %12lld %10lld %6s%%\n", b["name"].get<std::string>().c_str(),
                b["op_symbol"].get<std::string>().c_str(), b["shape"].dump().c_str(), groups.c_str(),
                static_cast<long long>(b["numel"].get<int64_t>()), static_cast<long long>(b["bytes"].get<int64_t>()),
                fixed(100.0 * b["share"].get<double>(), 2).c_str());
    weights += b["numel"].get<int64_t>();
    bytes += b["bytes"].get<int64_t>();
  }
  const int64_t all = r["model_parameter_count"].get<int64_t>();
  std::printf("%zu blocks, %lld quantizable weights (%lld bytes), %s%% of the model's %lld parameters and buffers\n",
              r["blocks"].size(), static_cast<long long>(weights), static_cast<long long>(bytes),
              fixed(all ? 100.0 * double(weights) / double(all) : 0.0, 2).c_str(), static_cast<long long>(all));
  // Parameters left in floating point, largest first (one-dimensional ones counted together).
  std::vector<nlohmann::json> left(r["left_float"].begin(), r["left_float"].end());
  std::stable_sort(left.begin(), left.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
    return a["numel"].get<int64_t>() > b["numel"].get<int64_t>();
  });
  int64_t small = 0, small_count = 0;
  for (const auto& p : left) {
    if (p["shape"].size() < 2) {
      small += p["numel"].get<int64_t>();
      ++small_count;
      continue;
    }
    std::printf("left float: %-40s %-18s %12lld  %s\n", p["name"].get<std::string>().c_str(), p["shape"].dump().c_str(),
                static_cast<long long>(p["numel"].get<int64_t>()), p["reason"].get<std::string>().c_str());
  }
  if (small_count)
    std::printf("left float: %lld one-dimensional parameters (biases, norm scales), %lld values\n",
                static_cast<long long>(small_count), static_cast<long long>(small));
}

void print_quantize(const bayesq::QuantizeOutcome& outcome) {
  if (outcome.outputs.empty()) return;  // a process of a multi-process job other than rank 0
  std::printf("%-8s %-40s %12s %10s %10s %9s\n", "bits", "output", "bytes", "avg bits", "w/o meta", "vs float");
  for (std::size_t i = 0; i < outcome.outputs.size(); ++i) {
    const auto& t = outcome.report_json[i]["totals"];
    std::printf("%-8s %-40s %12lld %10s %10s %8sx\n", fixed(outcome.report_json[i]["bits"].get<double>(), 2).c_str(),
                outcome.outputs[i].c_str(), static_cast<long long>(t["file_bytes"].get<int64_t>()),
                fixed(t["average_bits"].get<double>(), 3).c_str(),
                fixed(t["average_bits_without_metadata"].get<double>(), 3).c_str(),
                fixed(t["compression"].get<double>(), 3).c_str());
  }
}

// Options `compare` shares with `quantize`, and the values that need converting after parsing: names become
// the enums of config.h, and a method spec (quantize --method) is applied last, so that its modifiers win over
// the flags (--method bayesq/kfac is --method bayesq --curvature kfac).
struct QuantizeExtras {
  std::string method = "bayesq";
  std::string curvature = "auto";
  std::string codebook = "auto";
  std::string table_loss = "measured";
  std::string allocator = "dp";
  bool one_shot = false;
  std::vector<std::string> min_rules, max_rules;
  std::vector<std::string> bits, candidates{"1,2,3,4,5,6,8"};
  bool distill_default = false;

  void apply(bayesq::QuantizeOptions& o, bool with_method_spec) const {
    bayesq::MethodConfig& m = o.method;
    o.bits = parse_list<double>(bits, "--bits");
    m.table.candidates = parse_list<int>(candidates, "--candidates");
    m.curvature = bayesq::curvature_from_name(curvature);
    if (codebook == "auto") m.table.kinds = {bayesq::CodebookKind::lloyd, bayesq::CodebookKind::uniform_asymmetric};
    else m.table.kinds = {bayesq::codebook_kind_from_name(codebook)};
    m.table_loss = bayesq::table_loss_from_name(table_loss);
    m.allocation.allocator = bayesq::allocator_kind_from_name(allocator);
    m.sequential = !one_shot;
    for (const auto& r : min_rules) m.allocation.rules.push_back(parse_rule(r, true));
    for (const auto& r : max_rules) m.allocation.rules.push_back(parse_rule(r, false));
    if (distill_default && m.distill.steps == 0) m.distill.steps = 500;
    if (with_method_spec) m = bayesq::parse_method_spec(m, method);
  }
};

void add_shared_options(CLI::App* app, bayesq::QuantizeOptions& q, QuantizeExtras& x) {
  bayesq::RunContext& run = q.run;
  bayesq::MethodConfig& m = q.method;
  app->add_option("--calib", q.calib, "Calibration data file (torch.save format, see README)");
  app->add_option("--device", run.device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  app->add_option("--seed", run.seed, "Seed for probes and sampling")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--batch-size", run.batch_size, "Calibration batch size")->capture_default_str();
  app->add_option("--output-index", run.output_index, "Which model output is the logits (index or dict key)");
  app->add_option("--threads", run.threads, "CPU threads for bayesq and libtorch (0: OMP_NUM_THREADS when set, else all cores)")->capture_default_str();
  app->add_option("--max-examples", run.max_examples, "Use at most this many calibration examples (0: all)")
      ->capture_default_str();
  app->add_flag("--tf32,!--no-tf32", run.tf32, kTf32Help);
  app->add_option("--dist-timeout", run.dist_timeout,
                  "Seconds a process of a multi-process job (torchrun, srun) waits for the others before it fails")
      ->capture_default_str();
  app->add_option("--dist-backend", run.dist_backend,
                  "What carries a multi-process job's exchanges: gloo (c10d's Gloo process group), store (c10d's "
                  "TCPStore alone), auto (gloo where this build has it, else store)")
      ->capture_default_str();
  app->add_option("--holdout", run.holdout,
                  "Fraction of the calibration examples held out (spread over the file): never fitted to, the "
                  "report scores the quantized model on them (0: none)")
      ->capture_default_str();
  app->add_option("--measure-disjoint", run.measure_disjoint,
                  "Keep this many fit examples for the measured tables and joint refinement alone, apart from "
                  "those the curvature and feedback are fitted on (0: off)")
      ->capture_default_str();
  app->add_option("--group-size", m.table.quantizer.group_size,
                  "Codebook per group of this many inputs (0: per output row)")
      ->capture_default_str();
  app->add_option("--curvature", x.curvature,
                  "auto (kfac with --calib, hutchinson with only --posterior, data-free with neither), kfac (K-FAC "
                  "metric with GPTQ-style error feedback), hutchinson or fisher (the paper's diagonal posterior), "
                  "data-free")
      ->check(CLI::IsMember({"auto", "hutchinson", "fisher", "kfac", "data-free"}))
      ->capture_default_str();
  app->add_option("--curvature-loss", m.calibration.loss, "auto (=kl), kl, ce (needs labels) or mse")
      ->check(CLI::IsMember({"auto", "kl", "ce", "mse"}))
      ->capture_default_str();
  app->add_option("--probes", m.calibration.probes, "Hutchinson probes per batch")->capture_default_str();
  app->add_option("--damp", m.posterior.damp, "Prior precision as a fraction of the mean data precision")
      ->capture_default_str();
  app->add_option("--candidates", x.candidates, "Candidate bit-widths")->capture_default_str();
  app->add_option("--codebook", x.codebook, "lloyd, uniform, uniform-symmetric, or auto (lloyd and uniform)")
      ->check(CLI::IsMember({"lloyd", "uniform", "uniform-symmetric", "auto"}))
      ->capture_default_str();
  app->add_option("--posterior-temp", m.table.quantizer.tau, "tau in [0, 1]: 0 plug-in loss, 1 the whole posterior")
      ->capture_default_str();
  app->add_option("--table-loss", x.table_loss,
                  "measured (N x calibration KL with that one block quantized; bayesq only) or expected (the posterior "
                  "loss model alone, no forward passes)")
      ->check(CLI::IsMember({"expected", "measured"}))
      ->capture_default_str();
  app->add_option("--measure-examples", m.measure.examples, "Calibration examples a measured table scores")
      ->capture_default_str();
  static const std::map<std::string, bayesq::MeasureParams::Prefix> prefix_names{
      {"auto", bayesq::MeasureParams::Prefix::automatic},
      {"on", bayesq::MeasureParams::Prefix::on},
      {"off", bayesq::MeasureParams::Prefix::off}};
  app->add_option("--cached-prefix", m.measure.cached_prefix,
                  "Measured tables and joint refinement run each option's forward from the block's cached prefix: "
                  "auto (on a CPU only; on CUDA it was slower), on, or off (full forwards; the same KLs)")
      ->transform(CLI::CheckedTransformer(prefix_names));
  static const std::map<std::string, bayesq::MeasureParams::Graphs> graph_names{
      {"auto", bayesq::MeasureParams::Graphs::automatic}, {"off", bayesq::MeasureParams::Graphs::off}};
  app->add_option("--cuda-graphs", m.measure.cuda_graphs,
                  "On CUDA, measured tables and joint refinement replay their forwards as one captured CUDA graph "
                  "each: auto (wherever capture works; the same KLs) or off")
      ->transform(CLI::CheckedTransformer(graph_names));
  app->add_option("--prefilter-window", m.measure.prefilter_window,
                  "K-FAC measured tables: per budget, design and measure only the options within this many "
                  "candidate bit-widths of the choice predicted from GPTQ-style min-max grids (-1: every option)")
      ->capture_default_str();
  app->add_option("--joint-rounds", m.joint.rounds,
                  "Rounds refining a measured table's allocation by the KL of the whole quantized model: each "
                  "re-measures every block's nearby options with the others quantized, re-allocates, and is kept "
                  "only if the joint KL falls (0: the additive allocation)")
      ->capture_default_str();
  app->add_option("--joint-window", m.joint.window,
                  "Candidate bit-widths either side of a block's current one that a joint round re-measures")
      ->capture_default_str();
  app->add_option("--joint-threshold", m.joint.threshold,
                  "Joint rounds run only when the additive allocation's measured KL exceeds this multiple of the "
                  "table's sum for it (0: always)")
      ->capture_default_str();
  app->add_option("--allocator", x.allocator,
                  "dp (exact knapsack; finely coarsened for very large models) or greedy (the paper's max-heap)")
      ->check(CLI::IsMember({"greedy", "dp"}))
      ->capture_default_str();
  app->add_flag("--certify", m.allocation.certify, "With greedy: also solve the exact DP and report the gap");
  app->add_option("--percdamp", m.gptq.percdamp, "GPTQ / K-FAC feedback: damping as a fraction of mean(diag H)")
      ->capture_default_str();
  app->add_flag("--act-order", m.gptq.act_order, "GPTQ / K-FAC feedback: quantize columns by decreasing H_jj");
  app->add_option("--gptq-block-size", m.gptq.block_size, "GPTQ lazy-update block (columns)")->capture_default_str();
  app->add_flag("--one-shot", x.one_shot,
                "gptq: take every layer's inputs from the float model (default: sequentially, after the layers "
                "before it are quantized)");
  app->add_option("--keep-fp", m.allocation.keep_fp,
                  "Regex of blocks left in floating point (their bytes count in the file, not in the budget)");
  app->add_option("--min-bits", x.min_rules, "REGEX=N: matching blocks get at least N bits");
  app->add_option("--max-bits", x.max_rules, "REGEX=N: matching blocks get at most N bits");
  app->add_option("--distill-steps", m.distill.steps,
                  "Distillation steps after quantizing (0: off); codes and file size stay the same")
      ->capture_default_str();
  app->add_flag("--distill", x.distill_default, "Distil for 500 steps (the paper's setting)");
  app->add_option("--distill-lr", m.distill.lr, "Adam learning rate of distillation")->capture_default_str();
  app->add_option("--teacher-samples", m.distill.teacher_samples,
                  "1: the float model teaches; S > 1: the mean softmax over S posterior weight samples")
      ->capture_default_str();
  app->add_option("--distill-holdout", m.distill.holdout,
                  "Fraction of the calibration data held out to keep the best distillation state")
      ->capture_default_str();
  app->add_option("--distill-eval-every", m.distill.eval_every, "Held-out evaluation interval (steps)")
      ->capture_default_str();
}

}  // namespace

int main(int argc, char** argv) {
#ifdef __GLIBC__
  // Batches allocate and free the same large buffers over and over; glibc returns blocks above its mmap threshold
  // to the kernel each time, and every new batch then pays page faults to zero fresh pages (1.4 s of system time
  // in a 5.2 s evaluation of the demo CNN on the 2-core machine; 0.2 s with these settings). Keep them in the heap.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
  CLI::App app{"bayesq: Bayesian post-training quantization of PyTorch (TorchScript) models"};
  app.require_subcommand(1);
  app.fallthrough();
  bayesq::install_output_cleanup();
  app.allow_config_extras(CLI::config_extras_mode::error);  // before the subcommands, which inherit it
  app.set_version_flag("--version", std::string("bayesq 0.1.0 (libtorch ") + TORCH_VERSION + ")");
  app.config_formatter(std::make_shared<bayesq_cli::JsonConfig>(&app));
  app.set_config("--config", "", "JSON file of option values (keys as the long options); the command line wins");
  bool quiet = false, verbose = false;
  app.add_flag("-q,--quiet", quiet, "Only warnings and errors");
  app.add_flag("-v,--verbose", verbose, "Debug logging");

  // quantize
  bayesq::QuantizeOptions q;
  QuantizeExtras qx;
  auto* quantize = app.add_subcommand("quantize", "Quantize a model to an average bit budget");
  quantize->add_option("--model", q.model, "TorchScript model (scripted or traced)")->required();
  quantize->add_option("-o,--output", q.output,
                       "Output model; with several --bits, '{bits}' in the name is replaced (else -<bits>b is added). "
                       "Default: beside the model, named for the budget (rn50.pt at 3 bits: rn50.bq3.0.pt)");
  quantize->add_option("--bits", qx.bits, "Average bits per weight, metadata included (a list writes one model each)")
      ->required();
  quantize->add_option("--method", qx.method, bayesq::methods_help())->capture_default_str();
  quantize->add_option("--posterior", q.posterior, "Posterior from `bayesq calibrate` (skips calibration)");
  quantize->add_option("--report", q.report, "JSON report path ('{bits}' as for -o)");
  quantize->add_option("--html", q.html,
                       "The report as one self-contained HTML file with charts ('{bits}' as for -o)");
  quantize->add_option("--format", q.format, "packed (codes + tables) or fake (de-quantized floats)")
      ->check(CLI::IsMember({"packed", "fake"}))
      ->capture_default_str();
  add_shared_options(quantize, q, qx);
  quantize->footer("Options may also come from a JSON file: bayesq quantize --config FILE ... (keys are the long "
                   "option names; the command line wins; examples in configs/).");

  // compare
  bayesq::CompareOptions cmp;
  QuantizeExtras cx;
  bool compare_json = false;
  auto* compare = app.add_subcommand("compare", "Quantize with several methods and budgets from one calibration "
                                                "and tabulate accuracy, KL, size and time");
  compare->add_option("--model", cmp.base.model, "TorchScript model")->required();
  compare->add_option("--data", cmp.data, "Evaluation data file")->required();
  compare->add_option("--bits", cx.bits, "Budgets (rtn and gptq run the whole-bit ones)")->required();
  compare->add_option("--methods", cmp.methods, "Comma-separated methods. " + bayesq::methods_help())
      ->delimiter(',')
      ->capture_default_str();
  compare->add_option("--keep-models", cmp.keep_models, "Folder to keep the quantized files in");
  compare->add_option("--json-output", cmp.json_output, "Write the full results as JSON");
  compare->add_option("--markdown-output", cmp.markdown_output, "Write the table as markdown");
  compare->add_option("--html-output", cmp.html_output, "Write the results as one self-contained HTML file with charts");
  compare->add_option("--eval-batch-size", cmp.eval_batch_size, "Evaluation batch size")->capture_default_str();
  compare->add_flag("--json", compare_json, "Print JSON instead of the table");
  compare->add_flag("--match-uniform", cmp.match_uniform,
                    "Also run allocating methods at the average bits (metadata included) that rtn/gptq use at each "
                    "whole budget");
  compare->add_flag("--resume", cmp.resume,
                    "Keep the rows that --json-output already holds from a stopped run of the same comparison (same "
                    "model, data, seed, device, batching) whose method settings match, and compute only the others");
  add_shared_options(compare, cmp.base, cx);

  // calibrate
  bayesq::CalibrateOptions c;
  auto* calibrate = app.add_subcommand("calibrate", "Estimate the posterior once, for several quantize runs");
  calibrate->add_option("--model", c.model, "TorchScript model")->required();
  calibrate->add_option("--calib", c.calib, "Calibration data file")->required();
  calibrate->add_option("-o,--output", c.output, "Posterior file (.bqp)")->required();
  std::string calibrate_estimator = "hutchinson";
  calibrate->add_option("--curvature", calibrate_estimator, "hutchinson or fisher")
      ->check(CLI::IsMember({"hutchinson", "fisher"}))
      ->capture_default_str();
  calibrate->add_option("--curvature-loss", c.curvature.loss, "auto (=kl), kl, ce or mse")
      ->check(CLI::IsMember({"auto", "kl", "ce", "mse"}))
      ->capture_default_str();
  calibrate->add_option("--probes", c.curvature.probes, "Hutchinson probes per batch")->capture_default_str();
  calibrate->add_option("--batch-size", c.run.batch_size, "Batch size")->capture_default_str();
  calibrate->add_option("--max-examples", c.run.max_examples, "Use at most this many examples (0: all)")
      ->capture_default_str();
  calibrate->add_option("--output-index", c.run.output_index, "Which model output is the logits");
  calibrate->add_option("--device", c.run.device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  calibrate->add_option("--seed", c.run.seed, "Seed")->check(CLI::NonNegativeNumber)->capture_default_str();
  calibrate->add_flag("--tf32,!--no-tf32", c.run.tf32, kTf32Help);
  calibrate->add_option("--threads", c.run.threads, "CPU threads for bayesq and libtorch (0: OMP_NUM_THREADS when set, else all cores)")->capture_default_str();

  // eval
  bayesq::EvalOptions e;
  bool eval_json = false;
  auto* eval = app.add_subcommand("eval", "Accuracy, NLL, ECE; agreement and KL against a reference model");
  eval->add_option("--model", e.models, "Model(s) to evaluate: each batch is read, and the reference run, once for all")
      ->required();
  eval->add_option("--data", e.data, "Evaluation data file")->required();
  eval->add_option("--reference", e.reference, "Reference (float) model for agreement and KL");
  eval->add_option("--batch-size", e.run.batch_size, "Batch size")->capture_default_str();
  eval->add_option("--output-index", e.run.output_index, "Which model output is the logits");
  eval->add_option("--device", e.run.device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  eval->add_flag("--tf32,!--no-tf32", e.run.tf32, kTf32Help);
  eval->add_option("--threads", e.run.threads, "CPU threads for bayesq and libtorch (0: OMP_NUM_THREADS when set, else all cores)")->capture_default_str();
  eval->add_flag("--json", eval_json, "Print JSON instead of a table (an array, one object per model, for several)");

  // inspect
  std::string inspect_path;
  bool inspect_json = false;
  auto* inspect = app.add_subcommand("inspect", "List a model's blocks, or a quantized model's bits per block");
  inspect->add_option("model", inspect_path, "TorchScript model")->required();
  inspect->add_flag("--json", inspect_json, "Print JSON instead of a table");

  // report
  std::string report_input, report_output;
  auto* report = app.add_subcommand("report", "Write a quantize report or compare JSON as one self-contained HTML file");
  report->add_option("json", report_input, "quantize --report or compare --json-output file")->required();
  report->add_option("-o,--output", report_output, "HTML file (default: the JSON's name with .html)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& err) {
    if (err.get_exit_code() == 0) return app.exit(err);
    std::fprintf(stderr, "bayesq: error: %s (see --help)\n", one_line(err.what()).c_str());
    return static_cast<int>(ExitCode::usage);
  }

  bayesq::log::set_level(quiet ? bayesq::log::Level::warn
                                : verbose ? bayesq::log::Level::debug : bayesq::log::Level::info);
  bayesq::Progress::set_enabled(!quiet && ::isatty(STDERR_FILENO));

  try {
    // Only quantize splits its work over the processes of a job; any other command would run N times over.
    if (!*quantize) {
      const bayesq::LaunchInfo launch = bayesq::launch_from_environment();
      BQ_CHECK(launch.world_size <= 1, ExitCode::usage, "only `bayesq quantize` runs as a job of several processes (",
               launch.launcher, " set a world of ", launch.world_size, "); run this command once");
    }
    if (*quantize) {
      qx.apply(q, true);
      q.command_line.assign(argv, argv + argc);
      if (app.get_config_ptr() && *app.get_config_ptr()) q.config_file = app.get_config_ptr()->as<std::string>();
      print_quantize(bayesq::run_quantize(q));
    } else if (*compare) {
      cx.apply(cmp.base, false);
      cmp.base.command_line.assign(argv, argv + argc);
      const bayesq::CompareOutcome r = bayesq::run_compare(cmp);
      if (compare_json) std::cout << r.results.dump(2) << "\n";
      else std::cout << r.markdown;
    } else if (*calibrate) {
      c.curvature.estimator = calibrate_estimator == "fisher" ? bayesq::CurvatureEstimator::fisher
                                                              : bayesq::CurvatureEstimator::hutchinson;
      const nlohmann::json r = bayesq::run_calibrate(c);
      std::printf("wrote %s: %lld examples, %s, %.2f s\n", c.output.c_str(),
                  static_cast<long long>(r["examples"].get<int64_t>()), r["estimator"].get<std::string>().c_str(),
                  r["seconds"].get<double>());
    } else if (*eval) {
      const nlohmann::json r = bayesq::run_eval(e);
      if (eval_json) {
        std::cout << (r.size() == 1 ? r.front() : r).dump(2) << "\n";  // several models: an array
      } else {
        for (const nlohmann::json& m : r) {
          if (r.size() > 1) std::printf("%s%s\n", &m == &r.front() ? "" : "\n", m["model"].get<std::string>().c_str());
          print_eval(m);
        }
      }
    } else if (*report) {
      std::cout << "wrote " << bayesq::run_report(report_input, report_output) << "\n";
    } else if (*inspect) {
      const nlohmann::json r = bayesq::run_inspect(inspect_path);
      if (inspect_json) std::cout << r.dump(2) << "\n";
      else print_inspect(r);
    }
  } catch (const bayesq::UserError& err) {
    std::fprintf(stderr, "bayesq: error: %s\n", one_line(err.what()).c_str());
    return static_cast<int>(err.code());
  } catch (const bayesq::InternalError& err) {
    std::fprintf(stderr, "bayesq: %s (please report this bug)\n", one_line(err.what()).c_str());
    return static_cast<int>(ExitCode::internal);
  } catch (const std::exception& err) {
    std::string what = err.what();
    what = what.substr(0, what.find('\n'));
    std::fprintf(stderr, "bayesq: internal error: %s (please report this bug)\n", what.c_str());
    return static_cast<int>(ExitCode::internal);
  }
  return 0;
}

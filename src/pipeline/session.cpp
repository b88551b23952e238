#include "bayesq/pipeline/session.h"

#include <chrono>
#include <cmath>
#include <regex>

#include <torch/torch.h>

#include "bayesq/calibrate/curvature.h"
#include "bayesq/common/errors.h"
#include "bayesq/common/log.h"
#include "bayesq/export/model_writer.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/block_tensor.h"
#include "bayesq/model/forward.h"
#include "bayesq/pipeline/device.h"
#include "bayesq/pipeline/feedback.h"

namespace bayesq {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::vector<CodebookKind> codebook_kinds(const std::string& name) {
  if (name == "auto") return {CodebookKind::lloyd, CodebookKind::uniform_asymmetric};
  return {codebook_kind_from_name(name)};
}

// The (bits, codebook) options of a block's table entries, in entry order.
std::vector<std::pair<int, CodebookKind>> entry_choices(const BlockLosses& losses) {
  std::vector<std::pair<int, CodebookKind>> choices;
  for (const LossEntry& e : losses.entries) choices.emplace_back(e.bits, e.kind);
  return choices;
}

CaptureParams capture_params(const QuantizeOptions& o) {
  CaptureParams cp;
  cp.batch_size = o.batch_size;
  cp.max_examples = o.max_examples;
  cp.output = o.output_index;
  cp.device = o.device;
  cp.seed = o.seed;
  return cp;
}

// The table key: everything but the budget and the allocation settings.
std::string table_key(const MethodConfig& c) {
  nlohmann::json j = c.to_json();
  for (const char* k : {"allocator", "certify", "keep_fp", "rules", "sequential", "label"}) j.erase(k);
  return j.dump();
}

}  // namespace

std::string MethodConfig::label() const {
  const std::string measured = table_loss == "measured" ? ", measured" : "";
  if (method == "gptq") return gptq.act_order ? "gptq (act-order)" : "gptq";
  if (method == "bayesq") {
    std::string label = "bayesq (" + (curvature == "kfac" ? std::string("kfac") : curvature == "fisher" ? "fisher" : "diag");
    if (kinds.size() == 1) label += std::string(", ") + codebook_kind_name(kinds[0]);
    if (tau > 0) label += ", tau " + std::to_string(tau).substr(0, 4);
    if (allocator == AllocatorKind::greedy) label += ", greedy";
    return label + measured + ")";
  }
  return method;
}

nlohmann::json MethodConfig::to_json() const {
  std::vector<std::string> kind_names;
  for (CodebookKind k : kinds) kind_names.push_back(codebook_kind_name(k));
  nlohmann::json rules_json = nlohmann::json::array();
  for (const auto& r : rules) rules_json.push_back({{"pattern", r.pattern}, {"min_bits", r.min_bits}, {"max_bits", r.max_bits}});
  nlohmann::json j{{"label", label()},         {"method", method},       {"curvature", curvature},
                   {"codebooks", kind_names},   {"candidates", candidates}, {"posterior_temp", tau},
                   {"group_size", group_size},  {"allocator", allocator_kind_name(allocator)},
                   {"certify", certify},        {"keep_fp", keep_fp},     {"rules", rules_json},
                   {"damp", damp},             {"table_loss", table_loss}};
  if (method == "gptq" || curvature == "kfac")
    j["gptq"] = {{"percdamp", gptq.percdamp}, {"act_order", gptq.act_order}, {"block_size", gptq.block_size},
                 {"sequential", sequential}};
  return j;
}

MethodConfig method_config(const QuantizeOptions& o) {
  MethodConfig c;
  c.method = o.method;
  c.curvature = o.curvature;
  c.kinds = codebook_kinds(o.codebook);
  c.candidates = o.candidates;
  c.tau = o.tau;
  c.group_size = o.group_size;
  c.allocator = allocator_kind_from_name(o.allocator);
  c.certify = o.certify;
  c.keep_fp = o.keep_fp;
  c.rules = o.rules;
  c.damp = o.damp;
  c.gptq.percdamp = o.percdamp;
  c.gptq.act_order = o.act_order;
  c.gptq.block_size = o.gptq_block_size;
  c.sequential = !o.one_shot;
  c.table_loss = o.table_loss;
  // A measured table runs the model on calibration data; with only a saved posterior (--posterior, no --calib)
  // the expected-loss model is what there is.
  if (o.calib.empty()) c.table_loss = "expected";
  if (c.method == "hawq") {  // HAWQ is defined by its trace-times-error sensitivity: never a measured table
    c.kinds = {CodebookKind::uniform_asymmetric};
    c.table_loss = "expected";
  }
  return c;
}

std::vector<const QuantizedBlock*> QuantizedModel::slots() const {
  std::vector<const QuantizedBlock*> out(blocks.size(), nullptr);
  for (std::size_t b = 0; b < blocks.size(); ++b)
    if (present[b]) out[b] = &blocks[b];
  return out;
}

Session::Session(const QuantizeOptions& options) : options_(options) {
  const auto t = Clock::now();
  model_ = load_model(options.model);
  model_.module.eval();
  check_finite_weights(model_.module, options.model);
  DiscoveryStats discovery;
  index_ = discover_blocks(model_.module, &discovery);
  skipped_ = discovery.skipped;
  BQ_CHECK(!index_.blocks.empty(), ExitCode::input, "model has no quantizable block (no convolution, linear or "
           "parameter matmul in its forward graph): ", options.model);
  for (const auto& s : skipped_) log::info("left in floating point: ", s);
  log::info(options.model, ": ", index_.blocks.size(), " blocks, ", index_.quantizable_weight_count(),
            " quantizable weights");
  for (const BlockInfo& info : index_.blocks) rows_.push_back(block_rows_vector(find_tensor(model_.module, info.name), info));
  if (!options.posterior.empty()) {
    CurvatureSet set = load_curvature(options.posterior);
    BQ_CHECK(set.model_hash == model_.hash, ExitCode::input, "posterior ", options.posterior,
             " was computed for another model (model hash ", set.model_hash, ", this model ", model_.hash, "): ",
             options.model);
    curvature_ = std::move(set);
  }
  timings_["load"] = seconds_since(t);
}

const DataFile& Session::calibration() {
  if (!calibration_) {
    BQ_CHECK(!options_.calib.empty(), ExitCode::usage, "this method needs calibration data (--calib)");
    calibration_ = std::make_unique<DataFile>(DataFile::load(options_.calib));
  }
  return *calibration_;
}

const CurvatureSet& Session::curvature() {
  if (!curvature_) {
    const auto t = Clock::now();
    CurvatureParams cp;
    cp.estimator = options_.curvature == "fisher" ? "fisher" : "hutchinson";
    cp.loss = options_.curvature_loss;
    cp.probes = options_.probes;
    cp.batch_size = options_.batch_size;
    cp.max_examples = options_.max_examples;
    cp.output = options_.output_index;
    cp.device = options_.device;
    cp.seed = options_.seed;
    curvature_ = estimate_curvature(model_.module, index_, calibration(), cp, options_.model);
    curvature_->model_hash = model_.hash;
    model_.module.to(torch::kCPU);
    timings_["calibrate"] = seconds_since(t);
  }
  return *curvature_;
}

const std::vector<BlockPosterior>& Session::posteriors(double damp) {
  auto it = posteriors_.find(damp);
  if (it != posteriors_.end()) return it->second;
  const CurvatureSet& set = curvature();
  std::vector<BlockPosterior> out;
  std::vector<std::vector<float>> rows;
  for (const BlockInfo& info : index_.blocks) {
    const int at = set.find(info.name);
    BQ_CHECK(at >= 0, ExitCode::input, "the posterior has no block '", info.name, "'");
    const CurvatureStats& c = set.blocks[static_cast<std::size_t>(at)];
    BQ_CHECK(static_cast<int64_t>(c.diagonal.size()) == info.numel(), ExitCode::input, "posterior block '",
             info.name, "' has ", c.diagonal.size(), " entries, the model's ", info.numel());
    out.push_back(fit_posterior(c, set.examples, PosteriorParams{damp}));
    if (out.back().fallback)
      log::warn("block ", info.name, ": posterior fallback (", out.back().fallback_reason, ")");
    const auto& p = out.back().precision;
    rows.push_back(block_rows_vector(
        torch::from_blob(const_cast<float*>(p.data()), info.shape, torch::kFloat32), info));
  }
  posterior_rows_[damp] = std::move(rows);
  return posteriors_[damp] = std::move(out);
}

const std::vector<LayerStats>& Session::kfac_stats() {
  if (!kfac_stats_) {
    const auto t = Clock::now();
    CaptureParams cp = capture_params(options_);
    cp.output_gradients = true;
    std::vector<std::size_t> all(index_.blocks.size());
    for (std::size_t b = 0; b < all.size(); ++b) all[b] = b;
    kfac_stats_ = capture_layer_stats(model_.module, index_, all, calibration(), cp, options_.model);
    model_.module.to(torch::kCPU);
    for (const auto& s : *kfac_stats_)
      if (!s.captured) log::warn("block ", s.name, ": no K-FAC statistics (", s.reason, "); plain squared error used");
    timings_["capture"] = seconds_since(t);
  }
  return *kfac_stats_;
}

BlockWeights Session::weights(std::size_t block, const std::vector<float>* precision) const {
  const BlockInfo& info = index_.blocks[block];
  return BlockWeights{rows_[block].data(), precision ? precision->data() : nullptr, info.rows(), info.cols()};
}

std::vector<bool> Session::kept_fp(const MethodConfig& config) const {
  std::vector<bool> kept(index_.blocks.size(), false);
  for (const auto& pattern : config.keep_fp) {
    std::regex re;
    try {
      re = std::regex(pattern);
    } catch (const std::regex_error& e) {
      BQ_FAIL(ExitCode::usage, "invalid regular expression '", pattern, "': ", e.what());
    }
    for (std::size_t b = 0; b < kept.size(); ++b)
      if (std::regex_search(index_.blocks[b].name, re)) kept[b] = true;
  }
  return kept;
}

// K-FAC diagonal precision of every weight: pi_rj = N G_rr A_jj + lambda, lambda = damp * mean(N G_rr A_jj).
const std::vector<float>& Session::kfac_precision(std::size_t block, const MethodConfig& config) {
  auto& cache = kfac_precision_[std::to_string(config.damp)];
  if (cache.empty()) cache.resize(index_.blocks.size());
  std::vector<float>& out = cache[block];
  if (!out.empty()) return out;
  const BlockInfo& info = index_.blocks[block];
  const LayerStats& s = kfac_stats()[block];
  if (!s.captured) {
    out.assign(static_cast<std::size_t>(info.numel()), 1.0f);
    return out;
  }
  const int64_t rows = info.rows(), cols = info.cols(), groups = s.groups();
  const torch::Tensor g = s.output_gradient_moment.defined() ? s.output_gradient_moment.diagonal().cpu()
                                                             : torch::ones({rows});
  torch::Tensor p = torch::empty({rows, cols});
  for (int64_t cg = 0; cg < groups; ++cg) {
    const torch::Tensor a = s.input_moment[static_cast<std::size_t>(cg)].diagonal().cpu();
    const int64_t per = rows / groups;
    p.slice(0, cg * per, (cg + 1) * per).copy_(g.slice(0, cg * per, (cg + 1) * per).unsqueeze(1) * a.unsqueeze(0));
  }
  p.mul_(static_cast<double>(s.examples));
  const double lambda = config.damp * p.mean().item<double>();
  p.add_(lambda > 0 ? lambda : 1.0);
  out.assign(p.data_ptr<float>(), p.data_ptr<float>() + p.numel());
  return out;
}

std::vector<QuantizedBlock> Session::option_blocks(const MethodConfig& config, std::size_t b,
                                                   const std::vector<std::pair<int, CodebookKind>>& choices) {
  std::vector<QuantizedBlock> out;
  if (config.method == "hawq") {
    for (const auto& [bits, kind] : choices) out.push_back(quantize_block_rtn(weights(b, nullptr), bits, config.group_size));
    return out;
  }
  QuantizerParams qp;
  qp.group_size = config.group_size;
  qp.tau = config.tau;
  if (config.curvature != "kfac") {
    posteriors(config.damp);
    for (const auto& [bits, kind] : choices) {
      qp.kind = kind;
      out.push_back(quantize_block(weights(b, &posterior_rows_.at(config.damp)[b]), bits, qp));
    }
    return out;
  }
  // K-FAC: codebooks designed in the diagonal K-FAC metric, codes chosen with error feedback along A, all options
  // of the block in one stacked pass (quantize_with_feedback_options).
  const LayerStats& s = kfac_stats()[b];
  auto start = Clock::now();
  for (const auto& [bits, kind] : choices) {
    qp.kind = kind;
    out.push_back(quantize_block(weights(b, &kfac_precision(b, config)), bits, qp));
  }
  design_seconds_ += seconds_since(start);
  if (!s.captured) return out;
  start = Clock::now();
  const BlockInfo& info = index_.blocks[b];
  std::vector<FeedbackOption> options;
  for (const QuantizedBlock& plain : out) options.push_back({plain.bits, plain.kind, &plain.codebooks});
  const torch::Tensor w = torch::from_blob(rows_[b].data(), {info.rows(), info.cols()}, torch::kFloat32)
                              .clone()
                              .to(parse_device(options_.device));
  std::vector<QuantizedBlock> fed = quantize_with_feedback_options(w, info, s, options, config.group_size, config.gptq);
  for (std::size_t e = 0; e < fed.size(); ++e) fed[e].plugin_loss = out[e].plugin_loss;  // codebook fit, tau 0
  feedback_seconds_ += seconds_since(start);
  return fed;
}

LossTable Session::build_kfac_table(const MethodConfig& config) {
  const auto& stats = kfac_stats();
  const torch::Device device = parse_device(options_.device);
  LossTable table = unscored_table(config);
  for (std::size_t b = 0; b < index_.blocks.size(); ++b) {
    const BlockInfo& info = index_.blocks[b];
    BlockLosses& losses = table.blocks[b];
    const torch::Tensor w =
        torch::from_blob(rows_[b].data(), {info.rows(), info.cols()}, torch::kFloat32).clone().to(device);
    const std::vector<QuantizedBlock> blocks = option_blocks(config, b, entry_choices(losses));
    std::optional<KfacMetric> metric;
    if (stats[b].captured) metric.emplace(stats[b], info.rows(), config.damp, device);
    for (std::size_t e = 0; e < blocks.size(); ++e) {
      LossEntry& entry = losses.entries[e];
      entry.plugin_loss = blocks[e].plugin_loss;
      entry.expected_loss = metric ? metric->loss(dequantized_rows(blocks[e], device) - w) : blocks[e].expected_loss;
    }
    for (std::size_t k = 0; k < config.kinds.size(); ++k)
      for (std::size_t i = 1; i < config.candidates.size(); ++i) {
        const auto& a = losses.entries[k * config.candidates.size() + i - 1];
        const auto& c = losses.entries[k * config.candidates.size() + i];
        if (c.bits > a.bits && c.expected_loss > a.expected_loss) losses.monotone = false;
      }
  }
  return table;
}

LossTable Session::unscored_table(const MethodConfig& config) const {
  LossTable table;
  table.tau = config.tau;
  table.group_size = config.group_size;
  for (const BlockInfo& info : index_.blocks) {
    BlockLosses losses;
    losses.name = info.name;
    losses.rows = info.rows();
    losses.cols = info.cols();
    for (CodebookKind kind : config.kinds)
      for (int bits : config.candidates) {
        LossEntry e;
        e.bits = bits;
        e.kind = kind;
        e.cost = block_cost(info.rows(), info.cols(), bits, kind, config.group_size);
        losses.entries.push_back(e);
      }
    table.blocks.push_back(std::move(losses));
  }
  return table;
}

LossTable Session::build_hawq_table(const MethodConfig& config) {
  // HAWQ-style sensitivity: (trace(H_b) / n_b) * ||Q_m(W_b) - W_b||^2 with the round-to-nearest grid.
  const CurvatureSet& set = curvature();
  LossTable table;
  table.group_size = config.group_size;
  for (std::size_t b = 0; b < index_.blocks.size(); ++b) {
    const BlockInfo& info = index_.blocks[b];
    const CurvatureStats& c = set.blocks[static_cast<std::size_t>(set.find(info.name))];
    // The trace of the KL's Hessian (a Gauss-Newton matrix) is positive, but its Hutchinson estimate on a few
    // probes can come out negative for small blocks: a zero sensitivity then sends the block to the fewest bits
    // whatever the budget. The sum of the clamped per-weight diagonal is a positive trace estimate.
    double clamped_trace = 0.0;
    for (float v : c.diagonal) clamped_trace += std::isfinite(v) ? double(v) : 0.0;
    const double per_weight = c.available ? clamped_trace / double(info.numel()) : 1.0;
    BlockLosses losses;
    losses.name = info.name;
    losses.rows = info.rows();
    losses.cols = info.cols();
    for (int bits : config.candidates) {
      LossEntry e;
      e.bits = bits;
      e.kind = CodebookKind::uniform_asymmetric;
      e.cost = block_cost(info.rows(), info.cols(), bits, e.kind, config.group_size);
      const QuantizedBlock q = quantize_block_rtn(weights(b, nullptr), bits, config.group_size);
      e.expected_loss = e.plugin_loss = per_weight * 2.0 * q.plugin_loss;  // plugin_loss = 1/2 SSE here
      losses.entries.push_back(e);
    }
    table.blocks.push_back(std::move(losses));
  }
  return table;
}

const LossTable& Session::table(const MethodConfig& config) {
  const std::string key = table_key(config);
  auto it = tables_.find(key);
  if (it != tables_.end()) return it->second;
  LossTable table;
  if (config.method == "hawq") {
    table = build_hawq_table(config);
  } else if (config.table_loss == "measured") {
    // Every entry is measured (below) from the blocks quantized there: scoring them with the loss model first
    // would design every codebook (and, for K-FAC, run every feedback pass) twice.
    table = unscored_table(config);
  } else if (config.curvature == "kfac") {
    table = build_kfac_table(config);
  } else {
    const auto& posterior_list = posteriors(config.damp);
    (void)posterior_list;
    const auto& precision = posterior_rows_.at(config.damp);
    LossTableParams params;
    params.candidates = config.candidates;
    params.kinds = config.kinds;
    params.quantizer.group_size = config.group_size;
    params.quantizer.tau = config.tau;
    std::vector<BlockTableInput> inputs;
    for (std::size_t b = 0; b < index_.blocks.size(); ++b) inputs.push_back({index_.blocks[b].name, weights(b, &precision[b])});
    table = build_loss_table(inputs, params);
  }
  if (config.table_loss == "measured") measure_table(config, table);
  if (config.curvature == "kfac" && config.method == "bayesq") {
    timings_["kfac_codebook_design"] = design_seconds_;
    timings_["kfac_error_feedback"] = feedback_seconds_;
  }
  for (const auto& bl : table.blocks)
    if (!bl.monotone) log::info("block ", bl.name, ": expected loss is not monotone in bits");
  return tables_[key] = std::move(table);
}

QuantizedModel Session::quantize_gptq(const MethodConfig& config, int bits) {
  QuantizedModel out;
  const std::vector<bool> kept = kept_fp(config);
  out.blocks.resize(index_.blocks.size());
  out.present.assign(index_.blocks.size(), false);
  const torch::Device device = parse_device(options_.device);
  torch::jit::Module work = model_.module.clone();
  work.eval();
  work.to(device);
  const CaptureParams cp = capture_params(options_);
  std::vector<std::size_t> order;
  for (std::size_t b = 0; b < index_.blocks.size(); ++b)
    if (!kept[b]) order.push_back(b);
  std::vector<LayerStats> one_shot;
  if (!config.sequential) one_shot = capture_layer_stats(work, index_, order, calibration(), cp, options_.model);
  nlohmann::json blocks = nlohmann::json::array();
  for (std::size_t b : order) {
    const BlockInfo& info = index_.blocks[b];
    const LayerStats stats = config.sequential
                                 ? capture_layer_stats(work, index_, {b}, calibration(), cp, options_.model)[b]
                                 : one_shot[b];
    nlohmann::json entry{{"name", info.name}};
    if (stats.captured) {
      const torch::Tensor w = block_rows(find_tensor(work, info.name), info).to(device);
      GptqStats gs;
      out.blocks[b] = quantize_with_feedback(w, info, stats, bits, CodebookKind::uniform_asymmetric,
                                             config.group_size, nullptr, config.gptq, &gs);
      entry["percdamp_used"] = gs.percdamp_used;
      entry["damp_increases"] = gs.damp_increases;
      entry["dead_columns"] = gs.dead_columns;
      if (gs.damp_increases > 0)
        log::warn("block ", info.name, ": Cholesky failed; damping raised to ", gs.percdamp_used, " x mean(diag H)");
    } else {
      out.blocks[b] = quantize_block_rtn(weights(b, nullptr), bits, config.group_size);
      entry["fallback"] = "rtn: " + stats.reason;
      log::warn("block ", info.name, ": GPTQ not possible (", stats.reason, "); round-to-nearest used");
    }
    out.present[b] = true;
    if (config.sequential) {
      const torch::Tensor original = find_tensor(work, info.name);
      assign_tensor(work, info.name, dequantized_tensor(out.blocks[b], info, original));
    }
    blocks.push_back(entry);
  }
  out.details["gptq_blocks"] = blocks;
  return out;
}

DistillResult Session::distill_quantized(const QuantizeOptions& o, const MethodConfig& config,
                                         QuantizedModel& q) {
  DistillParams dp;
  dp.steps = o.distill_steps;
  dp.lr = o.distill_lr;
  dp.teacher_samples = o.teacher_samples;
  dp.holdout = o.distill_holdout;
  dp.eval_every = o.distill_eval_every;
  dp.batch_size = o.batch_size;
  dp.output = o.output_index;
  dp.device = o.device;
  dp.seed = o.seed;
  static const std::vector<BlockPosterior> none;
  const std::vector<BlockPosterior>& teacher_posteriors = o.teacher_samples > 1 ? posteriors(config.damp) : none;
  return distill(model_.module, index_, q.blocks, q.present, teacher_posteriors, calibration(), dp, o.model);
}

QuantizedBlock Session::quantize_one(const MethodConfig& config, std::size_t b, int bits, CodebookKind kind) {
  return std::move(option_blocks(config, b, {{bits, kind}}).front());
}

// Note [Measured tables]: the expected loss is a local quadratic model of the calibration KL. It is accurate for
// small weight errors and off for large ones (at 1-2 bits it can miss by several times either way), which is where
// the allocator's decisions matter most. A measured table replaces each entry by N times the calibration KL of the
// model with that one block quantized as the final pass quantizes it (option_blocks, the same code; for K-FAC the
// stacked pass may round differently from a one-option pass in the last float bit), every other block in floating
// point: still additive across blocks, but exact within each block.
void Session::measure_table(const MethodConfig& config, LossTable& table) {
  const auto t = Clock::now();
  const torch::Device device = parse_device(options_.device);
  const DataFile& data = calibration();
  const int64_t n = std::min<int64_t>(data.size(), options_.measure_examples > 0 ? options_.measure_examples : data.size());
  torch::jit::Module work = model_.module.clone();
  work.eval();
  work.to(device);
  // No gradients here, so batches can be larger than the calibration pass's (fewer, fuller kernel launches).
  const int64_t batch = std::max<int64_t>(options_.batch_size, 128);
  double quantize_seconds = 0.0, forward_seconds = 0.0;
  auto log_probabilities = [&]() {
    // Only the forward passes: the curvature and layer statistics that option_blocks may compute on first use
    // need autograd.
    torch::NoGradGuard no_grad;
    const auto start = Clock::now();
    std::vector<torch::Tensor> out;
    for (int64_t begin = 0; begin < n; begin += batch) {
      const int64_t end = std::min(n, begin + batch);
      const torch::Tensor z =
          select_output(forward_batch(work, data, begin, end, device, options_.model), options_.output_index);
      // Double precision, as in evaluate(): small KLs are differences of nearly equal log-probabilities.
      out.push_back(torch::log_softmax(z.to(torch::kFloat64).reshape({-1, z.size(-1)}), 1));
    }
    forward_seconds += seconds_since(start);
    return out;
  };
  const std::vector<torch::Tensor> reference = log_probabilities();
  for (std::size_t b = 0; b < index_.blocks.size(); ++b) {
    const BlockInfo& info = index_.blocks[b];
    const torch::Tensor original = find_tensor(work, info.name);
    auto start = Clock::now();
    const std::vector<QuantizedBlock> blocks = option_blocks(config, b, entry_choices(table.blocks[b]));
    quantize_seconds += seconds_since(start);
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      LossEntry& e = table.blocks[b].entries[i];
      start = Clock::now();
      assign_tensor(work, info.name, dequantized_tensor(blocks[i], info, original));
      quantize_seconds += seconds_since(start);
      const std::vector<torch::Tensor> quantized = log_probabilities();
      double kl = 0.0;
      for (std::size_t k = 0; k < reference.size(); ++k)
        kl += (reference[k].exp() * (reference[k] - quantized[k])).sum().item<double>();
      e.expected_loss = kl * double(data.size()) / double(n);  // N x mean KL: the scale of the expected loss
      e.plugin_loss = blocks[i].plugin_loss;
      e.lloyd_fallbacks = blocks[i].lloyd_fallbacks;
    }
    assign_tensor(work, info.name, original);
    auto& entries = table.blocks[b].entries;
    table.blocks[b].monotone = true;
    for (std::size_t i = 1; i < entries.size(); ++i)
      if (entries[i].kind == entries[i - 1].kind && entries[i].bits > entries[i - 1].bits &&
          entries[i].expected_loss > entries[i - 1].expected_loss)
        table.blocks[b].monotone = false;
  }
  timings_["measure_table"] = seconds_since(t);
  timings_["measure_table_quantize"] = quantize_seconds;
  timings_["measure_table_forward"] = forward_seconds;
}

QuantizedModel Session::quantize(const MethodConfig& config, double bits) {
  const auto start = Clock::now();
  QuantizedModel out;
  if (config.method == "rtn" || config.method == "gptq") {
    BQ_CHECK(bits == std::floor(bits) && bits >= 2 && bits <= 8, ExitCode::usage, "--bits ", bits, ": ",
             config.method, " uses one bit-width for every block, a whole number from 2 to 8");
    if (config.method == "gptq") {
      out = quantize_gptq(config, static_cast<int>(bits));
    } else {
      const std::vector<bool> kept = kept_fp(config);
      out.blocks.resize(index_.blocks.size());
      out.present.assign(index_.blocks.size(), false);
      for (std::size_t b = 0; b < index_.blocks.size(); ++b) {
        if (kept[b]) continue;
        out.blocks[b] = quantize_block_rtn(weights(b, nullptr), static_cast<int>(bits), config.group_size);
        out.present[b] = true;
      }
    }
    out.timings["quantize"] = seconds_since(start);
    return out;
  }
  BQ_CHECK(config.method == "bayesq" || config.method == "hawq", ExitCode::usage, "unknown method '", config.method,
           "'");
  auto t = Clock::now();
  const LossTable& loss_table = table(config);
  out.timings["table"] = seconds_since(t);
  t = Clock::now();
  AllocationParams ap;
  ap.bits_per_weight = bits;
  ap.allocator = config.allocator;
  ap.keep_fp = config.keep_fp;
  ap.rules = config.rules;
  ap.certify = config.certify;
  out.allocation = allocate(loss_table, ap);
  out.timings["allocate"] = seconds_since(t);
  t = Clock::now();
  out.blocks.resize(index_.blocks.size());
  out.present.assign(index_.blocks.size(), false);
  for (std::size_t b = 0; b < index_.blocks.size(); ++b) {
    const BlockChoice& choice = out.allocation->blocks[b];
    if (choice.keep_fp) continue;
    out.blocks[b] = quantize_one(config, b, choice.bits, choice.kind);
    out.present[b] = true;
  }
  out.timings["quantize"] = seconds_since(t);
  return out;
}

}  // namespace bayesq

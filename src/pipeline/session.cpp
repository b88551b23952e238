#include "bayesq/pipeline/session.h"

#include <cmath>

#include <torch/torch.h>

#include "bayesq/calibrate/curvature.h"
#include "bayesq/common/errors.h"
#include "bayesq/common/log.h"
#include "bayesq/common/timer.h"
#include "bayesq/gptq/kfac.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/block_tensor.h"
#include "bayesq/model/forward.h"
#include "bayesq/pipeline/quantize_model.h"

namespace bayesq {

namespace {
// Cache keys: the JSON forms of the settings each artifact depends on (config.h).
std::string curvature_key(const CurvatureParams& p) { return nlohmann::json(p).dump(); }
std::string posterior_key(const MethodConfig& config) {
  if (config.curvature == Curvature::data_free) return "data-free";
  return nlohmann::json{{"curvature", config.curvature_params()}, {"posterior", config.posterior}}.dump();
}
}  // namespace

Session::Session(const SessionInputs& inputs, const Compute& compute, std::shared_ptr<const World> world)
    : inputs_(inputs), compute_(compute), world_(world ? std::move(world) : std::make_shared<const World>()) {
  const auto t = Clock::now();
  model_ = load_model(inputs.model);
  model_.module.eval();
  check_finite_weights(model_.module, inputs.model);
  DiscoveryStats discovery;
  index_ = discover_blocks(model_.module, &discovery);
  skipped_ = discovery.skipped;
  BQ_CHECK(!index_.blocks.empty(), ExitCode::input, "model has no quantizable block (no convolution, linear or "
           "parameter matmul in its forward graph): ", inputs.model);
  for (const auto& s : skipped_) log::info("left in floating point: ", s);
  log::info(inputs.model, ": ", index_.blocks.size(), " blocks, ", index_.quantizable_weight_count(),
            " quantizable weights");
  for (const BlockInfo& info : index_.blocks) rows_.push_back(block_rows_vector(find_tensor(model_.module, info.name), info));
  if (!inputs.posterior.empty()) {
    CurvatureSet set = load_curvature(inputs.posterior);
    BQ_CHECK(set.model_hash == model_.hash, ExitCode::input, "posterior ", inputs.posterior,
             " was computed for another model (model hash ", set.model_hash, ", this model ", model_.hash, "): ",
             inputs.model);
    loaded_curvature_ = std::move(set);
  }
  timings_["load"] = seconds_since(t);
}

void Session::add_time(const std::string& stage, double seconds) { timings_[stage] = seconds; }

namespace {
// k indices of 0..n-1 spread evenly (the middle of each of k equal stretches), so that a file sorted by class
// still gives a held-out part with every class.
std::vector<int64_t> spread_indices(int64_t n, int64_t k) {
  std::vector<int64_t> out;
  for (int64_t j = 0; j < k; ++j) out.push_back(static_cast<int64_t>((double(j) + 0.5) * double(n) / double(k)));
  return out;
}
}  // namespace

void Session::load_calibration() {
  if (calibration_) return;
  BQ_CHECK(!inputs_.calib.empty(), ExitCode::usage, "this method needs calibration data (--calib)");
  DataFile file = DataFile::load(inputs_.calib);
  {
    // A file is hostile until checked: one forward pass of one example shows that the inputs fit the model
    // (the error names the file's shapes, before any split) and gives the number of classes the labels must
    // respect, whatever uses them.
    // On the run's device: a model traced there may hold that device in its code.
    torch::NoGradGuard no_grad;
    model_.module.to(compute_.device);
    const torch::Tensor z =
        select_output(forward_batch(model_.module, file, 0, 1, compute_.device, inputs_.model), compute_.output);
    model_.module.to(torch::kCPU);
    if (file.has_labels()) check_labels(file, z.size(-1));
  }
  file_examples_ = file.size();
  const int64_t held = static_cast<int64_t>(std::floor(inputs_.holdout * double(file.size())));
  std::vector<int64_t> fit, held_out;
  if (held >= 1 && held < file.size()) {
    held_out = spread_indices(file.size(), held);
    for (int64_t i = 0, h = 0; i < file.size(); ++i) {
      if (h < held && held_out[static_cast<std::size_t>(h)] == i) ++h;
      else fit.push_back(i);
    }
  } else {
    if (inputs_.holdout > 0.0)
      log::warn("calibration file has ", file.size(), " examples: too few to hold any out; nothing is held out");
    for (int64_t i = 0; i < file.size(); ++i) fit.push_back(i);
  }
  holdout_ = std::make_unique<DataFile>(file.subset(held_out));
  std::vector<int64_t> statistics = fit, measured;
  const int64_t m = inputs_.measure_disjoint;
  if (m > 0) {
    BQ_CHECK(m < static_cast<int64_t>(fit.size()), ExitCode::usage, "--measure-disjoint ", m, " leaves no example "
             "to fit on: the calibration file has ", fit.size(), " after the hold-out: ", inputs_.calib);
    measured.assign(fit.end() - m, fit.end());
    statistics.resize(fit.size() - static_cast<std::size_t>(m));
  }
  calibration_indices_ = statistics;
  if (m > 0) measurement_ = std::make_unique<DataFile>(file.subset(measured));
  if (held_out.empty() && m == 0) calibration_ = std::make_unique<DataFile>(std::move(file));
  else calibration_ = std::make_unique<DataFile>(file.subset(statistics));
}

const DataFile& Session::calibration() {
  load_calibration();
  return *calibration_;
}

const DataFile& Session::measurement() {
  load_calibration();
  return measurement_ ? *measurement_ : *calibration_;
}

const std::vector<int64_t>& Session::calibration_indices() {
  load_calibration();
  return calibration_indices_;
}

const DataFile& Session::holdout() {
  load_calibration();
  return *holdout_;
}

nlohmann::json Session::calibration_split() {
  load_calibration();
  return {{"file", file_examples_}, {"fit", calibration_->size()}, {"measure", measurement().size()},
          {"measure_disjoint", measurement_ != nullptr}, {"holdout", holdout_->size()}};
}

const CurvatureSet& Session::curvature(const CurvatureParams& params) {
  if (loaded_curvature_) return *loaded_curvature_;
  const std::string key = curvature_key(params);
  auto it = curvature_.find(key);
  if (it != curvature_.end()) return it->second;
  const auto t = Clock::now();
  CurvatureSet set =
      estimate_curvature(model_.module, index_, calibration(), params, compute_, inputs_.model, world_.get());
  set.model_hash = model_.hash;
  model_.module.to(torch::kCPU);
  timings_["calibrate"] = seconds_since(t);
  return curvature_[key] = std::move(set);
}

const std::vector<BlockPosterior>& Session::posteriors(const MethodConfig& config) {
  const std::string key = posterior_key(config);
  auto it = posteriors_.find(key);
  if (it != posteriors_.end()) return it->second;
  if (config.curvature == Curvature::data_free) {
    std::vector<BlockPosterior> out;
    std::vector<std::vector<float>> rows;
    for (std::size_t b = 0; b < index_.blocks.size(); ++b) {
      out.push_back(data_free_posterior(index_.blocks[b].name, rows_[b]));
      rows.push_back(out.back().precision);  // constant within the block: the layout does not matter
    }
    posterior_rows_[key] = std::move(rows);
    return posteriors_[key] = std::move(out);
  }
  const CurvatureSet& set = curvature(config.curvature_params());
  std::vector<BlockPosterior> out;
  std::vector<std::vector<float>> rows;
  for (const BlockInfo& info : index_.blocks) {
    const int at = set.find(info.name);
    const std::string file = loaded_curvature_ ? inputs_.posterior : inputs_.calib;
    BQ_CHECK(at >= 0, ExitCode::input, "the posterior has no block '", info.name, "': ", file);
    const CurvatureStats& c = set.blocks[static_cast<std::size_t>(at)];
    BQ_CHECK(static_cast<int64_t>(c.diagonal.size()) == info.numel(), ExitCode::input, "posterior block '",
             info.name, "' has ", c.diagonal.size(), " entries, the model's ", info.numel(), ": ", file);
    out.push_back(fit_posterior(c, set.examples, config.posterior));
    if (out.back().fallback)
      log::warn("block ", info.name, ": posterior fallback (", out.back().fallback_reason, ")");
    const auto& p = out.back().precision;
    rows.push_back(block_rows_vector(
        torch::from_blob(const_cast<float*>(p.data()), info.shape, torch::kFloat32), info));
  }
  posterior_rows_[key] = std::move(rows);
  return posteriors_[key] = std::move(out);
}

const std::vector<std::vector<float>>& Session::posterior_rows(const MethodConfig& config) {
  posteriors(config);
  return posterior_rows_.at(posterior_key(config));
}

const std::vector<LayerStats>& Session::kfac_stats() {
  if (!kfac_stats_) {
    const auto t = Clock::now();
    CaptureParams cp;
    cp.output_gradients = true;
    std::vector<std::size_t> all(index_.blocks.size());
    for (std::size_t b = 0; b < all.size(); ++b) all[b] = b;
    CaptureTimes parts;
    kfac_stats_ = capture_layer_stats(model_.module, index_, all, calibration(), cp, compute_, inputs_.model, &parts);
    timings_["capture_forward"] = parts.forward;
    timings_["capture_backward"] = parts.backward;
    timings_["capture_moments"] = parts.moments;
    model_.module.to(torch::kCPU);
    for (const auto& s : *kfac_stats_)
      if (!s.captured) log::warn("block ", s.name, ": no K-FAC statistics (", s.reason, "); plain squared error used");
    if (!kfac_stats_->empty() && !kfac_stats_->front().gradient_fallback.empty())
      log::warn("K-FAC without output gradients: ", kfac_stats_->front().gradient_fallback, " (GPTQ's metric)");
    timings_["capture"] = seconds_since(t);
  }
  return *kfac_stats_;
}

const std::vector<std::vector<float>>& Session::kfac_precision(double damp) {
  auto it = kfac_precision_.find(damp);
  if (it != kfac_precision_.end()) return it->second;
  const std::vector<LayerStats>& stats = kfac_stats();
  std::vector<std::vector<float>> out;
  for (std::size_t b = 0; b < index_.blocks.size(); ++b) out.push_back(bayesq::kfac_precision(stats[b], index_.blocks[b], damp));
  return kfac_precision_[damp] = std::move(out);
}

BlockWeights Session::weights(std::size_t block, const std::vector<float>* precision) const {
  const BlockInfo& info = index_.blocks[block];
  return BlockWeights{rows_[block].data(), precision ? precision->data() : nullptr, info.rows(), info.cols()};
}

namespace {
int64_t approximate_bytes(const QuantizedBlock& q) {
  int64_t bytes = static_cast<int64_t>(q.codes.size() + sizeof(QuantizedBlock));
  for (const Codebook& c : q.codebooks)
    bytes += static_cast<int64_t>(sizeof(Codebook) + c.levels.size() * sizeof(float) + c.boundaries.size() * sizeof(double));
  return bytes;
}
}  // namespace

void Session::keep_options(const std::string& table_key, std::size_t block, const std::vector<QuantizedBlock>& options) {
  if (kept_options_full_) return;
  int64_t bytes = 0;
  for (const QuantizedBlock& q : options) bytes += approximate_bytes(q);
  if (kept_option_bytes_ + bytes > kMaxKeptOptionBytes) {
    kept_options_full_ = true;
    log::info("quantized options past ", kMaxKeptOptionBytes >> 30, " GiB: the rest are quantized again when used");
    return;
  }
  auto& blocks = kept_options_[table_key];
  blocks.resize(index_.blocks.size());
  for (const QuantizedBlock& q : options)  // a later budget's prefilter may measure more options of a block
    if (!kept_option(table_key, block, q.bits, q.kind)) {
      blocks[block].push_back(q);
      kept_option_bytes_ += approximate_bytes(q);
    }
}

const QuantizedBlock* Session::kept_option(const std::string& table_key, std::size_t block, int bits,
                                           CodebookKind kind) const {
  const auto it = kept_options_.find(table_key);
  if (it == kept_options_.end() || block >= it->second.size()) return nullptr;
  for (const QuantizedBlock& q : it->second[block])
    if (q.bits == bits && q.kind == kind) return &q;
  return nullptr;
}

const LossTable& Session::table(const MethodConfig& config) {
  const std::string key = table_key(config).dump();
  auto it = tables_.find(key);
  if (it != tables_.end()) return it->second;
  LossTable built = build_table(*this, config);
  for (const auto& bl : built.blocks)
    if (!bl.monotone) log::info("block ", bl.name, ": expected loss is not monotone in bits");
  return tables_[key] = std::move(built);
}

LossTable& Session::table_to_extend(const MethodConfig& config) {
  table(config);
  return tables_.at(table_key(config).dump());
}

}  // namespace bayesq

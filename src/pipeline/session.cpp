#include "bayesq/pipeline/session.h"

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

Session::Session(const SessionInputs& inputs, const Compute& compute) : inputs_(inputs), compute_(compute) {
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

const DataFile& Session::calibration() {
  if (!calibration_) {
    BQ_CHECK(!inputs_.calib.empty(), ExitCode::usage, "this method needs calibration data (--calib)");
    calibration_ = std::make_unique<DataFile>(DataFile::load(inputs_.calib));
    if (calibration_->has_labels()) {
      // Labels are checked against the model's classes whatever uses them (a file is hostile until checked):
      // one forward pass of one example gives the number of classes.
      torch::NoGradGuard no_grad;
      const torch::Tensor z = select_output(
          forward_batch(model_.module, *calibration_, 0, 1, torch::kCPU, inputs_.model), compute_.output);
      check_labels(*calibration_, z.size(-1));
    }
  }
  return *calibration_;
}

const CurvatureSet& Session::curvature(const CurvatureParams& params) {
  if (loaded_curvature_) return *loaded_curvature_;
  const std::string key = curvature_key(params);
  auto it = curvature_.find(key);
  if (it != curvature_.end()) return it->second;
  const auto t = Clock::now();
  CurvatureSet set = estimate_curvature(model_.module, index_, calibration(), params, compute_, inputs_.model);
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
    kfac_stats_ = capture_layer_stats(model_.module, index_, all, calibration(), cp, compute_, inputs_.model);
    model_.module.to(torch::kCPU);
    for (const auto& s : *kfac_stats_)
      if (!s.captured) log::warn("block ", s.name, ": no K-FAC statistics (", s.reason, "); plain squared error used");
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

const LossTable& Session::table(const MethodConfig& config) {
  const std::string key = table_key(config).dump();
  auto it = tables_.find(key);
  if (it != tables_.end()) return it->second;
  LossTable built = build_table(*this, config);
  for (const auto& bl : built.blocks)
    if (!bl.monotone) log::info("block ", bl.name, ": expected loss is not monotone in bits");
  return tables_[key] = std::move(built);
}

}  // namespace bayesq

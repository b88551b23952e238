// A quantization session: one model, one calibration file, and the artifacts every method shares, each computed
// once on first use and kept: the calibration data, the diagonal curvature (per estimator settings) and the
// posteriors fitted to it (per damping), the layer statistics of K-FAC, and the loss tables (per table_key). The
// session holds these caches and hands them to the stages; what a method does with them is in quantize_model.h.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/script.h>

#include "bayesq/capture/layer_capture.h"
#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/data/data_file.h"
#include "bayesq/distributed/world.h"
#include "bayesq/index/block_index.h"
#include "bayesq/model/compute.h"
#include "bayesq/model/model_file.h"
#include "bayesq/pipeline/config.h"
#include "bayesq/posterior/posterior.h"
#include "bayesq/table/loss_table.h"

namespace bayesq {

// The files a session reads.
struct SessionInputs {
  std::string model;      // TorchScript model
  std::string calib;      // calibration data ("" : none; methods that need it fail with a usage error)
  std::string posterior;  // a saved posterior (.bqp) that replaces the calibration pass ("" : none)
  // Note [Calibration split]: `holdout` of the calibration examples, spread evenly over the file, are never
  // fitted to: the report scores the quantized model on them. Of the rest, `measure_disjoint` examples (0: none)
  // are kept for the measured tables and the joint refinement alone, so that what picks the options never saw
  // the examples the curvature, the layer statistics and the error feedback were fitted on.
  double holdout = 0.0;
  int64_t measure_disjoint = 0;
};

class Session {
 public:
  // Loads and checks the model (and the posterior, which must belong to it); the calibration file is loaded
  // when first needed.
  // `world`: the processes of this job (distributed/world.h); null: this process alone.
  Session(const SessionInputs& inputs, const Compute& compute, std::shared_ptr<const World> world = nullptr);

  const LoadedModel& model() const { return model_; }
  const BlockIndex& index() const { return index_; }
  const Compute& compute() const { return compute_; }
  const World& world() const { return *world_; }
  // What the report says about a job of several processes (world size, each rank's share); null for one.
  nlohmann::json& distributed_report() { return distributed_report_; }
  const SessionInputs& inputs() const { return inputs_; }
  const std::vector<std::string>& skipped() const { return skipped_; }
  bool has_calibration() const { return !inputs_.calib.empty(); }

  // The examples statistics are fitted on (curvature, layer statistics, feedback, GPTQ, distillation).
  const DataFile& calibration();
  // The examples measured tables and the joint refinement score: calibration() unless measure_disjoint is set.
  const DataFile& measurement();
  // Index in the calibration file of each example of calibration() (reports name examples by their file index).
  const std::vector<int64_t>& calibration_indices();
  // The held-out examples (size 0 without a hold-out).
  const DataFile& holdout();
  // {"file": N, "fit": ..., "measure": ..., "holdout": ...} example counts.
  nlohmann::json calibration_split();
  // The diagonal curvature for these estimator settings (the loaded posterior, when there is one).
  const CurvatureSet& curvature(const CurvatureParams& params);
  // Posterior of every block for config's curvature and damping.
  const std::vector<BlockPosterior>& posteriors(const MethodConfig& config);
  // The same precisions as [rows, cols] row-major arrays, one per block.
  const std::vector<std::vector<float>>& posterior_rows(const MethodConfig& config);
  // K-FAC layer statistics (input and output-gradient moments) of every block.
  const std::vector<LayerStats>& kfac_stats();
  // kfac_precision (gptq/kfac.h) of every block at this damping.
  const std::vector<std::vector<float>>& kfac_precision(double damp);
  // Each block's float weights as [rows, cols] row-major.
  const std::vector<std::vector<float>>& rows() const { return rows_; }
  BlockWeights weights(std::size_t block, const std::vector<float>* precision = nullptr) const;

  // The loss table the allocator reads for this (resolved) configuration, built on first use.
  const LossTable& table(const MethodConfig& config);
  // The same table, for measuring entries the option prefilter left unmeasured (quantize_model.cpp).
  LossTable& table_to_extend(const MethodConfig& config);

  // Quantized options kept from building a measured table, per table key: the joint refinement and the final pass
  // take them from here instead of quantizing (for K-FAC, running the feedback) again, and so use exactly the
  // blocks the table measured. Options of a block already kept stay as they are; new ones are added. Bounded by
  // kMaxKeptOptionBytes over the session; past it nothing more is kept and callers quantize again (option_block()
  // in quantize_model.h does either).
  void keep_options(const std::string& table_key, std::size_t block, const std::vector<QuantizedBlock>& options);
  const QuantizedBlock* kept_option(const std::string& table_key, std::size_t block, int bits,
                                    CodebookKind kind) const;
  static constexpr int64_t kMaxKeptOptionBytes = int64_t(4) << 30;

  // Stage timings of the shared work, for reports ("calibrate", "capture", "measure_table", ...).
  const nlohmann::json& timings() const { return timings_; }
  void add_time(const std::string& stage, double seconds);

 private:
  SessionInputs inputs_;
  Compute compute_;
  LoadedModel model_;
  BlockIndex index_;
  std::vector<std::string> skipped_;
  std::vector<std::vector<float>> rows_;
  void load_calibration();
  std::unique_ptr<DataFile> calibration_, measurement_, holdout_;
  int64_t file_examples_ = 0;
  std::vector<int64_t> calibration_indices_;
  std::optional<CurvatureSet> loaded_curvature_;
  std::map<std::string, CurvatureSet> curvature_;  // by estimator settings
  std::map<std::string, std::vector<BlockPosterior>> posteriors_;  // by curvature settings and damping
  std::map<std::string, std::vector<std::vector<float>>> posterior_rows_;
  std::optional<std::vector<LayerStats>> kfac_stats_;
  std::map<double, std::vector<std::vector<float>>> kfac_precision_;
  std::map<std::string, LossTable> tables_;  // by table_key
  std::map<std::string, std::vector<std::vector<QuantizedBlock>>> kept_options_;  // by table_key, per block
  int64_t kept_option_bytes_ = 0;
  bool kept_options_full_ = false;
  nlohmann::json timings_ = nlohmann::json::object();
  std::shared_ptr<const World> world_;
  nlohmann::json distributed_report_;
};

}  // namespace bayesq

// A quantization session: one model, one calibration file, and the artifacts every method shares (the diagonal
// curvature, the K-FAC layer statistics, loss tables), each computed once on first use. `bayesq quantize` runs
// one method over one or more budgets; `bayesq compare` runs many methods over many budgets on one session.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/script.h>

#include "bayesq/allocate/allocation.h"
#include "bayesq/capture/layer_capture.h"
#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/data/data_file.h"
#include "bayesq/distill/distill.h"
#include "bayesq/gptq/gptq.h"
#include "bayesq/index/block_index.h"
#include "bayesq/model/model_file.h"
#include "bayesq/pipeline/quantize.h"
#include "bayesq/posterior/posterior.h"
#include "bayesq/table/loss_table.h"

namespace bayesq {

// One way of quantizing, as the report states it.
struct MethodConfig {
  std::string method = "bayesq";       // rtn | gptq | hawq | bayesq
  std::string curvature = "hutchinson"; // bayesq: hutchinson | fisher | kfac
  std::vector<CodebookKind> kinds{CodebookKind::lloyd, CodebookKind::uniform_asymmetric};
  std::vector<int> candidates{1, 2, 3, 4, 5, 6, 8};
  double tau = 0.0;
  int64_t group_size = 0;
  AllocatorKind allocator = AllocatorKind::dp;
  bool certify = false;
  std::vector<std::string> keep_fp;
  std::vector<BitsRule> rules;
  double damp = 0.01;                  // posterior prior precision / K-FAC damping
  GptqParams gptq;                     // gptq and kfac: percdamp, act-order, lazy block size
  bool sequential = true;              // gptq: capture each block's inputs after the blocks before it are quantized
  std::string table_loss = "measured"; // bayesq, hawq: measured (calibration KL) or expected (the posterior loss model)

  std::string label() const;           // e.g. "bayesq (kfac)", "gptq (act-order)"
  nlohmann::json to_json() const;
};

MethodConfig method_config(const QuantizeOptions& options);

struct QuantizedModel {
  std::vector<QuantizedBlock> blocks;  // one per index block; unused where kept in floating point
  std::vector<bool> present;
  std::optional<Allocation> allocation;
  nlohmann::json details = nlohmann::json::object();  // method specifics (per-block GPTQ damping, fallbacks)
  nlohmann::json timings = nlohmann::json::object();
  std::vector<const QuantizedBlock*> slots() const;
};

class Session {
 public:
  // Loads and checks the model; the calibration file (if any) is loaded when first needed.
  explicit Session(const QuantizeOptions& options);

  const LoadedModel& model() const { return model_; }
  const BlockIndex& index() const { return index_; }
  const std::vector<std::string>& skipped() const { return skipped_; }

  // Quantize every block for one budget (average bits per weight, metadata included).
  QuantizedModel quantize(const MethodConfig& config, double bits);

  // Shared artifacts (computed once).
  const CurvatureSet& curvature();
  const std::vector<BlockPosterior>& posteriors(double damp);
  const std::vector<LayerStats>& kfac_stats();
  const DataFile& calibration();

  nlohmann::json timings() const { return timings_; }

  // Distillation of a quantized model with `options`' distillation settings (compare passes each method's own
  // options; the teacher is the float model, or samples of this session's diagonal posterior). The distilled
  // code tables are written back into q.
  DistillResult distill_quantized(const QuantizeOptions& options, const MethodConfig& config, QuantizedModel& q);

  // The table the allocator reads for this method (computed once per distinct table configuration).
  const LossTable& table(const MethodConfig& config);

 private:
  LossTable build_kfac_table(const MethodConfig& config);
  LossTable build_hawq_table(const MethodConfig& config);
  LossTable unscored_table(const MethodConfig& config) const;  // options and costs only, for measuring
  QuantizedModel quantize_gptq(const MethodConfig& config, int bits);
  // One block at one option, exactly as the final pass quantizes it.
  QuantizedBlock quantize_one(const MethodConfig& config, std::size_t block, int bits, CodebookKind kind);
  // The block quantized at each of several (bits, kind) options; the one place that decides how a block is
  // quantized for bayesq and hawq (tables, measurements and the final pass all come through here).
  std::vector<QuantizedBlock> option_blocks(const MethodConfig& config, std::size_t block,
                                            const std::vector<std::pair<int, CodebookKind>>& choices);
  void measure_table(const MethodConfig& config, LossTable& table);
  std::vector<bool> kept_fp(const MethodConfig& config) const;
  BlockWeights weights(std::size_t block, const std::vector<float>* precision) const;
  const std::vector<float>& kfac_precision(std::size_t block, const MethodConfig& config);

  QuantizeOptions options_;
  double design_seconds_ = 0.0, feedback_seconds_ = 0.0;  // K-FAC option_blocks, for the report's timings
  LoadedModel model_;
  BlockIndex index_;
  std::vector<std::string> skipped_;
  std::vector<std::vector<float>> rows_;  // each block's weights as [rows, cols]
  std::unique_ptr<DataFile> calibration_;
  std::optional<CurvatureSet> curvature_;
  std::map<double, std::vector<BlockPosterior>> posteriors_;
  std::map<double, std::vector<std::vector<float>>> posterior_rows_;
  std::optional<std::vector<LayerStats>> kfac_stats_;
  std::map<std::string, std::vector<std::vector<float>>> kfac_precision_;
  std::map<std::string, LossTable> tables_;
  nlohmann::json timings_ = nlohmann::json::object();
};

}  // namespace bayesq

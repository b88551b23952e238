// What each method does with a session's artifacts, for one budget: the dispatch from a MethodConfig to the
// stages (tables from table/, gptq/ and measure/, allocation from allocate/, GPTQ from gptq/, distillation from
// distill/, the writer from export/), and the per-budget runner that `quantize` and `compare` share.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/script.h>

#include "bayesq/allocate/allocation.h"
#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/export/model_writer.h"
#include "bayesq/measure/joint_allocation.h"
#include "bayesq/pipeline/config.h"
#include "bayesq/pipeline/session.h"

namespace bayesq {

struct QuantizedModel {
  std::vector<QuantizedBlock> blocks;  // one per index block; unused where kept in floating point
  std::vector<bool> present;
  std::optional<Allocation> allocation;
  std::optional<JointRefinement> joint;  // measured tables with --joint-rounds > 0 (its allocation moved out)
  nlohmann::json details = nlohmann::json::object();  // method specifics (per-block GPTQ damping, fallbacks)
  nlohmann::json timings = nlohmann::json::object();
  std::vector<const QuantizedBlock*> slots() const;
};

// The block at each (bits, kind) option exactly as the final pass quantizes it: the one place that decides how
// a block is quantized for bayesq and hawq (tables, measurements and the final pass all come through here).
std::vector<QuantizedBlock> option_blocks(Session& session, const MethodConfig& config, std::size_t block,
                                          const std::vector<std::pair<int, CodebookKind>>& choices);

// One option as the final pass writes it: the block the measured table kept (Session::kept_option) or, without
// one, option_blocks' for this option alone.
QuantizedBlock option_block(Session& session, const MethodConfig& config, std::size_t block, int bits,
                            CodebookKind kind);

// The loss table of a (resolved) configuration, built from the session's artifacts. Session::table caches it. A
// K-FAC measured table with the option prefilter comes back with predictions and no entry measured: each budget
// measures its own entries in quantize_model (Note [Option prefilter] in table/option_prefilter.h).
LossTable build_table(Session& session, const MethodConfig& config);

// Fails before any table is built or file written when a budget cannot be met (InfeasibleBudget, from the
// options' costs alone), when --keep-fp leaves nothing to quantize, or when a block's weights exceed what fp16
// code tables can hold (UserError(input)).
void check_budgets(Session& session, const MethodConfig& config, const std::vector<double>& budgets);

// Every block for one budget (average bits per weight, metadata included). Throws InfeasibleBudget when the
// table and rules cannot meet it, UserError(usage) for a fractional budget of a whole-bit method.
QuantizedModel quantize_model(Session& session, const MethodConfig& config, double bits);

// The outcome of one budget: quantized, distilled where the configuration asks, written.
struct BudgetResult {
  QuantizedModel quantized;
  torch::jit::Module module;     // what was written: the session's model, or its distilled copy
  nlohmann::json distillation;   // the distillation report (null without distillation)
  WriteStats written;
  // With a loss table and calibration data: the table's prediction for the whole allocation (its entries summed,
  // per example) against the written model's measured KL on the calibration examples the table scored. Each entry
  // is measured with every other block in float, so the sum misses the blocks' interactions; this says by how much.
  nlohmann::json joint_calibration_kl;
  // With held-out calibration examples (Session::holdout): KL, top-1 agreement (and top-1 with labels) of the
  // written model on them; nothing fitted or chosen saw them.
  nlohmann::json holdout;
  nlohmann::json timings;        // the method's stages, "distill", "write", "joint_kl"
  // The written model with de-quantized float weights (dequantized_module), made for the calibration scores and
  // kept for evaluation; none without calibration data.
  std::optional<torch::jit::Module> dequantized;
  int64_t weights = 0, code_bits = 0, metadata_bits = 0;  // over the quantized blocks
  double average_bits() const { return weights ? double(code_bits + metadata_bits) / double(weights) : 0.0; }
  double average_code_bits() const { return weights ? double(code_bits) / double(weights) : 0.0; }
};

// quantize_model -> distill (config.distill.steps > 0) -> write `path` in `format`.
BudgetResult run_budget(Session& session, const MethodConfig& config, double bits, const std::string& path,
                        OutputFormat format);

}  // namespace bayesq

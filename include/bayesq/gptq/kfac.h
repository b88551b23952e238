// BayesQ in the K-FAC metric (METHOD.md §2 K-FAC): the per-weight precision that codebooks are designed with,
// the options of one block (codebooks from that precision, codes chosen with GPTQ-style error feedback along A),
// and the expected-loss entries of a block scored in the K-FAC metric.
#pragma once

#include <utility>
#include <vector>

#include <torch/script.h>

#include "bayesq/capture/layer_capture.h"
#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/gptq/gptq_params.h"
#include "bayesq/index/block_index.h"
#include "bayesq/table/loss_table.h"

namespace bayesq {

// Diagonal K-FAC precision of every weight, [rows, cols] row-major:
//   pi_rj = N G_rr A_g(r),jj + lambda,  lambda = damp * mean(N G_rr A_jj)  (1 where that mean is 0),
// all ones for a block without statistics (plain squared error).
std::vector<float> kfac_precision(const LayerStats& stats, const BlockInfo& info, double damp);

struct KfacOptionTimes {
  double design_seconds = 0.0;    // codebook design in the diagonal metric (and the min-max grids), host
  double feedback_seconds = 0.0;  // the stacked error-feedback pass
};

// The block at each (bits, kind) option: codebooks designed on `weights` (with the K-FAC precision) by the core
// quantizer, then, where the block has statistics, its codes re-chosen by quantize_with_feedback_options (all
// options in one stacked pass) on `device`. plugin_loss stays the codebook fit's.
std::vector<QuantizedBlock> kfac_option_blocks(const BlockWeights& weights, const BlockInfo& info,
                                               const LayerStats& stats,
                                               const std::vector<std::pair<int, CodebookKind>>& choices,
                                               const QuantizerParams& quantizer, const GptqParams& gptq,
                                               const torch::Device& device, KfacOptionTimes* times = nullptr);

// kfac_option_blocks in two halves, so that the host's half for later blocks can run on another thread while
// the device feeds back this one (measured tables on a GPU: DesignQueue). design_kfac_options touches no libtorch state:
// the codebooks of every option and, where the block has statistics (`captured`), the min-max grid of each
// uniform option (Note [Two grids] in kfac.cpp).
struct KfacDesigns {
  std::vector<QuantizedBlock> designed;  // one per choice, in order
  std::vector<QuantizedBlock> minmax;    // min-max grids of the uniform options ...
  std::vector<std::size_t> minmax_of;    // ... and the choice each belongs to
  double seconds = 0.0;                  // wall time of the design
};
KfacDesigns design_kfac_options(const BlockWeights& weights,
                                const std::vector<std::pair<int, CodebookKind>>& choices,
                                const QuantizerParams& quantizer, bool captured);
// `device_codes`, when given, also receives each option's codes as a [rows, cols] uint8 tensor on `device` (the
// blocks' host codes are filled as well), or nothing where the block has no statistics (its codes are the
// design's, on the host alone): a measured table de-quantizes its options from them instead of uploading the
// host codes again (Note [Codes kept for the swap] in measure/measured_table.h).
std::vector<QuantizedBlock> feed_back_kfac_options(KfacDesigns designs, const BlockWeights& weights,
                                                   const BlockInfo& info, const LayerStats& stats,
                                                   const QuantizerParams& quantizer, const GptqParams& gptq,
                                                   const torch::Device& device, KfacOptionTimes* times = nullptr,
                                                   std::vector<torch::Tensor>* device_codes = nullptr);

// Host wall seconds per part of predicted_option_losses (on a GPU, feedback kernels may still run when `feedback`
// is read; their wait falls in `score`).
struct PredictionTimes {
  double grids = 0.0;     // min-max grids, distinct-weight counts, the held rows' loss
  double feedback = 0.0;  // the stacked feedback pass
  double score = 0.0;     // the metric and the losses, copied to the host
};

// The option prefilter's predicted loss of the block at each of `choices` (Note [Option prefilter] in
// table/option_prefilter.h): the min-max grid at that width (quantize_block_rtn's, from minmax_codebooks) with its
// codes chosen by the error feedback, all widths in one stacked pass, whatever the kind; except that a Lloyd table
// of 2^b levels holds a row (or group) of at most 2^b distinct weights exactly, so there a Lloyd choice is
// predicted as the weights rounded to its fp16 levels. Scored by kfac_loss's metric without damping: the measured
// KL it predicts does not charge weights whose inputs are never non-zero (the feedback zeroes them), and the
// damping would put a floor under every width of such a block. Without statistics, the grid's own weighted
// squared error. One value per choice.
std::vector<double> predicted_option_losses(const BlockWeights& weights, const BlockInfo& info,
                                            const LayerStats& stats,
                                            const std::vector<std::pair<int, CodebookKind>>& choices,
                                            int64_t group_size, const GptqParams& gptq, const torch::Device& device,
                                            PredictionTimes* times = nullptr);

// Scores a block's table entries (in entry order, as `blocks`) by the K-FAC metric of their weight error
// (kfac_loss in feedback.h), or by the codebook's own expected loss where the block has no statistics, and sets
// `monotone`.
void score_kfac_entries(BlockLosses& losses, const std::vector<QuantizedBlock>& blocks, const BlockWeights& weights,
                        const BlockInfo& info, const LayerStats& stats, double damp, const torch::Device& device);

}  // namespace bayesq

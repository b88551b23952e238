// Block quantization with GPTQ-style error feedback (METHOD.md §2 K-FAC, §6 GPTQ): the bridge between layer
// statistics, the GPTQ loop and the core's QuantizedBlock. A grouped convolution runs one GPTQ per group of
// output channels, each with its own input moment (the reference implementation shares one H across groups).
#pragma once

#include <vector>

#include <torch/script.h>

#include "bayesq/capture/layer_capture.h"
#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/gptq/gptq.h"
#include "bayesq/index/block_index.h"

namespace bayesq {

// rows: the block's weights as [rows, cols] (block_rows), on the stats' device. With `codebooks` (rows x
// groups_per_row, row-major) their levels are the fixed grid; without, each row/group gets the reference min-max
// grid with fp16 metadata (GPTQ), static when act-order meets groups so groups stay consecutive columns. With
// codebooks this is quantize_with_feedback_options with one option.
QuantizedBlock quantize_with_feedback(const torch::Tensor& rows, const BlockInfo& info, const LayerStats& stats,
                                      int bits, CodebookKind kind, int64_t group_size,
                                      const std::vector<Codebook>* codebooks, const GptqParams& params,
                                      GptqStats* gptq_stats = nullptr);

// One option of quantize_with_feedback_options: a bit-width and codebook kind with its fixed codebooks.
struct FeedbackOption {
  int bits = 0;
  CodebookKind kind = CodebookKind::lloyd;
  const std::vector<Codebook>* codebooks = nullptr;  // required: rows x groups_per_row
  bool row_losses = false;                           // its feedback objective per row is wanted (below)
};

class KfacMetric;

// The same as quantize_with_feedback with fixed codebooks, for several options of one block at once. GPTQ's rows
// are independent given H, so the options' copies of the rows are stacked into one taller matrix and share one
// pass over the columns (levels padded to the longest codebook with +inf, which rounding never picks): one column
// loop instead of one per option, which is what a loss table over many options costs otherwise.
//
// Note [Stacked rows in chunks]: the stack holds options x rows x cols floats, and the pass a few times that
// (working copy, result, errors): for BERT's 33,302 x 768 word table and 21 options, 2.1 GB each. Rows therefore
// go through in chunks of at most params.stack_bytes of stacked rows, each chunk a pass of its own; a row's result
// does not depend on the other rows of its pass (the test runs one block in one pass and in many). A block within
// the bound is one pass, as before.
// `row_losses`, when given (with `metric`, the block's), receives one tensor per option: for the options marked
// `row_losses`, the feedback objective of each row, d_r H_g(r) d_r^T (KfacMetric::row_losses, d_r the row's
// error), [rows] float64 on the metric's device, computed pass by pass so that no option's de-quantized rows are
// kept; undefined for the others.
// `device_codes`, when given, receives each option's codes as a [rows, cols] uint8 tensor on the rows' device, and
// the blocks' `codes` stay empty: a caller that only scores the options (the prefilter's predictions) then neither
// copies every option's codes to the host nor back up to de-quantize them.
std::vector<QuantizedBlock> quantize_with_feedback_options(const torch::Tensor& rows, const BlockInfo& info,
                                                           const LayerStats& stats,
                                                           const std::vector<FeedbackOption>& options,
                                                           int64_t group_size, const GptqParams& params,
                                                           GptqStats* gptq_stats = nullptr,
                                                           const KfacMetric* metric = nullptr,
                                                           std::vector<torch::Tensor>* row_losses = nullptr,
                                                           std::vector<torch::Tensor>* device_codes = nullptr);

// K-FAC block metric with G replaced by its diagonal and the damping written relative to A (so that G = I gives
// GPTQ's H up to scale): L(D) = 1/2 N sum_r G_rr D_r (A_g(r) + damp * mean(diag A_g(r)) I) D_r^T.
double kfac_loss(const torch::Tensor& delta_rows, const BlockInfo& info, const LayerStats& stats, double damp);

// The same metric prepared once per block for many deltas: the damped input moments of all convolution groups
// stacked [groups, cols, cols] in float64, so one batched product scores a grouped (depthwise) convolution.
class KfacMetric {
 public:
  KfacMetric(const LayerStats& stats, int64_t rows, double damp, const torch::Device& device);
  double loss(const torch::Tensor& delta_rows) const;
  // loss() before it leaves the device: sum_r G_rr D_r H D_r^T as a float64 scalar tensor, loss = N/2 x this, so
  // that several deltas' losses come to the host in one copy.
  torch::Tensor weighted_sum(const torch::Tensor& delta_rows) const;
  double loss_of_sum(double weighted_sum) const { return 0.5 * static_cast<double>(examples_) * weighted_sum; }
  // d_r H_g(r) d_r^T of every row, [rows] float64: the metric without G_rr and N/2, for choosing between two
  // quantizations of the same row.
  torch::Tensor row_losses(const torch::Tensor& delta_rows) const;
  // The same for some rows of convolution group `group` alone, [n, cols] -> [n].
  torch::Tensor group_row_losses(const torch::Tensor& delta_rows, int64_t group) const;

 private:
  torch::Tensor h_, g_;
  int64_t examples_ = 0;
};

}  // namespace bayesq

// Layer capture: per-block second moments streamed over calibration batches, without storing activations
// (METHOD.md §1 kfac, §6 gptq).
//
// The inlined forward graph is instrumented: each captured block's input activation (and, for K-FAC, its output)
// becomes an extra output of a copy of the graph, run by the interpreter on the live module (so weights changed
// between passes, as in sequential GPTQ, are seen). Per batch and block:
//   A_g += X_g^T X_g,  X the activation rows: linear/matmul inputs flattened to [samples, in]; convolution inputs
//        unfolded with the layer's stride, padding and dilation into [samples x positions, C k...] columns in the
//        weight's own (c, k...) order, one A_g per group of a grouped or depthwise convolution;
//   G   += sum over positions of g g^T, g the gradient of log p(y | x) at the block's output with y drawn from the
//        model's own predictive (the Fisher's sampled labels).
// Finally A_g is divided by the number of rows and G by the number of examples, so the Fisher of the mean loss is
// approximately N^-1 (G (x) A) per example (K-FAC with spatially uncorrelated derivatives). Only G's diagonal is
// kept (every consumer replaces G by its diagonal: kfac_loss in feedback.h).
//
// Embedding tables E [vocabulary, dim] (rows are tokens) read as a linear layer on one-hot inputs, y = E^T x: the
// K-FAC input factor E[x x^T] is diagonal, the token frequencies, and the output factor is the gradient moment over
// dim. Stored in the block's own orientation the roles swap: row_moment holds the frequency of each token
// (lookups of token v / all lookups; 0 for tokens the calibration never reads, and for padding_idx, which gets no
// gradient), and input_moment[0] the [dim, dim] output-gradient moment (the identity without output gradients).
// The block metric 1/2 N sum_v p_v D_v G D_v^T then has the linear layer's form, and error feedback runs along a
// token's dim with G (rows are independent: without G it is plain rounding, as GPTQ on one-hot inputs is).
// Memory: one [cols_g, cols_g] float32 matrix per captured block and group (85 MB for 4608 inputs), plus
// [rows] for diag G. Sequential GPTQ captures one block at a time.
#pragma once

#include <string>
#include <vector>

#include <torch/script.h>

#include "bayesq/data/data_file.h"
#include "bayesq/index/block_index.h"
#include "bayesq/model/compute.h"

namespace bayesq {

struct CaptureParams {
  bool output_gradients = false;  // also G (K-FAC), with labels sampled from the model (compute.seed)
};

// Host wall seconds per part of a capture (on a GPU each part's kernels may still run when its time is read: run
// with CUDA_LAUNCH_BLOCKING=1 for device time per part).
struct CaptureTimes {
  double forward = 0.0;   // the instrumented forward, inputs to the device included
  double backward = 0.0;  // output gradients (K-FAC's G)
  double moments = 0.0;   // accumulating A and G
};

struct LayerStats {
  std::string name;
  bool captured = false;
  std::string reason;                        // why not, when not captured
  std::vector<torch::Tensor> input_moment;   // A per group, [cols_g, cols_g], float32 on the capture device
  // diag G [rows] (when asked for and the model has a backward); for an embedding the token frequencies, always.
  torch::Tensor row_moment;
  std::string gradient_fallback;             // why G was asked for but not computed (Note [Backward probe])
  int64_t rows_seen = 0;                     // activation rows behind A (examples x positions; lookups)
  int64_t examples = 0;
  int64_t groups() const { return static_cast<int64_t>(input_moment.size()); }
};

// Stats for index.blocks[b] for every b in `blocks` (others are left empty). Blocks consumed by fused operators
// or transposed convolutions are returned with captured = false and the reason.
std::vector<LayerStats> capture_layer_stats(torch::jit::Module& module, const BlockIndex& index,
                                            const std::vector<std::size_t>& blocks, const DataFile& data,
                                            const CaptureParams& params, const Compute& compute,
                                            const std::string& model_path, CaptureTimes* times = nullptr);

// The activation rows one convolution or matmul multiplies its weight with, [samples, cols] per group; exposed
// for tests (layer output errors).
std::vector<torch::Tensor> activation_rows(const torch::Tensor& activation, const BlockInfo& info,
                                           bool activation_on_right);

// moments[g] += rows[g]^T rows[g] for every group of activation_rows' result, `moments` [groups, cols, cols]
// (zeros first when undefined): a grouped convolution's groups in one batched product.
void add_input_moments(torch::Tensor& moments, const std::vector<torch::Tensor>& rows);

}  // namespace bayesq

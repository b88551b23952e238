// GPTQ (Frantar et al., 2022) with a pluggable grid: columns are quantized one at a time in the order given by
// the inverse Hessian's Cholesky factor, and each column's rounding error is fed back into the columns not yet
// quantized, in lazy blocks of `block_size` columns (METHOD.md §6). With H = 2/n X X^T from the layer's inputs
// and a per-channel min-max grid this is the published algorithm; BayesQ-KFAC (METHOD.md §2) runs the same loop
// with its own metric and codebooks.
//
// Details as in the reference implementation: dead inputs (H_jj = 0) are zeroed and get H_jj = 1; damping adds
// percdamp * mean(diag H) to the diagonal; act-order visits columns by decreasing H_jj. When the Cholesky
// factorisation fails, or succeeds only with pivots so uneven that H is singular to float32 precision, the
// damping grows tenfold (up to max_damp_steps times) and the stats say so.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <torch/script.h>

#include "bayesq/gptq/gptq_params.h"

namespace bayesq {

struct GptqStats {
  double percdamp_used = 0.0;
  int damp_increases = 0;
  int64_t dead_columns = 0;
};

// The grid of one column group: given that group's current weights [rows, group columns], the ascending levels
// [rows, K] its columns round to (nearest level, ties to the lower). Called when the loop reaches the group's
// first column (dynamic grid, as the reference does with groups), or once per group before the loop when
// `static_groups` (then with the original weights). A per-row grid (one group) is computed once, from the
// weights before dead columns are zeroed, as in the reference.
using GptqGrid = std::function<torch::Tensor(const torch::Tensor& group_weights, int64_t group)>;

struct GptqResult {
  torch::Tensor quantized;  // [rows, cols], original column order
  torch::Tensor codes;      // [rows, cols] uint8, index into the column's group levels
  GptqStats stats;
};

// W [rows, cols] and H [cols, cols] on one device; groups are `group_size` consecutive original columns
// (0: the whole row). Throws UserError(numerical) when damping cannot make H positive definite.
GptqResult gptq_quantize(const torch::Tensor& weights, const torch::Tensor& hessian, int64_t group_size,
                         bool static_groups, const GptqGrid& grid, const GptqParams& params);

// The reference grid: per-row asymmetric min-max over the group with zero included, zero point rounded to an
// integer; levels scale * (k - zero). Degenerate rows (min = max = 0) get the range [-1, 1]. fp16_metadata rounds
// scale and offset = -scale * zero to fp16 as the packed file stores them.
// GPTQ for many independent problems of the same shape at once, e.g. the groups of a grouped or depthwise
// convolution: weights [G, rows, cols], hessians [G, cols, cols], one fixed grid per row levels [G, rows, K]
// (ascending; +inf padding allowed). Same algorithm as gptq_quantize with one group per row (dead columns,
// act-order per problem, damping grown per problem until its factorisation is well conditioned), without lazy
// blocks: every column update is applied at once, which for the short rows this is meant for costs nothing.
// Returns codes [G, rows, cols] (uint8) and the quantized weights, in the original column order.
GptqResult gptq_quantize_batched(const torch::Tensor& weights, const torch::Tensor& hessians,
                                 const torch::Tensor& levels, const GptqParams& params);

// One lazy block of GPTQ's column loop for P problems at once (feedback_block.h): w1 [P, rows, count] (not
// modified), hinv [P, count, count] (the block of the upper Cholesky factor of H^-1), levels [S, P, rows, width]
// ascending (+inf padding allowed), column_slot[i] the level slot of column i (empty: slot 0). Returns the
// quantized values, the errors (w - q) / Hinv_ii that the columns after the block are updated with, and the
// codes (uint8), each [P, rows, count]. CUDA tensors run as one kernel where the build has bayesq's kernels;
// elsewhere, or with `host`, on host threads (and back to the tensors' device).
struct FedBackBlock {
  torch::Tensor quantized, error, codes;
};
FedBackBlock feed_back_block(const torch::Tensor& w1, const torch::Tensor& hinv, const torch::Tensor& levels,
                             const std::vector<int32_t>& column_slot, bool host = false);

torch::Tensor minmax_levels(const torch::Tensor& group_weights, int bits, bool fp16_metadata);
// The same grid as per-row (scale, offset), levels = k * scale + offset in float32.
std::pair<torch::Tensor, torch::Tensor> minmax_scale_offset(const torch::Tensor& group_weights, int bits,
                                                           bool fp16_metadata);
torch::Tensor uniform_levels(const torch::Tensor& scale, const torch::Tensor& offset, int bits);

}  // namespace bayesq

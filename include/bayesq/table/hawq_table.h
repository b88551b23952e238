// The HAWQ-style baseline's loss table (METHOD.md §6 `hawq`): each block's sensitivity is its mean Hessian trace
// per weight, and an option's loss is that sensitivity times the option's round-to-nearest squared error,
//   L_b(m) = (tr(H_b) / n_b) * ||Q_m(W_b) - W_b||^2,
// with one uniform min-max grid per row (or group). The allocator reads it like any other table.
#pragma once

#include <vector>

#include "bayesq/posterior/posterior.h"
#include "bayesq/table/loss_table.h"

namespace bayesq {

// `blocks` carry plain weights (their precision is not read); `curvature` must hold every block by name.
LossTable build_hawq_table(const std::vector<BlockTableInput>& blocks, const CurvatureSet& curvature,
                           const std::vector<int>& candidates, int64_t group_size);

}  // namespace bayesq

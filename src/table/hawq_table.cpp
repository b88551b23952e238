#include "bayesq/table/hawq_table.h"

#include <cmath>

#include "bayesq/common/errors.h"

namespace bayesq {

LossTable build_hawq_table(const std::vector<BlockTableInput>& blocks, const CurvatureSet& curvature,
                           const std::vector<int>& candidates, int64_t group_size) {
  LossTable table;
  table.group_size = group_size;
  for (const BlockTableInput& block : blocks) {
    const int at = curvature.find(block.name);
    BQ_CHECK(at >= 0, ExitCode::input, "the posterior has no block '", block.name, "'");
    const CurvatureStats& c = curvature.blocks[static_cast<std::size_t>(at)];
    const int64_t numel = block.weights.rows * block.weights.cols;
    // The trace of the KL's Hessian (a Gauss-Newton matrix) is positive, but its Hutchinson estimate on a few
    // probes can come out negative for small blocks: a zero sensitivity then sends the block to the fewest bits
    // whatever the budget. The sum of the clamped per-weight diagonal is a positive trace estimate.
    double clamped_trace = 0.0;
    for (float v : c.diagonal) clamped_trace += std::isfinite(v) ? double(v) : 0.0;
    const double per_weight = c.available ? clamped_trace / double(numel) : 1.0;
    BlockWeights plain = block.weights;
    plain.precision = nullptr;
    BlockLosses losses;
    losses.name = block.name;
    losses.rows = block.weights.rows;
    losses.cols = block.weights.cols;
    for (int bits : candidates) {
      LossEntry e;
      e.bits = bits;
      e.kind = CodebookKind::uniform_asymmetric;
      e.cost = block_cost(losses.rows, losses.cols, bits, e.kind, group_size);
      const QuantizedBlock q = quantize_block_rtn(plain, bits, group_size);
      e.expected_loss = e.plugin_loss = per_weight * 2.0 * q.plugin_loss;  // plugin_loss = 1/2 SSE here
      losses.entries.push_back(e);
    }
    table.blocks.push_back(std::move(losses));
  }
  return table;
}

}  // namespace bayesq

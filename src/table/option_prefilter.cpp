#include "bayesq/table/option_prefilter.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "bayesq/common/errors.h"

namespace bayesq {

namespace {

// Rank of `bits` among a block's distinct candidate bit-widths.
int bit_rank(const std::vector<int>& distinct, int bits) {
  return static_cast<int>(std::lower_bound(distinct.begin(), distinct.end(), bits) - distinct.begin());
}

}  // namespace

std::vector<std::vector<bool>> prefilter_entries(const LossTable& table, const AllocationParams& params, int window) {
  BQ_ASSERT(window >= 0, "prefilter window ", window);
  LossTable predicted = table;
  for (BlockLosses& block : predicted.blocks)
    for (LossEntry& e : block.entries) {
      BQ_ASSERT(std::isfinite(e.predicted_loss), "block ", block.name, " has no predicted loss at ", e.bits, " bits");
      e.expected_loss = e.predicted_loss;
      e.measured = true;
    }
  AllocationParams p = params;
  p.certify = false;
  p.allowed_entries.clear();
  const Allocation choice = allocate(predicted, p);
  std::vector<std::vector<bool>> selected(table.blocks.size());
  for (std::size_t b = 0; b < table.blocks.size(); ++b) {
    const BlockLosses& block = table.blocks[b];
    const BlockChoice& c = choice.blocks[b];
    selected[b].assign(block.entries.size(), !c.keep_fp && !block.prefilter);
    if (c.keep_fp || !block.prefilter) continue;
    std::vector<int> distinct;
    for (const LossEntry& e : block.entries) distinct.push_back(e.bits);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    const int centre = bit_rank(distinct, c.bits);
    for (std::size_t e = 0; e < block.entries.size(); ++e)
      selected[b][e] = std::abs(bit_rank(distinct, block.entries[e].bits) - centre) <= window;
  }
  return selected;
}

std::vector<std::vector<bool>> unmeasured_entries(const LossTable& table,
                                                  const std::vector<std::vector<bool>>& selected) {
  BQ_ASSERT(selected.size() == table.blocks.size(), "selection of ", selected.size(), " blocks for ",
            table.blocks.size());
  std::vector<std::vector<bool>> missing(table.blocks.size());
  bool any = false;
  for (std::size_t b = 0; b < table.blocks.size(); ++b) {
    const std::vector<LossEntry>& entries = table.blocks[b].entries;
    BQ_ASSERT(selected[b].size() == entries.size(), "selection of ", selected[b].size(), " entries for ",
              entries.size(), " in ", table.blocks[b].name);
    missing[b].assign(entries.size(), false);
    for (std::size_t e = 0; e < entries.size(); ++e) {
      missing[b][e] = selected[b][e] && !entries[e].measured;
      any = any || missing[b][e];
    }
  }
  if (!any) missing.clear();
  return missing;
}

}  // namespace bayesq

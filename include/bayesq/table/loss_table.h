// LossTable: for every block and candidate (bit-width, codebook kind), the posterior-expected loss, the plug-in
// loss and the exact storage cost (METHOD.md §3-§4). The allocator reads only this table.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bayesq/codebook/block_quantizer.h"

namespace bayesq {

struct LossTableParams {
  std::vector<int> candidates{2, 3, 4, 5, 6, 8};
  std::vector<CodebookKind> kinds{CodebookKind::lloyd};  // every (bits, kind) pair becomes one option
  QuantizerParams quantizer;                              // granularity, tau, design settings (its kind is unused)
};

struct LossEntry {
  int bits = 0;
  CodebookKind kind = CodebookKind::lloyd;
  double expected_loss = 0.0;  // at the table's tau
  double plugin_loss = 0.0;    // tau = 0
  BlockCost cost;
  int64_t lloyd_fallbacks = 0; // codebooks where uniform levels beat Lloyd's
  // Measured tables with the option prefilter (Note [Option prefilter] in table/option_prefilter.h): whether
  // expected_loss has been measured (an entry no budget's window reached has not), and the loss the prefilter
  // predicted for it (NaN where none was).
  bool measured = true;
  double predicted_loss = std::numeric_limits<double>::quiet_NaN();
};

struct BlockLosses {
  std::string name;
  int64_t rows = 0, cols = 0;
  std::vector<LossEntry> entries;  // candidates x kinds, bits ascending within each kind
  bool monotone = true;            // expected loss non-increasing in bits for every kind (measured entries)
  // The prefilter may leave entries of this block unmeasured: its predictions are on the measured KL's scale
  // (false: every entry is measured when the block is).
  bool prefilter = false;
  int64_t numel() const { return rows * cols; }
};

struct LossTable {
  std::vector<BlockLosses> blocks;
  double tau = 0.0;
  int64_t group_size = 0;
  double seconds = 0.0;
  // Measured tables: blocks this process measured from a cached prefix, and the mean share of the forward's
  // data-dependent nodes those prefixes skipped (Note [Cached prefix] in measure/suffix_forward.h).
  int64_t cached_prefix_blocks = 0;
  double cached_prefix_share = 0.0;
  bool replayed_forwards = false;  // measured tables: full forwards replayed as a CUDA graph (measure/kl_forward.h)
  int find(const std::string& name) const;
};

struct BlockTableInput {
  std::string name;
  BlockWeights weights;
};

// Fills the table in parallel over (block, row/group) items; the result does not depend on the thread count.
LossTable build_loss_table(const std::vector<BlockTableInput>& blocks, const LossTableParams& params);

void to_json(nlohmann::json& j, const LossEntry& e);
void from_json(const nlohmann::json& j, LossEntry& e);
void to_json(nlohmann::json& j, const BlockLosses& b);
void from_json(const nlohmann::json& j, BlockLosses& b);
void to_json(nlohmann::json& j, const LossTable& t);
void from_json(const nlohmann::json& j, LossTable& t);

}  // namespace bayesq

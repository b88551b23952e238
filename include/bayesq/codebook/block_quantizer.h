// Quantizing one block: a codebook per row (or per group of `group_size` consecutive elements of a row), codes
// for every weight, and the block's expected and plug-in losses. The weights arrive as a contiguous row-major
// [rows, cols] array whose rows are output channels (BlockInfo::row_axis already applied), with one posterior
// precision per weight.
#pragma once

#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "bayesq/codebook/codebook.h"
#include "bayesq/common/bytes.h"
#include "bayesq/codebook/design.h"

namespace bayesq {

struct QuantizerParams {
  CodebookKind kind = CodebookKind::lloyd;
  int64_t group_size = 0;  // 0: one codebook per row
  double tau = 0.0;        // posterior temperature (--posterior-temp)
  LevelScale level_scale = LevelScale::automatic;  // Note [Gain-preserving codebooks]; automatic acts as none
  LloydParams lloyd;
  UniformParams uniform;
};

// Exact storage of one block at `bits` in the packed file, in bits.
struct BlockCost {
  int64_t code_bits = 0;      // 8 * bits * ceil(numel / 8)
  int64_t metadata_bits = 0;  // codebooks * codebook_metadata_bits
  int64_t total() const { return code_bits + metadata_bits; }
};

int64_t effective_group_size(int64_t cols, int64_t group_size);  // group_size, or cols when 0 / >= cols
int64_t groups_per_row(int64_t cols, int64_t group_size);
BlockCost block_cost(int64_t rows, int64_t cols, int bits, CodebookKind kind, int64_t group_size);

// A view of one block's weights and precisions, both [rows, cols] row-major.
struct BlockWeights {
  const float* weights = nullptr;
  const float* precision = nullptr;  // nullptr: all ones (plain MSE, e.g. RTN)
  int64_t rows = 0;
  int64_t cols = 0;
};

struct QuantizedBlock {
  int bits = 0;
  CodebookKind kind = CodebookKind::lloyd;
  int64_t rows = 0, cols = 0, group_size = 0;  // group_size: effective (cols when per row)
  std::vector<Codebook> codebooks;              // rows * groups_per_row, row-major
  std::vector<uint8_t> codes;                   // rows * cols
  double expected_loss = 0.0;
  double plugin_loss = 0.0;
  int lloyd_fallbacks = 0;                      // codebooks where uniform levels beat Lloyd's

  const Codebook& codebook_for(int64_t row, int64_t col) const {
    return codebooks[static_cast<std::size_t>(row * (codebooks.size() / rows) + col / group_size)];
  }
  std::vector<float> dequantize() const;  // rows * cols
  BlockCost cost() const { return block_cost(rows, cols, bits, kind, group_size); }
};

// A block to and from bytes (common/bytes.h), for the processes of one job: every field, so the block read back
// is the block written.
void write_block(ByteWriter& out, const QuantizedBlock& block);
QuantizedBlock read_block(ByteReader& in);

// Designs every codebook in parallel over rows; deterministic.
QuantizedBlock quantize_block(const BlockWeights& block, int bits, const QuantizerParams& params);

// The same block at several (bits, kind) options, exactly what quantize_block gives for each (params.kind replaced
// by the option's), with the work the options share done once per row: the sorted row and its prefix sums, and
// the asymmetric uniform design of each bit-width (the uniform option's codebook and Lloyd's safeguard).
std::vector<QuantizedBlock> quantize_block_options(const BlockWeights& block,
                                                   const std::vector<std::pair<int, CodebookKind>>& options,
                                                   const QuantizerParams& params);

// Round-to-nearest baseline: per-row asymmetric min-max uniform grid (METHOD.md §6 `rtn`), fp16 metadata.
QuantizedBlock quantize_block_rtn(const BlockWeights& block, int bits, int64_t group_size);

// quantize_block_rtn's codebooks alone at each of `bits` (rows * groups_per_row each, row-major), bit for bit the
// same: one min-max scan per row or group for all widths, no sorted row, codes or losses (the option prefilter's
// grids, whose codes the error feedback chooses).
std::vector<std::vector<Codebook>> minmax_codebooks(const BlockWeights& block, const std::vector<int>& bits,
                                                    int64_t group_size);

// The largest number of distinct weights in one row or group of `group_size` columns (0: whole rows), counted up
// to `cap`: a value above `cap` means "more than cap". A Lloyd table of at least that many levels holds every
// group exactly.
int64_t max_distinct_per_group(const BlockWeights& weights, int64_t group_size, int64_t cap);

// Losses of one (row or group) codebook design without keeping codes: used to fill loss tables.
struct DesignedLoss {
  double expected = 0.0;
  double plugin = 0.0;
  bool fell_back = false;
};
DesignedLoss design_and_score(const WeightedRow& row, int bits, const QuantizerParams& params);

// One row's unscaled asymmetric uniform design per bit-width, made on first use: several options of the same row
// share it (design_codebook).
struct UniformDesigns {
  std::array<Codebook, kMaxBits + 1> codebook;
  std::array<DesignStats, kMaxBits + 1> stats;
  std::array<bool, kMaxBits + 1> done{};
  const Codebook& get(const WeightedRow& row, int bits, const UniformParams& params);
};

// params.kind at `bits`, scaled by params.level_scale; with `shared`, the uniform design comes from it.
Codebook design_codebook(const WeightedRow& row, int bits, const QuantizerParams& params, DesignStats* stats,
                         UniformDesigns* shared = nullptr);

}  // namespace bayesq

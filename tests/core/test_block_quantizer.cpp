#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <tuple>

#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/codebook/expected_loss.h"
#include "bayesq/common/errors.h"
#include "bayesq/common/parallel.h"

using namespace bayesq;

namespace {
std::vector<float> random_weights(std::size_t n, uint32_t seed, float scale = 0.1f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> w(n);
  for (auto& x : w) x = normal(rng);
  return w;
}
// Log-normal precisions: positive, spread over a few orders of magnitude.
std::vector<float> random_precision(std::size_t n, uint32_t seed) {
  std::vector<float> p = random_weights(n, seed, 1.0f);
  for (auto& x : p) x = std::exp(x);
  return p;
}
}  // namespace

TEST(Rtn, ErrorIsBoundedByHalfAStepPerRow) {
  const int64_t rows = 16, cols = 75;
  const auto w = random_weights(static_cast<std::size_t>(rows * cols), 1);
  for (int bits = 2; bits <= 8; ++bits) {
    const QuantizedBlock q = quantize_block_rtn({w.data(), nullptr, rows, cols}, bits, 0);
    const auto deq = q.dequantize();
    for (int64_t r = 0; r < rows; ++r) {
      float lo = INFINITY, hi = -INFINITY;
      for (int64_t c = 0; c < cols; ++c) {
        lo = std::min(lo, w[r * cols + c]);
        hi = std::max(hi, w[r * cols + c]);
      }
      const Codebook& cb = q.codebook_for(r, 0);
      // With fp16 scale s and offset o, levels span [o, o + (2^m - 1) s]; the error is at most half a step inside
      // the span, or the distance from the span's ends to the row's min and max.
      const double bound = std::max({0.5 * cb.scale, std::fabs(double(cb.levels.front()) - lo),
                                     std::fabs(double(cb.levels.back()) - hi)});
      for (int64_t c = 0; c < cols; ++c)
        EXPECT_LE(std::fabs(deq[r * cols + c] - w[r * cols + c]), bound * (1 + 1e-6)) << bits << " bits";
      // And half a step is about range / (2 (2^m - 1)).
      EXPECT_NEAR(cb.scale, (hi - lo) / ((1 << bits) - 1), (hi - lo) * 1e-3);
    }
  }
}

TEST(BlockQuantizer, GroupsHaveTheirOwnCodebooks) {
  const int64_t rows = 5, cols = 70;  // groups of 32: 32, 32, 6
  const auto w = random_weights(static_cast<std::size_t>(rows * cols), 2);
  QuantizerParams params;
  params.group_size = 32;
  const QuantizedBlock q = quantize_block({w.data(), nullptr, rows, cols}, 3, params);
  EXPECT_EQ(q.codebooks.size(), static_cast<std::size_t>(rows * 3));
  EXPECT_EQ(q.group_size, 32);
  const auto deq = q.dequantize();
  double loss = 0.0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const Codebook& cb = q.codebooks[static_cast<std::size_t>(r * 3 + c / 32)];
      EXPECT_EQ(deq[r * cols + c], cb.decode(cb.encode(w[r * cols + c])));
      loss += 0.5 * (deq[r * cols + c] - w[r * cols + c]) * (deq[r * cols + c] - w[r * cols + c]);
    }
  EXPECT_NEAR(q.plugin_loss, loss, 1e-9 + 1e-6 * loss);
  EXPECT_EQ(q.cost().metadata_bits, rows * 3 * 8 * 16);
}

TEST(BlockQuantizer, SameResultForAnyThreadCount) {
  const int64_t rows = 33, cols = 50;
  const auto w = random_weights(static_cast<std::size_t>(rows * cols), 3);
  const auto precision = random_precision(static_cast<std::size_t>(rows * cols), 4);
  QuantizerParams params;
  params.tau = 0.5;
  set_num_threads(1);
  const QuantizedBlock a = quantize_block({w.data(), precision.data(), rows, cols}, 3, params);
  set_num_threads(4);
  const QuantizedBlock b = quantize_block({w.data(), precision.data(), rows, cols}, 3, params);
  set_num_threads(0);
  EXPECT_EQ(a.codes, b.codes);
  EXPECT_EQ(a.expected_loss, b.expected_loss);
  EXPECT_EQ(a.dequantize(), b.dequantize());
}

TEST(BlockQuantizer, CurvatureWeightingMovesErrorToUnimportantWeights) {
  // The small weights of each row carry 1000x the precision: the weighted design must spend its levels on them.
  const int64_t rows = 8, cols = 64;
  const auto w = random_weights(static_cast<std::size_t>(rows * cols), 9);
  std::vector<float> precision(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) precision[i] = std::fabs(w[i]) < 0.05f ? 1000.0f : 1.0f;
  QuantizerParams params;
  const QuantizedBlock weighted = quantize_block({w.data(), precision.data(), rows, cols}, 2, params);
  const QuantizedBlock plain = quantize_block({w.data(), nullptr, rows, cols}, 2, params);
  auto weighted_error = [&](const QuantizedBlock& q) {
    const auto d = q.dequantize();
    double e = 0.0;
    for (std::size_t i = 0; i < w.size(); ++i) e += 0.5 * precision[i] * (d[i] - w[i]) * (d[i] - w[i]);
    return e;
  };
  EXPECT_LT(weighted_error(weighted), 0.5 * weighted_error(plain));
  EXPECT_NEAR(weighted.plugin_loss, weighted_error(weighted), 1e-6 * weighted_error(weighted));
}

// quantize_block_options shares the sorted row and each bit-width's uniform design between options: the blocks
// must be exactly quantize_block's, option by option (codes, codebooks, losses), with groups, a posterior
// temperature, a level scale and every kind.
TEST(BlockQuantizer, OptionsAtOnceAreEachOptionAlone) {
  const int64_t rows = 9, cols = 70;
  const auto w = random_weights(static_cast<std::size_t>(rows * cols), 5);
  const auto precision = random_precision(static_cast<std::size_t>(rows * cols), 6);
  const std::vector<std::pair<int, CodebookKind>> options = {
      {1, CodebookKind::lloyd},   {2, CodebookKind::lloyd},   {4, CodebookKind::lloyd},
      {2, CodebookKind::uniform_asymmetric}, {4, CodebookKind::uniform_asymmetric},
      {3, CodebookKind::uniform_symmetric},  {8, CodebookKind::uniform_asymmetric}, {3, CodebookKind::lloyd}};
  for (const auto& [group, tau, scale] : {std::tuple<int64_t, double, LevelScale>{0, 0.0, LevelScale::none},
                                          std::tuple<int64_t, double, LevelScale>{32, 0.0, LevelScale::gain},
                                          std::tuple<int64_t, double, LevelScale>{0, 0.5, LevelScale::energy}}) {
    QuantizerParams params;
    params.group_size = group;
    params.tau = tau;
    params.level_scale = scale;
    const BlockWeights block{w.data(), precision.data(), rows, cols};
    const std::vector<QuantizedBlock> all = quantize_block_options(block, options, params);
    ASSERT_EQ(all.size(), options.size());
    for (std::size_t o = 0; o < options.size(); ++o) {
      QuantizerParams one = params;
      one.kind = options[o].second;
      const QuantizedBlock alone = quantize_block(block, options[o].first, one);
      EXPECT_EQ(all[o].bits, alone.bits);
      EXPECT_EQ(all[o].kind, alone.kind);
      EXPECT_EQ(all[o].codes, alone.codes) << o;
      EXPECT_EQ(all[o].dequantize(), alone.dequantize()) << o;
      EXPECT_EQ(all[o].expected_loss, alone.expected_loss) << o;
      EXPECT_EQ(all[o].plugin_loss, alone.plugin_loss) << o;
      EXPECT_EQ(all[o].lloyd_fallbacks, alone.lloyd_fallbacks) << o;
      EXPECT_EQ(all[o].cost().total(), alone.cost().total()) << o;
    }
  }
}

// A block sent to another process of a job is the same block there: every field through write_block/read_block,
// several blocks back to back; a truncated buffer is refused, not read past its end.
TEST(BlockQuantizer, BlockBytesReadBackToTheSameBlock) {
  const int64_t rows = 6, cols = 40;
  const auto w = random_weights(static_cast<std::size_t>(rows * cols), 8);
  const auto precision = random_precision(static_cast<std::size_t>(rows * cols), 9);
  QuantizerParams params;
  params.group_size = 16;
  params.level_scale = LevelScale::gain;  // rescaled codebooks keep their design's cells: boundaries matter
  const BlockWeights block{w.data(), precision.data(), rows, cols};
  const std::vector<QuantizedBlock> blocks = quantize_block_options(
      block, {{3, CodebookKind::lloyd}, {2, CodebookKind::uniform_asymmetric}, {4, CodebookKind::uniform_symmetric}},
      params);
  ByteWriter out;
  for (const QuantizedBlock& b : blocks) write_block(out, b);
  const std::vector<uint8_t> bytes = out.bytes();
  ByteReader in(bytes);
  for (const QuantizedBlock& b : blocks) {
    const QuantizedBlock r = read_block(in);
    EXPECT_EQ(r.bits, b.bits);
    EXPECT_EQ(r.kind, b.kind);
    EXPECT_EQ(r.rows, b.rows);
    EXPECT_EQ(r.cols, b.cols);
    EXPECT_EQ(r.group_size, b.group_size);
    EXPECT_EQ(r.codes, b.codes);
    EXPECT_EQ(r.expected_loss, b.expected_loss);
    EXPECT_EQ(r.plugin_loss, b.plugin_loss);
    EXPECT_EQ(r.lloyd_fallbacks, b.lloyd_fallbacks);
    ASSERT_EQ(r.codebooks.size(), b.codebooks.size());
    for (std::size_t c = 0; c < b.codebooks.size(); ++c) {
      EXPECT_EQ(r.codebooks[c].kind, b.codebooks[c].kind);
      EXPECT_EQ(r.codebooks[c].bits, b.codebooks[c].bits);
      EXPECT_EQ(r.codebooks[c].scale, b.codebooks[c].scale);
      EXPECT_EQ(r.codebooks[c].offset, b.codebooks[c].offset);
      EXPECT_EQ(r.codebooks[c].levels, b.codebooks[c].levels);
      EXPECT_EQ(r.codebooks[c].boundaries, b.codebooks[c].boundaries);
    }
    EXPECT_EQ(r.dequantize(), b.dequantize());
  }
  EXPECT_TRUE(in.done());
  const std::vector<uint8_t> truncated(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(bytes.size() / 2));
  ByteReader short_in(truncated);
  EXPECT_THROW(
      {
        for (int i = 0; i < 3; ++i) read_block(short_in);
      },
      InternalError);
}

// The option prefilter's grids: quantize_block_rtn's codebooks at every width, field for field, from one scan.
TEST(Rtn, MinmaxCodebooksAreRtnsCodebooks) {
  const int64_t rows = 7, cols = 45;
  std::vector<float> w = random_weights(static_cast<std::size_t>(rows * cols), 17);
  w[3] = 0.9f;                                                  // an outlier sets one row's max
  std::fill(w.begin() + cols, w.begin() + 2 * cols, 0.25f);     // a constant row: zero range
  for (int64_t c = 0; c < cols; ++c) w[static_cast<std::size_t>(2 * cols + c)] = c % 2 ? 0.0f : -0.0f;  // signed zeros
  const std::vector<float> p = random_precision(w.size(), 18);  // ignored by the grid, as by RTN's
  const std::vector<int> bits = {1, 2, 3, 4, 5, 6, 8};
  for (int64_t group_size : {int64_t(0), int64_t(16)}) {        // 45 = 16 + 16 + 13: a short last group
    const BlockWeights block{w.data(), p.data(), rows, cols};
    const std::vector<std::vector<Codebook>> grids = minmax_codebooks(block, bits, group_size);
    ASSERT_EQ(grids.size(), bits.size());
    for (std::size_t k = 0; k < bits.size(); ++k) {
      const QuantizedBlock rtn = quantize_block_rtn(block, bits[k], group_size);
      ASSERT_EQ(grids[k].size(), rtn.codebooks.size()) << bits[k];
      for (std::size_t t = 0; t < rtn.codebooks.size(); ++t) {
        const Codebook& a = grids[k][t];
        const Codebook& b = rtn.codebooks[t];
        EXPECT_EQ(a.kind, b.kind);
        EXPECT_EQ(a.bits, b.bits);
        EXPECT_EQ(a.scale, b.scale) << bits[k] << " bits, group " << t;
        EXPECT_EQ(a.offset, b.offset) << bits[k] << " bits, group " << t;
        EXPECT_EQ(a.levels, b.levels) << bits[k] << " bits, group " << t;
        EXPECT_EQ(a.boundaries, b.boundaries) << bits[k] << " bits, group " << t;
      }
    }
  }
}

// Oracle: a sorted copy of each group, counted by hand.
TEST(BlockQuantizer, MaxDistinctPerGroupCountsWhatASortedCopyHolds) {
  const int64_t rows = 9, cols = 45;
  std::mt19937 rng(5);
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const int values = 1 + static_cast<int>(r) * 4;  // row r draws from 1, 5, 9, ... values
    std::uniform_int_distribution<int> pick(0, values - 1);
    for (int64_t c = 0; c < cols; ++c) w[static_cast<std::size_t>(r * cols + c)] = 0.125f * float(pick(rng));
  }
  w[5] = -0.0f;  // equal to 0.0: one value
  for (int64_t group_size : {int64_t(0), int64_t(16)}) {
    int64_t truth = 0;
    const int64_t group = group_size ? group_size : cols;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c0 = 0; c0 < cols; c0 += group) {
        std::vector<float> v(w.begin() + r * cols + c0, w.begin() + r * cols + std::min(cols, c0 + group));
        std::sort(v.begin(), v.end());
        truth = std::max<int64_t>(truth, std::unique(v.begin(), v.end()) - v.begin());
      }
    const BlockWeights block{w.data(), nullptr, rows, cols};
    for (int64_t cap : {int64_t(2), int64_t(8), int64_t(16), int64_t(40), int64_t(64)})
      EXPECT_EQ(max_distinct_per_group(block, group_size, cap), std::min(truth, cap + 1))
          << "group " << group_size << ", cap " << cap;
  }
}

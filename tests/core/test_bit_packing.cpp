#include <gtest/gtest.h>

#include <random>

#include "bayesq/codebook/bit_packing.h"
#include "bayesq/codebook/block_quantizer.h"

using namespace bayesq;

TEST(BitPacking, RoundTripEveryWidthAndLength) {
  std::mt19937 rng(7);
  for (int bits = 1; bits <= 8; ++bits) {
    for (int64_t count : {0, 1, 7, 8, 9, 63, 64, 65, 1000, 4099}) {
      std::vector<uint8_t> codes(static_cast<std::size_t>(count));
      for (auto& c : codes) c = static_cast<uint8_t>(rng() & ((1u << bits) - 1u));
      const auto packed = pack_bitplanes(codes, bits);
      EXPECT_EQ(static_cast<int64_t>(packed.size()), packed_code_bytes(count, bits));
      EXPECT_EQ(unpack_bitplanes(packed, count, bits), codes) << "bits " << bits << " count " << count;
    }
  }
}

TEST(BitPacking, LayoutIsBitPlanesLsbFirst) {
  // codes 0b101, 0b010 at 3 bits: plane 0 = {1, 0}, plane 1 = {0, 1}, plane 2 = {1, 0}.
  const auto packed = pack_bitplanes({5, 2}, 3);
  ASSERT_EQ(packed.size(), 3u);
  EXPECT_EQ(packed[0], 0b01);
  EXPECT_EQ(packed[1], 0b10);
  EXPECT_EQ(packed[2], 0b01);
}

TEST(BitPacking, CostCountsExactlyThePackedBytes) {
  for (int bits = 1; bits <= 8; ++bits)
    for (int64_t rows : {1, 3, 64})
      for (int64_t cols : {1, 9, 27, 576}) {
        const BlockCost cost = block_cost(rows, cols, bits, CodebookKind::uniform_asymmetric, 0);
        std::vector<uint8_t> codes(static_cast<std::size_t>(rows * cols), 0);
        EXPECT_EQ(cost.code_bits, 8 * static_cast<int64_t>(pack_bitplanes(codes, bits).size()));
        EXPECT_EQ(cost.metadata_bits, rows * 32);
      }
}

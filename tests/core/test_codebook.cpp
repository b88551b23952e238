#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "bayesq/codebook/codebook.h"
#include "bayesq/common/errors.h"
#include "bayesq/common/fp16.h"

using namespace bayesq;

static int nearest_brute_force(const Codebook& cb, double x) {
  int best = 0;
  for (int k = 1; k < cb.size(); ++k)
    if (std::fabs(cb.levels[k] - x) < std::fabs(cb.levels[best] - x)) best = k;
  return best;
}

TEST(Codebook, EncodeIsNearestLevelAndDecodeRoundTrips) {
  std::mt19937 rng(3);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int bits = 1; bits <= 8; ++bits) {
    std::vector<double> levels(std::size_t{1} << bits);
    for (auto& l : levels) l = normal(rng);
    const Codebook cb = Codebook::lloyd(bits, levels);
    ASSERT_EQ(cb.size(), 1 << bits);
    for (int k = 0; k < cb.size(); ++k) {
      // Every stored value decodes to itself through its own code (first of any duplicates).
      EXPECT_EQ(cb.decode(cb.encode(cb.levels[k])), cb.levels[k]);
      EXPECT_EQ(cb.levels[k], round_to_half(cb.levels[k])) << "levels are fp16 values";
    }
    for (int t = 0; t < 200; ++t) {
      const double x = 2.0 * normal(rng);
      const int code = cb.encode(x);
      EXPECT_EQ(std::fabs(cb.levels[code] - x), std::fabs(cb.levels[nearest_brute_force(cb, x)] - x));
    }
  }
}

TEST(Codebook, UniformLevelsFollowTheStoredFormula) {
  const Codebook a = Codebook::uniform_asymmetric(3, 0.1, -0.35);
  EXPECT_EQ(a.scale, round_to_half(0.1f));
  EXPECT_EQ(a.offset, round_to_half(-0.35f));
  for (int k = 0; k < 8; ++k) EXPECT_EQ(a.levels[k], static_cast<float>(k) * a.scale + a.offset);

  const Codebook s = Codebook::uniform_symmetric(4, 0.02);
  for (int k = 0; k < 16; ++k) EXPECT_EQ(s.levels[k], (static_cast<float>(k) - 7.5f) * s.scale);
  EXPECT_EQ(s.levels[0], -s.levels[15]);
}

TEST(Codebook, TiesGoToTheLowerLevel) {
  const Codebook cb = Codebook::lloyd(1, {0.0, 1.0});
  EXPECT_EQ(cb.encode(0.5), 0);
  EXPECT_EQ(cb.encode(0.5000001), 1);
}

TEST(Codebook, MetadataBits) {
  EXPECT_EQ(codebook_metadata_bits(CodebookKind::lloyd, 3), 8 * 16);
  EXPECT_EQ(codebook_metadata_bits(CodebookKind::uniform_asymmetric, 3), 32);
  EXPECT_EQ(codebook_metadata_bits(CodebookKind::uniform_symmetric, 8), 16);
  EXPECT_THROW(codebook_kind_from_name("kmeans"), UserError);
  EXPECT_EQ(codebook_kind_from_name(codebook_kind_name(CodebookKind::uniform_symmetric)),
            CodebookKind::uniform_symmetric);
}

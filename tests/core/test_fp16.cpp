#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "bayesq/common/fp16.h"

using namespace bayesq;

// Reference: the fp16 value nearest to x by exhaustive search over all finite half values (ties to even).
static float nearest_half_reference(float x) {
  float best = 0.0f;
  double best_err = std::numeric_limits<double>::infinity();
  uint16_t best_bits = 0;
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const uint16_t bits = static_cast<uint16_t>(b);
    if (((bits >> 10) & 0x1f) == 0x1f) continue;  // inf / NaN
    const float h = half_bits_to_float(bits);
    const double err = std::fabs(double(h) - double(x));
    if (err < best_err || (err == best_err && (bits & 1u) == 0 && (best_bits & 1u) == 1)) {
      best_err = err;
      best = h;
      best_bits = bits;
    }
  }
  return best;
}

TEST(Fp16, RoundTripsEveryFiniteHalf) {
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const uint16_t bits = static_cast<uint16_t>(b);
    if (((bits >> 10) & 0x1f) == 0x1f) continue;
    const float f = half_bits_to_float(bits);
    const uint16_t back = float_to_half_bits(f);
    if (f == 0.0f) {
      EXPECT_EQ(back & 0x7fffu, 0u);
    } else {
      EXPECT_EQ(back, bits) << "bits " << bits;
    }
  }
}

TEST(Fp16, RoundsToNearestLikeExhaustiveSearch) {
  const float samples[] = {0.1f, -0.3333333f, 1e-5f, 6.1e-5f, 3.0e-8f, 65519.0f, 1234.567f, -0.0009765625f,
                           1.00048828125f /* halfway 1 and 1+2^-10: ties to even -> 1 */, 2.5e-6f};
  for (float x : samples) EXPECT_EQ(round_to_half(x), nearest_half_reference(x)) << x;
}

TEST(Fp16, OverflowAndSpecials) {
  EXPECT_TRUE(std::isinf(round_to_half(1e6f)));
  EXPECT_TRUE(std::isnan(round_to_half(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(round_to_half(kHalfMax), kHalfMax);
}

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>

#include "bayesq/common/errors.h"
#include "bayesq/posterior/posterior.h"

using namespace bayesq;

TEST(Posterior, PrecisionIsNdPlusDampedPrior) {
  CurvatureStats c;
  c.name = "w";
  c.diagonal = {0.0f, 1.0f, 2.0f, 5.0f};
  const BlockPosterior p = fit_posterior(c, 10, PosteriorParams{0.01});
  const double lambda = 0.01 * (0 + 10 + 20 + 50) / 4.0;
  EXPECT_FALSE(p.fallback);
  EXPECT_DOUBLE_EQ(p.prior_precision, lambda);
  EXPECT_FLOAT_EQ(p.precision[0], static_cast<float>(lambda));
  EXPECT_FLOAT_EQ(p.precision[3], static_cast<float>(50 + lambda));
  EXPECT_FLOAT_EQ(p.min_precision, static_cast<float>(lambda));
  EXPECT_FLOAT_EQ(p.max_precision, static_cast<float>(50 + lambda));
}

TEST(Posterior, FallsBackOnZeroNonFiniteOrUnavailableCurvature) {
  CurvatureStats zero;
  zero.diagonal.assign(5, 0.0f);
  const BlockPosterior a = fit_posterior(zero, 100, PosteriorParams{});
  EXPECT_TRUE(a.fallback);
  EXPECT_DOUBLE_EQ(a.prior_precision, 1.0);
  EXPECT_FLOAT_EQ(a.precision[2], 1.0f);

  CurvatureStats nan = zero;
  nan.diagonal[1] = std::numeric_limits<float>::quiet_NaN();
  const BlockPosterior b = fit_posterior(nan, 100, PosteriorParams{});
  EXPECT_TRUE(b.fallback);
  EXPECT_EQ(b.fallback_reason, "non-finite curvature");
  for (float v : b.precision) EXPECT_TRUE(std::isfinite(v));

  CurvatureStats hidden;
  hidden.diagonal.assign(3, 1.0f);
  hidden.available = false;
  EXPECT_TRUE(fit_posterior(hidden, 100, PosteriorParams{}).fallback);
}

TEST(Posterior, ArtifactRoundTripsAndRejectsTruncation) {
  CurvatureSet set;
  set.examples = 64;
  set.estimator = "hutchinson";
  set.loss = "kl";
  set.probes = 4;
  set.seed = 7;
  set.model_hash = "abc";
  set.data_hash = "def";
  for (int b = 0; b < 3; ++b) {
    CurvatureStats c;
    c.name = "block" + std::to_string(b);
    for (int i = 0; i < 10 + b; ++i) c.diagonal.push_back(0.5f * i + b);
    c.trace = 1.5 * b;
    c.trace_standard_error = 0.1;
    c.trace_samples = 4;
    set.blocks.push_back(c);
  }
  const std::string path = (std::filesystem::temp_directory_path() / "bayesq_test_posterior.bqp").string();
  save_curvature(set, path);
  const CurvatureSet back = load_curvature(path);
  EXPECT_EQ(back.examples, 64);
  EXPECT_EQ(back.model_hash, "abc");
  ASSERT_EQ(back.blocks.size(), 3u);
  for (int b = 0; b < 3; ++b) EXPECT_EQ(back.blocks[b].diagonal, set.blocks[b].diagonal);

  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 8);
  EXPECT_THROW(load_curvature(path), UserError);
  {
    std::ofstream bad(path, std::ios::binary);
    bad << "not a posterior";
  }
  EXPECT_THROW(load_curvature(path), UserError);
  std::filesystem::remove(path);
}

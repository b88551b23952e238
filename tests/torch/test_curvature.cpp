// Curvature estimators against closed forms (METHOD.md §1) and the posterior artifact.
#include <gtest/gtest.h>

#include <cmath>

#include <ATen/Context.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include "bayesq/calibrate/curvature.h"
#include "bayesq/calibrate/grouped_conv.h"
#include "bayesq/common/errors.h"
#include "bayesq/data/data_file.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/model_file.h"
#include "bayesq/pipeline/commands.h"
#include "bayesq/pipeline/quantize.h"
#include "bayesq/posterior/posterior.h"
#include "fixtures.h"

using namespace bayesq;
using bayesq_test::fixture;
using bayesq_test::scratch;

namespace {

torch::Tensor diagonal_of(const CurvatureSet& set, const std::string& name, at::IntArrayRef shape) {
  const auto& d = set.blocks.at(static_cast<std::size_t>(set.find(name))).diagonal;
  return torch::from_blob(const_cast<float*>(d.data()), shape, torch::kFloat32).to(torch::kFloat64).clone();
}

double relative_error(const torch::Tensor& estimate, const torch::Tensor& exact) {
  return ((estimate - exact).norm() / exact.norm()).item<double>();
}

struct LogReg {
  LoadedModel model = load_model(fixture("logreg.pt"));
  DataFile data = DataFile::load(fixture("logreg_data.pt"));
  BlockIndex index = discover_blocks(model.module);
  // GGN diagonal of the mean KL at theta_hat: d[c, j] = 1/N sum_n p_nc (1 - p_nc) x_nj^2.
  torch::Tensor exact() {
    const torch::Tensor x = data.input(0).to(torch::kFloat64);
    const torch::Tensor w = find_tensor(model.module, "weight").to(torch::kFloat64);
    const torch::Tensor b = find_tensor(model.module, "bias").to(torch::kFloat64);
    const torch::Tensor p = torch::softmax(x.matmul(w.t()) + b, 1);
    return (p * (1 - p)).t().matmul(x.pow(2)) / double(x.size(0));
  }
};

}  // namespace

TEST(Curvature, HutchinsonMatchesTheLogisticRegressionClosedForm) {
  LogReg f;
  CurvatureParams params;
  params.probes = 64;
  Compute compute;
  compute.batch_size = 512;
  const CurvatureSet set = estimate_curvature(f.model.module, f.index, f.data, params, compute, "logreg.pt");
  EXPECT_EQ(set.loss, "kl");
  EXPECT_EQ(set.examples, 32768);
  const torch::Tensor estimate = diagonal_of(set, "weight", {4, 6});
  EXPECT_LT(relative_error(estimate, f.exact()), 0.05);
}

TEST(Curvature, FisherMatchesTheLogisticRegressionClosedForm) {
  LogReg f;
  CurvatureParams params;
  params.estimator = CurvatureEstimator::fisher;
  Compute compute;
  compute.batch_size = 512;
  const CurvatureSet set = estimate_curvature(f.model.module, f.index, f.data, params, compute, "logreg.pt");
  EXPECT_LT(relative_error(diagonal_of(set, "weight", {4, 6}), f.exact()), 0.05);
}

TEST(Curvature, StandardErrorShrinksLikeOneOverRootP) {
  LogReg f;
  CurvatureParams params;
  Compute compute;
  compute.batch_size = 512;
  params.probes = 8;
  const CurvatureSet few = estimate_curvature(f.model.module, f.index, f.data, params, compute, "logreg.pt");
  params.probes = 32;
  const CurvatureSet many = estimate_curvature(f.model.module, f.index, f.data, params, compute, "logreg.pt");
  const double ratio = few.blocks[0].trace_standard_error / many.blocks[0].trace_standard_error;
  EXPECT_GT(ratio, 1.6);  // sqrt(32 / 8) = 2
  EXPECT_LT(ratio, 2.5);
  // And the trace estimate itself is consistent with the exact trace within a few standard errors.
  EXPECT_NEAR(many.blocks[0].trace, f.exact().sum().item<double>(), 4.0 * many.blocks[0].trace_standard_error);
}

TEST(Curvature, HutchinsonMatchesTheLinearRegressionHessian) {
  LoadedModel model = load_model(fixture("linreg.pt"));
  const DataFile data = DataFile::load(fixture("linreg_data.pt"));
  CurvatureParams params;
  params.loss = "mse";
  params.probes = 256;
  Compute compute;
  compute.batch_size = 256;
  const CurvatureSet set =
      estimate_curvature(model.module, discover_blocks(model.module), data, params, compute, "linreg.pt");
  // Squared loss 1/2 ||W x - W_hat x||^2: H[(c, j), (c, j)] = 1/N sum_n x_nj^2 for every output c.
  const torch::Tensor x = data.input(0).to(torch::kFloat64);
  const torch::Tensor exact = x.pow(2).mean(0).unsqueeze(0).expand({3, 5});
  EXPECT_LT(relative_error(diagonal_of(set, "weight", {3, 5}), exact), 0.05);
}

TEST(Curvature, EveryBlockOfAConvNetAndATransformerIsFiniteAndNonNegative) {
  struct Case {
    const char* model;
    const char* data;
  };
  for (const Case& c : {Case{"convs.pt", "convs_calib.pt"}, Case{"transformer.pt", "transformer_calib.pt"},
                        Case{"separable.pt", "separable_calib.pt"}}) {
    LoadedModel model = load_model(fixture(c.model));
    const BlockIndex index = discover_blocks(model.module);
    CurvatureParams params;
    params.probes = 4;
    Compute compute;
    compute.batch_size = 16;
    const CurvatureSet set =
        estimate_curvature(model.module, index, DataFile::load(fixture(c.data)), params, compute, c.model);
    ASSERT_EQ(set.blocks.size(), index.blocks.size());
    for (const auto& b : set.blocks) {
      EXPECT_TRUE(b.available) << c.model << " " << b.name;
      EXPECT_EQ(b.non_finite, 0) << b.name;
      double sum = 0.0;
      for (float v : b.diagonal) {
        EXPECT_TRUE(std::isfinite(v));
        EXPECT_GE(v, 0.0f);
        sum += v;
      }
      EXPECT_GT(sum, 0.0) << c.model << " " << b.name;
      const BlockPosterior p = fit_posterior(b, set.examples, PosteriorParams{});
      EXPECT_FALSE(p.fallback) << b.name;
    }
  }
}

TEST(Curvature, ABlockWithAlwaysZeroInputGetsTheFlaggedFallback) {
  LoadedModel model = load_model(fixture("dead_branch.pt"));
  const BlockIndex index = discover_blocks(model.module);
  const CurvatureSet set =
      estimate_curvature(model.module, index, DataFile::load(fixture("dead_branch_calib.pt")), CurvatureParams{},
                         Compute{}, "m");
  const BlockPosterior dead = fit_posterior(set.blocks.at(static_cast<std::size_t>(set.find("dead.weight"))),
                                            set.examples, PosteriorParams{});
  const BlockPosterior live = fit_posterior(set.blocks.at(static_cast<std::size_t>(set.find("live.weight"))),
                                            set.examples, PosteriorParams{});
  EXPECT_TRUE(dead.fallback);
  EXPECT_EQ(dead.fallback_reason, "all-zero curvature");
  EXPECT_FALSE(live.fallback);
}

TEST(Curvature, FusedOperatorBlocksAreReportedUnavailable) {
  LoadedModel model = load_model(fixture("transformer_fused.pt"));
  const BlockIndex index = discover_blocks(model.module);
  const CurvatureSet set = estimate_curvature(model.module, index, DataFile::load(fixture("transformer_calib.pt")),
                                              CurvatureParams{}, Compute{}, "transformer_fused.pt");
  for (const auto& b : set.blocks) EXPECT_EQ(b.available, b.name == "head.weight") << b.name;
}

TEST(Curvature, SameSeedIsBitIdenticalAndAnotherSeedIsNot) {
  LoadedModel model = load_model(fixture("separable.pt"));
  const BlockIndex index = discover_blocks(model.module);
  const DataFile data = DataFile::load(fixture("separable_calib.pt"));
  CurvatureParams params;
  params.probes = 2;
  Compute compute;
  compute.seed = 11;
  const CurvatureSet a = estimate_curvature(model.module, index, data, params, compute, "m");
  const CurvatureSet b = estimate_curvature(model.module, index, data, params, compute, "m");
  compute.seed = 12;
  const CurvatureSet c = estimate_curvature(model.module, index, data, params, compute, "m");
  bool any_difference = false;
  for (std::size_t i = 0; i < a.blocks.size(); ++i) {
    EXPECT_EQ(a.blocks[i].diagonal, b.blocks[i].diagonal) << a.blocks[i].name;
    any_difference = any_difference || a.blocks[i].diagonal != c.blocks[i].diagonal;
  }
  EXPECT_TRUE(any_difference);
}

// Note [Grouped convolutions under double backward]: the unfolded forward is the model's own up to float
// rounding, for a depthwise convolution, a grouped one with stride, padding and dilation (convs.pt: 16 -> 32
// channels in 4 groups, stride 2, padding 2, dilation 2) and a strided depthwise one (separable.pt, scripted and
// traced), and so is the Hutchinson diagonal differentiated through it, with the same probes.
TEST(Curvature, UnfoldedGroupedConvolutionsGiveTheModelsOutputsAndHessianDiagonal) {
  struct Case {
    const char *model, *calib;
  };
  const Case cases[] = {{"convs.pt", "convs_calib.pt"},
                        {"separable.pt", "separable_calib.pt"},
                        {"separable_traced.pt", "separable_calib.pt"}};  // aten::_convolution
  for (const Case& c : cases) {
    SCOPED_TRACE(c.model);
    LoadedModel model = load_model(fixture(c.model));
    model.module.eval();
    const DataFile data = DataFile::load(fixture(c.calib));
    const std::unique_ptr<UnfoldedConvForward> unfolded = UnfoldedConvForward::build(model.module);
    ASSERT_TRUE(unfolded);
    EXPECT_EQ(unfolded->unfolded(), 2);
    torch::NoGradGuard no_grad;
    const torch::Tensor own = model.module.forward(data.batch(0, 16, torch::kCPU)).toTensor();
    const torch::Tensor rewritten = (*unfolded)(model.module, data.batch(0, 16, torch::kCPU)).toTensor();
    ASSERT_EQ(own.sizes(), rewritten.sizes());
    EXPECT_LE((own - rewritten).abs().max().item<double>(), 1e-5 * own.abs().max().item<double>());
  }
  // On a GPU too (where `automatic` unfolds), with cuDNN's TF32 off: in TF32 the model's own convolutions round
  // to 10 mantissa bits, and the two forms differed by 1-3% (BENCHMARKS.md "Depthwise calibration").
  std::vector<torch::Device> devices = {torch::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(torch::kCUDA);
  const bool tf32 = at::globalContext().allowTF32CuDNN();
  at::globalContext().setAllowTF32CuDNN(false);
  for (const torch::Device& device : devices) {
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(c.model) + " on " + device.str());
      // A GPU sums in other orders (cuDNN's algorithms, parallel reductions): on the H200 the two forms' v.Hv
      // differed by up to 2.2e-4 per block on MobileNetV2 (relative L1, TF32 off), so 1e-3 there.
      const double tolerance = device.is_cpu() ? 1e-4 : 1e-3;
      LoadedModel model = load_model(fixture(c.model));
      const BlockIndex index = discover_blocks(model.module);
      const DataFile data = DataFile::load(fixture(c.calib));
      CurvatureParams params;
      params.probes = 4;
      Compute compute;
      compute.device = device;
      params.grouped_convs = CurvatureParams::GroupedConvs::keep;
      const CurvatureSet own = estimate_curvature(model.module, index, data, params, compute, c.model);
      params.grouped_convs = CurvatureParams::GroupedConvs::unfold;
      const CurvatureSet unfolded = estimate_curvature(model.module, index, data, params, compute, c.model);
      EXPECT_EQ(own.unfolded_convolutions, 0);
      EXPECT_EQ(unfolded.unfolded_convolutions, 2);
      ASSERT_EQ(own.blocks.size(), unfolded.blocks.size());
      for (std::size_t b = 0; b < own.blocks.size(); ++b) {
        const auto& x = own.blocks[b].diagonal;
        const auto& y = unfolded.blocks[b].diagonal;
        ASSERT_EQ(x.size(), y.size());
        double difference = 0.0, norm = 0.0;
        for (std::size_t i = 0; i < x.size(); ++i) {
          difference += (double(x[i]) - double(y[i])) * (double(x[i]) - double(y[i]));
          norm += double(x[i]) * double(x[i]);
        }
        EXPECT_GT(norm, 0.0) << own.blocks[b].name;
        EXPECT_LE(std::sqrt(difference), tolerance * std::sqrt(norm)) << own.blocks[b].name;
        EXPECT_NEAR(own.blocks[b].trace, unfolded.blocks[b].trace, tolerance * std::abs(own.blocks[b].trace));
      }
    }
  }
  at::globalContext().setAllowTF32CuDNN(tf32);
  // Nothing to unfold in a model without grouped convolutions.
  LoadedModel plain = load_model(fixture("quickstart_cnn.pt"));
  EXPECT_FALSE(UnfoldedConvForward::build(plain.module));
}

TEST(Curvature, CrossEntropyNeedsLabels) {
  LogReg f;
  CurvatureParams params;
  params.loss = "ce";
  EXPECT_THROW(estimate_curvature(f.model.module, f.index, f.data, params, Compute{}, "logreg.pt"), UserError);
}

TEST(PosteriorArtifact, ReusedForItsModelAndRefusedForAnother) {
  CalibrateOptions c;
  c.model = fixture("separable.pt");
  c.calib = fixture("separable_calib.pt");
  c.output = scratch("separable.bqp");
  c.curvature.probes = 2;
  run_calibrate(c);
  QuantizeOptions q;
  q.model = fixture("separable.pt");
  q.posterior = c.output;
  q.bits = {5.0};
  q.output = scratch("separable_from_posterior.pt");
  EXPECT_EQ(run_quantize(q).outputs.size(), 1u);
  q.model = fixture("convs.pt");
  try {
    run_quantize(q);
    FAIL() << "a posterior from another model must be refused";
  } catch (const UserError& e) {
    EXPECT_EQ(e.code(), ExitCode::input);
    EXPECT_NE(std::string(e.what()).find("another model"), std::string::npos) << e.what();
  }
}

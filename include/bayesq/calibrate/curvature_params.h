// Settings of the calibration stage (curvature.h), free of libtorch so that configuration values can hold them.
#pragma once

#include <cstdint>
#include <string>

namespace bayesq {

// hutchinson: diagonal of the loss Hessian from Rademacher probes and double backward; fisher: Monte-Carlo
// Fisher from labels sampled from the model, one backward per example (curvature.h gives the formulas).
enum class CurvatureEstimator { hutchinson, fisher };
inline const char* curvature_estimator_name(CurvatureEstimator e) {
  return e == CurvatureEstimator::fisher ? "fisher" : "hutchinson";
}

struct CurvatureParams {
  CurvatureEstimator estimator = CurvatureEstimator::hutchinson;
  std::string loss = "auto";  // auto | kl | ce | mse
  int64_t probes = 8;         // Hutchinson probes per batch
  // Hutchinson: 2-D grouped convolutions as im2col + matmul while differentiating twice (Note [Grouped
  // convolutions under double backward] in grouped_conv.h). automatic unfolds on a GPU, where the group loop of
  // libtorch's double backward is one kernel launch per channel; on a CPU that loop measured no slower.
  enum class GroupedConvs { automatic, unfold, keep } grouped_convs = GroupedConvs::automatic;
  bool unfold_on(bool cpu) const {
    return grouped_convs == GroupedConvs::unfold || (grouped_convs == GroupedConvs::automatic && !cpu);
  }
};

inline const char* grouped_convs_name(CurvatureParams::GroupedConvs g) {
  switch (g) {
    case CurvatureParams::GroupedConvs::unfold: return "unfold";
    case CurvatureParams::GroupedConvs::keep: return "keep";
    case CurvatureParams::GroupedConvs::automatic: break;
  }
  return "auto";
}

}  // namespace bayesq

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
};

}  // namespace bayesq

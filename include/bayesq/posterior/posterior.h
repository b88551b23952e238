// CurvatureStats -> BlockPosterior: the diagonal Laplace posterior of each block (METHOD.md §1).
//
// CurvatureStats holds d_i, an estimate of the diagonal of the Hessian of the *mean* calibration loss, with the
// estimator's own diagnostics. fit_posterior turns it into per-weight precisions
//   pi_i = N d_i + lambda_b,   lambda_b = damp * mean_i(N d_i),
// the prior precision playing the role of GPTQ's percdamp (Note [Why damping]: without it a weight with zero
// curvature would get infinite variance and a zero weight in every loss, so any code would do for it).
// A block whose curvature is all zero, non-finite, or unavailable (no gradient path) falls back to
// lambda_b = 1 and is flagged; it never makes the run fail.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace bayesq {

struct CurvatureStats {
  std::string name;
  std::vector<float> diagonal;       // d_i >= 0 (negative Hutchinson entries already clamped to 0)
  bool available = true;             // false: no gradient reaches this block (e.g. a fused inference operator)
  int64_t clamped_negative = 0;      // entries clamped from below zero
  int64_t non_finite = 0;            // NaN/Inf entries (replaced by 0)
  double trace = 0.0;                // estimate of sum_i d_i
  double trace_standard_error = 0.0; // standard error of that estimate across probes and batches
  int64_t trace_samples = 0;         // number of (batch, probe) estimates behind it
};

// The calibration stage's output for a whole model, plus the provenance a reused posterior must match.
struct CurvatureSet {
  std::vector<CurvatureStats> blocks;
  int64_t examples = 0;              // N
  std::string estimator;             // hutchinson | fisher | kfac
  std::string loss;                  // kl | ce | mse
  int64_t probes = 0;
  uint64_t seed = 0;
  std::string model_hash;            // of the model file
  std::string data_hash;             // of the calibration file
  std::string device;
  double seconds = 0.0;
  std::string notes;                 // e.g. an automatic switch of estimator
  int64_t unfolded_convolutions = 0;  // hutchinson: grouped convolutions unfolded for double backward (not saved)
  // A job of several processes: each rank's calibration examples and seconds before the exchange (empty for one).
  std::vector<int64_t> examples_per_rank;
  std::vector<double> seconds_per_rank;

  int find(const std::string& name) const;
};

struct PosteriorParams {
  double damp = 0.01;
};

struct BlockPosterior {
  std::string name;
  std::vector<float> precision;  // pi_i
  double prior_precision = 0.0;  // lambda_b
  bool fallback = false;
  std::string fallback_reason;
  double mean_precision = 0.0, min_precision = 0.0, max_precision = 0.0;
  int64_t clamped_negative = 0, non_finite = 0;
  double trace_standard_error = 0.0;
};

BlockPosterior fit_posterior(const CurvatureStats& curvature, int64_t examples, const PosteriorParams& params);

// Note [Data-free posterior]: without calibration data there is no curvature, only the weights. Every weight of a
// block gets the same precision pi = 1 / mean_i(w_i^2) (1 for an all-zero block), so a block's expected loss is
// its squared quantization error relative to its own weights' power, times its size: scale-free (a layer followed
// by batch norm loses nothing by being scaled) and comparable across blocks, which is what the allocator needs.
// Codebooks are then the weighted Lloyd / range-optimised designs of plain squared error.
BlockPosterior data_free_posterior(const std::string& name, const std::vector<float>& weights);

// The 1%, 10%, 50%, 90% and 99% quantiles of a block's precisions (nearest rank; empty input: empty result).
std::vector<double> precision_quantiles(const std::vector<float>& precision);

// Stats only (no per-weight arrays, but the precision quantiles): what reports carry.
void to_json(nlohmann::json& j, const CurvatureStats& c);
void to_json(nlohmann::json& j, const BlockPosterior& p);

// The posterior artifact (`bayesq calibrate -o file.bqp`): "BQP1", a little-endian uint64 header length, a JSON
// header (provenance and per-block stats, each with the offset of its float32 diagonal), then the raw arrays.
void save_curvature(const CurvatureSet& set, const std::string& path);
CurvatureSet load_curvature(const std::string& path);  // throws UserError(input) on a malformed file

}  // namespace bayesq

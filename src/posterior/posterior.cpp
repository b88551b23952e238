#include "bayesq/posterior/posterior.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "bayesq/common/atomic_file.h"
#include "bayesq/common/errors.h"

namespace bayesq {

int CurvatureSet::find(const std::string& name) const {
  for (std::size_t i = 0; i < blocks.size(); ++i)
    if (blocks[i].name == name) return static_cast<int>(i);
  return -1;
}

BlockPosterior fit_posterior(const CurvatureStats& curvature, int64_t examples, const PosteriorParams& params) {
  BlockPosterior post;
  post.name = curvature.name;
  post.clamped_negative = curvature.clamped_negative;
  post.non_finite = curvature.non_finite;
  post.trace_standard_error = curvature.trace_standard_error;
  const std::size_t n = curvature.diagonal.size();
  const double scale = static_cast<double>(std::max<int64_t>(examples, 1));

  double sum = 0.0;
  int64_t bad = curvature.non_finite;
  for (float d : curvature.diagonal) {
    if (!std::isfinite(d)) {
      ++bad;
      continue;
    }
    sum += scale * std::max(0.0f, d);
  }
  const double mean = n ? sum / double(n) : 0.0;

  if (!curvature.available) {
    post.fallback = true;
    post.fallback_reason = "no gradient path to this block (fused inference operator)";
  } else if (bad > 0) {
    post.fallback = true;
    post.fallback_reason = "non-finite curvature";
  } else if (!(mean > 0.0) || !std::isfinite(mean)) {
    post.fallback = true;
    post.fallback_reason = "all-zero curvature";
  }

  post.precision.resize(n);
  if (post.fallback) {
    // lambda_b = 1 and no data term: the block is weighted by plain squared error.
    post.prior_precision = 1.0;
    std::fill(post.precision.begin(), post.precision.end(), 1.0f);
  } else {
    post.prior_precision = params.damp * mean;
    for (std::size_t i = 0; i < n; ++i)
      post.precision[i] = static_cast<float>(scale * std::max(0.0f, curvature.diagonal[i]) + post.prior_precision);
  }
  if (n) {
    double total = 0.0;
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    for (float p : post.precision) {
      total += p;
      lo = std::min(lo, p);
      hi = std::max(hi, p);
    }
    post.mean_precision = total / double(n);
    post.min_precision = lo;
    post.max_precision = hi;
  }
  return post;
}

void to_json(nlohmann::json& j, const CurvatureStats& c) {
  j = nlohmann::json{{"name", c.name},
                     {"numel", c.diagonal.size()},
                     {"available", c.available},
                     {"clamped_negative", c.clamped_negative},
                     {"non_finite", c.non_finite},
                     {"trace", c.trace},
                     {"trace_standard_error", c.trace_standard_error},
                     {"trace_samples", c.trace_samples}};
}

std::vector<double> precision_quantiles(const std::vector<float>& precision) {
  std::vector<double> out;
  if (precision.empty()) return out;
  std::vector<float> sorted = precision;
  for (double q : {0.01, 0.10, 0.50, 0.90, 0.99}) {
    // Nearest rank: the smallest value with at least q of the values at or below it.
    const auto rank = static_cast<std::size_t>(std::ceil(q * double(sorted.size())));
    const std::size_t k = rank == 0 ? 0 : rank - 1;
    std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(k), sorted.end());
    out.push_back(sorted[k]);
  }
  return out;
}

void to_json(nlohmann::json& j, const BlockPosterior& p) {
  j = nlohmann::json{{"name", p.name},
                     {"prior_precision", p.prior_precision},
                     {"fallback", p.fallback},
                     {"mean_precision", p.mean_precision},
                     {"min_precision", p.min_precision},
                     {"max_precision", p.max_precision},
                     {"clamped_negative", p.clamped_negative},
                     {"non_finite", p.non_finite},
                     {"trace_standard_error", p.trace_standard_error},
                     {"precision_quantiles", precision_quantiles(p.precision)}};
  if (p.fallback) j["fallback_reason"] = p.fallback_reason;
}

namespace {
constexpr char kMagic[4] = {'B', 'Q', 'P', '1'};
}

BlockPosterior data_free_posterior(const std::string& name, const std::vector<float>& weights) {
  double energy = 0.0;
  for (float w : weights) energy += double(w) * double(w);
  const double pi = energy > 0.0 && std::isfinite(energy) ? 1.0 / energy : 1.0;
  BlockPosterior p;
  p.name = name;
  p.precision.assign(weights.size(), static_cast<float>(pi));
  p.prior_precision = pi;
  p.mean_precision = p.min_precision = p.max_precision = pi;
  return p;
}

void save_curvature(const CurvatureSet& set, const std::string& path) {
  // No wall-clock time here: the artifact must be byte-reproducible (times go to the report).
  nlohmann::json header{{"format", "bayesq-posterior"},  {"version", 1},
                        {"examples", set.examples},      {"estimator", set.estimator},
                        {"loss", set.loss},              {"probes", set.probes},
                        {"seed", set.seed},              {"model_hash", set.model_hash},
                        {"data_hash", set.data_hash},    {"device", set.device},
                        {"notes", set.notes}};
  nlohmann::json blocks = nlohmann::json::array();
  uint64_t offset = 0;
  for (const auto& b : set.blocks) {
    nlohmann::json entry = b;
    entry["offset"] = offset;
    offset += b.diagonal.size() * sizeof(float);
    blocks.push_back(entry);
  }
  header["blocks"] = blocks;
  const std::string text = header.dump();
  AtomicFile out(path);
  uint64_t length = text.size();
  out.write(kMagic, sizeof kMagic);
  out.write(&length, sizeof length);
  out.write(text.data(), text.size());
  for (const auto& b : set.blocks) out.write(b.diagonal.data(), b.diagonal.size() * sizeof(float));
  out.commit();
}

CurvatureSet load_curvature(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BQ_CHECK(in.good(), ExitCode::input, "cannot open posterior file: ", path);
  in.seekg(0, std::ios::end);
  const uint64_t file_bytes = static_cast<uint64_t>(std::max<std::streamoff>(0, in.tellg()));
  in.seekg(0);
  char magic[4] = {};
  uint64_t length = 0;
  in.read(magic, sizeof magic);
  in.read(reinterpret_cast<char*>(&length), sizeof length);
  const uint64_t data_start = sizeof kMagic + sizeof length;
  BQ_CHECK(in.good() && std::memcmp(magic, kMagic, sizeof kMagic) == 0, ExitCode::input,
           "not a bayesq posterior file (bad header): ", path);
  // Sizes from the file are checked against the file's length before anything is allocated.
  BQ_CHECK(length <= file_bytes - data_start, ExitCode::input, "truncated posterior file (header of ", length,
           " bytes in a file of ", file_bytes, "): ", path);
  std::string text(length, '\0');
  in.read(&text[0], static_cast<std::streamsize>(length));
  BQ_CHECK(in.good(), ExitCode::input, "truncated posterior file: ", path);
  const uint64_t arrays_start = data_start + length, array_bytes = file_bytes - arrays_start;
  try {
    const nlohmann::json header = nlohmann::json::parse(text);
    BQ_CHECK(header.is_object(), ExitCode::input, "malformed posterior file header (not an object): ", path);
    CurvatureSet set;
    set.examples = header.at("examples").get<int64_t>();
    set.estimator = header.at("estimator").get<std::string>();
    set.loss = header.at("loss").get<std::string>();
    set.probes = header.at("probes").get<int64_t>();
    set.seed = header.at("seed").get<uint64_t>();
    set.model_hash = header.at("model_hash").get<std::string>();
    set.data_hash = header.at("data_hash").get<std::string>();
    set.device = header.value("device", "");
    set.notes = header.value("notes", "");
    BQ_CHECK(set.examples > 0, ExitCode::input, "malformed posterior file header (examples ", set.examples, "): ",
             path);
    for (const auto& entry : header.at("blocks")) {
      CurvatureStats c;
      c.name = entry.at("name").get<std::string>();
      c.available = entry.at("available").get<bool>();
      c.clamped_negative = entry.at("clamped_negative").get<int64_t>();
      c.non_finite = entry.at("non_finite").get<int64_t>();
      c.trace = entry.at("trace").get<double>();
      c.trace_standard_error = entry.at("trace_standard_error").get<double>();
      c.trace_samples = entry.at("trace_samples").get<int64_t>();
      const nlohmann::json& numel_json = entry.at("numel");
      const nlohmann::json& offset_json = entry.at("offset");
      BQ_CHECK(numel_json.is_number_unsigned() && offset_json.is_number_unsigned(), ExitCode::input,
               "malformed posterior file header (block '", c.name, "': numel and offset must be non-negative "
               "integers): ", path);
      const uint64_t numel = numel_json.get<uint64_t>(), offset = offset_json.get<uint64_t>();
      BQ_CHECK(numel <= array_bytes / sizeof(float) && offset <= array_bytes - numel * sizeof(float),
               ExitCode::input, "truncated posterior file (block '", c.name, "' holds ", numel, " values at offset ",
               offset, ", past the file's ", array_bytes, " bytes of arrays): ", path);
      c.diagonal.resize(numel);
      in.seekg(static_cast<std::streamoff>(arrays_start + offset));
      in.read(reinterpret_cast<char*>(c.diagonal.data()), static_cast<std::streamsize>(numel * sizeof(float)));
      BQ_CHECK(in.good(), ExitCode::input, "truncated posterior file: ", path);
      set.blocks.push_back(std::move(c));
    }
    return set;
  } catch (const nlohmann::json::exception& e) {
    BQ_FAIL(ExitCode::input, "malformed posterior file header (", e.what(), "): ", path);
  }
}

}  // namespace bayesq

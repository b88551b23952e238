#include "bayesq/codebook/codebook.h"

#include <algorithm>
#include <cmath>

#include "bayesq/common/errors.h"
#include "bayesq/common/fp16.h"

namespace bayesq {

const char* codebook_kind_name(CodebookKind kind) {
  switch (kind) {
    case CodebookKind::lloyd: return "lloyd";
    case CodebookKind::uniform_asymmetric: return "uniform";
    case CodebookKind::uniform_symmetric: return "uniform-symmetric";
  }
  return "?";
}

CodebookKind codebook_kind_from_name(const std::string& name) {
  if (name == "lloyd") return CodebookKind::lloyd;
  if (name == "uniform" || name == "uniform-asymmetric") return CodebookKind::uniform_asymmetric;
  if (name == "uniform-symmetric") return CodebookKind::uniform_symmetric;
  BQ_FAIL(ExitCode::usage, "unknown codebook kind '", name, "' (expected lloyd, uniform or uniform-symmetric)");
}

int64_t codebook_metadata_bits(CodebookKind kind, int bits) {
  switch (kind) {
    case CodebookKind::lloyd: return 16 * (int64_t{1} << bits);
    case CodebookKind::uniform_asymmetric: return 32;
    case CodebookKind::uniform_symmetric: return 16;
  }
  return 0;
}

namespace {
void check_bits(int bits) { BQ_ASSERT(bits >= kMinBits && bits <= kMaxBits, "bits = ", bits); }

float clamp_to_half(double value) {
  return round_to_half(static_cast<float>(std::max(-double(kHalfMax), std::min(double(kHalfMax), value))));
}

void fill_boundaries(Codebook& cb) {
  cb.boundaries.resize(cb.levels.size() - 1);
  for (std::size_t k = 0; k + 1 < cb.levels.size(); ++k)
    cb.boundaries[k] = 0.5 * (double(cb.levels[k]) + double(cb.levels[k + 1]));
}
}  // namespace

Codebook Codebook::lloyd(int bits, const std::vector<double>& levels) {
  check_bits(bits);
  BQ_ASSERT(levels.size() == (std::size_t{1} << bits), "levels: ", levels.size());
  Codebook cb;
  cb.kind = CodebookKind::lloyd;
  cb.bits = bits;
  cb.levels.resize(levels.size());
  for (std::size_t k = 0; k < levels.size(); ++k) cb.levels[k] = clamp_to_half(levels[k]);
  std::sort(cb.levels.begin(), cb.levels.end());
  fill_boundaries(cb);
  return cb;
}

Codebook Codebook::from_table(int bits, const std::vector<double>& table) {
  check_bits(bits);
  BQ_ASSERT(table.size() == (std::size_t{1} << bits), "table: ", table.size());
  Codebook cb;
  cb.kind = CodebookKind::lloyd;
  cb.bits = bits;
  cb.levels.resize(table.size());
  for (std::size_t k = 0; k < table.size(); ++k) cb.levels[k] = clamp_to_half(table[k]);
  if (std::is_sorted(cb.levels.begin(), cb.levels.end())) fill_boundaries(cb);
  return cb;
}

Codebook Codebook::uniform_asymmetric(int bits, double scale, double offset) {
  check_bits(bits);
  Codebook cb;
  cb.kind = CodebookKind::uniform_asymmetric;
  cb.bits = bits;
  cb.scale = clamp_to_half(std::max(0.0, scale));
  cb.offset = clamp_to_half(offset);
  const int count = 1 << bits;
  cb.levels.resize(static_cast<std::size_t>(count));
  // float32, multiply then add: the order the exported graph uses.
  for (int k = 0; k < count; ++k) cb.levels[static_cast<std::size_t>(k)] = static_cast<float>(k) * cb.scale + cb.offset;
  fill_boundaries(cb);
  return cb;
}

Codebook Codebook::uniform_symmetric(int bits, double scale) {
  check_bits(bits);
  Codebook cb;
  cb.kind = CodebookKind::uniform_symmetric;
  cb.bits = bits;
  cb.scale = clamp_to_half(std::max(0.0, scale));
  const int count = 1 << bits;
  const float half_span = 0.5f * static_cast<float>(count - 1);  // exact: a half-integer below 128
  cb.levels.resize(static_cast<std::size_t>(count));
  for (int k = 0; k < count; ++k)
    cb.levels[static_cast<std::size_t>(k)] = (static_cast<float>(k) - half_span) * cb.scale;
  fill_boundaries(cb);
  return cb;
}

int Codebook::encode(double value) const {
  BQ_ASSERT(can_encode(), "encode on a table whose levels are out of order");
  // Number of boundaries strictly below the value: ties go to the lower level.
  return static_cast<int>(std::lower_bound(boundaries.begin(), boundaries.end(), value) - boundaries.begin());
}

}  // namespace bayesq

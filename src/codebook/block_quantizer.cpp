#include "bayesq/codebook/block_quantizer.h"

#include <algorithm>

#include "bayesq/codebook/bit_packing.h"
#include "bayesq/codebook/expected_loss.h"
#include "bayesq/common/errors.h"
#include "bayesq/common/parallel.h"

namespace bayesq {

int64_t effective_group_size(int64_t cols, int64_t group_size) {
  return (group_size <= 0 || group_size >= cols) ? cols : group_size;
}

int64_t groups_per_row(int64_t cols, int64_t group_size) {
  const int64_t g = effective_group_size(cols, group_size);
  return g > 0 ? (cols + g - 1) / g : 0;
}

BlockCost block_cost(int64_t rows, int64_t cols, int bits, CodebookKind kind, int64_t group_size) {
  BlockCost cost;
  cost.code_bits = 8 * packed_code_bytes(rows * cols, bits);
  cost.metadata_bits = rows * groups_per_row(cols, group_size) * codebook_metadata_bits(kind, bits);
  return cost;
}

const Codebook& UniformDesigns::get(const WeightedRow& row, int bits, const UniformParams& params) {
  const std::size_t b = static_cast<std::size_t>(bits);
  if (!done[b]) {
    codebook[b] = design_uniform(row, bits, CodebookKind::uniform_asymmetric, params, &stats[b]);
    done[b] = true;
  }
  return codebook[b];
}

Codebook design_codebook(const WeightedRow& row, int bits, const QuantizerParams& params, DesignStats* stats,
                         UniformDesigns* shared) {
  Codebook cb;
  if (params.kind == CodebookKind::lloyd) {
    cb = design_lloyd(row, bits, params.lloyd, params.uniform, stats,
                      shared ? &shared->get(row, bits, params.uniform) : nullptr);
  } else if (params.kind == CodebookKind::uniform_asymmetric && shared) {
    cb = shared->get(row, bits, params.uniform);
    if (stats) *stats = shared->stats[static_cast<std::size_t>(bits)];
  } else {
    cb = design_uniform(row, bits, params.kind, params.uniform, stats);
  }
  if (params.level_scale == LevelScale::gain || params.level_scale == LevelScale::energy) {
    cb = rescale_levels(cb, row, params.level_scale);
    if (stats) stats->loss = expected_loss(cb, row);
  }
  return cb;
}

DesignedLoss design_and_score(const WeightedRow& row, int bits, const QuantizerParams& params) {
  DesignStats stats;
  const Codebook cb = design_codebook(row, bits, params, &stats);
  DesignedLoss out;
  out.expected = stats.loss;
  out.plugin = row.tau > 0.0 ? plugin_loss(cb, row) : stats.loss;
  out.fell_back = stats.fell_back_to_uniform;
  return out;
}

namespace {

// Shared driver: one codebook per (row, group), designed by `design`, codes by nearest level.
template <typename Design>
QuantizedBlock quantize_with(const BlockWeights& block, int bits, CodebookKind kind, int64_t group_size, double tau,
                             Design&& design) {
  BQ_ASSERT(bits >= kMinBits && bits <= kMaxBits, "bits = ", bits);
  QuantizedBlock qb;
  qb.bits = bits;
  qb.kind = kind;
  qb.rows = block.rows;
  qb.cols = block.cols;
  qb.group_size = effective_group_size(block.cols, group_size);
  const int64_t groups = groups_per_row(block.cols, group_size);
  const std::size_t tasks = static_cast<std::size_t>(block.rows * groups);
  qb.codebooks.resize(tasks);
  qb.codes.resize(static_cast<std::size_t>(block.rows * block.cols));
  std::vector<double> expected(tasks, 0.0), plugin(tasks, 0.0);
  std::vector<char> fell_back(tasks, 0);
  parallel_for(tasks, [&](std::size_t t) {
    const int64_t r = static_cast<int64_t>(t) / groups;
    const int64_t c0 = (static_cast<int64_t>(t) % groups) * qb.group_size;
    const int64_t len = std::min(qb.group_size, block.cols - c0);
    const int64_t base = r * block.cols + c0;
    const WeightedRow row = WeightedRow::build(block.weights + base, block.precision ? block.precision + base : nullptr,
                                               static_cast<std::size_t>(len), tau);
    DesignStats stats;
    qb.codebooks[t] = design(row, &stats);
    const Codebook& cb = qb.codebooks[t];
    for (int64_t e = 0; e < len; ++e)
      qb.codes[static_cast<std::size_t>(base + e)] = static_cast<uint8_t>(cb.encode(block.weights[base + e]));
    expected[t] = stats.loss;
    plugin[t] = tau > 0.0 ? plugin_loss(cb, row) : stats.loss;
    fell_back[t] = stats.fell_back_to_uniform ? 1 : 0;
  });
  for (std::size_t t = 0; t < tasks; ++t) {
    qb.expected_loss += expected[t];
    qb.plugin_loss += plugin[t];
    qb.lloyd_fallbacks += fell_back[t];
  }
  return qb;
}

}  // namespace

std::vector<QuantizedBlock> quantize_block_options(const BlockWeights& block,
                                                   const std::vector<std::pair<int, CodebookKind>>& options,
                                                   const QuantizerParams& params) {
  const int64_t group = effective_group_size(block.cols, params.group_size);
  const int64_t groups = groups_per_row(block.cols, params.group_size);
  const std::size_t tasks = static_cast<std::size_t>(block.rows * groups);
  std::vector<QuantizedBlock> out(options.size());
  for (std::size_t o = 0; o < options.size(); ++o) {
    BQ_ASSERT(options[o].first >= kMinBits && options[o].first <= kMaxBits, "bits = ", options[o].first);
    QuantizedBlock& qb = out[o];
    qb.bits = options[o].first;
    qb.kind = options[o].second;
    qb.rows = block.rows;
    qb.cols = block.cols;
    qb.group_size = group;
    qb.codebooks.resize(tasks);
    qb.codes.resize(static_cast<std::size_t>(block.rows * block.cols));
  }
  // Per task and option, summed in task order afterwards (as quantize_with does): thread-count independent.
  std::vector<double> expected(tasks * options.size()), plugin(tasks * options.size());
  std::vector<char> fell_back(tasks * options.size());
  parallel_for(tasks, [&](std::size_t t) {
    const int64_t r = static_cast<int64_t>(t) / groups;
    const int64_t c0 = (static_cast<int64_t>(t) % groups) * group;
    const int64_t len = std::min(group, block.cols - c0);
    const int64_t base = r * block.cols + c0;
    std::vector<std::size_t> sorted_from;
    const WeightedRow row = WeightedRow::build(block.weights + base, block.precision ? block.precision + base : nullptr,
                                               static_cast<std::size_t>(len), params.tau, &sorted_from);
    UniformDesigns shared;
    QuantizerParams p = params;
    for (std::size_t o = 0; o < options.size(); ++o) {
      p.kind = options[o].second;
      DesignStats stats;
      QuantizedBlock& qb = out[o];
      qb.codebooks[t] = design_codebook(row, qb.bits, p, &stats, &shared);
      const Codebook& cb = qb.codebooks[t];
      // Codebook::encode of every weight, as one walk of the sorted weights beside the ascending cell ends: the
      // code of mu[k] is the number of cell ends below it.
      BQ_ASSERT(cb.can_encode(), "a designed codebook that cannot encode");
      const std::vector<double>& ends = cb.boundaries;
      std::size_t code = 0;
      for (std::size_t k = 0; k < row.size(); ++k) {
        while (code < ends.size() && ends[code] < row.mu[k]) ++code;
        qb.codes[static_cast<std::size_t>(base) + sorted_from[k]] = static_cast<uint8_t>(code);
      }
      const std::size_t slot = o * tasks + t;
      expected[slot] = stats.loss;
      plugin[slot] = params.tau > 0.0 ? plugin_loss(cb, row) : stats.loss;
      fell_back[slot] = stats.fell_back_to_uniform ? 1 : 0;
    }
  });
  for (std::size_t o = 0; o < options.size(); ++o)
    for (std::size_t t = 0; t < tasks; ++t) {
      out[o].expected_loss += expected[o * tasks + t];
      out[o].plugin_loss += plugin[o * tasks + t];
      out[o].lloyd_fallbacks += fell_back[o * tasks + t];
    }
  return out;
}

QuantizedBlock quantize_block(const BlockWeights& block, int bits, const QuantizerParams& params) {
  return quantize_with(block, bits, params.kind, params.group_size, params.tau,
                       [&](const WeightedRow& row, DesignStats* stats) { return design_codebook(row, bits, params, stats); });
}

namespace {
// The min-max grid of a row or group whose smallest and largest weights are lo and hi (RTN's, the prefilter's).
Codebook minmax_codebook(int bits, double lo, double hi) {
  return Codebook::uniform_asymmetric(bits, (hi - lo) / double((1 << bits) - 1), lo);
}
}  // namespace

QuantizedBlock quantize_block_rtn(const BlockWeights& block, int bits, int64_t group_size) {
  return quantize_with(block, bits, CodebookKind::uniform_asymmetric, group_size, 0.0,
                       [&](const WeightedRow& row, DesignStats* stats) {
                         const double lo = row.size() ? row.min() : 0.0, hi = row.size() ? row.max() : 0.0;
                         Codebook cb = minmax_codebook(bits, lo, hi);
                         stats->loss = expected_loss(cb, row);
                         return cb;
                       });
}

std::vector<std::vector<Codebook>> minmax_codebooks(const BlockWeights& block, const std::vector<int>& bits,
                                                    int64_t group_size) {
  for (int b : bits) BQ_ASSERT(b >= kMinBits && b <= kMaxBits, "bits = ", b);
  const int64_t group = effective_group_size(block.cols, group_size);
  const int64_t groups = groups_per_row(block.cols, group_size);
  const std::size_t tasks = static_cast<std::size_t>(block.rows * groups);
  std::vector<std::vector<Codebook>> out(bits.size(), std::vector<Codebook>(tasks));
  parallel_for(tasks, [&](std::size_t t) {
    const int64_t r = static_cast<int64_t>(t) / groups;
    const int64_t c0 = (static_cast<int64_t>(t) % groups) * group;
    const int64_t len = std::min(group, block.cols - c0);
    const float* w = block.weights + r * block.cols + c0;
    // quantize_block_rtn reads these ends off the stably sorted row: its first and last element, so among equal
    // values (0.0 and -0.0) the first smallest and the last largest, widened to double.
    float first_min = len ? w[0] : 0.0f, last_max = len ? w[0] : 0.0f;
    for (int64_t e = 1; e < len; ++e) {
      if (w[e] < first_min) first_min = w[e];
      if (!(w[e] < last_max)) last_max = w[e];
    }
    const double lo = double(first_min), hi = double(last_max);
    for (std::size_t k = 0; k < bits.size(); ++k) out[k][t] = minmax_codebook(bits[k], lo, hi);
  });
  return out;
}

int64_t max_distinct_per_group(const BlockWeights& weights, int64_t group_size, int64_t cap) {
  BQ_ASSERT(cap >= 0, "cap = ", cap);
  const int64_t group = effective_group_size(weights.cols, group_size);
  const int64_t groups = groups_per_row(weights.cols, group_size);
  const std::size_t tasks = static_cast<std::size_t>(weights.rows * groups);
  std::vector<int64_t> distinct(tasks, 0);
  parallel_for(tasks, [&](std::size_t t) {
    const int64_t r = static_cast<int64_t>(t) / groups;
    const int64_t c0 = (static_cast<int64_t>(t) % groups) * group;
    const int64_t len = std::min(group, weights.cols - c0);
    const float* w = weights.weights + r * weights.cols + c0;
    auto count = [](std::vector<float>& v) {  // distinct values (0.0 and -0.0 are one: a level holds both)
      std::sort(v.begin(), v.end());
      int64_t n = v.empty() ? 0 : 1;
      for (std::size_t i = 1; i < v.size(); ++i) n += v[i] != v[i - 1] ? 1 : 0;
      return n;
    };
    // The first cap + 1 weights decide it for almost every float row (all distinct): a sort of the whole group
    // only where those hold a repeat.
    std::vector<float> head(w, w + std::min(len, cap + 1));
    int64_t n = count(head);
    if (n <= cap && len > cap + 1) {
      std::vector<float> all(w, w + len);
      n = count(all);
    }
    distinct[t] = std::min(n, cap + 1);
  });
  int64_t most = 0;
  for (int64_t n : distinct) most = std::max(most, n);
  return most;
}

void write_block(ByteWriter& out, const QuantizedBlock& block) {
  out.put<int32_t>(block.bits);
  out.put<int32_t>(static_cast<int32_t>(block.kind));
  out.put<int64_t>(block.rows);
  out.put<int64_t>(block.cols);
  out.put<int64_t>(block.group_size);
  out.put<uint64_t>(block.codebooks.size());
  for (const Codebook& c : block.codebooks) {
    out.put<int32_t>(static_cast<int32_t>(c.kind));
    out.put<int32_t>(c.bits);
    out.put<float>(c.scale);
    out.put<float>(c.offset);
    out.put_vector(c.levels);
    out.put_vector(c.boundaries);
  }
  out.put_vector(block.codes);
  out.put<double>(block.expected_loss);
  out.put<double>(block.plugin_loss);
  out.put<int32_t>(block.lloyd_fallbacks);
}

QuantizedBlock read_block(ByteReader& in) {
  QuantizedBlock block;
  block.bits = in.get<int32_t>();
  block.kind = static_cast<CodebookKind>(in.get<int32_t>());
  block.rows = in.get<int64_t>();
  block.cols = in.get<int64_t>();
  block.group_size = in.get<int64_t>();
  const uint64_t codebooks = in.get<uint64_t>();
  BQ_ASSERT(codebooks <= static_cast<uint64_t>(std::max<int64_t>(block.rows, 0)) *
                             static_cast<uint64_t>(std::max<int64_t>(block.cols, 1)),
            codebooks, " codebooks for a block of ", block.rows, " x ", block.cols);
  block.codebooks.resize(static_cast<std::size_t>(codebooks));
  for (Codebook& c : block.codebooks) {
    c.kind = static_cast<CodebookKind>(in.get<int32_t>());
    c.bits = in.get<int32_t>();
    c.scale = in.get<float>();
    c.offset = in.get<float>();
    c.levels = in.get_vector<float>();
    c.boundaries = in.get_vector<double>();
  }
  block.codes = in.get_vector<uint8_t>();
  block.expected_loss = in.get<double>();
  block.plugin_loss = in.get<double>();
  block.lloyd_fallbacks = in.get<int32_t>();
  BQ_ASSERT(static_cast<int64_t>(block.codes.size()) == block.rows * block.cols, "codes of a ", block.rows, " x ",
            block.cols, " block: ", block.codes.size());
  return block;
}

std::vector<float> QuantizedBlock::dequantize() const {
  // codebook_for(r, c).decode(code) for every weight, walked by row and group: the measured table decodes every
  // option of every block (330 M weights for ResNet-50), and two integer divisions per weight were most of it.
  std::vector<float> out(codes.size());
  if (rows <= 0 || cols <= 0) return out;
  const int64_t groups = static_cast<int64_t>(codebooks.size()) / rows;
  BQ_ASSERT(groups * rows == static_cast<int64_t>(codebooks.size()) && group_size > 0 &&
                groups_per_row(cols, group_size) == groups,
            codebooks.size(), " codebooks for ", rows, " rows of ", cols, " in groups of ", group_size);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const float* levels = codebooks[static_cast<std::size_t>(r * groups + g)].levels.data();
      const int64_t begin = r * cols + g * group_size, end = r * cols + std::min(cols, (g + 1) * group_size);
      for (int64_t i = begin; i < end; ++i) out[static_cast<std::size_t>(i)] = levels[codes[static_cast<std::size_t>(i)]];
    }
  return out;
}

}  // namespace bayesq

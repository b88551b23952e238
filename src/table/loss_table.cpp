#include "bayesq/table/loss_table.h"

#include <chrono>
#include <cmath>

#include "bayesq/codebook/expected_loss.h"
#include "bayesq/common/errors.h"
#include "bayesq/common/parallel.h"
#include "bayesq/common/progress.h"

namespace bayesq {

int LossTable::find(const std::string& name) const {
  for (std::size_t i = 0; i < blocks.size(); ++i)
    if (blocks[i].name == name) return static_cast<int>(i);
  return -1;
}

LossTable build_loss_table(const std::vector<BlockTableInput>& blocks, const LossTableParams& params) {
  const auto start = std::chrono::steady_clock::now();
  for (int bits : params.candidates)
    BQ_CHECK(bits >= kMinBits && bits <= kMaxBits, ExitCode::usage, "candidate bit-width ", bits,
             " is outside ", kMinBits, "..", kMaxBits);
  BQ_CHECK(!params.candidates.empty() && !params.kinds.empty(), ExitCode::usage, "no candidate bit-widths");

  const std::size_t options = params.candidates.size() * params.kinds.size();
  // Work items: one per (block, row, group).
  struct Item {
    std::size_t block;
    int64_t row, col0, len;
  };
  std::vector<Item> items;
  std::vector<std::size_t> first_item(blocks.size() + 1, 0);
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    first_item[b] = items.size();
    const auto& w = blocks[b].weights;
    const int64_t g = effective_group_size(w.cols, params.quantizer.group_size);
    for (int64_t r = 0; r < w.rows; ++r)
      for (int64_t c0 = 0; c0 < w.cols; c0 += g) items.push_back({b, r, c0, std::min(g, w.cols - c0)});
  }
  first_item[blocks.size()] = items.size();

  std::vector<DesignedLoss> results(items.size() * options);
  Progress progress("codebook design", static_cast<int64_t>(items.size()), "rows");
  parallel_for(items.size(), [&](std::size_t i) {
    ProgressStep step(progress);
    const Item& it = items[i];
    const auto& w = blocks[it.block].weights;
    const int64_t base = it.row * w.cols + it.col0;
    const WeightedRow row = WeightedRow::build(w.weights + base, w.precision ? w.precision + base : nullptr,
                                               static_cast<std::size_t>(it.len), params.quantizer.tau);
    const QuantizerParams& qp = params.quantizer;
    UniformDesigns shared;
    for (std::size_t c = 0; c < params.candidates.size(); ++c) {
      const int bits = params.candidates[c];
      for (std::size_t k = 0; k < params.kinds.size(); ++k) {
        DesignedLoss& out = results[i * options + k * params.candidates.size() + c];
        DesignStats stats;
        QuantizerParams kind_params = qp;
        kind_params.kind = params.kinds[k];
        // One asymmetric uniform design per bit-width serves both the uniform option and Lloyd's safeguard; the
        // table scores the (scaled) codebook that will be used.
        const Codebook cb = design_codebook(row, bits, kind_params, &stats, &shared);
        out.expected = stats.loss;
        out.plugin = row.tau > 0.0 ? plugin_loss(cb, row) : stats.loss;
        out.fell_back = stats.fell_back_to_uniform;
      }
    }
  });

  LossTable table;
  table.tau = params.quantizer.tau;
  table.group_size = params.quantizer.group_size;
  table.blocks.resize(blocks.size());
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    BlockLosses& out = table.blocks[b];
    const auto& w = blocks[b].weights;
    out.name = blocks[b].name;
    out.rows = w.rows;
    out.cols = w.cols;
    std::size_t o = 0;
    for (CodebookKind kind : params.kinds) {
      for (int bits : params.candidates) {
        LossEntry e;
        e.bits = bits;
        e.kind = kind;
        e.cost = block_cost(w.rows, w.cols, bits, kind, params.quantizer.group_size);
        for (std::size_t i = first_item[b]; i < first_item[b + 1]; ++i) {
          const DesignedLoss& r = results[i * options + o];
          e.expected_loss += r.expected;
          e.plugin_loss += r.plugin;
          e.lloyd_fallbacks += r.fell_back ? 1 : 0;
        }
        out.entries.push_back(e);
        ++o;
      }
    }
    // Monotonicity per kind, in ascending bits.
    for (std::size_t k = 0; k < params.kinds.size(); ++k) {
      const std::size_t base = k * params.candidates.size();
      for (std::size_t a = 0; a < params.candidates.size(); ++a)
        for (std::size_t c = 0; c < params.candidates.size(); ++c)
          if (params.candidates[a] < params.candidates[c] &&
              out.entries[base + c].expected_loss > out.entries[base + a].expected_loss)
            out.monotone = false;
    }
  }
  table.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return table;
}

void to_json(nlohmann::json& j, const LossEntry& e) {
  j = nlohmann::json{{"bits", e.bits},
                     {"kind", codebook_kind_name(e.kind)},
                     {"expected_loss", e.expected_loss},
                     {"plugin_loss", e.plugin_loss},
                     {"code_bits", e.cost.code_bits},
                     {"metadata_bits", e.cost.metadata_bits},
                     {"lloyd_fallbacks", e.lloyd_fallbacks}};
  if (!e.measured) j["measured"] = false;
  if (std::isfinite(e.predicted_loss)) j["predicted_loss"] = e.predicted_loss;
}

void from_json(const nlohmann::json& j, LossEntry& e) {
  e.bits = j.at("bits").get<int>();
  e.kind = codebook_kind_from_name(j.at("kind").get<std::string>());
  e.expected_loss = j.at("expected_loss").get<double>();
  e.plugin_loss = j.at("plugin_loss").get<double>();
  e.cost.code_bits = j.at("code_bits").get<int64_t>();
  e.cost.metadata_bits = j.at("metadata_bits").get<int64_t>();
  e.lloyd_fallbacks = j.value("lloyd_fallbacks", int64_t{0});
  e.measured = j.value("measured", true);
  e.predicted_loss = j.contains("predicted_loss") ? j.at("predicted_loss").get<double>()
                                                  : std::numeric_limits<double>::quiet_NaN();
}

void to_json(nlohmann::json& j, const BlockLosses& b) {
  j = nlohmann::json{{"name", b.name}, {"rows", b.rows}, {"cols", b.cols}, {"monotone", b.monotone},
                     {"entries", b.entries}};
  if (b.prefilter) j["prefilter"] = true;
}

void from_json(const nlohmann::json& j, BlockLosses& b) {
  b.name = j.at("name").get<std::string>();
  b.rows = j.at("rows").get<int64_t>();
  b.cols = j.at("cols").get<int64_t>();
  b.monotone = j.at("monotone").get<bool>();
  b.entries = j.at("entries").get<std::vector<LossEntry>>();
  b.prefilter = j.value("prefilter", false);
}

void to_json(nlohmann::json& j, const LossTable& t) {
  j = nlohmann::json{{"tau", t.tau}, {"group_size", t.group_size}, {"seconds", t.seconds}, {"blocks", t.blocks}};
  if (t.cached_prefix_blocks > 0) {
    j["cached_prefix_blocks"] = t.cached_prefix_blocks;
    j["cached_prefix_share"] = t.cached_prefix_share;
  }
  if (t.replayed_forwards) j["replayed_forwards"] = true;
}

void from_json(const nlohmann::json& j, LossTable& t) {
  t.tau = j.at("tau").get<double>();
  t.group_size = j.at("group_size").get<int64_t>();
  t.seconds = j.value("seconds", 0.0);
  t.cached_prefix_blocks = j.value("cached_prefix_blocks", int64_t{0});
  t.cached_prefix_share = j.value("cached_prefix_share", 0.0);
  t.replayed_forwards = j.value("replayed_forwards", false);
  t.blocks = j.at("blocks").get<std::vector<BlockLosses>>();
}

}  // namespace bayesq

#include "bayesq/pipeline/quantize_model.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <regex>

#include "bayesq/common/bytes.h"
#include "bayesq/common/errors.h"
#include "bayesq/common/parallel.h"
#include "bayesq/common/progress.h"
#include "bayesq/common/timer.h"
#include "bayesq/distill/distill.h"
#include "bayesq/eval/evaluate.h"
#include "bayesq/gptq/design_queue.h"
#include "bayesq/gptq/kfac.h"
#include "bayesq/gptq/model_gptq.h"
#include "bayesq/measure/joint_allocation.h"
#include "bayesq/measure/kl_forward.h"
#include "bayesq/measure/measured_table.h"
#include "bayesq/pipeline/memory.h"
#include "bayesq/table/hawq_table.h"
#include "bayesq/table/option_prefilter.h"

namespace bayesq {

namespace {

// Blocks whose names match a --keep-fp pattern (for the whole-bit methods; allocate() applies the same rule).
std::vector<bool> kept_fp(const BlockIndex& index, const std::vector<std::string>& patterns) {
  std::vector<bool> kept(index.blocks.size(), false);
  for (const auto& pattern : patterns) {
    std::regex re;
    try {
      re = std::regex(pattern);
    } catch (const std::regex_error& e) {
      BQ_FAIL(ExitCode::usage, "invalid regular expression '", pattern, "': ", e.what());
    }
    for (std::size_t b = 0; b < kept.size(); ++b)
      if (std::regex_search(index.blocks[b].name, re)) kept[b] = true;
  }
  return kept;
}

// Options and costs of every block, no losses yet.
LossTable unscored_table(const BlockIndex& index, const MethodConfig& config) {
  LossTable table;
  table.tau = config.table.quantizer.tau;
  table.group_size = config.table.quantizer.group_size;
  for (const BlockInfo& info : index.blocks) {
    BlockLosses losses;
    losses.name = info.name;
    losses.rows = info.rows();
    losses.cols = info.cols();
    for (CodebookKind kind : config.table.kinds)
      for (int bits : config.table.candidates) {
        LossEntry e;
        e.bits = bits;
        e.kind = kind;
        e.cost = block_cost(info.rows(), info.cols(), bits, kind, config.table.quantizer.group_size);
        losses.entries.push_back(e);
      }
    table.blocks.push_back(std::move(losses));
  }
  return table;
}

// The (bits, kind) of each entry of a block, or of the entries of block b that `selected` names.
std::vector<std::pair<int, CodebookKind>> entry_choices(const BlockLosses& losses,
                                                        const std::vector<std::vector<bool>>* selected = nullptr,
                                                        std::size_t b = 0) {
  std::vector<std::pair<int, CodebookKind>> choices;
  for (std::size_t e = 0; e < losses.entries.size(); ++e)
    if (!selected || (*selected)[b][e]) choices.emplace_back(losses.entries[e].bits, losses.entries[e].kind);
  return choices;
}

// Note [fp16 range]: code tables and uniform scales and offsets are stored in fp16 (largest finite value 65504). A
// uniform grid's scale and offset reach up to the weights' range, 2 max|w|, so blocks are quantized only while
// max|w| <= 65504 / 2; beyond that the stored tables would overflow to infinity.
constexpr double kMaxQuantizableWeight = 65504.0 / 2.0;

void check_whole_bits(const MethodConfig& config, double bits) {
  BQ_CHECK(bits == std::floor(bits) && bits >= 2 && bits <= 8, ExitCode::usage, "--bits ", bits, ": ",
           method_name(config.method), " uses one bit-width for every block, a whole number from 2 to 8");
}

}  // namespace

std::vector<const QuantizedBlock*> QuantizedModel::slots() const {
  std::vector<const QuantizedBlock*> out(blocks.size(), nullptr);
  for (std::size_t b = 0; b < blocks.size(); ++b)
    if (present[b]) out[b] = &blocks[b];
  return out;
}

void add_kfac_times(Session& session, const KfacOptionTimes& times, double design_wait = 0.0) {
  const nlohmann::json& t = session.timings();
  session.add_time("kfac_codebook_design", t.value("kfac_codebook_design", 0.0) + times.design_seconds);
  session.add_time("kfac_error_feedback", t.value("kfac_error_feedback", 0.0) + times.feedback_seconds);
  if (design_wait > 0.0)
    session.add_time("kfac_design_wait", t.value("kfac_design_wait", 0.0) + design_wait);
}

std::vector<QuantizedBlock> option_blocks(Session& session, const MethodConfig& config, std::size_t b,
                                          const std::vector<std::pair<int, CodebookKind>>& choices) {
  std::vector<QuantizedBlock> out;
  QuantizerParams qp = config.table.quantizer;
  qp.level_scale = effective_level_scale(config, session.index());  // `auto` settles on the model
  switch (config.variant().table) {
    case TableKind::hawq_trace:
      for (std::size_t i = 0; i < choices.size(); ++i)
        out.push_back(quantize_block_rtn(session.weights(b), choices[i].first, qp.group_size));
      return out;
    case TableKind::posterior: {
      return quantize_block_options(session.weights(b, &session.posterior_rows(config)[b]), choices, qp);
    }
    case TableKind::kfac: {
      const LayerStats& stats = session.kfac_stats()[b];
      const BlockWeights w = session.weights(b, &session.kfac_precision(config.posterior.damp)[b]);
      KfacOptionTimes times;
      out = kfac_option_blocks(w, session.index().blocks[b], stats, choices, qp, config.gptq,
                               session.compute().device, &times);
      add_kfac_times(session, times);
      return out;
    }
    case TableKind::none: break;
  }
  BQ_ASSERT(false, method_name(config.method), " quantizes no block options");
}

QuantizedBlock option_block(Session& session, const MethodConfig& config, std::size_t block, int bits,
                            CodebookKind kind) {
  if (config.table_loss == TableLoss::measured)
    if (const QuantizedBlock* kept = session.kept_option(table_key(config).dump(), block, bits, kind)) return *kept;
  return std::move(option_blocks(session, config, block, {{bits, kind}}).front());
}

// Every process's measured blocks, on every process: the table entries and the quantized options the joint
// refinement and the final pass take (Session::keep_options), so that each process continues with the table and
// blocks one process alone would have. The report gets each rank's share.
void gather_table(Session& session, const std::vector<int>& owner, const std::string& key, double seconds,
                  LossTable& table, const std::vector<std::vector<bool>>* selected) {
  const World& world = session.world();
  auto sent = [&](std::size_t b, std::size_t e) { return !selected || (*selected)[b][e]; };
  ByteWriter out;
  for (std::size_t b = 0; b < owner.size(); ++b) {
    if (owner[b] != world.rank()) continue;
    const BlockLosses& losses = table.blocks[b];
    out.put<uint64_t>(b);
    out.put<uint8_t>(losses.monotone ? 1 : 0);
    out.put<uint64_t>(losses.entries.size());
    for (std::size_t i = 0; i < losses.entries.size(); ++i) {
      const LossEntry& e = losses.entries[i];
      out.put<uint8_t>(sent(b, i) ? 1 : 0);  // this call's entries (Note [Option prefilter]: a budget's own)
      if (!sent(b, i)) continue;
      out.put<double>(e.expected_loss);
      out.put<double>(e.plugin_loss);
      out.put<int64_t>(e.lloyd_fallbacks);
      const QuantizedBlock* kept = session.kept_option(key, b, e.bits, e.kind);
      out.put<uint8_t>(kept ? 1 : 0);  // none past the session's bound: quantized again where used
      if (kept) write_block(out, *kept);
    }
  }
  const std::vector<std::vector<uint8_t>> all = world.all_gather_bytes(out.bytes());
  for (int r = 0; r < world.size(); ++r) {
    if (r == world.rank()) continue;
    ByteReader in(all[static_cast<std::size_t>(r)]);
    while (!in.done()) {
      const std::size_t b = static_cast<std::size_t>(in.get<uint64_t>());
      BQ_ASSERT(b < owner.size() && owner[b] == r, "rank ", r, " sent block ", b, ", which is not its own");
      BlockLosses& losses = table.blocks[b];
      losses.monotone = in.get<uint8_t>() != 0;
      BQ_ASSERT(in.get<uint64_t>() == losses.entries.size(), "rank ", r, " measured other options of block ", b);
      std::vector<QuantizedBlock> blocks;
      for (std::size_t i = 0; i < losses.entries.size(); ++i) {
        const bool entry_sent = in.get<uint8_t>() != 0;
        BQ_ASSERT(entry_sent == sent(b, i), "rank ", r, " measured other options of block ", b);
        if (!entry_sent) continue;
        LossEntry& e = losses.entries[i];
        e.expected_loss = in.get<double>();
        e.plugin_loss = in.get<double>();
        e.lloyd_fallbacks = in.get<int64_t>();
        e.measured = true;
        if (in.get<uint8_t>() != 0) blocks.push_back(read_block(in));
      }
      if (!blocks.empty()) session.keep_options(key, b, blocks);
    }
  }
  std::vector<int64_t> blocks_per_rank(static_cast<std::size_t>(world.size()), 0);
  for (int o : owner) ++blocks_per_rank[static_cast<std::size_t>(o)];
  session.distributed_report() = {{"world_size", world.size()},
                                  {"launcher", world.launcher()},
                                  {"exchange", world.exchange()},
                                  {"measured_table_blocks_per_rank", blocks_per_rank},
                                  {"measured_table_seconds_per_rank", world.all_gather(seconds)}};
}

// Adds to a shared stage time: a later budget may measure more of a table.
void add_time(Session& session, const std::string& stage, double seconds) {
  session.add_time(stage, session.timings().value(stage, 0.0) + seconds);
}

// Whether the measured table of `config` is measured per budget through the option prefilter (Note [Option
// prefilter] in table/option_prefilter.h): K-FAC tables, unless switched off.
bool prefiltered(const MethodConfig& config) {
  return config.table_loss == TableLoss::measured && config.variant().table == TableKind::kfac &&
         config.measure.prefilter_window >= 0;
}

// Each entry's predicted loss (predicted_option_losses in gptq/kfac.h), every entry left unmeasured.
void predict_options(Session& session, const MethodConfig& config, LossTable& table) {
  const auto start = Clock::now();
  const BlockIndex& index = session.index();
  // In a job of several processes each predicts its share of the blocks and all get every prediction, so that
  // every process selects the same entries.
  const World& world = session.world();
  std::vector<int> owner(index.blocks.size(), world.rank());
  if (world.distributed()) {
    std::vector<double> cost;
    for (const BlockInfo& info : index.blocks) cost.push_back(double(info.numel()));
    owner = assign_blocks(cost, world.size());
  }
  PredictionTimes parts;
  Progress progress("option prefilter", static_cast<int64_t>(index.blocks.size()), "blocks");
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    ProgressStep step(progress);
    BlockLosses& block = table.blocks[b];
    block.prefilter = session.kfac_stats()[b].captured;
    for (LossEntry& e : block.entries) e.measured = false;
    if (owner[b] != world.rank()) continue;
    const LayerStats& stats = session.kfac_stats()[b];
    const std::vector<double> losses = predicted_option_losses(
        session.weights(b, &session.kfac_precision(config.posterior.damp)[b]), index.blocks[b], stats,
        entry_choices(block), config.table.quantizer.group_size, config.gptq, session.compute().device, &parts);
    for (std::size_t e = 0; e < block.entries.size(); ++e) block.entries[e].predicted_loss = losses[e];
  }
  if (world.distributed()) {
    ByteWriter mine;
    for (std::size_t b = 0; b < index.blocks.size(); ++b) {
      if (owner[b] != world.rank()) continue;
      std::vector<double> predicted;
      for (const LossEntry& e : table.blocks[b].entries) predicted.push_back(e.predicted_loss);
      mine.put<uint64_t>(b);
      mine.put_vector(predicted);
    }
    const std::vector<std::vector<uint8_t>> all = world.all_gather_bytes(mine.bytes());
    for (int r = 0; r < world.size(); ++r) {
      if (r == world.rank()) continue;
      ByteReader in(all[static_cast<std::size_t>(r)]);
      while (!in.done()) {
        const std::size_t b = static_cast<std::size_t>(in.get<uint64_t>());
        BQ_ASSERT(b < owner.size() && owner[b] == r, "rank ", r, " sent predictions of block ", b);
        const std::vector<double> predicted = in.get_vector<double>();
        BQ_ASSERT(predicted.size() == table.blocks[b].entries.size(), "rank ", r, " sent ", predicted.size(),
                  " predictions for block ", b);
        for (std::size_t e = 0; e < predicted.size(); ++e) table.blocks[b].entries[e].predicted_loss = predicted[e];
      }
    }
  }
  add_time(session, "prefilter_predict", seconds_since(start));
  add_time(session, "prefilter_grids", parts.grids);
  add_time(session, "prefilter_feedback", parts.feedback);
  add_time(session, "prefilter_score", parts.score);
}

// Whether K-FAC codebooks are designed on a host thread ahead of the thread that drives the device (Note [Designs
// ahead of the device] in gptq/design_queue.h): on a GPU by default, where the same designs then take less wall time
// on one host thread fewer than usual, so that the device thread keeps a core to launch its kernels. (On a CPU the
// two would only compete for the same cores.) The options are then also fed back on a stream beside the forwards
// (Note [Feedback beside the forwards] in measure/kl_forward.h).
bool designs_ahead_on(Session& session, const MethodConfig& config) {
  return config.variant().table == TableKind::kfac && config.measure.overlap_on(session.compute().device.is_cuda());
}

QuantizerParams kfac_quantizer_params(Session& session, const MethodConfig& config) {
  QuantizerParams qp = config.table.quantizer;
  qp.level_scale = effective_level_scale(config, session.index());
  return qp;
}

BlockWeights kfac_block_weights(Session& session, const MethodConfig& config, std::size_t b) {
  return session.weights(b, &session.kfac_precision(config.posterior.damp)[b]);
}

// A design thread for `choices[b]` of every block that has any, in block order (or in `block_order`, a
// permutation of the blocks). Session state is looked up here, on this thread; the design thread reads only the
// weight and precision arrays, which nothing writes while the queue lives.
std::unique_ptr<DesignQueue> start_kfac_designs(Session& session, const MethodConfig& config,
                                                const std::vector<std::vector<std::pair<int, CodebookKind>>>& choices,
                                                const std::vector<std::size_t>* block_order = nullptr) {
  struct DesignInput {
    BlockWeights weights;
    bool captured = false;
    std::vector<std::pair<int, CodebookKind>> choices;
  };
  const BlockIndex& index = session.index();
  auto inputs = std::make_shared<std::vector<DesignInput>>(index.blocks.size());
  std::vector<std::size_t> order;
  for (std::size_t k = 0; k < index.blocks.size(); ++k) {
    const std::size_t b = block_order ? (*block_order)[k] : k;
    if (choices[b].empty()) continue;
    (*inputs)[b] = {kfac_block_weights(session, config, b), session.kfac_stats()[b].captured, choices[b]};
    order.push_back(b);
  }
  const QuantizerParams qp = kfac_quantizer_params(session, config);
  const int workers = std::max(1, num_threads() - 1);
  // Up to 64 M weights of designs waiting (21 bytes of codes each: about 1.4 GB of host memory at most).
  constexpr int64_t kAheadWeights = int64_t(1) << 26;
  return std::make_unique<DesignQueue>(
      order,
      [inputs, qp, workers](std::size_t b) {
        const ScopedWorkerLimit limit(workers);
        const DesignInput& in = (*inputs)[b];
        return design_kfac_options(in.weights, in.choices, qp, in.captured);
      },
      [&index](std::size_t b) { return index.blocks[b].numel(); }, kAheadWeights);
}

// Block b's options from designs made ahead, fed back on the device (their codes there too, when asked:
// feed_back_kfac_options).
std::vector<QuantizedBlock> feed_back_designs(Session& session, const MethodConfig& config, std::size_t b,
                                              KfacDesigns designs, double design_wait,
                                              std::vector<torch::Tensor>* device_codes = nullptr) {
  KfacOptionTimes times;
  std::vector<QuantizedBlock> blocks =
      feed_back_kfac_options(std::move(designs), kfac_block_weights(session, config, b), session.index().blocks[b],
                             session.kfac_stats()[b], kfac_quantizer_params(session, config), config.gptq,
                             session.compute().device, &times, device_codes);
  add_kfac_times(session, times, design_wait);
  return blocks;
}

bool designed_for(const KfacDesigns& designs, const std::vector<std::pair<int, CodebookKind>>& choices) {
  if (designs.designed.size() != choices.size()) return false;
  for (std::size_t i = 0; i < choices.size(); ++i)
    if (designs.designed[i].bits != choices[i].first || designs.designed[i].kind != choices[i].second) return false;
  return true;
}

// Measures the `selected` entries of a measured table (all when null), each block's options quantized by the
// method's option function and kept in the session for the joint refinement and the final pass.
void measure_entries(Session& session, const MethodConfig& config, LossTable& table,
                     const std::vector<std::vector<bool>>* selected) {
  const BlockIndex& index = session.index();
  const std::string key = table_key(config).dump();
  // A job of several processes splits the blocks by an estimate of their work (weights x options); each process
  // measures its own and the results are gathered below.
  const World& world = session.world();
  std::vector<int> owner(index.blocks.size(), world.rank());
  if (world.distributed()) {
    std::vector<double> cost;
    for (std::size_t b = 0; b < index.blocks.size(); ++b)
      cost.push_back(double(index.blocks[b].numel()) * double(entry_choices(table.blocks[b], selected, b).size()));
    owner = assign_blocks(cost, world.size());
  }
  std::vector<bool> measure_here;
  for (int o : owner) measure_here.push_back(o == world.rank());
  std::unique_ptr<DesignQueue> designs_ahead;
  std::vector<std::size_t> order;  // the blocks in the order measured: index order, or as below
  if (designs_ahead_on(session, config)) {
    // Note [Small blocks first]: with designs ahead, the table's first block waits for its whole design, and the
    // design thread then stays ahead (its total is below the table's: BERT 11 s of design against a 16 s table).
    // In index order that first block was BERT's 23 M-weight word table: a 2.1 s wait before the first forward.
    // Smallest blocks first (ties in index order), the wait is the smallest block's design. A block's entries are
    // measured with every other block as it is in the model, so the order changes no entry.
    for (std::size_t b = 0; b < index.blocks.size(); ++b) order.push_back(b);
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return index.blocks[a].numel() < index.blocks[b].numel();
    });
    std::vector<std::vector<std::pair<int, CodebookKind>>> choices(index.blocks.size());
    for (std::size_t b = 0; b < index.blocks.size(); ++b)
      if (measure_here[b]) choices[b] = entry_choices(table.blocks[b], selected, b);
    designs_ahead = start_kfac_designs(session, config, choices, &order);
  }
  // Options are quantized beside the forwards queued before them (Note [Feedback beside the forwards]); the
  // statistics they read were computed before the table.
  const SideStream side(designs_ahead ? session.compute().device : torch::Device(torch::kCPU));
  const OptionBlocks options = [&](std::size_t b, const std::vector<std::pair<int, CodebookKind>>& choices,
                                   std::vector<torch::Tensor>* device_codes) {
    const SideStream::Scope beside(side);
    std::vector<QuantizedBlock> blocks;
    if (designs_ahead) {
      double wait = 0.0;
      KfacDesigns designs = designs_ahead->take(b, &wait);
      BQ_ASSERT(designed_for(designs, choices), "the designs of ", index.blocks[b].name, " were made for other options");
      blocks = feed_back_designs(session, config, b, std::move(designs), wait,
                                 session.compute().device.is_cuda() ? device_codes : nullptr);
    } else {
      blocks = option_blocks(session, config, b, choices);
    }
    session.keep_options(key, b, blocks);
    return blocks;
  };
  const MeasureStats stats = measure_loss_table(session.model().module, index, session.measurement(), options,
                                                config.measure, session.compute(), session.inputs().model, table,
                                                world.distributed() ? &measure_here : nullptr, selected,
                                                order.empty() ? nullptr : &order);
  if (world.distributed()) gather_table(session, owner, key, stats.seconds, table, selected);
  add_time(session, "measure_table", stats.seconds);
  add_time(session, "measure_table_quantize", stats.quantize_seconds);
  add_time(session, "measure_table_swap", stats.swap_seconds);
  add_time(session, "measure_table_decode", stats.decode_seconds);
  add_time(session, "measure_table_forward", stats.forward_seconds);
  if (stats.prefix_seconds > 0.0) add_time(session, "measure_table_prefix", stats.prefix_seconds);
}

LossTable build_table(Session& session, const MethodConfig& config) {
  const BlockIndex& index = session.index();
  const TableKind kind = config.variant().table;
  BQ_ASSERT(kind != TableKind::none, method_name(config.method), " has no loss table");
  if (kind == TableKind::hawq_trace) {
    std::vector<BlockTableInput> inputs;
    for (std::size_t b = 0; b < index.blocks.size(); ++b) inputs.push_back({index.blocks[b].name, session.weights(b)});
    return build_hawq_table(inputs, session.curvature(config.curvature_params()), config.table.candidates,
                            config.table.quantizer.group_size);
  }
  if (config.table_loss == TableLoss::measured) {
    // Every entry is measured from the blocks quantized there: scoring them with the loss model first would
    // design every codebook (and, for K-FAC, run every feedback pass) twice.
    LossTable table = unscored_table(index, config);
    // The statistics the options need, before the table's own progress starts (they report theirs).
    if (kind == TableKind::kfac) session.kfac_stats();
    else if (kind == TableKind::posterior) session.posterior_rows(config);
    mark_stage_peak(session.compute().device, "statistics");
    if (prefiltered(config)) predict_options(session, config, table);  // measured per budget
    else measure_entries(session, config, table, nullptr);
    return table;
  }
  if (kind == TableKind::kfac) {
    LossTable table = unscored_table(index, config);
    session.kfac_stats();
    Progress progress("K-FAC table", static_cast<int64_t>(index.blocks.size()), "blocks");
    for (std::size_t b = 0; b < index.blocks.size(); ++b) {
      ProgressStep step(progress);
      const std::vector<QuantizedBlock> blocks = option_blocks(session, config, b, entry_choices(table.blocks[b]));
      score_kfac_entries(table.blocks[b], blocks, session.weights(b), index.blocks[b], session.kfac_stats()[b],
                         config.posterior.damp, session.compute().device);
    }
    return table;
  }
  const auto& precision = session.posterior_rows(config);
  std::vector<BlockTableInput> inputs;
  for (std::size_t b = 0; b < index.blocks.size(); ++b) inputs.push_back({index.blocks[b].name, session.weights(b, &precision[b])});
  LossTableParams params = config.table;
  params.quantizer.level_scale = effective_level_scale(config, index);
  return build_loss_table(inputs, params);
}

QuantizedModel quantize_model(Session& session, const MethodConfig& config, double bits) {
  const auto start = Clock::now();
  const BlockIndex& index = session.index();
  const torch::Device device = session.compute().device;
  mark_stage_peak(device, "load");  // what came before: the model and data on the device
  QuantizedModel out;
  if (config.variant().whole_bits) {
    check_whole_bits(config, bits);
    const std::vector<bool> kept = kept_fp(index, config.allocation.keep_fp);
    const int64_t group_size = config.table.quantizer.group_size;
    if (config.method == Method::gptq) {
      std::vector<bool> quantize(index.blocks.size());
      for (std::size_t b = 0; b < quantize.size(); ++b) quantize[b] = !kept[b];
      ModelGptqParams params;
      params.bits = static_cast<int>(bits);
      params.group_size = group_size;
      params.sequential = config.sequential;
      params.gptq = config.gptq;
      ModelGptqResult r = quantize_model_gptq(session.model().module, index, session.rows(), quantize,
                                              session.calibration(), params, session.compute(), session.inputs().model);
      out.blocks = std::move(r.blocks);
      out.present = std::move(r.present);
      out.details["gptq_blocks"] = std::move(r.details);
    } else {
      out.blocks.resize(index.blocks.size());
      out.present.assign(index.blocks.size(), false);
      for (std::size_t b = 0; b < index.blocks.size(); ++b) {
        if (kept[b]) continue;
        out.blocks[b] = quantize_block_rtn(session.weights(b), static_cast<int>(bits), group_size);
        out.present[b] = true;
      }
    }
    out.timings["quantize"] = seconds_since(start);
    mark_stage_peak(device, "quantize");
    return out;
  }
  auto t = Clock::now();
  const LossTable& loss_table = session.table(config);
  AllocationParams ap = config.allocation;
  ap.bits_per_weight = bits;
  if (prefiltered(config)) {
    // This budget's options (Note [Option prefilter]); those no earlier budget measured are measured now.
    const auto select_start = Clock::now();
    ap.allowed_entries = prefilter_entries(loss_table, ap, config.measure.prefilter_window);
    add_time(session, "prefilter_select", seconds_since(select_start));  // the allocation on predicted losses
    const std::vector<std::vector<bool>> missing = unmeasured_entries(loss_table, ap.allowed_entries);
    if (!missing.empty()) measure_entries(session, config, session.table_to_extend(config), &missing);
    int64_t allowed = 0, measured = 0, entries = 0;
    for (std::size_t b = 0; b < loss_table.blocks.size(); ++b)
      for (std::size_t e = 0; e < loss_table.blocks[b].entries.size(); ++e) {
        allowed += ap.allowed_entries[b][e] ? 1 : 0;
        measured += loss_table.blocks[b].entries[e].measured ? 1 : 0;
        ++entries;
      }
    out.details["prefilter"] = {{"window", config.measure.prefilter_window},
                                {"options", entries},
                                {"budget_options", allowed},        // this budget's allocation chose among these
                                {"measured_options", measured}};    // by this budget and those before it
  }
  out.timings["table"] = seconds_since(t);
  mark_stage_peak(device, "loss_table");
  t = Clock::now();
  out.allocation = allocate(loss_table, ap);
  out.timings["allocate"] = seconds_since(t);
  if (config.table_loss == TableLoss::measured && config.joint.rounds > 0) {
    t = Clock::now();
    // Options are quantized beside the trials queued before them (Note [Feedback beside the forwards]).
    const SideStream side(designs_ahead_on(session, config) ? device : torch::Device(torch::kCPU));
    const OptionBlock option = [&](std::size_t b, int entry) {
      const SideStream::Scope beside(side);
      const LossEntry& e = loss_table.blocks[b].entries[static_cast<std::size_t>(entry)];
      return option_block(session, config, b, e.bits, e.kind);
    };
    // Options no table measurement quantized (outside this budget's prefilter windows) are quantized together per
    // block and kept: one stacked feedback pass, and none quantized again when chosen, measured or written.
    const std::string key = table_key(config).dump();
    auto missing_options = [&](std::size_t b, const std::vector<int>& entries) {
      std::vector<std::pair<int, CodebookKind>> missing;
      for (int i : entries) {
        const LossEntry& e = loss_table.blocks[b].entries[static_cast<std::size_t>(i)];
        if (!session.kept_option(key, b, e.bits, e.kind)) missing.emplace_back(e.bits, e.kind);
      }
      return missing;
    };
    // The first round's missing options are known now: their codebooks are designed ahead of its trials, as the
    // table's are (Note [Designs ahead of the device]), once the refinement has measured the additive allocation
    // and is to run its rounds (Note [Refine where the sum misses]). A later round, or a block whose options turn
    // out otherwise, quantizes them when its trials start. (One process: a job's processes each take their own
    // blocks.)
    std::unique_ptr<DesignQueue> first_round_designs;
    std::vector<std::size_t> queued_blocks;
    std::size_t next_queued = 0, taken_ahead = 0;
    const std::function<void()> design_first_round = [&]() {
      if (!designs_ahead_on(session, config) || session.world().distributed()) return;
      std::vector<std::vector<std::pair<int, CodebookKind>>> choices(index.blocks.size());
      for (std::size_t b = 0; b < index.blocks.size(); ++b) {
        const BlockChoice& c = out.allocation->blocks[b];
        if (c.keep_fp) continue;
        std::vector<int> trials;
        for (int i : window_entries(loss_table.blocks[b], c, config.joint.window))
          if (i != c.entry) trials.push_back(i);
        choices[b] = missing_options(b, trials);
        if (!choices[b].empty()) queued_blocks.push_back(b);
      }
      if (!queued_blocks.empty()) first_round_designs = start_kfac_designs(session, config, choices);
    };
    const OptionsAhead ahead = [&](std::size_t b, const std::vector<int>& entries) {
      const std::vector<std::pair<int, CodebookKind>> missing = missing_options(b, entries);
      if (missing.empty()) return;
      const SideStream::Scope beside(side);
      if (first_round_designs && next_queued < queued_blocks.size() && queued_blocks[next_queued] == b) {
        ++next_queued;
        double wait = 0.0;
        KfacDesigns designs = first_round_designs->take(b, &wait);
        if (designed_for(designs, missing)) {
          session.keep_options(key, b, feed_back_designs(session, config, b, std::move(designs), wait));
          ++taken_ahead;
          return;
        }
      }
      session.keep_options(key, b, option_blocks(session, config, b, missing));
    };
    JointRefinement joint = refine_allocation(session.model().module, index, session.measurement(), loss_table,
                                              *out.allocation, ap, config.joint, config.measure, option,
                                              session.compute(), session.inputs().model, &session.world(), ahead,
                                              design_first_round);
    first_round_designs.reset();
    out.allocation = std::move(joint.allocation);
    if (!queued_blocks.empty())  // blocks whose options outside the table's windows were designed ahead, of those queued
      out.details["refinement_designs_ahead"] = {{"blocks", taken_ahead}, {"queued", queued_blocks.size()}};
    if (joint.prefix_seconds > 0.0) out.timings["joint_prefix"] = joint.prefix_seconds;
    out.timings["joint_options"] = joint.option_seconds;
    out.timings["joint_wait"] = joint.wait_seconds;
    out.joint = std::move(joint);
    if (!ap.allowed_entries.empty()) {
      // The refinement may move a block to an option this budget's windows did not hold: measured now, so that
      // every block of the report has its additive table entry (whatever other budgets measured).
      std::vector<std::vector<bool>> chosen(loss_table.blocks.size());
      for (std::size_t b = 0; b < chosen.size(); ++b) {
        chosen[b].assign(loss_table.blocks[b].entries.size(), false);
        const BlockChoice& c = out.allocation->blocks[b];
        if (!c.keep_fp) chosen[b][static_cast<std::size_t>(c.entry)] = true;
      }
      const std::vector<std::vector<bool>> missing = unmeasured_entries(loss_table, chosen);
      if (!missing.empty()) {
        measure_entries(session, config, session.table_to_extend(config), &missing);
        out.allocation->expected_loss = 0.0;
        for (std::size_t b = 0; b < chosen.size(); ++b) {
          BlockChoice& c = out.allocation->blocks[b];
          if (c.keep_fp) continue;
          c.expected_loss = loss_table.blocks[b].entries[static_cast<std::size_t>(c.entry)].expected_loss;
          out.allocation->expected_loss += c.expected_loss;
        }
      }
    }
    out.timings["joint_allocation"] = seconds_since(t);
    mark_stage_peak(device, "joint_refinement");
  }
  t = Clock::now();
  out.blocks.resize(index.blocks.size());
  out.present.assign(index.blocks.size(), false);
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    const BlockChoice& choice = out.allocation->blocks[b];
    if (choice.keep_fp) continue;
    out.blocks[b] = option_block(session, config, b, choice.bits, choice.kind);
    out.present[b] = true;
  }
  out.timings["quantize"] = seconds_since(t);
  mark_stage_peak(device, "quantize");
  return out;
}

void check_budgets(Session& session, const MethodConfig& config, const std::vector<double>& budgets) {
  const BlockIndex& index = session.index();
  const std::vector<bool> kept = kept_fp(index, config.allocation.keep_fp);
  BQ_CHECK(std::find(kept.begin(), kept.end(), false) != kept.end(), ExitCode::usage,
           "--keep-fp keeps every block in floating point: nothing to quantize");
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    if (kept[b]) continue;
    float largest = 0.0f;
    for (float w : session.rows()[b]) largest = std::max(largest, std::fabs(w));
    BQ_CHECK(largest <= kMaxQuantizableWeight, ExitCode::input, "block ", index.blocks[b].name,
             " has weights up to ", largest, ", beyond the fp16 code tables' range (|w| <= ", kMaxQuantizableWeight,
             "); rescale the model or keep the block with --keep-fp: ", session.inputs().model);
  }
  if (config.variant().whole_bits) {
    for (double bits : budgets) check_whole_bits(config, bits);
    return;
  }
  const LossTable costs = unscored_table(index, config);  // feasibility depends on the costs alone
  for (double bits : budgets) {
    AllocationParams ap = config.allocation;
    ap.bits_per_weight = bits;
    ap.certify = false;
    allocate(costs, ap);
  }
}

BudgetResult run_budget(Session& session, const MethodConfig& config, double bits, const std::string& path,
                        OutputFormat format) {
  BudgetResult r;
  auto t = Clock::now();
  r.quantized = quantize_model(session, config, bits);
  r.timings = r.quantized.timings;
  r.timings["quantize_total"] = seconds_since(t);
  r.module = session.model().module;
  if (config.distill.steps > 0) {
    t = Clock::now();
    static const std::vector<BlockPosterior> none;
    const std::vector<BlockPosterior>& teacher = config.distill.teacher_samples > 1 ? session.posteriors(config) : none;
    DistillResult d = distill(session.model().module, session.index(), r.quantized.blocks, r.quantized.present,
                              teacher, session.calibration(), config.distill, session.compute(),
                              session.inputs().model);
    r.module = d.module;
    r.distillation = std::move(d.report);  // held-out KL at step 0 and best, best step, curve
    if (r.distillation.contains("holdout_indices")) {  // as indices into the calibration file
      const std::vector<int64_t>& file_index = session.calibration_indices();
      std::vector<int64_t> in_file;
      for (int64_t i : r.distillation["holdout_indices"].get<std::vector<int64_t>>())
        in_file.push_back(file_index.at(static_cast<std::size_t>(i)));
      r.distillation["holdout_indices"] = in_file;
    }
    r.timings["distill"] = seconds_since(t);
    mark_stage_peak(session.compute().device, "distill");
  }
  t = Clock::now();
  if (!path.empty()) {  // empty: another process of the job writes
    r.written = write_quantized_model(r.module, session.index(), r.quantized.slots(), format, path);
    r.timings["write"] = seconds_since(t);
    mark_stage_peak(session.compute().device, "write");
  }
  for (std::size_t b = 0; b < r.quantized.blocks.size(); ++b) {
    if (!r.quantized.present[b]) continue;
    const BlockCost c = r.quantized.blocks[b].cost();
    r.weights += session.index().blocks[b].numel();
    r.code_bits += c.code_bits;
    r.metadata_bits += c.metadata_bits;
  }
  if (!session.has_calibration()) return r;
  torch::jit::Module written = dequantized_module(r.module, session.index(), r.quantized.slots());
  if (r.quantized.allocation) {
    t = Clock::now();
    const DataFile& data = session.measurement();
    const int64_t n = std::min<int64_t>(data.size(), config.measure.examples > 0 ? config.measure.examples : data.size());
    // The refinement ended by measuring exactly this model on these examples; distillation changes it.
    const bool refined = r.quantized.joint && config.distill.steps == 0;
    const double measured = refined ? r.quantized.joint->final_kl
                                    : mean_kl(session.model().module, written, data, n, session.compute(),
                                              session.inputs().model);
    // A measured table's entries are N x KL over the measured examples; an expected-loss table's are on the scale
    // of the examples the curvature was fitted on.
    const double scale = double(config.table_loss == TableLoss::measured ? data.size() : session.calibration().size());
    r.joint_calibration_kl = {{"predicted", r.quantized.allocation->expected_loss / scale},
                              {"measured", measured},
                              {"examples", n},
                              {"table", table_loss_name(config.table_loss)}};
    if (r.quantized.joint) {
      // The additive allocation's measured KL, and each refinement round's prediction and measurement.
      nlohmann::json refinement = *r.quantized.joint;
      r.joint_calibration_kl["refinement"] = std::move(refinement);
    }
    r.timings["joint_kl"] = seconds_since(t);
  }
  const DataFile& held = session.holdout();
  if (held.size() > 0) {
    t = Clock::now();
    EvalParams ep;
    ep.device = session.compute().device;
    ep.output = session.compute().output;
    torch::jit::Module reference = session.model().module.clone();
    reference.eval();
    reference.to(ep.device);
    written.to(ep.device);
    const EvalResult e = evaluate(written, &reference, held, ep, session.inputs().model);
    r.holdout = {{"examples", e.examples}, {"kl", e.mean_kl}, {"agreement", e.agreement}};
    if (e.has_labels) r.holdout["top1"] = e.top1;
    r.timings["holdout"] = seconds_since(t);
  }
  mark_stage_peak(session.compute().device, "evaluation");
  r.dequantized = std::move(written);
  return r;
}

}  // namespace bayesq

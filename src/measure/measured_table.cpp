#include "bayesq/measure/measured_table.h"

#include <algorithm>
#include <optional>

#include <torch/torch.h>

#include "bayesq/common/errors.h"
#include "bayesq/common/progress.h"
#include "bayesq/common/timer.h"
#include "bayesq/export/model_writer.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/block_tensor.h"
#include "bayesq/measure/kl_forward.h"
#include "bayesq/measure/suffix_forward.h"
#include "bayesq/model/forward.h"

namespace bayesq {

// No gradients, so batches can be larger than the calibration pass's: fewer, fuller kernel launches.
int64_t measure_batch_size(const Compute& compute) { return std::max<int64_t>(compute.batch_size, 128); }

torch::Tensor log_probabilities_of(const torch::jit::IValue& output, const Compute& compute) {
  const torch::Tensor z = select_output(output, compute.output);
  return torch::log_softmax(z.to(torch::kFloat64).reshape({-1, z.size(-1)}), 1);
}

std::vector<torch::Tensor> log_probabilities(torch::jit::Module& module, const DataFile& data, int64_t n,
                                             const Compute& compute, const std::string& model_path) {
  torch::NoGradGuard no_grad;
  const int64_t batch = measure_batch_size(compute);
  std::vector<torch::Tensor> out;
  for (int64_t begin = 0; begin < n; begin += batch) {
    const int64_t end = std::min(n, begin + batch);
    out.push_back(log_probabilities_of(forward_batch(module, data, begin, end, compute.device, model_path), compute));
  }
  return out;
}

double kl_sum(const std::vector<torch::Tensor>& log_p, const std::vector<torch::Tensor>& log_q) {
  double kl = 0.0;
  for (std::size_t k = 0; k < log_p.size(); ++k) kl += (log_p[k].exp() * (log_p[k] - log_q[k])).sum().item<double>();
  return kl;
}

torch::jit::Module eval_copy(const torch::jit::Module& model, const torch::Device& device) {
  torch::jit::Module copy = model.clone();
  copy.eval();
  copy.to(device);
  return copy;
}

MeasureStats measure_loss_table(const torch::jit::Module& model, const BlockIndex& index, const DataFile& data,
                                const OptionBlocks& options, const MeasureParams& params, const Compute& compute,
                                const std::string& model_path, LossTable& table,
                                const std::vector<bool>* measure_here,
                                const std::vector<std::vector<bool>>* selected,
                                const std::vector<std::size_t>* order) {
  const auto t = Clock::now();
  MeasureStats stats;
  const int64_t n = std::min<int64_t>(data.size(), params.examples > 0 ? params.examples : data.size());
  torch::jit::Module work = eval_copy(model, compute.device);
  // Every block's value before any option, to restore after its options (KlForward may write into the tensors the
  // module then holds).
  std::vector<std::string> names;
  std::vector<torch::Tensor> originals;
  for (const BlockInfo& info : index.blocks) {
    names.push_back(info.name);
    originals.push_back(find_tensor(work, info.name));
  }
  KlForward forward(work, names, data, n, compute, model_path, params.cuda_graphs);
  table.replayed_forwards = forward.replayed();
  // Timed with the KL: on a GPU the forwards run asynchronously, and the KL's read-back is where the host waits.
  // From the block's cached prefix where there is one (Note [Cached prefix] in suffix_forward.h).
  std::unique_ptr<SuffixForward> suffix;
  auto measured_kl = [&]() {
    const auto start = Clock::now();
    const double kl = suffix ? kl_sum(forward.reference(), suffix->log_probabilities()) : forward.kl_sum();
    stats.forward_seconds += seconds_since(start);
    return kl;
  };
  // A block whose KLs are queued on the device, read once the next block's options are made (Note [Feedback
  // beside the forwards] in kl_forward.h: their feedback then runs while the device still has these forwards).
  struct Pending {
    std::size_t block = 0;
    std::vector<std::size_t> picked;
    std::vector<double> plugin_loss;
    std::vector<int> lloyd_fallbacks;
    std::vector<torch::Tensor> queued;
    std::vector<torch::Tensor> device_codes;  // read by the swaps queued before the KLs: kept until they are read
  };
  std::optional<Pending> pending;
  auto finish = [&]() {
    if (!pending) return;
    const auto start = Clock::now();
    const std::vector<double> kls = read_queued(pending->queued);
    stats.forward_seconds += seconds_since(start);
    auto& entries = table.blocks[pending->block].entries;
    for (std::size_t i = 0; i < pending->picked.size(); ++i) {
      LossEntry& e = entries[pending->picked[i]];
      e.expected_loss = kls[i] * double(data.size()) / double(n);  // N x mean KL: the scale of the expected loss
      e.plugin_loss = pending->plugin_loss[i];
      e.lloyd_fallbacks = pending->lloyd_fallbacks[i];
      e.measured = true;
    }
    // Each measured entry against the measured entry before it of the same kind (a kind's entries are consecutive).
    table.blocks[pending->block].monotone = true;
    const LossEntry* before = nullptr;
    for (const LossEntry& e : entries) {
      if (!e.measured) continue;
      if (before && before->kind == e.kind && e.bits > before->bits && e.expected_loss > before->expected_loss)
        table.blocks[pending->block].monotone = false;
      before = &e;
    }
    pending.reset();
  };
  if (order) {
    std::vector<bool> seen(index.blocks.size(), false);
    for (std::size_t b : *order) {
      BQ_ASSERT(b < seen.size() && !seen[b], "the measuring order is not a permutation of the ", seen.size(),
                " blocks");
      seen[b] = true;
    }
    BQ_ASSERT(order->size() == seen.size(), "a measuring order of ", order->size(), " blocks for ", seen.size());
  }
  Progress progress("measured table", static_cast<int64_t>(index.blocks.size()), "blocks");
  for (std::size_t k = 0; k < index.blocks.size(); ++k) {
    const std::size_t b = order ? (*order)[k] : k;
    if (measure_here && !(*measure_here)[b]) {
      progress.advance();
      continue;
    }
    const BlockInfo& info = index.blocks[b];
    const torch::Tensor& original = originals[b];
    const auto& entries = table.blocks[b].entries;
    std::vector<std::size_t> picked;  // the entries measured here
    for (std::size_t e = 0; e < entries.size(); ++e)
      if (!selected || (*selected)[b][e]) picked.push_back(e);
    if (picked.empty()) {
      progress.advance();
      continue;
    }
    std::vector<std::pair<int, CodebookKind>> choices;
    for (std::size_t e : picked) choices.emplace_back(entries[e].bits, entries[e].kind);
    auto start = Clock::now();
    std::vector<torch::Tensor> device_codes;
    const std::vector<QuantizedBlock> blocks = options(b, choices, &device_codes);
    stats.quantize_seconds += seconds_since(start);
    BQ_ASSERT(blocks.size() == picked.size(), "asked for ", picked.size(), " options of ", info.name, ", got ",
              blocks.size());
    BQ_ASSERT(device_codes.empty() || device_codes.size() == blocks.size(), device_codes.size(),
              " device codes for ", blocks.size(), " options of ", info.name);
    finish();  // the block before: its forwards ran while these options were made
    suffix.reset();
    if (params.prefix_on(compute.device.is_cpu()) && blocks.size() > 1) {
      start = Clock::now();
      suffix = SuffixForward::build(work, info.name, data, n, compute);
      stats.prefix_seconds += seconds_since(start);
      stats.forward_seconds += seconds_since(start);
      if (suffix) {
        ++table.cached_prefix_blocks;
        table.cached_prefix_share += double(suffix->prefix_nodes()) / double(suffix->data_nodes());
      }
    }
    // Without a suffix, each KL is queued on the device and read with the block's others, so that the host
    // decodes the next option while the device runs the forward before it (Note [Queued trials]).
    std::vector<torch::Tensor> queued;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      start = Clock::now();
      const torch::Tensor value =
          device_codes.empty() ? dequantized_tensor(blocks[i], info, original)
                               : rows_to_block(dequantized_rows_by_gather(blocks[i], original.device(), device_codes[i]),
                                               info, original);
      stats.decode_seconds += seconds_since(start);
      forward.set_block(info.name, value);
      stats.swap_seconds += seconds_since(start);
      if (suffix) {
        queued.push_back(torch::tensor(measured_kl(), torch::kFloat64));
      } else {
        start = Clock::now();
        queued.push_back(forward.kl_sum_queued());
        stats.forward_seconds += seconds_since(start);
      }
    }
    forward.set_block(info.name, original);  // queued after the block's forwards
    suffix.reset();
    pending = Pending{b, std::move(picked), {}, {}, std::move(queued), std::move(device_codes)};
    for (const QuantizedBlock& q : blocks) {
      pending->plugin_loss.push_back(q.plugin_loss);
      pending->lloyd_fallbacks.push_back(q.lloyd_fallbacks);
    }
    progress.advance();
  }
  finish();
  progress.finish();
  if (table.cached_prefix_blocks > 0) table.cached_prefix_share /= double(table.cached_prefix_blocks);
  stats.quantize_seconds += stats.swap_seconds;
  stats.seconds = seconds_since(t);
  return stats;
}

double mean_kl(const torch::jit::Module& reference, const torch::jit::Module& model, const DataFile& data,
               int64_t examples, const Compute& compute, const std::string& model_path) {
  const int64_t n = examples > 0 ? std::min<int64_t>(examples, data.size()) : data.size();
  torch::jit::Module a = eval_copy(reference, compute.device), b = eval_copy(model, compute.device);
  const std::vector<torch::Tensor> log_p = log_probabilities(a, data, n, compute, model_path);
  int64_t rows = 0;  // per scored position, as evaluate() averages (examples x positions for sequence outputs)
  for (const torch::Tensor& t : log_p) rows += t.size(0);
  return rows ? kl_sum(log_p, log_probabilities(b, data, n, compute, model_path)) / double(rows) : 0.0;
}

}  // namespace bayesq

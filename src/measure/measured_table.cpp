#include "bayesq/measure/measured_table.h"

#include <algorithm>

#include <torch/torch.h>

#include "bayesq/common/timer.h"
#include "bayesq/export/model_writer.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/forward.h"

namespace bayesq {

MeasureStats measure_loss_table(const torch::jit::Module& model, const BlockIndex& index, const DataFile& data,
                                const OptionBlocks& options, const MeasureParams& params, const Compute& compute,
                                const std::string& model_path, LossTable& table) {
  const auto t = Clock::now();
  MeasureStats stats;
  const torch::Device device = compute.device;
  const int64_t n = std::min<int64_t>(data.size(), params.examples > 0 ? params.examples : data.size());
  torch::jit::Module work = model.clone();
  work.eval();
  work.to(device);
  // No gradients here, so batches can be larger than the calibration pass's (fewer, fuller kernel launches).
  const int64_t batch = std::max<int64_t>(compute.batch_size, 128);
  auto log_probabilities = [&]() {
    torch::NoGradGuard no_grad;
    const auto start = Clock::now();
    std::vector<torch::Tensor> out;
    for (int64_t begin = 0; begin < n; begin += batch) {
      const int64_t end = std::min(n, begin + batch);
      const torch::Tensor z =
          select_output(forward_batch(work, data, begin, end, device, model_path), compute.output);
      // Double precision, as in evaluate(): small KLs are differences of nearly equal log-probabilities.
      out.push_back(torch::log_softmax(z.to(torch::kFloat64).reshape({-1, z.size(-1)}), 1));
    }
    stats.forward_seconds += seconds_since(start);
    return out;
  };
  const std::vector<torch::Tensor> reference = log_probabilities();
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    const BlockInfo& info = index.blocks[b];
    const torch::Tensor original = find_tensor(work, info.name);
    std::vector<std::pair<int, CodebookKind>> choices;
    for (const LossEntry& e : table.blocks[b].entries) choices.emplace_back(e.bits, e.kind);
    auto start = Clock::now();
    const std::vector<QuantizedBlock> blocks = options(b, choices);
    stats.quantize_seconds += seconds_since(start);
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      LossEntry& e = table.blocks[b].entries[i];
      start = Clock::now();
      assign_tensor(work, info.name, dequantized_tensor(blocks[i], info, original));
      stats.quantize_seconds += seconds_since(start);
      const std::vector<torch::Tensor> quantized = log_probabilities();
      double kl = 0.0;
      for (std::size_t k = 0; k < reference.size(); ++k)
        kl += (reference[k].exp() * (reference[k] - quantized[k])).sum().item<double>();
      e.expected_loss = kl * double(data.size()) / double(n);  // N x mean KL: the scale of the expected loss
      e.plugin_loss = blocks[i].plugin_loss;
      e.lloyd_fallbacks = blocks[i].lloyd_fallbacks;
    }
    assign_tensor(work, info.name, original);
    auto& entries = table.blocks[b].entries;
    table.blocks[b].monotone = true;
    for (std::size_t i = 1; i < entries.size(); ++i)
      if (entries[i].kind == entries[i - 1].kind && entries[i].bits > entries[i - 1].bits &&
          entries[i].expected_loss > entries[i - 1].expected_loss)
        table.blocks[b].monotone = false;
  }
  stats.seconds = seconds_since(t);
  return stats;
}

double mean_kl(const torch::jit::Module& reference, const torch::jit::Module& model, const DataFile& data,
               int64_t examples, const Compute& compute, const std::string& model_path) {
  torch::NoGradGuard no_grad;
  const int64_t n = examples > 0 ? std::min<int64_t>(examples, data.size()) : data.size();
  const int64_t batch = std::max<int64_t>(compute.batch_size, 128);
  torch::jit::Module a = reference.clone(), b = model.clone();
  for (torch::jit::Module* m : {&a, &b}) {
    m->eval();
    m->to(compute.device);
  }
  double kl = 0.0;
  int64_t rows = 0;
  for (int64_t begin = 0; begin < n; begin += batch) {
    const int64_t end = std::min(n, begin + batch);
    auto log_p = [&](torch::jit::Module& m) {
      const torch::Tensor z = select_output(forward_batch(m, data, begin, end, compute.device, model_path), compute.output);
      return torch::log_softmax(z.to(torch::kFloat64).reshape({-1, z.size(-1)}), 1);
    };
    const torch::Tensor p = log_p(a), q = log_p(b);
    kl += (p.exp() * (p - q)).sum().item<double>();
    rows += p.size(0);
  }
  return rows ? kl / double(rows) : 0.0;
}

}  // namespace bayesq

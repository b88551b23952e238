#include "bayesq/gptq/kfac.h"

#include <optional>

#include <torch/torch.h>

#include "bayesq/common/timer.h"
#include "bayesq/gptq/feedback.h"

namespace bayesq {

std::vector<float> kfac_precision(const LayerStats& s, const BlockInfo& info, double damp) {
  if (!s.captured) return std::vector<float>(static_cast<std::size_t>(info.numel()), 1.0f);
  const int64_t rows = info.rows(), cols = info.cols(), groups = s.groups();
  const torch::Tensor g = s.output_gradient_moment.defined() ? s.output_gradient_moment.diagonal().cpu()
                                                             : torch::ones({rows});
  torch::Tensor p = torch::empty({rows, cols});
  for (int64_t cg = 0; cg < groups; ++cg) {
    const torch::Tensor a = s.input_moment[static_cast<std::size_t>(cg)].diagonal().cpu();
    const int64_t per = rows / groups;
    p.slice(0, cg * per, (cg + 1) * per).copy_(g.slice(0, cg * per, (cg + 1) * per).unsqueeze(1) * a.unsqueeze(0));
  }
  p.mul_(static_cast<double>(s.examples));
  const double lambda = damp * p.mean().item<double>();
  p.add_(lambda > 0 ? lambda : 1.0);
  return std::vector<float>(p.data_ptr<float>(), p.data_ptr<float>() + p.numel());
}

namespace {
torch::Tensor weight_rows(const BlockWeights& w, const torch::Device& device) {
  return torch::from_blob(const_cast<float*>(w.weights), {w.rows, w.cols}, torch::kFloat32).clone().to(device);
}
}  // namespace

std::vector<QuantizedBlock> kfac_option_blocks(const BlockWeights& weights, const BlockInfo& info,
                                               const LayerStats& stats,
                                               const std::vector<std::pair<int, CodebookKind>>& choices,
                                               const QuantizerParams& quantizer, const GptqParams& gptq,
                                               const torch::Device& device, KfacOptionTimes* times) {
  std::vector<QuantizedBlock> out;
  QuantizerParams qp = quantizer;
  auto start = Clock::now();
  for (const auto& [bits, kind] : choices) {
    qp.kind = kind;
    out.push_back(quantize_block(weights, bits, qp));
  }
  if (times) times->design_seconds += seconds_since(start);
  if (!stats.captured) return out;
  start = Clock::now();
  std::vector<FeedbackOption> options;
  for (const QuantizedBlock& plain : out) options.push_back({plain.bits, plain.kind, &plain.codebooks});
  std::vector<QuantizedBlock> fed = quantize_with_feedback_options(weight_rows(weights, device), info, stats, options,
                                                                   quantizer.group_size, gptq);
  for (std::size_t e = 0; e < fed.size(); ++e) fed[e].plugin_loss = out[e].plugin_loss;  // codebook fit, tau 0
  if (times) times->feedback_seconds += seconds_since(start);
  return fed;
}

void score_kfac_entries(BlockLosses& losses, const std::vector<QuantizedBlock>& blocks, const BlockWeights& weights,
                        const BlockInfo& info, const LayerStats& stats, double damp, const torch::Device& device) {
  const torch::Tensor w = weight_rows(weights, device);
  std::optional<KfacMetric> metric;
  if (stats.captured) metric.emplace(stats, info.rows(), damp, device);
  for (std::size_t e = 0; e < blocks.size(); ++e) {
    LossEntry& entry = losses.entries[e];
    entry.plugin_loss = blocks[e].plugin_loss;
    entry.expected_loss = metric ? metric->loss(dequantized_rows(blocks[e], device) - w) : blocks[e].expected_loss;
  }
  for (std::size_t i = 1; i < losses.entries.size(); ++i) {
    const LossEntry& a = losses.entries[i - 1];
    const LossEntry& c = losses.entries[i];
    if (c.kind == a.kind && c.bits > a.bits && c.expected_loss > a.expected_loss) losses.monotone = false;
  }
}

}  // namespace bayesq

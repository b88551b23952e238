#include "bayesq/gptq/kfac.h"

#include <algorithm>
#include <optional>

#include <torch/torch.h>

#include "bayesq/common/timer.h"
#include "bayesq/gptq/feedback.h"
#include "bayesq/model/block_tensor.h"

namespace bayesq {

std::vector<float> kfac_precision(const LayerStats& s, const BlockInfo& info, double damp) {
  if (!s.captured) return std::vector<float>(static_cast<std::size_t>(info.numel()), 1.0f);
  const int64_t rows = info.rows(), cols = info.cols(), groups = s.groups();
  const torch::Tensor g = s.row_moment.defined() ? s.row_moment.cpu() : torch::ones({rows});
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

KfacDesigns design_kfac_options(const BlockWeights& weights,
                                const std::vector<std::pair<int, CodebookKind>>& choices,
                                const QuantizerParams& quantizer, bool captured) {
  const auto start = Clock::now();
  KfacDesigns out;
  out.designed = quantize_block_options(weights, choices, quantizer);
  // Note [Two grids]: a uniform grid designed for the weights as they are (range-optimised in the diagonal
  // metric) clips their extremes; the feedback then moves later weights by the earlier errors, beyond the clipped
  // range at 2-3 bits, where GPTQ's min-max grid keeps room for them. Each uniform option is therefore also fed
  // back on the min-max grid (the RTN grid, as GPTQ's reference builds it), and each row keeps whichever result
  // has the lower feedback objective d_r H d_r^T. Rows are independent given H, so the mixed block is exactly
  // what the feedback gives for those per-row grids; the cost is one more row stack per uniform option.
  if (captured)
    for (std::size_t e = 0; e < out.designed.size(); ++e)
      if (out.designed[e].kind == CodebookKind::uniform_asymmetric) {
        out.minmax.push_back(quantize_block_rtn(weights, out.designed[e].bits, quantizer.group_size));
        out.minmax_of.push_back(e);
      }
  out.seconds = seconds_since(start);
  return out;
}

std::vector<QuantizedBlock> feed_back_kfac_options(KfacDesigns designs, const BlockWeights& weights,
                                                   const BlockInfo& info, const LayerStats& stats,
                                                   const QuantizerParams& quantizer, const GptqParams& gptq,
                                                   const torch::Device& device, KfacOptionTimes* times,
                                                   std::vector<torch::Tensor>* device_codes) {
  if (times) times->design_seconds += designs.seconds;
  std::vector<QuantizedBlock>& out = designs.designed;
  if (device_codes) device_codes->clear();
  if (!stats.captured) return std::move(out);
  const auto start = Clock::now();
  const std::vector<QuantizedBlock>& minmax = designs.minmax;
  const std::vector<std::size_t>& minmax_of = designs.minmax_of;
  std::vector<FeedbackOption> options;
  for (const QuantizedBlock& plain : out) options.push_back({plain.bits, plain.kind, &plain.codebooks});
  for (std::size_t k = 0; k < minmax.size(); ++k) {
    options[minmax_of[k]].row_losses = true;  // the two grids of a uniform option are compared row by row
    options.push_back({minmax[k].bits, minmax[k].kind, &minmax[k].codebooks, /*row_losses=*/true});
  }
  const torch::Tensor w = weight_rows(weights, device);
  std::optional<KfacMetric> metric;
  if (!minmax.empty()) metric.emplace(stats, info.rows(), gptq.percdamp, device);
  std::vector<torch::Tensor> row_losses, codes;
  std::vector<QuantizedBlock> fed =
      quantize_with_feedback_options(w, info, stats, options, quantizer.group_size, gptq, nullptr,
                                     metric ? &*metric : nullptr, metric ? &row_losses : nullptr,
                                     device_codes ? &codes : nullptr);
  if (!minmax.empty()) {
    for (std::size_t k = 0; k < minmax.size(); ++k) {
      QuantizedBlock& chosen = fed[minmax_of[k]];
      const QuantizedBlock& other = fed[out.size() + k];
      // Where the min-max grid's row has the lower objective (never where either is NaN).
      const torch::Tensor plain_lower = row_losses[out.size() + k].lt(row_losses[minmax_of[k]]);
      const torch::Tensor lower = plain_lower.cpu();
      const bool* take = lower.data_ptr<bool>();
      const int64_t cols = chosen.cols, per_row = static_cast<int64_t>(chosen.codebooks.size()) / chosen.rows;
      for (int64_t r = 0; r < chosen.rows; ++r) {
        if (!take[r]) continue;
        if (!device_codes) std::copy_n(other.codes.begin() + r * cols, cols, chosen.codes.begin() + r * cols);
        std::copy_n(other.codebooks.begin() + r * per_row, per_row, chosen.codebooks.begin() + r * per_row);
      }
      if (device_codes)
        codes[minmax_of[k]] = torch::where(plain_lower.unsqueeze(1), codes[out.size() + k], codes[minmax_of[k]]);
    }
    fed.resize(out.size());
    codes.resize(device_codes ? out.size() : 0);
  }
  if (device_codes) {
    // The host's codes from the device's, one copy per option.
    for (std::size_t e = 0; e < fed.size(); ++e) {
      const torch::Tensor host = codes[e].to(torch::kCPU).contiguous();
      fed[e].codes.assign(host.data_ptr<uint8_t>(), host.data_ptr<uint8_t>() + host.numel());
    }
    *device_codes = std::move(codes);
  }
  for (std::size_t e = 0; e < fed.size(); ++e) fed[e].plugin_loss = out[e].plugin_loss;  // codebook fit, tau 0
  if (times) times->feedback_seconds += seconds_since(start);
  return fed;
}

std::vector<QuantizedBlock> kfac_option_blocks(const BlockWeights& weights, const BlockInfo& info,
                                               const LayerStats& stats,
                                               const std::vector<std::pair<int, CodebookKind>>& choices,
                                               const QuantizerParams& quantizer, const GptqParams& gptq,
                                               const torch::Device& device, KfacOptionTimes* times) {
  return feed_back_kfac_options(design_kfac_options(weights, choices, quantizer, stats.captured), weights, info,
                                stats, quantizer, gptq, device, times);
}

std::vector<double> predicted_option_losses(const BlockWeights& weights, const BlockInfo& info,
                                            const LayerStats& stats,
                                            const std::vector<std::pair<int, CodebookKind>>& choices,
                                            int64_t group_size, const GptqParams& gptq, const torch::Device& device,
                                            PredictionTimes* times) {
  PredictionTimes spent;
  auto part_start = Clock::now();
  std::vector<int> bits;  // the distinct widths, in the order first asked
  int widest_lloyd = 0;
  for (const auto& [b, kind] : choices) {
    if (std::find(bits.begin(), bits.end(), b) == bits.end()) bits.push_back(b);
    if (kind == CodebookKind::lloyd) widest_lloyd = std::max(widest_lloyd, b);
  }
  auto width_index = [&](int b) {
    return static_cast<std::size_t>(std::find(bits.begin(), bits.end(), b) - bits.begin());
  };
  std::vector<double> per_width;
  std::optional<KfacMetric> metric;
  torch::Tensor w;
  if (!stats.captured) {
    for (int b : bits) per_width.push_back(quantize_block_rtn(weights, b, group_size).expected_loss);
  } else {
    const std::vector<std::vector<Codebook>> grids = minmax_codebooks(weights, bits, group_size);
    std::vector<FeedbackOption> options;
    for (std::size_t k = 0; k < bits.size(); ++k)
      options.push_back({bits[k], CodebookKind::uniform_asymmetric, &grids[k]});
    spent.grids += seconds_since(part_start);
    part_start = Clock::now();
    w = weight_rows(weights, device);
    // The codes stay on the device and the losses come back in one copy: predictions score every width of every
    // block, and its codes are never written (the de-quantized values are dequantize()'s, bit for bit).
    std::vector<torch::Tensor> codes;
    const std::vector<QuantizedBlock> fed =
        quantize_with_feedback_options(w, info, stats, options, group_size, gptq, nullptr, nullptr, nullptr, &codes);
    spent.feedback += seconds_since(part_start);
    part_start = Clock::now();
    metric.emplace(stats, info.rows(), /*damp=*/0.0, device);
    std::vector<torch::Tensor> sums;
    for (std::size_t k = 0; k < fed.size(); ++k)
      sums.push_back(metric->weighted_sum(dequantized_rows_by_gather(fed[k], device, codes[k]) - w));
    const torch::Tensor host_sums = torch::stack(sums).to(torch::kCPU).contiguous();
    for (std::size_t k = 0; k < fed.size(); ++k)
      per_width.push_back(metric->loss_of_sum(host_sums.data_ptr<double>()[k]));
    spent.score += seconds_since(part_start);
    part_start = Clock::now();
  }
  // Lloyd tables wide enough to hold every group: the weights at their fp16 levels.
  const int64_t distinct =
      widest_lloyd > 0 ? max_distinct_per_group(weights, group_size, int64_t(1) << widest_lloyd) : 0;
  double held = 0.0;
  if (widest_lloyd > 0 && distinct <= (int64_t(1) << widest_lloyd)) {
    if (metric) {
      held = metric->loss(w.to(torch::kFloat16).to(torch::kFloat32) - w);
    } else {
      const std::vector<int64_t> shape{weights.rows, weights.cols};
      const torch::Tensor cpu = torch::from_blob(const_cast<float*>(weights.weights), shape);
      const torch::Tensor d = cpu.to(torch::kFloat16).to(torch::kFloat32) - cpu;
      const torch::Tensor p =
          weights.precision ? torch::from_blob(const_cast<float*>(weights.precision), shape) : torch::ones_like(d);
      held = 0.5 * (p.to(torch::kFloat64) * d.to(torch::kFloat64).square()).sum().item<double>();
    }
  }
  spent.grids += seconds_since(part_start);
  if (times) {
    times->grids += spent.grids;
    times->feedback += spent.feedback;
    times->score += spent.score;
  }
  std::vector<double> out;
  for (const auto& [b, kind] : choices)
    out.push_back(kind == CodebookKind::lloyd && distinct <= (int64_t(1) << b) && widest_lloyd > 0
                      ? std::min(held, per_width[width_index(b)])
                      : per_width[width_index(b)]);
  return out;
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

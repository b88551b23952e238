#include "bayesq/gptq/feedback.h"

#include <cstring>
#include <limits>

#include <torch/torch.h>

#include "bayesq/common/errors.h"

namespace bayesq {

namespace {

// Grouped convolutions with one codebook per row and rows no longer than one lazy block go through
// gptq_quantize_batched: one pass for all groups instead of a GPTQ run (and its kernel launches) per group, which
// for a depthwise convolution is one per channel.
bool batched_groups(int64_t conv_groups, int64_t codebooks_per_row, int64_t cols, const GptqParams& params) {
  return conv_groups > 1 && codebooks_per_row == 1 && cols <= params.block_size;
}

// Totals over the GPTQ runs of one block (one per convolution group).
void accumulate(GptqStats* total, const GptqStats& one) {
  if (!total) return;
  total->percdamp_used = std::max(total->percdamp_used, one.percdamp_used);
  total->damp_increases += one.damp_increases;
  total->dead_columns += one.dead_columns;
}

// The levels of several options' codebooks for one column group, stacked along rows ([options * rows, width]),
// each padded to `width` levels with +inf.
torch::Tensor stacked_levels_of(const std::vector<FeedbackOption>& options, int64_t first_row, int64_t rows,
                                int64_t groups, int64_t group, int64_t width, const torch::Device& device) {
  std::vector<float> values;
  values.reserve(options.size() * static_cast<std::size_t>(rows * width));
  for (const FeedbackOption& o : options)
    for (int64_t r = 0; r < rows; ++r) {
      const Codebook& cb = (*o.codebooks)[static_cast<std::size_t>((first_row + r) * groups + group)];
      values.insert(values.end(), cb.levels.begin(), cb.levels.end());
      values.insert(values.end(), static_cast<std::size_t>(width) - cb.levels.size(),
                    std::numeric_limits<float>::infinity());
    }
  return torch::from_blob(values.data(), {static_cast<int64_t>(options.size()) * rows, width}, torch::kFloat32)
      .clone()
      .to(device);
}

}  // namespace

std::vector<QuantizedBlock> quantize_with_feedback_options(const torch::Tensor& rows, const BlockInfo& info,
                                                           const LayerStats& stats,
                                                           const std::vector<FeedbackOption>& options,
                                                           int64_t group_size, const GptqParams& params,
                                                           GptqStats* gptq_stats, const KfacMetric* metric,
                                                           std::vector<torch::Tensor>* row_losses,
                                                           std::vector<torch::Tensor>* device_codes) {
  BQ_ASSERT(stats.captured, "no layer statistics for ", info.name);
  BQ_ASSERT(!row_losses || metric, "row losses of ", info.name, " asked for without a metric");
  const int64_t total_rows = rows.size(0), cols = rows.size(1);
  const int64_t conv_groups = stats.groups();
  const int64_t count = static_cast<int64_t>(options.size());
  BQ_ASSERT(total_rows % conv_groups == 0 && stats.input_moment[0].size(0) == cols, "layer stats of ", info.name,
            " do not fit its weights");
  const int64_t groups = groups_per_row(cols, group_size);
  int64_t width = 0;
  std::vector<QuantizedBlock> out(options.size());
  for (std::size_t e = 0; e < options.size(); ++e) {
    const FeedbackOption& o = options[e];
    BQ_ASSERT(o.codebooks && static_cast<int64_t>(o.codebooks->size()) == total_rows * groups, "option ", e,
              " of ", info.name, " has no codebooks for every row and group");
    width = std::max<int64_t>(width, int64_t(1) << o.bits);
    QuantizedBlock& q = out[e];
    q.bits = o.bits;
    q.kind = o.kind;
    q.rows = total_rows;
    q.cols = cols;
    q.group_size = effective_group_size(cols, group_size);
    q.codebooks = *o.codebooks;
    if (!device_codes) q.codes.resize(static_cast<std::size_t>(total_rows * cols));
  }
  if (options.empty()) return out;
  if (device_codes) {
    device_codes->clear();
    for (std::size_t e = 0; e < options.size(); ++e)
      device_codes->push_back(torch::empty({total_rows, cols}, rows.options().dtype(torch::kUInt8)));
  }
  if (row_losses) {
    row_losses->clear();
    for (const FeedbackOption& o : options)
      row_losses->push_back(o.row_losses ? torch::empty({total_rows}, rows.options().dtype(torch::kFloat64))
                                         : torch::Tensor());
  }
  const int64_t rows_per_group = total_rows / conv_groups;
  if (batched_groups(conv_groups, groups, cols, params)) {
    // Every convolution group and option in one batched pass: [groups, options x rows per group, cols]. (Only
    // rows no longer than one lazy block come here: small blocks, one pass.)
    const int64_t stacked_rows = count * rows_per_group;
    const torch::Tensor w = rows.reshape({conv_groups, 1, rows_per_group, cols})
                                .expand({conv_groups, count, rows_per_group, cols})
                                .reshape({conv_groups, stacked_rows, cols});
    std::vector<float> values;
    values.reserve(static_cast<std::size_t>(conv_groups * stacked_rows * width));
    for (int64_t cg = 0; cg < conv_groups; ++cg)
      for (const FeedbackOption& o : options)
        for (int64_t r = 0; r < rows_per_group; ++r) {
          const Codebook& cb = (*o.codebooks)[static_cast<std::size_t>(cg * rows_per_group + r)];
          values.insert(values.end(), cb.levels.begin(), cb.levels.end());
          values.insert(values.end(), static_cast<std::size_t>(width) - cb.levels.size(),
                        std::numeric_limits<float>::infinity());
        }
    const torch::Tensor levels =
        torch::from_blob(values.data(), {conv_groups, stacked_rows, width}, torch::kFloat32).clone().to(rows.device());
    const GptqResult result = gptq_quantize_batched(w, torch::stack(stats.input_moment), levels, params);
    accumulate(gptq_stats, result.stats);
    if (device_codes) {
      // [groups, options x rows, cols] -> per option [groups x rows, cols], rows in block order.
      const torch::Tensor codes = result.codes.reshape({conv_groups, count, rows_per_group, cols});
      for (int64_t e = 0; e < count; ++e)
        (*device_codes)[static_cast<std::size_t>(e)].copy_(codes.select(1, e).reshape({total_rows, cols}));
    } else {
      const torch::Tensor codes = result.codes.to(torch::kCPU).contiguous();
      const uint8_t* c = codes.data_ptr<uint8_t>();
      const std::size_t run = static_cast<std::size_t>(rows_per_group * cols);  // one option's rows of one group
      for (int64_t cg = 0; cg < conv_groups; ++cg)
        for (int64_t e = 0; e < count; ++e)
          std::memcpy(out[static_cast<std::size_t>(e)].codes.data() + cg * run, c + (cg * count + e) * run, run);
    }
    if (row_losses) {
      // [groups, options x rows, cols] -> per option [groups x rows, cols], rows in block order.
      const torch::Tensor q = result.quantized.reshape({conv_groups, count, rows_per_group, cols});
      for (int64_t e = 0; e < count; ++e)
        if (options[static_cast<std::size_t>(e)].row_losses)
          (*row_losses)[static_cast<std::size_t>(e)].copy_(
              metric->row_losses(q.select(1, e).reshape({total_rows, cols}) - rows));
    }
    return out;
  }
  // One pass per convolution group (every linear layer is one group) and chunk of its rows (Note [Stacked rows in
  // chunks]).
  const int64_t row_bytes = count * cols * static_cast<int64_t>(sizeof(float));
  const int64_t chunk = std::max<int64_t>(1, params.stack_bytes / std::max<int64_t>(1, row_bytes));
  for (int64_t cg = 0; cg < conv_groups; ++cg) {
    const int64_t group_begin = cg * rows_per_group, group_end = group_begin + rows_per_group;
    for (int64_t first = group_begin; first < group_end; first += chunk) {
      const int64_t n = std::min(chunk, group_end - first);
      const torch::Tensor slice = rows.slice(0, first, first + n);
      const torch::Tensor stacked = count == 1 ? slice : slice.repeat({count, 1});
      GptqGrid grid = [&](const torch::Tensor&, int64_t group) {
        return stacked_levels_of(options, first, n, groups, group, width, rows.device());
      };
      const GptqResult result = gptq_quantize(stacked, stats.input_moment[static_cast<std::size_t>(cg)],
                                              effective_group_size(cols, group_size), /*static_groups=*/true, grid,
                                              params);
      // Damping and dead columns are properties of H: counted once per group, not per chunk.
      if (first == group_begin) accumulate(gptq_stats, result.stats);
      if (device_codes) {
        for (int64_t e = 0; e < count; ++e)
          (*device_codes)[static_cast<std::size_t>(e)].slice(0, first, first + n).copy_(
              result.codes.slice(0, e * n, (e + 1) * n));
      } else {
        const torch::Tensor codes = result.codes.to(torch::kCPU).contiguous();
        const uint8_t* c = codes.data_ptr<uint8_t>();
        const std::size_t run = static_cast<std::size_t>(n * cols);
        for (int64_t e = 0; e < count; ++e)
          std::memcpy(out[static_cast<std::size_t>(e)].codes.data() + first * cols, c + e * run, run);
      }
      if (row_losses)
        for (int64_t e = 0; e < count; ++e)
          if (options[static_cast<std::size_t>(e)].row_losses)
            (*row_losses)[static_cast<std::size_t>(e)].slice(0, first, first + n).copy_(
                metric->group_row_losses(result.quantized.slice(0, e * n, (e + 1) * n) - slice, cg));
    }
  }
  return out;
}

QuantizedBlock quantize_with_feedback(const torch::Tensor& rows, const BlockInfo& info, const LayerStats& stats,
                                      int bits, CodebookKind kind, int64_t group_size,
                                      const std::vector<Codebook>* codebooks, const GptqParams& params,
                                      GptqStats* gptq_stats) {
  BQ_ASSERT(stats.captured, "no layer statistics for ", info.name);
  if (codebooks)
    return quantize_with_feedback_options(rows, info, stats, {{bits, kind, codebooks}}, group_size, params, gptq_stats)
        .front();
  const int64_t total_rows = rows.size(0), cols = rows.size(1);
  const int64_t conv_groups = stats.groups();
  BQ_ASSERT(total_rows % conv_groups == 0 && stats.input_moment[0].size(0) == cols, "layer stats of ", info.name,
            " do not fit its weights");
  QuantizedBlock q;
  q.bits = bits;
  q.kind = CodebookKind::uniform_asymmetric;
  q.rows = total_rows;
  q.cols = cols;
  q.group_size = effective_group_size(cols, group_size);
  const int64_t groups = groups_per_row(cols, group_size);
  q.codebooks.resize(static_cast<std::size_t>(total_rows * groups));
  q.codes.resize(static_cast<std::size_t>(total_rows * cols));
  const int64_t rows_per_group = total_rows / conv_groups;
  const bool static_groups = params.act_order && q.group_size < cols;
  if (batched_groups(conv_groups, groups, cols, params)) {
    // All convolution groups in one batched pass, each row on its min-max grid of the original weights.
    const auto scale_offset = minmax_scale_offset(rows, bits, /*fp16_metadata=*/true);
    const torch::Tensor scale = scale_offset.first.cpu(), offset = scale_offset.second.cpu();
    for (int64_t r = 0; r < total_rows; ++r)
      q.codebooks[static_cast<std::size_t>(r)] =
          Codebook::uniform_asymmetric(bits, scale[r].item<float>(), offset[r].item<float>());
    const torch::Tensor levels =
        uniform_levels(scale_offset.first, scale_offset.second, bits).reshape({conv_groups, rows_per_group, -1});
    const GptqResult result = gptq_quantize_batched(rows.reshape({conv_groups, rows_per_group, cols}),
                                                    torch::stack(stats.input_moment), levels, params);
    accumulate(gptq_stats, result.stats);
    const torch::Tensor codes = result.codes.to(torch::kCPU).contiguous();
    const uint8_t* c = codes.data_ptr<uint8_t>();
    for (int64_t i = 0; i < total_rows * cols; ++i) q.codes[static_cast<std::size_t>(i)] = static_cast<uint8_t>(c[i]);
    return q;
  }

  for (int64_t cg = 0; cg < conv_groups; ++cg) {
    const int64_t first = cg * rows_per_group;
    GptqGrid grid = [&](const torch::Tensor& group_weights, int64_t group) {
      const auto scale_offset = minmax_scale_offset(group_weights, bits, /*fp16_metadata=*/true);
      const torch::Tensor scale = scale_offset.first.cpu(), offset = scale_offset.second.cpu();
      for (int64_t r = 0; r < rows_per_group; ++r)
        q.codebooks[static_cast<std::size_t>((first + r) * groups + group)] =
            Codebook::uniform_asymmetric(bits, scale[r].item<float>(), offset[r].item<float>());
      return uniform_levels(scale_offset.first, scale_offset.second, bits);
    };
    GptqResult result = gptq_quantize(rows.slice(0, first, first + rows_per_group),
                                      stats.input_moment[static_cast<std::size_t>(cg)], q.group_size, static_groups,
                                      grid, params);
    accumulate(gptq_stats, result.stats);
    const torch::Tensor codes = result.codes.to(torch::kCPU).contiguous();
    const uint8_t* c = codes.data_ptr<uint8_t>();
    for (int64_t i = 0; i < rows_per_group * cols; ++i)
      q.codes[static_cast<std::size_t>(first * cols + i)] = static_cast<uint8_t>(c[i]);
  }
  return q;
}

KfacMetric::KfacMetric(const LayerStats& stats, int64_t rows, double damp, const torch::Device& device)
    : examples_(stats.examples) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> damped;
  for (const torch::Tensor& a : stats.input_moment) {
    const torch::Tensor a64 = a.to(device, torch::kFloat64);
    damped.push_back(a64 + damp * a64.diagonal().mean() * torch::eye(a64.size(0), a64.options()));
  }
  h_ = torch::stack(damped);  // [groups, cols, cols]
  const int64_t groups = h_.size(0);
  g_ = (stats.row_moment.defined() ? stats.row_moment.to(device, torch::kFloat64)
                                   : torch::ones({rows}, torch::TensorOptions(torch::kFloat64).device(device)))
           .reshape({groups, rows / groups});
}

double KfacMetric::loss(const torch::Tensor& delta_rows) const {
  return loss_of_sum(weighted_sum(delta_rows).item<double>());
}

torch::Tensor KfacMetric::weighted_sum(const torch::Tensor& delta_rows) const {
  torch::NoGradGuard no_grad;
  const int64_t groups = h_.size(0), cols = h_.size(1);
  const torch::Tensor d = delta_rows.to(h_.device(), torch::kFloat64).reshape({groups, -1, cols});
  const torch::Tensor per_row = (torch::bmm(d, h_) * d).sum(2);  // [groups, rows per group]
  return (g_ * per_row).sum();
}

torch::Tensor KfacMetric::group_row_losses(const torch::Tensor& delta_rows, int64_t group) const {
  torch::NoGradGuard no_grad;
  const torch::Tensor d = delta_rows.to(h_.device(), torch::kFloat64);
  return (torch::mm(d, h_[group]) * d).sum(1);
}

torch::Tensor KfacMetric::row_losses(const torch::Tensor& delta_rows) const {
  torch::NoGradGuard no_grad;
  const int64_t groups = h_.size(0), cols = h_.size(1);
  const torch::Tensor d = delta_rows.to(h_.device(), torch::kFloat64).reshape({groups, -1, cols});
  return (torch::bmm(d, h_) * d).sum(2).reshape({-1});
}

double kfac_loss(const torch::Tensor& delta_rows, const BlockInfo& info, const LayerStats& stats, double damp) {
  (void)info;
  return KfacMetric(stats, delta_rows.size(0), damp, delta_rows.device()).loss(delta_rows);
}

}  // namespace bayesq

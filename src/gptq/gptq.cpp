#include "bayesq/gptq/gptq.h"

#include <torch/torch.h>

#include "bayesq/common/errors.h"
#include "bayesq/gptq/feedback_block.h"

#ifdef BAYESQ_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace bayesq {

namespace {

// sqrt of float32's epsilon: below this ratio of Cholesky pivots, cond(H) exceeds 1 / epsilon.
constexpr double kMinPivotRatio = 3.5e-4;

#ifdef BAYESQ_CUDA_KERNELS
// On the tensors' device and its current stream, so that libtorch's own operations order around the kernel.
void launch_feedback_block_cuda(const FeedbackBlockView& view, const torch::Device& device) {
  const c10::cuda::CUDAGuard guard(device);
  feedback_block_cuda(view, static_cast<void*>(c10::cuda::getCurrentCUDAStream(device.index()).stream()));
}
#endif

}  // namespace

FedBackBlock feed_back_block(const torch::Tensor& w1, const torch::Tensor& hinv, const torch::Tensor& levels,
                             const std::vector<int32_t>& column_slot, bool host) {
  const int64_t problems = w1.size(0), rows = w1.size(1), count = w1.size(2);
  BQ_ASSERT(hinv.dim() == 3 && hinv.size(0) == problems && hinv.size(1) == count && hinv.size(2) == count,
            "Hinv block ", hinv.sizes(), " for W ", w1.sizes());
  BQ_ASSERT(levels.dim() == 4 && levels.size(1) == problems && levels.size(2) == rows && levels.is_contiguous(),
            "levels ", levels.sizes(), " for W ", w1.sizes());
  BQ_ASSERT(column_slot.empty() || static_cast<int64_t>(column_slot.size()) == count, "column slots");
  for (int32_t slot : column_slot) BQ_ASSERT(slot >= 0 && slot < levels.size(0), "slot ", slot);
#ifdef BAYESQ_CUDA_KERNELS
  const bool on_device = w1.is_cuda() && !host;
#else
  const bool on_device = false;
#endif
  const torch::Device compute_device = on_device ? w1.device() : torch::Device(torch::kCPU);
  torch::Tensor work, h = hinv.stride(2) == 1 ? hinv : hinv.contiguous(), l = levels;
  if (on_device) {
    work = w1.transpose(1, 2).contiguous();  // [P, count, rows]
  } else {
    // [P, rows, count], a copy the loop may overwrite.
    work = w1.to(torch::kCPU, torch::kFloat32, false, /*copy=*/true, torch::MemoryFormat::Contiguous);
    h = h.to(torch::kCPU);
    l = levels.to(torch::kCPU);
  }
  torch::Tensor quantized = torch::empty_like(work), error = torch::empty_like(work);
  torch::Tensor codes = torch::empty(work.sizes(), work.options().dtype(torch::kByte));
  torch::Tensor slots;
  if (!column_slot.empty())
    slots = torch::from_blob(const_cast<int32_t*>(column_slot.data()), {count}, torch::kInt32).to(compute_device);
  FeedbackBlockView view;
  view.problems = problems;
  view.rows = rows;
  view.count = count;
  view.stride_problem = work.stride(0);
  view.stride_row = on_device ? work.stride(2) : work.stride(1);
  view.stride_col = on_device ? work.stride(1) : work.stride(2);
  view.w = work.data_ptr<float>();
  view.quantized = quantized.data_ptr<float>();
  view.error = error.data_ptr<float>();
  view.codes = codes.data_ptr<uint8_t>();
  view.hinv = h.data_ptr<float>();
  view.hinv_problem = h.stride(0);
  view.hinv_ld = h.stride(1);
  view.levels = l.data_ptr<float>();
  view.width = l.size(3);
  view.column_slot = slots.defined() ? slots.data_ptr<int32_t>() : nullptr;
  if (on_device) {
#ifdef BAYESQ_CUDA_KERNELS
    launch_feedback_block_cuda(view, w1.device());
#endif
    return {quantized.transpose(1, 2), error.transpose(1, 2), codes.transpose(1, 2)};
  }
  BQ_ASSERT(h.stride(2) == 1, "Hinv block on the host");
  feedback_block_host(view);
  return {quantized.to(w1.device()), error.to(w1.device()), codes.to(w1.device())};
}

std::pair<torch::Tensor, torch::Tensor> minmax_scale_offset(const torch::Tensor& group_weights, int bits,
                                                           bool fp16_metadata) {
  const torch::Tensor w = group_weights.to(torch::kFloat32);
  const double maxq = double((1 << bits) - 1);
  torch::Tensor lo = torch::clamp_max(std::get<0>(w.min(1)), 0.0);
  torch::Tensor hi = torch::clamp_min(std::get<0>(w.max(1)), 0.0);
  const torch::Tensor degenerate = (lo == 0) & (hi == 0);
  lo = torch::where(degenerate, torch::full_like(lo, -1.0), lo);
  hi = torch::where(degenerate, torch::full_like(hi, 1.0), hi);
  torch::Tensor scale = (hi - lo) / maxq;
  const torch::Tensor zero = torch::round(-lo / scale);
  torch::Tensor offset = -scale * zero;
  if (fp16_metadata) {
    scale = scale.to(torch::kHalf).to(torch::kFloat32);
    offset = offset.to(torch::kHalf).to(torch::kFloat32);
  }
  return {scale, offset};
}

torch::Tensor uniform_levels(const torch::Tensor& scale, const torch::Tensor& offset, int bits) {
  const torch::Tensor k = torch::arange(1 << bits, scale.options());
  // float32 multiply then add: the order Codebook and the exported graph use.
  return k.unsqueeze(0) * scale.unsqueeze(1) + offset.unsqueeze(1);
}

torch::Tensor minmax_levels(const torch::Tensor& group_weights, int bits, bool fp16_metadata) {
  const auto so = minmax_scale_offset(group_weights, bits, fp16_metadata);
  return uniform_levels(so.first, so.second, bits);
}

GptqResult gptq_quantize(const torch::Tensor& weights, const torch::Tensor& hessian, int64_t group_size,
                         bool static_groups, const GptqGrid& grid, const GptqParams& params) {
  torch::NoGradGuard no_grad;
  torch::Tensor W = weights.to(torch::kFloat32).clone();
  torch::Tensor H = hessian.to(torch::kFloat32).clone();
  const int64_t rows = W.size(0), cols = W.size(1);
  BQ_ASSERT(H.size(0) == cols && H.size(1) == cols, "H is ", H.sizes(), " for ", cols, " columns");
  const int64_t group = group_size <= 0 || group_size >= cols ? cols : group_size;
  GptqResult result;

  // Per-row grids (one group) come from the weights before dead columns are zeroed, as in the reference.
  torch::Tensor row_levels;
  if (group == cols) row_levels = grid(W, 0);

  const torch::Tensor dead = H.diagonal() == 0;
  result.stats.dead_columns = dead.sum().item<int64_t>();
  if (result.stats.dead_columns > 0) {
    H.diagonal().masked_fill_(dead, 1.0);
    W.index_put_({torch::indexing::Slice(), dead}, 0.0);
  }

  // Static grids come from the original (dead-zeroed) weights, one per group of original columns.
  std::vector<torch::Tensor> levels(static_cast<std::size_t>((cols + group - 1) / group));
  if (static_groups && group < cols)
    for (int64_t g = 0; g * group < cols; ++g)
      levels[static_cast<std::size_t>(g)] = grid(W.slice(1, g * group, std::min(cols, (g + 1) * group)), g);

  torch::Tensor perm;
  if (params.act_order) {
    perm = torch::argsort(H.diagonal(), /*dim=*/0, /*descending=*/true);
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
  } else {
    perm = torch::arange(cols, torch::TensorOptions().dtype(torch::kLong).device(W.device()));
  }
  const torch::Tensor perm_cpu = perm.cpu().contiguous();  // one copy: two .cpu() calls are two buffers on CUDA
  const std::vector<int64_t> order(perm_cpu.data_ptr<int64_t>(), perm_cpu.data_ptr<int64_t>() + cols);

  // Hinv = upper Cholesky factor of H^-1, damping grown tenfold whenever a factorisation fails.
  const double mean_diag = H.diagonal().mean().item<double>();
  double percdamp = params.percdamp;
  torch::Tensor Hinv;
  for (int attempt = 0;; ++attempt) {
    torch::Tensor damped = H.clone();
    damped.diagonal().add_(percdamp * mean_diag);
    auto [L, info] = torch::linalg_cholesky_ex(damped);
    // A factorisation that "succeeds" on a numerically singular H (pivot ratio near float32 precision) gives
    // useless updates: treat it as a failure too.
    const torch::Tensor pivots = L.diagonal();
    const bool well_conditioned = info.item<int64_t>() == 0 &&
                                  (pivots.min() / pivots.max()).item<double>() > kMinPivotRatio;
    if (well_conditioned) {
      auto [U, info_inverse] = torch::linalg_cholesky_ex(torch::cholesky_inverse(L), /*upper=*/true);
      if (info_inverse.item<int64_t>() == 0 && torch::isfinite(U).all().item<bool>()) {
        Hinv = U.contiguous();  // LAPACK returns it column-major; the feedback reads rows
        break;
      }
    }
    BQ_CHECK(attempt < params.max_damp_steps, ExitCode::numerical, "GPTQ: the layer Hessian is not positive "
             "definite even with damping ", percdamp, " x mean(diag H)");
    percdamp = percdamp > 0.0 ? percdamp * 10.0 : 1e-6;
    ++result.stats.damp_increases;
  }
  result.stats.percdamp_used = percdamp;

  torch::Tensor Q = torch::zeros_like(W);
  // uint8: at most 2^8 levels, and an eighth of int64's memory (the stacked options of a 20k-token table are
  // 420k rows).
  torch::Tensor codes = torch::zeros({rows, cols}, W.options().dtype(torch::kByte));
  torch::Tensor current_levels;
  int64_t current_group = -1;
  for (int64_t i1 = 0; i1 < cols; i1 += params.block_size) {
    const int64_t i2 = std::min(i1 + params.block_size, cols);
    const int64_t count = i2 - i1;
    // The grids of this lazy block's columns, as level slots. Every grid is known before the block runs: static
    // and per-row grids are fixed, and a dynamic grid comes from the outer W, which holds the updates of earlier
    // lazy blocks only (reference behaviour), so it can be read before this block's loop.
    std::vector<torch::Tensor> slot_levels;
    std::vector<int32_t> column_slot(static_cast<std::size_t>(count), 0);
    std::vector<int64_t> static_slot;  // static group -> slot in this block, -1 when unused so far
    if (group == cols) {
      slot_levels.push_back(row_levels);
    } else {
      if (static_groups) static_slot.assign(levels.size(), -1);
      for (int64_t i = 0; i < count; ++i) {
        const int64_t column = i1 + i;
        if (static_groups) {
          const std::size_t g = static_cast<std::size_t>(order[static_cast<std::size_t>(column)] / group);
          if (static_slot[g] < 0) {
            static_slot[g] = static_cast<int64_t>(slot_levels.size());
            slot_levels.push_back(levels[g]);
          }
          column_slot[static_cast<std::size_t>(i)] = static_cast<int32_t>(static_slot[g]);
          continue;
        }
        if (column % group == 0 || current_group < 0) {
          current_levels = grid(W.slice(1, column, std::min(cols, column + group)), column / group);
          current_group = column / group;
          slot_levels.push_back(current_levels);
        } else if (i == 0) {
          slot_levels.push_back(current_levels);  // a group that began in an earlier lazy block
        }
        column_slot[static_cast<std::size_t>(i)] = static_cast<int32_t>(slot_levels.size()) - 1;
      }
    }
    for (const torch::Tensor& l : slot_levels)
      BQ_ASSERT(l.dim() == 2 && l.size(0) == rows && l.size(1) == slot_levels.front().size(1),
                "a grid of ", l.sizes(), " for ", rows, " rows");
    const torch::Tensor block_levels =
        (slot_levels.size() == 1 ? slot_levels.front().unsqueeze(0) : torch::stack(slot_levels))
            .to(W.device(), torch::kFloat32)
            .contiguous()
            .unsqueeze(1);  // [slots, 1 problem, rows, width]
    const FedBackBlock fed = feed_back_block(W.slice(1, i1, i2).unsqueeze(0),
                                             Hinv.slice(0, i1, i2).slice(1, i1, i2).unsqueeze(0), block_levels,
                                             group == cols ? std::vector<int32_t>{} : column_slot);
    Q.slice(1, i1, i2).copy_(fed.quantized.squeeze(0));
    codes.slice(1, i1, i2).copy_(fed.codes.squeeze(0));
    if (i2 < cols) W.slice(1, i2).sub_(fed.error.squeeze(0).matmul(Hinv.slice(0, i1, i2).slice(1, i2)));
  }
  if (params.act_order) {
    const torch::Tensor inverse = torch::argsort(perm);
    Q = Q.index_select(1, inverse);
    codes = codes.index_select(1, inverse);
  }
  result.quantized = Q;
  result.codes = codes;
  return result;
}

GptqResult gptq_quantize_batched(const torch::Tensor& weights, const torch::Tensor& hessians,
                                 const torch::Tensor& levels, const GptqParams& params) {
  torch::NoGradGuard no_grad;
  torch::Tensor W = weights.to(torch::kFloat32).clone();
  torch::Tensor H = hessians.to(torch::kFloat32).clone();
  const int64_t problems = W.size(0), rows = W.size(1), cols = W.size(2);
  BQ_ASSERT(H.size(0) == problems && H.size(1) == cols && H.size(2) == cols, "H is ", H.sizes(), " for W ", W.sizes());
  BQ_ASSERT(levels.size(0) == problems && levels.size(1) == rows, "levels ", levels.sizes(), " for W ", W.sizes());
  GptqResult result;

  const torch::Tensor dead = H.diagonal(0, 1, 2) == 0;  // [G, cols]
  result.stats.dead_columns = dead.sum().item<int64_t>();
  if (result.stats.dead_columns > 0) {
    H.diagonal(0, 1, 2).masked_fill_(dead, 1.0);
    W.masked_fill_(dead.unsqueeze(1).expand_as(W), 0.0);
  }
  torch::Tensor perm;
  if (params.act_order) {
    perm = torch::argsort(H.diagonal(0, 1, 2), /*dim=*/1, /*descending=*/true);  // [G, cols]
    W = W.gather(2, perm.unsqueeze(1).expand({problems, rows, cols}));
    H = H.gather(1, perm.unsqueeze(2).expand({problems, cols, cols}))
            .gather(2, perm.unsqueeze(1).expand({problems, cols, cols}));
  }

  // Upper Cholesky factor of each H^-1; a problem whose factorisation fails or is ill-conditioned (pivot ratio,
  // as in gptq_quantize) gets ten times more damping, the others keep theirs.
  // Damping in double, added to the float diagonal: the arithmetic of gptq_quantize, so that one problem gives
  // the same codes either way.
  const torch::Tensor mean_diag = H.diagonal(0, 1, 2).mean(1).to(torch::kFloat64);  // [G]
  torch::Tensor percdamp = torch::full({problems}, params.percdamp, mean_diag.options());
  torch::Tensor Hinv = torch::zeros_like(H);
  torch::Tensor pending = torch::ones({problems}, mean_diag.options().dtype(torch::kBool));
  const torch::Tensor eye = torch::eye(cols, H.options());
  for (int attempt = 0;; ++attempt) {
    torch::Tensor damped = H.clone();
    damped.diagonal(0, 1, 2).add_((percdamp * mean_diag).to(torch::kFloat32).unsqueeze(1));
    auto [L, info] = torch::linalg_cholesky_ex(damped);
    const torch::Tensor pivots = L.diagonal(0, 1, 2);
    torch::Tensor ok = (info == 0) & (std::get<0>(pivots.min(1)) / std::get<0>(pivots.max(1)) > kMinPivotRatio);
    const torch::Tensor safe_L = torch::where(ok.view({problems, 1, 1}), L, eye.expand_as(L));
    auto [U, info_inverse] = torch::linalg_cholesky_ex(torch::cholesky_inverse(safe_L), /*upper=*/true);
    ok = ok & (info_inverse == 0) & torch::isfinite(U).all(2).all(1);
    const torch::Tensor take = ok & pending;
    Hinv = torch::where(take.view({problems, 1, 1}), U, Hinv);
    pending = pending & ~ok;
    if (!pending.any().item<bool>()) break;
    BQ_CHECK(attempt < params.max_damp_steps, ExitCode::numerical, "GPTQ: a layer Hessian is not positive "
             "definite even with damping ", percdamp.max().item<double>(), " x mean(diag H)");
    percdamp = torch::where(pending, torch::where(percdamp > 0, percdamp * 10.0, torch::full_like(percdamp, 1e-6)),
                            percdamp);
    ++result.stats.damp_increases;
  }
  result.stats.percdamp_used = percdamp.max().item<double>();

  // Every column of every problem in one pass: the rows are short (cols <= a lazy block), so the whole row is
  // one lazy block.
  const FedBackBlock fed = feed_back_block(W, Hinv.contiguous(), levels.to(W.device(), torch::kFloat32).contiguous().unsqueeze(0), {});
  torch::Tensor Q = fed.quantized.contiguous();
  torch::Tensor codes = fed.codes.contiguous();
  if (params.act_order) {
    const torch::Tensor inverse = torch::argsort(perm, /*dim=*/1, /*descending=*/false).unsqueeze(1).expand({problems, rows, cols});
    Q = Q.gather(2, inverse);
    codes = codes.gather(2, inverse);
  }
  result.quantized = Q;
  result.codes = codes;
  return result;
}

}  // namespace bayesq

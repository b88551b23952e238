#include "bayesq/gptq/gptq.h"

#include <torch/torch.h>

#include "bayesq/common/errors.h"

namespace bayesq {

namespace {

// sqrt of float32's epsilon: below this ratio of Cholesky pivots, cond(H) exceeds 1 / epsilon.
constexpr double kMinPivotRatio = 3.5e-4;

// Nearest of each row's ascending levels: codes and values for one column w [rows].
std::pair<torch::Tensor, torch::Tensor> round_column(const torch::Tensor& w, const torch::Tensor& levels) {
  const torch::Tensor boundaries = 0.5 * (levels.slice(1, 1) + levels.slice(1, 0, -1));
  // searchsorted (left): number of boundaries < w, so an exact tie goes to the lower level.
  const torch::Tensor codes = torch::searchsorted(boundaries.contiguous(), w.unsqueeze(1).contiguous()).squeeze(1);
  const torch::Tensor q = levels.gather(1, codes.unsqueeze(1)).squeeze(1);
  return {codes, q};
}

}  // namespace

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
        Hinv = U;
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
    torch::Tensor W1 = W.slice(1, i1, i2).clone();
    torch::Tensor Q1 = torch::zeros_like(W1);
    torch::Tensor Err1 = torch::zeros_like(W1);
    const torch::Tensor Hinv1 = Hinv.slice(0, i1, i2).slice(1, i1, i2);
    // The pivots of this lazy block, read once: a .item() per column would wait for the device every column.
    const torch::Tensor pivots = Hinv1.diagonal().to(torch::kCPU, torch::kFloat64).contiguous();
    const double* pivot = pivots.data_ptr<double>();
    for (int64_t i = 0; i < count; ++i) {
      const int64_t column = i1 + i;
      const int64_t g = order[static_cast<std::size_t>(column)] / group;
      if (group == cols) {
        current_levels = row_levels;
      } else if (static_groups) {
        current_levels = levels[static_cast<std::size_t>(g)];
      } else if (column % group == 0 || current_group < 0) {
        // Dynamic grid from the outer W, which holds the updates of earlier lazy blocks (reference behaviour).
        current_levels = grid(W.slice(1, column, std::min(cols, column + group)), column / group);
        current_group = column / group;
      }
      const torch::Tensor w = W1.select(1, i);
      const double d = pivot[i];
      auto [code, q] = round_column(w, current_levels);
      Q1.select(1, i).copy_(q);
      codes.select(1, column).copy_(code);
      const torch::Tensor err = (w - q) / d;
      W1.slice(1, i).sub_(err.unsqueeze(1).matmul(Hinv1.select(0, i).slice(0, i).unsqueeze(0)));
      Err1.select(1, i).copy_(err);
    }
    Q.slice(1, i1, i2).copy_(Q1);
    if (i2 < cols) W.slice(1, i2).sub_(Err1.matmul(Hinv.slice(0, i1, i2).slice(1, i2)));
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

  const torch::Tensor flat_levels = levels.to(torch::kFloat32).reshape({problems * rows, -1}).contiguous();
  torch::Tensor Q = torch::zeros_like(W);
  torch::Tensor codes = torch::zeros({problems, rows, cols}, W.options().dtype(torch::kByte));  // as above
  const torch::Tensor pivots = Hinv.diagonal(0, 1, 2);  // [G, cols]
  for (int64_t j = 0; j < cols; ++j) {
    const torch::Tensor w = W.select(2, j);  // [G, rows]
    auto [code, q] = round_column(w.reshape({-1}), flat_levels);
    code = code.view({problems, rows});
    q = q.view({problems, rows});
    Q.select(2, j).copy_(q);
    codes.select(2, j).copy_(code);
    const torch::Tensor err = (w - q) / pivots.select(1, j).unsqueeze(1);  // [G, rows]
    // W[:, :, j:] -= err (x) Hinv[:, j, j:], as gptq_quantize's update within a lazy block.
    W.slice(2, j).sub_(err.unsqueeze(2) * Hinv.select(1, j).slice(1, j).unsqueeze(1));
  }
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

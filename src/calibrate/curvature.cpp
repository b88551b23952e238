#include "bayesq/calibrate/curvature.h"

#include <chrono>
#include <cmath>

#include <torch/torch.h>

#include "bayesq/common/errors.h"
#include "bayesq/common/log.h"
#include "bayesq/common/progress.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/forward.h"

namespace bayesq {

namespace {

enum class LossKind { kl, ce, mse };

LossKind loss_kind(const std::string& name, bool has_labels) {
  if (name == "auto" || name == "kl") return LossKind::kl;
  if (name == "mse") return LossKind::mse;
  if (name == "ce") {
    BQ_CHECK(has_labels, ExitCode::usage, "--curvature-loss ce needs labels in the calibration file");
    return LossKind::ce;
  }
  BQ_FAIL(ExitCode::usage, "unknown curvature loss '", name, "' (expected auto, kl, ce or mse)");
}

const char* loss_name(LossKind k) { return k == LossKind::kl ? "kl" : k == LossKind::ce ? "ce" : "mse"; }

// Mean over the batch's examples of the curvature loss; each example sums over any extra output positions.
torch::Tensor curvature_loss(const torch::Tensor& output, LossKind kind, const torch::Tensor& labels) {
  const int64_t batch = output.size(0);
  const torch::Tensor z = output.to(torch::kFloat32);
  if (kind == LossKind::mse) return 0.5 * (z - z.detach()).pow(2).sum() / batch;
  const int64_t classes = z.size(-1);
  const torch::Tensor log_p = torch::log_softmax(z.reshape({-1, classes}), 1);
  if (kind == LossKind::ce) {
    BQ_CHECK(z.dim() == 2, ExitCode::usage, "--curvature-loss ce needs [batch, classes] logits");
    BQ_CHECK(labels.dim() == 1, ExitCode::usage, "--curvature-loss ce needs one label per example");
    const torch::Tensor used = labels.ne(kIgnoredLabel);  // ignored examples add nothing
    return -(log_p.gather(1, labels.clamp_min(0).unsqueeze(1)).squeeze(1) * used).sum() / batch;
  }
  // KL(p_hat || p_theta) with p_hat the detached prediction: value 0 and gradient 0 at theta_hat, Hessian = GGN.
  const torch::Tensor log_p_hat = log_p.detach();
  return (log_p_hat.exp() * (log_p_hat - log_p)).sum() / batch;
}

struct Accumulator {
  torch::Tensor diagonal;                 // on the device, float32, the block's shape
  double trace_weighted = 0.0;            // sum_j (B_j / N) mean_p t_pj
  double trace_variance = 0.0;            // sum_j (B_j / N)^2 var_p(t_pj) / P
  int64_t samples = 0;
  std::vector<double> per_example_traces; // fisher: t_n = sum_i g_ni^2
};

}  // namespace

CurvatureSet estimate_curvature(torch::jit::Module& module, const BlockIndex& index, const DataFile& data,
                                const CurvatureParams& params, const Compute& compute,
                                const std::string& model_path) {
  const auto start = std::chrono::steady_clock::now();
  BQ_CHECK(params.probes >= 1, ExitCode::usage, "--probes must be >= 1");
  BQ_CHECK(compute.batch_size >= 1, ExitCode::usage, "--batch-size must be >= 1");
  const LossKind kind = loss_kind(params.loss, data.has_labels());
  const torch::Device device = compute.device;
  bool fisher = params.estimator == CurvatureEstimator::fisher;
  std::string notes;
  const int64_t n = compute.examples(data.size());

  module.eval();
  module.to(device);
  check_input_count(module, data, model_path);
  torch::manual_seed(compute.seed);  // probes and sampled labels come from the default generators, in a fixed order

  // Only block weights need gradients; every other parameter is frozen for the pass and restored afterwards.
  std::vector<std::pair<torch::Tensor, bool>> saved;
  for (const auto& p : module.named_parameters(true)) {
    saved.emplace_back(p.value, p.value.requires_grad());
    p.value.set_requires_grad(false);
  }
  struct Restore {
    std::vector<std::pair<torch::Tensor, bool>>& saved;
    ~Restore() {
      for (auto& s : saved) s.first.set_requires_grad(s.second);
    }
  } restore{saved};

  std::vector<std::size_t> active;  // blocks with a gradient path
  std::vector<torch::Tensor> weights;
  std::vector<Accumulator> acc(index.blocks.size());
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    const torch::Tensor w = find_tensor(module, index.blocks[b].name);
    acc[b].diagonal = torch::zeros(w.sizes(), w.options().dtype(torch::kFloat32));
    if (!index.blocks[b].autograd_visible) continue;
    active.push_back(b);
    weights.push_back(w);
  }
  for (auto& w : weights) w.set_requires_grad(true);

  // One batch's contribution; returns false when autograd cannot differentiate the model (e.g. a fused inference
  // operator on the gradient path of some active block).
  auto process = [&](int64_t begin, int64_t end) -> bool {
    const double share = double(end - begin) / double(n);
    try {
      if (!fisher) {
        const torch::Tensor output = select_output(forward_batch(module, data, begin, end, device, model_path),
                                                   compute.output);
        if (begin == 0 && kind == LossKind::ce) check_labels(data, output.size(-1));
        const torch::Tensor loss =
            curvature_loss(output, kind, kind == LossKind::ce ? data.labels(begin, end, device) : torch::Tensor());
        const auto grads = torch::autograd::grad({loss}, weights, {}, /*retain_graph=*/true, /*create_graph=*/true);
        std::vector<std::vector<double>> traces(weights.size());
        for (int64_t p = 0; p < params.probes; ++p) {
          std::vector<torch::Tensor> probes;
          torch::Tensor dot = torch::zeros({}, grads[0].options());
          for (std::size_t k = 0; k < weights.size(); ++k) {
            probes.push_back(torch::randint(0, 2, weights[k].sizes(), weights[k].options().dtype(torch::kFloat32))
                                 .mul_(2)
                                 .sub_(1));
            dot = dot + (grads[k].to(torch::kFloat32) * probes[k]).sum();
          }
          const auto hv = torch::autograd::grad({dot}, weights, {}, /*retain_graph=*/true, /*create_graph=*/false,
                                                /*allow_unused=*/true);
          for (std::size_t k = 0; k < weights.size(); ++k) {
            if (!hv[k].defined()) {
              traces[k].push_back(0.0);
              continue;
            }
            const torch::Tensor product = probes[k] * hv[k].to(torch::kFloat32);
            acc[active[k]].diagonal.add_(product, share / double(params.probes));
            traces[k].push_back(product.sum().item<double>());
          }
        }
        for (std::size_t k = 0; k < weights.size(); ++k) {
          Accumulator& a = acc[active[k]];
          double mean = 0.0, var = 0.0;
          for (double v : traces[k]) mean += v / double(traces[k].size());
          for (double v : traces[k]) var += (v - mean) * (v - mean);
          var = traces[k].size() > 1 ? var / double(traces[k].size() - 1) : 0.0;
          a.trace_weighted += share * mean;
          a.trace_variance += share * share * var / double(traces[k].size());
          a.samples += static_cast<int64_t>(traces[k].size());
        }
      } else {
        for (int64_t i = begin; i < end; ++i) {
          const torch::Tensor output =
              select_output(forward_batch(module, data, i, i + 1, device, model_path), compute.output);
          torch::Tensor objective;
          if (kind == LossKind::mse) {
            // Gaussian likelihood with unit variance: the sampled-target score is (y - f) with y ~ N(f, I).
            const torch::Tensor z = output.to(torch::kFloat32);
            const torch::Tensor noise = torch::randn(z.sizes(), z.options());
            objective = (noise * z).sum();
          } else {
            const int64_t classes = output.size(-1);
            const torch::Tensor log_p = torch::log_softmax(output.to(torch::kFloat32).reshape({-1, classes}), 1);
            const torch::Tensor sampled = torch::multinomial(log_p.detach().exp(), 1);
            objective = log_p.gather(1, sampled).sum();
          }
          const auto grads = torch::autograd::grad({objective}, weights, {}, false, false, /*allow_unused=*/true);
          for (std::size_t k = 0; k < weights.size(); ++k) {
            if (!grads[k].defined()) continue;
            const torch::Tensor square = grads[k].to(torch::kFloat32).pow(2);
            acc[active[k]].diagonal.add_(square, 1.0 / double(n));
            acc[active[k]].per_example_traces.push_back(square.sum().item<double>());
          }
        }
      }
    } catch (const UserError&) {
      throw;  // the forward pass's own report (shapes, devices)
    } catch (const std::exception&) {
      // Autograd could not differentiate this batch (an operator without a derivative, reported as a c10::Error
      // or as the engine's std::runtime_error depending on the version; no text is read): the caller finds out
      // which blocks autograd can reach.
      return false;
    }
    return true;
  };

  auto first_order_works = [&](int64_t begin, int64_t end) {
    try {
      const torch::Tensor output =
          select_output(forward_batch(module, data, begin, std::min(end, begin + 2), device, model_path), compute.output);
      const torch::Tensor z = output.to(torch::kFloat32);
      torch::autograd::grad({z.sum()}, weights, {}, false, false, /*allow_unused=*/true);
      return true;
    } catch (const UserError&) {
      throw;
    } catch (const std::exception&) {
      return false;
    }
  };

  // Note [Double backward probe]: Hutchinson differentiates the gradient again, which some operators do not
  // support (hardsigmoid's backward in libtorch 1.13, fused attention kernels in 2.x). Autograd reports that in
  // several ways (a c10::Error from a kernel, a std::runtime_error from the engine's Error node, with texts that
  // change across versions), so instead of reading messages, one Hessian-vector product on two examples is tried
  // before calibrating: if the first-order gradient works and the second-order one throws anything, the model
  // gets the Monte-Carlo Fisher, which needs one backward per sample.
  auto double_backward_works = [&]() {
    const int64_t m = std::min<int64_t>(n, 2);
    std::vector<torch::Tensor> first;
    torch::Tensor product;
    try {
      const torch::Tensor z =
          select_output(forward_batch(module, data, 0, m, device, model_path), compute.output).to(torch::kFloat32);
      first = torch::autograd::grad({z.square().sum()}, weights, {}, true, true, /*allow_unused=*/true);
      product = torch::zeros({}, z.options());
      for (const torch::Tensor& g : first)
        if (g.defined() && g.requires_grad()) product = product + (g * g.detach()).sum();  // no RNG: probes unchanged
    } catch (const std::exception&) {
      return true;  // not a second-order problem: the calibration pass reports it
    }
    if (!product.requires_grad()) return true;
    try {
      torch::autograd::grad({product}, weights, {}, false, false, /*allow_unused=*/true);
      return true;
    } catch (const std::exception&) {
      return false;
    }
  };
  if (!fisher && n > 0 && !double_backward_works()) {
    log::warn("hutchinson needs double backward, which an operator of ", model_path,
              " does not implement; using the fisher estimator instead");
    notes = "hutchinson unsupported by the model (no double backward); fisher used";
    fisher = true;
  }

  Progress progress("calibration", n, "examples", /*summary=*/false);
  for (int64_t begin = 0; begin < n; begin += compute.batch_size) {
    const int64_t end = std::min(n, begin + compute.batch_size);
    while (!process(begin, end)) {
      // Double backward is not implemented for some operators (e.g. fused attention kernels in libtorch 2.x).
      // If first-order gradients work, the Monte-Carlo Fisher needs nothing more: switch to it for the run.
      if (!fisher && begin == 0 && first_order_works(begin, end)) {
        log::warn("hutchinson needs double backward, which an operator of ", model_path,
                  " does not implement; using the fisher estimator instead");
        notes = "hutchinson unsupported by the model (no double backward); fisher used";
        fisher = true;
        for (auto& a : acc) a = Accumulator{torch::zeros_like(a.diagonal)};
        continue;
      }
      // Drop the earliest active block (discovery order follows the forward graph) until autograd can reach the
      // rest; the dropped blocks get the flagged fallback. Only the first batch can get here.
      BQ_CHECK(begin == 0 && !active.empty(), ExitCode::numerical,
               "autograd cannot differentiate the model on calibration data: ", model_path);
      log::warn("block ", index.blocks[active.front()].name,
                ": no gradient path (behind an operator without autograd support)");
      weights.front().set_requires_grad(false);
      for (auto& a : acc) a = Accumulator{torch::zeros_like(a.diagonal)};
      active.erase(active.begin());
      weights.erase(weights.begin());
      if (active.empty()) break;
    }
    progress.advance(end - begin);
    if (active.empty()) break;
  }
  progress.finish();

  CurvatureSet set;
  set.examples = n;
  set.estimator = fisher ? "fisher" : "hutchinson";
  set.notes = notes;
  set.loss = loss_name(kind);
  set.probes = fisher ? 0 : params.probes;
  set.seed = compute.seed;
  set.data_hash = data.hash();
  set.device = device_description(device);
  std::vector<bool> is_active(index.blocks.size(), false);
  for (std::size_t b : active) is_active[b] = true;
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    CurvatureStats c;
    c.name = index.blocks[b].name;
    c.available = is_active[b];
    const torch::Tensor d = acc[b].diagonal.to(torch::kCPU).contiguous();
    c.diagonal.assign(d.data_ptr<float>(), d.data_ptr<float>() + d.numel());
    for (float& v : c.diagonal) {
      if (!std::isfinite(v)) {
        ++c.non_finite;
      } else if (v < 0.0f) {
        ++c.clamped_negative;
        v = 0.0f;
      }
    }
    if (fisher) {
      const auto& t = acc[b].per_example_traces;
      double mean = 0.0, var = 0.0;
      for (double v : t) mean += v / double(t.size());
      for (double v : t) var += (v - mean) * (v - mean);
      c.trace = mean;
      c.trace_standard_error = t.size() > 1 ? std::sqrt(var / double(t.size() - 1) / double(t.size())) : 0.0;
      c.trace_samples = static_cast<int64_t>(t.size());
    } else {
      c.trace = acc[b].trace_weighted;
      c.trace_standard_error = std::sqrt(acc[b].trace_variance);
      c.trace_samples = acc[b].samples;
    }
    set.blocks.push_back(std::move(c));
  }
  set.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  log::info("calibration: ", n, " examples, ", set.estimator, " estimator, ", set.loss, " loss, ",
            std::round(set.seconds * 100) / 100, " s");
  return set;
}

}  // namespace bayesq

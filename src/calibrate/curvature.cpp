#include "bayesq/calibrate/curvature.h"

#include <chrono>
#include <cmath>

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/torch.h>

#include "bayesq/calibrate/grouped_conv.h"
#include "bayesq/common/bytes.h"
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

// Note [Calibration over several processes]: the statistics are sums over calibration batches (batch j holds
// examples [j B, (j+1) B), whatever the number of processes). A job gives each rank a contiguous run of batches,
// draws batch j's probes and sampled labels from a generator seeded by (seed, j), and sums each block's float32
// terms in float64: B_j sum_p v (.) Hv per batch (hutchinson), g_n (.) g_n per example (fisher). Those sums are
// exact while the terms' exponents stay within about 20 binary orders of each other (53 bits hold 24-bit terms
// times a batch size with room to spare), and exact sums do not depend on their order: one process and N
// processes give the same float32 diagonal (where a sum does round, they can differ in its last float64 bit,
// which the float32 result shows only at a rounding boundary). The per-batch trace statistics are gathered and
// combined in batch order on every rank.
struct Accumulator {
  torch::Tensor sum;  // float64 on the device: sum_j B_j sum_p v_p (.) H v_p, or sum_n g_n (.) g_n
  // hutchinson, one entry per batch of this rank in batch order: mean and variance of the probes' traces, probes.
  std::vector<double> batch_mean, batch_variance;
  std::vector<int64_t> batch_probes, batch_index;
  std::vector<double> per_example_traces;  // fisher: t_n = sum_i g_ni^2, in example order
};

// Batch j's generator seed: a splitmix64 step of (seed, j), so every batch has its own stream.
uint64_t batch_seed(uint64_t seed, int64_t batch) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (static_cast<uint64_t>(batch) + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFFull;  // manual_seed's range on every version
}

}  // namespace

CurvatureSet estimate_curvature(torch::jit::Module& module, const BlockIndex& index, const DataFile& data,
                                const CurvatureParams& params, const Compute& compute,
                                const std::string& model_path, const World* world) {
  const auto start = std::chrono::steady_clock::now();
  BQ_CHECK(params.probes >= 1, ExitCode::usage, "--probes must be >= 1");
  BQ_CHECK(compute.batch_size >= 1, ExitCode::usage, "--batch-size must be >= 1");
  const LossKind kind = loss_kind(params.loss, data.has_labels());
  const torch::Device device = compute.device;
  bool fisher = params.estimator == CurvatureEstimator::fisher;
  std::string notes;
  const int64_t n = compute.examples(data.size());

  // Note [Calibration without executor specialisation] (curvature.h).
  const torch::jit::GraphOptimizerEnabledGuard unspecialised(false);
  module.eval();
  module.to(device);
  check_input_count(module, data, model_path);
  const int rank = world ? world->rank() : 0, ranks = world ? world->size() : 1;
  const int64_t batches = (n + compute.batch_size - 1) / compute.batch_size;
  const auto [first_batch, end_batch] = contiguous_share(batches, rank, ranks);  // this rank's batches

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
    acc[b].sum = torch::zeros(w.sizes(), w.options().dtype(torch::kFloat64));
    if (!index.blocks[b].autograd_visible) continue;
    active.push_back(b);
    weights.push_back(w);
  }
  for (auto& w : weights) w.set_requires_grad(true);

  // Hutchinson differentiates a forward whose grouped convolutions are unfolded (Note [Grouped convolutions under
  // double backward] in grouped_conv.h); a graph the rewrite cannot handle keeps the model's own.
  std::unique_ptr<UnfoldedConvForward> unfolded;
  if (!fisher && params.unfold_on(device.is_cpu())) {
    try {
      unfolded = UnfoldedConvForward::build(module);
    } catch (const std::exception& e) {
      const std::string what = e.what();
      log::debug("grouped convolutions of ", model_path, " not unfolded: ", what.substr(0, what.find('\n')));
    }
  }
  // Where the rewritten graph fails to run (it is ours, not the model's), the model's own forward takes over for
  // the rest of the pass: same values up to rounding, and the model's own errors keep their report.
  const ForwardRun second_order = [&](std::vector<torch::jit::IValue> inputs) -> torch::jit::IValue {
    if (unfolded) {
      try {
        return (*unfolded)(module, inputs);
      } catch (const std::exception& e) {
        const std::string what = e.what();
        log::info("calibrating through the model's own grouped convolutions from here on (the unfolded form failed: ",
                  what.substr(0, what.find('\n')), ")");
        unfolded.reset();
      }
    }
    return module.forward(std::move(inputs));
  };

  // One batch's contribution; returns false when autograd cannot differentiate the model (e.g. a fused inference
  // operator on the gradient path of some active block).
  auto process = [&](int64_t batch, int64_t begin, int64_t end) -> bool {
    torch::manual_seed(batch_seed(compute.seed, batch));  // probes and sampled labels: batch j's own stream
    try {
      if (!fisher) {
        const torch::Tensor output =
            select_output(forward_batch(module, data, begin, end, device, model_path, second_order), compute.output);
        if (begin == 0 && kind == LossKind::ce) check_labels(data, output.size(-1));
        const torch::Tensor loss =
            curvature_loss(output, kind, kind == LossKind::ce ? data.labels(begin, end, device) : torch::Tensor());
        const auto grads = torch::autograd::grad({loss}, weights, {}, /*retain_graph=*/true, /*create_graph=*/true);
        // Each probe's v.Hv per block stays on the device until the batch ends: one read-back per batch, not one
        // per block and probe (each a synchronisation that left the GPU idle while the host queued the next probe).
        std::vector<torch::Tensor> probe_traces;  // probe-major: [p * blocks + k]
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
              probe_traces.push_back(torch::zeros({}, probes[k].options()));
              continue;
            }
            const torch::Tensor product = probes[k] * hv[k].to(torch::kFloat32);
            acc[active[k]].sum.add_(product, end - begin);  // float64 += B_j x float32: exact (Note above)
            probe_traces.push_back(product.sum());
          }
        }
        std::vector<std::vector<double>> traces(weights.size());
        if (!probe_traces.empty()) {
          const torch::Tensor all = torch::stack(probe_traces).to(torch::kCPU, torch::kFloat64);  // float32 values
          const double* v = all.data_ptr<double>();
          for (std::size_t i = 0; i < probe_traces.size(); ++i) traces[i % weights.size()].push_back(v[i]);
        }
        for (std::size_t k = 0; k < weights.size(); ++k) {
          Accumulator& a = acc[active[k]];
          double mean = 0.0, var = 0.0;
          for (double v : traces[k]) mean += v / double(traces[k].size());
          for (double v : traces[k]) var += (v - mean) * (v - mean);
          var = traces[k].size() > 1 ? var / double(traces[k].size() - 1) : 0.0;
          a.batch_mean.push_back(mean);
          a.batch_variance.push_back(var);
          a.batch_probes.push_back(static_cast<int64_t>(traces[k].size()));
          a.batch_index.push_back(batch);
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
            acc[active[k]].sum.add_(square);
            acc[active[k]].per_example_traces.push_back(square.sum().item<double>());
          }
        }
      }
    } catch (const UserError&) {
      throw;  // the forward pass's own report (shapes, devices)
    } catch (const std::exception& e) {
      // Out of device memory in a backward pass is not a missing derivative (forward_batch reads the same words).
      BQ_CHECK(std::string(e.what()).find("out of memory") == std::string::npos, ExitCode::usage,
               "out of memory calibrating ", model_path, " on batches of ", end - begin,
               " examples; lower --batch-size: ", data.path());
      // Autograd could not differentiate this batch (an operator without a derivative, reported as a c10::Error
      // or as the engine's std::runtime_error depending on the version; no other text is read): the caller finds
      // out which blocks autograd can reach.
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
          select_output(forward_batch(module, data, 0, m, device, model_path, second_order), compute.output)
              .to(torch::kFloat32);
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

  const int64_t first_begin = first_batch * compute.batch_size;
  const int64_t own_examples = std::min(n, end_batch * compute.batch_size) - std::min(n, first_begin);
  Progress progress("calibration", own_examples, "examples", /*summary=*/false);
  for (int64_t batch = first_batch; batch < end_batch; ++batch) {
    const int64_t begin = batch * compute.batch_size;
    const int64_t end = std::min(n, begin + compute.batch_size);
    while (!process(batch, begin, end)) {
      // Double backward is not implemented for some operators (e.g. fused attention kernels in libtorch 2.x).
      // If first-order gradients work, the Monte-Carlo Fisher needs nothing more: switch to it for the run.
      if (!fisher && begin == first_begin && first_order_works(begin, end)) {
        log::warn("hutchinson needs double backward, which an operator of ", model_path,
                  " does not implement; using the fisher estimator instead");
        notes = "hutchinson unsupported by the model (no double backward); fisher used";
        fisher = true;
        for (auto& a : acc) a = Accumulator{torch::zeros_like(a.sum)};
        continue;
      }
      // Drop the earliest active block (discovery order follows the forward graph) until autograd can reach the
      // rest; the dropped blocks get the flagged fallback. Only the first batch can get here.
      BQ_CHECK(begin == first_begin && !active.empty(), ExitCode::numerical,
               "autograd cannot differentiate the model on calibration data: ", model_path);
      log::warn("block ", index.blocks[active.front()].name,
                ": no gradient path (behind an operator without autograd support)");
      weights.front().set_requires_grad(false);
      for (auto& a : acc) a = Accumulator{torch::zeros_like(a.sum)};
      active.erase(active.begin());
      weights.erase(weights.begin());
      if (active.empty()) break;
    }
    progress.advance(end - begin);
    if (active.empty()) break;
  }
  progress.finish();

  // Every rank's sums and per-batch statistics (Note [Calibration over several processes]); what a rank without
  // batches (more ranks than batches) decided about the estimator and the reachable blocks comes from rank 0.
  std::vector<bool> is_active(index.blocks.size(), false);
  for (std::size_t b : active) is_active[b] = true;
  std::vector<std::vector<double>> sums(index.blocks.size());
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    const torch::Tensor d = acc[b].sum.to(torch::kCPU).contiguous();
    sums[b].assign(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
  }
  std::vector<int64_t> examples_per_rank;
  std::vector<double> seconds_per_rank;
  if (ranks > 1) {
    ByteWriter mine;
    mine.put<int64_t>(own_examples);
    mine.put<double>(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    mine.put<uint8_t>(end_batch > first_batch);
    mine.put<uint8_t>(fisher);
    for (std::size_t b = 0; b < index.blocks.size(); ++b) {
      mine.put<uint8_t>(is_active[b]);
      mine.put_vector(sums[b]);
      mine.put_vector(acc[b].batch_mean);
      mine.put_vector(acc[b].batch_variance);
      mine.put_vector(acc[b].batch_probes);
      mine.put_vector(acc[b].batch_index);
      mine.put_vector(acc[b].per_example_traces);
    }
    const std::vector<std::vector<uint8_t>> all = world->all_gather_bytes(mine.bytes());
    std::vector<Accumulator> gathered(index.blocks.size());
    for (std::size_t b = 0; b < index.blocks.size(); ++b) std::fill(sums[b].begin(), sums[b].end(), 0.0);
    for (int r = 0; r < ranks; ++r) {  // rank order is batch order: shares are contiguous and ascending
      ByteReader in(all[static_cast<std::size_t>(r)]);
      examples_per_rank.push_back(in.get<int64_t>());
      seconds_per_rank.push_back(in.get<double>());
      const bool had_batches = in.get<uint8_t>() != 0;
      const bool rank_fisher = in.get<uint8_t>() != 0;
      if (r == 0) fisher = rank_fisher;
      BQ_ASSERT(!had_batches || rank_fisher == fisher, "rank ", r, " chose another curvature estimator than rank 0");
      for (std::size_t b = 0; b < index.blocks.size(); ++b) {
        const bool rank_active = in.get<uint8_t>() != 0;
        if (r == 0) is_active[b] = rank_active;
        BQ_ASSERT(!had_batches || rank_active == is_active[b], "rank ", r, " reached other blocks than rank 0");
        const std::vector<double> part = in.get_vector<double>();
        BQ_ASSERT(part.size() == sums[b].size(), "rank ", r, " sent ", part.size(), " entries for block ", b);
        for (std::size_t i = 0; i < part.size(); ++i) sums[b][i] += part[i];
        auto append = [](auto& to, const auto& from) { to.insert(to.end(), from.begin(), from.end()); };
        append(gathered[b].batch_mean, in.get_vector<double>());
        append(gathered[b].batch_variance, in.get_vector<double>());
        append(gathered[b].batch_probes, in.get_vector<int64_t>());
        append(gathered[b].batch_index, in.get_vector<int64_t>());
        append(gathered[b].per_example_traces, in.get_vector<double>());
      }
      BQ_ASSERT(in.done(), "rank ", r, " sent more calibration bytes than expected");
    }
    acc = std::move(gathered);  // every rank's per-batch statistics; the sums are in `sums`
  }

  CurvatureSet set;
  set.examples = n;
  set.estimator = fisher ? "fisher" : "hutchinson";
  set.notes = notes;
  set.unfolded_convolutions = unfolded && !fisher ? unfolded->unfolded() : 0;
  set.loss = loss_name(kind);
  set.probes = fisher ? 0 : params.probes;
  set.seed = compute.seed;
  set.data_hash = data.hash();
  set.device = device_description(device);
  set.examples_per_rank = std::move(examples_per_rank);
  set.seconds_per_rank = std::move(seconds_per_rank);
  // The mean: hutchinson 1/(N P) sum_j B_j sum_p v (.) Hv (each batch's loss is its mean); fisher 1/N sum_n g^2.
  const double scale = fisher ? double(n) : double(n) * double(params.probes);
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    CurvatureStats c;
    c.name = index.blocks[b].name;
    c.available = is_active[b];
    c.diagonal.resize(sums[b].size());
    for (std::size_t i = 0; i < sums[b].size(); ++i) {
      float v = static_cast<float>(sums[b][i] / scale);
      if (!std::isfinite(v)) {
        ++c.non_finite;
      } else if (v < 0.0f) {
        ++c.clamped_negative;
        v = 0.0f;
      }
      c.diagonal[i] = v;
    }
    const Accumulator& a = acc[b];
    if (fisher) {
      const auto& t = a.per_example_traces;
      double mean = 0.0, var = 0.0;
      for (double v : t) mean += v / double(t.size());
      for (double v : t) var += (v - mean) * (v - mean);
      c.trace = mean;
      c.trace_standard_error = t.size() > 1 ? std::sqrt(var / double(t.size() - 1) / double(t.size())) : 0.0;
      c.trace_samples = static_cast<int64_t>(t.size());
    } else {
      // sum_j (B_j / N) mean_j, and its variance sum_j (B_j / N)^2 var_j / P_j, in batch order.
      double trace = 0.0, variance = 0.0;
      for (std::size_t j = 0; j < a.batch_mean.size(); ++j) {
        const int64_t begin = a.batch_index[j] * compute.batch_size;
        const double share = double(std::min(n, begin + compute.batch_size) - begin) / double(n);
        trace += share * a.batch_mean[j];
        variance += share * share * a.batch_variance[j] / double(a.batch_probes[j]);
        c.trace_samples += a.batch_probes[j];
      }
      c.trace = trace;
      c.trace_standard_error = std::sqrt(variance);
    }
    set.blocks.push_back(std::move(c));
  }
  set.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  log::info("calibration: ", n, " examples, ", set.estimator, " estimator, ", set.loss, " loss, ",
            std::round(set.seconds * 100) / 100, " s");
  return set;
}

}  // namespace bayesq

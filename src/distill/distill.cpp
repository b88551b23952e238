#include "bayesq/distill/distill.h"

#include <chrono>
#include <cmath>
#include <map>
#include <set>

#include <torch/torch.h>

#include "bayesq/common/errors.h"
#include "bayesq/common/log.h"
#include "bayesq/common/progress.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/block_tensor.h"
#include "bayesq/model/forward.h"

namespace bayesq {

namespace {

// One quantized block as trainable tensors: fixed codes, trainable table (or scale/offset).
struct TrainableBlock {
  std::size_t block;
  int bits = 0;
  CodebookKind kind = CodebookKind::lloyd;
  torch::Tensor codes;   // int64 [rows, cols]
  torch::Tensor group;   // int64 [cols]: the group of each column
  torch::Tensor table;   // lloyd: [rows, groups * K]; uniform: log(scale) [rows, groups] (Note [Scales in log space])
  torch::Tensor offset;  // uniform_asymmetric: [rows, groups]
  torch::Tensor like;    // the original weight (shape, dtype, device)

  // The [rows, cols] weights; `stored` rounds the trainable values to fp16 as the file keeps them.
  torch::Tensor rows(bool stored) const {
    auto r = [&](const torch::Tensor& t) { return stored ? t.to(torch::kHalf).to(torch::kFloat32) : t; };
    if (kind == CodebookKind::lloyd)
      return torch::gather(r(table), 1, codes + group.unsqueeze(0) * (int64_t{1} << bits));
    const torch::Tensor s = r(table.exp()).index_select(1, group);
    if (kind == CodebookKind::uniform_symmetric)
      return (codes.to(torch::kFloat32) - 0.5f * static_cast<float>((1 << bits) - 1)) * s;
    return codes.to(torch::kFloat32) * s + r(offset).index_select(1, group);
  }
  std::vector<torch::Tensor> parameters() const {
    std::vector<torch::Tensor> p = {table};
    if (offset.defined()) p.push_back(offset);
    return p;
  }
};

TrainableBlock make_trainable(std::size_t b, const QuantizedBlock& q, const torch::Tensor& like,
                              const torch::Device& device) {
  TrainableBlock t;
  t.block = b;
  t.bits = q.bits;
  t.kind = q.kind;
  t.like = like;
  std::vector<int64_t> codes(q.codes.begin(), q.codes.end());
  t.codes = torch::tensor(codes, torch::kLong).reshape({q.rows, q.cols}).to(device);
  t.group = torch::div(torch::arange(q.cols, torch::kLong), q.group_size, "floor").to(device);
  const int64_t groups = static_cast<int64_t>(q.codebooks.size()) / q.rows;
  std::vector<float> table, offset;
  for (const Codebook& cb : q.codebooks) {
    if (q.kind == CodebookKind::lloyd) {
      table.insert(table.end(), cb.levels.begin(), cb.levels.end());
    } else {
      table.push_back(std::log(std::max(cb.scale, 1e-30f)));  // a zero scale (an all-zero row) stays ~0
      offset.push_back(cb.offset);
    }
  }
  const int64_t width = q.kind == CodebookKind::lloyd ? groups * (int64_t{1} << q.bits) : groups;
  t.table = torch::tensor(table).reshape({q.rows, width}).to(device).clone().detach().requires_grad_(true);
  if (q.kind == CodebookKind::uniform_asymmetric)
    t.offset = torch::tensor(offset).reshape({q.rows, groups}).to(device).clone().detach().requires_grad_(true);
  return t;
}

// Writes a trainable block's (fp16-rounded) values back into the QuantizedBlock's codebooks.
void write_back(const TrainableBlock& t, QuantizedBlock& q) {
  const torch::Tensor table = t.table.detach().to(torch::kCPU).contiguous();
  const torch::Tensor offset = t.offset.defined() ? t.offset.detach().to(torch::kCPU).contiguous() : torch::Tensor();
  const int64_t groups = static_cast<int64_t>(q.codebooks.size()) / q.rows;
  const int64_t levels = int64_t{1} << q.bits;
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      Codebook& cb = q.codebooks[static_cast<std::size_t>(r * groups + g)];
      if (q.kind == CodebookKind::lloyd) {
        std::vector<double> values(static_cast<std::size_t>(levels));
        for (int64_t k = 0; k < levels; ++k) values[static_cast<std::size_t>(k)] = table[r][g * levels + k].item<float>();
        cb = Codebook::from_table(q.bits, values);
      } else if (q.kind == CodebookKind::uniform_asymmetric) {
        cb = Codebook::uniform_asymmetric(q.bits, std::exp(table[r][g].item<float>()), offset[r][g].item<float>());
      } else {
        cb = Codebook::uniform_symmetric(q.bits, std::exp(table[r][g].item<float>()));
      }
    }
}

torch::Tensor logits_of(torch::jit::Module& m, const DataFile& data, int64_t begin, int64_t end,
                        const torch::Device& device, const std::string& output, const std::string& model_path) {
  const torch::Tensor z = select_output(forward_batch(m, data, begin, end, device, model_path), output);
  return z.to(torch::kFloat32).reshape({-1, z.size(-1)});
}

// A copy of `module` whose tensors are leaves of their own, with the same requires-grad flags (what a user who loads
// the written model sees). A clone made with gradients enabled is a graph node (CloneBackward) of the loaded
// parameters, which require grad: training it sends gradients into `module`, through every parameter that is not
// replaced by a trainable leaf (a BERT's embeddings), and on CUDA fails, since those parameters of `module` stayed
// on the CPU.
torch::jit::Module detached_clone(const torch::jit::Module& module) {
  torch::jit::Module copy;
  {
    torch::NoGradGuard no_grad;
    copy = module.clone();
  }
  std::map<std::string, bool> requires_grad;
  for (const auto& p : module.named_parameters(true)) requires_grad[p.name] = p.value.requires_grad();
  for (const auto& p : copy.named_parameters(true)) p.value.set_requires_grad(requires_grad.at(p.name));
  return copy;
}

// KL(p || q) summed over rows, from probabilities p and log-probabilities log_q.
torch::Tensor kl_sum(const torch::Tensor& p, const torch::Tensor& log_q) {
  return (p * (torch::log(p.clamp_min(1e-30)) - log_q)).sum();
}

}  // namespace

DistillResult distill(const torch::jit::Module& module, const BlockIndex& index, std::vector<QuantizedBlock>& blocks,
                      const std::vector<bool>& present, const std::vector<BlockPosterior>& posteriors,
                      const DataFile& calibration, const DistillParams& params, const Compute& compute,
                      const std::string& model_path) {
  const auto start = std::chrono::steady_clock::now();
  BQ_CHECK(params.steps >= 0, ExitCode::usage, "--distill-steps must be >= 0");
  BQ_CHECK(params.lr > 0.0, ExitCode::usage, "--distill-lr must be positive");
  BQ_CHECK(params.teacher_samples >= 1, ExitCode::usage, "--teacher-samples must be >= 1");
  BQ_CHECK(params.holdout >= 0.0 && params.holdout < 1.0, ExitCode::usage, "--distill-holdout must be in [0, 1)");
  BQ_CHECK(params.teacher_samples == 1 || posteriors.size() == index.blocks.size(), ExitCode::usage,
           "--teacher-samples > 1 needs the diagonal posterior (--curvature hutchinson or fisher)");
  const torch::Device device = compute.device;
  torch::manual_seed(compute.seed);

  // Seeded split of the calibration examples into training and held-out parts.
  const int64_t n = calibration.size();
  const torch::Tensor order = torch::randperm(n, torch::TensorOptions().dtype(torch::kLong));
  int64_t held = static_cast<int64_t>(std::ceil(params.holdout * double(n)));
  if (params.holdout > 0.0) held = std::max<int64_t>(1, std::min(held, n - 1));
  std::vector<int64_t> all(order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + n);
  const DataFile train = calibration.subset(std::vector<int64_t>(all.begin(), all.end() - held));
  const DataFile holdout = held > 0 ? calibration.subset(std::vector<int64_t>(all.end() - held, all.end())) : train;

  torch::jit::Module student = detached_clone(module);
  student.eval();
  student.to(device);
  torch::jit::Module teacher = detached_clone(module);
  teacher.eval();
  teacher.to(device);

  // Teacher probabilities, once per example: the float model, or the mean softmax over weight samples.
  auto teacher_probabilities = [&](const DataFile& data) {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> batches;
    for (int64_t begin = 0; begin < data.size(); begin += compute.batch_size) {
      const int64_t end = std::min(data.size(), begin + compute.batch_size);
      torch::Tensor sum;
      for (int64_t s = 0; s < params.teacher_samples; ++s) {
        if (params.teacher_samples > 1) {
          for (std::size_t b = 0; b < index.blocks.size(); ++b) {
            const torch::Tensor mean = find_tensor(module, index.blocks[b].name).to(device, torch::kFloat32);
            const auto& pi = posteriors[b].precision;
            const torch::Tensor precision =
                torch::from_blob(const_cast<float*>(pi.data()), mean.sizes(), torch::kFloat32).to(device);
            const torch::Tensor sample = mean + torch::randn_like(mean) * precision.rsqrt();
            assign_tensor(teacher, index.blocks[b].name, sample.to(find_tensor(teacher, index.blocks[b].name).dtype()));
          }
        }
        const torch::Tensor p = torch::softmax(logits_of(teacher, data, begin, end, device, compute.output, model_path), 1);
        sum = sum.defined() ? sum + p : p;
      }
      batches.push_back(sum / double(params.teacher_samples));
    }
    return batches;
  };
  const std::vector<torch::Tensor> train_teacher = teacher_probabilities(train);
  const std::vector<torch::Tensor> holdout_teacher = teacher_probabilities(holdout);

  // Trainable state: the blocks' tables and every one-dimensional parameter (biases, norm scales and shifts).
  std::vector<TrainableBlock> trainable;
  std::set<std::string> block_names;
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    block_names.insert(index.blocks[b].name);
    if (present[b]) trainable.push_back(make_trainable(b, blocks[b], find_tensor(student, index.blocks[b].name), device));
  }
  std::vector<torch::Tensor> parameters;
  std::vector<std::string> small_names;
  for (const auto& p : student.named_parameters(true)) {
    if (!block_names.count(p.name) && p.value.dim() <= 1 && p.value.is_floating_point()) {
      // A fresh leaf in the student's slot: the optimizer owns it.
      torch::Tensor leaf = p.value.detach().clone().requires_grad_(true);
      assign_tensor(student, p.name, leaf);
      parameters.push_back(leaf);
      small_names.push_back(p.name);
    } else {
      p.value.set_requires_grad(false);
    }
  }
  for (const auto& t : trainable)
    for (const auto& p : t.parameters()) parameters.push_back(p);

  auto install = [&](bool stored) {
    for (const auto& t : trainable)
      assign_tensor(student, index.blocks[t.block].name, rows_to_block(t.rows(stored), index.blocks[t.block], t.like));
  };
  auto holdout_kl = [&]() {
    torch::NoGradGuard no_grad;
    install(/*stored=*/true);
    double total = 0.0;
    int64_t rows = 0;
    std::size_t k = 0;
    for (int64_t begin = 0; begin < holdout.size(); begin += compute.batch_size, ++k) {
      const int64_t end = std::min(holdout.size(), begin + compute.batch_size);
      const torch::Tensor log_q =
          torch::log_softmax(logits_of(student, holdout, begin, end, device, compute.output, model_path), 1);
      total += kl_sum(holdout_teacher[k], log_q).item<double>();
      rows += end - begin;
    }
    return total / double(rows);
  };
  auto snapshot = [&]() {
    std::vector<torch::Tensor> copy;
    for (const auto& p : parameters) copy.push_back(p.detach().clone());
    return copy;
  };

  torch::optim::Adam optimizer(parameters, torch::optim::AdamOptions(params.lr));
  nlohmann::json curve = nlohmann::json::array();
  double best = holdout_kl();
  const double initial = best;
  int64_t best_step = 0;
  std::vector<torch::Tensor> best_state = snapshot();
  curve.push_back({{"step", 0}, {"heldout_kl", best}});
  const int64_t batches = (train.size() + compute.batch_size - 1) / compute.batch_size;
  torch::Tensor epoch_order;
  Progress progress("distillation", params.steps, "steps", /*summary=*/false);
  for (int64_t step = 1; step <= params.steps; ++step) {
    const int64_t slot = (step - 1) % batches;
    if (slot == 0) epoch_order = torch::randperm(batches, torch::TensorOptions().dtype(torch::kLong));
    const int64_t batch = epoch_order[slot].item<int64_t>();
    const int64_t begin = batch * compute.batch_size, end = std::min(train.size(), begin + compute.batch_size);
    install(/*stored=*/false);
    const torch::Tensor log_q =
        torch::log_softmax(logits_of(student, train, begin, end, device, compute.output, model_path), 1);
    const torch::Tensor loss = kl_sum(train_teacher[static_cast<std::size_t>(batch)], log_q) / double(log_q.size(0));
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    nlohmann::json point{{"step", step}, {"train_kl", loss.item<double>()}};
    if (step % params.eval_every == 0 || step == params.steps) {
      const double kl = holdout_kl();
      point["heldout_kl"] = kl;
      if (kl < best) {
        best = kl;
        best_step = step;
        best_state = snapshot();
      }
    }
    curve.push_back(point);
    progress.advance();
  }
  progress.finish();
  {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < parameters.size(); ++i) parameters[i].copy_(best_state[i]);
  }
  for (const auto& t : trainable) write_back(t, blocks[t.block]);

  DistillResult result;
  result.module = detached_clone(module);
  for (std::size_t i = 0; i < small_names.size(); ++i) {
    const torch::Tensor original = find_tensor(result.module, small_names[i]);
    torch::Tensor value = best_state[i].to(original.device(), original.scalar_type());
    value.set_requires_grad(original.requires_grad());
    assign_tensor(result.module, small_names[i], value);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.report = {{"steps", params.steps},          {"lr", params.lr},
                   {"teacher_samples", params.teacher_samples}, {"holdout_examples", held},
                   {"initial_heldout_kl", initial},   {"best_heldout_kl", best},
                   {"best_step", best_step},          {"seconds", seconds},
                   {"holdout_indices", std::vector<int64_t>(all.end() - held, all.end())},
                   {"curve", curve}};
  log::info("distillation: held-out KL ", initial, " -> ", best, " (best at step ", best_step, " of ", params.steps,
            ", ", std::round(seconds * 10) / 10, " s)");
  return result;
}

}  // namespace bayesq

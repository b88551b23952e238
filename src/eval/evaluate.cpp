#include "bayesq/eval/evaluate.h"

#include <chrono>
#include <cmath>
#include <vector>

#include "bayesq/common/errors.h"
#include "bayesq/model/forward.h"

namespace bayesq {

EvalResult evaluate(torch::jit::Module& model, torch::jit::Module* reference, const DataFile& data,
                    const EvalParams& params, const std::string& model_path) {
  const auto start = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  const torch::Device device = params.device;
  model.eval();
  model.to(device);
  if (reference) {
    reference->eval();
    reference->to(device);
  }
  check_input_count(model, data, model_path);

  EvalResult r;
  r.has_labels = data.has_labels();
  r.has_reference = reference != nullptr;
  std::vector<double> bin_count(static_cast<std::size_t>(params.ece_bins), 0.0),
      bin_correct(bin_count.size(), 0.0), bin_confidence(bin_count.size(), 0.0);
  double correct = 0.0, nll = 0.0, agree = 0.0, kl = 0.0;
  int64_t scored = 0, labelled = 0;  // positions scored against the reference, and against labels
  for (int64_t begin = 0; begin < data.size(); begin += params.batch_size) {
    const int64_t end = std::min(data.size(), begin + params.batch_size);
    torch::Tensor logits = select_output(forward_batch(model, data, begin, end, device, model_path), params.output);
    BQ_CHECK(logits.dim() >= 2, ExitCode::input, "evaluation needs [batch, classes] logits; ", model_path,
             " returns shape ", logits.sizes());
    const int64_t classes = logits.size(-1);
    if (begin == 0) {
      r.classes = classes;
      check_labels(data, classes);
    }
    logits = logits.to(torch::kFloat64);
    // NaN logits (from NaN or overflowing weights) would make every figure NaN and the run look successful.
    BQ_CHECK(!torch::isnan(logits).any().item<bool>(), ExitCode::input, "the model's outputs contain NaN (are its "
             "weights finite?): ", model_path);
    const int64_t per_example = logits.numel() / (classes * (end - begin));
    const torch::Tensor log_p = torch::log_softmax(logits.reshape({-1, classes}), 1);
    const torch::Tensor prediction = log_p.argmax(1);
    scored += log_p.size(0);
    if (r.has_labels) {
      torch::Tensor labels = data.labels(begin, end, device).reshape({-1});
      if (data.labels_per_example() == 1 && per_example > 1)  // one label for every position of the example
        labels = labels.unsqueeze(1).expand({end - begin, per_example}).reshape({-1});
      BQ_CHECK(labels.numel() == log_p.size(0), ExitCode::input, "the labels give ", data.labels_per_example(),
               " per example but ", model_path, " scores ", per_example, " positions per example: ", data.path());
      // Positions labelled kIgnoredLabel (padding) score nothing.
      const torch::Tensor used = labels.ne(kIgnoredLabel);
      const torch::Tensor lp = log_p.index({used}), target = labels.index({used});
      labelled += lp.size(0);
      const torch::Tensor hit = lp.argmax(1).eq(target).to(torch::kFloat64);
      correct += hit.sum().item<double>();
      nll -= lp.gather(1, target.unsqueeze(1)).sum().item<double>();
      const torch::Tensor confidence = std::get<0>(lp.max(1)).exp();
      const torch::Tensor bin =
          (confidence * params.ece_bins).floor().clamp(0, params.ece_bins - 1).to(torch::kInt64).cpu();
      const torch::Tensor conf_cpu = confidence.cpu(), hit_cpu = hit.cpu();
      const auto* b = bin.data_ptr<int64_t>();
      const auto* c = conf_cpu.data_ptr<double>();
      const auto* h = hit_cpu.data_ptr<double>();
      for (int64_t i = 0; i < bin.numel(); ++i) {
        bin_count[static_cast<std::size_t>(b[i])] += 1.0;
        bin_confidence[static_cast<std::size_t>(b[i])] += c[i];
        bin_correct[static_cast<std::size_t>(b[i])] += h[i];
      }
    }
    if (reference) {
      torch::Tensor ref_logits =
          select_output(forward_batch(*reference, data, begin, end, device, model_path), params.output);
      BQ_CHECK(ref_logits.sizes() == logits.sizes(), ExitCode::input, "reference model output shape ",
               ref_logits.sizes(), " differs from the model's ", logits.sizes());
      const torch::Tensor ref_log_p = torch::log_softmax(ref_logits.to(torch::kFloat64).reshape({-1, classes}), 1);
      agree += ref_log_p.argmax(1).eq(prediction).sum().item<double>();
      kl += (ref_log_p.exp() * (ref_log_p - log_p)).sum().item<double>();
    }
  }
  r.examples = data.size();
  const double n = static_cast<double>(scored);
  if (r.has_labels) {
    const double m = static_cast<double>(std::max<int64_t>(labelled, 1));
    r.labelled = labelled;
    r.top1 = correct / m;
    r.nll = nll / m;
    r.perplexity = std::exp(r.nll);
    double ece = 0.0;
    for (std::size_t k = 0; k < bin_count.size(); ++k)
      if (bin_count[k] > 0) ece += std::fabs(bin_correct[k] - bin_confidence[k]) / m;
    r.ece = ece;
  }
  r.positions = scored;
  if (reference) {
    r.agreement = agree / n;
    r.mean_kl = kl / n;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

void to_json(nlohmann::json& j, const EvalResult& r) {
  j = nlohmann::json{{"examples", r.examples}, {"classes", r.classes}, {"seconds", r.seconds}};
  if (r.positions != r.examples) j["positions"] = r.positions;  // sequence outputs: KL and agreement per position
  if (r.has_labels) {
    if (r.labelled != r.examples) j["labelled_positions"] = r.labelled;
    j["top1"] = r.top1;
    j["nll"] = r.nll;
    j["perplexity"] = r.perplexity;
    j["ece"] = r.ece;
  }
  if (r.has_reference) {
    j["agreement"] = r.agreement;
    j["mean_kl"] = r.mean_kl;
  }
}

}  // namespace bayesq

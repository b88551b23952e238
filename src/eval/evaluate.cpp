#include "bayesq/eval/evaluate.h"

#include <chrono>
#include <cmath>
#include <vector>

#include "bayesq/common/errors.h"
#include "bayesq/model/forward.h"

namespace bayesq {

namespace {

// One model's running sums over the batches.
struct Scores {
  EvalResult r;
  std::vector<double> bin_count, bin_correct, bin_confidence;
  double correct = 0.0, nll = 0.0, agree = 0.0, kl = 0.0;
  int64_t scored = 0, labelled = 0;  // positions scored against the reference, and against labels
  explicit Scores(int bins)
      : bin_count(static_cast<std::size_t>(bins), 0.0), bin_correct(bin_count), bin_confidence(bin_count) {}
};

// Log-probabilities [positions, classes] (float64) of one batch's logits, checked.
torch::Tensor log_probabilities(torch::Tensor logits, const std::string& model_path) {
  BQ_CHECK(logits.dim() >= 2, ExitCode::input, "evaluation needs [batch, classes] logits; ", model_path,
           " returns shape ", logits.sizes());
  logits = logits.to(torch::kFloat64);
  // NaN logits (from NaN or overflowing weights) would make every figure NaN and the run look successful.
  BQ_CHECK(!torch::isnan(logits).any().item<bool>(), ExitCode::input, "the model's outputs contain NaN (are its "
           "weights finite?): ", model_path);
  return torch::log_softmax(logits.reshape({-1, logits.size(-1)}), 1);
}

}  // namespace

EvalResult evaluate(torch::jit::Module& model, torch::jit::Module* reference, const DataFile& data,
                    const EvalParams& params, const std::string& model_path) {
  return evaluate_models({&model}, reference, data, params, {model_path}).front();
}

std::vector<EvalResult> evaluate_models(const std::vector<torch::jit::Module*>& models, torch::jit::Module* reference,
                                        const DataFile& data, const EvalParams& params,
                                        const std::vector<std::string>& model_paths) {
  const auto start = std::chrono::steady_clock::now();
  BQ_ASSERT(models.size() == model_paths.size(), models.size(), " models and ", model_paths.size(), " paths");
  torch::NoGradGuard no_grad;
  const torch::Device device = params.device;
  for (std::size_t m = 0; m < models.size(); ++m) {
    models[m]->eval();
    models[m]->to(device);
    check_input_count(*models[m], data, model_paths[m]);
  }
  if (reference) {
    reference->eval();
    reference->to(device);
  }
  std::vector<Scores> scores(models.size(), Scores(params.ece_bins));
  for (Scores& s : scores) {
    s.r.has_labels = data.has_labels();
    s.r.has_reference = reference != nullptr;
  }
  for (int64_t begin = 0; begin < data.size(); begin += params.batch_size) {
    const int64_t end = std::min(data.size(), begin + params.batch_size);
    // The reference's log-probabilities once per batch, for every model.
    torch::Tensor ref_logits, ref_log_p;
    if (reference) {
      ref_logits = select_output(forward_batch(*reference, data, begin, end, device, model_paths.front()),
                                 params.output);
    }
    for (std::size_t m = 0; m < models.size(); ++m) {
      Scores& s = scores[m];
      const std::string& model_path = model_paths[m];
      // A model that is the reference itself is run once, as the reference.
      const torch::Tensor logits =
          models[m] == reference
              ? ref_logits
              : select_output(forward_batch(*models[m], data, begin, end, device, model_path), params.output);
      const torch::Tensor log_p = log_probabilities(logits, model_path);
      const int64_t classes = logits.size(-1);
      if (begin == 0) {
        s.r.classes = classes;
        check_labels(data, classes);
      }
      const int64_t per_example = logits.numel() / (classes * (end - begin));
      const torch::Tensor prediction = log_p.argmax(1);
      s.scored += log_p.size(0);
      if (s.r.has_labels) {
        torch::Tensor target = data.labels(begin, end, device).reshape({-1});
        if (data.labels_per_example() == 1 && per_example > 1)  // one label for every position of the example
          target = target.unsqueeze(1).expand({end - begin, per_example}).reshape({-1});
        BQ_CHECK(target.numel() == log_p.size(0), ExitCode::input, "the labels give ", data.labels_per_example(),
                 " per example but ", model_path, " scores ", per_example, " positions per example: ", data.path());
        // Positions labelled kIgnoredLabel (padding) score nothing.
        const torch::Tensor used = target.ne(kIgnoredLabel);
        const torch::Tensor lp = log_p.index({used});
        target = target.index({used});
        s.labelled += lp.size(0);
        const torch::Tensor hit = lp.argmax(1).eq(target).to(torch::kFloat64);
        s.correct += hit.sum().item<double>();
        s.nll -= lp.gather(1, target.unsqueeze(1)).sum().item<double>();
        const torch::Tensor confidence = std::get<0>(lp.max(1)).exp();
        const torch::Tensor bin =
            (confidence * params.ece_bins).floor().clamp(0, params.ece_bins - 1).to(torch::kInt64).cpu();
        const torch::Tensor conf_cpu = confidence.cpu(), hit_cpu = hit.cpu();
        const auto* b = bin.data_ptr<int64_t>();
        const auto* c = conf_cpu.data_ptr<double>();
        const auto* h = hit_cpu.data_ptr<double>();
        for (int64_t i = 0; i < bin.numel(); ++i) {
          s.bin_count[static_cast<std::size_t>(b[i])] += 1.0;
          s.bin_confidence[static_cast<std::size_t>(b[i])] += c[i];
          s.bin_correct[static_cast<std::size_t>(b[i])] += h[i];
        }
      }
      if (reference) {
        BQ_CHECK(ref_logits.sizes() == logits.sizes(), ExitCode::input, "reference model output shape ",
                 ref_logits.sizes(), " differs from the model's ", logits.sizes(), ": ", model_path);
        if (!ref_log_p.defined())
          ref_log_p = torch::log_softmax(ref_logits.to(torch::kFloat64).reshape({-1, classes}), 1);
        s.agree += ref_log_p.argmax(1).eq(prediction).sum().item<double>();
        s.kl += (ref_log_p.exp() * (ref_log_p - log_p)).sum().item<double>();
      }
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::vector<EvalResult> out;
  for (Scores& s : scores) {
    EvalResult& r = s.r;
    r.examples = data.size();
    const double n = static_cast<double>(s.scored);
    if (r.has_labels) {
      const double m = static_cast<double>(std::max<int64_t>(s.labelled, 1));
      r.labelled = s.labelled;
      r.top1 = s.correct / m;
      r.nll = s.nll / m;
      r.perplexity = std::exp(r.nll);
      double ece = 0.0;
      for (std::size_t k = 0; k < s.bin_count.size(); ++k)
        if (s.bin_count[k] > 0) ece += std::fabs(s.bin_correct[k] - s.bin_confidence[k]) / m;
      r.ece = ece;
    }
    r.positions = s.scored;
    if (reference) {
      r.agreement = s.agree / n;
      r.mean_kl = s.kl / n;
    }
    r.seconds = seconds;  // of the whole evaluation: the models share its batches and reference
    out.push_back(r);
  }
  return out;
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

// Evaluation of a classifier on a data file: top-1 accuracy, NLL and ECE (15 equal-width confidence bins) when
// the file has labels; with a reference model, top-1 agreement and mean KL(reference || model).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/script.h>

#include "bayesq/data/data_file.h"

namespace bayesq {

struct EvalParams {
  int64_t batch_size = 256;
  std::string output;  // --output-index
  torch::Device device{torch::kCPU};
  int ece_bins = 15;
};

struct EvalResult {
  int64_t examples = 0;
  int64_t classes = 0;
  bool has_labels = false;
  int64_t positions = 0;   // scored positions (examples x tokens for sequence outputs)
  int64_t labelled = 0;    // positions with a label other than kIgnoredLabel
  double top1 = 0.0, nll = 0.0, ece = 0.0, perplexity = 0.0;  // over labelled positions; perplexity = exp(nll)
  bool has_reference = false;
  double agreement = 0.0, mean_kl = 0.0;
  double seconds = 0.0;
};

// Logits must be [batch, classes] (or [batch, ..., classes], then every position is scored: KL and agreement per
// position, and with labels of one per position, e.g. next-token labels, top-1, NLL and perplexity per labelled
// token, positions labelled kIgnoredLabel left out).
EvalResult evaluate(torch::jit::Module& model, torch::jit::Module* reference, const DataFile& data,
                    const EvalParams& params, const std::string& model_path);

// Several models on the same data at once: each batch is read and the reference run once for all of them
// (`seconds` is the whole evaluation's); a model that is `reference` itself (the same module) is not run again.
// One result per model, in order; each as evaluate() gives it.
std::vector<EvalResult> evaluate_models(const std::vector<torch::jit::Module*>& models, torch::jit::Module* reference,
                                        const DataFile& data, const EvalParams& params,
                                        const std::vector<std::string>& model_paths);

void to_json(nlohmann::json& j, const EvalResult& r);

}  // namespace bayesq

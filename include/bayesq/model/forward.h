// Running a model on data batches, with the checks that turn a shape mismatch into one clear line.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <torch/script.h>

#include "bayesq/data/data_file.h"

namespace bayesq {

// Which model output is the logits (--output-index): "" picks the tensor itself, element 0 of a tuple/list, or
// "logits" (else the first value) of a dict; a number picks a tuple/list element; other text picks a dict key.
torch::Tensor select_output(const torch::jit::IValue& output, const std::string& spec);

// Checks the number of inputs against forward's schema; throws UserError(input) naming both files otherwise.
void check_input_count(const torch::jit::Module& module, const DataFile& data, const std::string& model_path);

// forward() on examples [begin, end) of `data`; a libtorch error becomes UserError(input) that gives every
// input's shape, the model's own message, and both file names.
torch::jit::IValue forward_batch(torch::jit::Module& module, const DataFile& data, int64_t begin, int64_t end,
                                 const torch::Device& device, const std::string& model_path);
// The same with another implementation of forward (`run` gets the batch's inputs), e.g. a rewritten graph.
using ForwardRun = std::function<torch::jit::IValue(std::vector<torch::jit::IValue>)>;
torch::jit::IValue forward_batch(torch::jit::Module& module, const DataFile& data, int64_t begin, int64_t end,
                                 const torch::Device& device, const std::string& model_path, const ForwardRun& run);

// Labels must index the model's outputs: throws UserError(input) naming the data file otherwise.
void check_labels(const DataFile& data, int64_t classes);

}  // namespace bayesq

// Walking an inlined forward graph: which nodes consume which parameters as weights, and with which activation.
// Shared by block discovery, layer capture (which reads the activations) and the packed writer.
#pragma once

#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <torch/script.h>

#include "bayesq/index/block_index.h"

namespace bayesq {

// One node that consumes a module attribute as a weight.
struct WeightUse {
  torch::jit::Node* node = nullptr;
  std::string path;               // attribute path from self, e.g. "layer1.0.conv1.weight"
  bool transposed = false;        // t/transpose views on the way swapped the weight's two axes
  OpKind op = OpKind::linear;
  int row_axis_if_plain = 0;      // row axis of the untransposed weight for this kind of use
  bool autograd_visible = true;   // false for fused inference operators
  ConvGeometry conv;              // convolutions only
  // The operand the weight multiplies: x in x W^T / conv(x, W) / x @ W, or the right operand of W @ x (then its
  // columns are the samples). nullptr for fused operators, whose activations cannot be read.
  torch::jit::Value* activation = nullptr;
  bool activation_on_right = false;
  torch::jit::Value* bias = nullptr;  // a bias operand that is not None
  // Embeddings: `activation` is the index tensor, the node's first output the looked-up rows, and padding_idx
  // (-1 for none) the row that never receives a gradient.
  int64_t padding_idx = -1;
};

void visit_nodes(torch::jit::Block* block, const std::function<void(torch::jit::Node*)>& fn);

// "" when `v` is not a GetAttr chain from `self`.
std::string attribute_path(torch::jit::Value* v, torch::jit::Value* self);

// Every weight use in an inlined graph whose first input is self, in graph order (a weight used twice appears
// twice, e.g. an embedding table tied to the output layer).
std::vector<WeightUse> find_weight_uses(torch::jit::Graph& graph);

// The forward graph of `module`, copied and inlined.
std::shared_ptr<torch::jit::Graph> inlined_forward(const torch::jit::Module& module);

}  // namespace bayesq

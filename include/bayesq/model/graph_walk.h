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
  // Recurrent layers (activation is nullptr: each layer's inputs exist only inside the fused operator; layer
  // capture recomputes them, Note [Unrolled recurrence] in layer_capture.cpp): which weight of which layer and
  // direction this is, unit = layer * directions + direction.
  enum class Recurrent { none, input_weight, hidden_weight } recurrent = Recurrent::none;
  int64_t layer = 0, unit = 0, units = 0;
};

void visit_nodes(torch::jit::Block* block, const std::function<void(torch::jit::Node*)>& fn);

// A convolution node (aten::conv1d/2d/3d, _convolution, convolution, conv_transpose1d/2d/3d): its kind and its
// geometry as far as the graph has it in constants; nullopt for any other node.
struct Convolution {
  OpKind op = OpKind::conv2d;
  ConvGeometry geometry;
};
std::optional<Convolution> convolution_of(torch::jit::Node* n);

// "" when `v` is not a GetAttr chain from `self`.
std::string attribute_path(torch::jit::Value* v, torch::jit::Value* self);
// The submodule of `module` that `v` is (`self` itself, or a GetAttr chain of submodules from it); nullopt otherwise.
std::optional<torch::jit::Module> submodule_at(torch::jit::Value* v, torch::jit::Value* self,
                                               const torch::jit::Module& module);

// Every weight use in an inlined graph whose first input is self, in graph order (a weight used twice appears
// twice, e.g. an embedding table tied to the output layer).
std::vector<WeightUse> find_weight_uses(torch::jit::Graph& graph);

// The forward graph of `module`, copied and inlined, with its weight lists unflattened (below).
std::shared_ptr<torch::jit::Graph> inlined_forward(const torch::jit::Module& module);

// A scripted nn.LSTM / GRU / RNN reads its weights as one list attribute (`_flat_weights`) whose elements are its
// parameters. Each GetAttr of a tensor-list attribute whose elements are all parameters of the same submodule is
// replaced by a list built from GetAttrs of those parameters, the form a traced model has: the weights can be
// named, captured and rebuilt one by one. (assign_tensor keeps such lists in step with the parameters.)
void unflatten_weight_lists(torch::jit::Graph& graph, const torch::jit::Module& module);

}  // namespace bayesq

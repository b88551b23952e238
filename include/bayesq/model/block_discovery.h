// Block discovery on the inlined forward graph (METHOD.md "Notation"): every convolution (1-D/2-D/3-D,
// transposed, grouped, depthwise), linear, parameter-operand matmul/mm/addmm, and every >= 2-D "weight" operand
// of a fused inference operator. Weights are traced back through GetAttr chains (and views such as t/transpose
// that only reorient them) to parameter names, so traced models with no useful module types work too.
#pragma once

#include <string>
#include <vector>

#include <torch/script.h>

#include "bayesq/index/block_index.h"

namespace bayesq {

struct DiscoveryStats {
  std::vector<std::string> skipped;  // "name: reason" for weight-like operands left in floating point
};

BlockIndex discover_blocks(const torch::jit::Module& module, DiscoveryStats* stats = nullptr);

// The tensor of a parameter or buffer by dotted path ("layer1.0.conv1.weight"); throws UserError(input).
torch::Tensor find_tensor(const torch::jit::Module& module, const std::string& path);
// Replaces the attribute's value in its submodule (used by the fake format and by distillation).
void assign_tensor(torch::jit::Module& module, const std::string& path, const torch::Tensor& value);

}  // namespace bayesq

// BlockIndex: the quantizable weight tensors ("blocks") of a model, the first value of the pipeline
// (BlockIndex -> CurvatureStats -> BlockPosterior -> LossTable -> Allocation -> quantized model).
//
// A block is one weight tensor that a convolution, linear layer, parameter-operand matmul, embedding lookup or
// recurrent layer consumes (METHOD.md: "Notation"). Its rows are output channels (for an embedding table: tokens, one row each):
// `row_axis` says which axis of the stored tensor holds them, and the rest of the tensor (in storage order) forms
// a row. Pure data; no libtorch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace bayesq {

enum class OpKind {
  conv1d,
  conv2d,
  conv3d,
  conv_transpose,  // any dimension; rows are the stored tensor's first axis
  linear,          // y = x W^T (+ b), W [out, in]
  matmul,          // a parameter operand of matmul / mm / addmm / bmm
  fused,           // an operand of a fused inference operator (e.g. aten::_transformer_encoder_layer_fwd)
  embedding,       // the table of aten::embedding / embedding_bag, E [vocabulary, dim]; rows are tokens
  recurrent,       // weight_ih / weight_hh of aten::lstm, gru, rnn_tanh, rnn_relu: [gates x hidden, in]
};

const char* op_kind_name(OpKind kind);
OpKind op_kind_from_name(const std::string& name);  // throws UserError(input) on an unknown name

struct ConvGeometry {
  std::vector<int64_t> stride, padding, dilation;  // empty when not a constant in the graph
  int64_t groups = 1;
  bool padding_same = false;  // padding="same" (conv*d with a string padding)
};

struct BlockInfo {
  std::string name;             // parameter path in the module, e.g. "layer1.0.conv1.weight"
  std::vector<int64_t> shape;   // stored shape
  OpKind op = OpKind::linear;
  std::string op_symbol;        // graph operator that consumes it, e.g. "aten::conv2d"
  int row_axis = 0;             // axis of `shape` that indexes output channels (0, or the last axis)
  ConvGeometry conv;            // convolutions only
  bool autograd_visible = true; // false when only a fused inference operator consumes it (no gradient path)
  std::string dtype = "float32";

  int64_t numel() const;
  int64_t rows() const;  // shape[row_axis]
  int64_t cols() const;  // numel() / rows()
};

struct BlockIndex {
  std::vector<BlockInfo> blocks;
  int64_t model_parameter_count = 0;  // every tensor the model holds (parameters and buffers)
  int64_t model_parameter_bytes = 0;
  // Operators found in the forward graph that normalise each example at inference (layer, group, instance and
  // RMS norm; batch norm in eval mode does not): they undo a uniform shrink of what they read (Note
  // [Gain-preserving codebooks] in design.h, and effective_level_scale in config.h).
  std::vector<std::string> per_example_norms;

  int64_t quantizable_weight_count() const;
  int find(const std::string& name) const;  // index or -1
};

void to_json(nlohmann::json& j, const ConvGeometry& g);
void from_json(const nlohmann::json& j, ConvGeometry& g);
void to_json(nlohmann::json& j, const BlockInfo& b);
void from_json(const nlohmann::json& j, BlockInfo& b);
void to_json(nlohmann::json& j, const BlockIndex& index);
void from_json(const nlohmann::json& j, BlockIndex& index);

}  // namespace bayesq

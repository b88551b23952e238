#include "bayesq/index/block_index.h"

#include "bayesq/common/errors.h"

namespace bayesq {

namespace {
struct OpKindName {
  OpKind kind;
  const char* name;
};
constexpr OpKindName kOpKindNames[] = {
    {OpKind::conv1d, "conv1d"}, {OpKind::conv2d, "conv2d"}, {OpKind::conv3d, "conv3d"},
    {OpKind::conv_transpose, "conv_transpose"}, {OpKind::linear, "linear"}, {OpKind::matmul, "matmul"},
    {OpKind::fused, "fused"},   {OpKind::embedding, "embedding"}, {OpKind::recurrent, "recurrent"},
};
}  // namespace

const char* op_kind_name(OpKind kind) {
  for (const auto& entry : kOpKindNames)
    if (entry.kind == kind) return entry.name;
  return "?";
}

OpKind op_kind_from_name(const std::string& name) {
  for (const auto& entry : kOpKindNames)
    if (name == entry.name) return entry.kind;
  BQ_FAIL(ExitCode::input, "unknown block operator kind '", name, "'");
}

int64_t BlockInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t BlockInfo::rows() const { return shape.empty() ? 0 : shape[static_cast<std::size_t>(row_axis)]; }

int64_t BlockInfo::cols() const {
  const int64_t r = rows();
  return r ? numel() / r : 0;
}

int64_t BlockIndex::quantizable_weight_count() const {
  int64_t n = 0;
  for (const auto& b : blocks) n += b.numel();
  return n;
}

int BlockIndex::find(const std::string& name) const {
  for (std::size_t i = 0; i < blocks.size(); ++i)
    if (blocks[i].name == name) return static_cast<int>(i);
  return -1;
}

void to_json(nlohmann::json& j, const ConvGeometry& g) {
  j = nlohmann::json{{"stride", g.stride}, {"padding", g.padding}, {"dilation", g.dilation}, {"groups", g.groups}};
  if (g.padding_same) j["padding_same"] = true;
}

void from_json(const nlohmann::json& j, ConvGeometry& g) {
  g.stride = j.at("stride").get<std::vector<int64_t>>();
  g.padding = j.at("padding").get<std::vector<int64_t>>();
  g.dilation = j.at("dilation").get<std::vector<int64_t>>();
  g.groups = j.at("groups").get<int64_t>();
  g.padding_same = j.value("padding_same", false);
}

void to_json(nlohmann::json& j, const BlockInfo& b) {
  j = nlohmann::json{{"name", b.name},         {"shape", b.shape},   {"op", op_kind_name(b.op)},
                     {"op_symbol", b.op_symbol}, {"row_axis", b.row_axis}, {"autograd_visible", b.autograd_visible},
                     {"dtype", b.dtype}};
  if (b.op == OpKind::conv1d || b.op == OpKind::conv2d || b.op == OpKind::conv3d || b.op == OpKind::conv_transpose)
    j["conv"] = b.conv;
}

void from_json(const nlohmann::json& j, BlockInfo& b) {
  b.name = j.at("name").get<std::string>();
  b.shape = j.at("shape").get<std::vector<int64_t>>();
  b.op = op_kind_from_name(j.at("op").get<std::string>());
  b.op_symbol = j.value("op_symbol", "");
  b.row_axis = j.at("row_axis").get<int>();
  b.autograd_visible = j.value("autograd_visible", true);
  b.dtype = j.value("dtype", "float32");
  if (j.contains("conv")) b.conv = j.at("conv").get<ConvGeometry>();
}

void to_json(nlohmann::json& j, const BlockIndex& index) {
  j = nlohmann::json{{"blocks", index.blocks},
                     {"model_parameter_count", index.model_parameter_count},
                     {"model_parameter_bytes", index.model_parameter_bytes},
                     {"per_example_norms", index.per_example_norms}};
}

void from_json(const nlohmann::json& j, BlockIndex& index) {
  index.blocks = j.at("blocks").get<std::vector<BlockInfo>>();
  index.model_parameter_count = j.value("model_parameter_count", int64_t{0});
  index.model_parameter_bytes = j.value("model_parameter_bytes", int64_t{0});
  index.per_example_norms = j.value("per_example_norms", std::vector<std::string>{});
}

}  // namespace bayesq

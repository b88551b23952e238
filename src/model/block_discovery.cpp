#include "bayesq/model/block_discovery.h"

#include <map>
#include <optional>
#include <set>

#include <torch/csrc/jit/passes/inliner.h>

#include "bayesq/common/errors.h"
#include "bayesq/model/block_tensor.h"

namespace bayesq {

using torch::jit::Node;
using torch::jit::Value;

namespace {

// Where a weight operand comes from: a module attribute path, and whether views on the way flipped its axes.
struct Origin {
  std::string path;
  bool transposed = false;
};

bool is_int_constant(Value* v, int64_t* out) {
  const auto iv = torch::jit::toIValue(v);
  if (!iv || !iv->isInt()) return false;
  *out = iv->toInt();
  return true;
}

// Follows ops that leave the weight's values alone (casts, copies) or only swap the two axes of a 2-D weight.
std::optional<Origin> resolve(Value* v, Value* self) {
  bool transposed = false;
  for (;;) {
    Node* n = v->node();
    const std::string kind = n->kind().toQualString();
    if (kind == "aten::t") {
      transposed = !transposed;
      v = n->input(0);
    } else if (kind == "aten::transpose") {
      int64_t a = 0, b = 0;
      if (!is_int_constant(n->input(1), &a) || !is_int_constant(n->input(2), &b)) return std::nullopt;
      if (!((a == 0 && b == 1) || (a == 1 && b == 0) || (a == -1 && b == -2) || (a == -2 && b == -1)))
        return std::nullopt;
      transposed = !transposed;
      v = n->input(0);
    } else if (kind == "aten::to" || kind == "aten::contiguous" || kind == "aten::detach" ||
               kind == "aten::clone" || kind == "aten::type_as" || kind == "aten::float" ||
               kind == "aten::half" || kind == "aten::bfloat16") {
      v = n->input(0);
    } else {
      break;
    }
  }
  std::vector<std::string> parts;
  while (v != self) {
    Node* n = v->node();
    if (n->kind() != torch::jit::prim::GetAttr) return std::nullopt;
    parts.push_back(n->s(torch::jit::attr::name));
    v = n->input(0);
  }
  if (parts.empty()) return std::nullopt;
  Origin o;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) o.path += (o.path.empty() ? "" : ".") + *it;
  o.transposed = transposed;
  return o;
}

// A constant int list, or a prim::ListConstruct of constant ints (how scripted graphs pass stride and padding).
std::vector<int64_t> int_list(Value* v) {
  const auto iv = torch::jit::toIValue(v);
  if (iv && iv->isIntList()) return iv->toIntVector();
  if (iv && iv->isInt()) return {iv->toInt()};
  if (v->node()->kind() == torch::jit::prim::ListConstruct) {
    std::vector<int64_t> out;
    for (Value* item : v->node()->inputs()) {
      int64_t x = 0;
      if (!is_int_constant(item, &x)) return {};
      out.push_back(x);
    }
    return out;
  }
  return {};
}

void visit_nodes(torch::jit::Block* block, const std::function<void(Node*)>& fn) {
  for (Node* n : block->nodes()) {
    fn(n);
    for (torch::jit::Block* sub : n->blocks()) visit_nodes(sub, fn);
  }
}

struct Candidate {
  BlockInfo info;
  bool found = false;
};

}  // namespace

torch::Tensor find_tensor(const torch::jit::Module& module, const std::string& path) {
  torch::jit::Module owner = module;
  std::string rest = path;
  for (std::size_t dot; (dot = rest.find('.')) != std::string::npos;) {
    const std::string head = rest.substr(0, dot);
    BQ_CHECK(owner.hasattr(head) && owner.attr(head).isModule(), ExitCode::input, "model has no submodule '", head,
             "' on the path of '", path, "'");
    owner = owner.attr(head).toModule();
    rest = rest.substr(dot + 1);
  }
  BQ_CHECK(owner.hasattr(rest) && owner.attr(rest).isTensor(), ExitCode::input, "model has no tensor '", path, "'");
  return owner.attr(rest).toTensor();
}

void assign_tensor(torch::jit::Module& module, const std::string& path, const torch::Tensor& value) {
  torch::jit::Module owner = module;
  std::string rest = path;
  for (std::size_t dot; (dot = rest.find('.')) != std::string::npos;) {
    owner = owner.attr(rest.substr(0, dot)).toModule();
    rest = rest.substr(dot + 1);
  }
  owner.setattr(rest, value);
}

BlockIndex discover_blocks(const torch::jit::Module& module, DiscoveryStats* stats) {
  std::map<std::string, torch::Tensor> parameters;
  BlockIndex index;
  for (const auto& p : module.named_parameters(true)) {
    parameters[p.name] = p.value;
    index.model_parameter_count += p.value.numel();
    index.model_parameter_bytes += p.value.numel() * static_cast<int64_t>(p.value.element_size());
  }
  for (const auto& b : module.named_buffers(true)) {
    index.model_parameter_count += b.value.numel();
    index.model_parameter_bytes += b.value.numel() * static_cast<int64_t>(b.value.element_size());
  }

  std::shared_ptr<torch::jit::Graph> graph = module.get_method("forward").graph()->copy();
  torch::jit::Inline(*graph);
  Value* self = graph->inputs().at(0);

  std::vector<std::string> order;                // first-seen order of blocks
  std::map<std::string, BlockInfo> found;
  std::set<std::string> embedded;                // parameters an embedding op also reads
  std::map<std::string, std::string> skipped;

  auto add = [&](Value* operand, OpKind op, const std::string& symbol, bool visible, int row_axis_if_plain,
                 const ConvGeometry* conv) {
    const auto origin = resolve(operand, self);
    if (!origin) return;
    const auto it = parameters.find(origin->path);
    if (it == parameters.end()) {
      skipped[origin->path] = "not a parameter";
      return;
    }
    const torch::Tensor& w = it->second;
    if (!w.is_floating_point() || w.dim() < 2) return;
    auto existing = found.find(origin->path);
    if (existing != found.end()) {
      existing->second.autograd_visible = existing->second.autograd_visible || visible;
      return;
    }
    BlockInfo info;
    info.name = origin->path;
    info.shape = w.sizes().vec();
    info.op = op;
    info.op_symbol = symbol;
    info.autograd_visible = visible;
    info.dtype = dtype_name(w.scalar_type());
    int row_axis = row_axis_if_plain;
    if (origin->transposed) row_axis = row_axis == 0 ? 1 : 0;
    if (row_axis != 0 && w.dim() != 2) row_axis = 0;
    info.row_axis = row_axis;
    if (conv) info.conv = *conv;
    found[info.name] = info;
    order.push_back(info.name);
  };

  visit_nodes(graph->block(), [&](Node* n) {
    const std::string kind = n->kind().toQualString();
    if (kind == "aten::linear") {
      add(n->input(1), OpKind::linear, kind, true, 0, nullptr);
    } else if (kind == "aten::conv1d" || kind == "aten::conv2d" || kind == "aten::conv3d") {
      ConvGeometry g;
      g.stride = int_list(n->input(3));
      const auto padding = torch::jit::toIValue(n->input(4));
      if (padding && padding->isString()) {
        g.padding_same = padding->toStringRef() == "same";
      } else {
        g.padding = int_list(n->input(4));
      }
      g.dilation = int_list(n->input(5));
      int64_t groups = 1;
      if (is_int_constant(n->input(6), &groups)) g.groups = groups;
      const OpKind op = kind == "aten::conv1d" ? OpKind::conv1d : kind == "aten::conv2d" ? OpKind::conv2d : OpKind::conv3d;
      add(n->input(1), op, kind, true, 0, &g);
    } else if (kind == "aten::_convolution" || kind == "aten::convolution") {
      ConvGeometry g;
      g.stride = int_list(n->input(3));
      g.padding = int_list(n->input(4));
      g.dilation = int_list(n->input(5));
      const auto transposed = torch::jit::toIValue(n->input(6));
      int64_t groups = 1;
      if (is_int_constant(n->input(8), &groups)) g.groups = groups;
      OpKind op = OpKind::conv2d;
      if (transposed && transposed->isBool() && transposed->toBool()) {
        op = OpKind::conv_transpose;
      } else if (g.stride.size() == 1) {
        op = OpKind::conv1d;
      } else if (g.stride.size() == 3) {
        op = OpKind::conv3d;
      }
      add(n->input(1), op, kind, true, 0, &g);
    } else if (kind == "aten::conv_transpose1d" || kind == "aten::conv_transpose2d" ||
               kind == "aten::conv_transpose3d") {
      ConvGeometry g;
      g.stride = int_list(n->input(3));
      g.padding = int_list(n->input(4));
      int64_t groups = 1;
      if (is_int_constant(n->input(6), &groups)) g.groups = groups;
      g.dilation = int_list(n->input(7));
      add(n->input(1), OpKind::conv_transpose, kind, true, 0, &g);
    } else if (kind == "aten::matmul" || kind == "aten::mm") {
      // x @ W with W [in, out]: rows (outputs) are W's last axis; W @ x: rows are W's first axis.
      add(n->input(1), OpKind::matmul, kind, true, 1, nullptr);
      add(n->input(0), OpKind::matmul, kind, true, 0, nullptr);
    } else if (kind == "aten::addmm") {
      add(n->input(2), OpKind::matmul, kind, true, 1, nullptr);
      add(n->input(1), OpKind::matmul, kind, true, 0, nullptr);
    } else if (kind == "aten::embedding" || kind == "aten::embedding_bag") {
      if (const auto origin = resolve(n->input(0), self)) embedded.insert(origin->path);
    } else if (n->maybeSchema() != nullptr && kind.rfind("aten::", 0) == 0) {
      // Fused inference operators (e.g. aten::_transformer_encoder_layer_fwd): their >= 2-D "weight" operands
      // are linear weights [out, in] that autograd cannot see through.
      const auto& args = n->schema().arguments();
      for (std::size_t i = 0; i < args.size() && i < n->inputs().size(); ++i) {
        if (args[i].name().find("weight") == std::string::npos) continue;
        if (kind.find("norm") != std::string::npos) continue;
        add(n->input(i), OpKind::fused, kind, false, 0, nullptr);
      }
    }
  });

  for (const std::string& name : order) {
    if (embedded.count(name)) {
      skipped[name] = "also read by an embedding (tied weights stay in floating point)";
      continue;
    }
    index.blocks.push_back(found[name]);
  }
  if (stats)
    for (const auto& s : skipped) stats->skipped.push_back(s.first + ": " + s.second);
  return index;
}

}  // namespace bayesq

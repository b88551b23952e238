#include "bayesq/model/graph_walk.h"

#include <torch/csrc/jit/passes/inliner.h>

namespace bayesq {

using torch::jit::Node;
using torch::jit::Value;

namespace {

bool is_int_constant(Value* v, int64_t* out) {
  const auto iv = torch::jit::toIValue(v);
  if (!iv || !iv->isInt()) return false;
  *out = iv->toInt();
  return true;
}

bool is_none(Value* v) { return v->type()->kind() == c10::TypeKind::NoneType; }

// Follows ops that leave a weight's values alone (casts, copies) or only swap the two axes of a 2-D weight.
Value* strip_views(Value* v, bool* transposed) {
  for (;;) {
    Node* n = v->node();
    const std::string kind = n->kind().toQualString();
    if (kind == "aten::t") {
      *transposed = !*transposed;
      v = n->input(0);
    } else if (kind == "aten::transpose") {
      int64_t a = 0, b = 0;
      if (!is_int_constant(n->input(1), &a) || !is_int_constant(n->input(2), &b)) return v;
      if (!((a == 0 && b == 1) || (a == 1 && b == 0) || (a == -1 && b == -2) || (a == -2 && b == -1))) return v;
      *transposed = !*transposed;
      v = n->input(0);
    } else if (kind == "aten::to" || kind == "aten::contiguous" || kind == "aten::detach" ||
               kind == "aten::clone" || kind == "aten::type_as" || kind == "aten::float" ||
               kind == "aten::half" || kind == "aten::bfloat16") {
      v = n->input(0);
    } else {
      return v;
    }
  }
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

}  // namespace

std::optional<Convolution> convolution_of(Node* n) {
  const std::string kind = n->kind().toQualString();
  Convolution c;
  ConvGeometry& g = c.geometry;
  if (kind == "aten::conv1d" || kind == "aten::conv2d" || kind == "aten::conv3d") {
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
    c.op = kind == "aten::conv1d" ? OpKind::conv1d : kind == "aten::conv2d" ? OpKind::conv2d : OpKind::conv3d;
    return c;
  }
  if (kind == "aten::_convolution" || kind == "aten::convolution") {
    g.stride = int_list(n->input(3));
    g.padding = int_list(n->input(4));
    g.dilation = int_list(n->input(5));
    const auto transposed = torch::jit::toIValue(n->input(6));
    int64_t groups = 1;
    if (is_int_constant(n->input(8), &groups)) g.groups = groups;
    c.op = OpKind::conv2d;
    if (transposed && transposed->isBool() && transposed->toBool()) {
      c.op = OpKind::conv_transpose;
    } else if (g.stride.size() == 1) {
      c.op = OpKind::conv1d;
    } else if (g.stride.size() == 3) {
      c.op = OpKind::conv3d;
    }
    return c;
  }
  if (kind == "aten::conv_transpose1d" || kind == "aten::conv_transpose2d" || kind == "aten::conv_transpose3d") {
    g.stride = int_list(n->input(3));
    g.padding = int_list(n->input(4));
    int64_t groups = 1;
    if (is_int_constant(n->input(6), &groups)) g.groups = groups;
    g.dilation = int_list(n->input(7));
    c.op = OpKind::conv_transpose;
    return c;
  }
  return std::nullopt;
}

void visit_nodes(torch::jit::Block* block, const std::function<void(Node*)>& fn) {
  for (Node* n : block->nodes()) {
    fn(n);
    for (torch::jit::Block* sub : n->blocks()) visit_nodes(sub, fn);
  }
}

std::string attribute_path(Value* v, Value* self) {
  std::vector<std::string> parts;
  while (v != self) {
    Node* n = v->node();
    if (n->kind() != torch::jit::prim::GetAttr) return "";
    parts.push_back(n->s(torch::jit::attr::name));
    v = n->input(0);
  }
  std::string path;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) path += (path.empty() ? "" : ".") + *it;
  return path;
}

std::optional<torch::jit::Module> submodule_at(Value* v, Value* self, const torch::jit::Module& module) {
  const std::string path = attribute_path(v, self);
  if (path.empty() && v != self) return std::nullopt;
  torch::jit::Module owner = module;
  for (std::size_t begin = 0; begin < path.size();) {
    std::size_t dot = path.find('.', begin);
    if (dot == std::string::npos) dot = path.size();
    const std::string part = path.substr(begin, dot - begin);
    if (!owner.hasattr(part) || !owner.attr(part).isModule()) return std::nullopt;
    owner = owner.attr(part).toModule();
    begin = dot + 1;
  }
  return owner;
}

std::shared_ptr<torch::jit::Graph> inlined_forward(const torch::jit::Module& module) {
  std::shared_ptr<torch::jit::Graph> graph = module.get_method("forward").graph()->copy();
  torch::jit::Inline(*graph);
  unflatten_weight_lists(*graph, module);
  return graph;
}

void unflatten_weight_lists(torch::jit::Graph& graph, const torch::jit::Module& module) {
  Value* self = graph.inputs().at(0);
  std::vector<Node*> reads;
  visit_nodes(graph.block(), [&](Node* n) {
    if (n->kind() == torch::jit::prim::GetAttr && n->output()->type()->kind() == c10::TypeKind::ListType)
      reads.push_back(n);
  });
  for (Node* n : reads) {
    const std::optional<torch::jit::Module> found = submodule_at(n->input(0), self, module);
    if (!found) continue;
    const torch::jit::Module& owner = *found;
    const std::string name = n->s(torch::jit::attr::name);
    if (!owner.hasattr(name) || !owner.attr(name).isList()) continue;
    const c10::List<c10::IValue> list = owner.attr(name).toList();
    std::vector<std::string> names;
    for (std::size_t i = 0; i < list.size(); ++i) {
      const c10::IValue item = list.get(i);
      if (!item.isTensor()) break;
      for (const auto& p : owner.named_parameters(/*recurse=*/false))
        if (p.value.is_same(item.toTensor())) {
          names.push_back(p.name);
          break;
        }
      if (names.size() != i + 1) break;
    }
    if (names.empty() || names.size() != list.size()) continue;
    torch::jit::WithInsertPoint before(n);
    std::vector<Value*> items;
    for (const std::string& p : names) items.push_back(graph.insertNode(graph.createGetAttr(n->input(0), p))->output());
    Value* rebuilt = graph.insertNode(graph.createList(c10::TensorType::get(), items))->output();
    n->output()->replaceAllUsesWith(rebuilt);
    n->destroy();
  }
}

std::vector<WeightUse> find_weight_uses(torch::jit::Graph& graph) {
  Value* self = graph.inputs().at(0);
  std::vector<WeightUse> uses;
  auto add = [&](Node* n, Value* operand, OpKind op, bool visible, int row_axis_if_plain, Value* activation,
                 bool activation_on_right, Value* bias, const ConvGeometry* conv) {
    WeightUse u;
    Value* stripped = strip_views(operand, &u.transposed);
    std::string path = attribute_path(stripped, self);
    if (path.empty() && stripped->node()->kind() == torch::jit::prim::If) {
      // Scripted functional code may pick its operands in a branch (F.embedding_bag swaps weight and input when
      // they come in the wrong order): a weight when exactly one branch yields a module attribute.
      Node* branch_node = stripped->node();
      std::size_t at = 0;
      while (branch_node->outputs()[at] != stripped) ++at;
      std::set<std::string> candidates;
      bool transposed = false;
      for (torch::jit::Block* branch : branch_node->blocks()) {
        bool t = false;
        const std::string candidate = attribute_path(strip_views(branch->outputs()[at], &t), self);
        if (!candidate.empty()) {
          candidates.insert(candidate);
          transposed = t;
        }
      }
      if (candidates.size() == 1) {
        path = *candidates.begin();
        u.transposed = u.transposed != transposed;
      }
    }
    if (path.empty()) return;
    u.node = n;
    u.path = path;
    u.op = op;
    u.row_axis_if_plain = row_axis_if_plain;
    u.autograd_visible = visible;
    u.activation = activation;
    u.activation_on_right = activation_on_right;
    u.bias = bias && !is_none(bias) ? bias : nullptr;
    if (conv) u.conv = *conv;
    uses.push_back(u);
  };

  // Recurrent layers: params holds, per layer and direction, weight_ih [gates H, in], weight_hh [gates H, H] and,
  // with has_biases, bias_ih and bias_hh. Layers with projections (an LSTM's weight_hr) are left alone.
  auto add_recurrent = [&](Node* n) {
    if (n->maybeSchema() == nullptr) return;
    Value *params = nullptr, *biases = nullptr, *layers = nullptr, *bidirectional = nullptr;
    const auto& args = n->schema().arguments();
    for (std::size_t i = 0; i < args.size() && i < n->inputs().size(); ++i) {
      if (args[i].name() == "params") params = n->input(i);
      if (args[i].name() == "has_biases") biases = n->input(i);
      if (args[i].name() == "num_layers") layers = n->input(i);
      if (args[i].name() == "bidirectional") bidirectional = n->input(i);
    }
    if (!params || !biases || !layers || !bidirectional ||
        params->node()->kind() != torch::jit::prim::ListConstruct)
      return;
    const auto has_biases = torch::jit::toIValue(biases), two_way = torch::jit::toIValue(bidirectional);
    int64_t num_layers = 0;
    if (!has_biases || !has_biases->isBool() || !two_way || !two_way->isBool() || !is_int_constant(layers, &num_layers))
      return;
    const int64_t units = num_layers * (two_way->toBool() ? 2 : 1), per_unit = has_biases->toBool() ? 4 : 2;
    const auto& weights = params->node()->inputs();
    if (units <= 0 || static_cast<int64_t>(weights.size()) != units * per_unit) return;
    // The packed-sequence overload takes (data, batch_sizes, ...): discovered, but its activations are not
    // recomputed (Note [Unrolled recurrence]).
    const bool plain = args.at(0).name() == "input";
    for (int64_t unit = 0; unit < units; ++unit)
      for (int64_t role = 0; role < 2; ++role) {
        const std::size_t before = uses.size();
        add(n, weights[static_cast<std::size_t>(unit * per_unit + role)], OpKind::recurrent, true, 0,
            plain ? n->input(0) : nullptr, false, nullptr, nullptr);
        if (uses.size() == before) continue;
        WeightUse& u = uses.back();
        u.recurrent = role == 0 ? WeightUse::Recurrent::input_weight : WeightUse::Recurrent::hidden_weight;
        u.unit = unit;
        u.units = units;
        u.layer = unit / (two_way->toBool() ? 2 : 1);
      }
  };

  visit_nodes(graph.block(), [&](Node* n) {
    const std::string kind = n->kind().toQualString();
    if (kind == "aten::linear") {
      add(n, n->input(1), OpKind::linear, true, 0, n->input(0), false, n->inputs().size() > 2 ? n->input(2) : nullptr,
          nullptr);
    } else if (const std::optional<Convolution> conv = convolution_of(n)) {
      ConvGeometry g = conv->geometry;
      add(n, n->input(1), conv->op, true, 0, n->input(0), false, n->input(2), &g);
    } else if (kind == "aten::matmul" || kind == "aten::mm") {
      // x @ W with W [in, out]: rows (outputs) are W's last axis; W @ x: rows are W's first axis.
      add(n, n->input(1), OpKind::matmul, true, 1, n->input(0), false, nullptr, nullptr);
      add(n, n->input(0), OpKind::matmul, true, 0, n->input(1), true, nullptr, nullptr);
    } else if (kind == "aten::addmm") {
      add(n, n->input(2), OpKind::matmul, true, 1, n->input(1), false, n->input(0), nullptr);
      add(n, n->input(1), OpKind::matmul, true, 0, n->input(2), true, n->input(0), nullptr);
    } else if (kind == "aten::embedding" || kind == "aten::embedding_bag" || kind == "aten::_embedding_bag") {
      // embedding(weight, indices, padding_idx, ...); embedding_bag(weight, indices, offsets, ..., padding_idx).
      const std::size_t before = uses.size();
      add(n, n->input(0), OpKind::embedding, true, 0, n->input(1), false, nullptr, nullptr);
      if (uses.size() > before && n->maybeSchema() != nullptr) {
        const auto& args = n->schema().arguments();
        for (std::size_t i = 0; i < args.size() && i < n->inputs().size(); ++i) {
          int64_t padding = -1;
          if (args[i].name() == "padding_idx" && is_int_constant(n->input(i), &padding)) uses.back().padding_idx = padding;
        }
      }
    } else if (kind == "aten::lstm" || kind == "aten::gru" || kind == "aten::rnn_tanh" || kind == "aten::rnn_relu") {
      add_recurrent(n);
    } else if (n->maybeSchema() != nullptr && kind.rfind("aten::", 0) == 0 && kind.find("norm") == std::string::npos) {
      // Fused inference operators (e.g. aten::_transformer_encoder_layer_fwd): their "weight" operands are linear
      // weights [out, in] that autograd cannot see through and whose activations cannot be read.
      const auto& args = n->schema().arguments();
      for (std::size_t i = 0; i < args.size() && i < n->inputs().size(); ++i)
        if (args[i].name().find("weight") != std::string::npos)
          add(n, n->input(i), OpKind::fused, false, 0, nullptr, false, nullptr, nullptr);
    }
  });
  return uses;
}

}  // namespace bayesq

#include "bayesq/model/block_discovery.h"

#include <map>
#include <optional>
#include <set>

#include "bayesq/common/errors.h"
#include "bayesq/model/block_tensor.h"
#include "bayesq/model/graph_walk.h"

namespace bayesq {

using torch::jit::Node;
using torch::jit::Value;

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
  // A list attribute holding this very tensor (a scripted RNN's _flat_weights, which its forward reads instead of
  // the parameters) gets the new value too.
  const c10::IValue old = owner.attr(rest);
  if (old.isTensor()) {
    const auto& type = owner.type();
    for (std::size_t i = 0; i < type->numAttributes(); ++i) {
      const c10::IValue slot = owner._ivalue()->getSlot(i);
      if (!slot.isList()) continue;
      c10::List<c10::IValue> list = slot.toList();
      for (std::size_t k = 0; k < list.size(); ++k)
        if (list.get(k).isTensor() && list.get(k).toTensor().is_same(old.toTensor())) list.set(k, value);
    }
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

  std::shared_ptr<torch::jit::Graph> graph = inlined_forward(module);
  const std::vector<WeightUse> uses = find_weight_uses(*graph);
  std::set<std::string> norms;
  visit_nodes(graph->block(), [&](torch::jit::Node* node) {
    // The fused encoder layer of a no-grad trace holds two layer norms.
    static const std::set<std::string> per_example = {
        "aten::layer_norm",    "aten::native_layer_norm", "aten::group_norm", "aten::native_group_norm",
        "aten::instance_norm", "aten::rms_norm",          "aten::_transformer_encoder_layer_fwd"};
    const std::string kind = node->kind().toQualString();
    if (per_example.count(kind)) norms.insert(kind);
  });
  index.per_example_norms.assign(norms.begin(), norms.end());

  std::vector<std::string> order;  // first-seen order of blocks
  std::map<std::string, BlockInfo> found;
  std::map<std::string, std::string> skipped;
  for (const WeightUse& use : uses) {
    const auto it = parameters.find(use.path);
    if (it == parameters.end()) {
      skipped[use.path] = "not a parameter";
      continue;
    }
    const torch::Tensor& w = it->second;
    if (!w.is_floating_point() || w.dim() < 2) continue;
    if (use.op == OpKind::embedding && use.transposed) {
      skipped[use.path] = "embedding table read through a transposed view";
      continue;
    }
    auto existing = found.find(use.path);
    if (existing != found.end()) {
      BlockInfo& known = existing->second;
      known.autograd_visible = known.autograd_visible || use.autograd_visible;
      // A table tied to an output layer ([vocabulary, dim] both ways: rows are tokens for either use) takes the
      // layer's kind, whose statistics describe the matmul; the lookup still reads the quantized table.
      if (known.op == OpKind::embedding && use.op != OpKind::embedding && use.op != OpKind::fused) {
        const int row_axis = use.transposed ? (use.row_axis_if_plain == 0 ? 1 : 0) : use.row_axis_if_plain;
        if (row_axis == 0) {
          known.op = use.op;
          known.op_symbol = use.node->kind().toQualString();
        }
      }
      continue;
    }
    BlockInfo info;
    info.name = use.path;
    info.shape = w.sizes().vec();
    info.op = use.op;
    info.op_symbol = use.node->kind().toQualString();
    info.autograd_visible = use.autograd_visible;
    info.dtype = dtype_name(w.scalar_type());
    int row_axis = use.row_axis_if_plain;
    if (use.transposed) row_axis = row_axis == 0 ? 1 : 0;
    if (row_axis != 0 && w.dim() != 2) row_axis = 0;
    info.row_axis = row_axis;
    info.conv = use.conv;
    found[info.name] = info;
    order.push_back(info.name);
  }

  for (const std::string& name : order) index.blocks.push_back(found[name]);
  if (stats)
    for (const auto& s : skipped) stats->skipped.push_back(s.first + ": " + s.second);
  return index;
}

}  // namespace bayesq

#include "bayesq/measure/suffix_forward.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/alias_analysis.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/torch.h>

#include "bayesq/common/errors.h"
#include "bayesq/common/log.h"
#include "bayesq/measure/measured_table.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/forward.h"
#include "bayesq/model/graph_walk.h"

namespace bayesq {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

namespace {

// Every value node `n` reads, its nested blocks' reads and results included (values defined inside those blocks
// are in the list too; callers look values up in their own sets, which never hold them).
void collect_reads(torch::jit::Block* block, std::vector<Value*>& out) {
  for (Node* m : block->nodes()) {
    out.insert(out.end(), m->inputs().begin(), m->inputs().end());
    for (torch::jit::Block* sub : m->blocks()) collect_reads(sub, out);
  }
  out.insert(out.end(), block->outputs().begin(), block->outputs().end());
}

std::vector<Value*> values_read(Node* n) {
  std::vector<Value*> out(n->inputs().begin(), n->inputs().end());
  for (torch::jit::Block* sub : n->blocks()) collect_reads(sub, out);
  return out;
}

// The attribute paths under which the module holds `weight`'s storage (a tied table has two).
std::unordered_set<std::string> paths_of(const torch::jit::Module& module, const std::string& weight) {
  const torch::Tensor t = find_tensor(module, weight);
  std::unordered_set<std::string> paths = {weight};
  auto add = [&](const std::string& name, const torch::Tensor& v) {
    if (v.defined() && v.numel() > 0 && v.data_ptr() == t.data_ptr()) paths.insert(name);
  };
  for (const auto& p : module.named_parameters(true)) add(p.name, p.value);
  for (const auto& b : module.named_buffers(true)) add(b.name, b.value);
  return paths;
}

// Every `self.<path>.training` read of a module that is not training becomes a constant false, and the branches it
// decides are folded. The measured copies are in eval mode, so nothing changes in what runs; but AliasDb counts
// batch_norm as writing its running statistics while `training` is unknown, and the `if self.training:` branch as
// writing num_batches_tracked, so without this no prefix through a BatchNorm could be cached.
void fold_eval_mode(std::shared_ptr<Graph> shared, const torch::jit::Module& module) {
  Graph& graph = *shared;
  Value* self = graph.inputs().at(0);
  std::vector<Node*> reads;
  visit_nodes(graph.block(), [&](Node* m) {
    if (m->kind() == torch::jit::prim::GetAttr && m->s(torch::jit::attr::name) == "training") reads.push_back(m);
  });
  bool folded = false;
  for (Node* m : reads) {
    const std::optional<torch::jit::Module> owner = submodule_at(m->input(0), self, module);
    if (!owner || owner->is_training()) continue;
    torch::jit::WithInsertPoint at(graph.block()->nodes().front());
    m->output()->replaceAllUsesWith(graph.insertConstant(false));
    folded = true;
  }
  if (folded) torch::jit::ConstantPropagation(shared);
}

}  // namespace

struct SuffixForward::Impl {
  std::unique_ptr<torch::jit::GraphFunction> suffix;
  torch::jit::Module module;
  const DataFile* data = nullptr;
  Compute compute;
  int64_t n = 0, batch = 0;
  std::vector<std::vector<torch::jit::IValue>> inputs;  // per batch: the data inputs, on the device
  std::vector<std::vector<torch::jit::IValue>> cached;  // per batch: the live values, in the suffix's input order
  std::vector<bool> copy_per_run;                       // per live value: the suffix writes to it in place
  bool fresh_inputs = false;                            // the suffix writes into a data input: a new batch per run
};

SuffixForward::~SuffixForward() = default;

std::unique_ptr<SuffixForward> SuffixForward::build(torch::jit::Module& module, const std::string& weight,
                                                    const DataFile& data, int64_t n, const Compute& compute) {
  try {
    return cut_and_run_prefix(module, weight, data, n, compute);
  } catch (const std::exception& e) {  // a graph the cut does not handle: full forwards, the same results
    const std::string what = e.what();
    log::debug("block ", weight, ": no cached prefix (", what.substr(0, what.find('\n')), ")");
    return nullptr;
  }
}

std::unique_ptr<SuffixForward> SuffixForward::cut_and_run_prefix(torch::jit::Module& module, const std::string& weight,
                                                                 const DataFile& data, int64_t n,
                                                                 const Compute& compute) {
  std::shared_ptr<Graph> graph = inlined_forward(module);
  fold_eval_mode(graph, module);
  Value* self = graph->inputs().at(0);
  const std::unordered_set<std::string> paths = paths_of(module, weight);
  const std::vector<Node*> nodes(graph->nodes().begin(), graph->nodes().end());

  // The cut: the first top-level node that is, or holds, a read of the weight.
  std::size_t cut = nodes.size();
  for (std::size_t i = 0; i < nodes.size() && cut == nodes.size(); ++i) {
    auto reads_weight = [&](Node* m) {
      if (m->kind() == torch::jit::prim::GetAttr && paths.count(attribute_path(m->output(), self))) cut = i;
    };
    reads_weight(nodes[i]);
    for (torch::jit::Block* sub : nodes[i]->blocks()) visit_nodes(sub, reads_weight);
  }
  if (cut == nodes.size()) return nullptr;
  // A prefix that sets module attributes or draws random numbers would not compute the same values each time
  // (the suffix repeats such nodes, as full forwards do). Dropout draws only in training and at p > 0: the measured
  // copies are in eval mode (`self.training` false), so a dropout counts when a constant says train=True and p is
  // not a constant 0.
  bool repeatable = true;
  auto check = [&](Node* m) {
    if (m->kind() == torch::jit::prim::SetAttr) repeatable = false;
    if (!m->isNondeterministic()) return;
    const std::string op = m->kind().toQualString();
    const bool dropout = (op == "aten::dropout" || op == "aten::feature_dropout" || op == "aten::alpha_dropout" ||
                          op == "aten::feature_alpha_dropout") && m->inputs().size() == 3;
    if (!dropout) {
      repeatable = false;
      return;
    }
    const c10::optional<c10::IValue> p = torch::jit::toIValue(m->input(1)), train = torch::jit::toIValue(m->input(2));
    const bool zero_p = p && p->isDouble() && p->toDouble() == 0.0;
    if (train && train->isBool() && train->toBool() && !zero_p) repeatable = false;
  };
  for (std::size_t i = 0; i < cut; ++i) {
    check(nodes[i]);
    for (torch::jit::Block* sub : nodes[i]->blocks()) visit_nodes(sub, check);
  }
  if (!repeatable) return nullptr;

  // Data-dependent nodes: those reading a data input or a data-dependent value.
  std::unordered_set<Value*> data_values(graph->inputs().begin() + 1, graph->inputs().end());
  std::vector<bool> data_dependent(nodes.size(), false);
  auto out = std::unique_ptr<SuffixForward>(new SuffixForward());
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    for (Value* v : values_read(nodes[i]))
      if (data_values.count(v)) data_dependent[i] = true;
    if (!data_dependent[i]) continue;
    for (Value* v : nodes[i]->outputs()) data_values.insert(v);
    ++out->data_nodes_;
    if (i < cut) ++out->prefix_nodes_;
  }
  if (out->prefix_nodes_ == 0) return nullptr;

  // A data-dependent prefix node that writes into an input or into a value the suffix makes afresh (x.add_(),
  // a list built from constants and appended to) would leave the suffix without its writes.
  {
    torch::jit::AliasDb aliases(graph);
    torch::jit::ValueSet outside(graph->inputs().begin(), graph->inputs().end());
    for (std::size_t i = 0; i < cut; ++i)
      if (!data_dependent[i]) outside.insert(nodes[i]->outputs().begin(), nodes[i]->outputs().end());
    for (std::size_t i = 0; i < cut; ++i)
      if (data_dependent[i] && aliases.writesToAlias(nodes[i], outside)) return nullptr;
  }

  // The live set: data-dependent values of the prefix that the suffix or the graph's outputs read.
  std::unordered_set<Value*> prefix_values;
  for (std::size_t i = 0; i < cut; ++i)
    if (data_dependent[i]) prefix_values.insert(nodes[i]->outputs().begin(), nodes[i]->outputs().end());
  std::vector<Value*> live;
  std::unordered_set<Value*> seen;
  auto keep = [&](Value* v) {
    if (prefix_values.count(v) && seen.insert(v).second) live.push_back(v);
  };
  for (std::size_t i = cut; i < nodes.size(); ++i)
    for (Value* v : values_read(nodes[i])) keep(v);
  for (Value* v : graph->outputs()) keep(v);
  if (live.empty()) return nullptr;

  // The suffix: self, the data inputs and the live values in; the prefix's data-independent nodes and every node
  // from the cut on, cloned in order.
  auto suffix = std::make_shared<Graph>();
  std::unordered_map<Value*, Value*> env;
  for (Value* v : graph->inputs()) env[v] = suffix->addInput()->copyMetadata(v);
  for (Value* v : live) env[v] = suffix->addInput()->copyMetadata(v);
  auto mapped = [&](Value* v) {
    const auto it = env.find(v);
    BQ_ASSERT(it != env.end(), "the cached-prefix suffix reads a value it does not have: %", v->debugName());
    return it->second;
  };
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    if (i < cut && data_dependent[i]) continue;
    Node* copy = suffix->insertNode(suffix->createClone(nodes[i], mapped));
    for (std::size_t k = 0; k < nodes[i]->outputs().size(); ++k) env[nodes[i]->outputs()[k]] = copy->outputs()[k];
  }
  for (Value* v : graph->outputs()) suffix->registerOutput(mapped(v));
  torch::jit::EliminateDeadCode(suffix);

  auto impl = std::make_unique<Impl>();
  {
    torch::jit::AliasDb aliases(suffix);
    const std::size_t first_live = graph->inputs().size();
    for (std::size_t k = 0; k < live.size(); ++k)
      impl->copy_per_run.push_back(aliases.hasWriters(suffix->inputs().at(first_live + k)));
    for (std::size_t k = 1; k < first_live; ++k)
      if (aliases.hasWriters(suffix->inputs().at(k))) impl->fresh_inputs = true;
  }

  // The prefix: the nodes before the cut, returning the live values. (Dead-code elimination alone would keep
  // later nodes that write in place into a live value, h.mul_() after the block read h: they go explicitly.)
  while (!graph->outputs().empty()) graph->eraseOutput(0);
  for (std::size_t i = nodes.size(); i-- > cut;) nodes[i]->destroy();
  graph->registerOutput(graph->insertNode(graph->createTuple(live))->output());
  torch::jit::EliminateDeadCode(graph);
  torch::jit::GraphFunction prefix("bayesq_prefix", graph, nullptr);

  impl->module = module;
  impl->data = &data;
  impl->compute = compute;
  impl->n = n;
  impl->batch = measure_batch_size(compute);
  const bool writes = std::find(impl->copy_per_run.begin(), impl->copy_per_run.end(), true) != impl->copy_per_run.end();
  torch::NoGradGuard no_grad;
  const torch::jit::GraphOptimizerEnabledGuard plain_interpreter(false);  // Note [Suffix in the plain interpreter]
  for (int64_t begin = 0; begin < n; begin += impl->batch) {
    const int64_t end = std::min(n, begin + impl->batch);
    torch::jit::Stack stack;
    stack.emplace_back(module._ivalue());
    std::vector<torch::jit::IValue> batch = data.batch(begin, end, compute.device);
    if (!impl->fresh_inputs) impl->inputs.push_back(batch);  // the prefix writes into no input (checked above)
    for (auto& v : batch) stack.push_back(std::move(v));
    std::vector<const void*> storages;  // the inputs' and then the live tensors' memory
    for (std::size_t i = 1; i < stack.size(); ++i)
      if (stack[i].isTensor()) storages.push_back(stack[i].toTensor().storage().data());
    prefix.run(stack);
    impl->cached.push_back(stack.at(0).toTupleRef().elements().vec());
    if (!writes) continue;
    // Copies made for in-place writes would no longer alias what they aliased in the full forward (a view of
    // another live value or of an input): such graphs run in full, as do writes into values other than tensors
    // and lists (which are copied: a list appended to in the suffix).
    for (std::size_t i = 0; i < impl->cached.back().size(); ++i) {
      const torch::jit::IValue& v = impl->cached.back()[i];
      if (impl->copy_per_run[i] && !v.isTensor() && !v.isList()) return nullptr;
      if (!v.isTensor()) continue;
      const void* data_ptr = v.toTensor().storage().data();
      if (std::find(storages.begin(), storages.end(), data_ptr) != storages.end()) return nullptr;
      storages.push_back(data_ptr);
    }
  }
  impl->suffix = std::make_unique<torch::jit::GraphFunction>("bayesq_suffix", suffix, nullptr);
  out->impl_ = std::move(impl);
  return out;
}

std::vector<torch::Tensor> SuffixForward::log_probabilities() {
  Impl& s = *impl_;
  torch::NoGradGuard no_grad;
  const torch::jit::GraphOptimizerEnabledGuard plain_interpreter(false);  // Note [Suffix in the plain interpreter]
  std::vector<torch::Tensor> out;
  for (std::size_t k = 0; k < s.cached.size(); ++k) {
    const int64_t begin = static_cast<int64_t>(k) * s.batch, end = std::min(s.n, begin + s.batch);
    torch::jit::Stack stack;
    stack.emplace_back(s.module._ivalue());
    if (s.fresh_inputs) {
      for (auto& v : s.data->batch(begin, end, s.compute.device)) stack.push_back(std::move(v));
    } else {
      stack.insert(stack.end(), s.inputs[k].begin(), s.inputs[k].end());
    }
    for (std::size_t i = 0; i < s.cached[k].size(); ++i) {
      const torch::jit::IValue& v = s.cached[k][i];
      if (!s.copy_per_run[i]) stack.push_back(v);
      else if (v.isTensor()) stack.push_back(v.toTensor().clone());
      else stack.push_back(v.toList().copy());  // a new list of the same elements (build checked the kind)
    }
    s.suffix->run(stack);
    out.push_back(log_probabilities_of(stack.at(0), s.compute));
  }
  return out;
}

}  // namespace bayesq

#include "bayesq/calibrate/grouped_conv.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/jit.h>
#include <torch/script.h>

#include "bayesq/model/graph_walk.h"

namespace bayesq {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

namespace {

// conv2d(x, w, b, stride, padding, dilation, groups) by im2col and one batched matmul (Note [Grouped convolutions
// under double backward]); a depthwise one (one input and one output channel per group) by a product and a sum
// over the kernel window, which is faster than a matmul of 1 x k by k x L per channel. Lists of one element stand
// for both dimensions, as conv2d reads them.
constexpr const char* kUnfoldedConv2d = R"JIT(
def bayesq_unfolded_conv2d(x: Tensor, w: Tensor, b: Optional[Tensor], stride: List[int], padding: List[int],
                           dilation: List[int], groups: int) -> Tensor:
    batched = x.dim() == 4
    if not batched:
        x = x.unsqueeze(0)
    n = x.size(0)
    co = w.size(0)
    kh = w.size(2)
    kw = w.size(3)
    k = w.size(1) * kh * kw
    sh = stride[0]
    sw = stride[-1]
    ph = padding[0]
    pw = padding[-1]
    dh = dilation[0]
    dw = dilation[-1]
    ho = (x.size(2) + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (x.size(3) + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = torch.im2col(x, [kh, kw], [dh, dw], [ph, pw], [sh, sw])
    if co == groups and w.size(1) == 1:
        y = (cols.view([n, groups, k, ho * wo]) * w.reshape([1, groups, k, 1])).sum(2)
    else:
        y = torch.matmul(w.reshape([1, groups, co // groups, k]), cols.view([n, groups, k, ho * wo]))
    y = y.view([n, co, ho, wo])
    if b is not None:
        y = y + b.view([1, co, 1, 1])
    if not batched:
        y = y.squeeze(0)
    return y
)JIT";

// The length of an int list given as a constant or built by prim::ListConstruct (a traced graph's form).
c10::optional<std::size_t> list_length(Value* v) {
  if (v->node()->kind() == torch::jit::prim::ListConstruct) return v->node()->inputs().size();
  if (const c10::optional<std::vector<int64_t>> list = torch::jit::constant_as<std::vector<int64_t>>(v))
    return list->size();
  return c10::nullopt;
}

bool constant_above_one(Value* v) {
  const c10::optional<int64_t> groups = torch::jit::constant_as<int64_t>(v);
  return groups && *groups > 1;
}

// The inputs of the replacement (x, w, b, stride, padding, dilation, groups) when `n` is a 2-D convolution with
// constant groups > 1 that is not transposed; empty otherwise.
std::vector<Value*> unfoldable(Node* n) {
  if (n->kind() == torch::jit::aten::conv2d && n->inputs().size() == 7 &&
      n->input(4)->type()->kind() == c10::TypeKind::ListType && constant_above_one(n->input(6)))
    return {n->input(0), n->input(1), n->input(2), n->input(3), n->input(4), n->input(5), n->input(6)};
  if (n->kind() == torch::jit::aten::_convolution && n->inputs().size() >= 12) {
    const c10::optional<bool> transposed = torch::jit::constant_as<bool>(n->input(6));
    const c10::optional<std::size_t> dims = list_length(n->input(3));  // stride: one entry per spatial dimension
    if (transposed && !*transposed && dims && *dims == 2 && constant_above_one(n->input(8)))
      return {n->input(0), n->input(1), n->input(2), n->input(3), n->input(4), n->input(5), n->input(8)};
  }
  return {};
}

}  // namespace

struct UnfoldedConvForward::Impl {
  std::unique_ptr<torch::jit::GraphFunction> function;
  c10::FunctionSchema schema;  // the module's forward: default arguments
  explicit Impl(c10::FunctionSchema s) : schema(std::move(s)) {}
};

UnfoldedConvForward::~UnfoldedConvForward() = default;

std::unique_ptr<UnfoldedConvForward> UnfoldedConvForward::build(const torch::jit::Module& module) {
  std::shared_ptr<Graph> graph = inlined_forward(module);
  std::vector<std::pair<Node*, std::vector<Value*>>> convolutions;
  visit_nodes(graph->block(), [&](Node* n) {
    std::vector<Value*> args = unfoldable(n);
    if (!args.empty()) convolutions.emplace_back(n, std::move(args));
  });
  if (convolutions.empty()) return nullptr;
  static const std::shared_ptr<torch::jit::CompilationUnit> unit = torch::jit::compile(kUnfoldedConv2d);
  const std::shared_ptr<Graph> callee =
      torch::jit::toGraphFunction(unit->get_function("bayesq_unfolded_conv2d")).graph();
  for (auto& [node, args] : convolutions) {
    torch::jit::WithInsertPoint at(node);
    const std::vector<Value*> out = torch::jit::insertGraph(*graph, *callee, args);
    node->output()->replaceAllUsesWith(out.at(0));
    node->destroy();
  }
  torch::jit::EliminateDeadCode(graph);
  auto forward = std::unique_ptr<UnfoldedConvForward>(new UnfoldedConvForward());
  forward->impl_ = std::make_unique<Impl>(module.get_method("forward").function().getSchema());
  forward->impl_->function = std::make_unique<torch::jit::GraphFunction>("bayesq_unfolded_forward", graph, nullptr);
  forward->unfolded_ = static_cast<int64_t>(convolutions.size());
  return forward;
}

torch::jit::IValue UnfoldedConvForward::operator()(const torch::jit::Module& module,
                                                  std::vector<torch::jit::IValue> inputs) const {
  torch::jit::Stack stack;
  stack.reserve(inputs.size() + 1);
  stack.emplace_back(module._ivalue());
  for (torch::jit::IValue& v : inputs) stack.push_back(std::move(v));
  impl_->schema.checkAndNormalizeInputs(stack);  // the forward's default arguments, as Module::forward fills them
  impl_->function->run(stack);
  return stack.front();
}

}  // namespace bayesq

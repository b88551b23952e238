#include "bayesq/calibrate/grouped_conv.h"

#include <torch/csrc/jit/api/function_impl.h>
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

// A 2-D convolution with constant groups > 1, stride, padding and dilation (a string padding has none).
bool unfoldable(Node* n, ConvGeometry* geometry) {
  const std::optional<Convolution> conv = convolution_of(n);
  if (!conv || conv->op != OpKind::conv2d) return false;
  if (n->kind() != torch::jit::aten::conv2d) {  // _convolution, convolution: not transposed, as a constant says
    const c10::optional<c10::IValue> transposed = torch::jit::toIValue(n->input(6));
    if (!transposed || !transposed->isBool() || transposed->toBool()) return false;
  }
  const ConvGeometry& g = conv->geometry;
  if (g.groups <= 1 || g.padding_same || g.stride.empty() || g.padding.empty() || g.dilation.empty()) return false;
  *geometry = g;
  return true;
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
  std::vector<std::pair<Node*, ConvGeometry>> convolutions;
  visit_nodes(graph->block(), [&](Node* n) {
    ConvGeometry g;
    if (unfoldable(n, &g)) convolutions.emplace_back(n, std::move(g));
  });
  if (convolutions.empty()) return nullptr;
  static const std::shared_ptr<torch::jit::CompilationUnit> unit = torch::jit::compile(kUnfoldedConv2d);
  const std::shared_ptr<Graph> callee =
      torch::jit::toGraphFunction(unit->get_function("bayesq_unfolded_conv2d")).graph();
  for (const auto& [node, g] : convolutions) {
    torch::jit::WithInsertPoint at(node);
    const std::vector<Value*> args = {node->input(0),
                                      node->input(1),
                                      node->input(2),
                                      graph->insertConstant(c10::IValue(g.stride)),
                                      graph->insertConstant(c10::IValue(g.padding)),
                                      graph->insertConstant(c10::IValue(g.dilation)),
                                      graph->insertConstant(g.groups)};
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

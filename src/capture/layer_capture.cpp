#include "bayesq/capture/layer_capture.h"

#include <algorithm>
#include <map>

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/jit.h>
#include <torch/torch.h>

#include "bayesq/common/errors.h"
#include "bayesq/common/log.h"
#include "bayesq/common/progress.h"
#include "bayesq/common/timer.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/forward.h"
#include "bayesq/model/graph_walk.h"

namespace bayesq {

namespace {

std::vector<int64_t> per_dim(const std::vector<int64_t>& values, std::size_t dims, int64_t fallback) {
  if (values.empty()) return std::vector<int64_t>(dims, fallback);
  if (values.size() == 1) return std::vector<int64_t>(dims, values[0]);
  return values;
}

// im2col for any number of spatial dims: [B, C, *spatial] -> [B * positions, C * prod(kernel)].
torch::Tensor unfold_input(torch::Tensor x, const BlockInfo& info) {
  const std::size_t dims = info.shape.size() - 2;
  const std::vector<int64_t> kernel(info.shape.begin() + 2, info.shape.end());
  const std::vector<int64_t> stride = per_dim(info.conv.stride, dims, 1);
  const std::vector<int64_t> dilation = per_dim(info.conv.dilation, dims, 1);
  std::vector<int64_t> pads;  // constant_pad_nd order: last dim first, (left, right) pairs
  for (std::size_t d = dims; d-- > 0;) {
    int64_t left, right;
    if (info.conv.padding_same) {
      const int64_t total = dilation[d] * (kernel[d] - 1);
      left = total / 2;
      right = total - left;
    } else {
      left = right = per_dim(info.conv.padding, dims, 0)[d];
    }
    pads.push_back(left);
    pads.push_back(right);
  }
  x = torch::constant_pad_nd(x, pads, 0);
  for (std::size_t d = 0; d < dims; ++d) {
    const int64_t span = (kernel[d] - 1) * dilation[d] + 1;
    x = x.unfold(static_cast<int64_t>(2 + d), span, stride[d]);
  }
  // x: [B, C, o_1..o_n, span_1..span_n]; keep every dilation-th tap.
  for (std::size_t d = 0; d < dims; ++d)
    if (dilation[d] > 1)
      x = x.slice(static_cast<int64_t>(2 + dims + d), 0, c10::nullopt, dilation[d]);
  std::vector<int64_t> order = {0};
  for (std::size_t d = 0; d < dims; ++d) order.push_back(static_cast<int64_t>(2 + d));
  order.push_back(1);
  for (std::size_t d = 0; d < dims; ++d) order.push_back(static_cast<int64_t>(2 + dims + d));
  x = x.permute(order);
  int64_t taps = 1;
  for (int64_t k : kernel) taps *= k;
  return x.reshape({-1, x.size(static_cast<int64_t>(dims + 1)) * taps});
}

bool capturable(const BlockInfo& info, std::string* reason) {
  if (info.op == OpKind::fused) {
    *reason = "consumed by a fused inference operator: activations cannot be read";
    return false;
  }
  if (info.op == OpKind::conv_transpose) {
    *reason = "transposed convolution: not supported by layer capture";
    return false;
  }
  if ((info.op == OpKind::conv1d || info.op == OpKind::conv2d || info.op == OpKind::conv3d) &&
      info.conv.stride.empty()) {
    *reason = "convolution geometry is not constant in the graph";
    return false;
  }
  return true;
}

// Rows of the gradient at a block's output, [samples, rows]: channels last.
torch::Tensor output_rows(const torch::Tensor& g, const BlockInfo& info, bool activation_on_right) {
  if (info.op == OpKind::conv1d || info.op == OpKind::conv2d || info.op == OpKind::conv3d)
    return g.movedim(1, -1).reshape({-1, g.size(1)});
  if (activation_on_right) return g.dim() == 1 ? g.reshape({1, -1}) : g.movedim(-2, -1).reshape({-1, g.size(-2)});
  return g.reshape({-1, g.size(-1)});
}

// A value defined inside a prim::If branch (scripted models branch on attributes such as use_res_connect) is out
// of scope at the graph's return. Each enclosing If gets an extra Optional output: the value from its own
// branch, None from the others. Returns the top-level value, or nullptr inside a loop.
torch::jit::Value* lift_to_top(torch::jit::Graph& graph, torch::jit::Value* v) {
  torch::jit::Block* block = v->node()->owningBlock();
  while (block != graph.block()) {
    torch::jit::Node* owner = block->owningNode();
    if (owner->kind() != torch::jit::prim::If) return nullptr;
    for (torch::jit::Block* branch : owner->blocks()) {
      if (branch == block) {
        branch->registerOutput(v);
      } else {
        torch::jit::WithInsertPoint guard(branch->return_node());
        branch->registerOutput(graph.insertConstant(c10::IValue()));
      }
    }
    v = owner->addOutput()->setType(c10::OptionalType::create(v->type()));
    block = owner->owningBlock();
  }
  return v;
}

// Note [Unrolled recurrence]: aten::lstm / gru / rnn_tanh / rnn_relu run every layer and time step inside one
// operator, so a weight's inputs (a layer's input sequence for weight_ih, the previous hidden states for weight_hh)
// and the gradients at its products are not values of the graph. For capture only, each such node is replaced by
// the same recurrence written with stock ops (PyTorch's gate order and equations, eval mode: no dropout), which
// also returns, per layer, its input sequence [T, B, in] and, per layer and direction (unit), the input product
// x W_ih^T + b_ih [T, B, gates H], the previous hidden states [T, B, H] and every step's h W_hh^T + b_hh [B, gates H]
// (T per unit, in the order the steps ran). A weight_ih block is then a linear layer on its layer's inputs with G
// from the gradient at the input product; weight_hh one on the previous hidden states with G from the gradients at
// the hidden products (for the LSTM and the plain RNN those are the gate pre-activations, as for weight_ih; for
// the GRU the candidate gate's rows see r * that gradient, which is what the hidden product gets).
constexpr const char* kUnrolledSource = R"JIT(
def bq_recurrence(input: Tensor, hx: List[Tensor], params: List[Tensor], has_biases: bool, num_layers: int,
                  dropout: float, train: bool, bidirectional: bool, batch_first: bool, cell: int):
    # cell: 0 LSTM (hx = [h0, c0]), 1 GRU, 2 RNN tanh, 3 RNN relu (hx = [h0])
    x = input.transpose(0, 1) if batch_first else input
    dirs = 2 if bidirectional else 1
    stride = 4 if has_biases else 2
    steps = x.size(0)
    layer_inputs: List[Tensor] = []
    hidden_inputs: List[Tensor] = []
    input_products: List[Tensor] = []
    hidden_products: List[Tensor] = []
    h_last: List[Tensor] = []
    c_last: List[Tensor] = []
    for layer in range(num_layers):
        layer_inputs.append(x)
        outputs: List[Tensor] = []
        for d in range(dirs):
            k = layer * dirs + d
            xw = torch.matmul(x, params[k * stride].t())
            if has_biases:
                xw = xw + params[k * stride + 2]
            input_products.append(xw)
            h = hx[0][k]
            c = hx[1][k] if cell == 0 else h
            hs: List[Tensor] = []
            previous: List[Tensor] = []
            for s in range(steps):
                t = steps - 1 - s if d == 1 else s
                previous.append(h)
                hw = torch.matmul(h, params[k * stride + 1].t())
                if has_biases:
                    hw = hw + params[k * stride + 3]
                hidden_products.append(hw)
                if cell == 0:  # i, f, g, o
                    gates = (xw[t] + hw).chunk(4, 1)
                    c = torch.sigmoid(gates[1]) * c + torch.sigmoid(gates[0]) * torch.tanh(gates[2])
                    h = torch.sigmoid(gates[3]) * torch.tanh(c)
                elif cell == 1:  # r, z, n
                    xg = xw[t].chunk(3, 1)
                    hg = hw.chunk(3, 1)
                    r = torch.sigmoid(xg[0] + hg[0])
                    z = torch.sigmoid(xg[1] + hg[1])
                    n = torch.tanh(xg[2] + r * hg[2])
                    h = (1.0 - z) * n + z * h
                elif cell == 2:
                    h = torch.tanh(xw[t] + hw)
                else:
                    h = torch.relu(xw[t] + hw)
                hs.append(h)
            if d == 1:
                hs.reverse()
            hidden_inputs.append(torch.stack(previous))
            outputs.append(torch.stack(hs))
            h_last.append(h)
            c_last.append(c)
        x = torch.cat(outputs, 2)
    out = x.transpose(0, 1) if batch_first else x
    return out, torch.stack(h_last), torch.stack(c_last), layer_inputs, input_products, hidden_inputs, hidden_products
)JIT";

// The values an unrolled recurrence adds (Note [Unrolled recurrence]), lifted to the top of the graph.
struct UnrolledValues {
  torch::jit::Value *layer_inputs = nullptr, *input_products = nullptr, *hidden_inputs = nullptr,
                    *hidden_products = nullptr;
};

// Replaces recurrent node `n` (inputs as the .input overloads) by the unrolled recurrence; nullopt-like (all
// nullptr) when the node sits in a loop.
UnrolledValues unroll_recurrence(torch::jit::Graph& graph, torch::jit::Node* n) {
  static const std::shared_ptr<torch::jit::CompilationUnit> unit = torch::jit::compile(kUnrolledSource);
  const std::string kind = n->kind().toQualString();
  const int64_t cell = kind == "aten::lstm" ? 0 : kind == "aten::gru" ? 1 : kind == "aten::rnn_tanh" ? 2 : 3;
  auto body = torch::jit::toGraphFunction(unit->get_function("bq_recurrence")).graph()->copy();
  torch::jit::Inline(*body);
  torch::jit::WithInsertPoint before(n);
  std::vector<torch::jit::Value*> inputs(n->inputs().begin(), n->inputs().end());
  if (cell != 0)  // hx is one tensor: the function takes the LSTM's list form
    inputs[1] = graph.insertNode(graph.createList(c10::TensorType::get(), {inputs[1]}))->output();
  inputs.push_back(graph.insertConstant(cell));
  torch::jit::Value* tuple = torch::jit::insertGraph(graph, *body, inputs).at(0);
  torch::jit::Node* unpack = graph.insertNode(graph.createTupleUnpack(tuple));
  // (output, h_n, c_n) of an LSTM, (output, h_n) of the others; then the four lists.
  for (std::size_t i = 0; i < n->outputs().size(); ++i) n->outputs()[i]->replaceAllUsesWith(unpack->outputs()[i]);
  n->destroy();
  UnrolledValues v;
  torch::jit::Value** lists[] = {&v.layer_inputs, &v.input_products, &v.hidden_inputs, &v.hidden_products};
  for (std::size_t i = 0; i < 4; ++i) {
    *lists[i] = lift_to_top(graph, unpack->outputs()[3 + i]);
    if (!*lists[i]) return UnrolledValues{};
  }
  return v;
}

// One batch of an embedding's lookups (layer_capture.h): token counts into row_moment, and with the gradient at
// the looked-up rows, its [dim, dim] moment into input_moment[0].
void accumulate_embedding(LayerStats& s, const BlockInfo& info, const torch::Tensor& indices, int64_t padding_idx,
                          const torch::Tensor& gradient) {
  const torch::Tensor flat = indices.reshape({-1}).to(torch::kLong);
  torch::Tensor counts = torch::bincount(flat, {}, info.rows()).to(torch::kFloat32);
  if (padding_idx >= 0 && padding_idx < info.rows()) counts[padding_idx] = 0;
  if (!s.row_moment.defined()) s.row_moment = torch::zeros({info.rows()}, counts.options());
  s.row_moment.add_(counts);
  s.rows_seen += flat.numel();
  if (gradient.defined()) {
    const torch::Tensor gr = gradient.to(torch::kFloat32).reshape({-1, info.cols()});
    if (s.input_moment.empty()) s.input_moment.push_back(torch::zeros({info.cols(), info.cols()}, gr.options()));
    s.input_moment[0].addmm_(gr.t(), gr);
  }
}

}  // namespace

std::vector<torch::Tensor> activation_rows(const torch::Tensor& activation, const BlockInfo& info,
                                           bool activation_on_right) {
  const torch::Tensor x = activation.to(torch::kFloat32);
  torch::Tensor rows;
  int64_t groups = 1;
  if (info.op == OpKind::conv1d || info.op == OpKind::conv2d || info.op == OpKind::conv3d) {
    rows = unfold_input(x, info);
    groups = info.conv.groups;
  } else if (activation_on_right) {
    rows = x.dim() == 1 ? x.reshape({1, -1}) : x.movedim(-2, -1).reshape({-1, x.size(-2)});
  } else {
    rows = x.reshape({-1, x.size(-1)});
  }
  const int64_t cols = rows.size(1) / groups;
  std::vector<torch::Tensor> out;
  for (int64_t g = 0; g < groups; ++g) out.push_back(rows.slice(1, g * cols, (g + 1) * cols));
  return out;
}

void add_input_moments(torch::Tensor& moments, const std::vector<torch::Tensor>& rows) {
  BQ_ASSERT(!rows.empty(), "no activation rows");
  const int64_t groups = static_cast<int64_t>(rows.size()), n = rows[0].size(0), cols = rows[0].size(1);
  if (!moments.defined()) moments = torch::zeros({groups, cols, cols}, rows[0].options());
  BQ_ASSERT(moments.size(0) == groups && moments.size(1) == cols, "moments ", moments.sizes(), " for ", groups,
            " groups of ", cols, " columns");
  if (groups == 1) {
    moments[0].addmm_(rows[0].t(), rows[0]);
    return;
  }
  // The groups lie side by side in one [n, groups x cols] matrix (activation_rows' slices of it): one batched
  // product for all, where one product per group cost a launch per channel of a depthwise layer on the GPU.
  const torch::Tensor& first = rows[0];
  const int64_t group_stride = cols * first.stride(1);
  BQ_ASSERT(rows.back().data_ptr<float>() == first.data_ptr<float>() + (groups - 1) * group_stride &&
                rows.back().strides() == first.strides(),
            "activation rows of ", groups, " groups are not slices of one matrix");
  const torch::Tensor x = first.as_strided({groups, n, cols}, {group_stride, first.stride(0), first.stride(1)});
  moments.baddbmm_(x.transpose(1, 2), x);
}

std::vector<LayerStats> capture_layer_stats(torch::jit::Module& module, const BlockIndex& index,
                                            const std::vector<std::size_t>& blocks, const DataFile& data,
                                            const CaptureParams& params, const Compute& compute,
                                            const std::string& model_path, CaptureTimes* times) {
  CaptureTimes spent;
  const torch::Device device = compute.device;
  module.eval();
  module.to(device);
  check_input_count(module, data, model_path);
  const int64_t n = compute.examples(data.size());

  std::vector<LayerStats> stats(index.blocks.size());
  std::map<std::string, std::size_t> wanted;
  for (std::size_t b : blocks) {
    stats[b].name = index.blocks[b].name;
    if (capturable(index.blocks[b], &stats[b].reason)) wanted[index.blocks[b].name] = b;
  }

  // Instrument a copy of the inlined forward graph: activations (and outputs) of every use of a wanted block.
  std::shared_ptr<torch::jit::Graph> graph = inlined_forward(module);
  struct Tap {
    std::size_t block;
    bool on_right;
    std::size_t activation_output, result_output;
    int64_t padding_idx;  // embeddings
    // Recurrent weights: activation_output and result_output are lists (Note [Unrolled recurrence]); the
    // activation is element `layer` (weight_ih) or `unit` (weight_hh) of its list, the result element `unit` of
    // the input products, or elements [unit T, (unit + 1) T) of the hidden products.
    WeightUse::Recurrent recurrent = WeightUse::Recurrent::none;
    int64_t layer = 0, unit = 0, units = 0;
  };
  // A method returns one value: the original output and the taps go out as one tuple.
  std::vector<torch::jit::Value*> returned = {graph->outputs().at(0)};
  std::vector<Tap> taps;
  // Recurrent layers first: their nodes are replaced, so the other uses are read from the graph afterwards.
  {
    std::map<torch::jit::Node*, std::vector<WeightUse>> recurrent;
    for (const WeightUse& use : find_weight_uses(*graph))
      if (use.recurrent != WeightUse::Recurrent::none && use.activation && wanted.count(use.path))
        recurrent[use.node].push_back(use);
    for (const auto& [node, uses] : recurrent) {
      const UnrolledValues lists = unroll_recurrence(*graph, node);
      if (!lists.layer_inputs) continue;  // inside a loop
      std::size_t first = returned.size();
      for (torch::jit::Value* v : {lists.layer_inputs, lists.input_products, lists.hidden_inputs, lists.hidden_products})
        returned.push_back(v);
      for (const WeightUse& use : uses) {
        const bool input_weight = use.recurrent == WeightUse::Recurrent::input_weight;
        Tap tap{wanted.at(use.path), false, first + (input_weight ? 0 : 2), first + (input_weight ? 1 : 3), -1};
        tap.recurrent = use.recurrent;
        tap.layer = use.layer;
        tap.unit = use.unit;
        tap.units = use.units;
        taps.push_back(tap);
      }
    }
  }
  for (const WeightUse& use : find_weight_uses(*graph)) {
    const auto it = wanted.find(use.path);
    // A table tied to an output layer is a block of the layer's kind: its lookups are not what the stats describe.
    if (it == wanted.end() || !use.activation || use.op != index.blocks[it->second].op) continue;
    torch::jit::Value* activation = lift_to_top(*graph, use.activation);
    torch::jit::Value* result = params.output_gradients ? lift_to_top(*graph, use.node->outputs().at(0)) : nullptr;
    if (!activation || (params.output_gradients && !result)) continue;  // inside a loop
    Tap tap{it->second, use.activation_on_right, returned.size(), 0, use.padding_idx};
    returned.push_back(activation);
    if (params.output_gradients) {
      tap.result_output = returned.size();
      returned.push_back(result);
    }
    taps.push_back(tap);
  }
  {
    torch::jit::WithInsertPoint at_end(graph->return_node());
    torch::jit::Value* tuple = graph->insertNode(graph->createTuple(returned))->output();
    graph->eraseOutput(0);
    graph->registerOutput(tuple);
  }
  for (const auto& w : wanted)
    if (std::none_of(taps.begin(), taps.end(), [&](const Tap& t) { return t.block == w.second; }))
      stats[w.second].reason = "no readable activation in the forward graph";
  if (taps.empty()) return stats;
  torch::jit::GraphFunction function("bayesq_capture", graph, nullptr);

  // Gradients at block outputs need a graph: the wanted blocks' weights require grad for the pass.
  std::vector<std::pair<torch::Tensor, bool>> saved;
  if (params.output_gradients) {
    for (const auto& p : module.named_parameters(true)) {
      saved.emplace_back(p.value, p.value.requires_grad());
      p.value.set_requires_grad(false);
    }
    for (const auto& w : wanted) find_tensor(module, w.first).set_requires_grad(true);
    torch::manual_seed(compute.seed);
  }
  struct Restore {
    std::vector<std::pair<torch::Tensor, bool>>& saved;
    ~Restore() {
      for (auto& s : saved) s.first.set_requires_grad(s.second);
    }
  } restore{saved};

  torch::jit::GraphOptimizerEnabledGuard plain_interpreter(false);
  // Note [Backward probe]: G needs one backward through the model, and some inference operators have none (the
  // fused encoder layer of a no-grad trace, aten::_transformer_encoder_layer_fwd). As with the double-backward
  // probe (curvature.cpp), no error text is read: if the backward of the first batch throws anything (its forward
  // ran), the capture goes on without output gradients (G = I, GPTQ's input-only metric) and every block's stats
  // say so; that batch's activations still count.
  bool output_gradients = params.output_gradients;
  c10::optional<torch::NoGradGuard> no_grad;
  if (!output_gradients) no_grad.emplace();
  std::vector<torch::Tensor> moments(index.blocks.size());  // per block, A of every group: [groups, cols, cols]
  Progress progress("layer capture", n, "examples");
  for (int64_t begin = 0; begin < n; begin += compute.batch_size) {
    const int64_t end = std::min(n, begin + compute.batch_size);
    auto part_start = Clock::now();
    torch::jit::Stack stack;
    stack.emplace_back(module._ivalue());
    for (auto& v : data.batch(begin, end, device)) stack.push_back(std::move(v));
    try {
      function.run(stack);
    } catch (const std::exception&) {
      forward_batch(module, data, begin, end, device, model_path);  // reports the error with shapes
      throw;
    }
    const std::vector<torch::jit::IValue> outputs = stack.at(0).toTupleRef().elements().vec();
    // What a tap reads this batch: undefined / empty where its branch was not taken.
    auto activation_of = [&](const Tap& t) {
      const torch::jit::IValue& v = outputs.at(t.activation_output);
      if (t.recurrent == WeightUse::Recurrent::none) return v.isTensor() ? v.toTensor() : torch::Tensor();
      if (!v.isList()) return torch::Tensor();
      return v.toList().get(static_cast<std::size_t>(
          t.recurrent == WeightUse::Recurrent::input_weight ? t.layer : t.unit)).toTensor();
    };
    auto results_of = [&](const Tap& t) {
      const torch::jit::IValue& v = outputs.at(t.result_output);
      std::vector<torch::Tensor> out;
      if (t.recurrent == WeightUse::Recurrent::none) {
        if (v.isTensor()) out.push_back(v.toTensor());
      } else if (v.isList()) {
        const c10::List<c10::IValue> list = v.toList();
        const std::size_t per = t.recurrent == WeightUse::Recurrent::input_weight ? 1 : list.size() / t.units;
        const std::size_t at = t.recurrent == WeightUse::Recurrent::input_weight ? t.unit : t.unit * per;
        for (std::size_t i = 0; i < per; ++i) out.push_back(list.get(at + i).toTensor());
      }
      return out;
    };
    spent.forward += seconds_since(part_start);
    part_start = Clock::now();
    std::vector<torch::Tensor> results(taps.size());
    if (output_gradients) {
      const torch::Tensor logits = select_output(outputs.at(0), compute.output).to(torch::kFloat32);
      const torch::Tensor log_p = torch::log_softmax(logits.reshape({-1, logits.size(-1)}), 1);
      const torch::Tensor sampled = torch::multinomial(log_p.detach().exp(), 1);
      const torch::Tensor objective = log_p.gather(1, sampled).sum();
      // Taps in branches not taken this batch are None.
      std::vector<torch::Tensor> outputs_of_blocks;
      std::vector<std::pair<std::size_t, std::size_t>> taken;  // tap, its first result; each tap's results in a row
      std::vector<std::size_t> counts(taps.size(), 0);
      for (std::size_t k = 0; k < taps.size(); ++k) {
        const std::vector<torch::Tensor> r = results_of(taps[k]);
        if (r.empty()) continue;
        taken.emplace_back(k, outputs_of_blocks.size());
        counts[k] = r.size();
        outputs_of_blocks.insert(outputs_of_blocks.end(), r.begin(), r.end());
      }
      try {
        const auto grads = torch::autograd::grad({objective}, outputs_of_blocks, {}, false, false, /*allow_unused=*/true);
        for (const auto& [k, at] : taken) {
          if (counts[k] == 1) {
            results[k] = grads[at];  // undefined when the output does not reach the objective
            continue;
          }
          // A recurrence's steps: one that does not reach the objective has a zero gradient.
          std::vector<torch::Tensor> parts;
          for (std::size_t i = at; i < at + counts[k]; ++i)
            parts.push_back(grads[i].defined() ? grads[i] : torch::zeros_like(outputs_of_blocks[i]));
          results[k] = torch::stack(parts);
        }
      } catch (const std::exception&) {
        if (begin != 0) throw;  // the first batch had a backward: this is not a missing derivative
        output_gradients = false;
        no_grad.emplace();
        for (auto& w : wanted)
          stats[w.second].gradient_fallback = "no backward through the model's operators: G = identity";
      }
    }
    spent.backward += seconds_since(part_start);
    part_start = Clock::now();
    torch::NoGradGuard accumulate;
    for (std::size_t k = 0; k < taps.size(); ++k) {
      const Tap& t = taps[k];
      const torch::Tensor activation = activation_of(t);
      if (!activation.defined()) continue;  // a branch not taken
      const BlockInfo& info = index.blocks[t.block];
      LayerStats& s = stats[t.block];
      if (info.op == OpKind::embedding) {
        accumulate_embedding(s, info, activation, t.padding_idx, output_gradients ? results[k] : torch::Tensor());
        continue;
      }
      const std::vector<torch::Tensor> rows = activation_rows(activation.detach(), info, t.on_right);
      add_input_moments(moments[t.block], rows);
      s.rows_seen += rows[0].size(0);
      if (output_gradients && results[k].defined()) {
        const torch::Tensor gr = output_rows(results[k].to(torch::kFloat32), info, t.on_right);
        if (!s.row_moment.defined()) s.row_moment = torch::zeros({gr.size(1)}, gr.options());
        s.row_moment.add_(gr.square().sum(0));
      }
    }
    for (auto& w : wanted) stats[w.second].examples += end - begin;
    spent.moments += seconds_since(part_start);
    progress.advance(end - begin);
  }
  progress.finish();
  if (times) *times = spent;
  for (auto& w : wanted) {
    LayerStats& s = stats[w.second];
    if (index.blocks[w.second].op == OpKind::embedding) {
      if (!s.row_moment.defined() || s.rows_seen == 0) continue;
      s.row_moment.div_(static_cast<double>(s.rows_seen));
      const int64_t dim = index.blocks[w.second].cols();
      if (s.input_moment.empty() || !output_gradients) {
        s.input_moment = {torch::eye(dim, s.row_moment.options())};
      } else {
        s.input_moment[0].div_(static_cast<double>(s.examples));
      }
      s.captured = true;
      continue;
    }
    if (!moments[w.second].defined()) continue;
    s.input_moment = moments[w.second].div_(static_cast<double>(s.rows_seen)).unbind(0);
    if (s.row_moment.defined()) s.row_moment.div_(static_cast<double>(s.examples));
    s.captured = true;
  }
  return stats;
}

}  // namespace bayesq

// Layer capture, GPTQ against a reference implementation, and the K-FAC error-feedback path.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <thread>

#include <torch/script.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include "bayesq/capture/layer_capture.h"
#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/common/errors.h"
#include "bayesq/data/data_file.h"
#include "bayesq/gptq/design_queue.h"
#include "bayesq/gptq/gptq.h"
#include "bayesq/gptq/kfac.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/block_tensor.h"
#include "bayesq/model/model_file.h"
#include "bayesq/gptq/feedback.h"
#include "bayesq/pipeline/quantize.h"
#include "bayesq/pipeline/quantize_model.h"
#include "bayesq/pipeline/session.h"
#include "fixtures.h"

using namespace bayesq;
using bayesq_test::fixture;
using bayesq_test::scratch;

namespace {

struct Fixture {
  LoadedModel model;
  BlockIndex index;
  std::vector<LayerStats> calib, held_out;
  Fixture(const std::string& name, const std::string& calib_file, const std::string& eval_file,
          bool gradients = false) {
    model = load_model(fixture(name));
    index = discover_blocks(model.module);
    std::vector<std::size_t> all;
    for (std::size_t b = 0; b < index.blocks.size(); ++b) all.push_back(b);
    CaptureParams p;
    p.output_gradients = gradients;
    calib = capture_layer_stats(model.module, index, all, DataFile::load(fixture(calib_file)), p, Compute{}, name);
    if (!eval_file.empty())
      held_out = capture_layer_stats(model.module, index, all, DataFile::load(fixture(eval_file)), CaptureParams{},
                                     Compute{}, name);
  }
  std::size_t block(const std::string& name) const { return static_cast<std::size_t>(index.find(name)); }
  torch::Tensor rows(std::size_t b) const { return block_rows(find_tensor(model.module, index.blocks[b].name), index.blocks[b]); }
  // Sum over held-out activation rows of ||(Q - W) x||^2, group by group.
  double output_error(std::size_t b, const torch::Tensor& quantized_rows) const {
    const LayerStats& s = held_out[b];
    const torch::Tensor delta = (quantized_rows - rows(b)).to(torch::kFloat64);
    const int64_t per = delta.size(0) / s.groups();
    double total = 0.0;
    for (int64_t g = 0; g < s.groups(); ++g) {
      const torch::Tensor d = delta.slice(0, g * per, (g + 1) * per);
      total += (d.matmul(s.input_moment[static_cast<std::size_t>(g)].to(torch::kFloat64)) * d).sum().item<double>();
    }
    return total * static_cast<double>(s.rows_seen);
  }
};

// Block b's weights quantized without feedback, Lloyd and uniform at each of `widths`, in that order.
std::vector<QuantizedBlock> plain_options(const Fixture& f, std::size_t b, std::initializer_list<int> widths) {
  const BlockInfo& info = f.index.blocks[b];
  const std::vector<float> w = block_rows_vector(find_tensor(f.model.module, info.name), info);
  std::vector<QuantizedBlock> out;
  for (int bits : widths)
    for (CodebookKind kind : {CodebookKind::lloyd, CodebookKind::uniform_asymmetric}) {
      QuantizerParams qp;
      qp.kind = kind;
      out.push_back(quantize_block(BlockWeights{w.data(), nullptr, info.rows(), info.cols()}, bits, qp));
    }
  return out;
}
}  // namespace

TEST(Capture, InputMomentsMatchTheActivationsComputedDirectly) {
  // The classifier of the separable net sees mean-pooled pw2 features; recompute them in Python-free libtorch.
  Fixture f("separable.pt", "separable_calib.pt", "");
  const std::size_t fc = f.block("fc.weight");
  ASSERT_TRUE(f.calib[fc].captured);
  EXPECT_EQ(f.calib[fc].rows_seen, 96);
  const std::size_t dw = f.block("dw1.weight");
  EXPECT_EQ(f.calib[dw].groups(), 16);                  // depthwise: one A per channel
  EXPECT_EQ(f.calib[dw].input_moment[0].size(0), 9);    // 1 channel x 3 x 3 taps
  EXPECT_EQ(f.calib[dw].rows_seen, 96 * 16 * 16);       // positions of a stride-1, padding-1 conv
  const std::size_t stem = f.block("stem.weight");
  // Unfold check: A of the stem equals unfold(x)^T unfold(x) / rows computed with torch's own im2col.
  const torch::Tensor x = DataFile::load(fixture("separable_calib.pt")).input(0);
  const torch::Tensor cols = torch::im2col(x, {3, 3}, {1, 1}, {1, 1}, {1, 1}).transpose(1, 2).reshape({-1, 9});
  const torch::Tensor expected = cols.t().matmul(cols) / double(cols.size(0));
  EXPECT_TRUE(torch::allclose(f.calib[stem].input_moment[0], expected, 1e-4, 1e-5));
}

// A grouped convolution's input moments in one batched product are each group's own X_g^T X_g, summed over
// batches, on the CPU and (where there is one) on CUDA. Oracle: one product per group, in double.
TEST(Capture, GroupedMomentsInOneProductAreEachGroupsOwn) {
  torch::manual_seed(3);
  std::vector<torch::Device> devices = {torch::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(torch::kCUDA);
  const int64_t cols = 9;
  for (const torch::Device& device : devices) {
    for (int64_t groups : {1, 2, 7}) {
      torch::Tensor moments;
      std::vector<torch::Tensor> oracle;  // one tensor each (copies of one tensor would share its storage)
      for (int64_t g = 0; g < groups; ++g) oracle.push_back(torch::zeros({cols, cols}, torch::kFloat64));
      for (int64_t n : {40, 13}) {
        const torch::Tensor all = torch::randn({n, groups * cols}).to(device);
        std::vector<torch::Tensor> rows;  // activation_rows' slices
        for (int64_t g = 0; g < groups; ++g) rows.push_back(all.slice(1, g * cols, (g + 1) * cols));
        add_input_moments(moments, rows);
        for (int64_t g = 0; g < groups; ++g) {
          const torch::Tensor x = rows[static_cast<std::size_t>(g)].to(torch::kCPU, torch::kFloat64);
          oracle[static_cast<std::size_t>(g)] += x.t().matmul(x);
        }
      }
      ASSERT_EQ(moments.sizes(), (std::vector<int64_t>{groups, cols, cols}));
      for (int64_t g = 0; g < groups; ++g)
        EXPECT_TRUE(torch::allclose(moments[g].to(torch::kCPU, torch::kFloat64),
                                    oracle[static_cast<std::size_t>(g)], 1e-5, 1e-5))
            << "group " << g << " of " << groups << " on " << device;
    }
  }
  // Rows that are not side by side in one matrix are an internal error, not a silent mix-up.
  torch::Tensor moments;
  EXPECT_THROW(add_input_moments(moments, {torch::randn({4, 3}), torch::randn({4, 3})}), std::exception);
}

// An embedding is a linear layer on one-hot inputs, y = E^T onehot(t) (layer_capture.h): the lookup model's table
// statistics must be the one-hot model's with the roles swapped, row_moment = diag A (token frequencies) and the
// diagonal of input_moment = diag G, except the lookup's padding row (no gradient: frequency 0). Both models sample
// the same labels from the same logits (one-hot products are exact), which the head's equal statistics confirm.
TEST(Capture, EmbeddingStatisticsAreThoseOfALinearLayerOnOneHotInputs) {
  for (bool gradients : {true, false}) {
    Fixture lookup("lookup.pt", "lookup_calib.pt", "", gradients);
    Fixture one_hot("lookup_onehot.pt", "lookup_calib.pt", "", gradients);
    const BlockInfo& table = lookup.index.blocks[lookup.block("table.weight")];
    ASSERT_EQ(table.op, OpKind::embedding);
    ASSERT_EQ(table.rows(), 30);
    const LayerStats& e = lookup.calib[lookup.block("table.weight")];
    const LayerStats& l = one_hot.calib[one_hot.block("table_t")];
    ASSERT_TRUE(e.captured && l.captured) << e.reason << l.reason;
    EXPECT_EQ(e.rows_seen, l.rows_seen);
    EXPECT_EQ(e.examples, l.examples);
    const torch::Tensor a = l.input_moment[0];  // [30, 30], diagonal
    EXPECT_EQ((a - torch::diag(a.diagonal())).abs().max().item<float>(), 0.0f);
    torch::Tensor frequency = a.diagonal().clone();
    EXPECT_GT(frequency[0].item<float>(), 0.0f);  // padding is looked up ...
    frequency[0] = 0.0f;                           // ... but never receives a gradient
    EXPECT_TRUE(torch::allclose(e.row_moment, frequency, 1e-6, 0.0)) << e.row_moment << frequency;
    EXPECT_EQ(e.row_moment.slice(0, 24).abs().sum().item<float>(), 0.0f);  // never looked up
    ASSERT_EQ(e.input_moment.size(), 1u);
    if (gradients) {
      const LayerStats& h = lookup.calib[lookup.block("head.weight")];
      const LayerStats& h1 = one_hot.calib[one_hot.block("head.weight")];
      EXPECT_TRUE(torch::allclose(h.row_moment, h1.row_moment, 1e-5, 1e-8));  // the same sampled labels
      EXPECT_TRUE(torch::allclose(e.input_moment[0].diagonal(), l.row_moment, 1e-4, 1e-8))
          << e.input_moment[0].diagonal() << l.row_moment;
      EXPECT_TRUE(torch::allclose(e.input_moment[0], e.input_moment[0].t()));
    } else {
      EXPECT_TRUE(torch::equal(e.input_moment[0], torch::eye(8)));
      EXPECT_FALSE(l.row_moment.defined());
    }
    // Tokens the calibration never reads (and the padding row) get the prior alone in the K-FAC precision.
    const std::vector<float> precision = kfac_precision(e, table, 0.01);
    const float prior = precision[0];
    for (int64_t v : {0, 24, 29})
      for (int64_t d = 0; d < 8; ++d) EXPECT_EQ(precision[static_cast<std::size_t>(v * 8 + d)], prior);
    EXPECT_GT(precision[8], 2.0f * prior);
  }
}

// Note [Unrolled recurrence]: a recurrent weight's input moment is that of the sequence it multiplies. Oracle: the
// fused operator itself (at::lstm / at::gru), one layer at a time: weight_ih_l0 sees the model's input,
// weight_ih_l1 layer 0's output, weight_hh the previous hidden states (the zero initial state, then the direction's
// outputs but its last). So the unrolled recurrence in the capture must be PyTorch's, gates and reverse order
// included. G: an LSTM's input and hidden products share their gradient (the gate pre-activations), as do a GRU's
// reset and update rows.
TEST(Capture, RecurrentWeightsSeeTheSequencesTheirOperatorMultiplies) {
  for (const char* model : {"cov_lstm.pt", "cov_bilstm.pt", "cov_bigru.pt"}) {
    SCOPED_TRACE(model);
    const std::string name = model;
    const bool gru = name == "cov_bigru.pt", two_way = name != "cov_lstm.pt";
    const std::string calib = name.substr(0, name.size() - 3) + "_calib.pt";
    Fixture f(name, calib, "", /*gradients=*/true);
    const torch::Tensor x = DataFile::load(fixture(calib)).input(0);  // [B, T, 12], batch first
    const int64_t B = x.size(0), T = x.size(1), H = 24, dirs = two_way ? 2 : 1;
    auto param = [&](const std::string& p) { return find_tensor(f.model.module, "rnn." + p); };
    auto moment = [](const torch::Tensor& rows) { return rows.t().matmul(rows) / double(rows.size(0)); };
    torch::NoGradGuard no_grad;
    torch::Tensor layer_input = x;
    for (int64_t layer = 0; layer < 2; ++layer) {
      std::vector<torch::Tensor> params;
      for (int64_t d = 0; d < dirs; ++d) {
        const std::string suffix = "_l" + std::to_string(layer) + (d == 1 ? "_reverse" : "");
        for (const char* p : {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}) params.push_back(param(p + suffix));
      }
      const torch::Tensor h0 = torch::zeros({dirs, B, H});
      const torch::Tensor out = gru ? std::get<0>(at::gru(layer_input, h0, params, true, 1, 0.0, false, two_way, true))
                                    : std::get<0>(at::lstm(layer_input, {h0, h0}, params, true, 1, 0.0, false,
                                                           two_way, true));
      for (int64_t d = 0; d < dirs; ++d) {
        const std::string suffix = "_l" + std::to_string(layer) + (d == 1 ? "_reverse" : "");
        const LayerStats& ih = f.calib[f.block("rnn.weight_ih" + suffix)];
        const LayerStats& hh = f.calib[f.block("rnn.weight_hh" + suffix)];
        ASSERT_TRUE(ih.captured && hh.captured) << ih.reason << hh.reason;
        EXPECT_EQ(ih.rows_seen, B * T);
        EXPECT_TRUE(torch::allclose(ih.input_moment[0], moment(layer_input.reshape({B * T, -1})), 1e-4, 1e-6));
        // Previous hidden states: forward h_{t-1} (h_{-1} = 0); reverse h_{t+1} (h_T = 0).
        const torch::Tensor own = out.slice(2, d * H, (d + 1) * H);
        const torch::Tensor previous =
            torch::cat({torch::zeros({B, 1, H}), d == 0 ? own.slice(1, 0, T - 1) : own.slice(1, 1, T)}, 1);
        EXPECT_TRUE(torch::allclose(hh.input_moment[0], moment(previous.reshape({B * T, H})), 1e-4, 1e-6));
        ASSERT_TRUE(ih.row_moment.defined() && hh.row_moment.defined());
        // (Not every row: the reverse layer 1 of a model that reads the last step runs one step, from c = 0, where
        // the forget gate has no gradient.)
        EXPECT_GT(ih.row_moment.max().item<float>(), 0.0f);
        const int64_t shared = gru ? 2 * H : 4 * H;  // GRU: the candidate rows see r * the gradient
        EXPECT_TRUE(torch::allclose(ih.row_moment.slice(0, 0, shared), hh.row_moment.slice(0, 0, shared), 1e-4, 1e-12));
        if (gru) EXPECT_FALSE(torch::allclose(ih.row_moment, hh.row_moment, 1e-4, 1e-12));
      }
      layer_input = out;
    }
  }
}

TEST(Capture, FusedOperatorsAreReportedNotCaptured) {
  Fixture f("transformer_fused.pt", "transformer_calib.pt", "");
  EXPECT_FALSE(f.calib[f.block("encoder.layers.0.linear1.weight")].captured);
  EXPECT_NE(f.calib[f.block("encoder.layers.0.linear1.weight")].reason.find("fused"), std::string::npos);
  EXPECT_TRUE(f.calib[f.block("head.weight")].captured);
}

TEST(Gptq, MatchesAReferenceImplementationOnLinearAndConvLayers) {
  Fixture f("separable.pt", "separable_calib.pt", "");
  c10::impl::GenericDict cases(c10::StringType::get(), c10::AnyType::get());
  struct Case {
    const char* block;
    bool act_order;
    int64_t group;
    int bits;
    bool dynamic = false;  // groups' grids from the weights as the loop reaches them (not fixed up front)
  };
  const Case all[] = {{"fc.weight", false, 0, 3},   {"fc.weight", true, 0, 2},    {"fc.weight", true, 16, 3},
                      {"pw2.weight", false, 0, 4},  {"pw2.weight", true, 8, 3},   {"stem.weight", false, 0, 3},
                      {"pw1.weight", false, 4, 2},  {"fc.weight", false, 12, 3, true}, {"pw2.weight", true, 8, 2, true}};
  int n = 0;
  for (const Case& c : all) {
    const std::size_t b = f.block(c.block);
    const torch::Tensor W = f.rows(b);
    const torch::Tensor H = f.calib[b].input_moment[0];
    GptqParams params;
    params.act_order = c.act_order;
    params.block_size = 16;  // several lazy blocks even for narrow layers
    const GptqResult r = gptq_quantize(
        W, H, c.group, /*static_groups=*/c.group > 0 && !c.dynamic,
        [&](const torch::Tensor& w, int64_t) { return minmax_levels(w, c.bits, /*fp16_metadata=*/false); }, params);
    const std::string name = "case" + std::to_string(n++);
    cases.insert(name + "/W", W);
    cases.insert(name + "/H", H);
    cases.insert(name + "/Q", r.quantized);
    cases.insert(name + "/bits", int64_t{c.bits});
    cases.insert(name + "/act_order", int64_t{c.act_order});
    cases.insert(name + "/group", c.group);
    cases.insert(name + "/dynamic", int64_t{c.dynamic});
    cases.insert(name + "/percdamp", params.percdamp);
    cases.insert(name + "/block", params.block_size);
  }
  const std::string path = scratch("gptq_cases.pt");
  {
    const std::vector<char> bytes = torch::pickle_save(cases);
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  const std::string command =
      std::string(BAYESQ_PYTHON) + " " + BAYESQ_SOURCE_DIR + "/tests/python/gptq_reference.py " + path;
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
}

TEST(Gptq, DepthwiseConvolutionBeatsRoundToNearest) {
  // Each depthwise channel has its own 9 x 9 H. Against rounding to nearest on the same grid (GPTQ without error
  // feedback), on held-out inputs.
  Fixture f("separable.pt", "separable_calib.pt", "separable_eval.pt");
  for (const char* name : {"dw1.weight", "dw2.weight"}) {
    const std::size_t b = f.block(name);
    const BlockInfo& info = f.index.blocks[b];
    for (int bits : {2, 3, 4}) {
      const QuantizedBlock gptq = quantize_with_feedback(f.rows(b), info, f.calib[b], bits,
                                                         CodebookKind::uniform_asymmetric, 0, nullptr, GptqParams{});
      const torch::Tensor rows = f.rows(b);
      const torch::Tensor nearest = minmax_levels(rows, bits, true)
                                        .gather(1, torch::searchsorted(
                                                       (0.5 * (minmax_levels(rows, bits, true).slice(1, 1) +
                                                               minmax_levels(rows, bits, true).slice(1, 0, -1)))
                                                           .contiguous(),
                                                       rows.contiguous()));
      const double e_gptq = f.output_error(b, dequantized_rows(gptq, torch::kCPU));
      const double e_rtn = f.output_error(b, nearest);
      EXPECT_LT(e_gptq, e_rtn) << name << " at " << bits << " bits";
    }
  }
}

TEST(Gptq, KfacFeedbackWithIdentityGAndTheGptqGridIsGptq) {
  // G = I, uniform bits and GPTQ's own (fp16) min-max grid given as fixed codebooks: the K-FAC path must reproduce
  // GPTQ exactly, code for code.
  Fixture f("separable.pt", "separable_calib.pt", "");
  for (const char* name : {"pw2.weight", "fc.weight", "dw1.weight"}) {
    const std::size_t b = f.block(name);
    const BlockInfo& info = f.index.blocks[b];
    LayerStats stats = f.calib[b];
    stats.row_moment = torch::ones({info.rows()});
    const QuantizedBlock gptq =
        quantize_with_feedback(f.rows(b), info, stats, 3, CodebookKind::uniform_asymmetric, 0, nullptr, GptqParams{});
    const QuantizedBlock kfac = quantize_with_feedback(f.rows(b), info, stats, 3, CodebookKind::uniform_asymmetric, 0,
                                                       &gptq.codebooks, GptqParams{});
    EXPECT_EQ(kfac.codes, gptq.codes) << name;
    EXPECT_EQ(kfac.dequantize(), gptq.dequantize()) << name;
    // And the K-FAC loss is then GPTQ's quadratic objective 1/2 N sum_r D_r (A + damp mean(diag A) I) D_r^T.
    const torch::Tensor delta = dequantized_rows(gptq, torch::kCPU) - f.rows(b);
    double expected = 0.0;
    const int64_t per = info.rows() / stats.groups();
    for (int64_t g = 0; g < stats.groups(); ++g) {
      const torch::Tensor a = stats.input_moment[static_cast<std::size_t>(g)].to(torch::kFloat64);
      const torch::Tensor h = a + 0.01 * a.diagonal().mean() * torch::eye(a.size(0), torch::kFloat64);
      const torch::Tensor d = delta.slice(0, g * per, (g + 1) * per).to(torch::kFloat64);
      expected += (d.matmul(h) * d).sum().item<double>();
    }
    expected *= 0.5 * double(stats.examples);
    EXPECT_NEAR(kfac_loss(delta, info, stats, 0.01), expected, 1e-9 * expected) << name;
  }
}

TEST(Gptq, CholeskyFailureHealsByDampingAndIsReported) {
  // A rank-deficient Hessian (duplicated inputs) without damping cannot be factorised.
  const torch::Tensor x = torch::randn({64, 3});
  const torch::Tensor X = torch::cat({x, x}, 1);
  const torch::Tensor H = X.t().matmul(X) / 64.0;
  const torch::Tensor W = torch::randn({4, 6});
  GptqParams params;
  params.percdamp = 0.0;
  const GptqResult r =
      gptq_quantize(W, H, 0, false, [](const torch::Tensor& w, int64_t) { return minmax_levels(w, 3, true); }, params);
  EXPECT_GT(r.stats.damp_increases, 0);
  EXPECT_GT(r.stats.percdamp_used, 0.0);
  EXPECT_TRUE(torch::isfinite(r.quantized).all().item<bool>());

  // Through the whole pipeline the report says so.
  QuantizeOptions o;
  o.model = fixture("logreg.pt");
  o.calib = fixture("logreg_rank_deficient.pt");
  o.method.method = Method::gptq;
  o.bits = {4.0};
  o.method.gptq.percdamp = 0.0;
  o.output = scratch("rank_deficient.pt");
  const nlohmann::json report = run_quantize(o).report_json.at(0);
  const nlohmann::json& block = report["details"]["gptq_blocks"][0];
  EXPECT_GT(block["damp_increases"].get<int>(), 0) << report["details"].dump();
}

// One lazy block (feed_back_block): the per-row loop on host threads, and the CUDA kernel where there is a GPU,
// give exactly what GPTQ's column-by-column tensor loop gives (round each column to the nearest of its slot's
// levels, ties to the lower, then subtract e (x) Hinv[i, i+1:] from the later columns): codes, values and errors
// equal, bit for bit. Three problems, two level slots over the columns, rows padded with +inf to the widest
// codebook, and a weight exactly on a boundary.
TEST(Gptq, LazyBlockIsTheColumnByColumnLoop) {
  torch::manual_seed(11);
  const int64_t problems = 3, rows = 37, count = 20, width = 8;
  torch::Tensor w1 = torch::randn({problems, rows, count});
  const torch::Tensor X = torch::randn({problems, count, 60});
  const torch::Tensor H = torch::bmm(X, X.transpose(1, 2)) / 60.0 + 0.1 * torch::eye(count);
  const torch::Tensor hinv = torch::linalg_cholesky(torch::cholesky_inverse(torch::linalg_cholesky(H)), /*upper=*/true);
  torch::Tensor levels = std::get<0>(torch::sort(1.5 * torch::randn({2, problems, rows, width}), 3));
  levels.select(2, 5).slice(2, 4).fill_(std::numeric_limits<float>::infinity());  // row 5: a 2-bit codebook
  const std::vector<int32_t> column_slot = {0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1};
  w1[1][3][0] = 0.5f * (levels[0][1][3][2] + levels[0][1][3][3]).item<float>();  // a tie: the lower level
  // The oracle: the tensor loop, one column at a time.
  torch::Tensor W = w1.clone(), Q = torch::zeros_like(w1), E = torch::zeros_like(w1);
  torch::Tensor codes = torch::zeros(w1.sizes(), torch::kLong);
  for (int64_t p = 0; p < problems; ++p)
    for (int64_t i = 0; i < count; ++i) {
      const torch::Tensor lv = levels[column_slot[static_cast<std::size_t>(i)]][p];
      const torch::Tensor boundaries = (0.5 * (lv.slice(1, 1) + lv.slice(1, 0, -1))).contiguous();
      const torch::Tensor w = W[p].select(1, i);
      const torch::Tensor code = torch::searchsorted(boundaries, w.unsqueeze(1).contiguous()).squeeze(1);
      const torch::Tensor q = lv.gather(1, code.unsqueeze(1)).squeeze(1);
      const torch::Tensor e = (w - q) / hinv[p][i][i];
      Q[p].select(1, i).copy_(q);
      E[p].select(1, i).copy_(e);
      codes[p].select(1, i).copy_(code);
      W[p].slice(1, i + 1).sub_(e.unsqueeze(1) * hinv[p][i].slice(0, i + 1).unsqueeze(0));
    }
  EXPECT_EQ(codes[1][3][0].item<int64_t>(), 2);
  const FedBackBlock host = feed_back_block(w1, hinv, levels, column_slot, /*host=*/true);
  EXPECT_TRUE(torch::equal(host.codes.to(torch::kLong), codes));
  EXPECT_TRUE(torch::equal(host.quantized, Q));
  EXPECT_TRUE(torch::equal(host.error, E));
  EXPECT_LT(host.codes.select(1, 5).max().item<int64_t>(), 4);  // never the padding
  if (!torch::cuda::is_available()) return;
  const torch::Device cuda(torch::kCUDA);
  const FedBackBlock device = feed_back_block(w1.to(cuda), hinv.to(cuda), levels.to(cuda), column_slot);
  ASSERT_TRUE(device.codes.is_cuda());
  EXPECT_TRUE(torch::equal(device.codes.cpu(), host.codes));
  EXPECT_TRUE(torch::equal(device.quantized.cpu(), host.quantized));
  EXPECT_TRUE(torch::equal(device.error.cpu(), host.error));
}

// The batched GPTQ of a grouped convolution gives, problem by problem, exactly gptq_quantize's codes: with and
// without act-order, with a dead column in one group and a rank-deficient H (damping must grow) in another.
TEST(Gptq, BatchedProblemsEqualOneGptqPerProblem) {
  torch::manual_seed(7);
  const int64_t problems = 6, rows = 5, cols = 9, bits = 3;
  const torch::Tensor W = torch::randn({problems, rows, cols});
  const torch::Tensor X = torch::randn({problems, cols, 40});
  torch::Tensor H = torch::bmm(X, X.transpose(1, 2)) / 40.0;
  H[1].select(0, 4).zero_();  // a dead input in problem 1
  H[1].select(1, 4).zero_();
  const torch::Tensor v = torch::randn({cols, 1});
  H[2] = (v.matmul(v.t())).clone();  // rank one: Cholesky fails until damping grows
  const torch::Tensor levels = minmax_levels(W.reshape({problems * rows, cols}), bits, true).reshape({problems, rows, -1});
  for (bool act_order : {false, true}) {
    GptqParams params;
    params.act_order = act_order;
    params.percdamp = 0.0;  // undamped: the rank-one H cannot be factorised until damping is added
    const GptqResult batched = gptq_quantize_batched(W, H, levels, params);
    int increases = 0;
    for (int64_t p = 0; p < problems; ++p) {
      const torch::Tensor grid = levels[p];
      const GptqResult one = gptq_quantize(W[p], H[p], 0, false,
                                           [&](const torch::Tensor&, int64_t) { return grid; }, params);
      EXPECT_TRUE(torch::equal(batched.codes[p], one.codes)) << "problem " << p << ", act-order " << act_order;
      EXPECT_TRUE(torch::allclose(batched.quantized[p], one.quantized)) << "problem " << p;
      increases = std::max(increases, one.stats.damp_increases);
    }
    EXPECT_GT(increases, 0) << "the rank-one problem needs more damping";
    EXPECT_GT(batched.stats.damp_increases, 0);
    EXPECT_EQ(batched.stats.dead_columns, 1);
  }
}

// Options stacked into one feedback pass give each option exactly what a pass of its own gives (rows are
// independent given H; the +inf padding of shorter codebooks is never chosen).
TEST(Gptq, StackedOptionsEqualOnePassPerOption) {
  Fixture f("separable.pt", "separable_calib.pt", "");
  for (const char* name : {"pw2.weight", "fc.weight", "dw2.weight"}) {
    const std::size_t b = f.block(name);
    const BlockInfo& info = f.index.blocks[b];
    const std::vector<QuantizedBlock> plain = plain_options(f, b, {1, 3, 5});
    std::vector<FeedbackOption> options;
    for (const QuantizedBlock& p : plain) options.push_back({p.bits, p.kind, &p.codebooks});
    const std::vector<QuantizedBlock> stacked =
        quantize_with_feedback_options(f.rows(b), info, f.calib[b], options, 0, GptqParams{});
    ASSERT_EQ(stacked.size(), options.size());
    for (std::size_t e = 0; e < options.size(); ++e) {
      const QuantizedBlock single = quantize_with_feedback_options(f.rows(b), info, f.calib[b], {options[e]}, 0,
                                                                   GptqParams{}).front();
      EXPECT_EQ(stacked[e].codes, single.codes) << name << " option " << e;
      for (uint8_t c : stacked[e].codes) ASSERT_LT(int(c), 1 << options[e].bits) << name << " option " << e;
    }
  }
}

// Note [Stacked rows in chunks]: a block whose stacked options exceed GptqParams::stack_bytes goes through in
// chunks of rows. Oracle: one pass over all rows gives every option the same codes and the same damping; the row
// losses returned are the metric's of the decoded rows, for the options that asked for them.
TEST(Gptq, StackedRowsInChunksEqualOnePass) {
  Fixture f("separable.pt", "separable_calib.pt", "", /*gradients=*/true);
  for (const char* name : {"pw2.weight", "fc.weight"}) {
    const std::size_t b = f.block(name);
    const BlockInfo& info = f.index.blocks[b];
    ASSERT_EQ(f.calib[b].groups(), 1);
    ASSERT_GT(info.rows(), 6) << name;
    const std::vector<QuantizedBlock> plain = plain_options(f, b, {2, 4});
    std::vector<FeedbackOption> options;
    for (const QuantizedBlock& p : plain) options.push_back({p.bits, p.kind, &p.codebooks, p.bits == 2});
    GptqParams one, chunked;
    chunked.stack_bytes = 3 * int64_t(options.size()) * info.cols() * int64_t(sizeof(float));  // 3 rows a pass
    const KfacMetric metric(f.calib[b], info.rows(), one.percdamp, torch::kCPU);
    GptqStats one_stats, chunked_stats;
    std::vector<torch::Tensor> one_losses, chunked_losses;
    const std::vector<QuantizedBlock> a = quantize_with_feedback_options(f.rows(b), info, f.calib[b], options, 0, one,
                                                                         &one_stats, &metric, &one_losses);
    const std::vector<QuantizedBlock> c = quantize_with_feedback_options(
        f.rows(b), info, f.calib[b], options, 0, chunked, &chunked_stats, &metric, &chunked_losses);
    ASSERT_EQ(c.size(), options.size());
    for (std::size_t e = 0; e < options.size(); ++e) {
      EXPECT_EQ(a[e].codes, c[e].codes) << name << " option " << e;
      ASSERT_EQ(chunked_losses[e].defined(), options[e].row_losses);
      if (!options[e].row_losses) continue;
      const torch::Tensor oracle = metric.row_losses(dequantized_rows(c[e], torch::kCPU) - f.rows(b));
      EXPECT_TRUE(torch::allclose(chunked_losses[e], oracle, 1e-12, 0.0)) << name << " option " << e;
      EXPECT_TRUE(torch::allclose(one_losses[e], oracle, 1e-12, 0.0)) << name << " option " << e;
    }
    EXPECT_EQ(chunked_stats.dead_columns, one_stats.dead_columns);
    EXPECT_EQ(chunked_stats.damp_increases, one_stats.damp_increases);
  }
}

// Codes kept on the rows' device (what the prefilter's predictions score) are the codes the host gets, in every
// path of quantize_with_feedback_options (grouped convolutions batched, one pass, chunks of rows), and gathering
// the levels at them gives dequantize()'s values bit for bit. Oracle: the same call without device codes.
TEST(Gptq, CodesKeptOnTheDeviceAreTheHostCodes) {
  Fixture f("separable.pt", "separable_calib.pt", "");
  for (const char* name : {"dw2.weight", "pw2.weight", "fc.weight"}) {
    const std::size_t b = f.block(name);
    const BlockInfo& info = f.index.blocks[b];
    const std::vector<QuantizedBlock> plain = plain_options(f, b, {2, 5});
    std::vector<FeedbackOption> options;
    for (const QuantizedBlock& p : plain) options.push_back({p.bits, p.kind, &p.codebooks});
    GptqParams one, chunked;
    chunked.stack_bytes = 3 * int64_t(options.size()) * info.cols() * int64_t(sizeof(float));  // 3 rows a pass
    for (const GptqParams& params : {one, chunked}) {
      const std::vector<QuantizedBlock> host =
          quantize_with_feedback_options(f.rows(b), info, f.calib[b], options, 0, params);
      std::vector<torch::Tensor> codes;
      const std::vector<QuantizedBlock> kept = quantize_with_feedback_options(
          f.rows(b), info, f.calib[b], options, 0, params, nullptr, nullptr, nullptr, &codes);
      ASSERT_EQ(codes.size(), options.size()) << name;
      for (std::size_t e = 0; e < options.size(); ++e) {
        EXPECT_TRUE(kept[e].codes.empty()) << name << " option " << e;
        ASSERT_EQ(codes[e].scalar_type(), torch::kUInt8);
        ASSERT_EQ(codes[e].sizes(), (std::vector<int64_t>{info.rows(), info.cols()})) << name;
        const torch::Tensor c = codes[e].contiguous();
        EXPECT_EQ(std::vector<uint8_t>(c.data_ptr<uint8_t>(), c.data_ptr<uint8_t>() + c.numel()), host[e].codes)
            << name << " option " << e << (params.stack_bytes == one.stack_bytes ? " (one pass)" : " (chunks)");
        EXPECT_TRUE(torch::equal(dequantized_rows_by_gather(kept[e], torch::kCPU, codes[e]),
                                 dequantized_rows(host[e], torch::kCPU)))
            << name << " option " << e;
      }
    }
  }
}

TEST(Gptq, KfacBayesqLayerErrorIsNoWorseThanGptqAtEqualAverageBits) {
  struct Case {
    const char* model;
    const char* calib;
    const char* eval;
  };
  for (const Case& c : {Case{"separable.pt", "separable_calib.pt", "separable_eval.pt"},
                        Case{"transformer.pt", "transformer_calib.pt", "transformer_eval.pt"}}) {
    Fixture f(c.model, c.calib, c.eval);
    Session session({fixture(c.model), fixture(c.calib), ""}, Compute{});
    MethodConfig gptq;
    gptq.method = Method::gptq;
    const QuantizedModel g = quantize_model(session, gptq, 3.0);
    int64_t bits = 0, weights = 0;
    for (std::size_t b = 0; b < g.blocks.size(); ++b) {
      bits += g.blocks[b].cost().total();
      weights += f.index.blocks[b].numel();
    }
    MethodConfig kfac;
    kfac.method = Method::bayesq;
    kfac.curvature = Curvature::kfac;
    // The K-FAC loss model (the expected table) is what approximates layer output error; a measured table
    // optimises the network's KL instead, which is not what this criterion scores.
    kfac.table_loss = TableLoss::expected;
    const QuantizedModel k = quantize_model(session, kfac, double(bits) / double(weights));
    double e_gptq = 0.0, e_kfac = 0.0;
    int64_t kfac_bits = 0;
    for (std::size_t b = 0; b < g.blocks.size(); ++b) {
      e_gptq += f.output_error(b, dequantized_rows(g.blocks[b], torch::kCPU));
      e_kfac += f.output_error(b, dequantized_rows(k.blocks[b], torch::kCPU));
      kfac_bits += k.blocks[b].cost().total();
    }
    EXPECT_LE(kfac_bits, bits) << c.model;
    EXPECT_LE(e_kfac, e_gptq) << c.model;
    RecordProperty(std::string("layer_error_gptq_") + c.model, std::to_string(e_gptq));
    RecordProperty(std::string("layer_error_kfac_") + c.model, std::to_string(e_kfac));
  }
}

// Note [Two grids]: each row of a uniform K-FAC option is the better, in the feedback objective d H d^T, of the
// feedback on the designed grid and on the min-max (RTN) grid. Oracle: both passes run here separately, row by row.
TEST(Gptq, KfacUniformOptionKeepsTheBetterGridOfEachRow) {
  Fixture f("separable.pt", "separable_calib.pt", "", /*gradients=*/true);
  int mixed = 0;
  for (const char* name : {"pw2.weight", "fc.weight", "dw2.weight"}) {
    const std::size_t b = f.block(name);
    const BlockInfo& info = f.index.blocks[b];
    const std::vector<float> w = block_rows_vector(find_tensor(f.model.module, info.name), info);
    const BlockWeights weights{w.data(), nullptr, info.rows(), info.cols()};
    const std::vector<float> precision = kfac_precision(f.calib[b], info, 0.01);
    const BlockWeights weighted{w.data(), precision.data(), info.rows(), info.cols()};
    QuantizerParams qp;
    qp.kind = CodebookKind::uniform_asymmetric;
    const GptqParams gp;
    const KfacMetric metric(f.calib[b], info.rows(), gp.percdamp, torch::kCPU);
    for (int bits : {1, 2, 3}) {
      const QuantizedBlock got =
          kfac_option_blocks(weighted, info, f.calib[b], {{bits, CodebookKind::uniform_asymmetric}}, qp, gp,
                             torch::kCPU).front();
      const QuantizedBlock designed = quantize_block(weighted, bits, qp);
      const QuantizedBlock minmax = quantize_block_rtn(weights, bits, 0);
      const QuantizedBlock a = quantize_with_feedback_options(f.rows(b), info, f.calib[b],
                                                              {{bits, designed.kind, &designed.codebooks}}, 0, gp).front();
      const QuantizedBlock c = quantize_with_feedback_options(f.rows(b), info, f.calib[b],
                                                              {{bits, minmax.kind, &minmax.codebooks}}, 0, gp).front();
      const torch::Tensor la = metric.row_losses(dequantized_rows(a, torch::kCPU) - f.rows(b));
      const torch::Tensor lc = metric.row_losses(dequantized_rows(c, torch::kCPU) - f.rows(b));
      bool used_a = false, used_c = false;
      for (int64_t r = 0; r < info.rows(); ++r) {
        const QuantizedBlock& best = lc[r].item<double>() < la[r].item<double>() ? c : a;
        (&best == &a ? used_a : used_c) = true;
        const auto begin = best.codes.begin() + r * info.cols();
        EXPECT_TRUE(std::equal(begin, begin + info.cols(), got.codes.begin() + r * info.cols()))
            << name << " row " << r << " at " << bits << " bits";
        EXPECT_EQ(got.codebooks[static_cast<std::size_t>(r)].scale, best.codebooks[static_cast<std::size_t>(r)].scale);
        EXPECT_EQ(got.codebooks[static_cast<std::size_t>(r)].offset, best.codebooks[static_cast<std::size_t>(r)].offset);
      }
      mixed += used_a && used_c;
    }
  }
  EXPECT_GT(mixed, 0);  // the choice is made per row: some block mixes both grids
}

// Note [Codes kept for the swap]: K-FAC options fed back with their codes kept on the device are the options
// without, codebooks and host codes alike, and the kept codes are the host codes, also in the rows where a
// uniform option took the min-max grid. On the CPU and (where there is one) on CUDA. Oracle: the same designs fed
// back without device codes.
TEST(Gptq, KfacOptionsWithDeviceCodesAreTheHostOptions) {
  Fixture f("separable.pt", "separable_calib.pt", "", /*gradients=*/true);
  std::vector<torch::Device> devices = {torch::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(torch::kCUDA);
  const std::vector<std::pair<int, CodebookKind>> choices = {
      {2, CodebookKind::lloyd}, {2, CodebookKind::uniform_asymmetric}, {3, CodebookKind::uniform_asymmetric}};
  for (const torch::Device& device : devices) {
    int64_t minmax_rows = 0;
    for (const char* name : {"pw2.weight", "fc.weight", "dw2.weight"}) {
      const std::size_t b = f.block(name);
      const BlockInfo& info = f.index.blocks[b];
      LayerStats stats = f.calib[b];
      for (torch::Tensor& a : stats.input_moment) a = a.to(device);
      if (stats.row_moment.defined()) stats.row_moment = stats.row_moment.to(device);
      const std::vector<float> w = block_rows_vector(find_tensor(f.model.module, info.name), info);
      const std::vector<float> precision = kfac_precision(f.calib[b], info, 0.01);
      const BlockWeights weighted{w.data(), precision.data(), info.rows(), info.cols()};
      const QuantizerParams qp;
      const GptqParams gp;
      const KfacDesigns designs = design_kfac_options(weighted, choices, qp, /*captured=*/true);
      const std::vector<QuantizedBlock> host =
          feed_back_kfac_options(designs, weighted, info, stats, qp, gp, device);
      std::vector<torch::Tensor> codes;
      const std::vector<QuantizedBlock> kept =
          feed_back_kfac_options(designs, weighted, info, stats, qp, gp, device, nullptr, &codes);
      ASSERT_EQ(kept.size(), choices.size());
      ASSERT_EQ(codes.size(), choices.size()) << name;
      for (std::size_t e = 0; e < choices.size(); ++e) {
        const std::string where = std::string(name) + " option " + std::to_string(e) + " on " + device.str();
        EXPECT_EQ(kept[e].codes, host[e].codes) << where;
        ASSERT_EQ(kept[e].codebooks.size(), host[e].codebooks.size()) << where;
        for (std::size_t r = 0; r < host[e].codebooks.size(); ++r) {
          EXPECT_EQ(kept[e].codebooks[r].levels, host[e].codebooks[r].levels) << where << " row " << r;
          minmax_rows += host[e].codebooks[r].levels != designs.designed[e].codebooks[r].levels ? 1 : 0;
        }
        ASSERT_EQ(codes[e].device().type(), device.type()) << where;
        ASSERT_EQ(codes[e].scalar_type(), torch::kUInt8) << where;
        const torch::Tensor c = codes[e].cpu().contiguous();
        EXPECT_EQ(std::vector<uint8_t>(c.data_ptr<uint8_t>(), c.data_ptr<uint8_t>() + c.numel()), host[e].codes)
            << where;
        EXPECT_TRUE(torch::equal(dequantized_rows_by_gather(kept[e], codes[e].device(), codes[e]).cpu(),
                                 dequantized_rows(host[e], torch::kCPU)))
            << where;
      }
    }
    EXPECT_GT(minmax_rows, 0) << "no row took the min-max grid on " << device.str();  // the mixing was exercised
  }
}

// Note [Designs ahead of the device]: the queue hands out each block's designs in block order, as design(block)
// made them, designs no further ahead than its bound of weights allows, and a design's exception reaches take()
// at that block. (That the table is the same with and without designing ahead:
// Pipeline.DesignBesideTheMeasurementGivesTheSameModel.)
TEST(Gptq, DesignQueueGivesEachBlocksDesignsInOrderWithinItsBound) {
  std::atomic<int> made{0};
  const std::vector<std::size_t> blocks{0, 2, 3, 5, 7};
  DesignQueue queue(
      blocks,
      [&](std::size_t b) {
        ++made;
        if (b == 7) throw std::runtime_error("design of block 7 failed");
        KfacDesigns d;
        d.seconds = double(b);  // marks which block this is
        d.designed.resize(b);
        return d;
      },
      [](std::size_t) { return int64_t{10}; }, /*ahead_weights=*/15);
  int taken = 0;
  for (std::size_t b : {std::size_t{0}, std::size_t{2}, std::size_t{3}, std::size_t{5}}) {
    // Time to run ahead: 10 weights each and a bound of 15, so two designs wait at most.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_LE(made.load() - taken, 2) << "before block " << b;
    const KfacDesigns d = queue.take(b);
    ++taken;
    EXPECT_EQ(d.seconds, double(b));
    EXPECT_EQ(d.designed.size(), b);
  }
  EXPECT_THROW(queue.take(7), std::runtime_error);
}

// Note [Option prefilter]: a prediction is the min-max grid fed back and scored in the K-FAC metric without
// damping. Oracle: the same feedback run here one width per pass, scored by its own metric. And an input that is
// never non-zero (zero row and column of A) costs nothing: the prediction does not move when that column's weights
// do (kept inside each row's range, so the grids stay the same), where a damped metric charges them at every width.
TEST(Gptq, PredictionIsTheFedBackMinmaxGridAndIgnoresDeadInputs) {
  Fixture f("separable.pt", "separable_calib.pt", "", /*gradients=*/true);
  const std::size_t b = f.block("fc.weight");
  const BlockInfo& info = f.index.blocks[b];
  LayerStats stats = f.calib[b];
  ASSERT_TRUE(stats.captured);
  const torch::Tensor rows = f.rows(b).contiguous();
  const int64_t n = rows.size(0), cols = rows.size(1);
  // A column that is neither the smallest nor the largest weight of any row.
  const torch::Tensor extreme = (rows == rows.amin(1, true)) | (rows == rows.amax(1, true));
  const torch::Tensor free_columns = torch::nonzero(extreme.any(0).logical_not()).flatten();
  ASSERT_GT(free_columns.numel(), 0);
  const int64_t dead = free_columns[0].item<int64_t>();
  torch::Tensor a = stats.input_moment[0].clone();
  a.select(0, dead).zero_();
  a.select(1, dead).zero_();
  stats.input_moment[0] = a;
  torch::Tensor moved = rows.clone();
  moved.select(1, dead).copy_(0.5 * (rows.amin(1) + rows.amax(1)));
  ASSERT_FALSE(torch::equal(moved, rows));
  const std::vector<std::pair<int, CodebookKind>> choices = {
      {2, CodebookKind::uniform_asymmetric}, {3, CodebookKind::uniform_asymmetric},
      {4, CodebookKind::uniform_asymmetric}, {8, CodebookKind::uniform_asymmetric}};
  const GptqParams gp;
  auto predict = [&](const torch::Tensor& w) {
    const BlockWeights weights{w.data_ptr<float>(), nullptr, n, cols};
    return predicted_option_losses(weights, info, stats, choices, 0, gp, torch::kCPU);
  };
  const std::vector<double> predicted = predict(rows), predicted_moved = predict(moved);
  const KfacMetric undamped(stats, n, 0.0, torch::kCPU);
  for (std::size_t k = 0; k < choices.size(); ++k) {
    const int bits = choices[k].first;
    const BlockWeights weights{rows.data_ptr<float>(), nullptr, n, cols};
    const QuantizedBlock grid = quantize_block_rtn(weights, bits, 0);
    const QuantizedBlock fed = quantize_with_feedback_options(rows, info, stats, {{bits, grid.kind, &grid.codebooks}},
                                                              0, gp).front();
    EXPECT_DOUBLE_EQ(predicted[k], undamped.loss(dequantized_rows(fed, torch::kCPU) - rows)) << bits << " bits";
    EXPECT_EQ(predicted_moved[k], predicted[k]) << bits << " bits";
  }
  EXPECT_LT(predicted.back(), 1e-3 * predicted.front());  // no floor: 8 bits far below 2 bits
}

// A Lloyd table of 2^b levels holds a row of at most 2^b distinct weights exactly (the quickstart CNN's and
// ResNet-50's stems: rows of 9 weights), which the uniform grids do not tell: such choices are predicted as the
// weights at their fp16 levels. Oracle: the Lloyd option itself, designed and fed back, decodes to exactly those.
TEST(Gptq, PredictionKnowsLloydTablesHoldRowsOfFewDistinctWeights) {
  Fixture f("separable.pt", "separable_calib.pt", "", /*gradients=*/true);
  const std::size_t b = f.block("pw2.weight");
  const BlockInfo& info = f.index.blocks[b];
  const LayerStats& stats = f.calib[b];
  ASSERT_TRUE(stats.captured);
  // Each row's weights moved to the nearest of four unevenly spaced values (multiples of the row's spread, far
  // apart against fp16's steps): four distinct per row.
  torch::Tensor rows = f.rows(b).contiguous().clone();
  const int64_t n = rows.size(0), cols = rows.size(1);
  ASSERT_GT(cols, 8);
  const torch::Tensor multiples = torch::tensor({-1.3f, -0.2f, 0.5f, 1.7f});
  for (int64_t r = 0; r < n; ++r) {
    const torch::Tensor values = multiples * rows[r].std();
    const torch::Tensor nearest = (rows[r].unsqueeze(1) - values.unsqueeze(0)).abs().argmin(1);
    rows[r].copy_(values.index_select(0, nearest));
  }
  const std::vector<float> precision = kfac_precision(stats, info, 0.01);
  const BlockWeights weights{rows.data_ptr<float>(), precision.data(), n, cols};
  EXPECT_EQ(max_distinct_per_group(weights, 0, 256), 4);
  const std::vector<std::pair<int, CodebookKind>> choices = {
      {1, CodebookKind::lloyd}, {1, CodebookKind::uniform_asymmetric}, {2, CodebookKind::lloyd},
      {2, CodebookKind::uniform_asymmetric}, {3, CodebookKind::lloyd}};
  const GptqParams gp;
  const std::vector<double> p = predicted_option_losses(weights, info, stats, choices, 0, gp, torch::kCPU);
  const torch::Tensor held = rows.to(torch::kFloat16).to(torch::kFloat32);
  const KfacMetric undamped(stats, n, 0.0, torch::kCPU);
  EXPECT_DOUBLE_EQ(p[2], undamped.loss(held - rows));
  EXPECT_EQ(p[4], p[2]);
  EXPECT_EQ(p[0], p[1]);              // 1 bit: two levels cannot hold four values; the grid's prediction
  EXPECT_LT(p[2], 1e-3 * p[3]);       // uneven values: the uniform grid does not hold them
  QuantizerParams qp;
  const QuantizedBlock lloyd =
      kfac_option_blocks(weights, info, stats, {{2, CodebookKind::lloyd}}, qp, gp, torch::kCPU).front();
  // The feedback zeroes the weights of inputs that are never non-zero (GPTQ's dead columns, which cost nothing);
  // every other weight decodes to its fp16 level, and the option's loss is the prediction.
  const torch::Tensor live = stats.input_moment[0].diagonal() != 0;
  ASSERT_GT(live.sum().item<int64_t>(), 0);
  const torch::Tensor got = dequantized_rows(lloyd, torch::kCPU);
  EXPECT_TRUE(torch::equal(got.index({torch::indexing::Slice(), live}), held.index({torch::indexing::Slice(), live})));
  EXPECT_DOUBLE_EQ(undamped.loss(got - rows), p[2]);
}

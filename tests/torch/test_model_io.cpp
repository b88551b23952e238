// Model reading, block discovery, data files, and the packed/fake writers.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include <torch/script.h>
#include <torch/cuda.h>
#include <torch/serialize.h>

#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/common/errors.h"
#include "bayesq/data/data_file.h"
#include "bayesq/export/model_writer.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/block_tensor.h"
#include "bayesq/model/forward.h"
#include "bayesq/model/model_file.h"
#include "fixtures.h"

using namespace bayesq;
using bayesq_test::fixture;
using bayesq_test::scratch;

namespace {
const BlockInfo& block(const BlockIndex& index, const std::string& name) {
  const int at = index.find(name);
  if (at < 0) throw std::runtime_error("no block " + name);
  return index.blocks[static_cast<std::size_t>(at)];
}
}  // namespace

TEST(Discovery, FindsEveryConvolutionKindWithItsGeometry) {
  const BlockIndex index = discover_blocks(load_model(fixture("convs.pt")).module);
  ASSERT_EQ(index.blocks.size(), 7u);
  EXPECT_EQ(block(index, "c1.weight").op, OpKind::conv1d);
  EXPECT_EQ(block(index, "c2.weight").op, OpKind::conv2d);
  EXPECT_EQ(block(index, "c3.weight").op, OpKind::conv3d);
  EXPECT_TRUE(block(index, "c3.weight").conv.padding_same);
  EXPECT_EQ(block(index, "dw.weight").conv.groups, 16);
  const BlockInfo& grouped = block(index, "grouped.weight");
  EXPECT_EQ(grouped.conv.groups, 4);
  EXPECT_EQ(grouped.conv.stride, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(grouped.conv.padding, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(grouped.conv.dilation, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(grouped.shape, (std::vector<int64_t>{32, 4, 3, 3}));
  EXPECT_EQ(block(index, "up.weight").op, OpKind::conv_transpose);
  EXPECT_EQ(block(index, "head.weight").op, OpKind::linear);
  EXPECT_EQ(block(index, "head.weight").rows(), 6);
  // Serialisable: the index survives a JSON round trip.
  const nlohmann::json j = index;
  EXPECT_EQ(nlohmann::json(j.get<BlockIndex>()), j);
}

TEST(Discovery, ResNet18HasItsTwentyOneBlocks) {
  const BlockIndex index = discover_blocks(load_model(fixture("resnet18.pt")).module);
  EXPECT_EQ(index.blocks.size(), 21u);
  EXPECT_EQ(block(index, "layer2.0.downsample.0.weight").shape, (std::vector<int64_t>{128, 64, 1, 1}));
  EXPECT_EQ(block(index, "fc.weight").op, OpKind::linear);
}

TEST(Discovery, TracedTransformerAndFusedOperators) {
  const BlockIndex traced = discover_blocks(load_model(fixture("transformer.pt")).module);
  ASSERT_EQ(traced.blocks.size(), 10u);  // the embedding; per layer in_proj, out_proj, linear1, linear2; the head
  for (const auto& b : traced.blocks) {
    EXPECT_EQ(b.op, b.name == "embed.weight" ? OpKind::embedding : OpKind::linear) << b.name;
    EXPECT_TRUE(b.autograd_visible);
  }
  EXPECT_GE(traced.find("encoder.layers.1.self_attn.in_proj_weight"), 0);
  EXPECT_EQ(block(traced, "embed.weight").row_axis, 0);  // rows are tokens
  EXPECT_EQ(block(traced, "embed.weight").op_symbol, "aten::embedding");

  const BlockIndex fused = discover_blocks(load_model(fixture("transformer_fused.pt")).module);
  ASSERT_EQ(fused.blocks.size(), 10u);
  EXPECT_EQ(block(fused, "encoder.layers.0.linear1.weight").op, OpKind::fused);
  EXPECT_EQ(block(fused, "encoder.layers.0.linear1.weight").op_symbol, "aten::_transformer_encoder_layer_fwd");
  EXPECT_FALSE(block(fused, "encoder.layers.0.linear1.weight").autograd_visible);
  EXPECT_TRUE(block(fused, "head.weight").autograd_visible);
}

TEST(Discovery, MatmulOperandsKeepOutputChannelsAsRows) {
  const BlockIndex index = discover_blocks(load_model(fixture("gpt_mlp.pt")).module);
  ASSERT_EQ(index.blocks.size(), 3u);
  const BlockInfo& fc = block(index, "c_fc.weight");  // Conv1D: W [in = 24, out = 48], y = x W
  EXPECT_EQ(fc.op, OpKind::matmul);
  EXPECT_EQ(fc.row_axis, 1);
  EXPECT_EQ(fc.rows(), 48);
  EXPECT_EQ(fc.cols(), 24);
  // The row view of a [in, out] weight is its transpose.
  const torch::Tensor w = find_tensor(load_model(fixture("gpt_mlp.pt")).module, "c_fc.weight");
  EXPECT_TRUE(torch::equal(block_rows(w, fc), w.t().contiguous()));
  EXPECT_TRUE(torch::equal(rows_to_block(block_rows(w, fc), fc, w), w));
}

TEST(DataFile, ReadsEveryDocumentedLayout) {
  const DataFile tensor = DataFile::load(fixture("resnet18_calib.pt"));
  EXPECT_EQ(tensor.size(), 64);
  EXPECT_EQ(tensor.input_count(), 1);
  EXPECT_FALSE(tensor.has_labels());
  const DataFile dict = DataFile::load(fixture("resnet18_eval.pt"));
  EXPECT_TRUE(dict.has_labels());
  EXPECT_EQ(dict.size(), 32);
  const DataFile single = DataFile::load(fixture("resnet18_single_key.pt"));  // Note [Single-key dicts]
  EXPECT_EQ(single.size(), 8);
  EXPECT_TRUE(torch::equal(single.input(0), tensor.input(0).slice(0, 0, 8)));
  const DataFile list = DataFile::load(fixture("resnet18_list.pt"));
  EXPECT_EQ(list.size(), 8);
  const DataFile tuple = DataFile::load(fixture("transformer_calib.pt"));
  EXPECT_EQ(tuple.input_count(), 2);
  EXPECT_EQ(tuple.input(0).scalar_type(), torch::kInt64);
  const DataFile nested = DataFile::load(fixture("transformer_eval.pt"));
  EXPECT_EQ(nested.input_count(), 2);
  EXPECT_TRUE(nested.has_labels());
  // Batches are slices on the requested device.
  const auto batch = tuple.batch(10, 14, torch::kCPU);
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(batch[0].toTensor().size(0), 4);
}

TEST(DataFile, RejectsBadFilesWithTheFileName) {
  for (const char* name : {"bad_nan_data.pt", "bad_not_archive.pt", "no_such_file.pt"}) {
    try {
      DataFile::load(fixture(name));
      FAIL() << name;
    } catch (const UserError& e) {
      EXPECT_EQ(e.code(), ExitCode::input);
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
}

TEST(Forward, ShapeMismatchNamesInputAndShapes) {
  LoadedModel model = load_model(fixture("resnet18.pt"));
  const DataFile data = DataFile::load(fixture("bad_shape_data.pt"));
  try {
    forward_batch(model.module, data, 0, 2, torch::kCPU, fixture("resnet18.pt"));
    FAIL();
  } catch (const UserError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("input 0 has shape [8, 1, 32, 32]"), std::string::npos) << what;
    EXPECT_NE(what.find("bad_shape_data.pt"), std::string::npos) << what;
  }
}

// Every bit-width, codebook kind and granularity: the packed graph rebuilds exactly the weights the core decodes,
// the fake file holds them too, the gather a GPU decodes with gives them too, and each block's bytes in the file
// equal its cost to the bit.
TEST(Writer, PackedRebuildsExactlyTheDecodedWeightsAndCostsItsBytes) {
  LoadedModel model = load_model(fixture("gpt_mlp.pt"));
  const BlockIndex index = discover_blocks(model.module);
  const DataFile data = DataFile::load(fixture("gpt_mlp_calib.pt"));
  const CodebookKind kinds[] = {CodebookKind::lloyd, CodebookKind::uniform_asymmetric, CodebookKind::uniform_symmetric};
  for (int bits = 1; bits <= 8; ++bits) {
    for (CodebookKind kind : kinds) {
      for (int64_t group : {int64_t{0}, int64_t{10}}) {
        std::vector<QuantizedBlock> blocks;
        for (const auto& info : index.blocks) {
          const std::vector<float> rows = block_rows_vector(find_tensor(model.module, info.name), info);
          QuantizerParams params;
          params.kind = kind;
          params.group_size = group;
          blocks.push_back(quantize_block({rows.data(), nullptr, info.rows(), info.cols()}, bits, params));
        }
        std::vector<const QuantizedBlock*> slots;
        for (const auto& b : blocks) slots.push_back(&b);
        const std::string packed = scratch("packed.pt"), fake = scratch("fake.pt");
        const WriteStats stats = write_quantized_model(model.module, index, slots, OutputFormat::packed, packed);
        write_quantized_model(model.module, index, slots, OutputFormat::fake, fake);
        ASSERT_EQ(stats.blocks.size(), index.blocks.size());
        for (std::size_t b = 0; b < blocks.size(); ++b) {
          const BlockCost cost = blocks[b].cost();
          EXPECT_EQ(8 * stats.blocks[b].code_bytes, cost.code_bits);
          EXPECT_EQ(8 * stats.blocks[b].metadata_bytes, cost.metadata_bits);
        }
        EXPECT_EQ(stats.tensor_bytes, stats.quantized_bytes + stats.float_bytes) << "no hidden float copies";
        torch::jit::Module p = torch::jit::load(packed), f = torch::jit::load(fake);
        // The fake file's weights are the core's decoded values...
        for (std::size_t b = 0; b < blocks.size(); ++b) {
          const torch::Tensor w = find_tensor(f, index.blocks[b].name);
          const torch::Tensor expected = dequantized_tensor(blocks[b], index.blocks[b], w);
          EXPECT_TRUE(torch::equal(w, expected)) << index.blocks[b].name;
        }
        // ...the gather a GPU decodes with gives the host's values bit for bit (here on the CPU, and on CUDA where
        // there is one)...
        for (std::size_t b = 0; b < blocks.size(); ++b) {
          std::vector<float> decoded = blocks[b].dequantize();
          const torch::Tensor host = torch::from_blob(decoded.data(), {blocks[b].rows, blocks[b].cols});
          EXPECT_TRUE(torch::equal(dequantized_rows_by_gather(blocks[b], torch::kCPU), host)) << index.blocks[b].name;
          if (torch::cuda::is_available())
            EXPECT_TRUE(torch::equal(dequantized_rows(blocks[b], torch::kCUDA).cpu(), host)) << index.blocks[b].name;
        }
        // ...and the packed graph computes the same function bit for bit.
        const auto x = data.batch(0, 16, torch::kCPU);
        const torch::Tensor yp = p.forward(x).toTensor(), yf = f.forward(x).toTensor();
        EXPECT_TRUE(torch::equal(yp, yf)) << "bits " << bits << " kind " << codebook_kind_name(kind) << " group "
                                          << group << " max diff " << (yp - yf).abs().max().item<float>();
      }
    }
  }
}

TEST(Writer, PackedResNet18AtThreeBitsIsAtMostFifteenPercentOfTheFloatFile) {
  LoadedModel model = load_model(fixture("resnet18.pt"));
  const BlockIndex index = discover_blocks(model.module);
  std::vector<QuantizedBlock> blocks;
  for (const auto& info : index.blocks) {
    const std::vector<float> rows = block_rows_vector(find_tensor(model.module, info.name), info);
    blocks.push_back(quantize_block_rtn({rows.data(), nullptr, info.rows(), info.cols()}, 3, 0));
  }
  std::vector<const QuantizedBlock*> slots;
  for (const auto& b : blocks) slots.push_back(&b);
  const std::string out = scratch("resnet18_rtn3.pt");
  const WriteStats stats = write_quantized_model(model.module, index, slots, OutputFormat::packed, out);
  EXPECT_LE(double(stats.file_bytes), 0.15 * double(model.file_bytes));
  EXPECT_EQ(stats.file_bytes, static_cast<int64_t>(std::filesystem::file_size(out)));
  // Nothing but the target is left in the folder: no temporary files.
  for (const auto& entry : std::filesystem::directory_iterator(std::filesystem::path(out).parent_path()))
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
}

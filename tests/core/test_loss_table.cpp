#include <gtest/gtest.h>

#include <random>

#include "bayesq/common/parallel.h"
#include "bayesq/table/loss_table.h"

using namespace bayesq;

namespace {
struct Fixture {
  std::vector<std::vector<float>> weights, precision;
  std::vector<BlockTableInput> inputs;
  Fixture() {
    std::mt19937 rng(21);
    const std::pair<int64_t, int64_t> shapes[] = {{16, 27}, {32, 144}, {10, 64}};
    for (const auto& s : shapes) {
      std::normal_distribution<float> normal(0.0f, 0.05f);
      std::lognormal_distribution<float> lognormal(2.0f, 1.5f);
      std::vector<float> w(static_cast<std::size_t>(s.first * s.second)), p(w.size());
      for (auto& x : w) x = normal(rng);
      for (auto& x : p) x = lognormal(rng);
      weights.push_back(std::move(w));
      precision.push_back(std::move(p));
    }
    for (std::size_t b = 0; b < weights.size(); ++b)
      inputs.push_back({"block" + std::to_string(b),
                        {weights[b].data(), precision[b].data(), shapes[b].first, shapes[b].second}});
  }
};
}  // namespace

TEST(LossTable, EntriesEqualTheBlockQuantizerAndItsCost) {
  Fixture f;
  LossTableParams params;
  params.kinds = {CodebookKind::lloyd, CodebookKind::uniform_asymmetric};
  params.quantizer.tau = 0.5;
  const LossTable table = build_loss_table(f.inputs, params);
  ASSERT_EQ(table.blocks.size(), 3u);
  for (std::size_t b = 0; b < 3; ++b) {
    ASSERT_EQ(table.blocks[b].entries.size(), 12u);
    for (const LossEntry& e : table.blocks[b].entries) {
      QuantizerParams qp = params.quantizer;
      qp.kind = e.kind;
      const QuantizedBlock q = quantize_block(f.inputs[b].weights, e.bits, qp);
      EXPECT_DOUBLE_EQ(e.expected_loss, q.expected_loss);
      EXPECT_DOUBLE_EQ(e.plugin_loss, q.plugin_loss);
      EXPECT_EQ(e.cost.total(), q.cost().total());
    }
  }
}

TEST(LossTable, LossDecreasesWithBitsAndTheFlagSaysSo) {
  Fixture f;
  const LossTable table = build_loss_table(f.inputs, LossTableParams{});
  for (const auto& block : table.blocks) {
    bool monotone = true;
    for (std::size_t i = 1; i < block.entries.size(); ++i)
      if (block.entries[i].expected_loss > block.entries[i - 1].expected_loss) monotone = false;
    EXPECT_EQ(block.monotone, monotone);
    EXPECT_LT(block.entries.back().expected_loss, block.entries.front().expected_loss);
  }
}

TEST(LossTable, IndependentOfThreadCountAndSerialisable) {
  Fixture f;
  LossTableParams params;
  params.quantizer.group_size = 32;
  set_num_threads(1);
  const LossTable a = build_loss_table(f.inputs, params);
  set_num_threads(3);
  const LossTable b = build_loss_table(f.inputs, params);
  set_num_threads(0);
  nlohmann::json ja = a, jb = b;
  ja.erase("seconds");
  jb.erase("seconds");
  EXPECT_EQ(ja, jb);
  const LossTable back = ja.get<LossTable>();
  nlohmann::json jback = back;
  jback.erase("seconds");
  EXPECT_EQ(jback, ja);
}

TEST(LossTable, RejectsCandidatesOutOfRange) {
  Fixture f;
  LossTableParams params;
  params.candidates = {2, 9};
  EXPECT_ANY_THROW(build_loss_table(f.inputs, params));
}

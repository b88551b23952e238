#include <gtest/gtest.h>

#include "bayesq/allocate/allocation.h"
#include "bayesq/common/errors.h"

using namespace bayesq;

namespace {
// A hand-made table: block "a" is sensitive (loss falls steeply), "b" is not; metadata included in costs.
LossTable small_table() {
  LossTable t;
  const char* names[] = {"features.0.weight", "features.3.weight", "classifier.weight"};
  const double scale[] = {100.0, 1.0, 10.0};
  for (int b = 0; b < 3; ++b) {
    BlockLosses bl;
    bl.name = names[b];
    bl.rows = 8;
    bl.cols = 100;
    for (int bits : {2, 3, 4, 8}) {
      LossEntry e;
      e.bits = bits;
      e.cost = block_cost(bl.rows, bl.cols, bits, CodebookKind::uniform_asymmetric, 0);
      e.expected_loss = scale[b] * std::pow(4.0, -bits);
      bl.entries.push_back(e);
    }
    t.blocks.push_back(bl);
  }
  return t;
}
}  // namespace

TEST(Allocation, MeetsTheBudgetWithMetadataIncluded) {
  const LossTable t = small_table();
  for (double budget : {2.4, 3.0, 3.5, 5.0, 8.5}) {
    AllocationParams params;
    params.bits_per_weight = budget;
    const Allocation a = allocate(t, params);
    EXPECT_LE(a.used_bits, static_cast<int64_t>(budget * 2400));
    EXPECT_EQ(a.quantized_weights, 2400);
    int64_t sum = 0;
    for (const auto& b : a.blocks) sum += b.cost_bits;
    EXPECT_EQ(sum, a.used_bits);
    EXPECT_LE(a.average_code_bits(), a.average_bits());
  }
}

TEST(Allocation, SensitiveBlocksGetMoreBits) {
  AllocationParams params;
  params.bits_per_weight = 3.2;
  const Allocation a = allocate(small_table(), params);
  EXPECT_GT(a.blocks[0].bits, a.blocks[1].bits);
}

TEST(Allocation, KeepFpAndRulesAreApplied) {
  AllocationParams params;
  params.bits_per_weight = 3.5;
  params.keep_fp = {"^classifier"};
  params.rules = {{"features\\.3", 4, 8}};
  const Allocation a = allocate(small_table(), params);
  EXPECT_TRUE(a.blocks[2].keep_fp);
  EXPECT_EQ(a.quantized_weights, 1600);
  EXPECT_GE(a.blocks[1].bits, 4);
  EXPECT_LE(a.used_bits, static_cast<int64_t>(3.5 * 1600));
}

TEST(Allocation, InfeasibleBudgetNamesTheSmallestThatFits) {
  AllocationParams params;
  params.bits_per_weight = 2.2;
  params.rules = {{".*", 3, 8}};
  try {
    allocate(small_table(), params);
    FAIL() << "expected an error";
  } catch (const UserError& e) {
    EXPECT_EQ(e.code(), ExitCode::usage);
    // 3 bits + 32 metadata bits per row of 100 = 3.32 bits per weight.
    EXPECT_NE(std::string(e.what()).find("3.32"), std::string::npos) << e.what();
  }
  params.rules = {{"features", 9, 9}};
  EXPECT_THROW(allocate(small_table(), params), UserError);
  params.rules = {{"(", 2, 8}};
  EXPECT_THROW(allocate(small_table(), params), UserError);
}

TEST(Allocation, DpAndCertify) {
  AllocationParams params;
  params.bits_per_weight = 3.3;
  params.allocator = AllocatorKind::dp;
  const Allocation dp = allocate(small_table(), params);
  EXPECT_TRUE(dp.dp_exact);
  params.allocator = AllocatorKind::greedy;
  params.certify = true;
  const Allocation greedy = allocate(small_table(), params);
  EXPECT_TRUE(greedy.certified);
  EXPECT_DOUBLE_EQ(greedy.dp_optimum_loss, dp.expected_loss);
  EXPECT_GE(greedy.certify_gap, -1e-12);
  const nlohmann::json j = greedy;
  EXPECT_TRUE(j.contains("certify_gap"));
  EXPECT_EQ(j.at("blocks").size(), 3u);
}

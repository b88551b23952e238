// The option prefilter (Note [Option prefilter] in table/option_prefilter.h): each budget's window of entries
// around the allocation on predicted losses, and the allocator restricted to a set of entries.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>

#include "bayesq/allocate/allocation.h"
#include "bayesq/common/errors.h"
#include "bayesq/table/option_prefilter.h"

using namespace bayesq;

namespace {

const std::vector<int> kBits = {1, 2, 3, 4, 5, 6, 8};

// Blocks of different sizes and sensitivities, Lloyd and uniform at every width (the default table's shape), with
// measured losses and predictions that differ from them by a random factor per entry.
LossTable random_table(std::mt19937& rng, int blocks) {
  std::uniform_real_distribution<double> sensitivity(-3.0, 3.0), noise(-0.7, 0.7);
  std::uniform_int_distribution<int> rows(4, 40), cols(8, 300);
  LossTable t;
  for (int b = 0; b < blocks; ++b) {
    BlockLosses bl;
    bl.name = "block" + std::to_string(b) + ".weight";
    bl.rows = rows(rng);
    bl.cols = cols(rng);
    bl.prefilter = true;
    const double scale = std::pow(10.0, sensitivity(rng)) * double(bl.rows * bl.cols);
    for (CodebookKind kind : {CodebookKind::lloyd, CodebookKind::uniform_asymmetric})
      for (int bits : kBits) {
        LossEntry e;
        e.bits = bits;
        e.kind = kind;
        e.cost = block_cost(bl.rows, bl.cols, bits, kind, 0);
        const double base = scale * std::pow(4.0, -bits) * (kind == CodebookKind::lloyd ? 0.7 : 1.0);
        e.expected_loss = base * std::exp(noise(rng));
        e.predicted_loss = base * std::exp(noise(rng));
        bl.entries.push_back(e);
      }
    t.blocks.push_back(bl);
  }
  return t;
}

int rank_of(int bits) {
  return static_cast<int>(std::find(kBits.begin(), kBits.end(), bits) - kBits.begin());
}

// The cheapest loss over every choice of one allowed entry per block within the budget: the exact oracle.
double brute_force(const LossTable& t, const std::vector<std::vector<bool>>& allowed, int64_t budget,
                   std::size_t b = 0, int64_t used = 0) {
  if (b == t.blocks.size()) return 0.0;
  double best = std::numeric_limits<double>::infinity();
  for (std::size_t e = 0; e < t.blocks[b].entries.size(); ++e) {
    if (!allowed[b][e]) continue;
    const LossEntry& entry = t.blocks[b].entries[e];
    if (used + entry.cost.total() > budget) continue;
    best = std::min(best, entry.expected_loss + brute_force(t, allowed, budget, b + 1, used + entry.cost.total()));
  }
  return best;
}

}  // namespace

TEST(OptionPrefilter, SelectsEveryKindWithinTheWindowOfThePredictedChoice) {
  std::mt19937 rng(11);
  LossTable t = random_table(rng, 6);
  t.blocks[4].prefilter = false;  // no statistics: measured in full
  for (double budget : {1.8, 2.5, 3.0, 4.2}) {
    AllocationParams params;
    params.bits_per_weight = budget;
    params.keep_fp = {"^block5\\."};
    for (int window : {0, 1, 2}) {
      const std::vector<std::vector<bool>> selected = prefilter_entries(t, params, window);
      // The oracle's predicted choice: the allocator on a copy whose losses are the predictions.
      LossTable predicted = t;
      for (BlockLosses& bl : predicted.blocks)
        for (LossEntry& e : bl.entries) e.expected_loss = e.predicted_loss;
      const Allocation choice = allocate(predicted, params);
      ASSERT_EQ(selected.size(), t.blocks.size());
      for (std::size_t b = 0; b < t.blocks.size(); ++b)
        for (std::size_t e = 0; e < t.blocks[b].entries.size(); ++e) {
          bool want = true;
          if (b == 5) want = false;  // kept in floating point
          else if (b != 4)
            want = std::abs(rank_of(t.blocks[b].entries[e].bits) - rank_of(choice.blocks[b].bits)) <= window;
          EXPECT_EQ(selected[b][e], want) << "budget " << budget << " window " << window << " block " << b
                                          << " entry " << e;
        }
    }
  }
}

TEST(OptionPrefilter, AllocatorOnAllowedEntriesIsTheExactOptimumAmongThem) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 40; ++trial) {
    const LossTable t = random_table(rng, 3);
    AllocationParams params;
    params.bits_per_weight = 1.5 + 0.1 * trial;
    const std::vector<std::vector<bool>> selected = prefilter_entries(t, params, trial % 3);
    params.allowed_entries = selected;
    const Allocation a = allocate(t, params);
    ASSERT_TRUE(a.dp_exact);
    int64_t weights = 0;
    for (const BlockLosses& bl : t.blocks) weights += bl.numel();
    const double oracle = brute_force(t, selected, int64_t(std::floor(params.bits_per_weight * double(weights))));
    EXPECT_NEAR(a.expected_loss, oracle, 1e-9 * oracle) << "trial " << trial;
    for (std::size_t b = 0; b < t.blocks.size(); ++b) {
      const int entry = a.blocks[b].entry;  // an index into the full table, and an allowed one
      ASSERT_GE(entry, 0);
      EXPECT_TRUE(selected[b][static_cast<std::size_t>(entry)]) << "trial " << trial << " block " << b;
      EXPECT_EQ(a.blocks[b].bits, t.blocks[b].entries[static_cast<std::size_t>(entry)].bits);
    }
  }
}

// The tested bound's logic: when the full table's choices all lie in the windows, the windowed allocation is the
// full table's.
TEST(OptionPrefilter, WindowsHoldingTheFullChoicesGiveTheFullAllocation) {
  std::mt19937 rng(7);
  int compared = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const LossTable t = random_table(rng, 4);
    AllocationParams params;
    params.bits_per_weight = 1.6 + 0.08 * trial;
    const Allocation full = allocate(t, params);
    params.allowed_entries = prefilter_entries(t, params, 1);
    bool inside = true;
    for (std::size_t b = 0; b < t.blocks.size(); ++b)
      inside = inside && params.allowed_entries[b][static_cast<std::size_t>(full.blocks[b].entry)];
    if (!inside) continue;
    ++compared;
    const Allocation windowed = allocate(t, params);
    for (std::size_t b = 0; b < t.blocks.size(); ++b)
      EXPECT_EQ(windowed.blocks[b].entry, full.blocks[b].entry) << "trial " << trial << " block " << b;
    EXPECT_EQ(windowed.expected_loss, full.expected_loss) << "trial " << trial;
  }
  EXPECT_GE(compared, 30);  // most random tables keep their choices within one width of the prediction
}

TEST(OptionPrefilter, UnmeasuredEntriesAreTheSelectedOnesNotYetMeasured) {
  std::mt19937 rng(3);
  LossTable t = random_table(rng, 2);
  std::vector<std::vector<bool>> selected(2, std::vector<bool>(t.blocks[0].entries.size(), false));
  selected[0][1] = selected[0][2] = selected[1][3] = true;
  t.blocks[0].entries[1].measured = false;
  t.blocks[1].entries[4].measured = false;  // not selected: stays unasked
  const std::vector<std::vector<bool>> missing = unmeasured_entries(t, selected);
  ASSERT_EQ(missing.size(), 2u);
  for (std::size_t b = 0; b < 2; ++b)
    for (std::size_t e = 0; e < selected[b].size(); ++e) EXPECT_EQ(missing[b][e], b == 0 && e == 1) << b << " " << e;
  t.blocks[0].entries[1].measured = true;
  EXPECT_TRUE(unmeasured_entries(t, selected).empty());
}

TEST(OptionPrefilter, AllocatorRefusesAnUnmeasuredEntry) {
  std::mt19937 rng(9);
  LossTable t = random_table(rng, 2);
  t.blocks[1].entries[3].measured = false;
  AllocationParams params;
  params.bits_per_weight = 3.0;
  EXPECT_THROW(allocate(t, params), InternalError);  // an internal bug: the caller must restrict to measured ones
  params.allowed_entries.assign(2, std::vector<bool>(t.blocks[0].entries.size(), true));
  params.allowed_entries[1][3] = false;
  const Allocation a = allocate(t, params);
  EXPECT_NE(a.blocks[1].entry, 3);
}

TEST(OptionPrefilter, TableJsonKeepsMeasuredFlagsAndPredictions) {
  std::mt19937 rng(1);
  LossTable t = random_table(rng, 2);
  t.blocks[0].entries[2].measured = false;
  t.blocks[1].entries[0].predicted_loss = std::numeric_limits<double>::quiet_NaN();
  t.blocks[1].prefilter = false;
  const nlohmann::json j = t;
  const LossTable back = j.get<LossTable>();
  for (std::size_t b = 0; b < 2; ++b) {
    EXPECT_EQ(back.blocks[b].prefilter, t.blocks[b].prefilter);
    for (std::size_t e = 0; e < t.blocks[b].entries.size(); ++e) {
      const LossEntry& x = t.blocks[b].entries[e];
      const LossEntry& y = back.blocks[b].entries[e];
      EXPECT_EQ(y.measured, x.measured);
      if (std::isnan(x.predicted_loss)) EXPECT_TRUE(std::isnan(y.predicted_loss));
      else EXPECT_EQ(y.predicted_loss, x.predicted_loss);
    }
  }
}

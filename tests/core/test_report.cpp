// The HTML report's pieces that compute something: the loss table's rate-distortion curve (against brute force),
// number formatting and escaping, and the refusal of JSON that is no report.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "bayesq/common/errors.h"
#include "bayesq/report/html_report.h"
#include "bayesq/report/svg.h"

using namespace bayesq;

namespace {

LossTable random_table(std::mt19937& rng, int blocks, int options) {
  std::uniform_int_distribution<int64_t> cost(1, 40);
  std::uniform_real_distribution<double> loss(0.0, 10.0);
  LossTable t;
  for (int b = 0; b < blocks; ++b) {
    BlockLosses bl;
    bl.name = "b" + std::to_string(b);
    bl.rows = 1;
    bl.cols = 8;
    for (int o = 0; o < options; ++o) {
      LossEntry e;
      e.bits = o + 1;
      e.cost.code_bits = cost(rng);
      e.expected_loss = loss(rng);
      bl.entries.push_back(e);
    }
    t.blocks.push_back(bl);
  }
  return t;
}

}  // namespace

// Oracle: every allocation of a small table, enumerated. Each curve point must be one of them (same cost and
// loss), and no allocation may lie strictly below the piecewise-linear curve between its first and last cost.
TEST(Report, RateDistortionCurveIsTheLowerHullOfAllAllocations) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    const LossTable t = random_table(rng, 3, 4);
    const auto curve = table_rate_distortion(t, {});
    ASSERT_GE(curve.size(), 1u);
    const double weights = 3 * 8;
    std::vector<std::pair<double, double>> all;  // (average bits, loss) of every allocation
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b)
        for (int c = 0; c < 4; ++c) {
          const LossEntry &x = t.blocks[0].entries[a], &y = t.blocks[1].entries[b], &z = t.blocks[2].entries[c];
          all.emplace_back(double(x.cost.total() + y.cost.total() + z.cost.total()) / weights,
                           x.expected_loss + y.expected_loss + z.expected_loss);
        }
    for (const auto& p : curve) {
      bool found = false;
      for (const auto& q : all) found = found || (std::fabs(q.first - p.first) < 1e-12 && std::fabs(q.second - p.second) < 1e-9);
      EXPECT_TRUE(found) << "trial " << trial << ": curve point (" << p.first << ", " << p.second << ") is no allocation";
    }
    for (std::size_t i = 1; i < curve.size(); ++i) {
      EXPECT_GT(curve[i].first, curve[i - 1].first);
      EXPECT_LT(curve[i].second, curve[i - 1].second);
    }
    for (const auto& q : all) {
      if (q.first < curve.front().first || q.first > curve.back().first) continue;
      std::size_t i = 1;
      while (i < curve.size() && curve[i].first < q.first) ++i;
      double below = curve.front().second;
      if (i < curve.size()) {
        const auto &a = curve[i - 1], &b = curve[i];
        below = a.second + (b.second - a.second) * (q.first - a.first) / (b.first - a.first);
      }
      EXPECT_GE(q.second, below - 1e-9) << "trial " << trial << ": allocation below the curve at " << q.first;
    }
    // The ends: every block at its cheapest option, and the least loss any allocation reaches.
    double least = all.front().second;
    for (const auto& q : all) least = std::min(least, q.second);
    EXPECT_NEAR(curve.back().second, least, 1e-9);
  }
}

TEST(Report, KeptBlocksAreLeftOutOfTheCurve) {
  std::mt19937 rng(3);
  LossTable t = random_table(rng, 2, 3);
  const auto both = table_rate_distortion(t, {});
  const auto one = table_rate_distortion(t, {"b1"});
  LossTable only = t;
  only.blocks.pop_back();
  EXPECT_EQ(one, table_rate_distortion(only, {}));
  EXPECT_NE(one, both);
}

TEST(Report, NumbersAndTextAreWrittenSafely) {
  EXPECT_EQ(svg::number(0.000123456), "0.0001235");
  EXPECT_EQ(svg::number(170774, 12), "170774");
  EXPECT_EQ(svg::escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
  const std::string chart = svg::line_chart({"t<", "x", "y", true, {{"s&", "#000", {{1, 0.1}, {2, 0.01}}, true}}, {}, {}});
  EXPECT_NE(chart.find("t&lt;"), std::string::npos);
  EXPECT_EQ(chart.find("t<"), std::string::npos);
  EXPECT_EQ(chart.find("http"), std::string::npos);  // inline SVG in HTML needs no namespace URL
}

TEST(Report, JsonThatIsNoReportIsAnInputError) {
  for (const char* text : {"{}", "[1, 2]", "{\"rows\": 3}", "{\"totals\": {}, \"blocks\": 5}"}) {
    try {
      report_html(nlohmann::json::parse(text), "x.json");
      ADD_FAILURE() << text << " was accepted";
    } catch (const UserError& e) {
      EXPECT_EQ(e.code(), ExitCode::input) << text;
      EXPECT_NE(std::string(e.what()).find("x.json"), std::string::npos) << e.what();
    }
  }
}

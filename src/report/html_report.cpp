#include "bayesq/report/html_report.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include "bayesq/allocate/knapsack.h"
#include "bayesq/common/errors.h"
#include "bayesq/report/svg.h"

namespace bayesq {

using svg::escape;
using svg::number;

std::vector<std::pair<double, double>> table_rate_distortion(const LossTable& table,
                                                             const std::vector<std::string>& kept_fp) {
  const std::set<std::string> kept(kept_fp.begin(), kept_fp.end());
  struct Segment {
    double slope;
    int64_t cost;
    double loss;
    std::size_t block, step;  // ties keep a block's own order
  };
  std::vector<Segment> segments;
  int64_t cost = 0, weights = 0;
  double loss = 0.0;
  for (std::size_t b = 0; b < table.blocks.size(); ++b) {
    const BlockLosses& block = table.blocks[b];
    if (kept.count(block.name) || block.entries.empty()) continue;
    std::vector<KnapsackOption> options;
    for (const LossEntry& e : block.entries)
      if (e.measured) options.push_back({e.cost.total(), e.expected_loss});  // Note [Option prefilter]
    if (options.empty()) continue;
    const std::vector<int> hull = lower_convex_hull(options);
    const KnapsackOption& first = options[static_cast<std::size_t>(hull[0])];
    cost += first.cost;
    loss += first.loss;
    weights += block.numel();
    for (std::size_t h = 1; h < hull.size(); ++h) {
      const KnapsackOption& lo = options[static_cast<std::size_t>(hull[h - 1])];
      const KnapsackOption& hi = options[static_cast<std::size_t>(hull[h])];
      segments.push_back({(hi.loss - lo.loss) / double(hi.cost - lo.cost), hi.cost - lo.cost, hi.loss - lo.loss, b, h});
    }
  }
  // Within a block the hull's slopes increase, so sorting all segments by slope keeps every block's own order.
  std::sort(segments.begin(), segments.end(), [](const Segment& a, const Segment& b) {
    return std::tie(a.slope, a.block, a.step) < std::tie(b.slope, b.block, b.step);
  });
  std::vector<std::pair<double, double>> curve;
  if (weights == 0) return curve;
  curve.emplace_back(double(cost) / double(weights), loss);
  for (const Segment& s : segments) {
    cost += s.cost;
    loss += s.loss;
    curve.emplace_back(double(cost) / double(weights), loss);
  }
  return curve;
}

namespace {

const char* kStyle = R"(<style>
body{font-family:sans-serif;margin:24px auto;max-width:1000px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.note{color:#666;font-size:12px}.bad{color:#b00}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;font-size:13px}dt{color:#555}dd{margin:0}
code{font-size:12px;background:#f6f6f6;padding:1px 3px}
</style>
)";

const char* kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string kind_color(const std::string& kind) {
  if (kind == "lloyd") return "#1f77b4";
  if (kind == "uniform") return "#ff7f0e";
  if (kind == "uniform-symmetric") return "#2ca02c";
  return "#9467bd";
}

std::string text_of(const nlohmann::json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_array() && std::all_of(j.begin(), j.end(), [](const nlohmann::json& e) { return e.is_string(); })) {
    std::string out;  // a command line
    for (const auto& e : j) out += (out.empty() ? "" : " ") + e.get<std::string>();
    return out;
  }
  if (j.is_number_float()) return number(j.get<double>(), 6);
  if (j.is_null()) return "-";
  return j.dump();
}

double value_or(const nlohmann::json& j, const char* key, double fallback) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<double>() : fallback;
}

std::string percent(double v, int digits = 2) {
  std::ostringstream o;
  o.setf(std::ios::fixed);
  o.precision(digits);
  o << 100.0 * v;
  return o.str();
}

void row(std::ostringstream& o, const std::string& term, const std::string& value) {
  o << "<dt>" << escape(term) << "</dt><dd>" << escape(value) << "</dd>\n";
}

// One budget's report: the sections of issue 19 in order.
void quantize_section(std::ostringstream& o, const nlohmann::json& r) {
  const nlohmann::json& totals = r.at("totals");
  const nlohmann::json config = r.value("config", nlohmann::json::object());
  const nlohmann::json& method = r.contains("method") && r["method"].is_object() ? r["method"] : config.value("method", nlohmann::json::object());
  o << "<h1>bayesq: " << escape(r.value("output", std::string("quantized model"))) << "</h1>\n";
  o << "<h2 id=\"run\">Run</h2>\n<dl>\n";
  row(o, "command", text_of(r.value("command_line", nlohmann::json())));
  row(o, "method", method.value("label", method.value("method", std::string("-"))));
  row(o, "model", r.contains("model") ? r["model"].value("path", std::string("-")) + " (hash " +
                                            r["model"].value("hash", std::string("-")) + ")"
                                      : "-");
  row(o, "versions", "bayesq " + r.value("bayesq_version", std::string("-")) + ", libtorch " +
                         r.value("libtorch_version", std::string("-")));
  row(o, "device", r.value("device", std::string("-")));
  row(o, "seed", text_of(r.value("seed", nlohmann::json())));
  row(o, "budget asked", number(value_or(r, "bits", 0.0), 6) + " bits per weight (metadata included)");
  row(o, "budget reached", number(value_or(totals, "average_bits", 0.0), 6) + " bits with metadata, " +
                               number(value_or(totals, "average_bits_without_metadata", 0.0), 6) + " without");
  row(o, "file", number(value_or(totals, "file_bytes", 0.0), 12) + " bytes (float model " +
                     number(value_or(totals, "float_model_bytes", 0.0), 12) + " bytes, " +
                     percent(value_or(totals, "compression", 0.0)) + "%)");
  row(o, "codes / metadata", number(value_or(totals, "code_bytes", 0.0), 12) + " / " +
                                 number(value_or(totals, "metadata_bytes", 0.0), 12) + " bytes");
  if (r.contains("joint_calibration_kl")) {
    const nlohmann::json& j = r["joint_calibration_kl"];
    row(o, "calibration KL, whole model", "predicted by the table " + number(value_or(j, "predicted", 0.0)) +
                                              ", measured " + number(value_or(j, "measured", 0.0)) + " (" +
                                              text_of(j.value("examples", nlohmann::json())) + " examples)");
  }
  if (r.contains("holdout")) {
    const nlohmann::json& h = r["holdout"];
    row(o, "held-out examples", "KL " + number(value_or(h, "kl", 0.0)) + ", agreement " +
                                    percent(value_or(h, "agreement", 0.0)) + "% (" +
                                    text_of(h.value("examples", nlohmann::json())) + " examples, never fitted)");
  }
  o << "</dl>\n";

  // Allocation: one bar per block in network order, height the bits, width the share of the weights.
  const nlohmann::json& blocks = r.at("blocks");
  double all_weights = 0.0;
  auto numel = [](const nlohmann::json& b) {
    double n = 1.0;
    for (const auto& d : b.at("shape")) n *= d.get<double>();
    return n;
  };
  for (const auto& b : blocks) all_weights += numel(b);
  svg::BarChart bars;
  bars.title = "Bits per block, in network order (bar width: share of the weights)";
  bars.y_label = "bits";
  std::set<std::string> kinds;
  for (const auto& b : blocks) {
    const bool fp = b.value("keep_fp", false);
    const std::string kind = fp ? "float" : b.value("kind", std::string("?"));
    kinds.insert(kind);
    const double bits = fp ? 16.0 : value_or(b, "bits", 0.0);
    bars.bars.push_back({b.at("name").get<std::string>(), bits, numel(b), fp ? "#bbbbbb" : kind_color(kind),
                         b.at("name").get<std::string>() + ": " + (fp ? "floating point" : number(bits) + " bits, " + kind) +
                             ", " + percent(numel(b) / all_weights) + "% of the weights"});
  }
  for (const std::string& k : kinds) bars.legend.emplace_back(k == "float" ? "#bbbbbb" : kind_color(k), k);
  o << "<h2 id=\"allocation\">Allocation</h2>\n" << svg::bar_chart(bars);
  o << "<table><tr><th class=\"l\">block</th><th class=\"l\">shape</th><th>bits</th><th class=\"l\">codebook</th>"
       "<th>share of weights (%)</th><th>code bytes</th><th>metadata bytes</th><th>table loss</th></tr>\n";
  for (const auto& b : blocks) {
    const bool fp = b.value("keep_fp", false);
    o << "<tr><td class=\"l\">" << escape(b.at("name").get<std::string>()) << "</td><td class=\"l\">"
      << escape(b.at("shape").dump()) << "</td><td>" << (fp ? "fp" : text_of(b.value("bits", nlohmann::json())))
      << "</td><td class=\"l\">" << escape(fp ? "float" : b.value("kind", std::string("-"))) << "</td><td>"
      << percent(numel(b) / all_weights) << "</td><td>" << text_of(b.value("code_bytes", nlohmann::json()))
      << "</td><td>" << text_of(b.value("metadata_bytes", nlohmann::json())) << "</td><td>"
      << text_of(b.value("expected_loss", nlohmann::json())) << "</td></tr>\n";
  }
  o << "</table>\n";

  // Rate-distortion: the table's curve, the chosen point and the measured whole-model KL.
  o << "<h2 id=\"rate-distortion\">Rate and distortion</h2>\n";
  if (r.contains("loss_table") && r.contains("allocation")) {
    const LossTable table = r["loss_table"].get<LossTable>();
    const nlohmann::json& allocation = r["allocation"];
    std::vector<std::string> kept;
    for (const auto& b : allocation.at("blocks"))
      if (b.value("keep_fp", false)) kept.push_back(b.at("name").get<std::string>());
    // In KL per example where the report gives the table's scale (its prediction), in table units otherwise.
    const double table_loss = value_or(allocation, "expected_loss", 0.0);
    const nlohmann::json joint = r.value("joint_calibration_kl", nlohmann::json());
    const double predicted = value_or(joint, "predicted", 0.0);
    const double scale = predicted > 0.0 && table_loss > 0.0 ? table_loss / predicted : 1.0;
    const bool per_example = scale != 1.0;
    svg::LineChart chart;
    chart.title = "The loss table's rate-distortion curve";
    chart.x_label = "average bits per weight (metadata included)";
    chart.y_label = per_example ? "calibration KL" : "table loss";
    chart.log_y = true;
    svg::Series curve{"table (lower hull)", "#1f77b4", {}, true};
    for (const auto& [bits, loss] : table_rate_distortion(table, kept)) curve.points.emplace_back(bits, loss / scale);
    chart.series.push_back(curve);
    chart.markers.push_back({value_or(allocation, "average_bits", 0.0), table_loss / scale, "chosen: predicted", "#d62728"});
    if (joint.is_object() && joint.contains("measured"))
      chart.markers.push_back({value_or(allocation, "average_bits", 0.0), value_or(joint, "measured", 0.0),
                               "chosen: measured", "#2ca02c"});
    o << svg::line_chart(chart);
    if (joint.is_object() && joint.contains("refinement")) {
      const nlohmann::json& ref = joint["refinement"];
      o << "<p class=\"note\">Joint refinement: measured KL " << number(value_or(ref, "initial_kl", 0.0)) << " → "
        << number(value_or(ref, "final_kl", 0.0)) << " in " << ref.value("rounds", nlohmann::json::array()).size()
        << " round(s), " << text_of(ref.value("forwards", nlohmann::json())) << " forward passes.</p>\n";
    }
    // Each large block's own table: loss against bits, one line per codebook kind.
    std::vector<std::size_t> order(table.blocks.size());
    for (std::size_t b = 0; b < order.size(); ++b) order[b] = b;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return table.blocks[a].numel() > table.blocks[b].numel();
    });
    order.resize(std::min<std::size_t>(order.size(), 6));
    o << "<p class=\"note\">The " << order.size() << " largest blocks' tables:</p>\n";
    for (std::size_t b : order) {
      const BlockLosses& bl = table.blocks[b];
      svg::LineChart c;
      c.title = bl.name + " (" + std::to_string(bl.rows) + " x " + std::to_string(bl.cols) + ")";
      c.x_label = "bits";
      c.y_label = per_example ? "KL" : "table loss";
      c.log_y = true;
      c.width = 480;
      c.height = 240;
      std::map<std::string, svg::Series> by_kind;
      for (const LossEntry& e : bl.entries) {
        if (!e.measured) continue;
        const std::string kind = codebook_kind_name(e.kind);
        svg::Series& s = by_kind[kind];
        s.label = kind;
        s.color = kind_color(kind);
        s.points.emplace_back(e.bits, e.expected_loss / scale);
      }
      for (auto& [kind, s] : by_kind) c.series.push_back(s);
      o << svg::line_chart(c);
    }
  } else {
    o << "<p class=\"note\">" << escape(method.value("method", std::string("This method")))
      << " has no loss table: one bit-width everywhere.</p>\n";
  }

  // Posterior precisions.
  o << "<h2 id=\"posterior\">Posterior</h2>\n";
  std::vector<svg::Range> ranges;
  std::ostringstream errors;
  for (const auto& b : blocks) {
    if (!b.contains("posterior")) continue;
    const nlohmann::json& p = b["posterior"];
    if (p.contains("precision_quantiles")) {
      const auto q = p["precision_quantiles"].get<std::vector<double>>();
      if (q.size() == 5) ranges.push_back({b.at("name").get<std::string>(), q[0], q[1], q[2], q[3], q[4]});
    }
    if (p.contains("trace_standard_error"))
      errors << "<tr><td class=\"l\">" << escape(b.at("name").get<std::string>()) << "</td><td>"
             << number(value_or(p, "mean_precision", 0.0)) << "</td><td>"
             << number(value_or(p, "trace_standard_error", 0.0)) << "</td></tr>\n";
  }
  if (ranges.empty()) {
    o << "<p class=\"note\">This method reports no per-weight precision.</p>\n";
  } else {
    o << svg::range_chart("Precision of each block's weights: 1-10-50-90-99% quantiles", "precision", ranges);
    if (!errors.str().empty())
      o << "<table><tr><th class=\"l\">block</th><th>mean precision</th><th>standard error of the trace "
           "(Hutchinson)</th></tr>\n"
        << errors.str() << "</table>\n";
  }

  // Distillation.
  o << "<h2 id=\"distillation\">Distillation</h2>\n";
  if (r.contains("distillation") && r["distillation"].is_object()) {
    const nlohmann::json& d = r["distillation"];
    svg::LineChart c;
    c.title = "Distillation: KL to the float model by step";
    c.x_label = "step";
    c.y_label = "KL";
    c.log_y = true;
    svg::Series held{"held out", "#d62728", {}, true}, train{"training batch", "#9ecae1", {}, true};
    for (const auto& p : d.value("curve", nlohmann::json::array())) {
      if (p.contains("heldout_kl")) held.points.emplace_back(p["step"].get<double>(), p["heldout_kl"].get<double>());
      if (p.contains("train_kl")) train.points.emplace_back(p["step"].get<double>(), p["train_kl"].get<double>());
    }
    c.series = {train, held};
    o << svg::line_chart(c);
    o << "<p class=\"note\">Best held-out KL " << number(value_or(d, "best_heldout_kl", 0.0)) << " at step "
      << text_of(d.value("best_step", nlohmann::json())) << ".</p>\n";
  } else {
    o << "<p class=\"note\">No distillation in this run.</p>\n";
  }

  // Timings.
  o << "<h2 id=\"timings\">Timings</h2>\n";
  svg::BarChart t;
  t.title = "Seconds per stage";
  t.y_label = "s";
  t.horizontal = true;
  int color = 0;
  const nlohmann::json timings = r.value("timings", nlohmann::json::object());
  for (const auto& [stage, seconds] : timings.items()) {
    if (stage == "total" || !seconds.is_number()) continue;
    t.bars.push_back({stage, seconds.get<double>(), 0.0, kPalette[color++ % 10], stage + ": " + number(seconds.get<double>()) + " s"});
  }
  o << svg::bar_chart(t);
  o << "<p class=\"note\">Total " << number(value_or(timings, "total", 0.0))
    << " s. Stages overlap (a table's time includes its measurements).</p>\n";
}

std::string page(const std::string& title, const std::string& body) {
  return "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + escape(title) +
         "</title>\n" + kStyle + "</head>\n<body>\n" + body + "<p class=\"note\">Written by bayesq; charts are "
         "inline SVG (no script, no other file).</p>\n</body>\n</html>\n";
}

}  // namespace

std::string quantize_report_html(const nlohmann::json& report) {
  std::ostringstream o;
  if (report.is_array()) {
    for (const auto& r : report) quantize_section(o, r);
  } else {
    quantize_section(o, report);
  }
  return page("bayesq quantize report", o.str());
}

std::string compare_report_html(const nlohmann::json& results) {
  std::ostringstream o;
  const nlohmann::json& rows = results.at("rows");
  o << "<h1>bayesq compare: " << escape(results.value("model", std::string("-"))) << "</h1>\n<dl>\n";
  row(o, "calibration", results.value("calib", std::string("-")));
  row(o, "evaluation data", results.value("data", std::string("-")));
  row(o, "device", results.value("device", std::string("-")));
  row(o, "libtorch", results.value("libtorch_version", std::string("-")));
  row(o, "seed", text_of(results.value("seed", nlohmann::json())));
  o << "</dl>\n";
  double float_top1 = -1.0;
  std::map<std::string, svg::Series> kl, top1;
  std::vector<std::string> order;
  for (const auto& r : rows) {
    const std::string m = r.value("method", std::string("?"));
    if (m == "float") {
      float_top1 = value_or(r, "top1", -1.0);
      continue;
    }
    if (r.value("infeasible", false) || !r.contains("average_bits")) continue;
    if (!kl.count(m)) {
      const std::string color = kPalette[order.size() % 10];
      kl[m] = {m, color, {}, true};
      top1[m] = {m, color, {}, true};
      order.push_back(m);
    }
    kl[m].points.emplace_back(r["average_bits"].get<double>(), value_or(r, "mean_kl", 0.0));
    if (r.contains("top1")) top1[m].points.emplace_back(r["average_bits"].get<double>(), 100.0 * r["top1"].get<double>());
  }
  svg::LineChart a, b;
  a.title = "KL(float || quantized) against file size";
  a.x_label = b.x_label = "average bits per weight (metadata included)";
  a.y_label = "mean KL";
  a.log_y = true;
  b.title = "Top-1 against file size";
  b.y_label = "top-1 (%)";
  for (const std::string& m : order) {
    std::sort(kl[m].points.begin(), kl[m].points.end());
    std::sort(top1[m].points.begin(), top1[m].points.end());
    a.series.push_back(kl[m]);
    if (!top1[m].points.empty()) b.series.push_back(top1[m]);
  }
  if (float_top1 >= 0.0) b.horizontal_lines.emplace_back(100.0 * float_top1, "float " + percent(float_top1) + "%");
  o << "<h2 id=\"curves\">Methods by size</h2>\n" << svg::line_chart(a);
  if (!b.series.empty()) o << svg::line_chart(b);
  o << "<h2 id=\"rows\">Rows</h2>\n<table><tr><th class=\"l\">method</th><th>bits asked</th><th>avg bits</th>"
       "<th>file bytes</th><th>top-1 (%)</th><th>agreement (%)</th><th>KL</th><th>held-out KL</th></tr>\n";
  for (const auto& r : rows) {
    o << "<tr><td class=\"l\">" << escape(r.value("method", std::string("?"))) << "</td>";
    if (r.value("infeasible", false)) {
      o << "<td>" << text_of(r.value("bits", nlohmann::json())) << "</td><td colspan=\"6\" class=\"bad l\">infeasible: "
        << "needs at least " << number(value_or(r, "smallest_bits", 0.0), 6) << " bits</td></tr>\n";
      continue;
    }
    o << "<td>" << text_of(r.value("bits", nlohmann::json())) << "</td><td>"
      << (r.contains("average_bits") ? number(r["average_bits"].get<double>(), 6) : "-") << "</td><td>"
      << text_of(r.value("file_bytes", nlohmann::json())) << "</td><td>"
      << (r.contains("top1") ? percent(r["top1"].get<double>()) : "-") << "</td><td>"
      << (r.contains("agreement") ? percent(r["agreement"].get<double>()) : "-") << "</td><td>"
      << number(value_or(r, "mean_kl", 0.0), 6) << "</td><td>"
      << (r.contains("holdout") ? number(value_or(r["holdout"], "kl", 0.0), 6) : "-") << "</td></tr>\n";
  }
  o << "</table>\n";
  return page("bayesq compare report", o.str());
}

std::string report_html(const nlohmann::json& json, const std::string& path) {
  const bool comparison = json.is_object() && json.contains("rows");
  const nlohmann::json& first = json.is_array() && !json.empty() ? json[0] : json;
  BQ_CHECK(comparison || (first.is_object() && first.contains("totals") && first.contains("blocks")), ExitCode::input,
           "not a bayesq quantize report or compare JSON (no \"rows\", no \"totals\" and \"blocks\"): ", path);
  try {
    return comparison ? compare_report_html(json) : quantize_report_html(json);
  } catch (const nlohmann::json::exception& e) {
    BQ_FAIL(ExitCode::input, "malformed report (", e.what(), "): ", path);
  }
}

}  // namespace bayesq

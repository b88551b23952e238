// Inline SVG charts for the HTML reports (html_report.h): written as text, deterministic (numbers printed with
// a fixed format), no script, no external file, so a report shows its charts with JavaScript disabled.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace bayesq::svg {

// Text with &, <, >, " escaped for HTML and SVG.
std::string escape(const std::string& text);
// A number as reports print it: up to `digits` significant digits, no locale.
std::string number(double value, int digits = 4);

struct Series {
  std::string label;
  std::string color;
  std::vector<std::pair<double, double>> points;  // (x, y), drawn in the order given
  bool line = true;                               // false: markers only
};

struct Marker {  // a highlighted point with a label, e.g. the chosen allocation
  double x = 0.0, y = 0.0;
  std::string label;
  std::string color;
};

struct LineChart {
  std::string title, x_label, y_label;
  bool log_y = false;          // points with y <= 0 are left out on a log axis
  std::vector<Series> series;
  std::vector<Marker> markers;
  std::vector<std::pair<double, std::string>> horizontal_lines;  // (y, label), dashed
  int width = 640, height = 320;
};
std::string line_chart(const LineChart& chart);

// Bars side by side in the order given; a bar's width is proportional to `weight` (all equal when every weight
// is 0), its height to `value`.
struct Bar {
  std::string label;
  double value = 0.0;
  double weight = 0.0;
  std::string color;
  std::string tooltip;  // shown as the bar's <title>
};
struct BarChart {
  std::string title, y_label;
  std::vector<Bar> bars;
  std::vector<std::pair<std::string, std::string>> legend;  // (color, label)
  int width = 640, height = 260;
  bool horizontal = false;  // horizontal: one row per bar with its label on the left, width by value
};
std::string bar_chart(const BarChart& chart);

// One row per item: a box from q10 to q90, whiskers from q01 to q99, a tick at the median, on a log x axis.
struct Range {
  std::string label;
  double q01 = 0.0, q10 = 0.0, q50 = 0.0, q90 = 0.0, q99 = 0.0;
};
std::string range_chart(const std::string& title, const std::string& x_label, const std::vector<Range>& rows,
                        int width = 640);

}  // namespace bayesq::svg

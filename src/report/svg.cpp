#include "bayesq/report/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

namespace bayesq::svg {

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string number(double value, int digits) {
  if (!std::isfinite(value)) return value > 0 ? "inf" : (value < 0 ? "-inf" : "nan");
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*g", digits, value);
  return buffer;
}

namespace {

std::string coord(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.1f", v);
  return buffer;
}

// An axis maps data to pixels; log axes map log10 of the data.
struct Axis {
  double lo = 0.0, hi = 1.0;  // in axis units (log10 for log axes)
  bool log = false;
  double pixel_lo = 0.0, pixel_hi = 1.0;
  double to_pixel(double v) const {
    const double u = log ? std::log10(v) : v;
    return pixel_lo + (u - lo) / (hi - lo) * (pixel_hi - pixel_lo);
  }
  // Ticks: integer powers of ten (with 2 and 5 between when the range is under two decades) on a log axis,
  // 1-2-5 steps on a linear one.
  std::vector<double> ticks() const {
    std::vector<double> out;
    if (log) {
      const bool fine = hi - lo < 2.0;
      for (int e = static_cast<int>(std::floor(lo)); e <= static_cast<int>(std::ceil(hi)); ++e)
        for (double m : fine ? std::vector<double>{1, 2, 5} : std::vector<double>{1}) {
          const double v = m * std::pow(10.0, e);
          const double u = std::log10(v);
          if (u >= lo - 1e-9 && u <= hi + 1e-9) out.push_back(v);
        }
      return out;
    }
    const double span = hi - lo, raw = span / 6.0;
    const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
    double step = magnitude;
    for (double m : {1.0, 2.0, 5.0, 10.0})
      if (m * magnitude >= raw) {
        step = m * magnitude;
        break;
      }
    for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
    return out;
  }
};

Axis make_axis(double lo, double hi, bool log, double pixel_lo, double pixel_hi) {
  Axis a;
  a.log = log;
  a.pixel_lo = pixel_lo;
  a.pixel_hi = pixel_hi;
  if (!(lo <= hi)) lo = hi = log ? 1.0 : 0.0;
  if (log) {
    lo = std::log10(lo);
    hi = std::log10(hi);
    lo = std::floor(lo * 2.0) / 2.0;  // half decades of room
    hi = std::ceil(hi * 2.0) / 2.0;
    if (hi - lo < 0.5) hi = lo + 1.0;
  } else {
    const double pad = hi > lo ? 0.05 * (hi - lo) : (lo == 0.0 ? 1.0 : 0.1 * std::fabs(lo));
    lo -= pad;
    hi += pad;
  }
  a.lo = lo;
  a.hi = hi;
  return a;
}

void text(std::ostringstream& o, double x, double y, const std::string& s, const char* anchor = "middle",
          int size = 11, const char* extra = "") {
  o << "<text x=\"" << coord(x) << "\" y=\"" << coord(y) << "\" text-anchor=\"" << anchor << "\" font-size=\"" << size
    << "\"" << extra << ">" << escape(s) << "</text>\n";
}

void open_svg(std::ostringstream& o, int width, int height, const std::string& title) {
  o << "<svg width=\"" << width << "\" height=\"" << height << "\" viewBox=\"0 0 "
    << width << " " << height << "\" font-family=\"sans-serif\" role=\"img\">\n";
  o << "<title>" << escape(title) << "</title>\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";
  text(o, width / 2.0, 16, title, "middle", 13, " font-weight=\"bold\"");
}

}  // namespace

std::string line_chart(const LineChart& chart) {
  std::ostringstream o;
  const double left = 70, right = chart.width - 150.0, top = 30, bottom = chart.height - 40.0;
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  auto include = [&](double x, double y) {
    if (!std::isfinite(x) || !std::isfinite(y) || (chart.log_y && y <= 0.0)) return;
    x_lo = std::min(x_lo, x), x_hi = std::max(x_hi, x), y_lo = std::min(y_lo, y), y_hi = std::max(y_hi, y);
  };
  for (const Series& s : chart.series)
    for (const auto& [x, y] : s.points) include(x, y);
  for (const Marker& m : chart.markers) include(m.x, m.y);
  for (const auto& [y, label] : chart.horizontal_lines)
    if (!chart.log_y || y > 0.0) y_lo = std::min(y_lo, y), y_hi = std::max(y_hi, y);
  open_svg(o, chart.width, chart.height, chart.title);
  if (!std::isfinite(x_lo) || !std::isfinite(y_lo)) {
    text(o, chart.width / 2.0, chart.height / 2.0, "no data to plot");
    o << "</svg>\n";
    return o.str();
  }
  const Axis xa = make_axis(x_lo, x_hi, false, left, right);
  const Axis ya = make_axis(y_lo, y_hi, chart.log_y, bottom, top);
  o << "<rect x=\"" << coord(left) << "\" y=\"" << coord(top) << "\" width=\"" << coord(right - left)
    << "\" height=\"" << coord(bottom - top) << "\" fill=\"none\" stroke=\"#888\"/>\n";
  for (double t : xa.ticks()) {
    const double px = xa.to_pixel(t);
    o << "<line x1=\"" << coord(px) << "\" y1=\"" << coord(bottom) << "\" x2=\"" << coord(px) << "\" y2=\""
      << coord(top) << "\" stroke=\"#eee\"/>\n";
    text(o, px, bottom + 14, number(t, 3), "middle", 10);
  }
  for (double t : ya.ticks()) {
    const double py = ya.to_pixel(t);
    o << "<line x1=\"" << coord(left) << "\" y1=\"" << coord(py) << "\" x2=\"" << coord(right) << "\" y2=\""
      << coord(py) << "\" stroke=\"#eee\"/>\n";
    text(o, left - 4, py + 3, number(t, 3), "end", 10);
  }
  text(o, (left + right) / 2, chart.height - 8.0, chart.x_label);
  o << "<text x=\"14\" y=\"" << coord((top + bottom) / 2) << "\" font-size=\"11\" text-anchor=\"middle\" transform=\"rotate(-90 14 "
    << coord((top + bottom) / 2) << ")\">" << escape(chart.y_label + (chart.log_y ? " (log)" : "")) << "</text>\n";
  for (const auto& [y, label] : chart.horizontal_lines) {
    if (chart.log_y && y <= 0.0) continue;
    const double py = ya.to_pixel(y);
    o << "<line x1=\"" << coord(left) << "\" y1=\"" << coord(py) << "\" x2=\"" << coord(right) << "\" y2=\""
      << coord(py) << "\" stroke=\"#444\" stroke-dasharray=\"5,4\"/>\n";
    text(o, right - 4, py - 4, label, "end", 10);
  }
  double legend_y = top + 8;
  for (const Series& s : chart.series) {
    std::string path;
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y) || (chart.log_y && y <= 0.0)) continue;
      const double px = xa.to_pixel(x), py = ya.to_pixel(y);
      path += (path.empty() ? "M" : " L") + coord(px) + "," + coord(py);
      o << "<circle cx=\"" << coord(px) << "\" cy=\"" << coord(py) << "\" r=\"2.5\" fill=\"" << s.color << "\"><title>"
        << escape(s.label + ": " + number(x, 4) + ", " + number(y, 4)) << "</title></circle>\n";
    }
    if (s.line && !path.empty())
      o << "<path d=\"" << path << "\" fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"1.5\"/>\n";
    o << "<rect x=\"" << coord(right + 10) << "\" y=\"" << coord(legend_y - 8) << "\" width=\"10\" height=\"10\" fill=\""
      << s.color << "\"/>\n";
    text(o, right + 24, legend_y, s.label, "start", 10);
    legend_y += 15;
  }
  for (const Marker& m : chart.markers) {
    if (!std::isfinite(m.x) || !std::isfinite(m.y) || (chart.log_y && m.y <= 0.0)) continue;
    const double px = xa.to_pixel(m.x), py = ya.to_pixel(m.y);
    o << "<circle cx=\"" << coord(px) << "\" cy=\"" << coord(py) << "\" r=\"6\" fill=\"none\" stroke=\"" << m.color
      << "\" stroke-width=\"2\"><title>" << escape(m.label + ": " + number(m.x, 4) + ", " + number(m.y, 4))
      << "</title></circle>\n";
    o << "<rect x=\"" << coord(right + 10) << "\" y=\"" << coord(legend_y - 8) << "\" width=\"10\" height=\"10\" fill=\"none\" stroke=\""
      << m.color << "\" stroke-width=\"2\"/>\n";
    text(o, right + 24, legend_y, m.label, "start", 10);
    legend_y += 15;
  }
  o << "</svg>\n";
  return o.str();
}

std::string bar_chart(const BarChart& chart) {
  std::ostringstream o;
  if (chart.horizontal) {
    const int row = 18, height = 40 + row * static_cast<int>(chart.bars.size());
    open_svg(o, chart.width, height, chart.title);
    double most = 0.0;
    for (const Bar& b : chart.bars) most = std::max(most, b.value);
    const double left = 200, right = chart.width - 80.0;
    for (std::size_t i = 0; i < chart.bars.size(); ++i) {
      const Bar& b = chart.bars[i];
      const double y = 30 + row * double(i), w = most > 0 ? (right - left) * b.value / most : 0.0;
      text(o, left - 6, y + 12, b.label, "end", 10);
      o << "<rect x=\"" << coord(left) << "\" y=\"" << coord(y + 2) << "\" width=\"" << coord(w) << "\" height=\""
        << row - 5 << "\" fill=\"" << b.color << "\"><title>" << escape(b.tooltip) << "</title></rect>\n";
      text(o, left + w + 4, y + 12, number(b.value, 3) + (chart.y_label.empty() ? "" : " " + chart.y_label), "start", 10);
    }
    o << "</svg>\n";
    return o.str();
  }
  open_svg(o, chart.width, chart.height, chart.title);
  const double left = 50, right = chart.width - 10.0, top = 30, bottom = chart.height - 40.0;
  double most = 0.0, total_weight = 0.0;
  for (const Bar& b : chart.bars) most = std::max(most, b.value), total_weight += std::max(0.0, b.weight);
  const Axis ya = make_axis(0.0, most > 0 ? most : 1.0, false, bottom, top);
  for (double t : ya.ticks()) {
    if (t < 0) continue;
    const double py = ya.to_pixel(t);
    o << "<line x1=\"" << coord(left) << "\" y1=\"" << coord(py) << "\" x2=\"" << coord(right) << "\" y2=\""
      << coord(py) << "\" stroke=\"#eee\"/>\n";
    text(o, left - 4, py + 3, number(t, 3), "end", 10);
  }
  o << "<text x=\"12\" y=\"" << coord((top + bottom) / 2) << "\" font-size=\"11\" text-anchor=\"middle\" transform=\"rotate(-90 12 "
    << coord((top + bottom) / 2) << ")\">" << escape(chart.y_label) << "</text>\n";
  double x = left;
  const double span = right - left, n = double(std::max<std::size_t>(chart.bars.size(), 1));
  for (const Bar& b : chart.bars) {
    const double w = total_weight > 0 ? span * std::max(0.0, b.weight) / total_weight : span / n;
    const double y = ya.to_pixel(std::max(0.0, b.value)), base = ya.to_pixel(0.0);
    o << "<rect x=\"" << coord(x) << "\" y=\"" << coord(y) << "\" width=\"" << coord(std::max(w - 0.5, 0.5))
      << "\" height=\"" << coord(std::max(base - y, 0.0)) << "\" fill=\"" << b.color << "\" stroke=\"#fff\" stroke-width=\"0.3\"><title>"
      << escape(b.tooltip) << "</title></rect>\n";
    x += w;
  }
  o << "<line x1=\"" << coord(left) << "\" y1=\"" << coord(ya.to_pixel(0.0)) << "\" x2=\"" << coord(right) << "\" y2=\""
    << coord(ya.to_pixel(0.0)) << "\" stroke=\"#444\"/>\n";
  double lx = left;
  for (const auto& [color, label] : chart.legend) {
    o << "<rect x=\"" << coord(lx) << "\" y=\"" << coord(bottom + 18) << "\" width=\"10\" height=\"10\" fill=\"" << color << "\"/>\n";
    text(o, lx + 14, bottom + 27, label, "start", 10);
    lx += 14 + 7.0 * double(label.size()) + 16;
  }
  o << "</svg>\n";
  return o.str();
}

std::string range_chart(const std::string& title, const std::string& x_label, const std::vector<Range>& rows,
                        int width) {
  std::ostringstream o;
  const int row = 16, height = 60 + row * static_cast<int>(rows.size());
  open_svg(o, width, height, title);
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const Range& r : rows)
    for (double v : {r.q01, r.q10, r.q50, r.q90, r.q99})
      if (v > 0 && std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!std::isfinite(lo)) {
    text(o, width / 2.0, height / 2.0, "no data to plot");
    o << "</svg>\n";
    return o.str();
  }
  const double left = 200, right = width - 20.0, bottom = height - 30.0;
  const Axis xa = make_axis(lo, hi, true, left, right);
  for (double t : xa.ticks()) {
    const double px = xa.to_pixel(t);
    o << "<line x1=\"" << coord(px) << "\" y1=\"26\" x2=\"" << coord(px) << "\" y2=\"" << coord(bottom)
      << "\" stroke=\"#eee\"/>\n";
    text(o, px, bottom + 13, number(t, 2), "middle", 10);
  }
  text(o, (left + right) / 2, height - 4.0, x_label + " (log)");
  auto px = [&](double v) { return xa.to_pixel(std::max(v, std::pow(10.0, xa.lo))); };
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Range& r = rows[i];
    const double y = 30 + row * double(i), mid = y + row / 2.0 - 2;
    text(o, left - 6, mid + 4, r.label, "end", 10);
    const std::string tip = r.label + ": 1% " + number(r.q01) + ", 10% " + number(r.q10) + ", median " +
                            number(r.q50) + ", 90% " + number(r.q90) + ", 99% " + number(r.q99);
    o << "<g><title>" << escape(tip) << "</title>\n";
    o << "<line x1=\"" << coord(px(r.q01)) << "\" y1=\"" << coord(mid) << "\" x2=\"" << coord(px(r.q99)) << "\" y2=\""
      << coord(mid) << "\" stroke=\"#555\"/>\n";
    o << "<rect x=\"" << coord(px(r.q10)) << "\" y=\"" << coord(y + 2) << "\" width=\"" << coord(std::max(px(r.q90) - px(r.q10), 1.0))
      << "\" height=\"" << row - 8 << "\" fill=\"#9ecae1\" stroke=\"#3182bd\"/>\n";
    o << "<line x1=\"" << coord(px(r.q50)) << "\" y1=\"" << coord(y + 1) << "\" x2=\"" << coord(px(r.q50)) << "\" y2=\""
      << coord(y + row - 5) << "\" stroke=\"#08306b\" stroke-width=\"2\"/>\n</g>\n";
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace bayesq::svg

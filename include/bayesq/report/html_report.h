// Self-contained HTML reports of a quantize run and of a comparison: one file, inline SVG charts (svg.h), inline
// CSS, no script, no network request and no other file, so it opens anywhere, offline, with JavaScript off.
// Every figure in it is read from the run's JSON (the rate-distortion curve is computed from the JSON's loss table).
// Free of libtorch.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "bayesq/table/loss_table.h"

namespace bayesq {

// A quantize report (`quantize --report`: one object, or an array of them for several budgets).
std::string quantize_report_html(const nlohmann::json& report);
// A comparison (`compare --json-output`).
std::string compare_report_html(const nlohmann::json& results);
// Either, told apart by their keys; throws UserError(input) naming `path` for JSON that is neither.
std::string report_html(const nlohmann::json& json, const std::string& path);

// The rate-distortion curve of a loss table: each block's lower convex hull of (cost, loss), the hulls' segments
// merged by slope, as (average bits per weight, summed loss) from every block at its cheapest option to every block
// at its last hull point. Each point is an allocation; none lies below the piecewise-linear curve (the allocator's
// greedy path). Blocks named in `kept_fp` are left out.
std::vector<std::pair<double, double>> table_rate_distortion(const LossTable& table,
                                                             const std::vector<std::string>& kept_fp);

}  // namespace bayesq

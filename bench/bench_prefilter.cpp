// Benchmark check of the option prefilter's tested bound (Note [Option prefilter] in table/option_prefilter.h):
// from a `bayesq quantize` report whose table was measured in full with predictions (`--prefilter-window 8`: every
// window holds every option), for each budget and window, whether the additive allocation on that budget's
// windows equals the one on the full table, how many blocks' full choices fall outside their windows, and how
// many options the windows hold (and which blocks fall outside). Default allocation settings (the DP), as the
// benchmarks run.
//
//   bayesq_bench_prefilter REPORT.json [--bits 2.5,3,4] [--windows 0,1,2]
//
// Prints one JSON object per budget and window.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bayesq/allocate/allocation.h"
#include "bayesq/table/option_prefilter.h"

using namespace bayesq;

namespace {
std::vector<double> numbers(const std::string& list) {
  std::vector<double> out;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) out.push_back(std::strtod(item.c_str(), nullptr));
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: bayesq_bench_prefilter REPORT.json [--bits 2.5,3,4] [--windows 0,1,2]\n";
    return 2;
  }
  std::vector<double> budgets = {2.5, 3.0, 4.0}, windows = {0, 1, 2};
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--bits") budgets = numbers(argv[i + 1]);
    if (std::string(argv[i]) == "--windows") windows = numbers(argv[i + 1]);
  }
  try {
    std::ifstream in(argv[1]);
    if (!in) throw std::runtime_error(std::string("cannot read ") + argv[1]);
    const nlohmann::json report = nlohmann::json::parse(in);
    const LossTable table = report.at("loss_table").get<LossTable>();
    int64_t options = 0;
    for (const BlockLosses& b : table.blocks) {
      options += static_cast<int64_t>(b.entries.size());
      for (const LossEntry& e : b.entries)
        if (!e.measured || !std::isfinite(e.predicted_loss))
          throw std::runtime_error("the table is not measured in full with predictions (--prefilter-window 8)");
    }
    for (double bits : budgets) {
      AllocationParams params;
      params.bits_per_weight = bits;
      const Allocation full = allocate(table, params);
      for (double w : windows) {
        AllocationParams windowed = params;
        windowed.allowed_entries = prefilter_entries(table, params, static_cast<int>(w));
        int64_t selected = 0, outside = 0, changed = 0;
        nlohmann::json outside_blocks = nlohmann::json::array();  // name, full-table bits and kind
        for (std::size_t b = 0; b < table.blocks.size(); ++b) {
          for (bool s : windowed.allowed_entries[b]) selected += s ? 1 : 0;
          if (!full.blocks[b].keep_fp && !windowed.allowed_entries[b][static_cast<std::size_t>(full.blocks[b].entry)]) {
            ++outside;
            outside_blocks.push_back({table.blocks[b].name, full.blocks[b].bits, codebook_kind_name(full.blocks[b].kind)});
          }
        }
        const Allocation a = allocate(table, windowed);
        for (std::size_t b = 0; b < table.blocks.size(); ++b) changed += a.blocks[b].entry != full.blocks[b].entry;
        std::cout << nlohmann::json{{"report", argv[1]},          {"bits", bits},
                                    {"window", int(w)},            {"options", options},
                                    {"selected", selected},        {"full_choices_outside", outside},
                                    {"changed_blocks", changed},   {"full_loss", full.expected_loss},
                                    {"windowed_loss", a.expected_loss}, {"outside", outside_blocks}}
                         .dump()
                  << "\n";
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "bayesq_bench_prefilter: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

// Benchmark (issue: codebooks): time to fill the loss table of every block of a model, 6 candidate bit-widths
// (2, 3, 4, 5, 6, 8), for Lloyd and uniform codebooks together (the default) and each alone.
//
//   bayesq_bench_table MODEL [--threads T] [--candidates 2,3,4,5,6,8] [--tau 0]
//   bayesq_bench_table MODEL --options [--threads T]
//
// Precisions are drawn log-normal (what a posterior looks like; the table's cost does not depend on their
// values). Prints one JSON object. --options times what the default method designs per block instead
// (quantize_block_options: Lloyd and uniform at 1, 2, 3, 4, 5, 6 and 8 bits, levels at unit gain) with K-FAC's
// precisions, each the product of a row's and a column's log-normal factor (kfac_precision's shape).
#include <chrono>
#include <cstring>
#include <iomanip>
#include <cstdlib>
#include <iostream>
#include <random>
#include <sstream>
#include <string>

#include <torch/script.h>

#include "bayesq/common/parallel.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/block_tensor.h"
#include "bayesq/model/model_file.h"
#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/table/loss_table.h"

using namespace bayesq;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: bayesq_bench_table MODEL [--threads T] [--candidates 2,3,4,5,6,8] [--tau 0]\n";
    return 2;
  }
  std::vector<int> candidates = {2, 3, 4, 5, 6, 8};
  double tau = 0.0;
  bool options_mode = false;
  int dp_max_levels = LloydParams{}.dp_max_levels, dp_points_per_level = LloydParams{}.dp_points_per_level;
  for (int i = 2; i < argc; ++i)
    if (std::string(argv[i]) == "--options") options_mode = true;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--options") {
      --i;
      continue;
    }
    if (std::string(argv[i]) == "--threads") set_num_threads(std::atoi(argv[i + 1]));
    if (std::string(argv[i]) == "--dp-max-levels") dp_max_levels = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--dp-points-per-level") dp_points_per_level = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--tau") {
      char* end = nullptr;
      tau = std::strtod(argv[i + 1], &end);
      if (end == argv[i + 1] || *end != '\0' || !(tau >= 0.0 && tau <= 1.0)) {
        std::cerr << "bayesq_bench_table: --tau takes a number in [0, 1], not '" << argv[i + 1] << "'\n";
        return 2;
      }
    }
    if (std::string(argv[i]) == "--candidates") {
      candidates.clear();
      std::stringstream list(argv[i + 1]);
      for (std::string item; std::getline(list, item, ',');) {
        const int bits = std::atoi(item.c_str());
        if (bits < 1 || bits > 16) {
          std::cerr << "bayesq_bench_table: --candidates takes bit-widths 1..16 separated by commas, not '" << item
                    << "'\n";
          return 2;
        }
        candidates.push_back(bits);
      }
    }
  }
  LoadedModel model;
  try {
    model = load_model(argv[1]);
  } catch (const std::exception& e) {
    std::cerr << "bayesq_bench_table: " << e.what() << "\n";
    return 2;
  }
  const BlockIndex index = discover_blocks(model.module);
  std::vector<std::vector<float>> weights, precision;
  std::mt19937 rng(1);
  std::lognormal_distribution<float> lognormal(0.0f, 2.0f);
  std::vector<BlockTableInput> inputs;
  if (options_mode) {
    std::vector<std::pair<int, CodebookKind>> options;
    for (int bits : {1, 2, 3, 4, 5, 6, 8})
      for (CodebookKind kind : {CodebookKind::lloyd, CodebookKind::uniform_asymmetric}) options.emplace_back(bits, kind);
    QuantizerParams params;
    params.level_scale = LevelScale::gain;
    params.lloyd.dp_max_levels = dp_max_levels;
    params.lloyd.dp_points_per_level = dp_points_per_level;
    std::vector<double> option_loss(options.size(), 0.0);  // per option, over all blocks
    double total = 0.0, checksum = 0.0;
    uint64_t hash = 14695981039346656037ull;
    for (const auto& b : index.blocks) {
      const std::vector<float> w = block_rows_vector(find_tensor(model.module, b.name), b);
      std::vector<float> row_factor(static_cast<std::size_t>(b.rows())), col_factor(static_cast<std::size_t>(b.cols()));
      for (auto& v : row_factor) v = lognormal(rng);
      for (auto& v : col_factor) v = lognormal(rng);
      std::vector<float> p(w.size());
      for (int64_t r = 0; r < b.rows(); ++r)
        for (int64_t c = 0; c < b.cols(); ++c)
          p[static_cast<std::size_t>(r * b.cols() + c)] =
              row_factor[static_cast<std::size_t>(r)] * col_factor[static_cast<std::size_t>(c)] + 0.01f;
      const auto t0 = std::chrono::steady_clock::now();
      const std::vector<QuantizedBlock> designed =
          quantize_block_options({w.data(), p.data(), b.rows(), b.cols()}, options, params);
      total += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      for (std::size_t o = 0; o < designed.size(); ++o) option_loss[o] += designed[o].expected_loss;
      for (const QuantizedBlock& q : designed) {
        checksum += q.expected_loss;
        // FNV-1a over codes and levels: the same designs give the same hash.
        for (uint8_t c : q.codes) hash = (hash ^ c) * 1099511628211ull;
        for (const Codebook& cb : q.codebooks)
          for (float v : cb.levels) {
            uint32_t u;
            std::memcpy(&u, &v, sizeof u);
            hash = (hash ^ u) * 1099511628211ull;
          }
      }
    }
    std::cout << "{\"model\": \"" << argv[1] << "\", \"weights\": " << index.quantizable_weight_count()
              << ", \"blocks\": " << index.blocks.size() << ", \"threads\": " << num_threads()
              << ", \"options\": " << options.size() << ", \"design_s\": " << total
              << ", \"dp_max_levels\": " << dp_max_levels
              << ", \"dp_points_per_level\": " << dp_points_per_level << ", \"expected_loss_sum\": " << std::setprecision(17)
              << checksum << ", \"design_hash\": \"" << std::hex << hash << std::dec << "\", \"expected_loss\": {";
    for (std::size_t o = 0; o < options.size(); ++o)
      std::cout << (o ? ", " : "") << "\"" << codebook_kind_name(options[o].second) << options[o].first
                << "\": " << option_loss[o];
    std::cout << "}}" << std::endl;
    return 0;
  }
  for (const auto& b : index.blocks) {
    weights.push_back(block_rows_vector(find_tensor(model.module, b.name), b));
    precision.emplace_back(weights.back().size());
    for (auto& p : precision.back()) p = lognormal(rng);
  }
  for (std::size_t b = 0; b < index.blocks.size(); ++b)
    inputs.push_back({index.blocks[b].name, {weights[b].data(), precision[b].data(), index.blocks[b].rows(),
                                             index.blocks[b].cols()}});
  std::cout << "{\"model\": \"" << argv[1] << "\", \"weights\": " << index.quantizable_weight_count()
            << ", \"blocks\": " << index.blocks.size() << ", \"threads\": " << num_threads() << ", \"tau\": " << tau;
  const std::pair<const char*, std::vector<CodebookKind>> variants[] = {
      {"lloyd_and_uniform", {CodebookKind::lloyd, CodebookKind::uniform_asymmetric}},
      {"lloyd", {CodebookKind::lloyd}},
      {"uniform", {CodebookKind::uniform_asymmetric}}};
  for (const auto& v : variants) {
    LossTableParams params;
    params.candidates = candidates;
    params.kinds = v.second;
    params.quantizer.tau = tau;
    const auto t0 = std::chrono::steady_clock::now();
    build_loss_table(inputs, params);
    std::cout << ", \"" << v.first << "_s\": "
              << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  std::cout << "}" << std::endl;
  return 0;
}

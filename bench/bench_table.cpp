// Benchmark (issue: codebooks): time to fill the loss table of every block of a model, 6 candidate bit-widths
// (2, 3, 4, 5, 6, 8), for Lloyd and uniform codebooks together (the default) and each alone.
//
//   bayesq_bench_table MODEL [--threads T] [--candidates 2,3,4,5,6,8] [--tau 0]
//
// Precisions are drawn log-normal (what a posterior looks like; the table's cost does not depend on their
// values). Prints one JSON object.
#include <chrono>
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
#include "bayesq/table/loss_table.h"

using namespace bayesq;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: bayesq_bench_table MODEL [--threads T] [--candidates 2,3,4,5,6,8] [--tau 0]\n";
    return 2;
  }
  std::vector<int> candidates = {2, 3, 4, 5, 6, 8};
  double tau = 0.0;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--threads") set_num_threads(std::atoi(argv[i + 1]));
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

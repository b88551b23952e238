// The allocator's DP at the scale of a large model's table: a multiple-choice knapsack shaped like BERT-base's
// measured table (77 blocks: the embeddings, 12 layers of six matrices, pooler, classifier; Lloyd and uniform
// options at 1, 2, 3, 4, 5, 6, 8 bits, per-row fp16 codebooks as metadata; losses falling with the bits, seeded),
// solved at one budget as the prefilter solves it (every option) and as a budget's allocation does (three widths
// of each kind per block), each timed over a few repeats.
//
//   bayesq_bench_allocate [--bits 3] [--repeats 3] [--threads N]
//
// Prints one JSON object per problem: seconds per solve (the least of the repeats), states per block, and a hash
// of the choices (equal across builds and thread counts when the DP's results are).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bayesq/allocate/knapsack.h"
#include "bayesq/common/parallel.h"

using namespace bayesq;

namespace {

struct Shape {
  int64_t rows, cols;
};

std::vector<Shape> bert_base_shapes() {
  std::vector<Shape> out = {{30522, 768}, {512, 768}, {2, 768}};
  for (int layer = 0; layer < 12; ++layer) {
    for (int m = 0; m < 4; ++m) out.push_back({768, 768});
    out.push_back({3072, 768});
    out.push_back({768, 3072});
  }
  out.push_back({768, 768});
  out.push_back({45, 768});
  return out;
}

// `widths` candidate widths per kind around a seeded centre, or all seven when widths >= 7.
KnapsackProblem problem(double bits, int widths, uint32_t seed) {
  const int candidates[] = {1, 2, 3, 4, 5, 6, 8};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::uniform_int_distribution<int> centre(1, 4);
  KnapsackProblem p;
  int64_t weights = 0;
  for (const Shape& s : bert_base_shapes()) {
    const int64_t numel = s.rows * s.cols;
    weights += numel;
    const double scale = double(numel) * (0.5 + unit(rng));
    const int c = centre(rng);
    std::vector<KnapsackOption> options;
    for (int kind = 0; kind < 2; ++kind)
      for (int i = 0; i < 7; ++i) {
        if (widths < 7 && std::abs(i - c) > widths / 2) continue;
        const int b = candidates[i];
        const int64_t levels = kind == 0 ? (int64_t(1) << b) : 2;  // Lloyd: a table per row; uniform: scale, zero
        const double loss = scale * std::pow(4.0, -b) * (kind == 0 ? 0.8 + 0.1 * unit(rng) : 1.0);
        options.push_back({numel * b + s.rows * levels * 16, loss});
      }
    p.blocks.push_back(options);
  }
  p.budget = static_cast<int64_t>(bits * double(weights));
  return p;
}

uint64_t hash_choices(const std::vector<int>& choice) {
  uint64_t h = 1469598103934665603ull;
  for (int c : choice) h = (h ^ static_cast<uint64_t>(c)) * 1099511628211ull;
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  double bits = 3.0;
  int repeats = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--bits") bits = std::strtod(argv[i + 1], nullptr);
    else if (flag == "--repeats") repeats = std::max(1, std::atoi(argv[i + 1]));
    else if (flag == "--threads") set_num_threads(std::atoi(argv[i + 1]));
    else {
      std::cerr << "usage: bayesq_bench_allocate [--bits 3] [--repeats 3] [--threads N]\n";
      return 2;
    }
  }
  for (const auto& [name, widths] : {std::pair<const char*, int>{"every option (prefilter)", 7},
                                     std::pair<const char*, int>{"three widths per kind (budget)", 3}}) {
    const KnapsackProblem p = problem(bits, widths, 7);
    double least = 1e300;
    KnapsackSolution s;
    for (int r = 0; r < repeats; ++r) {
      const auto start = std::chrono::steady_clock::now();
      s = solve_dp(p);
      least = std::min(least, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    nlohmann::json row = {{"problem", name},      {"blocks", p.blocks.size()},  {"bits", bits},
                          {"threads", num_threads()}, {"seconds", least},      {"exact", s.exact},
                          {"resolution_bits", s.resolution}, {"loss", s.loss}, {"cost", s.cost},
                          {"choices_hash", hash_choices(s.choice)}};
    std::cout << row.dump() << std::endl;
  }
  return 0;
}

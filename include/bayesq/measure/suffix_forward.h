// Forward passes from a cached prefix, for measuring one block's options (measured_table.h).
//
// Note [Cached prefix]: a measured table runs the model once per option of a block with only that block's weight
// changed, so every operation before the weight's first read computes the same values each time. The inlined
// forward graph is cut at the first top-level node that reads the block's weight. The prefix runs once per block
// and keeps the values the rest of the graph uses (its live set: the block's input, a residual branch's input,
// an attention mask's derived tensors, sizes); each option then runs only the suffix from them. Nodes before the
// cut that do not depend on the data (attribute reads, views of weights, constants) are not cached but repeated
// in the suffix, so a swapped weight is always read afresh. Cached tensors and lists that the suffix writes in
// place (aten::relu_, add_, a list appended to) are copied for each run. Same operators on the same values in the
// same order: the same results as full forward passes (test Pipeline.CachedPrefixGivesTheTableOfFullForwards),
// for a fraction of the work (the prefix's share of the model). On CUDA that holds because TorchScript's fusers are
// off there (Note [No fusion on CUDA] in pipeline/device.h): they compiled each new graph and fused it differently
// from the module's own forward. Measured tables use it on CPU devices unless told (MeasureParams::cached_prefix).
//
// Note [Suffix in the plain interpreter]: each block (and each refinement round) gets a new prefix and a new
// suffix graph, and TorchScript's profiling executor runs a new graph's first call profiled and optimises it at a
// later one: a cost per graph that, on a GPU, was as large as the layers the prefix skipped (BENCHMARKS.md, "Cached
// prefix on CUDA"). Both run with the graph optimiser off, as the layer capture does: the plain interpreter runs
// the graph's own operators in its order, and Pipeline.CachedPrefixGivesTheTableOfFullForwards checks that the
// KLs are still those of whole forwards bit for bit (libtorch 1.13 and 2.11). Each batch's data inputs stay where
// the prefix found them (on the device) unless the suffix writes into one.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/script.h>

#include "bayesq/data/data_file.h"
#include "bayesq/model/compute.h"

namespace bayesq {

class SuffixForward {
 public:
  // Runs the prefix of `module`'s forward up to the first read of `weight` (a block's attribute path) on the first
  // `n` examples of `data` and keeps its live values; the module must keep its attributes (weights may be swapped
  // with assign_tensor). nullptr when there is nothing to save (the weight is read before any data-dependent
  // operation) or the prefix would not be the same every time (the forward sets attributes or draws random
  // numbers; in-place writes into cached values that alias each other or an input), or when cutting or running
  // it throws (logged at debug level): then full forwards, which give the same results.
  static std::unique_ptr<SuffixForward> build(torch::jit::Module& module, const std::string& weight,
                                              const DataFile& data, int64_t n, const Compute& compute);
  ~SuffixForward();

  // log_probabilities (measured_table.h) of the module as it is now, from the cached prefix.
  std::vector<torch::Tensor> log_probabilities();

  // Top-level data-dependent nodes of the forward graph: in the prefix (run once) and in all.
  int64_t prefix_nodes() const { return prefix_nodes_; }
  int64_t data_nodes() const { return data_nodes_; }

 private:
  SuffixForward() = default;
  static std::unique_ptr<SuffixForward> cut_and_run_prefix(torch::jit::Module& module, const std::string& weight,
                                                           const DataFile& data, int64_t n, const Compute& compute);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t prefix_nodes_ = 0, data_nodes_ = 0;
};

}  // namespace bayesq

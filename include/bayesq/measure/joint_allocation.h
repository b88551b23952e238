// Joint allocation: the additive measured table's allocation, refined by the model's KL with every block quantized.
//
// Note [Joint allocation]: a measured table (measured_table.h) scores each option with every other block in float,
// and the allocator minimises the sum of the entries. Errors of many blocks compound (at 2 bits the sum can miss
// the joint KL by several times), and not equally: an early layer's error reaches every later one. A refinement
// round linearises the joint KL J around the current allocation A instead of around the float model:
//   J(A') ~ J(A) + sum_b [ J(A with block b at A'_b) - J(A) ],
// each term measured with every other block quantized as A has it. Only options within `window` candidate
// bit-widths of each block's current one are measured (the linearisation is local, and the forwards stay a fraction
// of the table's), and the allocator runs on those conditional entries under the same budget and rules. The new
// allocation is kept only when its measured J on the same calibration examples is lower; otherwise, or when
// nothing changes, refinement stops. So the result is never worse than the additive allocation on those examples,
// and a round costs one forward per measured option plus one.
//
// Note [Refine where the sum misses]: a round costs one forward per re-measured option, about as many as the
// measured table's (ResNet-50: 253-261, 3.5 s a budget on an H200; BERT: 374, 14.8 s), and it only corrects what the
// additive sum gets wrong. Where the additive allocation's measured J is close to the table's sum S for it, the
// sum held, and rounds found nothing that carried beyond the measured examples: every round on the benchmark
// models with J / S at 0.8-1.7 was rejected (ResNet-50 at 2-4 bits, BERT at 3, MobileNetV2 at 3 and 4), and the
// rounds kept on the quickstart CNN (1.04-1.20) lowered its calibration KL by 1-9% but moved its test KL by -3.4%
// to +1.5%. Where the sum missed by more (MobileNetV2 at 2 and 2.5 bits: 4.6 and 2.7), rounds were kept and the
// test KL fell by a fifth. So the rounds run only when J > threshold x S (JointParams::threshold, 2 by default;
// 0: always), and the report gives J and S (BENCHMARKS.md, "Joint rounds only where the additive sum misses").
//
// Note [Queued trials]: where the forwards are replayed on a GPU (kl_forward.h), a trial's KL is queued on the
// device and not read until 64 trials are waiting (or the round's last): the host decodes and sends the next
// option (pinned, without waiting: block_tensor.h) while the device still runs the forwards before it, where
// reading each KL at once left the device idle for every option's host work. The values are the same bit for bit;
// `option_seconds` is the host's time on trial options, `wait_seconds` its time waiting for queued KLs.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/script.h>

#include "bayesq/allocate/allocation.h"
#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/data/data_file.h"
#include "bayesq/distributed/world.h"
#include "bayesq/index/block_index.h"
#include "bayesq/measure/measure_params.h"
#include "bayesq/model/compute.h"
#include "bayesq/table/loss_table.h"

namespace bayesq {

// The quantized block of entry `entry` of table block `block`, exactly as the final model will have it.
using OptionBlock = std::function<QuantizedBlock(std::size_t block, int entry)>;
// Told, before a block's trials of a round, every entry they will ask OptionBlock for: a caller that quantizes
// options several at a time (a K-FAC block's options share one stacked feedback pass) makes them here at once.
using OptionsAhead = std::function<void(std::size_t block, const std::vector<int>& entries)>;

struct JointRound {
  double predicted_kl = 0.0;   // the linearisation's J of the round's allocation
  double measured_kl = 0.0;    // its measured J (= the previous J when nothing changed)
  int64_t changed_blocks = 0;
  int64_t forwards = 0;
  bool accepted = false;
  double seconds = 0.0;
};

struct JointRefinement {
  Allocation allocation;       // entries index the full table; per-block expected_loss stays the additive table's
  double initial_kl = 0.0;     // measured J of the additive allocation
  double additive_kl = 0.0;    // the table's sum for it, on J's scale
  bool skipped = false;        // J within threshold x the sum: no rounds (Note [Refine where the sum misses])
  double final_kl = 0.0;       // measured J of `allocation`
  int64_t examples = 0;
  int64_t forwards = 0;        // all rounds, the reference and the initial measurement included
  int64_t cached_prefixes = 0;  // blocks whose trials ran from a cached prefix (Note [Cached prefix]), all rounds
  double prefix_seconds = 0.0;  // cutting and running those prefixes
  double option_seconds = 0.0;  // trial options: quantized ahead, decoded and set (Note [Queued trials])
  double wait_seconds = 0.0;    // reading queued trial KLs back from the device
  std::vector<JointRound> rounds;
  bool replayed = false;       // full forwards replayed as a CUDA graph (measure/kl_forward.h)
  double seconds = 0.0;
};

// The entries of `losses` a refinement round measures for a block whose current option is `current`: those within
// `window` candidate bit-widths (ranks among the block's distinct bit-widths) of its current one, every kind, the
// current entry included; for a block kept in floating point every entry.
std::vector<int> window_entries(const BlockLosses& losses, const BlockChoice& current, int window);

// J is the mean KL(float || quantized) per scored row over the first measure.examples examples of `data`, the
// examples the table was measured on. `start` must come from allocate(table, params). In a job of several
// processes (`world`), each round's trials are split by block over the processes and gathered before the
// re-allocation: every process gets the numbers one process alone measures, and the same refinement.
// `rounds_begin`, when given, is called once J(A) is measured and the rounds are to run (not when skipped).
JointRefinement refine_allocation(const torch::jit::Module& model, const BlockIndex& index, const DataFile& data,
                                  const LossTable& table, const Allocation& start, const AllocationParams& params,
                                  const JointParams& joint, const MeasureParams& measure, const OptionBlock& option,
                                  const Compute& compute, const std::string& model_path,
                                  const World* world = nullptr, const OptionsAhead& ahead = nullptr,
                                  const std::function<void()>& rounds_begin = nullptr);

void to_json(nlohmann::json& j, const JointRound& r);
void to_json(nlohmann::json& j, const JointRefinement& r);  // without the allocation

}  // namespace bayesq

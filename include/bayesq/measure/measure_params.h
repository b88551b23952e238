// Settings of measured loss tables (measured_table.h), free of libtorch so that configuration values can hold them.
#pragma once

#include <cstdint>

namespace bayesq {

struct MeasureParams {
  int64_t examples = 128;  // calibration examples each entry's KL is measured on (0 or more than the file: all)
  // K-FAC tables: design the codebooks on another thread, ahead of the blocks being fed back and measured (Note
  // [Designs ahead of the device] in gptq/design_queue.h), and on a GPU quantize options on a stream beside the
  // queued forwards (Note [Feedback beside the forwards] in kl_forward.h). automatic: on a CUDA device (on a CPU
  // both would compete for the same cores). The designs and codes, hence the output, are the same either way.
  enum class Overlap { automatic, off, on };
  Overlap overlap_design = Overlap::automatic;
  bool overlap_on(bool cuda) const {
    return overlap_design == Overlap::on || (overlap_design == Overlap::automatic && cuda);
  }
  // Each option's forward, and each joint-refinement trial, runs from the block's cached prefix (Note [Cached
  // prefix] in suffix_forward.h); off: full forwards, which give the same KLs bit for bit (on CUDA because
  // TorchScript's fusers are off there: Note [No fusion on CUDA] in pipeline/device.h). automatic: on a CPU only;
  // on an H200 the prefix saved no forward time and building a graph per block cost more than it saved
  // (BENCHMARKS.md, "Cached prefix on CUDA").
  enum class Prefix { automatic, off, on };
  Prefix cached_prefix = Prefix::automatic;
  bool prefix_on(bool cpu) const { return cached_prefix == Prefix::on || (cached_prefix == Prefix::automatic && cpu); }
  // On CUDA, full forwards (those not run from a cached prefix) are captured once as a CUDA graph and replayed
  // (Note [Replayed forwards] in kl_forward.h); the same KLs. automatic: wherever capture works; off: never.
  enum class Graphs { automatic, off };
  Graphs cuda_graphs = Graphs::automatic;
  // K-FAC tables: for each budget, only the options within this many candidate bit-widths of the choice the
  // allocator makes on predicted losses are designed and measured (Note [Option prefilter] in
  // table/option_prefilter.h); -1: every option of every block, as the table was before.
  int prefilter_window = 1;
};

}  // namespace bayesq

namespace bayesq {

// Joint refinement of a measured table's allocation (Note [Joint allocation] in joint_allocation.h).
struct JointParams {
  int rounds = 2;  // rounds after the additive allocation; 0: the additive allocation as it is
  int window = 1;  // candidate bit-widths either side of a block's current one that a round re-measures
  // Rounds run only when the additive allocation's measured KL exceeds `threshold` times the table's additive
  // prediction for it (Note [Refine where the sum misses] in joint_allocation.h); 0: always.
  double threshold = 2.0;
};

}  // namespace bayesq

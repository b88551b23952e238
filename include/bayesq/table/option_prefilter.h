// The option prefilter of measured tables: which entries of a K-FAC table to measure for one budget.
//
// Note [Option prefilter]: a measured table runs the model once per option of every block (14 per block by
// default: 756 forwards on ResNet-50) and designs every option's codebooks, although an allocation at one budget
// takes one option per block and the joint refinement looks one bit-width either side of it. The prefilter first
// predicts every option's loss cheaply: the block's min-max grid at each candidate bit-width, fed back along the
// K-FAC metric in one stacked pass (GPTQ's quantizer at that width), scored in that metric without its damping
// (the measured KL does not charge inputs that are never non-zero), except that a Lloyd table wide enough to hold
// every row's distinct weights is predicted to hold them (predicted_option_losses in gptq/kfac.h). The allocator
// runs on those predictions for the budget, and each block's options within `window` candidate bit-widths of its
// predicted choice, of every codebook kind, are designed and measured; the budget's allocation then chooses among
// those alone. Blocks whose predictions are not on the KL's scale (no K-FAC statistics) have every option measured.
//
// The bound is tested, not proven: if every block's choice on the full table lies within its window, the
// allocation is the full table's (the allocator's problem only lost options it did not choose; exactly so for an
// exact DP). BENCHMARKS.md ("Option prefilter") compares both on the benchmark models.
//
// Each budget's set depends on that budget alone, never on the other budgets of the run, so a file does not change
// with the budgets asked beside it; a later budget measures only entries no earlier one did.
#pragma once

#include <vector>

#include "bayesq/allocate/allocation.h"
#include "bayesq/table/loss_table.h"

namespace bayesq {

// Per table block and entry: whether the budget params.bits_per_weight needs the entry measured. Blocks with
// `prefilter` set get the entries within `window` candidate bit-widths (ranks among the block's distinct
// bit-widths) of the option the allocator picks on the predicted losses, of every kind; other blocks get every
// entry; blocks kept in floating point none. Throws what allocate() throws (an infeasible budget, a rule that
// leaves a block nothing).
std::vector<std::vector<bool>> prefilter_entries(const LossTable& table, const AllocationParams& params, int window);

// Entries selected but not yet measured, or empty when there are none.
std::vector<std::vector<bool>> unmeasured_entries(const LossTable& table, const std::vector<std::vector<bool>>& selected);

}  // namespace bayesq

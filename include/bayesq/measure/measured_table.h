// Measured loss tables: every entry of a LossTable scored by the model itself on calibration data.
//
// Note [Measured tables]: the expected loss is a local quadratic model of the calibration KL. It is accurate for
// small weight errors and off for large ones (at 1-2 bits it can miss by several times either way), which is where
// the allocator's decisions matter most. A measured table replaces each entry by N times the calibration KL of the
// model with that one block quantized as the final pass quantizes it (the same option function; for K-FAC the
// stacked pass may round differently from a one-option pass in the last float bit), every other block in floating
// point: still additive across blocks, but exact within each block.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <torch/script.h>

#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/data/data_file.h"
#include "bayesq/index/block_index.h"
#include "bayesq/measure/measure_params.h"
#include "bayesq/model/compute.h"
#include "bayesq/table/loss_table.h"

namespace bayesq {

// The quantized block at each (bits, kind) option of index block `block`, in the order asked. The function may
// also put each option's codes, on the measuring device, into `device_codes` (one [rows, cols] uint8 tensor per
// option, made on the stream current when it returns or ordered before it), or leave it empty (Note [Codes kept
// for the swap]).
using OptionBlocks = std::function<std::vector<QuantizedBlock>(
    std::size_t block, const std::vector<std::pair<int, CodebookKind>>&, std::vector<torch::Tensor>* device_codes)>;

// Note [Codes kept for the swap]: each measured option is de-quantized into the model on the device, from its
// codes (one byte per weight) and levels. The K-FAC options are fed back on the device, so their codes are there
// already; when the option function hands them over, the swap gathers from them instead of uploading the host's
// copy through a pinned staging buffer (BERT's first-budget swaps on an H100: 5.2 s of host time with the upload,
// 0.7 s without; BENCHMARKS.md). The gathered values are the same (dequantized_rows_by_gather, tests
// Gptq.CodesKeptOnTheDeviceAreTheHostCodes and Gptq.KfacOptionsWithDeviceCodesAreTheHostOptions). The codes'
// memory is released only once the block's KLs are read, when the forwards that read it have run.
struct MeasureStats {
  double seconds = 0.0;
  double quantize_seconds = 0.0;  // inside `options` and swapping weights in
  double swap_seconds = 0.0;      // of which swapping: decoding an option and putting it into the model
  double decode_seconds = 0.0;    // of which decoding (on a GPU: the codes' and levels' upload and the gather)
  double forward_seconds = 0.0;   // forward passes and KL (cached prefixes included)
  double prefix_seconds = 0.0;    // of which cutting and running the cached prefixes
};

// Fills every entry's expected_loss with N x the mean KL(float || one block quantized) over the first
// params.examples calibration examples (N: the file's examples), plugin_loss and lloyd_fallbacks from the option,
// and each block's `monotone`. The model is not modified (a copy runs on compute.device). Forward passes run in
// batches of max(compute.batch_size, 128) without gradients; `options` runs with autograd as it was, since it may
// compute statistics on first use, and is asked for a block's options before the KLs of the block before are read
// (Note [Feedback beside the forwards] in kl_forward.h). `measure_here`, when given, names the blocks this process
// measures (the others' entries are left for the processes that own them: quantize_model.cpp gathers them).
// `selected`, when given, names the entries to measure, per block and entry (Note [Option prefilter] in
// table/option_prefilter.h): the others are left as they are, and `options` is asked for the selected ones alone.
// Every measured entry gets `measured` set; `monotone` compares the measured entries of each kind. `order`, when
// given, is a permutation of the blocks: the order in which they are measured and `options` is asked for them
// (index order otherwise); no entry depends on it.
MeasureStats measure_loss_table(const torch::jit::Module& model, const BlockIndex& index, const DataFile& data,
                                const OptionBlocks& options, const MeasureParams& params, const Compute& compute,
                                const std::string& model_path, LossTable& table,
                                const std::vector<bool>* measure_here = nullptr,
                                const std::vector<std::vector<bool>>* selected = nullptr,
                                const std::vector<std::size_t>* order = nullptr);

// Mean KL(reference || model) per example over the first `examples` examples of `data` (all when 0 or more), in
// double precision as evaluate() computes it: how far a whole quantized model is from the float one, where a
// table entry measures one block at a time.
double mean_kl(const torch::jit::Module& reference, const torch::jit::Module& model, const DataFile& data,
               int64_t examples, const Compute& compute, const std::string& model_path);

// The pieces the measurements share (joint_allocation.cpp too):
// log softmax of the model's logits on the first n examples, in batches of max(compute.batch_size, 128), in double
// precision (as in evaluate(): small KLs are differences of nearly equal log-probabilities), one tensor per batch;
std::vector<torch::Tensor> log_probabilities(torch::jit::Module& module, const DataFile& data, int64_t n,
                                             const Compute& compute, const std::string& model_path);
// its batch size and its per-batch step (log softmax of the selected output);
int64_t measure_batch_size(const Compute& compute);
torch::Tensor log_probabilities_of(const torch::jit::IValue& output, const Compute& compute);
// the sum over scored rows of KL(p || q), from two such lists;
double kl_sum(const std::vector<torch::Tensor>& log_p, const std::vector<torch::Tensor>& log_q);
// an eval-mode copy of the model on `device`, whose tensors can be swapped without touching the original.
torch::jit::Module eval_copy(const torch::jit::Module& model, const torch::Device& device);

}  // namespace bayesq

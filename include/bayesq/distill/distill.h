// Optional distillation (METHOD.md §5): a few hundred Adam steps of KL(teacher || student) on the calibration
// inputs, where the student is the quantized model with its codes fixed and trainable code-table values (or
// uniform scales and offsets), biases and normalisation affine parameters (every parameter of one dimension).
// Bit-widths, codes and therefore the file size never change. The teacher is the float model (S = 1) or the mean
// softmax over S weight samples from the Laplace posterior. A held-out part of the calibration data is scored
// every `eval_every` steps with the tables rounded to fp16 exactly as the file stores them, and the best state
// (step 0 included) is kept, so distillation never makes that held-out loss worse. The report names the held-out
// examples (their indices in the calibration file), so the figure can be checked against the written model.
//
// Note [Scales in log space]: Adam moves every parameter by about its learning rate per step, whatever the
// gradient's size. Code-table levels, offsets, biases and norms are in weight units, where 1e-4 is a small step;
// a uniform grid's scale is not: at 8 bits a scale of 5e-4 moved by 1e-4 moves the top code's weight by 0.026
// (a K-FAC model's KL went from 0.0006 to 3.5 in one step). Scales are therefore trained as log(scale), so one
// step changes every weight of the grid by the same small fraction.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/script.h>

#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/data/data_file.h"
#include "bayesq/distill/distill_params.h"
#include "bayesq/index/block_index.h"
#include "bayesq/model/compute.h"
#include "bayesq/posterior/posterior.h"

namespace bayesq {

struct DistillResult {
  torch::jit::Module module;     // the input module with its distilled biases and norm parameters
  nlohmann::json report;         // loss curve, best step, timing
};

// Updates `blocks` (codebooks only) in place. `posteriors` (one per block, may be empty when teacher_samples is
// 1) give the weight-sampling variances 1 / pi.
DistillResult distill(const torch::jit::Module& module, const BlockIndex& index, std::vector<QuantizedBlock>& blocks,
                      const std::vector<bool>& present, const std::vector<BlockPosterior>& posteriors,
                      const DataFile& calibration, const DistillParams& params, const Compute& compute,
                     const std::string& model_path);

}  // namespace bayesq

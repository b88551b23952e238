// GPTQ over a whole model (METHOD.md §6 `gptq`): every block not kept in floating point at one bit-width with the
// reference min-max grid. Sequential (the default, as the reference implementation): each block's input moments
// are captured with the blocks before it already quantized; one-shot: all from the float model. A block whose
// inputs cannot be captured (fused operators, transposed convolutions) falls back to round-to-nearest.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/script.h>

#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/data/data_file.h"
#include "bayesq/gptq/gptq_params.h"
#include "bayesq/index/block_index.h"
#include "bayesq/model/compute.h"

namespace bayesq {

struct ModelGptqParams {
  int bits = 4;
  int64_t group_size = 0;
  bool sequential = true;
  GptqParams gptq;
};

struct ModelGptqResult {
  std::vector<QuantizedBlock> blocks;  // one per index block; unused where not quantized
  std::vector<bool> present;
  nlohmann::json details;              // per block: damping used, dead columns, or the fallback
};

// `rows`: each block's float weights as [rows, cols] (for the round-to-nearest fallback); `quantize`: which
// blocks to quantize. The model is not modified (a copy is).
ModelGptqResult quantize_model_gptq(const torch::jit::Module& model, const BlockIndex& index,
                                    const std::vector<std::vector<float>>& rows, const std::vector<bool>& quantize,
                                    const DataFile& data, const ModelGptqParams& params, const Compute& compute,
                                    const std::string& model_path);

}  // namespace bayesq

// Quantized model -> TorchScript file that stock PyTorch loads and runs (METHOD.md §7).
//
//  - packed (default): the module is frozen without numerics-changing passes (no conv-bn folding), so
//    parameters become graph constants; each quantized weight's constant is replaced by a small subgraph that
//    rebuilds it from constants holding the bit-packed codes (bit_packing.h) and the fp16 code tables or
//    scale/offset pairs. The file holds exactly the bytes the allocator charged, plus archive overhead.
//  - fake: the module keeps its layout and its weights are replaced by the de-quantized float values.
// Both write to a temporary file in the target folder and rename it when complete.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/script.h>

#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/index/block_index.h"

namespace bayesq {

enum class OutputFormat { packed, fake };

// A string attribute of every written model: JSON with the format and each block's bits, codebook kind and
// granularity, so `bayesq inspect` can describe a quantized model.
constexpr const char* kMetadataAttribute = "bayesq_metadata";
OutputFormat output_format_from_name(const std::string& name);  // throws UserError(usage)
const char* output_format_name(OutputFormat format);

struct BlockBytes {
  std::string name;
  int64_t code_bytes = 0;
  int64_t metadata_bytes = 0;
};

struct WriteStats {
  std::string format;
  int64_t file_bytes = 0;
  int64_t tensor_bytes = 0;     // sum of the archive's tensor records
  int64_t quantized_bytes = 0;  // sum of the blocks' code and metadata bytes
  int64_t float_bytes = 0;      // every other tensor the archive holds (biases, norms, kept blocks)
  int64_t overhead_bytes = 0;   // code, pickles and zip structure: file_bytes - tensor_bytes
  std::vector<BlockBytes> blocks;
  double seconds = 0.0;
};

// `quantized[i]` belongs to index.blocks[i]; nullptr keeps that block in floating point.
WriteStats write_quantized_model(const torch::jit::Module& module, const BlockIndex& index,
                                 const std::vector<const QuantizedBlock*>& quantized, OutputFormat format,
                                 const std::string& path);

// A clone of `module` whose quantized blocks hold their de-quantized values (what the fake format saves).
torch::jit::Module dequantized_module(const torch::jit::Module& module, const BlockIndex& index,
                                      const std::vector<const QuantizedBlock*>& quantized);

// The de-quantized weight of one block, in the block's stored shape, device and dtype of `like`.
torch::Tensor dequantized_tensor(const QuantizedBlock& q, const BlockInfo& info, const torch::Tensor& like);

// Sum of the byte sizes of the tensor records (data/ and constants/) of a TorchScript archive.
int64_t archive_tensor_bytes(const std::string& path);

void to_json(nlohmann::json& j, const WriteStats& s);

}  // namespace bayesq

// Adapters between a block's tensor and the row-major [rows, cols] float arrays the numerical core uses.
// Rows are output channels: for row_axis 0 this is the tensor's own layout; for row_axis = last (a matmul
// weight stored [in, out]) the 2-D tensor is transposed.
#pragma once

#include <vector>

#include <torch/script.h>

#include "bayesq/codebook/block_quantizer.h"
#include "bayesq/index/block_index.h"

namespace bayesq {

// Float32, CPU, contiguous [rows, cols].
torch::Tensor block_rows(const torch::Tensor& weight, const BlockInfo& info);
std::vector<float> block_rows_vector(const torch::Tensor& weight, const BlockInfo& info);

// Inverse of block_rows: back to the block's stored shape (on `like`'s device and dtype).
torch::Tensor rows_to_block(const torch::Tensor& rows, const BlockInfo& info, const torch::Tensor& like);

// QuantizedBlock::dequantize()'s values as a rows x cols float tensor on `device`, bit for bit: decoded on the host
// for a CPU device, by dequantized_rows_by_gather otherwise.
torch::Tensor dequantized_rows(const QuantizedBlock& q, const torch::Device& device);
// The same values gathered on `device` from the codes and one table of every codebook's levels. `codes`, when
// defined, are q's codes already on `device` ([rows, cols] uint8; q.codes is then not read).
torch::Tensor dequantized_rows_by_gather(const QuantizedBlock& q, const torch::Device& device,
                                         const torch::Tensor& codes = {});

const char* dtype_name(c10::ScalarType type);

}  // namespace bayesq

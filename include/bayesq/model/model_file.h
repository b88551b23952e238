// Loading TorchScript models (scripted or traced) with errors a user can act on. A TorchScript archive is code:
// load only trusted models.
#pragma once

#include <string>

#include <torch/script.h>

namespace bayesq {

struct LoadedModel {
  torch::jit::Module module;
  std::string path;
  std::string hash;       // content hash of the file (see file_hash)
  int64_t file_bytes = 0;
};

// Throws UserError(input) naming the file when it is missing, not a TorchScript archive, truncated, or unreadable.
LoadedModel load_model(const std::string& path);

// 64-bit FNV-1a of the file's bytes, as 16 hex digits. Throws UserError(input) when the file cannot be read.
std::string file_hash(const std::string& path);

// Throws UserError(input) naming `what` and the file unless every element of `t` lies inside its storage: a crafted
// file can describe a view (sizes, strides, offset) that reaches past the bytes it holds, and reading it would run
// off the end. Python's torch.load refuses such files; libtorch's loaders do not check.
void check_tensor_extent(const torch::Tensor& t, const std::string& what, const std::string& path);

// Every parameter of the module must be finite, and no buffer NaN (a buffer may hold -inf: a causal mask);
// throws UserError(input) naming the first offending tensor and the file otherwise.
void check_finite_weights(const torch::jit::Module& module, const std::string& path);

}  // namespace bayesq

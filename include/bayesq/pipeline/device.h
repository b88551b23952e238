// --device: cpu, cuda, cuda:N, or auto (CUDA when present).
#pragma once

#include <string>

#include <torch/script.h>

namespace bayesq {

// Throws UserError(usage) for an unknown name or CUDA asked for where none is available. Selecting CUDA also
// asks cuDNN for deterministic algorithms (same seed, same device: bit-identical results).
torch::Device parse_device(const std::string& name);
std::string device_description(const torch::Device& device);

}  // namespace bayesq

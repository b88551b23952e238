// Peak memory figures for reports: host resident set (VmHWM) and, in CUDA builds, the caching allocator's peak.
#pragma once

#include <cstdint>

#include <torch/script.h>

namespace bayesq {

int64_t peak_host_bytes();
// 0 on CPU devices or CPU-only builds.
int64_t peak_device_bytes(const torch::Device& device);
void reset_peak_device_bytes(const torch::Device& device);

}  // namespace bayesq

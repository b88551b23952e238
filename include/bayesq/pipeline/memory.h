// Peak memory figures for reports: host resident set (VmHWM) and, in CUDA builds, the caching allocator's peak.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <torch/script.h>

namespace bayesq {

int64_t peak_host_bytes();
// The device's peak since the last reset_peak_device_bytes: 0 on CPU devices or CPU-only builds.
int64_t peak_device_bytes(const torch::Device& device);
// Starts a new interval for peak_device_bytes and forgets the stage peaks.
void reset_peak_device_bytes(const torch::Device& device);
// Peak device memory per stage: the peak since the previous mark (or reset) is charged to `stage` (the larger
// one where a stage is marked again) and a new interval starts; peak_device_bytes stays the peak of all
// intervals. The allocator's counters are the process's, so these figures are too.
void mark_stage_peak(const torch::Device& device, const std::string& stage);
std::map<std::string, int64_t> stage_peaks();

}  // namespace bayesq

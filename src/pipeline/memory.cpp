#include "bayesq/pipeline/memory.h"

#include <algorithm>
#include <fstream>
#include <sstream>


#ifdef BAYESQ_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace bayesq {

int64_t peak_host_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      std::istringstream fields(line.substr(6));
      int64_t kib = 0;
      fields >> kib;
      return kib * 1024;
    }
  }
  return 0;
}

namespace {

// Stage peaks and the peak of the intervals already closed by a mark (one process, one device at a time).
std::map<std::string, int64_t> stage_peak_bytes;
int64_t closed_intervals_peak = 0;

int64_t interval_peak(const torch::Device& device) {
#ifdef BAYESQ_WITH_CUDA
  if (device.is_cuda()) {
    at::zeros({1}, at::TensorOptions().device(device));  // the allocator initialises lazily
    // allocated_bytes[0] is the aggregate over pool types in every libtorch version.
    return c10::cuda::CUDACachingAllocator::getDeviceStats(device.index()).allocated_bytes[0].peak;
  }
#else
  (void)device;
#endif
  return 0;
}

void reset_interval(const torch::Device& device) {
#ifdef BAYESQ_WITH_CUDA
  if (device.is_cuda()) {
    at::zeros({1}, at::TensorOptions().device(device));
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
  }
#else
  (void)device;
#endif
}

}  // namespace

int64_t peak_device_bytes(const torch::Device& device) {
  return std::max(closed_intervals_peak, interval_peak(device));
}

void reset_peak_device_bytes(const torch::Device& device) {
  stage_peak_bytes.clear();
  closed_intervals_peak = 0;
  reset_interval(device);
}

void mark_stage_peak(const torch::Device& device, const std::string& stage) {
  if (!device.is_cuda()) return;
  const int64_t peak = interval_peak(device);
  int64_t& kept = stage_peak_bytes[stage];
  kept = std::max(kept, peak);
  closed_intervals_peak = std::max(closed_intervals_peak, peak);
  reset_interval(device);
}

std::map<std::string, int64_t> stage_peaks() { return stage_peak_bytes; }

}  // namespace bayesq

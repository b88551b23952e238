#include "bayesq/pipeline/memory.h"

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

int64_t peak_device_bytes(const torch::Device& device) {
#ifdef BAYESQ_WITH_CUDA
  if (device.is_cuda()) {
    at::zeros({1}, at::TensorOptions().device(device));
    // allocated_bytes[0] is the aggregate over pool types in every libtorch version.
    return c10::cuda::CUDACachingAllocator::getDeviceStats(device.index()).allocated_bytes[0].peak;
  }
#else
  (void)device;
#endif
  return 0;
}

void reset_peak_device_bytes(const torch::Device& device) {
#ifdef BAYESQ_WITH_CUDA
  if (device.is_cuda()) {
    at::zeros({1}, at::TensorOptions().device(device));  // the allocator initialises lazily
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
  }
#else
  (void)device;
#endif
}

}  // namespace bayesq

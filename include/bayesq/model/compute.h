// Where a stage computes and how it walks the calibration data: the run context (pipeline/config.h) with its device
// parsed once into a torch::Device. Stages take this value; none parses a device name.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include <torch/script.h>

namespace bayesq {

struct Compute {
  torch::Device device{torch::kCPU};
  uint64_t seed = 0;
  int64_t batch_size = 32;
  int64_t max_examples = 0;  // 0: every example of the file
  std::string output;        // --output-index: which model output is the logits

  // Examples used of a file holding `available`.
  int64_t examples(int64_t available) const {
    return max_examples > 0 ? std::min(max_examples, available) : available;
  }
};

// As reports and artifacts name a device: "cpu", "cuda:0".
inline std::string device_description(const torch::Device& device) { return device.is_cpu() ? "cpu" : device.str(); }

}  // namespace bayesq

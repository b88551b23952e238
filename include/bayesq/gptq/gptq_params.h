// Settings of GPTQ's column loop (gptq.h), free of libtorch so that configuration values can hold them.
#pragma once

#include <cstdint>

namespace bayesq {

struct GptqParams {
  double percdamp = 0.01;
  bool act_order = false;
  int64_t block_size = 128;
  int max_damp_steps = 8;
};

}  // namespace bayesq

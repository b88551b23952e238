// Settings of GPTQ's column loop (gptq.h), free of libtorch so that configuration values can hold them.
#pragma once

#include <cstdint>

namespace bayesq {

struct GptqParams {
  double percdamp = 0.01;
  bool act_order = false;
  int64_t block_size = 128;
  int max_damp_steps = 8;
  // Several options of one block fed back in one pass (quantize_with_feedback_options) stack copies of its rows;
  // rows beyond this many bytes of stacked float32 go through in further passes (Note [Stacked rows in chunks]).
  int64_t stack_bytes = int64_t(256) << 20;
};

}  // namespace bayesq

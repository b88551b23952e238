// Settings of the distillation stage (distill.h), free of libtorch so that configuration values can hold them.
#pragma once

#include <cstdint>

namespace bayesq {

struct DistillParams {
  int64_t steps = 500;           // 0: no distillation
  double lr = 1e-4;              // Adam learning rate: weight units for tables, offsets, biases and norms;
                                 // relative units for uniform scales (Note [Scales in log space], distill.h)
  int64_t teacher_samples = 1;
  double holdout = 0.1;          // fraction of the calibration examples held out for keep-best
  int64_t eval_every = 25;
};

}  // namespace bayesq

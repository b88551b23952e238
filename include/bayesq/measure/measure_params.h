// Settings of measured loss tables (measured_table.h), free of libtorch so that configuration values can hold them.
#pragma once

#include <cstdint>

namespace bayesq {

struct MeasureParams {
  int64_t examples = 128;  // calibration examples each entry's KL is measured on (0 or more than the file: all)
};

}  // namespace bayesq

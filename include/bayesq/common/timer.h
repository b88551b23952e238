// Wall-clock seconds for stage timings in reports.
#pragma once

#include <chrono>

namespace bayesq {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace bayesq

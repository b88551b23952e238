// Progress of long stages: a self-overwriting line on a terminal, nothing in logs or pipes.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace bayesq {

class Progress {
 public:
  Progress(std::string label, int64_t total);
  ~Progress();
  void advance(int64_t by = 1);
  void finish();

  // Off by default; the CLI enables it when stderr is a terminal and logging is not quiet.
  static void set_enabled(bool enabled);

 private:
  std::string label_;
  int64_t total_ = 0, done_ = 0;
  bool active_ = false, finished_ = false;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace bayesq

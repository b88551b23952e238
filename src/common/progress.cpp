#include "bayesq/common/progress.h"

#include <atomic>
#include <cstdio>

namespace bayesq {

namespace {
std::atomic<bool> g_enabled{false};
}

void Progress::set_enabled(bool enabled) { g_enabled.store(enabled); }

Progress::Progress(std::string label, int64_t total)
    : label_(std::move(label)), total_(total), active_(g_enabled.load()), last_(std::chrono::steady_clock::now()) {}

Progress::~Progress() { finish(); }

void Progress::advance(int64_t by) {
  done_ += by;
  if (!active_) return;
  const auto now = std::chrono::steady_clock::now();
  if (done_ < total_ && now - last_ < std::chrono::milliseconds(200)) return;
  last_ = now;
  std::fprintf(stderr, "\r%s: %lld/%lld", label_.c_str(), static_cast<long long>(done_),
               static_cast<long long>(total_));
  std::fflush(stderr);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (active_ && done_ > 0) {
    std::fprintf(stderr, "\r%*s\r", static_cast<int>(label_.size() + 32), "");
    std::fflush(stderr);
  }
}

}  // namespace bayesq

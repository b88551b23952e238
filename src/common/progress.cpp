#include "bayesq/common/progress.h"

#include <cmath>
#include <cstdio>

#include "bayesq/common/log.h"

namespace bayesq {

namespace {
std::atomic<bool> g_enabled{false};
std::atomic<int> g_running{0};  // Progress objects alive and not finished

std::string duration(double seconds) {
  char buffer[32];
  if (seconds < 60) std::snprintf(buffer, sizeof buffer, "%.1f s", seconds);
  else std::snprintf(buffer, sizeof buffer, "%d min %02d s", int(seconds) / 60, int(seconds) % 60);
  return buffer;
}
}  // namespace

void Progress::set_enabled(bool enabled) { g_enabled.store(enabled); }

Progress::Progress(std::string label, int64_t total, std::string unit, bool summary)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), summary_(summary),
      outermost_(g_running.fetch_add(1) == 0), active_(outermost_ && g_enabled.load()),
      start_(std::chrono::steady_clock::now()), last_(start_) {}

Progress::~Progress() { finish(); }

void Progress::advance(int64_t by) {
  const int64_t done = done_.fetch_add(by) + by;
  if (!active_) return;
  std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);  // a thread drawing already speaks for this one
  if (!lock.owns_lock() || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (done < total_ && now - last_ < std::chrono::milliseconds(200)) return;
  last_ = now;
  draw(false);
}

// label [##########..........] 12/53 blocks  4.1/s  1.2 s left
void Progress::draw(bool final) {
  const int64_t done = done_.load();
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? double(done) / elapsed : 0.0;
  constexpr int kWidth = 24;
  const int filled = total_ > 0 ? static_cast<int>(std::lround(kWidth * std::min(1.0, double(done) / double(total_)))) : 0;
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.resize(kWidth, '.');
  std::string left = "";
  if (!final && rate > 0 && done < total_) left = "  " + duration(double(total_ - done) / rate) + " left";
  char counts[96];
  std::snprintf(counts, sizeof counts, "%lld/%lld%s%s  %.1f/s", static_cast<long long>(done),
                static_cast<long long>(total_), unit_.empty() ? "" : " ", unit_.c_str(), rate);
  std::fprintf(stderr, "\r%s [%s] %s%s\033[K", label_.c_str(), bar.c_str(), counts, left.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void Progress::finish() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (finished_) return;
  finished_ = true;
  g_running.fetch_sub(1);
  if (drawn_) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done = done_.load();
  if (summary_ && outermost_ && elapsed >= kMinReportedSeconds && done > 0)
    log::info(label_, ": ", done, unit_.empty() ? "" : " ", unit_, " in ", duration(elapsed));
}

}  // namespace bayesq

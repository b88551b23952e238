// Progress of long stages. On a terminal: a self-overwriting bar with the count, the rate and the time left,
// replaced at the end by one line with the stage's time. Without a terminal (CI logs, batch jobs): only that last
// line, no carriage returns. The end line is an info log line ("info: label: N items in T s"), so --quiet silences
// it like the bar; stages shorter than kMinReportedSeconds leave none. A Progress started while another is running
// (a stage inside a stage, e.g. the layer capture of each block of sequential GPTQ) stays silent: the outer one
// speaks for both.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace bayesq {

class Progress {
 public:
  // `unit` names what is counted ("examples", "blocks", "steps"); `summary` false for a stage that logs its own
  // end line.
  Progress(std::string label, int64_t total, std::string unit = "", bool summary = true);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  void advance(int64_t by = 1);  // thread-safe
  void finish();

  // Whether the bar is drawn: the CLI turns it on when stderr is a terminal and logging is not quiet. The end
  // line follows the log level alone.
  static void set_enabled(bool enabled);
  static constexpr double kMinReportedSeconds = 1.0;

 private:
  void draw(bool final);
  std::string label_, unit_;
  int64_t total_ = 0;
  std::atomic<int64_t> done_{0};
  bool summary_ = true, outermost_ = false, active_ = false, finished_ = false, drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_;
  std::mutex mutex_;
};

// Advances a Progress by one when it goes out of scope: one step per loop iteration, whatever path the body takes.
class ProgressStep {
 public:
  explicit ProgressStep(Progress& progress) : progress_(progress) {}
  ~ProgressStep() { progress_.advance(); }
  ProgressStep(const ProgressStep&) = delete;
  ProgressStep& operator=(const ProgressStep&) = delete;

 private:
  Progress& progress_;
};

}  // namespace bayesq

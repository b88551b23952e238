#include "bayesq/common/parallel.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace bayesq {
namespace {
std::atomic<int> g_threads{0};
// A parallel_for inside a worker runs serially: work is split once, at the outermost level.
thread_local bool t_inside_worker = false;
thread_local int t_worker_limit = 0;  // ScopedWorkerLimit's cap, 0: none

struct WorkerScope {
  bool previous;
  WorkerScope() : previous(t_inside_worker) { t_inside_worker = true; }
  ~WorkerScope() { t_inside_worker = previous; }
};
}  // namespace

int num_threads() {
  const int configured = g_threads.load();
  if (configured > 0) return configured;
  // OMP_NUM_THREADS, the usual cap, when it is a positive number (several runs sharing a machine set it).
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n > 0 && n <= 4096) return static_cast<int>(n);
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

void set_num_threads(int threads) { g_threads.store(std::max(0, threads)); }

ScopedWorkerLimit::ScopedWorkerLimit(int workers) : previous_(t_worker_limit) { t_worker_limit = std::max(1, workers); }
ScopedWorkerLimit::~ScopedWorkerLimit() { t_worker_limit = previous_; }

void parallel_for(std::size_t n, const std::function<void(std::size_t)>& fn) {
  if (n == 0) return;
  int allowed = num_threads();
  if (t_worker_limit > 0) allowed = std::min(allowed, t_worker_limit);
  const std::size_t workers = t_inside_worker ? 1 : std::min<std::size_t>(static_cast<std::size_t>(allowed), n);
  if (workers <= 1) {
    for (std::size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr first_error;
  std::mutex error_mutex;
  auto work = [&]() {
    WorkerScope scope;
    for (;;) {
      if (failed.load(std::memory_order_relaxed)) return;
      const std::size_t i = next.fetch_add(1);
      if (i >= n) return;
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
        failed.store(true);
        return;
      }
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (std::size_t t = 0; t + 1 < workers; ++t) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace bayesq

// Minimal deterministic parallelism for the numerical core: work items are independent and each writes its own
// output slot, so results do not depend on the number of threads.
#pragma once

#include <cstddef>
#include <functional>

namespace bayesq {

// Number of worker threads used by parallel_for and libtorch: set_num_threads's value, else OMP_NUM_THREADS when it
// is a positive number, else the hardware concurrency (at least 1).
int num_threads();
void set_num_threads(int threads);

// While it lives, parallel_for calls made on this thread use at most `workers` threads (the calling one included),
// e.g. for work that runs beside a thread that needs a core of its own.
class ScopedWorkerLimit {
 public:
  explicit ScopedWorkerLimit(int workers);
  ~ScopedWorkerLimit();
  ScopedWorkerLimit(const ScopedWorkerLimit&) = delete;
  ScopedWorkerLimit& operator=(const ScopedWorkerLimit&) = delete;

 private:
  int previous_;
};

// Calls fn(i) for i in [0, n) on up to num_threads() threads with dynamic scheduling. The first exception thrown
// by fn is rethrown on the calling thread after all workers stop.
void parallel_for(std::size_t n, const std::function<void(std::size_t)>& fn);

}  // namespace bayesq

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "bayesq/common/parallel.h"

using namespace bayesq;

TEST(Parallel, VisitsEveryIndexOnceAndRethrows) {
  set_num_threads(4);
  std::vector<std::atomic<int>> seen(1000);
  parallel_for(seen.size(), [&](std::size_t i) {
    seen[i]++;
    parallel_for(3, [](std::size_t) {});  // nested: runs serially inside a worker
  });
  for (auto& s : seen) EXPECT_EQ(s.load(), 1);
  EXPECT_THROW(parallel_for(100, [](std::size_t i) { if (i == 57) throw std::runtime_error("x"); }),
               std::runtime_error);
  set_num_threads(0);
}

// ScopedWorkerLimit caps the threads of parallel_for calls on its own thread while it lives, and only there.
TEST(Parallel, WorkerLimitCapsThreadsOnItsThread) {
  set_num_threads(4);
  auto threads_used = [] {
    std::mutex m;
    std::set<std::thread::id> ids;
    parallel_for(400, [&](std::size_t) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // long enough for every worker to take some
      std::lock_guard<std::mutex> lock(m);
      ids.insert(std::this_thread::get_id());
    });
    return ids.size();
  };
  EXPECT_GT(threads_used(), 2u);
  {
    const ScopedWorkerLimit limit(2);
    EXPECT_LE(threads_used(), 2u);
    std::size_t elsewhere = 0;
    std::thread([&] { elsewhere = threads_used(); }).join();
    EXPECT_GT(elsewhere, 2u);  // another thread is not capped
    {
      const ScopedWorkerLimit serial(1);
      EXPECT_EQ(threads_used(), 1u);
    }
    EXPECT_LE(threads_used(), 2u);
  }
  EXPECT_GT(threads_used(), 2u);
  set_num_threads(0);
}

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
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

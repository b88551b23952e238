// K-FAC codebook designs made ahead of the thread that drives the device (measured tables on a GPU).
//
// Note [Designs ahead of the device]: a measured K-FAC table needs, per block, the codebooks of every option
// (host threads) and then the feedback and forwards (the device). The designs run on a thread of their own, in
// block order, as far ahead as a bound on the weights they hold allows, so that the host designs while the device
// works and neither waits for the other except where one side's total is the larger. (Designing one block ahead
// only left the design thread idle whenever a block's device work outlasted the next block's design, and the
// device idle whenever a design outlasted it: BERT's device thread waited 21 s of a 64 s table.) The designs are
// the functions of the same inputs as before, so the table is the same bit for bit.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "bayesq/gptq/kfac.h"

namespace bayesq {

class DesignQueue {
 public:
  // design(block) for each of `blocks` in turn, on one thread, which keeps designing while the designs waiting to
  // be taken hold fewer than `ahead_weights` weights (at least one design is always made ahead). `weights(block)`:
  // the block's weight count. `design` must only read data that nothing writes until the queue is destroyed.
  DesignQueue(std::vector<std::size_t> blocks, std::function<KfacDesigns(std::size_t)> design,
              std::function<int64_t(std::size_t)> weights, int64_t ahead_weights);
  ~DesignQueue();  // stops after the design in progress
  DesignQueue(const DesignQueue&) = delete;
  DesignQueue& operator=(const DesignQueue&) = delete;

  // The designs of `block`, the next of `blocks` in order; waits for them (waited_seconds, when given, receives
  // how long). Rethrows what the design threw.
  KfacDesigns take(std::size_t block, double* waited_seconds = nullptr);

 private:
  struct Item {
    std::size_t block = 0;
    KfacDesigns designs;
    std::exception_ptr error;
  };
  void run();

  const std::vector<std::size_t> blocks_;
  const std::function<KfacDesigns(std::size_t)> design_;
  const std::function<int64_t(std::size_t)> weights_;
  const int64_t ahead_weights_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Item> ready_;
  int64_t ready_weights_ = 0;
  std::size_t taken_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace bayesq

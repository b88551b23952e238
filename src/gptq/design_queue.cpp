#include "bayesq/gptq/design_queue.h"

#include "bayesq/common/errors.h"
#include "bayesq/common/timer.h"

namespace bayesq {

DesignQueue::DesignQueue(std::vector<std::size_t> blocks, std::function<KfacDesigns(std::size_t)> design,
                         std::function<int64_t(std::size_t)> weights, int64_t ahead_weights)
    : blocks_(std::move(blocks)),
      design_(std::move(design)),
      weights_(std::move(weights)),
      ahead_weights_(ahead_weights),
      thread_([this] { run(); }) {}

DesignQueue::~DesignQueue() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

void DesignQueue::run() {
  for (std::size_t next = 0; next < blocks_.size(); ++next) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] { return stop_ || ready_.empty() || ready_weights_ < ahead_weights_; });
      if (stop_) return;
    }
    Item item;
    item.block = blocks_[next];
    try {
      item.designs = design_(item.block);
    } catch (...) {
      item.error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ready_weights_ += weights_(item.block);
      const bool failed = item.error != nullptr;
      ready_.push_back(std::move(item));
      if (failed) stop_ = true;  // the consumer gets the error in order; nothing after it is designed
    }
    changed_.notify_all();
  }
}

KfacDesigns DesignQueue::take(std::size_t block, double* waited_seconds) {
  const auto start = Clock::now();
  std::unique_lock<std::mutex> lock(mutex_);
  BQ_ASSERT(taken_ < blocks_.size() && blocks_[taken_] == block, "designs of block ", block,
            " asked for out of order");
  changed_.wait(lock, [&] { return !ready_.empty(); });
  Item item = std::move(ready_.front());
  ready_.pop_front();
  ready_weights_ -= weights_(item.block);
  ++taken_;
  lock.unlock();
  changed_.notify_all();
  if (waited_seconds) *waited_seconds = seconds_since(start);
  BQ_ASSERT(item.block == block, "the design queue gave block ", item.block, " for ", block);
  if (item.error) std::rethrow_exception(item.error);
  return std::move(item.designs);
}

}  // namespace bayesq

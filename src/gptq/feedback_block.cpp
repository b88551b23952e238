#include "bayesq/gptq/feedback_block.h"

#include <algorithm>

#include "bayesq/common/parallel.h"
#include "bayesq/gptq/feedback_block_row.h"

namespace bayesq {

void feedback_block_host(const FeedbackBlockView& view) {
  const int64_t total = view.problems * view.rows;
  if (total == 0 || view.count == 0) return;
  // Contiguous runs of rows per task, a few tasks per thread; each row writes only its own elements.
  const int64_t tasks = std::min<int64_t>(total, 4 * static_cast<int64_t>(num_threads()));
  const int64_t per_task = (total + tasks - 1) / tasks;
  parallel_for(static_cast<std::size_t>(tasks), [&](std::size_t t) {
    const int64_t begin = static_cast<int64_t>(t) * per_task, end = std::min(total, begin + per_task);
    for (int64_t k = begin; k < end; ++k) feedback_detail::feed_back_row(view, k / view.rows, k % view.rows);
  });
}

}  // namespace bayesq

#include "bayesq/gptq/feedback_block.h"

#include <algorithm>

#include "bayesq/common/parallel.h"

namespace bayesq {

namespace {

// One row of one problem: the loop of feedback_block.h. Float arithmetic throughout; bayesq_core is built
// without FMA contraction, so w - e * h rounds the product and then the difference, as the tensor version does.
void feed_back_row(const FeedbackBlockView& v, int64_t p, int64_t r) {
  const int64_t base = p * v.stride_problem + r * v.stride_row, sc = v.stride_col;
  float* w = v.w + base;
  const float* hinv = v.hinv + p * v.hinv_problem;
  for (int64_t i = 0; i < v.count; ++i) {
    const int64_t slot = v.column_slot ? v.column_slot[i] : 0;
    const float* levels = v.levels + ((slot * v.problems + p) * v.rows + r) * v.width;
    const float x = w[i * sc];
    // code = number of boundaries below x (searchsorted, left side), by bisection on the monotone boundaries.
    int64_t lo = 0, hi = v.width - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      const float boundary = 0.5f * (levels[mid + 1] + levels[mid]);
      if (boundary < x) lo = mid + 1;
      else hi = mid;
    }
    const float q = levels[lo];
    const float e = (x - q) / hinv[i * v.hinv_ld + i];
    v.quantized[base + i * sc] = q;
    v.error[base + i * sc] = e;
    v.codes[base + i * sc] = static_cast<uint8_t>(lo);
    const float* h = hinv + i * v.hinv_ld;
    for (int64_t j = i + 1; j < v.count; ++j) {
      const float step = e * h[j];
      w[j * sc] = w[j * sc] - step;
    }
  }
}

}  // namespace

void feedback_block_host(const FeedbackBlockView& view) {
  const int64_t total = view.problems * view.rows;
  if (total == 0 || view.count == 0) return;
  // Contiguous runs of rows per task, a few tasks per thread; each row writes only its own elements.
  const int64_t tasks = std::min<int64_t>(total, 4 * static_cast<int64_t>(num_threads()));
  const int64_t per_task = (total + tasks - 1) / tasks;
  parallel_for(static_cast<std::size_t>(tasks), [&](std::size_t t) {
    const int64_t begin = static_cast<int64_t>(t) * per_task, end = std::min(total, begin + per_task);
    for (int64_t k = begin; k < end; ++k) feed_back_row(view, k / view.rows, k % view.rows);
  });
}

}  // namespace bayesq

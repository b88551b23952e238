// feedback_block_cuda (feedback_block.h): one thread per row, each running the row's loop over the lazy block
// (feedback_block_row.h, shared with the host loop). The caller lays rows out contiguously (stride_row = 1), so a
// warp's threads touch adjacent elements of each column; the block's Hinv row is the same address for every
// thread of a warp (a broadcast from cache).
#include "bayesq/gptq/feedback_block.h"

#include <cuda_runtime.h>

#include "bayesq/common/errors.h"
#include "bayesq/gptq/feedback_block_row.h"

namespace bayesq {

namespace {

__global__ void feedback_block_kernel(FeedbackBlockView v) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= v.problems * v.rows) return;
  feedback_detail::feed_back_row(v, k / v.rows, k % v.rows);
}

}  // namespace

void feedback_block_cuda(const FeedbackBlockView& view, void* stream) {
  const int64_t total = view.problems * view.rows;
  if (total == 0 || view.count == 0) return;
  constexpr int threads = 128;
  const int64_t blocks = (total + threads - 1) / threads;
  feedback_block_kernel<<<static_cast<unsigned>(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(view);
  const cudaError_t status = cudaGetLastError();
  BQ_ASSERT(status == cudaSuccess, "feedback kernel launch: ", cudaGetErrorString(status));
}

}  // namespace bayesq

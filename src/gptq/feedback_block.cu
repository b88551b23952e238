// feedback_block_cuda (feedback_block.h): one thread per row, each running the row's loop over the lazy block.
// The caller lays rows out contiguously (stride_row = 1), so a warp's threads touch adjacent elements of each
// column; the block's Hinv row is the same address for every thread of a warp (a broadcast from cache).
#include "bayesq/gptq/feedback_block.h"

#include <cuda_runtime.h>

#include "bayesq/common/errors.h"

namespace bayesq {

namespace {

__global__ void feedback_block_kernel(FeedbackBlockView v) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= v.problems * v.rows) return;
  const int64_t p = k / v.rows, r = k % v.rows;
  const int64_t base = p * v.stride_problem + r * v.stride_row, sc = v.stride_col;
  float* w = v.w + base;
  const float* hinv = v.hinv + p * v.hinv_problem;
  for (int64_t i = 0; i < v.count; ++i) {
    const int64_t slot = v.column_slot ? v.column_slot[i] : 0;
    const float* levels = v.levels + ((slot * v.problems + p) * v.rows + r) * v.width;
    const float x = w[i * sc];
    int64_t lo = 0, hi = v.width - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      const float boundary = __fmul_rn(0.5f, __fadd_rn(levels[mid + 1], levels[mid]));
      if (boundary < x) lo = mid + 1;
      else hi = mid;
    }
    const float q = levels[lo];
    const float e = __fdiv_rn(__fsub_rn(x, q), hinv[i * v.hinv_ld + i]);
    v.quantized[base + i * sc] = q;
    v.error[base + i * sc] = e;
    v.codes[base + i * sc] = static_cast<uint8_t>(lo);
    const float* h = hinv + i * v.hinv_ld;
    // Product and difference rounded separately (no FMA): the host loop's arithmetic.
    for (int64_t j = i + 1; j < v.count; ++j) w[j * sc] = __fsub_rn(w[j * sc], __fmul_rn(e, h[j]));
  }
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

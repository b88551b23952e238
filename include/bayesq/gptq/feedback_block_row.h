// The per-row loop of feedback_block.h, one definition for the host loop (feedback_block.cpp) and the CUDA kernel
// (feedback_block.cu), so that the two cannot drift apart. Each product, sum, difference and quotient is rounded
// on its own: on the device by the _rn intrinsics, on the host by bayesq_core's -ffp-contract=off.
#pragma once

#include <cstdint>

#include "bayesq/gptq/feedback_block.h"

#if defined(__CUDACC__)
#define BQ_HOST_DEVICE __host__ __device__
#else
#define BQ_HOST_DEVICE
#endif

namespace bayesq {
namespace feedback_detail {

BQ_HOST_DEVICE inline float add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
BQ_HOST_DEVICE inline float sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
BQ_HOST_DEVICE inline float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
BQ_HOST_DEVICE inline float div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// Row r of problem p through the block's columns (feedback_block.h).
BQ_HOST_DEVICE inline void feed_back_row(const FeedbackBlockView& v, int64_t p, int64_t r) {
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
      if (mul(0.5f, add(levels[mid + 1], levels[mid])) < x) lo = mid + 1;
      else hi = mid;
    }
    const float q = levels[lo];
    const float e = div(sub(x, q), hinv[i * v.hinv_ld + i]);
    v.quantized[base + i * sc] = q;
    v.error[base + i * sc] = e;
    v.codes[base + i * sc] = static_cast<uint8_t>(lo);
    const float* h = hinv + i * v.hinv_ld;
    for (int64_t j = i + 1; j < v.count; ++j) w[j * sc] = sub(w[j * sc], mul(e, h[j]));
  }
}

}  // namespace feedback_detail
}  // namespace bayesq

// The sequential part of GPTQ-style error feedback (gptq.h), one lazy block of columns, as one pass per row.
//
// Within a lazy block of C columns, GPTQ quantizes column i of every row, then subtracts the row's scaled error
// from the row's later columns of the block: for each row r independently,
//     code_i = #{k : b_k < w_ri}   (b_k = (l_k + l_k+1) / 2, the row's ascending levels l; ties to the lower)
//     q_ri   = l_code_i,   e_ri = (w_ri - q_ri) / Hinv_ii,   w_rj -= e_ri Hinv_ij  for j >= i.
// Rows are independent given Hinv, so each row runs this loop on its own: one call (one kernel launch on a GPU)
// per lazy block instead of a dozen tensor operations per column, which left the device waiting on the host.
// The arithmetic is that of the tensor version operation by operation (float32, product and difference rounded
// separately, no fused multiply-add), so codes and values are identical to it.
//
// No libtorch here: the host loop is plain C++ and the CUDA kernel (feedback_block.cu) takes the same view.
#pragma once

#include <cstdint>

namespace bayesq {

// P independent problems of R rows and C columns (C <= a lazy block). W, Q and E (and the codes) share one
// layout given by element strides; Hinv is per problem, row-major with leading dimension hinv_ld.
struct FeedbackBlockView {
  int64_t problems = 1, rows = 0, count = 0;
  int64_t stride_problem = 0, stride_row = 0, stride_col = 0;  // for w, quantized, error and codes
  float* w = nullptr;          // in: the block's weights; out: overwritten with the fed-back values
  float* quantized = nullptr;  // out: q
  float* error = nullptr;      // out: e
  uint8_t* codes = nullptr;    // out: code
  const float* hinv = nullptr;  // [P][C][hinv_ld] upper Cholesky factor of H^-1 restricted to the block
  int64_t hinv_problem = 0, hinv_ld = 0;
  // Ascending levels, `width` per row, +inf padded: levels[((slot * P + p) * R + r) * width + k], where the slot
  // of column i is column_slot[i] (null: slot 0), so groups of columns can round to different grids.
  const float* levels = nullptr;
  int64_t width = 0;
  const int32_t* column_slot = nullptr;
};

// The loop above for every row, on host threads (parallel_for over rows).
void feedback_block_host(const FeedbackBlockView& view);

// The same on a CUDA device (pointers are device memory; column_slot too), queued on `stream` (a cudaStream_t).
// Only in builds with the CUDA kernels (BAYESQ_CUDA_KERNELS); elsewhere it is not defined.
void feedback_block_cuda(const FeedbackBlockView& view, void* stream);

}  // namespace bayesq

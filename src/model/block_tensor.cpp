#include "bayesq/model/block_tensor.h"

#include "bayesq/common/errors.h"

namespace bayesq {

const char* dtype_name(c10::ScalarType type) {
  switch (type) {
    case c10::ScalarType::Float: return "float32";
    case c10::ScalarType::Double: return "float64";
    case c10::ScalarType::Half: return "float16";
    case c10::ScalarType::BFloat16: return "bfloat16";
    default: return c10::toString(type);
  }
}

torch::Tensor block_rows(const torch::Tensor& weight, const BlockInfo& info) {
  torch::Tensor w = weight.detach().to(torch::kCPU, torch::kFloat32);
  if (info.row_axis != 0) {
    BQ_ASSERT(w.dim() == 2 && info.row_axis == 1, "row_axis ", info.row_axis, " on a ", w.dim(), "-D tensor");
    w = w.t();
  }
  return w.reshape({info.rows(), info.cols()}).contiguous();
}

std::vector<float> block_rows_vector(const torch::Tensor& weight, const BlockInfo& info) {
  const torch::Tensor rows = block_rows(weight, info);
  return std::vector<float>(rows.data_ptr<float>(), rows.data_ptr<float>() + rows.numel());
}

torch::Tensor rows_to_block(const torch::Tensor& rows, const BlockInfo& info, const torch::Tensor& like) {
  torch::Tensor w = rows;
  if (info.row_axis != 0) w = w.reshape({info.rows(), info.cols()}).t();
  return w.reshape(info.shape).to(like.device(), like.scalar_type()).contiguous();
}

}  // namespace bayesq

#include "bayesq/model/block_tensor.h"

#include <algorithm>

#include <torch/torch.h>

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

torch::Tensor dequantized_rows(const QuantizedBlock& q, const torch::Device& device) {
  if (!device.is_cpu()) return dequantized_rows_by_gather(q, device);
  std::vector<float> values = q.dequantize();
  return torch::from_blob(values.data(), {q.rows, q.cols}, torch::kFloat32).clone();
}

torch::Tensor dequantized_rows_by_gather(const QuantizedBlock& q, const torch::Device& device,
                                         const torch::Tensor& codes_on_device) {
  if (codes_on_device.defined())
    BQ_ASSERT(codes_on_device.device() == device && codes_on_device.scalar_type() == torch::kUInt8 &&
                  codes_on_device.dim() == 2 && codes_on_device.size(0) == q.rows && codes_on_device.size(1) == q.cols,
              "codes ", codes_on_device.sizes(), " on ", codes_on_device.device(), " for ", q.rows, " x ", q.cols,
              " weights on ", device);
  else
    BQ_ASSERT(q.rows >= 0 && q.cols >= 0 && static_cast<int64_t>(q.codes.size()) == q.rows * q.cols, q.codes.size(),
              " codes for ", q.rows, " x ", q.cols, " weights");
  if (q.rows == 0 || q.cols == 0) return torch::zeros({q.rows, q.cols}, torch::TensorOptions().device(device));
  // Every level in one flat table, codebook after codebook (row-major over rows and groups, as QuantizedBlock
  // keeps them), each 2^bits long; a weight's value is table[(r * groups + c / group_size) * L + code]. A gather
  // copies the float it reads, so the values are those of dequantize(), bit for bit.
  const int64_t groups = static_cast<int64_t>(q.codebooks.size()) / q.rows;
  BQ_ASSERT(groups * q.rows == static_cast<int64_t>(q.codebooks.size()) && q.group_size > 0 &&
                groups_per_row(q.cols, q.group_size) == groups,
            q.codebooks.size(), " codebooks for ", q.rows, " rows of ", q.cols, " in groups of ", q.group_size);
  const int64_t levels = int64_t{1} << q.bits;
  std::vector<float> table(static_cast<std::size_t>(q.rows * groups * levels), 0.0f);
  for (std::size_t k = 0; k < q.codebooks.size(); ++k) {
    const std::vector<float>& v = q.codebooks[k].levels;
    BQ_ASSERT(static_cast<int64_t>(v.size()) <= levels, "a codebook of ", v.size(), " levels in a ", q.bits,
              "-bit block");
    std::copy(v.begin(), v.end(), table.begin() + static_cast<std::ptrdiff_t>(k * static_cast<std::size_t>(levels)));
  }
  std::vector<int64_t> column_offset(static_cast<std::size_t>(q.cols));
  for (int64_t c = 0; c < q.cols; ++c) column_offset[static_cast<std::size_t>(c)] = (c / q.group_size) * levels;
  // On CUDA through pinned staging buffers, copied without waiting: a copy from pageable memory would first wait
  // for everything queued on the stream (the forward of the option before), and a caller that decodes the next
  // option while the device still runs the last one would gain nothing. The caching host allocator keeps each
  // staging buffer until its copy has run. Elsewhere the copy has finished when .to() returns.
  const auto on_device = [&](void* data, int64_t n, torch::ScalarType type) {
    const torch::Tensor host = torch::from_blob(data, {n}, type);
    if (!device.is_cuda()) return host.to(device);
    torch::Tensor staged = torch::empty({n}, torch::TensorOptions().dtype(type).pinned_memory(true));
    staged.copy_(host);
    return staged.to(device, /*non_blocking=*/true);
  };
  const torch::Tensor flat_table = on_device(table.data(), static_cast<int64_t>(table.size()), torch::kFloat32);
  const torch::Tensor codes =
      codes_on_device.defined()
          ? codes_on_device
          : on_device(const_cast<uint8_t*>(q.codes.data()), q.rows * q.cols, torch::kUInt8).view({q.rows, q.cols});
  const torch::Tensor row_offset =
      torch::arange(q.rows, torch::TensorOptions().dtype(torch::kInt64).device(device)).mul_(groups * levels);
  const torch::Tensor index = codes.to(torch::kInt64)
                                  .add_(row_offset.unsqueeze(1))
                                  .add_(on_device(column_offset.data(), q.cols, torch::kInt64).unsqueeze(0));
  return flat_table.take(index);
}

}  // namespace bayesq

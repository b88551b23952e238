#include "bayesq/model/model_file.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "bayesq/common/errors.h"

namespace bayesq {

namespace fs = std::filesystem;

namespace {
std::string first_line(const std::string& text) {
  const auto end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}
}  // namespace

std::string file_hash(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BQ_CHECK(in.good(), ExitCode::input, "cannot read file: ", path);
  uint64_t hash = 1469598103934665603ull;  // FNV-1a offset basis
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const std::streamsize got = in.gcount();
    for (std::streamsize i = 0; i < got; ++i) {
      hash ^= static_cast<unsigned char>(buffer[static_cast<std::size_t>(i)]);
      hash *= 1099511628211ull;  // FNV prime
    }
  }
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

LoadedModel load_model(const std::string& path) {
  std::error_code ec;
  BQ_CHECK(fs::exists(path, ec), ExitCode::input, "model file not found: ", path);
  BQ_CHECK(fs::is_regular_file(path, ec), ExitCode::input, "model path is not a file: ", path);
  {
    std::ifstream in(path, std::ios::binary);
    char magic[4] = {};
    in.read(magic, 4);
    BQ_CHECK(in.gcount() == 4 && magic[0] == 'P' && magic[1] == 'K', ExitCode::input,
             "not a TorchScript archive (not a zip file; save the model with torch.jit.save): ", path);
  }
  LoadedModel model;
  model.path = path;
  model.file_bytes = static_cast<int64_t>(fs::file_size(path, ec));
  try {
    model.module = torch::jit::load(path, torch::kCPU);
  } catch (const c10::Error& e) {
    const std::string what = first_line(e.what_without_backtrace());
    if (what.find("central directory") != std::string::npos || what.find("truncated") != std::string::npos ||
        what.find("failed to read") != std::string::npos || what.find("file_size") != std::string::npos)
      BQ_FAIL(ExitCode::input, "truncated or corrupt TorchScript archive (", what, "): ", path);
    if (what.find("constants.pkl") != std::string::npos || what.find("code/") != std::string::npos)
      BQ_FAIL(ExitCode::input,
              "not a TorchScript archive (a torch.save file? save the model with torch.jit.save): ", path);
    BQ_FAIL(ExitCode::input, "cannot load TorchScript model (", what, "): ", path);
  } catch (const std::exception& e) {
    BQ_FAIL(ExitCode::input, "cannot load TorchScript model (", first_line(e.what()), "): ", path);
  }
  for (const auto& a : model.module.named_attributes(true))
    if (a.value.isTensor()) check_tensor_extent(a.value.toTensor(), "model tensor '" + a.name + "'", path);
  model.hash = file_hash(path);
  return model;
}

void check_tensor_extent(const torch::Tensor& t, const std::string& what, const std::string& path) {
  if (!t.defined()) return;
  BQ_CHECK(t.layout() == torch::kStrided && !t.is_quantized(), ExitCode::input, what,
           " is not a dense tensor (sparse and quantized tensors are not supported): ", path);
  if (t.numel() == 0) return;
  BQ_CHECK(t.storage_offset() >= 0, ExitCode::input, what, " has a negative storage offset: ", path);
  // Offset of the last element, in elements; 128-bit so that no crafted size or stride can wrap it.
  unsigned __int128 last = static_cast<unsigned __int128>(t.storage_offset());
  for (int64_t d = 0; d < t.dim(); ++d) {
    BQ_CHECK(t.stride(d) >= 0, ExitCode::input, what, " has a negative stride: ", path);
    last += static_cast<unsigned __int128>(t.size(d) - 1) * static_cast<unsigned __int128>(t.stride(d));
  }
  const unsigned __int128 needed = (last + 1) * static_cast<unsigned __int128>(t.element_size());
  BQ_CHECK(t.storage().data() != nullptr && needed <= static_cast<unsigned __int128>(t.storage().nbytes()),
           ExitCode::input, what, " (shape ", t.sizes(), ", strides ", t.strides(), ", offset ", t.storage_offset(),
           ") reaches past its storage of ", t.storage().nbytes(), " bytes: ", path);
}

void check_finite_weights(const torch::jit::Module& module, const std::string& path) {
  // Parameters (every quantized weight is one) must be finite. Buffers may hold infinities on purpose (a causal
  // attention mask of -inf above the diagonal), so of them only NaN is refused.
  for (const auto& p : module.named_parameters(true)) {
    const torch::Tensor& t = p.value;
    if (!t.is_floating_point() || t.numel() == 0) continue;
    BQ_CHECK(torch::isfinite(t).all().item<bool>(), ExitCode::input, "model parameter '", p.name,
             "' contains NaN or Inf: ", path);
  }
  for (const auto& b : module.named_buffers(true)) {
    const torch::Tensor& t = b.value;
    if (!t.is_floating_point() || t.numel() == 0) continue;
    BQ_CHECK(!torch::isnan(t).any().item<bool>(), ExitCode::input, "model buffer '", b.name, "' contains NaN: ", path);
  }
}

}  // namespace bayesq

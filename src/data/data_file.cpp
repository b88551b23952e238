#include "bayesq/data/data_file.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <caffe2/serialize/inline_container.h>
#include <torch/serialize.h>

#include "bayesq/common/errors.h"
#include "bayesq/model/model_file.h"

namespace bayesq {

namespace {

std::string first_line(const std::string& text) {
  const auto end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

// Note [Single-key dicts]: libtorch 1.13's unpickler lacks the SETITEM opcode, which Python uses for a dict with
// one item, so torch.save({"inputs": x}) fails there ("Unknown opcode for unpickling at 0x73"). For a top-level
// dict, data.pkl reads PROTO 2, EMPTY_DICT, BINPUT/LONG_BINPUT, <key>, <value>, SETITEM, STOP; inserting a MARK
// after the memo put and turning the final SETITEM into SETITEMS gives the same dict in opcodes the unpickler
// knows. The archive is rewritten in memory with the patched record and loaded again.
bool patch_single_key_dict(std::string& pickle) {
  if (pickle.size() < 8 || static_cast<unsigned char>(pickle[0]) != 0x80 || pickle[2] != '}') return false;
  if (pickle[pickle.size() - 1] != '.' || pickle[pickle.size() - 2] != 's') return false;
  std::size_t after_put = 3;
  if (pickle[3] == 'q') after_put = 5;        // BINPUT <1 byte>
  else if (pickle[3] == 'r') after_put = 8;   // LONG_BINPUT <4 bytes>
  if (pickle[after_put] == '(') return false;  // already SETITEMS
  pickle[pickle.size() - 2] = 'u';
  pickle.insert(after_put, 1, '(');
  return true;
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BQ_CHECK(in.good(), ExitCode::input, "cannot read data file: ", path);
  return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<char> rewrite_with_patched_pickle(const std::vector<char>& bytes, bool* patched) {
  *patched = false;
  std::istringstream stream(std::string(bytes.data(), bytes.size()));
  caffe2::serialize::PyTorchStreamReader reader(&stream);
  const auto data = reader.getRecord("data.pkl");
  std::string pickle(static_cast<const char*>(std::get<0>(data).get()), std::get<1>(data));
  if (!patch_single_key_dict(pickle)) return bytes;
  std::vector<char> out;
  {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* buf, size_t n) {
      out.insert(out.end(), static_cast<const char*>(buf), static_cast<const char*>(buf) + n);
      return n;
    });
    for (const std::string& name : reader.getAllRecords()) {
      if (name == "version" || name == ".data/version") continue;  // the writer adds its own
      if (name == "data.pkl") {
        writer.writeRecord(name, pickle.data(), pickle.size());
      } else {
        const auto record = reader.getRecord(name);
        writer.writeRecord(name, std::get<0>(record).get(), std::get<1>(record));
      }
    }
    writer.writeEndOfFile();
  }
  *patched = true;
  return out;
}

torch::jit::IValue unpickle(const std::string& path) {
  const std::vector<char> bytes = read_file(path);
  BQ_CHECK(bytes.size() >= 4 && bytes[0] == 'P' && bytes[1] == 'K', ExitCode::input,
           "not a torch.save file (expected a zip archive written by torch.save): ", path);
  try {
    return torch::pickle_load(bytes);
  } catch (const c10::Error& first) {
    const std::string what = first_line(first.what_without_backtrace());
    if (what.find("Unknown opcode") != std::string::npos) {
      try {
        bool patched = false;
        const std::vector<char> fixed = rewrite_with_patched_pickle(bytes, &patched);
        if (patched) return torch::pickle_load(fixed);
      } catch (const c10::Error& e) {
        BQ_FAIL(ExitCode::input, "cannot read data file (", first_line(e.what_without_backtrace()), "): ", path);
      }
    }
    BQ_FAIL(ExitCode::input, "cannot read data file (", what, "): ", path);
  }
}

std::vector<torch::Tensor> tensors_of(const torch::jit::IValue& v, const std::string& path, const char* what) {
  std::vector<torch::Tensor> out;
  if (v.isTensor()) {
    out.push_back(v.toTensor());
  } else if (v.isTuple()) {
    for (const auto& e : v.toTupleRef().elements()) {
      BQ_CHECK(e.isTensor(), ExitCode::input, what, " must hold tensors only: ", path);
      out.push_back(e.toTensor());
    }
  } else if (v.isList()) {
    for (const auto& e : v.toListRef()) {
      BQ_CHECK(e.isTensor(), ExitCode::input, what, " must hold tensors only: ", path);
      out.push_back(e.toTensor());
    }
  } else {
    BQ_FAIL(ExitCode::input, what, " must be a tensor, a tuple/list of tensors or a dict with \"inputs\": ", path);
  }
  BQ_CHECK(!out.empty(), ExitCode::input, what, " holds no tensors: ", path);
  return out;
}

}  // namespace

DataFile DataFile::load(const std::string& path) {
  std::error_code ec;
  BQ_CHECK(std::filesystem::exists(path, ec), ExitCode::input, "data file not found: ", path);
  const torch::jit::IValue root = unpickle(path);
  DataFile data;
  data.path_ = path;
  data.hash_ = file_hash(path);
  if (root.isGenericDict()) {
    const auto dict = root.toGenericDict();
    bool has_inputs = false;
    for (const auto& entry : dict) {
      BQ_CHECK(entry.key().isString(), ExitCode::input, "data dict keys must be strings: ", path);
      const std::string key = entry.key().toStringRef();
      if (key == "inputs") {
        data.inputs_ = tensors_of(entry.value(), path, "\"inputs\"");
        has_inputs = true;
      } else if (key == "labels") {
        BQ_CHECK(entry.value().isTensor(), ExitCode::input, "\"labels\" must be a tensor: ", path);
        data.labels_ = entry.value().toTensor();
      } else {
        BQ_FAIL(ExitCode::input, "unexpected key \"", key, "\" in data dict (expected \"inputs\" and \"labels\"): ",
                path);
      }
    }
    BQ_CHECK(has_inputs, ExitCode::input, "data dict has no \"inputs\": ", path);
  } else {
    data.inputs_ = tensors_of(root, path, "data");
  }
  for (std::size_t i = 0; i < data.inputs_.size(); ++i) {
    torch::Tensor& t = data.inputs_[i];
    BQ_CHECK(t.dim() >= 1, ExitCode::input, "input ", i, " is a scalar; examples must run along dim 0: ", path);
    t = t.contiguous();
    if (i == 0) data.count_ = t.size(0);
    BQ_CHECK(t.size(0) == data.count_, ExitCode::input, "input ", i, " has ", t.size(0),
             " examples but input 0 has ", data.count_, ": ", path);
    if (t.is_floating_point())
      BQ_CHECK(torch::isfinite(t).all().item<bool>(), ExitCode::input, "input ", i, " contains NaN or Inf: ", path);
  }
  BQ_CHECK(data.count_ > 0, ExitCode::input, "data file holds no examples: ", path);
  if (data.labels_.defined()) {
    BQ_CHECK(!data.labels_.is_floating_point() && !data.labels_.is_complex() &&
                 data.labels_.scalar_type() != torch::kBool,
             ExitCode::input, "labels must be integers: ", path);
    data.labels_ = data.labels_.reshape({-1}).to(torch::kInt64).contiguous();
    BQ_CHECK(data.labels_.size(0) == data.count_, ExitCode::input, "labels have ", data.labels_.size(0),
             " entries but the inputs have ", data.count_, " examples: ", path);
    BQ_CHECK(data.labels_.min().item<int64_t>() >= 0, ExitCode::input, "labels must be >= 0: ", path);
  }
  return data;
}

std::vector<torch::jit::IValue> DataFile::batch(int64_t begin, int64_t end, const torch::Device& device) const {
  std::vector<torch::jit::IValue> out;
  out.reserve(inputs_.size());
  for (const auto& t : inputs_) out.emplace_back(t.slice(0, begin, end).to(device));
  return out;
}

torch::Tensor DataFile::labels(int64_t begin, int64_t end, const torch::Device& device) const {
  return labels_.defined() ? labels_.slice(0, begin, end).to(device) : torch::Tensor();
}

std::string DataFile::shape_string(int64_t input) const {
  std::ostringstream out;
  out << inputs_[static_cast<std::size_t>(input)].sizes();
  return out.str();
}

DataFile DataFile::subset(const std::vector<int64_t>& indices) const {
  DataFile out;
  out.path_ = path_;
  out.hash_ = hash_;
  const torch::Tensor idx = torch::tensor(indices, torch::kInt64);
  for (const auto& t : inputs_) out.inputs_.push_back(t.index_select(0, idx).contiguous());
  if (labels_.defined()) out.labels_ = labels_.index_select(0, idx).contiguous();
  out.count_ = static_cast<int64_t>(indices.size());
  return out;
}

}  // namespace bayesq

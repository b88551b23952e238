#include "bayesq/data/data_file.h"

#include <algorithm>
#include <filesystem>
#include <stdexcept>
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

// Note [Single-key dicts]: libtorch 1.13's unpickler lacks the SETITEM and APPEND opcodes, which Python uses for
// a dict with one item and a list with one element, so torch.save({"inputs": x}) or torch.save([x]) fail there
// ("Unknown opcode for unpickling at 0x73"). Each such opcode can be rewritten into the batched form the unpickler
// knows: a MARK right after the container is pushed (after its memo put), and SETITEMS / APPENDS in place of
// SETITEM / APPEND. Finding the container needs the stack, so this walks the protocol-2 opcodes torch.save emits
// and tracks, for every stack item, the offset just after it was pushed. Returns false (file untouched) when there
// is nothing to rewrite or an opcode it does not know.
bool rewrite_single_item_opcodes(std::string& pickle) {
  struct Item {
    std::size_t insert_at;
    bool mark;
  };
  std::vector<Item> stack;
  std::vector<std::pair<std::size_t, std::size_t>> rewrites;  // (MARK insertion offset, opcode offset)
  auto u32 = [&](std::size_t at) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(pickle.at(at + static_cast<std::size_t>(i)));
    return static_cast<std::size_t>(v);
  };
  auto pop_to_mark = [&]() {
    while (!stack.empty() && !stack.back().mark) stack.pop_back();
    if (stack.empty()) throw std::out_of_range("no mark");
    stack.pop_back();
  };
  auto pop = [&](std::size_t n) {
    if (stack.size() < n) throw std::out_of_range("stack underflow");
    stack.resize(stack.size() - n);
  };
  try {
    std::size_t pos = 0;
    while (pos < pickle.size()) {
      const unsigned char op = static_cast<unsigned char>(pickle[pos]);
      std::size_t next = pos + 1;
      switch (op) {
        case 0x80: next = pos + 2; break;                                    // PROTO
        case '}': case ']': case ')': case 'N': case 0x88: case 0x89:        // empty containers, None, bools
          stack.push_back({next, false});
          break;
        case 'c': {                                                          // GLOBAL module\nname\n
          const std::size_t first = pickle.find('\n', pos + 1);
          if (first == std::string::npos) return false;
          const std::size_t second = pickle.find('\n', first + 1);
          if (second == std::string::npos) return false;
          next = second + 1;
          stack.push_back({next, false});
          break;
        }
        case 'X': case 'B': next = pos + 5 + u32(pos + 1); stack.push_back({next, false}); break;
        case 0x8c: case 'C': case 'U':
          next = pos + 2 + static_cast<unsigned char>(pickle.at(pos + 1));
          stack.push_back({next, false});
          break;
        case 'J': next = pos + 5; stack.push_back({next, false}); break;     // BININT
        case 'K': next = pos + 2; stack.push_back({next, false}); break;     // BININT1
        case 'M': next = pos + 3; stack.push_back({next, false}); break;     // BININT2
        case 'G': next = pos + 9; stack.push_back({next, false}); break;     // BINFLOAT
        case 0x8a: next = pos + 2 + static_cast<unsigned char>(pickle.at(pos + 1)); stack.push_back({next, false}); break;
        case 'q': next = pos + 2; if (!stack.empty()) stack.back().insert_at = next; break;   // BINPUT
        case 'r': next = pos + 5; if (!stack.empty()) stack.back().insert_at = next; break;   // LONG_BINPUT
        case 'h': next = pos + 2; stack.push_back({next, false}); break;     // BINGET
        case 'j': next = pos + 5; stack.push_back({next, false}); break;     // LONG_BINGET
        case '(': stack.push_back({next, true}); break;                      // MARK
        case 't': case 'l': case 'd': pop_to_mark(); stack.push_back({next, false}); break;
        case 0x85: pop(1); stack.push_back({next, false}); break;            // TUPLE1
        case 0x86: pop(2); stack.push_back({next, false}); break;            // TUPLE2
        case 0x87: pop(3); stack.push_back({next, false}); break;            // TUPLE3
        case 'R': case 0x81: pop(2); stack.push_back({next, false}); break;  // REDUCE, NEWOBJ
        case 'Q': pop(1); stack.push_back({next, false}); break;             // BINPERSID
        case 'b': pop(1); break;                                             // BUILD
        case 'e': case 'u': pop_to_mark(); break;                            // APPENDS, SETITEMS
        case 'a':                                                            // APPEND
          pop(1);
          if (stack.empty()) return false;
          rewrites.emplace_back(stack.back().insert_at, pos);
          break;
        case 's':                                                            // SETITEM
          pop(2);
          if (stack.empty()) return false;
          rewrites.emplace_back(stack.back().insert_at, pos);
          break;
        case '0': pop(1); break;                                             // POP
        case '.': next = pickle.size(); break;                               // STOP
        default: return false;
      }
      if (next <= pos) return false;  // every opcode moves forward: a scan never revisits a byte
      pos = next;
    }
  } catch (const std::out_of_range&) {
    return false;
  }
  if (rewrites.empty()) return false;
  for (const auto& r : rewrites) pickle[r.second] = pickle[r.second] == 'a' ? 'e' : 'u';
  std::sort(rewrites.begin(), rewrites.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
  for (const auto& r : rewrites) pickle.insert(r.first, 1, '(');
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
  if (!rewrite_single_item_opcodes(pickle)) return bytes;
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
      } catch (const UserError&) {
        throw;
      } catch (const std::exception& e) {
        BQ_FAIL(ExitCode::input, "cannot read data file (malformed pickle: ", first_line(e.what()), "): ", path);
      }
    }
    BQ_FAIL(ExitCode::input, "cannot read data file (", what, "): ", path);
  } catch (const std::exception& e) {
    // libtorch's unpickler indexes its tables with .at(): a malformed pickle ends in std::out_of_range.
    BQ_FAIL(ExitCode::input, "cannot read data file (malformed pickle: ", first_line(e.what()), "): ", path);
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
  for (std::size_t i = 0; i < data.inputs_.size(); ++i)
    check_tensor_extent(data.inputs_[i], "input " + std::to_string(i), path);
  check_tensor_extent(data.labels_, "\"labels\"", path);
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
    // One label per example ([N]), or one per scored position ([N, T, ...]: next-token labels of a language model).
    const int64_t first = data.labels_.dim() == 0 ? 1 : data.labels_.size(0);
    BQ_CHECK(first == data.count_, ExitCode::input, "labels have ", first, " rows but the inputs have ",
             data.count_, " examples: ", path);
    data.labels_ = (data.labels_.dim() <= 1 ? data.labels_.reshape({-1}) : data.labels_).to(torch::kInt64).contiguous();
    const torch::Tensor used = data.labels_.ne(kIgnoredLabel);
    BQ_CHECK(used.any().item<bool>(), ExitCode::input, "every label is ", kIgnoredLabel, " (ignored): ", path);
    BQ_CHECK(data.labels_.masked_select(used).min().item<int64_t>() >= 0, ExitCode::input,
             "labels must be >= 0 (or ", kIgnoredLabel, ": ignored): ", path);
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

#include "bayesq/model/forward.h"

#include <sstream>

#include "bayesq/common/errors.h"

namespace bayesq {

namespace {
// The informative line of a libtorch error: for TorchScript interpreter errors (a traceback ending in the Python
// exception) the last non-empty line, otherwise the first.
std::string message_line(const std::string& text) {
  if (text.find("TorchScript interpreter") != std::string::npos) {
    std::size_t end = text.find_last_not_of(" \n");
    if (end != std::string::npos) {
      const std::size_t begin = text.rfind('\n', end);
      return text.substr(begin == std::string::npos ? 0 : begin + 1, end - (begin == std::string::npos ? 0 : begin + 1) + 1);
    }
  }
  const auto end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

bool all_digits(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}
}  // namespace

torch::Tensor select_output(const torch::jit::IValue& output, const std::string& spec) {
  if (output.isTensor()) {
    BQ_CHECK(spec.empty() || spec == "0", ExitCode::usage, "--output-index ", spec,
             " given, but the model returns a single tensor");
    return output.toTensor();
  }
  if (output.isTuple() || output.isList()) {
    const std::vector<torch::jit::IValue> items =
        output.isTuple() ? output.toTupleRef().elements().vec() : output.toListRef().vec();
    std::size_t index = 0;
    if (!spec.empty()) {
      BQ_CHECK(all_digits(spec), ExitCode::usage, "--output-index must be a number for a model returning a tuple");
      index = static_cast<std::size_t>(std::stoul(spec));
    }
    BQ_CHECK(index < items.size(), ExitCode::usage, "--output-index ", index, " is out of range: the model returns ",
             items.size(), " outputs");
    BQ_CHECK(items[index].isTensor(), ExitCode::usage, "model output ", index, " is not a tensor");
    return items[index].toTensor();
  }
  if (output.isGenericDict()) {
    const auto dict = output.toGenericDict();
    std::size_t position = 0;
    const bool by_index = all_digits(spec);
    for (const auto& entry : dict) {
      const std::string key = entry.key().isString() ? entry.key().toStringRef() : "";
      const bool hit = spec.empty() ? key == "logits" : by_index ? position == std::stoul(spec) : key == spec;
      if (hit) {
        BQ_CHECK(entry.value().isTensor(), ExitCode::usage, "model output '", key, "' is not a tensor");
        return entry.value().toTensor();
      }
      ++position;
    }
    if (spec.empty() && dict.size() > 0 && dict.begin()->value().isTensor()) return dict.begin()->value().toTensor();
    BQ_FAIL(ExitCode::usage, "--output-index '", spec, "' names no output of the model");
  }
  BQ_FAIL(ExitCode::input, "the model returns neither a tensor nor a tuple, list or dict of tensors");
}

void check_input_count(const torch::jit::Module& module, const DataFile& data, const std::string& model_path) {
  const auto& schema = module.get_method("forward").function().getSchema();
  const auto& args = schema.arguments();
  int64_t total = 0, required = 0;
  std::string names;
  for (std::size_t i = 1; i < args.size(); ++i) {  // argument 0 is self
    ++total;
    if (!args[i].default_value()) ++required;
    names += (names.empty() ? "" : ", ") + args[i].name();
  }
  BQ_CHECK(data.input_count() >= required && data.input_count() <= total, ExitCode::input,
           "data does not fit the model: ", model_path, " takes ", required == total ? "" : "at least ",
           required, " input(s) (", names, ") but ", data.path(), " has ", data.input_count());
}

torch::jit::IValue forward_batch(torch::jit::Module& module, const DataFile& data, int64_t begin, int64_t end,
                                 const torch::Device& device, const std::string& model_path) {
  return forward_batch(module, data, begin, end, device, model_path, ForwardRun());
}

torch::jit::IValue forward_batch(torch::jit::Module& module, const DataFile& data, int64_t begin, int64_t end,
                                 const torch::Device& device, const std::string& model_path, const ForwardRun& run) {
  std::string what;
  try {
    return run ? run(data.batch(begin, end, device)) : module.forward(data.batch(begin, end, device));
  } catch (const c10::Error& e) {
    what = e.what_without_backtrace();
  } catch (const std::exception& e) {  // TorchScript interpreter errors are torch::jit::JITException
    what = e.what();
  }
  BQ_CHECK(what.find("out of memory") == std::string::npos, ExitCode::usage, "out of memory running ", model_path,
           " on batches of ", end - begin, " examples; lower --batch-size: ", data.path());
  std::ostringstream shapes;
  for (int64_t i = 0; i < data.input_count(); ++i)
    shapes << (i ? ", " : "") << "input " << i << " has shape " << data.shape_string(i) << " ("
           << c10::toString(data.input(i).scalar_type()) << ")";
  // A traced model keeps the device it was traced on wherever its code made a tensor (Hugging Face attention
  // masks): then it fails on any other device, whatever the data.
  const bool devices = what.find("Expected all tensors to be on the same device") != std::string::npos;
  const std::string hint = devices ? "; the model was probably traced on another device than " + device.str() +
                                         " (tracing records it): trace it on that device, or run with --device " +
                                         (device.is_cpu() ? std::string("cuda") : std::string("cpu"))
                                   : "";
  BQ_FAIL(ExitCode::input, "data does not fit the model ", model_path, ": ", shapes.str(), "; the model says: ",
          message_line(what), hint, ": ", data.path());
}

void check_labels(const DataFile& data, int64_t classes) {
  if (!data.has_labels()) return;
  const int64_t top = data.all_labels().max().item<int64_t>();
  BQ_CHECK(top < classes, ExitCode::input, "label ", top, " is outside the model's ", classes,
           " outputs (labels must be in 0..", classes - 1, "): ", data.path());
}

}  // namespace bayesq

// Calibration and evaluation data, written in Python with torch.save (README "Data format"):
//   - a tensor                                    one model input, examples along dim 0
//   - a tuple or list of tensors                  several model inputs (e.g. token ids, attention mask)
//   - a dict {"inputs": <tensor|tuple|list>, "labels": <int tensor [N] or [N, T, ...]>}   ("labels" optional;
//     [N, T] holds one label per scored position, e.g. next-token labels, with kIgnoredLabel where padded)
// The whole file is read into host memory; batches are sliced from it and moved to the device one at a time.
#pragma once

#include <string>
#include <vector>

#include <torch/script.h>

namespace bayesq {

// A label that scores nothing (PyTorch's ignore_index convention): padding in next-token labels.
constexpr int64_t kIgnoredLabel = -100;

class DataFile {
 public:
  // Throws UserError(input) naming the file on a missing or malformed file, mismatched example counts, labels
  // that are not integers, or NaN/Inf in floating-point inputs.
  static DataFile load(const std::string& path);

  int64_t size() const { return count_; }
  int64_t input_count() const { return static_cast<int64_t>(inputs_.size()); }
  bool has_labels() const { return labels_.defined(); }
  const std::string& path() const { return path_; }
  const std::string& hash() const { return hash_; }

  // Examples [begin, end) of every input, on `device`.
  std::vector<torch::jit::IValue> batch(int64_t begin, int64_t end, const torch::Device& device) const;
  // Labels of examples [begin, end): [end - begin] or, per position, [end - begin, T, ...].
  torch::Tensor labels(int64_t begin, int64_t end, const torch::Device& device) const;
  int64_t labels_per_example() const { return labels_.defined() && count_ ? labels_.numel() / count_ : 0; }
  // Shape of one input with the example dimension, as "[N, 1, 28, 28]".
  std::string shape_string(int64_t input) const;
  const torch::Tensor& input(int64_t i) const { return inputs_[static_cast<std::size_t>(i)]; }
  const torch::Tensor& all_labels() const { return labels_; }

  // A subset of the examples (indices into this file), e.g. a calibration/hold-out split.
  DataFile subset(const std::vector<int64_t>& indices) const;

 private:
  std::string path_, hash_;
  std::vector<torch::Tensor> inputs_;
  torch::Tensor labels_;
  int64_t count_ = 0;
};

}  // namespace bayesq

// The forward passes of a measured table and of the joint refinement: the KL of a model, whose blocks are swapped
// one option at a time, against the model's own output before any swap.
//
// Note [Replayed forwards]: a measured table scores each option by one forward of the measured examples (128 by
// default), and a small model's forward on a GPU can be bound by the host: TorchScript's interpreter launches each
// of a few hundred small kernels in turn (MobileNetV2 on 128 Fashion-MNIST images on an H200: 4.4 ms per forward,
// 2.5 ms of it the device's; 728 forwards per table). On CUDA the forwards of all batches, their log-softmax and
// the KL sum are captured once as a CUDA graph and then replayed, one launch per measurement: the same kernels on
// the same inputs, hence the same KL bit for bit (BENCHMARKS.md compares tables and files with and without; where
// the device's own time dominates, as on ResNet-50 in full fp32, it saves little). A graph reads the memory it was
// captured with, so the inputs stay on the device, each block is first given a tensor of its own (so a write
// reaches no other module attribute and no other copy of the model), and set_block copies a value into that tensor
// instead of assigning a new one. The reference is the graph's own first replay, so a model with no block changed
// measures exactly 0. Where capture fails (an operator that waits for the host, such as a data-dependent shape),
// the forwards run as before, eagerly, and fallback_reason() says why.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/StreamGuard.h>
#include <torch/script.h>

#include "bayesq/data/data_file.h"
#include "bayesq/measure/measure_params.h"
#include "bayesq/model/compute.h"

namespace bayesq {

class KlForward {
 public:
  // `work` is measured as it is now for the reference, on the first `examples` examples of `data`; `blocks` names
  // every attribute path set_block will be given. `work` must outlive this object.
  KlForward(torch::jit::Module& work, const std::vector<std::string>& blocks, const DataFile& data, int64_t examples,
            const Compute& compute, const std::string& model_path, MeasureParams::Graphs graphs);
  ~KlForward();

  // From now on block `name` (one of `blocks`) holds `value` (the block's shape, on the device).
  void set_block(const std::string& name, const torch::Tensor& value);
  // Sum over scored rows of KL(reference || work as it is now), in double precision (kl_sum in measured_table.h).
  double kl_sum();
  // kl_sum() without waiting for it where the forwards are replayed: a 0-d float64 tensor on the device that holds
  // the sum once the work queued before it has run; elsewhere a CPU tensor holding kl_sum(). The same value bit for
  // bit. Reading it waits for the device (Note [Queued trials] in joint_allocation.h).
  torch::Tensor kl_sum_queued();
  // The reference log-probabilities, one tensor per batch (log_probabilities in measured_table.h).
  const std::vector<torch::Tensor>& reference() const { return reference_; }
  int64_t rows() const { return rows_; }  // scored rows (examples x positions)
  bool replayed() const;
  const std::string& fallback_reason() const { return fallback_reason_; }  // why not replayed; empty when it is

 private:
  struct Replay;
  torch::jit::Module& work_;
  const DataFile& data_;
  int64_t examples_ = 0;
  Compute compute_;
  std::string model_path_;
  std::vector<torch::Tensor> reference_;
  int64_t rows_ = 0;
  std::unique_ptr<Replay> replay_;
  std::string fallback_reason_;
};

// The values of kl_sum_queued() tensors, in order: one wait for all of them.
std::vector<double> read_queued(const std::vector<torch::Tensor>& sums);

// Note [Feedback beside the forwards]: with replayed forwards queued on the device (Note [Queued trials] in
// joint_allocation.h), the K-FAC feedback of the next block's options ran on the same stream as the forwards, so
// its first kernel waited for every forward queued before it, and the feedback (a chain of small kernels whose
// results the host reads between them) then ran with the device otherwise idle. On a stream of its own it runs
// beside the queued forwards, and a measured table reads a block's queued KLs only once the next block's options
// are made. Nothing on the device crosses between the two streams: the feedback reads only the session's
// statistics, finished before the side stream is made (its constructor waits for the device's current stream),
// and everything it returns is in host memory, read on its own stream. Its kernels and their inputs are the same,
// so are the codes, bit for bit.
class SideStream {
 public:
  // On a CUDA device of a build with CUDA: the process's second stream of the device (Note [One second stream] in
  // kl_forward.cpp), once the device's current stream has run what was queued on it. Elsewhere none, and Scope
  // changes nothing.
  explicit SideStream(const torch::Device& device);
  bool active() const { return stream_.has_value(); }

  // While a Scope lives, the side stream (if any) is this thread's current stream on its device. What the work
  // queued on it leaves on the device is ordered before what the previous stream runs after the Scope (an event,
  // no wait on the host); work that hands device tensors to the other stream must still keep their memory alive.
  class Scope {
   public:
    explicit Scope(const SideStream& side);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    std::optional<c10::Stream> side_;
    c10::OptionalStreamGuard guard_;
  };

 private:
  std::optional<c10::Stream> stream_;
};

}  // namespace bayesq

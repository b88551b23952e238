#include "bayesq/measure/kl_forward.h"

#include <c10/core/Event.h>
#include <torch/torch.h>

#include "bayesq/common/errors.h"
#include "bayesq/common/log.h"
#include "bayesq/measure/measured_table.h"
#include "bayesq/model/block_discovery.h"

#ifdef BAYESQ_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <map>
#include <mutex>
#endif

namespace bayesq {

namespace {
std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }
}  // namespace

#ifdef BAYESQ_WITH_CUDA

struct KlForward::Replay {
  // Owned, except after a failed capture: the caching allocator may still hold a callback naming the graph, so it
  // is then never destroyed (a few bytes, once per run).
  at::cuda::CUDAGraph* graph = nullptr;
  std::vector<std::vector<torch::jit::IValue>> inputs;  // the batches, on the device, read by the graph
  std::vector<torch::Tensor> reference;                 // static: the graph reads them
  torch::Tensor kl;                                     // written by the graph: sum over batches
  ~Replay() { delete graph; }
};

namespace {

// Note [One second stream]: the graph captures and the side stream all run on one stream of libtorch's pool per
// device, taken once for the process. cuBLAS keeps a workspace for every stream it has run on, for the life of the
// process, and the pool hands out its 32 streams in turn: with a new pool stream for each table and refinement,
// each budget of a run peaked higher than the one before (MobileNetV2 on an H200: 41-69 MiB more per budget, 130
// MiB with the side stream; with one stream 317 MiB at every budget: BENCHMARKS.md).
c10::cuda::CUDAStream second_stream(c10::DeviceIndex index) {
  static std::mutex mutex;
  static std::map<c10::DeviceIndex, c10::cuda::CUDAStream> streams;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = streams.find(index);
  if (it == streams.end()) it = streams.emplace(index, c10::cuda::getStreamFromPool(false, index)).first;
  return it->second;
}

// Ends a capture that an exception interrupted, so that the stream and the device work on as before.
void abandon_capture(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
    cudaGraph_t partial = nullptr;
    cudaStreamEndCapture(stream, &partial);
    if (partial) cudaGraphDestroy(partial);
  }
  (void)cudaGetLastError();  // capture errors are not sticky; clear the last one
}

}  // namespace

#else

struct KlForward::Replay {};

#endif

KlForward::KlForward(torch::jit::Module& work, const std::vector<std::string>& blocks, const DataFile& data,
                     int64_t examples, const Compute& compute, const std::string& model_path,
                     MeasureParams::Graphs graphs)
    : work_(work), data_(data), examples_(examples), compute_(compute), model_path_(model_path) {
  torch::NoGradGuard no_grad;
  if (!compute.device.is_cuda()) fallback_reason_ = "not a CUDA device";
  else if (graphs == MeasureParams::Graphs::off) fallback_reason_ = "--cuda-graphs off";
#ifndef BAYESQ_WITH_CUDA
  else fallback_reason_ = "built without CUDA";
#else
  else {
    // Each block gets a tensor of its own, which set_block writes into (Note [Replayed forwards]).
    for (const std::string& name : blocks) assign_tensor(work_, name, find_tensor(work_, name).clone());
    auto replay = std::make_unique<Replay>();
    const int64_t batch = measure_batch_size(compute);
    for (int64_t begin = 0; begin < examples; begin += batch)
      replay->inputs.push_back(data.batch(begin, std::min(examples, begin + batch), compute.device));
    const c10::DeviceIndex index = compute.device.index() < 0 ? c10::DeviceIndex(0) : compute.device.index();
    c10::cuda::getCurrentCUDAStream(index).synchronize();  // the inputs' copies
    const c10::cuda::CUDAStream side = second_stream(index);
    auto log_q = [&](std::size_t k) {
      return log_probabilities_of(work_.forward(replay->inputs[k]), compute);
    };
    try {
      c10::cuda::CUDAStreamGuard on_side(side);
      // Warm-up on the capture stream: the executor settles its plan, libraries create their handles.
      for (int run = 0; run < 3; ++run) {
        replay->reference.clear();
        for (std::size_t k = 0; k < replay->inputs.size(); ++k) replay->reference.push_back(log_q(k));
      }
      side.synchronize();
      replay->graph = new at::cuda::CUDAGraph();
      try {
        replay->graph->capture_begin();
        std::vector<torch::Tensor> captured;
        for (std::size_t k = 0; k < replay->inputs.size(); ++k) {
          captured.push_back(log_q(k));
          const torch::Tensor& p = replay->reference[k];
          const torch::Tensor term = (p.exp() * (p - captured.back())).sum();  // kl_sum's terms, in its order
          replay->kl = k == 0 ? term : replay->kl + term;
        }
        replay->graph->capture_end();
        side.synchronize();
        // The reference is the graph's own output with every block as it is now.
        replay->graph->replay();
        for (std::size_t k = 0; k < captured.size(); ++k) replay->reference[k].copy_(captured[k]);
        side.synchronize();
      } catch (...) {
        abandon_capture(side.stream());
        replay->graph = nullptr;  // not destroyed: see Replay::graph
        throw;
      }
    } catch (const std::exception& e) {
      fallback_reason_ = "capture failed: " + first_line(e.what());
      log::warn("forwards not replayed as a CUDA graph (", fallback_reason_, "); running them one by one");
      replay.reset();
    }
    if (replay) {
      reference_ = replay->reference;
      replay_ = std::move(replay);
    }
  }
#endif
  (void)blocks;
  if (!replay_) reference_ = log_probabilities(work_, data, examples, compute, model_path);
  for (const torch::Tensor& t : reference_) rows_ += t.size(0);
}

KlForward::~KlForward() = default;

bool KlForward::replayed() const { return replay_ != nullptr; }

void KlForward::set_block(const std::string& name, const torch::Tensor& value) {
  if (!replay_) {
    assign_tensor(work_, name, value);
    return;
  }
  torch::NoGradGuard no_grad;
  torch::Tensor live = find_tensor(work_, name);
  BQ_ASSERT(live.sizes() == value.sizes(), "block ", name, " set to a value of another shape");
  live.copy_(value);
}

double KlForward::kl_sum() {
#ifdef BAYESQ_WITH_CUDA
  if (replay_) {
    replay_->graph->replay();
    return replay_->kl.item<double>();
  }
#endif
  return bayesq::kl_sum(reference_, log_probabilities(work_, data_, examples_, compute_, model_path_));
}

torch::Tensor KlForward::kl_sum_queued() {
#ifdef BAYESQ_WITH_CUDA
  if (replay_) {
    replay_->graph->replay();
    return replay_->kl.clone();  // queued after the replay, before the next one overwrites `kl`
  }
#endif
  return torch::tensor(kl_sum(), torch::kFloat64);
}

SideStream::SideStream(const torch::Device& device) {
#ifdef BAYESQ_WITH_CUDA
  if (!device.is_cuda()) return;
  const c10::DeviceIndex index = device.index() < 0 ? c10::DeviceIndex(0) : device.index();
  c10::cuda::getCurrentCUDAStream(index).synchronize();  // what the side stream may read is finished
  stream_ = c10::Stream(second_stream(index));
#else
  (void)device;
#endif
}

SideStream::Scope::Scope(const SideStream& side) : side_(side.stream_) {
  if (side_) guard_.reset_stream(*side_);
}

SideStream::Scope::~Scope() {
  if (!side_) return;
  const auto previous = guard_.original_stream();  // c10::optional on libtorch 1.13, std::optional on 2.x
  guard_.reset();
  if (!previous.has_value()) return;
  try {
    c10::Event done(side_->device_type());
    done.record(*side_);
    done.block(*previous);
  } catch (const std::exception& e) {  // a destructor must not throw; the device's own error surfaces on its next use
    log::warn("side stream: ", first_line(e.what()));
  }
}

std::vector<double> read_queued(const std::vector<torch::Tensor>& sums) {
  if (sums.empty()) return {};
  const torch::Tensor all = torch::stack(sums).to(torch::kCPU, torch::kFloat64).contiguous();
  const double* v = all.data_ptr<double>();
  return std::vector<double>(v, v + all.numel());
}

}  // namespace bayesq

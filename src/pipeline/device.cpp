#include "bayesq/pipeline/device.h"

#include <algorithm>

#include <ATen/Context.h>
#include <torch/cuda.h>
#include <torch/csrc/jit/passes/tensorexpr_fuser.h>

#include "bayesq/common/errors.h"
#include "bayesq/common/parallel.h"

namespace bayesq {

namespace {

torch::Device selected_cuda(torch::Device device, bool tf32) {
  // Same seed, same device: bit-identical results, also for convolutions.
  at::globalContext().setDeterministicCuDNN(true);
  at::globalContext().setBenchmarkCuDNN(false);
  // Note [TF32 off by default] (device.h).
  at::globalContext().setAllowTF32CuDNN(tf32);
  at::globalContext().setAllowTF32CuBLAS(tf32);
  // Note [No fusion on CUDA] (device.h).
  torch::jit::setTensorExprFuserEnabled(false);
  return device;
}

}  // namespace

torch::Device parse_device(const std::string& name, int local_rank, bool tf32) {
  if (name.empty() || name == "cpu") return torch::kCPU;
  const bool cuda = torch::cuda::is_available();
  // Without an index, process LOCAL_RANK of a job takes the GPU of that number; more processes than GPUs share
  // them round-robin (slower, still correct).
  const auto unindexed = [&] {
    const int count = static_cast<int>(torch::cuda::device_count());
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank % std::max(count, 1)));
  };
  if (name == "auto") return cuda ? selected_cuda(unindexed(), tf32) : torch::Device(torch::kCPU);
  if (name.rfind("cuda", 0) == 0) {
    BQ_CHECK(cuda, ExitCode::usage, "--device ", name, " asked for, but this build or machine has no CUDA device");
    torch::Device device(torch::kCPU);
    try {
      device = torch::Device(name);
    } catch (const c10::Error&) {
      BQ_FAIL(ExitCode::usage, "unknown device '", name, "' (expected cpu, cuda, cuda:N or auto)");
    }
    if (device.index() < 0) device = unindexed();
    BQ_CHECK(device.index() < static_cast<int>(torch::cuda::device_count()), ExitCode::usage, "--device ", name,
             ": only ", torch::cuda::device_count(), " CUDA device(s) present");
    return selected_cuda(device, tf32);
  }
  BQ_FAIL(ExitCode::usage, "unknown device '", name, "' (expected cpu, cuda, cuda:N or auto)");
}

Compute start_run(const RunContext& run, int local_rank) {
  run.validate();
  // libtorch's own default can be one thread (Debian's libtorch 1.13 with OpenMP starts at one on a 2-core machine):
  // the count (--threads, else OMP_NUM_THREADS, else every core) is set explicitly, for bayesq's threads,
  // libtorch's and, through OpenMP, an OpenMP BLAS's. Reductions depend on it: same count, same bytes.
  set_num_threads(run.threads);
  torch::set_num_threads(num_threads());
  Compute c;
  c.device = parse_device(run.device, local_rank, run.tf32);
  c.seed = run.seed;
  c.batch_size = run.batch_size;
  c.max_examples = run.max_examples;
  c.output = run.output_index;
  return c;
}

}  // namespace bayesq

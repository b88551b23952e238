#include "bayesq/pipeline/device.h"

#include <ATen/Context.h>
#include <torch/cuda.h>

#include "bayesq/common/errors.h"
#include "bayesq/common/parallel.h"

namespace bayesq {

torch::Device parse_device(const std::string& name) {
  if (name.empty() || name == "cpu") return torch::kCPU;
  const bool cuda = torch::cuda::is_available();
  if (name == "auto") return cuda ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  if (name.rfind("cuda", 0) == 0) {
    BQ_CHECK(cuda, ExitCode::usage, "--device ", name, " asked for, but this build or machine has no CUDA device");
    torch::Device device(torch::kCPU);
    try {
      device = torch::Device(name);
    } catch (const c10::Error&) {
      BQ_FAIL(ExitCode::usage, "unknown device '", name, "' (expected cpu, cuda, cuda:N or auto)");
    }
    if (device.index() < 0) device = torch::Device(torch::kCUDA, 0);
    BQ_CHECK(device.index() < static_cast<int>(torch::cuda::device_count()), ExitCode::usage, "--device ", name,
             ": only ", torch::cuda::device_count(), " CUDA device(s) present");
    at::globalContext().setDeterministicCuDNN(true);
    at::globalContext().setBenchmarkCuDNN(false);
    return device;
  }
  BQ_FAIL(ExitCode::usage, "unknown device '", name, "' (expected cpu, cuda, cuda:N or auto)");
}

Compute start_run(const RunContext& run) {
  run.validate();
  // libtorch's own default can be one thread (Debian's libtorch 1.13 with OpenMP starts at one on a 2-core machine):
  // the count (--threads, else OMP_NUM_THREADS, else every core) is set explicitly, for bayesq's threads,
  // libtorch's and, through OpenMP, an OpenMP BLAS's. Reductions depend on it: same count, same bytes.
  set_num_threads(run.threads);
  torch::set_num_threads(num_threads());
  Compute c;
  c.device = parse_device(run.device);
  c.seed = run.seed;
  c.batch_size = run.batch_size;
  c.max_examples = run.max_examples;
  c.output = run.output_index;
  return c;
}

}  // namespace bayesq

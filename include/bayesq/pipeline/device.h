// The run context applied: --device parsed once per run into a torch::Device (the stages receive it in a Compute
// and never parse a name), and --threads set once per run for bayesq's pool and libtorch's.
#pragma once

#include <string>

#include <torch/script.h>

#include "bayesq/model/compute.h"
#include "bayesq/pipeline/config.h"

namespace bayesq {

// cpu, cuda, cuda:N, or auto (CUDA when present). `cuda` and `auto` without an index take GPU local_rank (the
// process's number on its node in a multi-process job, modulo the GPUs present; 0 otherwise). Throws
// UserError(usage) for an unknown name or CUDA asked for where none is available. Selecting CUDA also asks cuDNN
// for deterministic algorithms (same seed, same device: bit-identical results).
torch::Device parse_device(const std::string& name, int local_rank = 0);

// Applies the thread setting and parses the device: call once at the start of a subcommand.
Compute start_run(const RunContext& run, int local_rank = 0);

}  // namespace bayesq

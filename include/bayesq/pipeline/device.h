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
// for deterministic algorithms (same seed, same device: bit-identical results) and sets TF32 for cuDNN and cuBLAS
// to `tf32`. Note [TF32 off by default]: libtorch lets cuDNN convolutions round their inputs to TF32 (10-bit
// mantissa) unless told otherwise, and a measured table compares KLs near 1e-4 whose differences between options
// are smaller still: rounding noise of the float model's own size would decide the allocation. bayesq computes in
// full fp32 unless --tf32 is given (the benchmark in BENCHMARKS.md says what it costs).
//
// Note [No fusion on CUDA]: selecting CUDA also turns TorchScript's fuser (NNC, the profiling executor's) off for
// the process, as it is on the CPU by default. On CUDA the executor fuses elementwise operations of each new graph
// into kernels it generates and compiles, which round differently from the unfused operators. With
// --cached-prefix on, a measured table runs every option from a cached prefix, a new graph per block (Note [Cached
// prefix] in suffix_forward.h): with fusion its KLs were not those of the module's own forward (the allocation
// moved on ResNet-50) and each block paid a compilation. Without it every graph runs the same ATen operators in
// the same order, as on the CPU.
torch::Device parse_device(const std::string& name, int local_rank = 0, bool tf32 = false);

// Applies the thread setting and parses the device: call once at the start of a subcommand.
Compute start_run(const RunContext& run, int local_rank = 0);

}  // namespace bayesq

// Benchmark (issue: posterior): time of the Hutchinson calibration pass per example and probe, against the
// model's own forward + backward time per example on the same device.
//
//   bayesq_bench_calibration MODEL DATA [--device cuda] [--probes 8] [--batch-size 32] [--examples 256]
//                            [--estimator hutchinson|fisher] [--deterministic 1] [--cudnn-benchmark 0]
//                            [--grouped-convs auto|unfold|keep] [--tf32 0]
//
// --deterministic and --cudnn-benchmark set cuDNN's two switches after the device is chosen (bayesq itself runs
// deterministic without benchmarking: same seed, same file).
//
// Prints one JSON object. The forward + backward reference is the mean over the same batches of one forward and
// one backward of the summed logits to every block weight.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>

#include <ATen/Context.h>
#include <torch/torch.h>

#include "bayesq/calibrate/curvature.h"
#include "bayesq/data/data_file.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/forward.h"
#include "bayesq/model/model_file.h"
#include "bayesq/pipeline/device.h"

using namespace bayesq;

namespace {
void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: bayesq_bench_calibration MODEL DATA [--device D] [--probes P] [--batch-size B] [--examples N]\n";
    return 2;
  }
  CurvatureParams params;
  params.probes = 8;
  std::string device_name = "cpu";
  int64_t examples = 256;
  Compute compute;
  int deterministic = 1, cudnn_benchmark = 0, tf32 = 0;
  for (int i = 3; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--device") device_name = argv[i + 1];
    else if (key == "--probes") params.probes = std::atoll(argv[i + 1]);
    else if (key == "--batch-size") compute.batch_size = std::atoll(argv[i + 1]);
    else if (key == "--examples") examples = std::atoll(argv[i + 1]);
    else if (key == "--deterministic") deterministic = std::atoi(argv[i + 1]);
    else if (key == "--cudnn-benchmark") cudnn_benchmark = std::atoi(argv[i + 1]);
    else if (key == "--tf32") tf32 = std::atoi(argv[i + 1]);
    else if (key == "--grouped-convs") {
      const std::string name = argv[i + 1];
      if (name != "auto" && name != "unfold" && name != "keep") {
        std::cerr << "bayesq_bench_calibration: --grouped-convs takes auto, unfold or keep, not '" << name << "'\n";
        return 2;
      }
      params.grouped_convs = name == "unfold" ? CurvatureParams::GroupedConvs::unfold
                             : name == "keep" ? CurvatureParams::GroupedConvs::keep
                                              : CurvatureParams::GroupedConvs::automatic;
    } else if (key == "--estimator") {
      const std::string name = argv[i + 1];
      if (name != "hutchinson" && name != "fisher") {
        std::cerr << "bayesq_bench_calibration: --estimator takes hutchinson or fisher, not '" << name << "'\n";
        return 2;
      }
      params.estimator = name == "fisher" ? CurvatureEstimator::fisher : CurvatureEstimator::hutchinson;
    }
  }
  compute.max_examples = examples;
  compute.device = parse_device(device_name, 0, tf32 != 0);
  at::globalContext().setDeterministicCuDNN(deterministic != 0);
  at::globalContext().setBenchmarkCuDNN(cudnn_benchmark != 0);
  LoadedModel model = load_model(argv[1]);
  const BlockIndex index = discover_blocks(model.module);
  const DataFile data = DataFile::load(argv[2]);
  const torch::Device device = compute.device;
  model.module.eval();
  model.module.to(device);
  const int64_t n = std::min(examples, data.size());

  std::vector<torch::Tensor> weights;
  for (const auto& b : index.blocks) {
    weights.push_back(find_tensor(model.module, b.name));
    weights.back().set_requires_grad(true);
  }
  auto forward_backward = [&](int64_t begin, int64_t end) {
    const torch::Tensor out = select_output(forward_batch(model.module, data, begin, end, device, argv[1]), "");
    torch::autograd::grad({out.sum()}, weights, {}, false, false, true);
  };
  forward_backward(0, std::min(n, compute.batch_size));  // warm-up (the profiling executor compiles on first runs)
  forward_backward(0, std::min(n, compute.batch_size));
  synchronize(device);
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t begin = 0; begin < n; begin += compute.batch_size)
    forward_backward(begin, std::min(n, begin + compute.batch_size));
  synchronize(device);
  const double fb = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (auto& w : weights) w.set_requires_grad(false);

  Compute warm = compute;
  warm.max_examples = std::min(n, compute.batch_size);
  estimate_curvature(model.module, index, data, params, warm, argv[1]);
  synchronize(device);
  t0 = std::chrono::steady_clock::now();
  const CurvatureSet set = estimate_curvature(model.module, index, data, params, compute, argv[1]);
  synchronize(device);
  const double calibration = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const double per_fb = fb / double(n);
  const double per_example_probe = calibration / double(n * params.probes);
  std::cout << "{\"model\": \"" << argv[1] << "\", \"device\": \"" << device_description(device)
            << "\", \"examples\": " << n << ", \"probes\": " << params.probes << ", \"batch_size\": "
            << compute.batch_size << ", \"estimator\": \"" << set.estimator << "\", \"forward_backward_s\": " << fb
            << ", \"calibration_s\": " << calibration << ", \"forward_backward_per_example_ms\": " << 1e3 * per_fb
            << ", \"calibration_per_example_probe_ms\": " << 1e3 * per_example_probe
            << ", \"ratio\": " << per_example_probe / per_fb << ", \"deterministic\": " << deterministic
            << ", \"cudnn_benchmark\": " << cudnn_benchmark << ", \"tf32\": " << tf32 << ", \"grouped_convs\": \""
            << grouped_convs_name(params.grouped_convs) << "\", \"unfolded_convolutions\": " << set.unfolded_convolutions
            << "}" << std::endl;
  return 0;
}

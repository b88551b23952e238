// The forward that Hutchinson calibration differentiates twice, with 2-D grouped convolutions unfolded.
//
// Note [Grouped convolutions under double backward]: libtorch's double backward of a convolution with groups > 1
// (aten::_convolution_double_backward) loops over the groups, one small convolution (and transposed convolution)
// per group and term. A depthwise convolution has as many groups as channels: MobileNetV2 on a batch of 32
// Fashion-MNIST images made about 7,300 convolution calls and 460,000 tensor selects per Hutchinson probe
// (torch 1.13's autograd profiler on the CPU, 2026-12-01). On a GPU each call is a kernel launch with its
// descriptor set-up: the calibration that took ResNet-50 10.8 s took MobileNetV2, ten times smaller, 71 s (H100).
// The same convolution written as
//   cols = im2col(x)                             [N, groups, C_in/groups * kh * kw, L]
//   y    = W.view(groups, C_out/groups, C_in/groups * kh * kw) @ cols      (one batched matmul)
// is differentiated twice with a handful of batched operations whatever the number of groups (im2col's
// derivatives are col2im and im2col, a matmul's are matmuls); the profile then shows no convolution calls from
// those layers. Same values up to float rounding (the summation order differs: relative differences of 2e-5 in
// v.Hv on MobileNetV2 on a CPU; on an H200 2e-4 at most per block, or 1-3% where cuDNN computes the model's own
// depthwise convolutions in TF32, as it may by default), so the calibration estimates the same Hessian diagonal;
// only calibration uses it, every other stage runs the model's own forward. The same formulation in PyTorch 2.11
// on one H200 (bench/grouped_conv_hvp.py, batches of 32, 8 probes) took 7-9x less time for the Hutchinson pass,
// 2.6-2.8 forward + backward times per probe instead of 28-34 (this rewritten TorchScript graph itself has not
// run on a GPU yet: the session's device time ran out). On the 2-core CPU the two took the same time (MobileNetV2, 64 examples, 8 probes:
// 11.6-12.1 s unfolded, 11.8-13.3 s as it is), so CurvatureParams' automatic setting unfolds on GPUs only, and
// CPU results stay what they were. The cost is memory: the unfolded input, kh * kw times the layer's input, is kept
// for the second backward (lower --batch-size if a GPU runs out).
#pragma once

#include <memory>
#include <vector>

#include <torch/script.h>

namespace bayesq {

class UnfoldedConvForward {
 public:
  // `module`'s forward with every aten::conv2d / aten::_convolution (2-D, not transposed) whose groups is a
  // constant above one replaced as above. nullptr when the forward has none (or a graph this cannot copy).
  static std::unique_ptr<UnfoldedConvForward> build(const torch::jit::Module& module);
  ~UnfoldedConvForward();

  // forward(inputs) on the module the graph was built from (its current weights and attributes).
  torch::jit::IValue operator()(const torch::jit::Module& module, std::vector<torch::jit::IValue> inputs) const;
  int64_t unfolded() const { return unfolded_; }  // convolutions replaced

 private:
  UnfoldedConvForward() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t unfolded_ = 0;
};

}  // namespace bayesq

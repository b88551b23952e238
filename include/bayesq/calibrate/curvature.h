// Calibration: the diagonal curvature of every block on calibration data (METHOD.md §1), streamed batch by batch
// (device memory: the model plus one batch's activations for double backward).
//
// Curvature loss: `kl` (label-free, default): 1/N sum_n KL(p_theta_hat(.|x_n) || p_theta(.|x_n)) with p the
// softmax over the last output dimension; at theta_hat its Hessian is the generalised Gauss-Newton matrix.
// `ce`: mean cross-entropy against the file's labels. `mse`: 1/N sum_n 1/2 ||f_theta(x_n) - f_theta_hat(x_n)||^2,
// for outputs that are not class scores. `auto` is kl.
// Estimators:
//   hutchinson: d = 1/P sum_p v_p (.) H v_p, Rademacher v_p, Hv by double backward (Pearlmutter) from one
//               create_graph gradient per batch; per block the trace estimate sum_i v_i (Hv)_i gives the
//               standard error. Negative entries are clamped to 0 and counted.
//   fisher:     d = 1/N sum_n g_n (.) g_n, g_n = grad log p(y_n | x_n) with y_n drawn from the model's own
//               predictive (Monte-Carlo Fisher), one example per backward pass (exact per-example squares).
#pragma once

#include <string>

#include <torch/script.h>

#include "bayesq/calibrate/curvature_params.h"
#include "bayesq/data/data_file.h"
#include "bayesq/distributed/world.h"
#include "bayesq/index/block_index.h"
#include "bayesq/model/compute.h"
#include "bayesq/posterior/posterior.h"

namespace bayesq {

// Throws UserError(usage) on bad parameters (ce without labels, unknown names) and UserError(input) when the data
// does not fit the model. With a `world` of several processes each rank calibrates its share of the batches and
// every rank gets the whole set, the same as one process computes (Note [Calibration over several processes]).
//
// Note [Calibration without executor specialisation]: TorchScript's profiling executor runs a graph's first call
// as profiled and later calls as a graph specialised to the profiled shapes, with its own symbolic gradients
// (autodiff) in place of autograd's. Those round differently, so a calibration's diagonal depended on how often
// the model had run before in the process (of two equal calls, the second differed from the first by up to
// 1e-9; test Curvature.SameSeedIsBitIdenticalAndAnotherSeedIsNot). The calibration runs its forwards with the
// executor's optimisation off (a thread-local switch, restored on return): every call runs the same unoptimised
// graph and autograd differentiates it.
CurvatureSet estimate_curvature(torch::jit::Module& module, const BlockIndex& index, const DataFile& data,
                                const CurvatureParams& params, const Compute& compute,
                                const std::string& model_path, const World* world = nullptr);

}  // namespace bayesq

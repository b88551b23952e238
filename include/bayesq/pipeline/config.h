// The configuration of a run as one value: the run context (where and how it runs) and the method configuration
// (what changes the quantized model), each made of the stages' own ...Params structs, with one JSON form. The
// report's `config`, the session's cache keys and the `compare --resume` row key all come from to_json, so a
// field added to a Params struct and to its JSON here appears in all of them. Free of libtorch headers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bayesq/allocate/allocation.h"
#include "bayesq/index/block_index.h"
#include "bayesq/calibrate/curvature_params.h"
#include "bayesq/distill/distill_params.h"
#include "bayesq/gptq/gptq_params.h"
#include "bayesq/measure/measure_params.h"
#include "bayesq/pipeline/methods.h"
#include "bayesq/posterior/posterior.h"
#include "bayesq/table/loss_table.h"

namespace bayesq {

// Where and how a run executes. Every field but `threads` can change results (batching and the examples used
// change the statistics; the seed draws probes and labels; devices round differently).
struct RunContext {
  std::string device = "cpu";  // cpu | cuda | cuda:N | auto; parsed once per run into a torch::Device
  uint64_t seed = 0;
  int threads = 0;             // 0: all cores; applied once per run, to bayesq's pool and libtorch's
  int64_t batch_size = 32;     // calibration batches
  int64_t max_examples = 0;    // calibration examples used (0: all)
  std::string output_index;    // which model output is the logits
  double holdout = 0.125;      // calibration examples held out and scored (Note [Calibration split], session.h)
  int64_t measure_disjoint = 0;  // fit examples kept for measured tables only (0: tables use the fit examples)
  int dist_timeout = 300;      // seconds a process of a multi-process job waits for the others (distributed/world.h)
  std::string dist_backend = "auto";  // auto | gloo | store: what carries a job's exchanges (distributed/world.h)
  bool tf32 = false;           // CUDA: let cuDNN convolutions and cuBLAS products round inputs to TF32 (device.h)

  void validate() const;       // throws UserError(usage)
};

void to_json(nlohmann::json& j, const RunContext& r);
void from_json(const nlohmann::json& j, RunContext& r);

// Hutchinson probes per batch: the standard error falls as 1/sqrt(P), so past a few hundred more probes buy
// almost nothing and a typo (1e11) would run for days.
constexpr int64_t kMaxProbes = 4096;

struct MethodConfig {
  Method method = Method::bayesq;
  Curvature curvature = Curvature::automatic;  // resolved() picks the best the inputs allow
  CurvatureParams calibration;   // loss and probes; the estimator follows `curvature` (curvature_params())
  PosteriorParams posterior;     // damp: the diagonal prior precision, and K-FAC's damping
  LossTableParams table = default_table();  // candidates, codebook kinds, group size, posterior temperature
  TableLoss table_loss = TableLoss::measured;
  MeasureParams measure;
  AllocationParams allocation;   // allocator, certify, keep_fp, rules; bits_per_weight is set per budget
  JointParams joint;             // refinement of a measured table's allocation by the joint KL
  GptqParams gptq;               // GPTQ, and the error feedback of K-FAC
  bool sequential = true;        // gptq: each layer's inputs after the layers before it are quantized
  DistillParams distill = no_distill();

  const MethodVariant& variant() const { return method_variant(method, curvature); }
  std::string label() const;     // e.g. "bayesq (kfac, measured)", "gptq (act-order)"
  CurvatureParams curvature_params() const;

  // What a method reads of the configuration is fixed by its variant; resolved() also fixes what the inputs
  // allow: without calibration data a table cannot be measured, and HAWQ's table is always its own
  // trace-times-error with uniform grids.
  MethodConfig resolved(bool has_calibration, bool has_posterior = false) const;
  void validate() const;         // ranges; throws UserError(usage)

  static LossTableParams default_table();
  static DistillParams no_distill();
};

void to_json(nlohmann::json& j, const MethodConfig& c);
// The stage settings' own JSON forms, which MethodConfig's is made of (and the session's cache keys use).
void to_json(nlohmann::json& j, const CurvatureParams& p);
void to_json(nlohmann::json& j, const PosteriorParams& p);
void from_json(const nlohmann::json& j, MethodConfig& c);

// The curvature `automatic` stands for: K-FAC with calibration data, Hutchinson's diagonal from a saved posterior,
// data-free with neither.
Curvature default_curvature(bool has_calibration, bool has_posterior);

// The level scale the method's codebooks get on this model (Note [Gain-preserving codebooks]): as configured,
// and for `automatic` (every bayesq variant's default) unit energy on models that normalise each example
// (index.per_example_norms: a normalisation after a layer undoes most of its shrink, and the full gain correction
// adds error; BERT's data-free test KL at 3.031 bits: gain 0.0118, energy 0.0051, none 0.0062) and unit gain on
// the others (ResNet-50's data-free at 3.036 bits: gain 0.0182, energy 0.0655, none 0.388).
LevelScale effective_level_scale(const MethodConfig& c, const BlockIndex& index);

// The settings that change this method's result, and nothing else (rtn's key has no probes; gptq's no table):
// two runs whose keys and run contexts agree compute the same model. `compare --resume` keeps a row only then.
nlohmann::json result_key(const MethodConfig& c);
// The settings a loss table depends on (result_key without allocation and distillation): one table per key.
nlohmann::json table_key(const MethodConfig& c);

// variant[/modifier...][+distill] on top of `base` (methods.h). The variant sets the method (and a curvature
// modifier the curvature: `bayesq` alone keeps base's); `+distill` sets 500 distillation steps unless base has
// some, and *distilled says whether the spec had it (compare turns distillation off for specs without it).
// Throws UserError(usage) naming the spec on anything unknown or misplaced.
MethodConfig parse_method_spec(const MethodConfig& base, const std::string& spec, bool* distilled = nullptr);

}  // namespace bayesq

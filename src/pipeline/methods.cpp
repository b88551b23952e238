#include "bayesq/pipeline/methods.h"

#include "bayesq/common/errors.h"

namespace bayesq {

namespace {

constexpr Method kAll[] = {Method::rtn, Method::gptq, Method::hawq, Method::bayesq};
constexpr Curvature kCurvatures[] = {Curvature::automatic, Curvature::hutchinson, Curvature::fisher, Curvature::kfac,
                                     Curvature::data_free};
constexpr TableLoss kTableLosses[] = {TableLoss::expected, TableLoss::measured};

template <typename E, std::size_t N>
E from_name(const E (&all)[N], const char* (*name)(E), const std::string& text, const char* what) {
  std::string expected;
  for (E e : all) {
    if (text == name(e)) return e;
    expected += std::string(expected.empty() ? "" : ", ") + name(e);
  }
  BQ_FAIL(ExitCode::usage, "unknown ", what, " '", text, "' (expected ", expected, ")");
}

}  // namespace

const char* method_name(Method m) {
  switch (m) {
    case Method::rtn: return "rtn";
    case Method::gptq: return "gptq";
    case Method::hawq: return "hawq";
    case Method::bayesq: return "bayesq";
  }
  BQ_ASSERT(false, "unknown method");
}

const char* curvature_name(Curvature c) {
  switch (c) {
    case Curvature::automatic: return "auto";
    case Curvature::hutchinson: return "hutchinson";
    case Curvature::fisher: return "fisher";
    case Curvature::kfac: return "kfac";
    case Curvature::data_free: return "data-free";
  }
  BQ_ASSERT(false, "unknown curvature");
}

const char* table_loss_name(TableLoss t) { return t == TableLoss::measured ? "measured" : "expected"; }

const char* table_kind_name(TableKind t) {
  switch (t) {
    case TableKind::none: return "none";
    case TableKind::hawq_trace: return "hawq trace";
    case TableKind::posterior: return "posterior";
    case TableKind::kfac: return "kfac";
  }
  BQ_ASSERT(false, "unknown table kind");
}

Method method_from_name(const std::string& name) { return from_name(kAll, method_name, name, "method"); }
Curvature curvature_from_name(const std::string& name) {
  return from_name(kCurvatures, curvature_name, name, "curvature");
}
TableLoss table_loss_from_name(const std::string& name) {
  return from_name(kTableLosses, table_loss_name, name, "table loss");
}

const std::vector<MethodVariant>& method_variants() {
  //  spec            method          curvature              calib  bqp    curv   layer  whole  table
  static const std::vector<MethodVariant> rows = {
      {"rtn", Method::rtn, Curvature::hutchinson, false, false, false, false, true, TableKind::none,
       "round-to-nearest on a per-channel min-max grid; needs no data"},
      {"gptq", Method::gptq, Curvature::hutchinson, true, false, false, true, true, TableKind::none,
       "GPTQ: error feedback along the layer-input Hessian, min-max grid; layers in sequence unless --one-shot"},
      {"hawq", Method::hawq, Curvature::hutchinson, true, false, true, false, false, TableKind::hawq_trace,
       "HAWQ-style mixed precision: Hessian-trace x round-to-nearest error, same knapsack as bayesq"},
      {"bayesq", Method::bayesq, Curvature::automatic, false, true, false, false, false, TableKind::posterior,
       "the default: bayesq/kfac with --calib, bayesq/hutchinson with only --posterior, bayesq/data-free with "
       "neither"},
      {"bayesq/kfac", Method::bayesq, Curvature::kfac, true, false, false, true, false, TableKind::kfac,
       "BayesQ in the K-FAC metric: mixed precision from a measured table refined by the joint KL, GPTQ-style "
       "error feedback on the better of two grids per row; the lowest KL in BENCHMARKS.md (5-26x below GPTQ at "
       "its file size on MobileNetV2, ResNet-50 and BERT, 2-4 bits)"},
      {"bayesq/hutchinson", Method::bayesq, Curvature::hutchinson, true, true, true, false, false,
       TableKind::posterior,
       "the paper's method: diagonal Laplace posterior from Hutchinson probes, posterior-weighted codebooks, "
       "knapsack over a loss table (a saved --posterior can replace --calib); trails GPTQ in KL"},
      {"bayesq/fisher", Method::bayesq, Curvature::fisher, true, true, true, false, false, TableKind::posterior,
       "the paper's method with the Monte-Carlo Fisher diagonal instead of Hutchinson probes"},
      {"bayesq/data-free", Method::bayesq, Curvature::data_free, false, false, false, false, false,
       TableKind::posterior,
       "no calibration data: each weight's precision 1 / (its block's mean squared weight), expected-loss tables; "
       "--calib does better"},
  };
  return rows;
}

const MethodVariant& method_variant(Method m, Curvature c) {
  const MethodVariant* first = nullptr;
  for (const MethodVariant& v : method_variants()) {
    if (v.method != m) continue;
    if (v.curvature == c) return v;
    if (!first) first = &v;
  }
  BQ_ASSERT(first != nullptr, "no variant row for method ", method_name(m));
  return *first;  // rtn and gptq ignore the curvature; hawq with fisher is hawq's row
}

const std::vector<MethodModifier>& method_modifiers() {
  static const std::vector<MethodModifier> rows = {
      {"act", "act-order: columns by decreasing H_jj (GPTQ, and K-FAC's feedback)", {Method::gptq, Method::bayesq}},
      {"hutchinson", "diagonal curvature from Hutchinson probes (the default)", {Method::hawq, Method::bayesq}},
      {"fisher", "diagonal curvature from the Monte-Carlo Fisher", {Method::hawq, Method::bayesq}},
      {"kfac", "K-FAC metric with error feedback (the default with --calib)", {Method::bayesq}},
      {"data-free", "no calibration data: precision from the weights alone", {Method::bayesq}},
      {"lloyd", "only weighted Lloyd-Max codebooks", {Method::bayesq}},
      {"uniform", "only range-optimised uniform codebooks", {Method::bayesq}},
      {"tau1", "posterior temperature 1 (codebooks scored on the whole posterior)", {Method::bayesq}},
      {"gain", "levels scaled to unit gain, sum q w = sum w^2 (the default on models without layer/group/RMS norm)",
       {Method::bayesq}},
      {"energy", "levels scaled to the weights' energy, sum q^2 = sum w^2 (the default on models with them)",
       {Method::bayesq}},
      {"mse", "levels as the squared-error design leaves them (shrunk)", {Method::bayesq}},
      {"greedy", "the paper's max-heap allocator", {Method::hawq, Method::bayesq}},
      {"dp", "the exact knapsack (the default)", {Method::hawq, Method::bayesq}},
      {"measured", "measured loss table: N x calibration KL per entry (the default)", {Method::bayesq}},
      {"expected", "expected-loss table from the posterior alone, no forward passes", {Method::bayesq}},
  };
  return rows;
}

std::string methods_help() {
  std::string text = "A method is VARIANT[/MODIFIER...][+distill].\nVariants:\n";
  for (const MethodVariant& v : method_variants()) text += std::string("  ") + v.spec + ": " + v.help + "\n";
  text += "Modifiers:\n";
  for (const MethodModifier& m : method_modifiers()) {
    text += std::string("  ") + m.name + ": " + m.help + " (";
    for (std::size_t i = 0; i < m.methods.size(); ++i) text += std::string(i ? ", " : "") + method_name(m.methods[i]);
    text += ")\n";
  }
  text += "  +distill: 500 distillation steps (or --distill-steps) on the quantized model";
  return text;
}

}  // namespace bayesq

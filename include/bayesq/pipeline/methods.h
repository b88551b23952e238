// The methods bayesq runs, as one table (in the spirit of llama.cpp's QUANT_OPTIONS): the command-line parser, the
// --help of `quantize` and `compare`, the method-spec parser and the tests all read these rows, so a new method
// or modifier is one row here and nothing else to list. Free of libtorch headers.
//
// A method spec is variant[/modifier...][+distill], e.g. gptq/act, bayesq/kfac, bayesq/kfac/lloyd+distill. A
// variant is a row of method_variants(); `bayesq/kfac` is the variant bayesq with the curvature modifier kfac, so
// the same spec grammar serves `quantize --method` and `compare --methods`.
#pragma once

#include <string>
#include <vector>

namespace bayesq {

enum class Method { rtn, gptq, hawq, bayesq };
// The curvature behind bayesq's posterior: the diagonal from Hutchinson probes or the Monte-Carlo Fisher, the
// K-FAC metric with GPTQ-style error feedback, or none (data-free: a precision from the weights alone, Note
// [Data-free posterior] in posterior/posterior.h). `automatic`, the default, is the best the inputs allow
// (MethodConfig::resolved): K-FAC with calibration data, the saved posterior's diagonal with only --posterior,
// data-free with neither. HAWQ's trace sensitivity uses the diagonal estimators.
enum class Curvature { automatic, hutchinson, fisher, kfac, data_free };
// Where a loss table's entries come from: the posterior's expected-loss model, or N x the calibration KL with
// that one block quantized (Note [Measured tables] in measure/measured_table.h).
enum class TableLoss { expected, measured };
// How the allocator's table is built for a variant.
enum class TableKind {
  none,          // one bit-width for every block: no table, no allocation
  hawq_trace,    // HAWQ: trace(H_b)/n_b x round-to-nearest squared error
  posterior,     // bayesq, diagonal posterior: expected loss in the posterior metric, or measured
  kfac,          // bayesq, K-FAC: K-FAC metric after error feedback, or measured
};

const char* method_name(Method m);
const char* curvature_name(Curvature c);
const char* table_loss_name(TableLoss t);
const char* table_kind_name(TableKind t);
Method method_from_name(const std::string& name);        // throws UserError(usage)
Curvature curvature_from_name(const std::string& name);  // throws UserError(usage)
TableLoss table_loss_from_name(const std::string& name); // throws UserError(usage)

// What a variant needs, and what it does with a budget.
struct MethodVariant {
  const char* spec;            // as typed: "rtn", "bayesq/kfac"
  Method method;
  Curvature curvature;         // for bayesq and hawq; hutchinson (unused) for rtn and gptq
  bool needs_calibration;      // a calibration file (--calib) is required
  bool accepts_posterior;      // a saved posterior (--posterior, from `bayesq calibrate`) can replace --calib
  bool needs_curvature;        // the diagonal curvature (calibration pass with probes)
  bool needs_layer_stats;      // per-layer input moments (GPTQ's H, K-FAC's A and G)
  bool whole_bits;             // one whole bit-width (2..8) for every block, no allocation
  TableKind table;
  const char* help;
};

const std::vector<MethodVariant>& method_variants();
// The row of a (method, curvature) pair: rtn and gptq ignore the curvature.
const MethodVariant& method_variant(Method m, Curvature c);

// A modifier after '/' in a spec. Its effect on a MethodConfig is applied by parse_method_spec (method_config.h).
struct MethodModifier {
  const char* name;
  const char* help;
  std::vector<Method> methods; // the methods it applies to; another is a usage error
};
const std::vector<MethodModifier>& method_modifiers();

// Help text generated from the tables: every variant with its help line, every modifier, and the distillation
// suffix. One text for `quantize --method` and `compare --methods`.
std::string methods_help();

}  // namespace bayesq

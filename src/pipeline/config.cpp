#include "bayesq/pipeline/config.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "bayesq/common/errors.h"

namespace bayesq {

namespace {

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, separator);) out.push_back(part);
  if (!text.empty() && text.back() == separator) out.push_back("");
  return out;
}

nlohmann::json rules_json(const std::vector<BitsRule>& rules) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : rules) out.push_back({{"pattern", r.pattern}, {"min_bits", r.min_bits}, {"max_bits", r.max_bits}});
  return out;
}

std::vector<BitsRule> rules_from_json(const nlohmann::json& j) {
  std::vector<BitsRule> out;
  for (const auto& r : j) out.push_back({r.at("pattern").get<std::string>(), r.at("min_bits").get<int>(), r.at("max_bits").get<int>()});
  return out;
}

}  // namespace

void RunContext::validate() const {
  BQ_CHECK(batch_size > 0, ExitCode::usage, "--batch-size must be positive");
  BQ_CHECK(max_examples >= 0, ExitCode::usage, "--max-examples must be >= 0 (0: all)");
  BQ_CHECK(threads >= 0, ExitCode::usage, "--threads must be >= 0 (0: all cores)");
  BQ_CHECK(holdout >= 0.0 && holdout <= 0.5, ExitCode::usage, "--holdout must be in [0, 0.5]");
  BQ_CHECK(measure_disjoint >= 0, ExitCode::usage, "--measure-disjoint must be >= 0 (0: off)");
  BQ_CHECK(dist_timeout > 0 && dist_timeout <= 86400, ExitCode::usage, "--dist-timeout must be in [1, 86400] seconds");
  BQ_CHECK(dist_backend == "auto" || dist_backend == "gloo" || dist_backend == "store", ExitCode::usage,
           "unknown --dist-backend '", dist_backend, "' (expected auto, gloo or store)");
}

void to_json(nlohmann::json& j, const RunContext& r) {
  j = nlohmann::json{{"device", r.device},         {"seed", r.seed},
                     {"threads", r.threads},       {"batch_size", r.batch_size},
                     {"max_examples", r.max_examples}, {"output_index", r.output_index},
                     {"holdout", r.holdout},       {"measure_disjoint", r.measure_disjoint},
                     {"dist_timeout", r.dist_timeout}, {"dist_backend", r.dist_backend},
                     {"tf32", r.tf32}};
}

void from_json(const nlohmann::json& j, RunContext& r) {
  r = RunContext{};
  r.device = j.value("device", r.device);
  r.seed = j.value("seed", r.seed);
  r.threads = j.value("threads", r.threads);
  r.batch_size = j.value("batch_size", r.batch_size);
  r.max_examples = j.value("max_examples", r.max_examples);
  r.output_index = j.value("output_index", r.output_index);
  r.holdout = j.value("holdout", r.holdout);
  r.measure_disjoint = j.value("measure_disjoint", r.measure_disjoint);
  r.dist_timeout = j.value("dist_timeout", r.dist_timeout);
  r.dist_backend = j.value("dist_backend", r.dist_backend);
  r.tf32 = j.value("tf32", r.tf32);
}

LossTableParams MethodConfig::default_table() {
  LossTableParams t;
  t.candidates = {1, 2, 3, 4, 5, 6, 8};  // 1 bit included so budgets near 2.0 stay feasible with metadata
  t.kinds = {CodebookKind::lloyd, CodebookKind::uniform_asymmetric};
  return t;
}

DistillParams MethodConfig::no_distill() {
  DistillParams d;
  d.steps = 0;
  return d;
}

CurvatureParams MethodConfig::curvature_params() const {
  CurvatureParams p = calibration;
  p.estimator = curvature == Curvature::fisher ? CurvatureEstimator::fisher : CurvatureEstimator::hutchinson;
  return p;
}

std::string MethodConfig::label() const {
  const std::string measured = table_loss == TableLoss::measured ? ", measured" : "";
  if (method == Method::gptq) return gptq.act_order ? "gptq (act-order)" : "gptq";
  if (method == Method::bayesq) {
    std::string label = "bayesq (" + std::string(curvature == Curvature::hutchinson ? "diag" : curvature_name(curvature));
    if (table.kinds.size() == 1) label += std::string(", ") + codebook_kind_name(table.kinds[0]);
    if (table.quantizer.tau > 0) label += ", tau " + std::to_string(table.quantizer.tau).substr(0, 4);
    if (allocation.allocator == AllocatorKind::greedy) label += ", greedy";
    return label + measured + ")";
  }
  return method_name(method);
}

Curvature default_curvature(bool has_calibration, bool has_posterior) {
  if (has_calibration) return Curvature::kfac;  // the lowest KL measured (BENCHMARKS.md)
  return has_posterior ? Curvature::hutchinson : Curvature::data_free;
}

LevelScale effective_level_scale(const MethodConfig& c, const BlockIndex& index) {
  const LevelScale scale = c.table.quantizer.level_scale;
  if (scale != LevelScale::automatic) return scale;
  return index.per_example_norms.empty() ? LevelScale::gain : LevelScale::energy;
}

MethodConfig MethodConfig::resolved(bool has_calibration, bool has_posterior) const {
  MethodConfig c = *this;
  if (c.curvature == Curvature::automatic)
    c.curvature = c.method == Method::bayesq ? default_curvature(has_calibration, has_posterior) : Curvature::hutchinson;
  // A measured table runs the model on calibration data; with only a saved posterior (--posterior, no --calib)
  // the expected-loss model is what there is, and data-free means no data at all.
  if (!has_calibration || c.curvature == Curvature::data_free) c.table_loss = TableLoss::expected;
  // bayesq keeps `automatic` for effective_level_scale to settle on the model; the baselines design no codebooks.
  LevelScale& scale = c.table.quantizer.level_scale;
  if (scale == LevelScale::automatic && c.method != Method::bayesq) scale = LevelScale::none;
  if (c.method == Method::hawq) {  // HAWQ is defined by its trace-times-error sensitivity: never a measured table
    c.table.kinds = {CodebookKind::uniform_asymmetric};
    c.table_loss = TableLoss::expected;
  }
  return c;
}

void MethodConfig::validate() const {
  BQ_CHECK(table.quantizer.group_size >= 0, ExitCode::usage, "--group-size must be >= 0 (0: one codebook per row)");
  BQ_CHECK(posterior.damp >= 0.0, ExitCode::usage, "--damp must be >= 0");
  BQ_CHECK(gptq.percdamp >= 0.0, ExitCode::usage, "--percdamp must be >= 0");
  BQ_CHECK(gptq.block_size >= 1, ExitCode::usage, "--gptq-block-size must be >= 1");
  BQ_CHECK(table.quantizer.tau >= 0.0 && table.quantizer.tau <= 1.0, ExitCode::usage,
           "--posterior-temp must be in [0, 1]");
  BQ_CHECK(calibration.probes >= 1 && calibration.probes <= kMaxProbes, ExitCode::usage, "--probes must be in 1..",
           kMaxProbes);
  BQ_CHECK(!table.candidates.empty(), ExitCode::usage, "--candidates must name at least one bit-width");
  for (int b : table.candidates)
    BQ_CHECK(b >= kMinBits && b <= kMaxBits, ExitCode::usage, "--candidates: ", b, " is outside ", kMinBits, "..",
             kMaxBits);
  BQ_CHECK(joint.rounds >= 0 && joint.rounds <= 16, ExitCode::usage, "--joint-rounds must be in 0..16");
  BQ_CHECK(joint.window >= 1 && joint.window <= kMaxBits, ExitCode::usage, "--joint-window must be in 1..", kMaxBits);
  BQ_CHECK(joint.threshold >= 0.0 && std::isfinite(joint.threshold), ExitCode::usage,
           "--joint-threshold must be a finite number >= 0 (0: always refine)");
  BQ_CHECK(measure.prefilter_window >= -1 && measure.prefilter_window <= kMaxBits, ExitCode::usage,
           "--prefilter-window must be -1 (off) or in 0..", kMaxBits);
  BQ_CHECK(distill.steps >= 0, ExitCode::usage, "--distill-steps must be >= 0");
  if (distill.steps > 0) {
    BQ_CHECK(distill.lr > 0.0, ExitCode::usage, "--distill-lr must be positive");
    BQ_CHECK(distill.teacher_samples >= 1, ExitCode::usage, "--teacher-samples must be >= 1");
    BQ_CHECK(distill.teacher_samples == 1 ||
                 (method == Method::bayesq && (curvature == Curvature::hutchinson || curvature == Curvature::fisher)),
             ExitCode::usage,
             "--teacher-samples > 1 samples the diagonal posterior: use --method bayesq with hutchinson or fisher");
    BQ_CHECK(distill.holdout >= 0.0 && distill.holdout < 1.0, ExitCode::usage, "--distill-holdout must be in [0, 1)");
    BQ_CHECK(distill.eval_every >= 1, ExitCode::usage, "--distill-eval-every must be >= 1");
  }
}

void to_json(nlohmann::json& j, const CurvatureParams& p) {
  j = nlohmann::json{{"estimator", curvature_estimator_name(p.estimator)}, {"loss", p.loss}, {"probes", p.probes},
                     {"grouped_convs", grouped_convs_name(p.grouped_convs)}};
}

void to_json(nlohmann::json& j, const PosteriorParams& p) { j = nlohmann::json{{"damp", p.damp}}; }

void to_json(nlohmann::json& j, const MethodConfig& c) {
  std::vector<std::string> kinds;
  for (CodebookKind k : c.table.kinds) kinds.push_back(codebook_kind_name(k));
  j = nlohmann::json{
      {"label", c.label()},
      {"method", method_name(c.method)},
      {"curvature", curvature_name(c.curvature)},
      {"calibration", c.curvature_params()},  // the estimator as `curvature` implies it
      {"posterior", c.posterior},
      {"table",
       {{"candidates", c.table.candidates},
        {"codebooks", kinds},
        {"group_size", c.table.quantizer.group_size},
        {"posterior_temp", c.table.quantizer.tau},
        {"level_scale", level_scale_name(c.table.quantizer.level_scale)},
        {"loss", table_loss_name(c.table_loss)},
        {"measure_examples", c.measure.examples},
        {"prefilter_window", c.measure.prefilter_window}}},
      {"allocation",
       {{"allocator", allocator_kind_name(c.allocation.allocator)},
        {"certify", c.allocation.certify},
        {"keep_fp", c.allocation.keep_fp},
        {"rules", rules_json(c.allocation.rules)},
        {"joint_rounds", c.joint.rounds},
        {"joint_window", c.joint.window},
        {"joint_threshold", c.joint.threshold}}},
      {"gptq",
       {{"percdamp", c.gptq.percdamp},
        {"act_order", c.gptq.act_order},
        {"block_size", c.gptq.block_size},
        {"max_damp_steps", c.gptq.max_damp_steps},
        {"sequential", c.sequential}}},
      {"distill",
       {{"steps", c.distill.steps},
        {"lr", c.distill.lr},
        {"teacher_samples", c.distill.teacher_samples},
        {"holdout", c.distill.holdout},
        {"eval_every", c.distill.eval_every}}}};
}

void from_json(const nlohmann::json& j, MethodConfig& c) {
  c = MethodConfig{};
  c.method = method_from_name(j.at("method").get<std::string>());
  c.curvature = curvature_from_name(j.at("curvature").get<std::string>());
  const auto& cal = j.at("calibration");
  c.calibration.loss = cal.at("loss").get<std::string>();
  c.calibration.probes = cal.at("probes").get<int64_t>();
  c.posterior.damp = j.at("posterior").at("damp").get<double>();
  const auto& t = j.at("table");
  c.table.candidates = t.at("candidates").get<std::vector<int>>();
  c.table.kinds.clear();
  for (const auto& k : t.at("codebooks")) c.table.kinds.push_back(codebook_kind_from_name(k.get<std::string>()));
  c.table.quantizer.group_size = t.at("group_size").get<int64_t>();
  c.table.quantizer.tau = t.at("posterior_temp").get<double>();
  // A JSON from before the level scale existed describes unscaled codebooks.
  c.table.quantizer.level_scale = level_scale_from_name(t.value("level_scale", std::string("none")));
  c.table_loss = table_loss_from_name(t.at("loss").get<std::string>());
  c.measure.examples = t.at("measure_examples").get<int64_t>();
  c.measure.prefilter_window = t.value("prefilter_window", -1);  // before the prefilter: every option measured
  const auto& a = j.at("allocation");
  c.allocation.allocator = allocator_kind_from_name(a.at("allocator").get<std::string>());
  c.allocation.certify = a.at("certify").get<bool>();
  c.allocation.keep_fp = a.at("keep_fp").get<std::vector<std::string>>();
  c.allocation.rules = rules_from_json(a.at("rules"));
  c.joint.rounds = a.at("joint_rounds").get<int>();
  c.joint.window = a.at("joint_window").get<int>();
  c.joint.threshold = a.value("joint_threshold", 0.0);  // before the threshold: rounds always ran
  const auto& g = j.at("gptq");
  c.gptq.percdamp = g.at("percdamp").get<double>();
  c.gptq.act_order = g.at("act_order").get<bool>();
  c.gptq.block_size = g.at("block_size").get<int64_t>();
  c.gptq.max_damp_steps = g.at("max_damp_steps").get<int>();
  c.sequential = g.at("sequential").get<bool>();
  const auto& d = j.at("distill");
  c.distill.steps = d.at("steps").get<int64_t>();
  c.distill.lr = d.at("lr").get<double>();
  c.distill.teacher_samples = d.at("teacher_samples").get<int64_t>();
  c.distill.holdout = d.at("holdout").get<double>();
  c.distill.eval_every = d.at("eval_every").get<int64_t>();
}

nlohmann::json result_key(const MethodConfig& c) {
  nlohmann::json j = c;
  j.erase("label");
  const MethodVariant& v = c.variant();
  if (!v.needs_curvature) j.erase("calibration");
  if (c.method != Method::bayesq) j.erase("posterior");  // K-FAC's damping is the posterior's damp
  if (v.whole_bits) {
    // One bit-width everywhere: of the table settings only the grid granularity, of the allocation only the
    // blocks kept in floating point.
    j["table"] = {{"group_size", c.table.quantizer.group_size}};
    j["allocation"] = {{"keep_fp", c.allocation.keep_fp}};
  } else if (c.table_loss != TableLoss::measured) {
    j["table"].erase("measure_examples");
    j["table"].erase("prefilter_window");
    j["allocation"].erase("joint_rounds");  // the joint refinement needs a measured table
    j["allocation"].erase("joint_window");
    j["allocation"].erase("joint_threshold");
  } else if (c.joint.rounds == 0) {
    j["allocation"].erase("joint_window");
    j["allocation"].erase("joint_threshold");
  }
  if (j.contains("table") && v.table != TableKind::kfac) j["table"].erase("prefilter_window");  // K-FAC tables only
  if (!v.needs_layer_stats) j.erase("gptq");
  else if (c.method != Method::gptq) j["gptq"].erase("sequential");  // K-FAC's feedback is one-shot
  if (c.method == Method::rtn || c.method == Method::gptq) j.erase("curvature");
  if (c.distill.steps == 0) j["distill"] = {{"steps", 0}};
  return j;
}

nlohmann::json table_key(const MethodConfig& c) {
  nlohmann::json j = result_key(c);
  j.erase("allocation");
  j.erase("distill");
  return j;
}

MethodConfig parse_method_spec(const MethodConfig& base, const std::string& spec, bool* distilled) {
  MethodConfig c = base;
  const std::vector<std::string> distill_parts = split(spec, '+');
  BQ_CHECK(!distill_parts.empty() && distill_parts.size() <= 2, ExitCode::usage, "bad method '", spec, "'");
  const bool distill = distill_parts.size() == 2;
  if (distill) {
    BQ_CHECK(distill_parts[1] == "distill", ExitCode::usage, "bad method '", spec, "' (only +distill follows)");
    if (c.distill.steps == 0) c.distill.steps = 500;
  }
  if (distilled) *distilled = distill;
  const std::vector<std::string> parts = split(distill_parts[0], '/');
  BQ_CHECK(!parts.empty(), ExitCode::usage, "bad method '", spec, "'");
  std::string bases;
  bool known = false;
  for (Method m : {Method::rtn, Method::gptq, Method::hawq, Method::bayesq}) {
    bases += std::string(bases.empty() ? "" : ", ") + method_name(m);
    known = known || parts[0] == method_name(m);
  }
  BQ_CHECK(known, ExitCode::usage, "unknown method '", parts[0], "' in '", spec, "' (expected ", bases, ")");
  c.method = method_from_name(parts[0]);
  for (std::size_t i = 1; i < parts.size(); ++i) {
    const std::string& m = parts[i];
    const auto row = std::find_if(method_modifiers().begin(), method_modifiers().end(),
                                  [&](const MethodModifier& r) { return m == r.name; });
    BQ_CHECK(row != method_modifiers().end(), ExitCode::usage, "unknown modifier '", m, "' in method '", spec, "'");
    BQ_CHECK(std::find(row->methods.begin(), row->methods.end(), c.method) != row->methods.end(), ExitCode::usage,
             "modifier '", m, "' does not apply to ", method_name(c.method), " (in method '", spec, "')");
    if (m == "act") c.gptq.act_order = true;
    else if (m == "hutchinson" || m == "fisher" || m == "kfac" || m == "data-free") c.curvature = curvature_from_name(m);
    else if (m == "lloyd") c.table.kinds = {CodebookKind::lloyd};
    else if (m == "uniform") c.table.kinds = {CodebookKind::uniform_asymmetric};
    else if (m == "tau1") c.table.quantizer.tau = 1.0;
    else if (m == "mse") c.table.quantizer.level_scale = LevelScale::none;
    else if (m == "gain" || m == "energy") c.table.quantizer.level_scale = level_scale_from_name(m);
    else if (m == "greedy" || m == "dp") c.allocation.allocator = allocator_kind_from_name(m);
    else if (m == "measured" || m == "expected") c.table_loss = table_loss_from_name(m);
    else BQ_ASSERT(false, "modifier row '", m, "' has no effect written in parse_method_spec");
  }
  return c;
}

}  // namespace bayesq

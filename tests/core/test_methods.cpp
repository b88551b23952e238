// The method table and the configuration value: every row parses, every modifier is checked against the methods
// it applies to, the JSON form round-trips, and the result key changes exactly when a setting the method reads
// changes.
#include <gtest/gtest.h>

#include <algorithm>

#include "bayesq/common/errors.h"
#include "bayesq/pipeline/config.h"

using namespace bayesq;

TEST(Methods, EveryVariantRowParsesToItself) {
  for (const MethodVariant& v : method_variants()) {
    const MethodConfig c = parse_method_spec(MethodConfig{}, v.spec);
    EXPECT_EQ(c.method, v.method) << v.spec;
    EXPECT_EQ(&c.variant(), &v) << v.spec << " resolves to another row";
    bool distilled = true;
    const MethodConfig d = parse_method_spec(MethodConfig{}, std::string(v.spec) + "+distill", &distilled);
    EXPECT_TRUE(distilled);
    EXPECT_EQ(d.distill.steps, 500) << v.spec;
  }
}

TEST(Methods, ModifiersApplyToTheirMethodsOnly) {
  for (const MethodModifier& m : method_modifiers())
    for (Method method : {Method::rtn, Method::gptq, Method::hawq, Method::bayesq}) {
      const std::string spec = std::string(method_name(method)) + "/" + m.name;
      const bool applies = std::find(m.methods.begin(), m.methods.end(), method) != m.methods.end();
      if (applies) {
        EXPECT_NO_THROW(parse_method_spec(MethodConfig{}, spec)) << spec;
      } else {
        EXPECT_THROW(parse_method_spec(MethodConfig{}, spec), UserError) << spec;
      }
    }
  for (const char* bad : {"", "bayes", "bayesq/", "bayesq/nope", "gptq+distill+distill", "rtn+more", "kfac"})
    EXPECT_THROW(parse_method_spec(MethodConfig{}, bad), UserError) << "'" << bad << "'";
}

TEST(Methods, ModifiersHaveTheirEffect) {
  const MethodConfig c = parse_method_spec(MethodConfig{}, "bayesq/kfac/lloyd/tau1/greedy/expected/act");
  EXPECT_EQ(c.curvature, Curvature::kfac);
  EXPECT_EQ(c.table.kinds, std::vector<CodebookKind>{CodebookKind::lloyd});
  EXPECT_EQ(c.table.quantizer.tau, 1.0);
  EXPECT_EQ(c.allocation.allocator, AllocatorKind::greedy);
  EXPECT_EQ(c.table_loss, TableLoss::expected);
  EXPECT_TRUE(c.gptq.act_order);
  // A bare variant keeps the base's curvature: `quantize --method bayesq --curvature kfac` is K-FAC.
  MethodConfig base;
  base.curvature = Curvature::kfac;
  EXPECT_EQ(parse_method_spec(base, "bayesq").curvature, Curvature::kfac);
  // Distillation steps from the base survive +distill, and a spec without it leaves them alone.
  base.distill.steps = 20;
  bool distilled = true;
  EXPECT_EQ(parse_method_spec(base, "bayesq+distill").distill.steps, 20);
  EXPECT_EQ(parse_method_spec(base, "bayesq", &distilled).distill.steps, 20);
  EXPECT_FALSE(distilled);
}

TEST(Methods, HelpNamesEveryVariantAndModifier) {
  const std::string help = methods_help();
  for (const MethodVariant& v : method_variants()) EXPECT_NE(help.find(v.spec), std::string::npos) << v.spec;
  for (const MethodModifier& m : method_modifiers()) EXPECT_NE(help.find(m.name), std::string::npos) << m.name;
}

TEST(Config, JsonRoundTripsEveryField) {
  MethodConfig c = parse_method_spec(MethodConfig{}, "bayesq/fisher/uniform/greedy/expected");
  c.calibration.loss = "mse";
  c.calibration.probes = 3;
  c.posterior.damp = 0.05;
  c.table.candidates = {2, 4};
  c.table.quantizer.group_size = 64;
  c.measure.examples = 17;
  c.allocation.certify = true;
  c.allocation.keep_fp = {"^fc"};
  c.allocation.rules = {BitsRule{"stem", 4, 8}};
  c.gptq.percdamp = 0.1;
  c.gptq.block_size = 32;
  c.sequential = false;
  c.distill.steps = 7;
  c.distill.lr = 0.5;
  const nlohmann::json j = c;
  const MethodConfig back = j.get<MethodConfig>();
  EXPECT_EQ(nlohmann::json(back), j);
  RunContext r;
  r.device = "cuda:1";
  r.seed = 9;
  r.batch_size = 7;
  r.max_examples = 100;
  r.output_index = "logits";
  r.tf32 = true;
  const nlohmann::json rj = r;
  EXPECT_TRUE(rj.get<RunContext>().tf32);
  EXPECT_EQ(nlohmann::json(rj.get<RunContext>()), rj);
}

TEST(Config, ResultKeyChangesExactlyWithTheSettingsAMethodReads) {
  auto key = [](const std::string& spec, void (*change)(MethodConfig&)) {
    MethodConfig c = parse_method_spec(MethodConfig{}, spec).resolved(true);  // as compare resolves its rows
    const nlohmann::json before = result_key(c);
    change(c);
    return before != result_key(c);
  };
  auto probes = [](MethodConfig& c) { c.calibration.probes = 3; };
  auto measure = [](MethodConfig& c) { c.measure.examples = 7; };
  auto distill_lr = [](MethodConfig& c) { c.distill.lr = 0.5; };
  auto percdamp = [](MethodConfig& c) { c.gptq.percdamp = 0.5; };
  auto group = [](MethodConfig& c) { c.table.quantizer.group_size = 32; };
  EXPECT_FALSE(key("rtn", probes));
  EXPECT_FALSE(key("gptq", probes));
  EXPECT_TRUE(key("hawq", probes));
  EXPECT_TRUE(key("bayesq/hutchinson", probes));
  EXPECT_FALSE(key("bayesq/kfac", probes));
  EXPECT_FALSE(key("bayesq/data-free", probes));
  EXPECT_FALSE(key("bayesq/data-free", measure));  // data-free tables are never measured (resolved())
  EXPECT_FALSE(key("rtn", measure));
  EXPECT_TRUE(key("bayesq", measure));
  EXPECT_FALSE(key("bayesq/expected", measure));
  EXPECT_FALSE(key("bayesq", distill_lr));
  EXPECT_TRUE(key("bayesq+distill", distill_lr));
  EXPECT_TRUE(key("gptq", percdamp));
  EXPECT_TRUE(key("bayesq/kfac", percdamp));
  EXPECT_FALSE(key("bayesq/hutchinson", percdamp));
  for (const MethodVariant& v : method_variants()) EXPECT_TRUE(key(v.spec, group)) << v.spec;
}

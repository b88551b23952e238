// Multi-process jobs (issue 18): bayesq started as torchrun or srun start it, with the launch variables set here,
// on the quickstart CNN. Two processes must write what one writes; a killed process must make the other fail
// with the documented code, one line and no output, within --dist-timeout.
#include <chrono>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "cli_helpers.h"

using namespace bayesq_cli_test;

namespace {

// A port for this test process's jobs (ctest runs tests in parallel; each job gets its own).
int job_port(int job) { return 21000 + static_cast<int>(::getpid() % 20000) + job; }

struct RankResult {
  int code = -1;
  std::string out, err;
};

// Starts `ranks` processes of `bayesq ARGS` with the launch variables `style` uses ("torchrun": RANK, WORLD_SIZE,
// LOCAL_RANK; "slurm": as srun sets them in a step's tasks; both with MASTER_ADDR and MASTER_PORT), rank r
// behind `prefix[r]` (e.g. "timeout -s KILL 2": rank r is killed after 2 s), and waits for all of them.
std::vector<RankResult> run_job(const std::string& args, int ranks, int port, const std::string& style,
                                const std::vector<std::string>& prefix = {}) {
  std::string script;
  for (int r = ranks - 1; r >= 0; --r) {
    const std::string tag = scratch("rank" + std::to_string(r));
    std::string vars = "MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " ";
    if (style == "torchrun")
      vars += "WORLD_SIZE=" + std::to_string(ranks) + " RANK=" + std::to_string(r) + " LOCAL_RANK=" + std::to_string(r);
    else
      vars += "SLURM_NTASKS=" + std::to_string(ranks) + " SLURM_STEP_NUM_TASKS=" + std::to_string(ranks) +
              " SLURM_PROCID=" + std::to_string(r) + " SLURM_LOCALID=" + std::to_string(r);
    const std::string before = r < static_cast<int>(prefix.size()) ? prefix[static_cast<std::size_t>(r)] + " " : "";
    // The prefix goes right before bayesq: a `timeout -s KILL` around another timeout would kill only that one.
    script += "( env " + vars + " timeout 300 " + before + BAYESQ_BINARY + " " + args + " > " + tag + ".out 2> " +
              tag + ".err; echo $? > " + tag + ".code ) & ";
  }
  script += "wait";
  EXPECT_EQ(std::system(("sh -c '" + script + "'").c_str()), 0) << script;
  std::vector<RankResult> out(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) {
    const std::string tag = scratch("rank" + std::to_string(r));
    out[static_cast<std::size_t>(r)].code = std::atoi(slurp(tag + ".code").c_str());
    out[static_cast<std::size_t>(r)].out = slurp(tag + ".out");
    out[static_cast<std::size_t>(r)].err = slurp(tag + ".err");
  }
  return out;
}

std::string quickstart(const std::string& output, const std::string& report, const std::string& bits = "3.0") {
  return "quantize --model " + fixture("quickstart_cnn.pt") + " --calib " + fixture("quickstart_calib.pt") +
         " --bits " + bits + " --threads 1 -o " + output + " --report " + report;
}

}  // namespace

// Two budgets from one calibration (a job array's usual task): each file as one process writes it.
TEST(Distributed, TwoProcessesWriteWhatOneProcessWrites) {
  const std::vector<std::string> budgets = {"2.5", "3"};  // as output_name spells them in {bits}
  // The joint refinement's rounds run whatever the additive allocation's KL, so that their split is tested too
  // (the other tests here take the default, whose rounds this fixture skips: each process decides alike).
  const std::string always = " --joint-threshold 0";
  const Result one = run(quickstart(scratch("one-{bits}.pt"), scratch("one-{bits}.json"), "2.5,3.0") + always);
  ASSERT_EQ(one.code, 0) << one.err;
  int job = 0;
  // "store": torchrun's variables with the exchanges through the TCPStore (what builds without Gloo use).
  for (const std::string style : {"torchrun", "slurm", "store"}) {
    SCOPED_TRACE(style);
    const std::string extra = style == "store" ? " --dist-backend store" : "";
    const std::vector<RankResult> ranks = run_job(
        quickstart(scratch("two_" + style + "-{bits}.pt"), scratch("two_" + style + "-{bits}.json"), "2.5,3.0") +
            always + extra,
        2, job_port(job++), style == "slurm" ? "slurm" : "torchrun");
    for (const RankResult& r : ranks) EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_TRUE(ranks[1].out.empty()) << "rank 1 printed: " << ranks[1].out;  // rank 0 reports
    for (const std::string& bits : budgets) {
      SCOPED_TRACE(bits);
      const std::string output = scratch("two_" + style + "-" + bits + ".pt");
      ASSERT_TRUE(fs::exists(output));
      EXPECT_EQ(slurp(output), slurp(scratch("one-" + bits + ".pt")))
          << "the two-process file differs from the one-process file";
      const nlohmann::json a = nlohmann::json::parse(slurp(scratch("one-" + bits + ".json")));
      const nlohmann::json b = nlohmann::json::parse(slurp(scratch("two_" + style + "-" + bits + ".json")));
      EXPECT_FALSE(a.contains("distributed"));
      ASSERT_EQ(a["blocks"].size(), b["blocks"].size());
      for (std::size_t i = 0; i < a["blocks"].size(); ++i) {
        EXPECT_EQ(a["blocks"][i]["bits"], b["blocks"][i]["bits"]) << i;
        EXPECT_EQ(a["blocks"][i]["kind"], b["blocks"][i]["kind"]) << i;
      }
      EXPECT_NEAR(a["joint_calibration_kl"]["measured"].get<double>(),
                  b["joint_calibration_kl"]["measured"].get<double>(), 1e-6);
      // The joint refinement's trials are split too: every round's prediction (from the gathered trials), change
      // and forward count as one process has them.
      EXPECT_EQ(a["joint_calibration_kl"]["refinement"], b["joint_calibration_kl"]["refinement"]);
      ASSERT_FALSE(b["joint_calibration_kl"]["refinement"]["rounds"].empty());
      const nlohmann::json& d = b["distributed"];
      ASSERT_TRUE(d.is_object()) << b.dump();
      EXPECT_EQ(d["world_size"], 2);
      if (style == "store") EXPECT_EQ(d["exchange"], "store");
      else EXPECT_TRUE(d["exchange"] == "gloo" || d["exchange"] == "store") << d;
      const auto blocks = d["measured_table_blocks_per_rank"].get<std::vector<int64_t>>();
      ASSERT_EQ(blocks.size(), 2u);
      EXPECT_GT(blocks[0], 0);
      EXPECT_GT(blocks[1], 0);
      EXPECT_EQ(blocks[0] + blocks[1], static_cast<int64_t>(a["blocks"].size()));
      EXPECT_EQ(d["measured_table_seconds_per_rank"].size(), 2u);
    }
  }
}

// Rank 1 is killed after 1.5 s (SIGKILL, while it measures its blocks: before the exchange); rank 0 must fail with
// exit code 6 and one line, write nothing, and do so within its --dist-timeout (plus its own work). With the
// store a dead client is only noticed by the timeout: a shorter one keeps the test short.
namespace {
void expect_killed_rank_fails_the_job(const std::string& backend, int timeout, int port) {
  SCOPED_TRACE(backend);
  const std::string output = scratch("killed_" + backend + ".pt");
  const std::string report = scratch("killed_" + backend + ".json");
  const auto start = std::chrono::steady_clock::now();
  const std::vector<RankResult> ranks =
      run_job(quickstart(output, report) + " --dist-backend " + backend + " --dist-timeout " + std::to_string(timeout),
              2, port, "torchrun", {"", "timeout -s KILL 1.5"});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(ranks[1].code, 137);  // killed
  EXPECT_EQ(ranks[0].code, 6) << ranks[0].err;
  Result r0;
  r0.err = ranks[0].err;
  EXPECT_EQ(r0.err_lines(), 1) << r0.err;
  EXPECT_EQ(r0.stray_lines(), 0) << r0.err;
  EXPECT_NE(r0.err.find("rank 0"), std::string::npos) << r0.err;
  EXPECT_LT(seconds, 2.0 * timeout);
  EXPECT_FALSE(fs::exists(output));
  EXPECT_FALSE(fs::exists(report));
  for (const auto& e : fs::directory_iterator(scratch_dir()))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << "temporary left: " << e.path();
}
}  // namespace

TEST(Distributed, AKilledProcessMakesTheOtherFailWithinTheTimeout) {
  expect_killed_rank_fails_the_job("auto", 20, job_port(10));
  expect_killed_rank_fails_the_job("store", 12, job_port(11));
}

TEST(Distributed, IncompleteLaunchVariablesAreUsageErrors) {
  const std::string args = quickstart(scratch("bad_launch.pt"), scratch("bad_launch.json"));
  const Result no_rank = run_with_env("WORLD_SIZE=2", args);
  EXPECT_EQ(no_rank.code, 2) << no_rank.err;
  EXPECT_EQ(no_rank.err_lines(), 1) << no_rank.err;
  EXPECT_NE(no_rank.err.find("RANK"), std::string::npos) << no_rank.err;
  const Result no_master = run_with_env("WORLD_SIZE=2 RANK=0", args);
  EXPECT_EQ(no_master.code, 2) << no_master.err;
  EXPECT_NE(no_master.err.find("MASTER_ADDR"), std::string::npos) << no_master.err;
  const Result bad_rank = run_with_env("WORLD_SIZE=2 RANK=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1", args);
  EXPECT_EQ(bad_rank.code, 2) << bad_rank.err;
  EXPECT_NE(bad_rank.err.find("rank 2"), std::string::npos) << bad_rank.err;
  EXPECT_FALSE(fs::exists(scratch("bad_launch.pt")));
  // A SLURM batch script running bayesq itself (no srun step): one process, whatever the allocation's tasks.
  const Result batch = run_with_env("SLURM_NTASKS=4 SLURM_PROCID=0 SLURM_LOCALID=0", args);
  EXPECT_EQ(batch.code, 0) << batch.err;
  // srun's tasks without MASTER_ADDR: refused, not run as four jobs writing the same files.
  const Result step = run_with_env("SLURM_NTASKS=4 SLURM_STEP_NUM_TASKS=4 SLURM_PROCID=0 SLURM_LOCALID=0", args);
  EXPECT_EQ(step.code, 2) << step.err;
  EXPECT_NE(step.err.find("MASTER_ADDR"), std::string::npos) << step.err;
  // A world of one: as without the variables.
  const Result alone = run_with_env("WORLD_SIZE=1 RANK=0", args);
  EXPECT_EQ(alone.code, 0) << alone.err;
  EXPECT_TRUE(fs::exists(scratch("bad_launch.pt")));
}

// The diagonal calibration is split over the ranks by batches (Note [Calibration over several processes]): three
// processes give the statistics one process computes, with uneven shares (5 batches: 2, 2, 1) and with a rank
// that has no batch (2 batches), for both estimators: the same file, the same posterior of every block.
TEST(Distributed, CalibrationSplitOverRanksGivesTheOneProcessStatistics) {
  struct Case {
    std::string name, method, batch_size;
  };
  int job = 20;
  for (const Case& c : {Case{"hutchinson", "bayesq/hutchinson", "12"}, Case{"fisher", "bayesq/fisher", "32"}}) {
    SCOPED_TRACE(c.name);
    const std::string extra = " --method " + c.method + " --batch-size " + c.batch_size;
    const Result one = run(quickstart(scratch("cal1_" + c.name + ".pt"), scratch("cal1_" + c.name + ".json")) + extra);
    ASSERT_EQ(one.code, 0) << one.err;
    const std::vector<RankResult> ranks = run_job(
        quickstart(scratch("cal3_" + c.name + ".pt"), scratch("cal3_" + c.name + ".json")) + extra, 3, job_port(job++),
        "torchrun");
    for (const RankResult& r : ranks) ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(slurp(scratch("cal3_" + c.name + ".pt")), slurp(scratch("cal1_" + c.name + ".pt")))
        << "three processes wrote another file than one";
    const nlohmann::json a = nlohmann::json::parse(slurp(scratch("cal1_" + c.name + ".json")));
    const nlohmann::json b = nlohmann::json::parse(slurp(scratch("cal3_" + c.name + ".json")));
    EXPECT_EQ(a["curvature"]["estimator"], c.name);
    ASSERT_EQ(a["blocks"].size(), b["blocks"].size());
    for (std::size_t i = 0; i < a["blocks"].size(); ++i) {
      ASSERT_TRUE(a["blocks"][i]["posterior"].is_object()) << a["blocks"][i];
      EXPECT_EQ(a["blocks"][i]["posterior"], b["blocks"][i]["posterior"]) << i;
    }
    EXPECT_EQ(b["distributed"]["world_size"], 3);
    // Each rank calibrated its share: 5 batches of 12 (the last 8) as 2, 2, 1; or 2 batches of 32 as 1, 1, 0.
    const auto shares = b["curvature"]["per_rank"]["examples"].get<std::vector<int64_t>>();
    const std::vector<int64_t> expected =
        c.batch_size == "12" ? std::vector<int64_t>{24, 24, 8} : std::vector<int64_t>{32, 24, 0};
    EXPECT_EQ(shares, expected);
    EXPECT_FALSE(a["curvature"].contains("per_rank"));
  }
}

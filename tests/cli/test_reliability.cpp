// Hostile input, faults and signals (RELIABILITY.md): every case ends with a documented exit code (0, 2, 3 or 5),
// one error line naming the file, no signal, no hang, and no output or temporary left behind. The inputs come
// from tests/fixtures/make_hostile.py; corrupt posteriors and configurations are made here from valid ones.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli_helpers.h"

using namespace bayesq_cli_test;

namespace {

const std::string kSeparable = fixture("separable.pt");
const std::string kSeparableCalib = fixture("separable_calib.pt");

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// A fresh folder for one test's outputs, so that "nothing left behind" can be checked by listing it.
fs::path folder_for(const std::string& name) {
  const fs::path dir = scratch_dir() / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

bool documented(int code) { return code == 0 || code == 2 || code == 3 || code == 5; }

// A valid posterior of the separable fixture, made once.
const std::string& valid_posterior() {
  static const std::string path = [] {
    const std::string p = scratch("valid.bqp");
    const Result r = run("calibrate --model " + kSeparable + " --calib " + kSeparableCalib + " --probes 1 -o " + p);
    EXPECT_EQ(r.code, 0) << r.err;
    return p;
  }();
  return path;
}

}  // namespace

TEST(Reliability, TensorViewsPastTheirStorageAreRefused) {
  const fs::path dir = folder_for("oob");
  for (const char* name : {"oob_stride.pt", "oob_one_past.pt", "oob_offset.pt"}) {
    expect_failure("eval --model " + kSeparable + " --data " + fixture(name), 3, name, "");
    const std::string out = (dir / "q.pt").string();
    expect_failure("quantize --model " + kSeparable + " --calib " + fixture(name) + " --bits 4 -o " + out, 3, name,
                   out);
    const Result r = run("eval --model " + kSeparable + " --data " + fixture(name));
    EXPECT_NE(r.err.find("reaches past its storage"), std::string::npos) << name << ": " << r.err;
  }
  // A model whose weight's strides were edited in its archive (was: read out of bounds, exit 0).
  const std::string out = (dir / "q.pt").string();
  expect_failure("quantize --model " + fixture("model_oob_stride.pt") + " --method rtn --bits 4 -o " + out, 3,
                 "model_oob_stride.pt", out);
  expect_failure("inspect " + fixture("model_oob_stride.pt"), 3, "model_oob_stride.pt", "");
}

TEST(Reliability, MalformedPicklesEndWithOneLine) {
  for (const char* name : {"pickle_global_no_newline.pt", "pickle_truncated_opcode.pt", "pickle_empty.pt"})
    expect_failure("eval --model " + kSeparable + " --data " + fixture(name), 3, name, "");
}

TEST(Reliability, CorruptPosteriorHeadersAreInputErrors) {
  const std::string valid = bytes_of(valid_posterior());
  uint64_t length = 0;
  std::memcpy(&length, valid.data() + 4, sizeof length);
  const std::string header = valid.substr(12, length);
  const fs::path dir = folder_for("bqp");
  const std::string out = (dir / "q.pt").string();
  auto with_header = [&](const std::string& name, std::string text) {
    // Header of another length: the arrays after it stay as they were.
    std::string bytes = valid.substr(0, 4);
    const uint64_t n = text.size();
    bytes.append(reinterpret_cast<const char*>(&n), sizeof n);
    bytes += text + valid.substr(12 + length);
    write_bytes(scratch(name), bytes);
    return scratch(name);
  };
  auto replace_first = [&](std::string text, const std::string& from, const std::string& to) {
    const auto at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return at == std::string::npos ? text : text.replace(at, from.size(), to);
  };
  const nlohmann::json parsed = nlohmann::json::parse(header);
  const std::string numel = "\"numel\":" + std::to_string(parsed["blocks"][0]["numel"].get<int64_t>());
  std::vector<std::string> cases = {
      with_header("numel_huge.bqp", replace_first(header, numel, "\"numel\":2305843009213693952")),
      with_header("numel_negative.bqp", replace_first(header, numel, "\"numel\":-1")),
      with_header("not_json.bqp", "{\"examples\": 3, \"blocks\": ["),
      with_header("not_object.bqp", "[1, 2, 3]"),
  };
  {
    std::string huge_length = valid;  // a header length of 0xFFFFFFF0 in a small file: refused before allocating
    const uint64_t n = 0xFFFFFFF0ull;
    std::memcpy(&huge_length[4], &n, sizeof n);
    write_bytes(scratch("length_huge.bqp"), huge_length);
    cases.push_back(scratch("length_huge.bqp"));
    write_bytes(scratch("truncated.bqp"), valid.substr(0, valid.size() / 2));
    cases.push_back(scratch("truncated.bqp"));
  }
  for (const std::string& bqp : cases)
    expect_failure("quantize --model " + kSeparable + " --posterior " + bqp + " --bits 5 -o " + out, 3,
                   fs::path(bqp).filename().string(), out);
}

TEST(Reliability, PosteriorIsByteReproducible) {
  const std::string a = scratch("repro_a.bqp"), b = scratch("repro_b.bqp");
  for (const std::string& p : {a, b})
    ASSERT_EQ(run("calibrate --model " + kSeparable + " --calib " + kSeparableCalib + " --probes 1 -o " + p).code, 0);
  EXPECT_EQ(bytes_of(a), bytes_of(b));  // no wall-clock time in the artifact
}

TEST(Reliability, OutputsMustBeNewNamesOrRegularFiles) {
  const fs::path dir = folder_for("special");
  const std::string fifo = (dir / "fifo").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::string link = (dir / "link.pt").string();
  fs::create_symlink(dir / "target.pt", link);
  std::vector<std::string> targets{fifo, link};
  // A character device of our own (a second node of the null device, where we may make one): the test must not
  // risk /dev/null itself, which a broken build running as root would replace.
  const std::string device = (dir / "null_device").string();
  if (::mknod(device.c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0) targets.push_back(device);
  for (const std::string& target : targets) {
    const Result r = run("quantize --model " + kSeparable + " --method rtn --bits 4 -o " + target);
    EXPECT_EQ(r.code, 5) << target << ": " << r.err;
    EXPECT_EQ(r.err_lines(), 1) << r.err;
    EXPECT_NE(r.err.find("not a regular file"), std::string::npos) << r.err;
  }
  if (targets.size() == 3) {
    struct stat st {};
    ASSERT_EQ(::stat(device.c_str(), &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode)) << "the device must still be a device";
  }
  EXPECT_TRUE(fs::is_fifo(fifo));
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_FALSE(fs::exists(dir / "target.pt"));
  EXPECT_EQ(temporaries_in(dir), 0);
}

TEST(Reliability, TwoOutputsOrAnOutputAndAnInputNeverShareAFile) {
  const fs::path dir = folder_for("same");
  const std::string model_copy = (dir / "model.pt").string();
  fs::copy_file(kSeparable, model_copy);
  const std::string before = bytes_of(model_copy);
  const std::string q = (dir / "q.pt").string();
  expect_failure("quantize --model " + model_copy + " --method rtn --bits 4 -o " + q + " --report " + q, 2, q, q);
  expect_failure("quantize --model " + model_copy + " --method rtn --bits 4 -o " + model_copy, 2, model_copy, "");
  fs::create_hard_link(model_copy, dir / "hard.pt");
  expect_failure("quantize --model " + model_copy + " --method rtn --bits 4 -o " + (dir / "hard.pt").string(), 2,
                 "hard.pt", "");
  expect_failure("quantize --model " + model_copy + " --method rtn --bits 4 -o " + (dir / "." / "model.pt").string(),
                 2, "model.pt", "");
  EXPECT_EQ(bytes_of(model_copy), before);
}

TEST(Reliability, AnInfeasibleBudgetWritesNoOtherBudget) {
  const fs::path dir = folder_for("budgets");
  const auto start = std::chrono::steady_clock::now();
  const Result r = run("quantize --model " + kSeparable + " --calib " + kSeparableCalib + " --probes 1 --bits 3,1 -o " +
                       (dir / "q-{bits}.pt").string() + " --report " + (dir / "q-{bits}.json").string());
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("smallest budget that fits"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::is_empty(dir)) << "nothing written when one budget of the run is infeasible";
  // Found from the options' costs before any table is built: a group size that cannot fit fails at once too.
  const Result g = run("quantize --model " + kSeparable + " --calib " + kSeparableCalib +
                       " --probes 1 --group-size 7 --bits 1 -o " + (dir / "g.pt").string());
  EXPECT_EQ(g.code, 2) << g.err;
  EXPECT_TRUE(fs::is_empty(dir));
  (void)start;
}

TEST(Reliability, FullDiskIsAnIoErrorWithNothingLeft) {
  // `ulimit -f` caps the file size (in KiB here): the model's write fails part-way, as on a full disk.
  const fs::path dir = folder_for("full");
  const std::string out = (dir / "q.pt").string();
  const std::string command = "bash -c 'ulimit -f 256; exec " + std::string(BAYESQ_BINARY) + " quantize --model " +
                              fixture("resnet18.pt") + " --method rtn --bits 4 --format fake -o " + out +
                              "' > " + scratch("full.out") + " 2> " + scratch("full.err");
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status)) << "killed by a signal";
  EXPECT_EQ(WEXITSTATUS(status), 5) << slurp(scratch("full.err"));
  EXPECT_NE(slurp(scratch("full.err")).find(out), std::string::npos) << slurp(scratch("full.err"));
  EXPECT_TRUE(fs::is_empty(dir)) << "no output and no temporary after a failed write";
}

TEST(Reliability, SignalsDuringTheWriteRemoveTheTemporary) {
  // BAYESQ_TEST_COMMIT_DELAY_MS holds a finished temporary for a while before its rename (a test hook): the
  // signal then lands while the temporary exists, every time.
  for (int sig : {SIGINT, SIGTERM, SIGKILL}) {
    const fs::path dir = folder_for("signal" + std::to_string(sig));
    const std::string out = (dir / "q.pt").string();
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::setenv("BAYESQ_TEST_COMMIT_DELAY_MS", "20000", 1);
      const int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 2);
      ::execl(BAYESQ_BINARY, BAYESQ_BINARY, "quantize", "--model", kSeparable.c_str(), "--method", "rtn", "--bits",
              "4", "-o", out.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    bool seen = false;
    for (int i = 0; i < 600 && !seen; ++i) {
      seen = temporaries_in(dir) > 0;
      if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_TRUE(seen) << "no temporary appeared";
    ::kill(pid, sig);
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == sig) << "signal " << sig;
    EXPECT_FALSE(fs::exists(out));
    if (sig == SIGKILL) {
      // SIGKILL cannot be caught: the hidden temporary stays, and a later run is not disturbed by it.
      EXPECT_EQ(temporaries_in(dir), 1);
      const Result again = run("quantize --model " + kSeparable + " --method rtn --bits 4 -o " + out);
      EXPECT_EQ(again.code, 0) << again.err;
      EXPECT_TRUE(fs::exists(out));
      EXPECT_EQ(temporaries_in(dir), 1);
    } else {
      EXPECT_EQ(temporaries_in(dir), 0) << "signal " << sig << " left a temporary";
    }
  }
}

TEST(Reliability, ConfigurationMistakesAreUsageErrors) {
  const fs::path dir = folder_for("config");
  const std::string out = (dir / "q.pt").string();
  for (const std::string& text :
       {std::string(R"({"bits": 3, "prboes": 1})"), std::string(R"({"quantise": {"probes": 1}})"),
        std::string(R"({"bits": [3, [4]]})"), std::string(R"({"quantize": {"probes": {"a": 1}}})"),
        std::string(R"({"bits": null})"), std::string("[3]"), std::string("{")}) {
    write_bytes(scratch("bad_config.json"), text);
    const Result r = run("quantize --config " + scratch("bad_config.json") + " --model " + kSeparable +
                         " --method rtn --bits 4 -o " + out);
    EXPECT_EQ(r.code, 2) << text << ": " << r.err;
    EXPECT_EQ(r.err_lines(), 1) << r.err;
  }
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(Reliability, OutOfRangeOptionsAreUsageErrors) {
  const fs::path dir = folder_for("ranges");
  const std::string base = "quantize --model " + kSeparable + " --calib " + kSeparableCalib + " -o " +
                           (dir / "q.pt").string() + " ";
  for (const char* options : {"--bits 4 --max-examples -5", "--bits 4 --threads -1", "--bits 4 --seed -1",
                              "--bits 3,,4", "--bits 4 --probes 100000", "--bits 4 --candidates 2,,4",
                              "--method rtn --bits 4 --keep-fp '.*'", "--bits 4 --batch-size 0",
                              "--bits 4 --joint-rounds -1", "--bits 4 --joint-window 0", "--bits 4 --holdout 0.9",
                              "--bits 4 --measure-disjoint 100000", "--bits 4 --joint-threshold -1",
                              "--bits 4 --joint-threshold inf"}) {
    const Result r = run(base + options);
    EXPECT_EQ(r.code, 2) << options << ": " << r.err;
    EXPECT_EQ(r.err_lines(), 1) << options << ": " << r.err;
  }
  EXPECT_TRUE(fs::is_empty(dir));
  const Result version = run("--version");
  EXPECT_EQ(version.code, 0);
  EXPECT_NE(version.out.find("bayesq"), std::string::npos) << version.out;
}

TEST(Reliability, WeightsBeyondFp16AreRefusedUnlessKeptInFloat) {
  const fs::path dir = folder_for("huge");
  const std::string out = (dir / "q.pt").string();
  expect_failure("quantize --model " + fixture("huge_weights.pt") + " --method rtn --bits 4 -o " + out, 3,
                 "huge_weights.pt", out);
  const Result kept = run("quantize --model " + fixture("huge_weights.pt") + " --method rtn --bits 4 --keep-fp fc1 -o " +
                          out);
  EXPECT_EQ(kept.code, 0) << kept.err;
  expect_failure("compare --model " + fixture("huge_weights.pt") + " --calib " + fixture("huge_weights_calib.pt") +
                     " --data " + fixture("huge_weights_calib.pt") + " --bits 4 --methods rtn",
                 3, "huge_weights.pt", "");
}

TEST(Reliability, NamesAndPathsAUserMayType) {
  const fs::path dir = folder_for("names");
  // The longest name the file system allows (255 bytes): the temporary's name must not be longer.
  const std::string long_name = (dir / (std::string(252, 'q') + ".pt")).string();
  const Result r = run("quantize --model " + kSeparable + " --method rtn --bits 4 -o " + long_name);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(long_name));
  // A newline in a missing file's name: still one error line.
  const Result newline = run("eval --model '" + (dir / "a\nb.pt").string() + "' --data " + kSeparableCalib);
  EXPECT_EQ(newline.code, 3) << newline.err;
  EXPECT_EQ(newline.err_lines(), 1) << newline.err;
  EXPECT_EQ(newline.stray_lines(), 0) << newline.err;
}

TEST(Reliability, EvaluatingAModelWithNonFiniteOutputsFails) {
  expect_failure("eval --model " + fixture("bad_nan_model.pt") + " --data " + fixture("resnet18_eval.pt"), 3,
                 "bad_nan_model.pt", "");
}

// Bounded fuzzing with fixed seeds (about a minute): mutated data files (made by make_hostile.py with the zip
// rebuilt, so the mutations reach the readers), byte-flipped and truncated posteriors, mutated configurations.
// Every case must end with a documented exit code, within its time limit, and leave nothing in its folder.
TEST(Reliability, FuzzedInputsEndWithDocumentedCodes) {
  int cases = 0;
  for (const auto& e : fs::directory_iterator(BAYESQ_FIXTURES_DIR)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("fuzz_data_", 0) != 0) continue;
    const Result r = run("eval --model " + kSeparable + " --data " + e.path().string(), 60);
    EXPECT_TRUE(documented(r.code)) << name << ": exit " << r.code << "\n" << r.err;
    EXPECT_EQ(r.stray_lines(), 0) << name << ": " << r.err;
    ++cases;
  }
  EXPECT_GE(cases, 40);

  std::mt19937 rng(20261130);
  const std::string valid = bytes_of(valid_posterior());
  const fs::path dir = folder_for("fuzz");
  const std::string out = (dir / "q.pt").string();
  for (int i = 0; i < 16; ++i) {
    std::string bytes = valid;
    if (i % 2 == 0) {
      for (int k = 0; k < 1 + i / 4; ++k) bytes[rng() % bytes.size()] ^= static_cast<char>(1u << (rng() % 8));
    } else {
      bytes.resize(rng() % bytes.size());
    }
    write_bytes(scratch("fuzz.bqp"), bytes);
    const Result r = run("quantize --model " + kSeparable + " --posterior " + scratch("fuzz.bqp") +
                         " --table-loss expected --bits 5 -o " + out, 60);
    EXPECT_TRUE(documented(r.code)) << "posterior case " << i << ": exit " << r.code << "\n" << r.err;
    EXPECT_EQ(temporaries_in(dir), 0);
    fs::remove(out);
  }
  const std::string config = R"({"method": "rtn", "bits": [4], "keep_fp": ["^fc"], "quantize": {"seed": 3}})";
  for (int i = 0; i < 16; ++i) {
    std::string text = config;
    const std::size_t at = rng() % text.size();
    if (i % 2 == 0) text[at] = "{}[]\",:0-9a "[rng() % 13];
    else text.erase(at, 1 + rng() % 4);
    write_bytes(scratch("fuzz.json"), text);
    const Result r = run("quantize --config " + scratch("fuzz.json") + " --model " + kSeparable + " -o " + out, 60);
    EXPECT_TRUE(documented(r.code)) << "config case " << i << " (" << text << "): exit " << r.code << "\n" << r.err;
    EXPECT_EQ(temporaries_in(dir), 0);
    fs::remove(out);
  }
}

// SIGINT or SIGTERM at any stage (loading, calibration, tables, the write) ends the run by that signal and leaves
// no temporary (a budget finished before the signal stays, complete).
TEST(Reliability, SignalsAtAnyStageLeaveNothing) {
  int stage = 0;
  for (int sig : {SIGINT, SIGTERM})
    for (int delay_ms : {150, 600, 1500, 3000}) {
      const fs::path dir = folder_for("stage" + std::to_string(stage++));
      const std::string out = (dir / "q.pt").string(), report = (dir / "q.json").string();
      const pid_t pid = ::fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        const int null = ::open("/dev/null", O_WRONLY);
        ::dup2(null, 2);
        ::execl(BAYESQ_BINARY, BAYESQ_BINARY, "quantize", "--model", fixture("resnet18.pt").c_str(), "--calib",
                fixture("resnet18_calib.pt").c_str(), "--table-loss", "expected", "--probes", "2", "--bits", "3,4",
                "-o", out.c_str(), "--report", report.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      ::kill(pid, sig);
      int status = 0;
      ::waitpid(pid, &status, 0);
      if (WIFEXITED(status)) continue;  // finished before the signal: nothing to check
      EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == sig) << "signal " << sig << " after " << delay_ms;
      EXPECT_EQ(temporaries_in(dir), 0) << "signal " << sig << " after " << delay_ms << " ms";
    }
}

// Labels in a calibration file are checked against the model's outputs whatever the method (was: only for
// --curvature-loss ce and in eval).
TEST(Reliability, CalibrationLabelsOutsideTheOutputsAreRefusedByEveryMethod) {
  const fs::path dir = folder_for("labels");
  const std::string out = (dir / "q.pt").string();
  for (const char* method : {"bayesq", "gptq --bits 4", "hawq"}) {
    const std::string bits = std::string(method).find("--bits") == std::string::npos ? " --bits 4" : "";
    expect_failure("quantize --model " + fixture("resnet18.pt") + " --calib " + fixture("bad_labels.pt") +
                       " --method " + method + bits + " -o " + out,
                   3, "bad_labels.pt", out);
  }
}

// Running the real bayesq binary from tests: its exit code, stdout and stderr, and the checks every failure must
// pass (the documented code, one error line naming the file, no output or temporary left).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

namespace bayesq_cli_test {

namespace fs = std::filesystem;

struct Result {
  int code = -1;
  std::string out, err;
  // Lines bayesq itself writes for a failure ("bayesq: error: ..."); log lines ("info: ...", "warning: ...") that
  // came before it do not count. Anything else on stderr (a stack trace, an abort message) is a stray line.
  int err_lines() const { return count_lines(true); }
  int stray_lines() const { return count_lines(false); }

 private:
  int count_lines(bool errors) const {
    std::istringstream in(err);
    int n = 0;
    for (std::string line; std::getline(in, line);) {
      const bool error = line.rfind("bayesq:", 0) == 0;
      const bool log = line.rfind("info: ", 0) == 0 || line.rfind("warning: ", 0) == 0;
      n += errors ? error : (!error && !log);
    }
    return n;
  }
};

inline std::string fixture(const std::string& name) { return (fs::path(BAYESQ_FIXTURES_DIR) / name).string(); }

inline fs::path scratch_dir() {
  static const fs::path dir = fs::temp_directory_path() / ("bayesq_cli_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

inline std::string scratch(const std::string& name) { return (scratch_dir() / name).string(); }

inline std::string slurp(const fs::path& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Runs `bayesq ARGS` (through sh, so ARGS may hold redirections and quotes). A run still going after `seconds`
// is stopped and reads as exit code 124: a hang fails its test instead of the whole suite.
inline Result run(const std::string& args, int seconds = 300, const std::string& environment = "") {
  const std::string out = scratch("stdout.txt"), err = scratch("stderr.txt");
  const std::string command = (environment.empty() ? "" : "env " + environment + " ") + "timeout " +
                              std::to_string(seconds) + " " + std::string(BAYESQ_BINARY) + " " + args + " > " + out +
                              " 2> " + err;
  const int status = std::system(command.c_str());
  Result r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// `bayesq ARGS` with environment variables ("NAME=value NAME=value") set for it alone.
inline Result run_with_env(const std::string& environment, const std::string& args) { return run(args, 300, environment); }

// Every failure: the documented code, exactly one line on stderr that names `file`, and nothing written.
inline void expect_failure(const std::string& args, int code, const std::string& file, const std::string& output) {
  const Result r = run(args);
  EXPECT_EQ(r.code, code) << args << "\n" << r.err;
  EXPECT_EQ(r.err_lines(), 1) << r.err;
  EXPECT_EQ(r.stray_lines(), 0) << r.err;
  EXPECT_NE(r.err.find(file), std::string::npos) << "the error should name " << file << ": " << r.err;
  if (!output.empty()) {
    EXPECT_FALSE(fs::exists(output)) << "partial output left behind: " << output;
    for (const auto& e : fs::directory_iterator(fs::path(output).parent_path()))
      EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << "temporary left: " << e.path();
  }
}

// Temporaries of bayesq's atomic writes (Note [Outputs] in common/atomic_file.h) in a folder.
inline int temporaries_in(const fs::path& folder) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(folder)) n += e.path().filename().string().find(".tmp") != std::string::npos;
  return n;
}

}  // namespace bayesq_cli_test

// Error types shared by every stage.
//
// Two kinds of failure never mix (see STYLE.md):
//  - UserError: the caller gave bayesq something it cannot use (a missing file, a bad option, data that does
//    not fit the model). It carries the documented process exit code and a one-line message that names the
//    problem and the file.
//  - InternalError: an invariant of bayesq itself is broken (a bug). It carries the source location.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace bayesq {

// Process exit codes, documented in README.md ("Exit codes"). Keep the two in sync.
enum class ExitCode : int {
  ok = 0,
  internal = 1,   // a bug in bayesq: please report it
  usage = 2,      // bad command line or configuration file
  input = 3,      // a model or data file that is missing, malformed or does not fit
  numerical = 4,  // a numerical failure that no fallback could recover
  io = 5,         // an output could not be written
  distributed = 6,  // another process of a multi-process job failed, or did not answer within --dist-timeout
};

const char* exit_code_name(ExitCode code);

class UserError : public std::runtime_error {
 public:
  UserError(ExitCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ExitCode code() const { return code_; }

 private:
  ExitCode code_;
};

class InternalError : public std::logic_error {
 public:
  InternalError(const std::string& message, const char* file, int line)
      : std::logic_error(std::string(file) + ":" + std::to_string(line) + ": internal error: " + message) {}
};

namespace detail {
inline void stream_all(std::ostringstream&) {}
template <typename T, typename... Rest>
void stream_all(std::ostringstream& out, const T& first, const Rest&... rest) {
  out << first;
  stream_all(out, rest...);
}
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  stream_all(out, args...);
  return out.str();
}
}  // namespace detail

}  // namespace bayesq

// BQ_CHECK(cond, ExitCode::input, "message ", parts...): the caller got something wrong.
#define BQ_CHECK(cond, code, ...)                                             \
  do {                                                                        \
    if (!(cond)) throw ::bayesq::UserError((code), ::bayesq::detail::concat(__VA_ARGS__)); \
  } while (0)

#define BQ_FAIL(code, ...) throw ::bayesq::UserError((code), ::bayesq::detail::concat(__VA_ARGS__))

// BQ_ASSERT(cond, "message", parts...): a broken invariant, i.e. a bug in bayesq.
#define BQ_ASSERT(cond, ...)                                                                      \
  do {                                                                                            \
    if (!(cond))                                                                                  \
      throw ::bayesq::InternalError(::bayesq::detail::concat("assertion `" #cond "` failed. ", ##__VA_ARGS__), \
                                    __FILE__, __LINE__);                                          \
  } while (0)

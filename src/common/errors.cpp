#include "bayesq/common/errors.h"

namespace bayesq {

const char* exit_code_name(ExitCode code) {
  switch (code) {
    case ExitCode::ok: return "ok";
    case ExitCode::internal: return "internal error";
    case ExitCode::usage: return "usage error";
    case ExitCode::input: return "input error";
    case ExitCode::numerical: return "numerical failure";
    case ExitCode::io: return "I/O error";
    case ExitCode::distributed: return "distributed job failure";
  }
  return "unknown";
}

}  // namespace bayesq

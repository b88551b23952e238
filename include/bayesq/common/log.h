// Logging for every stage, to stderr ("info: ...", "warning: ..."). A thin facade over spdlog compiled in the
// core library only: libtorch 2.x ships its own fmt headers, which spdlog must never see, so no translation unit
// includes both.
#pragma once

#include <string>

#include "bayesq/common/errors.h"

namespace bayesq {
namespace log {

enum class Level { debug, info, warn, error, off };

void set_level(Level level);
bool enabled(Level level);
void write(Level level, const std::string& message);

template <typename... Args>
void debug(const Args&... args) {
  if (enabled(Level::debug)) write(Level::debug, detail::concat(args...));
}
template <typename... Args>
void info(const Args&... args) {
  if (enabled(Level::info)) write(Level::info, detail::concat(args...));
}
template <typename... Args>
void warn(const Args&... args) {
  if (enabled(Level::warn)) write(Level::warn, detail::concat(args...));
}

}  // namespace log
}  // namespace bayesq

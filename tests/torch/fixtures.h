// Where the test fixtures live (made by tests/fixtures/make_fixtures.py before the tests run, see CMake).
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace bayesq_test {

inline std::string fixture(const std::string& name) {
  const char* dir = std::getenv("BAYESQ_FIXTURES");
  return (std::filesystem::path(dir ? dir : BAYESQ_FIXTURES_DIR) / name).string();
}

// A fresh scratch folder per test binary run.
inline std::string scratch(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("bayesq_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

}  // namespace bayesq_test

#include "bayesq/common/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "bayesq/common/errors.h"

namespace bayesq {

namespace fs = std::filesystem;

std::string temporary_path_for(const std::string& target) {
  // A private folder beside the target holding a file of the target's own name: writers that record the file
  // name (libtorch names its archive after it) see the final name.
  const fs::path path(target);
  std::random_device device;
  const fs::path folder = path.parent_path() / ("." + path.filename().string() + ".tmp" + std::to_string(::getpid()) +
                                                "-" + std::to_string(device() % 1000000));
  std::error_code ec;
  fs::create_directory(folder, ec);
  if (ec) BQ_FAIL(ExitCode::io, "cannot write output file (", ec.message(), "): ", target);
  return (folder / path.filename()).string();
}

void check_output_path(const std::string& path) {
  BQ_CHECK(!path.empty(), ExitCode::usage, "output path is empty");
  fs::path folder = fs::path(path).parent_path();
  if (folder.empty()) folder = ".";
  std::error_code ec;
  BQ_CHECK(fs::is_directory(folder, ec), ExitCode::io, "output folder does not exist: ", path);
  BQ_CHECK(!fs::is_directory(fs::path(path), ec), ExitCode::io, "output path is a folder: ", path);
  BQ_CHECK(::access(folder.c_str(), W_OK) == 0, ExitCode::io, "output folder is not writable: ", path);
}

void commit_temporary(const std::string& temporary, const std::string& target) {
  std::error_code ec;
  fs::rename(temporary, target, ec);
  if (ec) {
    remove_temporary(temporary);
    BQ_FAIL(ExitCode::io, "cannot write output file (", ec.message(), "): ", target);
  }
  fs::remove(fs::path(temporary).parent_path(), ec);
}

void remove_temporary(const std::string& temporary) {
  std::error_code ec;
  fs::remove(temporary, ec);
  fs::remove(fs::path(temporary).parent_path(), ec);
}

AtomicFile::AtomicFile(std::string target) : target_(std::move(target)) {
  check_output_path(target_);
  temporary_ = temporary_path_for(target_);
  file_ = std::fopen(temporary_.c_str(), "wb");
  BQ_CHECK(file_ != nullptr, ExitCode::io, "cannot write output file (", std::strerror(errno), "): ", target_);
}

AtomicFile::~AtomicFile() {
  if (file_) std::fclose(file_);
  if (!committed_) remove_temporary(temporary_);
}

void AtomicFile::write(const void* data, std::size_t size) {
  BQ_ASSERT(file_ != nullptr && !committed_, "write after commit");
  if (size && std::fwrite(data, 1, size, file_) != size)
    BQ_FAIL(ExitCode::io, "write failed (", std::strerror(errno), "): ", target_);
}

void AtomicFile::commit() {
  BQ_ASSERT(file_ != nullptr && !committed_, "double commit");
  const bool flushed = std::fflush(file_) == 0;
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  BQ_CHECK(flushed && closed, ExitCode::io, "write failed: ", target_);
  commit_temporary(temporary_, target_);
  committed_ = true;
}

void write_text_file(const std::string& path, const std::string& text) {
  AtomicFile out(path);
  out.write(text.data(), text.size());
  out.commit();
}

}  // namespace bayesq

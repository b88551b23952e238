// Atomic output files: every file bayesq writes goes to a temporary file in the target folder and is renamed over
// the target only when complete, so a failed run never leaves a partial output behind.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>

namespace bayesq {

// Throws UserError(io) naming the path when the folder is not writable or a write fails.
class AtomicFile {
 public:
  explicit AtomicFile(std::string target);
  ~AtomicFile();  // removes the temporary file unless commit() succeeded
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t size);
  void commit();
  const std::string& temporary_path() const { return temporary_; }

 private:
  std::string target_, temporary_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

// A temporary path in the target's folder for writers that must produce the file themselves (e.g. libtorch's
// save); call commit_temporary to rename it, or remove_temporary on failure.
std::string temporary_path_for(const std::string& target);
void commit_temporary(const std::string& temporary, const std::string& target);
void remove_temporary(const std::string& temporary);

// Writes a whole text file atomically.
void write_text_file(const std::string& path, const std::string& text);

// Fails with UserError(io) unless the folder of `path` exists and is writable (checked before long work starts).
void check_output_path(const std::string& path);

}  // namespace bayesq

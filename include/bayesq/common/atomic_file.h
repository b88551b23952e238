// Atomic output files: every file bayesq writes goes to a temporary file in the target folder and is renamed over
// the target only when complete, so a failed run never leaves a partial output behind.
//
// Note [Outputs]: a target must be a new name or an existing regular file; a folder, a device, a FIFO, a socket
// or a symbolic link is refused before any work starts (a rename over /dev/null would replace the device). The
// temporary is `.bayesq-<pid>-<n>.tmp` beside the target, short enough for any target name the file system
// allows, and registered so that SIGINT, SIGTERM and SIGHUP remove it before the process ends (SIGKILL cannot be
// caught: such a leftover is a hidden file no later run reads or reuses). SIGXFSZ is ignored, so a file-size
// limit makes the write fail with a clear error instead of killing the process.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

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
  int cleanup_slot_ = -1;
};

// Writes a whole file atomically.
void write_text_file(const std::string& path, const std::string& text);
inline void write_binary_file(const std::string& path, const std::string& bytes) { write_text_file(path, bytes); }

// Fails with UserError(io) unless the folder of `path` exists and is writable and `path` is a new name or a
// regular file (checked before long work starts).
void check_output_path(const std::string& path);

// Whether two paths name one file: the same resolved path, or the same device and inode.
bool same_file(const std::string& a, const std::string& b);

// Fails with UserError(usage) when two of `outputs` name the same file, or one of them names one of `inputs`
// (symbolic links and hard links resolved where the files exist). Each item: (what, path), e.g. ("-o", "q.pt").
void check_distinct_files(const std::vector<std::pair<std::string, std::string>>& outputs,
                          const std::vector<std::pair<std::string, std::string>>& inputs);

// Installs the handlers of Note [Outputs]; call once at the start of the program.
void install_output_cleanup();

}  // namespace bayesq

#include "bayesq/common/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "bayesq/common/errors.h"

namespace bayesq {

namespace fs = std::filesystem;

namespace {

// Temporaries the signal handler removes (Note [Outputs]). Fixed storage: the handler may only read it.
constexpr int kCleanupSlots = 64;
constexpr std::size_t kCleanupPathMax = 4096;
struct CleanupSlot {
  std::atomic<bool> used{false};
  char path[kCleanupPathMax];
};
CleanupSlot cleanup_slots[kCleanupSlots];
std::mutex cleanup_mutex;

int register_cleanup(const std::string& path) {
  if (path.size() >= kCleanupPathMax) return -1;
  std::lock_guard<std::mutex> lock(cleanup_mutex);
  for (int i = 0; i < kCleanupSlots; ++i) {
    if (cleanup_slots[i].used.load()) continue;
    std::memcpy(cleanup_slots[i].path, path.c_str(), path.size() + 1);
    cleanup_slots[i].used.store(true);
    return i;
  }
  return -1;
}

void unregister_cleanup(int slot) {
  if (slot >= 0) cleanup_slots[slot].used.store(false);
}

extern "C" void remove_temporaries_and_reraise(int signal) {
  for (CleanupSlot& s : cleanup_slots)
    if (s.used.load()) ::unlink(s.path);
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

std::string temporary_name_in(const fs::path& folder) {
  static std::atomic<unsigned> counter{0};
  return (folder / (".bayesq-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".tmp")).string();
}

// The file's identity for check_distinct_files: its resolved path, and device and inode where it exists.
struct FileId {
  std::string path;
  bool exists = false;
  dev_t device = 0;
  ino_t inode = 0;
  bool same(const FileId& o) const {
    return path == o.path || (exists && o.exists && device == o.device && inode == o.inode);
  }
};

FileId file_id(const std::string& path) {
  FileId id;
  std::error_code ec;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    id.exists = true;
    id.device = st.st_dev;
    id.inode = st.st_ino;
  }
  fs::path resolved = fs::weakly_canonical(fs::absolute(path, ec), ec);
  id.path = ec ? path : resolved.string();
  return id;
}

}  // namespace

void install_output_cleanup() {
  for (int signal : {SIGINT, SIGTERM, SIGHUP}) std::signal(signal, remove_temporaries_and_reraise);
  std::signal(SIGXFSZ, SIG_IGN);
}

void check_output_path(const std::string& path) {
  BQ_CHECK(!path.empty(), ExitCode::usage, "output path is empty");
  fs::path folder = fs::path(path).parent_path();
  if (folder.empty()) folder = ".";
  std::error_code ec;
  BQ_CHECK(fs::is_directory(folder, ec), ExitCode::io, "output folder does not exist: ", path);
  const fs::file_status status = fs::symlink_status(fs::path(path), ec);
  BQ_CHECK(!fs::is_directory(status), ExitCode::io, "output path is a folder: ", path);
  BQ_CHECK(!fs::exists(status) || fs::is_regular_file(status), ExitCode::io,
           "output path exists and is not a regular file (a link, device, FIFO or socket is never replaced): ", path);
  BQ_CHECK(::access(folder.c_str(), W_OK) == 0, ExitCode::io, "output folder is not writable: ", path);
}

bool same_file(const std::string& a, const std::string& b) { return file_id(a).same(file_id(b)); }

void check_distinct_files(const std::vector<std::pair<std::string, std::string>>& outputs,
                          const std::vector<std::pair<std::string, std::string>>& inputs) {
  std::vector<FileId> ids;
  for (const auto& o : outputs) ids.push_back(file_id(o.second));
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j)
      BQ_CHECK(!ids[i].same(ids[j]), ExitCode::usage, outputs[j].first, " and ", outputs[i].first,
               " name the same file: ", outputs[i].second);
    for (const auto& in : inputs)
      if (!in.second.empty())
        BQ_CHECK(!ids[i].same(file_id(in.second)), ExitCode::usage, outputs[i].first, " would overwrite the input ",
                 in.first, ": ", outputs[i].second);
  }
}

AtomicFile::AtomicFile(std::string target) : target_(std::move(target)) {
  check_output_path(target_);
  fs::path folder = fs::path(target_).parent_path();
  if (folder.empty()) folder = ".";
  temporary_ = temporary_name_in(folder);
  const int fd = ::open(temporary_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  BQ_CHECK(fd >= 0, ExitCode::io, "cannot write output file (", std::strerror(errno), "): ", target_);
  cleanup_slot_ = register_cleanup(temporary_);
  file_ = ::fdopen(fd, "wb");
  if (!file_) {
    ::close(fd);
    ::unlink(temporary_.c_str());
    unregister_cleanup(cleanup_slot_);
    BQ_FAIL(ExitCode::io, "cannot write output file (", std::strerror(errno), "): ", target_);
  }
}

AtomicFile::~AtomicFile() {
  if (file_) std::fclose(file_);
  if (!committed_) ::unlink(temporary_.c_str());
  unregister_cleanup(cleanup_slot_);
}

void AtomicFile::write(const void* data, std::size_t size) {
  BQ_ASSERT(file_ != nullptr && !committed_, "write after commit");
  if (size && std::fwrite(data, 1, size, file_) != size)
    BQ_FAIL(ExitCode::io, "write failed (", std::strerror(errno), "): ", target_);
}

void AtomicFile::commit() {
  BQ_ASSERT(file_ != nullptr && !committed_, "double commit");
  const bool flushed = std::fflush(file_) == 0;
  const int flush_errno = errno;
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  BQ_CHECK(flushed && closed, ExitCode::io, "write failed (", std::strerror(flushed ? errno : flush_errno), "): ",
           target_);
  // Test hook (RELIABILITY.md): hold the finished temporary before its rename, so that a test's signal lands
  // while it exists.
  if (const char* delay = std::getenv("BAYESQ_TEST_COMMIT_DELAY_MS"))
    std::this_thread::sleep_for(std::chrono::milliseconds(std::atol(delay)));
  check_output_path(target_);  // it may have become something else while we wrote
  BQ_CHECK(std::rename(temporary_.c_str(), target_.c_str()) == 0, ExitCode::io, "cannot write output file (",
           std::strerror(errno), "): ", target_);
  committed_ = true;
}

void write_text_file(const std::string& path, const std::string& text) {
  AtomicFile out(path);
  out.write(text.data(), text.size());
  out.commit();
}

}  // namespace bayesq

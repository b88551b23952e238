#include "bayesq/distributed/world.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include <c10/util/Logging.h>
#include <torch/torch.h>

#include "bayesq/common/errors.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef BAYESQ_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

namespace bayesq {

namespace {

const char* env(const char* name) {
  const char* value = std::getenv(name);
  return value && *value ? value : nullptr;
}

// A non-negative integer variable; `fallback` when unset.
int env_int(const char* name, int fallback, int max) {
  const char* value = env(name);
  if (!value) return fallback;
  char* end = nullptr;
  const long n = std::strtol(value, &end, 10);
  BQ_CHECK(end != value && *end == '\0' && n >= 0 && n <= max, ExitCode::usage, "environment variable ", name, "='",
           value, "' is not an integer in [0, ", max, "]");
  return static_cast<int>(n);
}

}  // namespace

LaunchInfo launch_from_environment() {
  LaunchInfo launch;
  const bool torchrun = env("WORLD_SIZE") != nullptr;
  // SLURM sets SLURM_NTASKS in the whole allocation, the batch script included, where one bayesq is one job; a
  // task that srun started also has its step's variables (SLURM_STEP_NUM_TASKS). Such tasks without MASTER_ADDR
  // are refused below rather than run as N independent jobs writing the same files.
  const bool slurm = !torchrun && env("SLURM_NTASKS") != nullptr && env("SLURM_STEP_NUM_TASKS") != nullptr;
  if (!torchrun && !slurm) return launch;
  constexpr int kMaxRanks = 1 << 16;
  if (torchrun) {
    launch.launcher = "torchrun or RANK/WORLD_SIZE";
    launch.world_size = env_int("WORLD_SIZE", 1, kMaxRanks);
    BQ_CHECK(launch.world_size <= 1 || env("RANK"), ExitCode::usage, "WORLD_SIZE=", launch.world_size,
             " is set but RANK is not: set RANK (and LOCAL_RANK) for each process, as torchrun and srun do");
    launch.rank = env_int("RANK", 0, kMaxRanks);
    launch.local_rank = env_int("LOCAL_RANK", 0, kMaxRanks);
  } else {
    launch.launcher = "slurm";
    launch.world_size = env_int("SLURM_NTASKS", 1, kMaxRanks);
    launch.rank = env_int("SLURM_PROCID", 0, kMaxRanks);
    launch.local_rank = env_int("SLURM_LOCALID", 0, kMaxRanks);
  }
  BQ_CHECK(launch.world_size >= 1, ExitCode::usage, "the world size is 0 (", launch.launcher, ")");
  BQ_CHECK(launch.rank < launch.world_size, ExitCode::usage, "rank ", launch.rank, " is not below the world size ",
           launch.world_size, " (", launch.launcher, ")");
  if (launch.world_size == 1) return launch;
  const char* addr = env("MASTER_ADDR");
  BQ_CHECK(addr, ExitCode::usage, "a job of ", launch.world_size, " processes (", launch.launcher,
           ") needs MASTER_ADDR (the host of rank 0) and MASTER_PORT; with srun, set them in the job script (README)");
  launch.master_addr = addr;
  launch.master_port = env_int("MASTER_PORT", -1, 65535);
  BQ_CHECK(launch.master_port > 0, ExitCode::usage, "a job of ", launch.world_size,
           " processes needs MASTER_PORT (a free TCP port on MASTER_ADDR)");
  if (const char* agent = env("TORCHELASTIC_USE_AGENT_STORE")) launch.agent_store = std::string(agent) == "True";
  return launch;
}

std::pair<int64_t, int64_t> contiguous_share(int64_t count, int rank, int ranks) {
  if (ranks <= 1) return {0, count};
  const int64_t base = count / ranks, extra = count % ranks;
  const int64_t first = rank * base + std::min<int64_t>(rank, extra);
  return {first, first + base + (rank < extra ? 1 : 0)};
}

std::vector<int> assign_blocks(const std::vector<double>& cost, int ranks) {
  std::vector<int> owner(cost.size(), 0);
  if (ranks <= 1) return owner;
  std::vector<std::size_t> order(cost.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return cost[a] > cost[b]; });
  std::vector<double> load(static_cast<std::size_t>(ranks), 0.0);
  for (std::size_t b : order) {
    const auto least = std::min_element(load.begin(), load.end());  // the first: the lowest rank on ties
    owner[b] = static_cast<int>(least - load.begin());
    *least += cost[b];
  }
  return owner;
}

Exchange exchange_from_name(const std::string& name) {
  if (name == "auto") return Exchange::automatic;
  if (name == "gloo") return Exchange::gloo;
  if (name == "store") return Exchange::store;
  BQ_FAIL(ExitCode::usage, "unknown --dist-backend '", name, "' (expected auto, gloo or store)");
}

struct World::Group {
  c10::intrusive_ptr<c10d::Store> store;  // under the job's key prefix
#ifdef BAYESQ_GLOO
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;  // null: the store carries the exchanges
#endif
  std::chrono::milliseconds timeout{0};  // each collective's
  int64_t collectives = 0;               // store exchanges made so far: the next one's key
  std::size_t previous_chunks = 0;       // this rank's chunks in the last store exchange (deleted in the next)
};

namespace {
// c10d reports a dead peer or a timeout as a c10::Error (or a std::runtime_error) with a multi-line message:
// one line for the user.
[[noreturn]] void rethrow_as_job_failure(const std::string& what, int rank, const std::exception& e) {
  std::string message = e.what();
  const auto newline = message.find('\n');
  if (newline != std::string::npos) message = message.substr(0, newline);
  throw UserError(ExitCode::distributed, "rank " + std::to_string(rank) + ": " + what + " failed: " + message);
}

std::string exchange_key(int64_t collective, int rank) {
  return "bayesq/exchange/" + std::to_string(collective) + "/" + std::to_string(rank);
}
std::string chunk_key(int64_t collective, int rank, std::size_t chunk) {
  return exchange_key(collective, rank) + "/" + std::to_string(chunk);
}
// One value per store request stays below the store server's limit (8 MiB in libtorch 2.x's libuv backend).
constexpr std::size_t kStoreChunkBytes = std::size_t(4) << 20;
}  // namespace

World::World() = default;
World::~World() = default;

const char* World::exchange() const {
  if (!group_) return "none";
#ifdef BAYESQ_GLOO
  if (group_->gloo) return "gloo";
#endif
  return "store";
}

std::shared_ptr<World> World::join(const LaunchInfo& launch, std::chrono::milliseconds timeout, Exchange exchange) {
#ifndef BAYESQ_GLOO
  BQ_CHECK(exchange != Exchange::gloo || launch.world_size <= 1, ExitCode::usage,
           "--dist-backend gloo: this bayesq was built without Gloo's headers (Debian: libgloo-dev); use "
           "--dist-backend store");
#endif
  auto world = std::make_shared<World>();
  world->rank_ = launch.rank;
  world->size_ = launch.world_size;
  world->local_rank_ = launch.local_rank;
  world->launcher_ = launch.launcher;
  if (launch.world_size <= 1) return world;
  world->group_ = std::make_unique<Group>();
  // c10d logs warnings of its own (socket timeouts, a peer's closed connection) with source locations and stack
  // frames; the job's failure is reported as one line instead. TORCH_CPP_LOG_LEVEL, when set, still decides.
  if (!env("TORCH_CPP_LOG_LEVEL")) FLAGS_caffe2_log_level = std::max(FLAGS_caffe2_log_level, 2);
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(launch.master_port);
    options.isServer = launch.rank == 0 && !launch.agent_store;
    options.numWorkers = static_cast<std::size_t>(launch.world_size);
    options.waitWorkers = true;
    // The rendezvous waits twice (every rank joining the store, then Gloo connecting the ranks through it): 2/5
    // of the timeout each keeps the whole join within it. Collectives get the whole timeout each.
    options.timeout = timeout * 2 / 5;
    const auto tcp = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, options);
    // torchrun's agent keeps its store across restarts of the workers: keys carry the restart count.
    const char* restart = env("TORCHELASTIC_RESTART_COUNT");
    world->group_->store = c10::make_intrusive<c10d::PrefixStore>(
        std::string("bayesq/attempt") + (restart ? restart : "0"), tcp);
    world->group_->timeout = timeout;
#ifdef BAYESQ_GLOO
    if (exchange != Exchange::store) {
      auto gloo = c10d::ProcessGroupGloo::Options::create(timeout * 2 / 5);
      if (const char* ifname = env("GLOO_SOCKET_IFNAME"))
        gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      else
        gloo->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      gloo->threads = 2;
      world->group_->gloo =
          c10::make_intrusive<c10d::ProcessGroupGloo>(world->group_->store, launch.rank, launch.world_size, gloo);
    }
#endif
  } catch (const UserError&) {
    throw;
  } catch (const std::exception& e) {
    rethrow_as_job_failure("joining the job at " + launch.master_addr + ":" + std::to_string(launch.master_port),
                           launch.rank, e);
  }
  return world;
}

std::vector<std::vector<uint8_t>> World::all_gather_bytes(const std::vector<uint8_t>& mine) const {
  if (size_ <= 1) return {mine};
  try {
#ifdef BAYESQ_GLOO
    if (group_->gloo) {
      // Sizes first, then every rank's bytes padded to the largest.
      std::vector<at::Tensor> size_in{torch::tensor({static_cast<int64_t>(mine.size())}, torch::kInt64)};
      std::vector<std::vector<at::Tensor>> size_out(1);
      for (int r = 0; r < size_; ++r) size_out[0].push_back(torch::zeros({1}, torch::kInt64));
      c10d::AllgatherOptions options;
      options.timeout = group_->timeout;
      group_->gloo->allgather(size_out, size_in, options)->wait();
      std::vector<int64_t> sizes;
      for (const at::Tensor& t : size_out[0]) sizes.push_back(t.item<int64_t>());
      const int64_t longest = std::max<int64_t>(1, *std::max_element(sizes.begin(), sizes.end()));
      at::Tensor padded = torch::zeros({longest}, torch::kUInt8);
      if (!mine.empty()) std::memcpy(padded.data_ptr<uint8_t>(), mine.data(), mine.size());
      std::vector<at::Tensor> bytes_in{padded};
      std::vector<std::vector<at::Tensor>> bytes_out(1);
      for (int r = 0; r < size_; ++r) bytes_out[0].push_back(torch::zeros({longest}, torch::kUInt8));
      group_->gloo->allgather(bytes_out, bytes_in, options)->wait();
      std::vector<std::vector<uint8_t>> out;
      for (int r = 0; r < size_; ++r) {
        const uint8_t* p = bytes_out[0][static_cast<std::size_t>(r)].data_ptr<uint8_t>();
        out.emplace_back(p, p + sizes[static_cast<std::size_t>(r)]);
      }
      return out;
    }
#endif
    // The store: this rank's bytes in chunks under the collective's keys, then the chunk count under the rank's
    // key (last, so a rank that sees the count finds the chunks); then every rank's. Once every count of collective
    // k is there, every rank has finished collective k-1 (its reads included), so this rank's keys of k-1 go.
    c10d::Store& store = *group_->store;
    const int64_t k = group_->collectives++;
    const std::size_t chunks = (mine.size() + kStoreChunkBytes - 1) / kStoreChunkBytes;
    for (std::size_t c = 0; c < chunks; ++c) {
      const auto from = mine.begin() + static_cast<std::ptrdiff_t>(c * kStoreChunkBytes);
      const auto to = mine.begin() + static_cast<std::ptrdiff_t>(std::min(mine.size(), (c + 1) * kStoreChunkBytes));
      store.set(chunk_key(k, rank_, c), std::vector<uint8_t>(from, to));
    }
    store.set(exchange_key(k, rank_), std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(&chunks),
                                                           reinterpret_cast<const uint8_t*>(&chunks) + sizeof chunks));
    std::vector<std::string> keys;
    for (int r = 0; r < size_; ++r) keys.push_back(exchange_key(k, r));
    store.wait(keys, group_->timeout);
    if (k > 0) {
      store.deleteKey(exchange_key(k - 1, rank_));
      for (std::size_t c = 0; c < group_->previous_chunks; ++c) store.deleteKey(chunk_key(k - 1, rank_, c));
    }
    group_->previous_chunks = chunks;
    std::vector<std::vector<uint8_t>> out;
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) {
        out.push_back(mine);
        continue;
      }
      const std::vector<uint8_t> count = store.get(keys[static_cast<std::size_t>(r)]);
      BQ_ASSERT(count.size() == sizeof(std::size_t), "rank ", r, " posted a chunk count of ", count.size(), " bytes");
      std::size_t their_chunks = 0;
      std::memcpy(&their_chunks, count.data(), sizeof their_chunks);
      std::vector<uint8_t> bytes;
      for (std::size_t c = 0; c < their_chunks; ++c) {
        const std::vector<uint8_t> chunk = store.get(chunk_key(k, r, c));
        bytes.insert(bytes.end(), chunk.begin(), chunk.end());
      }
      out.push_back(std::move(bytes));
    }
    return out;
  } catch (const UserError&) {
    throw;
  } catch (const std::exception& e) {
    rethrow_as_job_failure("exchanging results with the other processes", rank_, e);
  }
}

void World::finish() const {
  if (size_ <= 1) return;
  try {
    c10d::Store& store = *group_->store;
    store.set("bayesq/finished/" + std::to_string(rank_), std::vector<uint8_t>{1});
    std::vector<std::string> keys;
    for (int r = 0; r < size_; ++r) keys.push_back("bayesq/finished/" + std::to_string(r));
    store.wait(keys, group_->timeout);
    // Note [Rank 0 leaves last]: that wait is itself a request to the store. Rank 0, which may serve it, could
    // see every key, return and close the server while another rank's wait was still being answered (CI: rank 1
    // failed with a broken pipe here, 1 of 3 runs; 2 of 30 under load on 2 cores). So each other rank, once its
    // wait has returned, says so with one last set, and rank 0 returns only when it has every rank's.
    if (rank_ != 0) {
      store.set("bayesq/left/" + std::to_string(rank_), std::vector<uint8_t>{1});
      return;
    }
    std::vector<std::string> left;
    for (int r = 1; r < size_; ++r) left.push_back("bayesq/left/" + std::to_string(r));
    store.wait(left, group_->timeout);
  } catch (const UserError&) {
    throw;
  } catch (const std::exception& e) {
    rethrow_as_job_failure("waiting for the other processes to finish", rank_, e);
  }
}

std::vector<double> World::all_gather(double mine) const {
  std::vector<uint8_t> bytes(sizeof(double));
  std::memcpy(bytes.data(), &mine, sizeof(double));
  std::vector<double> out;
  for (const std::vector<uint8_t>& b : all_gather_bytes(bytes)) {
    BQ_ASSERT(b.size() == sizeof(double), "a rank sent ", b.size(), " bytes for one double");
    double v = 0.0;
    std::memcpy(&v, b.data(), sizeof(double));
    out.push_back(v);
  }
  return out;
}

}  // namespace bayesq

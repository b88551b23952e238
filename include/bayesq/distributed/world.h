// One job over N processes (torch.distributed's c10d: a TCPStore for the rendezvous, a Gloo process group or the
// store itself for the exchanges), or a world of one process.
//
// Launch: the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; with
// TORCHELASTIC_USE_AGENT_STORE=True the launcher's agent already serves the store, so rank 0 connects to it as a
// client) or, in tasks srun started (SLURM_STEP_NUM_TASKS set), SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
// with MASTER_ADDR and MASTER_PORT set by the job script). Without them the world is one process and nothing else
// changes (a batch script that runs bayesq itself, without srun, is one process).
//
// Every collective waits at most the job's timeout (--dist-timeout): a rank that died or hangs makes the others
// fail with UserError(ExitCode::distributed) instead of waiting for ever.
//
// What carries the exchanges (--dist-backend): ProcessGroupGloo where the build found Gloo's headers (Debian's
// libgloo-dev; PyTorch's wheels ship libtorch with Gloo compiled in but without those headers), else the TCPStore
// alone: each rank sets its bytes under a key of the collective, waits for every rank's key and reads them (all
// through rank 0's store server; keys are deleted one collective later, when every rank is known to have read
// them). Every exchange is of host bytes (serialized blocks, doubles), so NCCL would add device copies and is not
// used. Keys live under a prefix with torchrun's restart count, so a restarted job never reads a previous
// attempt's keys from the agent's store.
//
// Note [Multi-process jobs]: every process runs the same `bayesq quantize` on its own device (cuda:LOCAL_RANK
// for --device cuda). What is split: the measured loss table, by far the largest stage of the default method
// (codebook design, error feedback and the forward passes of every option of a block): blocks go to ranks by an
// estimate of their work (weights x options, assign_blocks), each rank measures its own, and one all-gather gives
// every rank all entries and all quantized options; each round of the joint refinement, whose trials are split by
// block the same way and gathered before the re-allocation; and the diagonal calibration (hutchinson, fisher:
// each rank its share of the batches, sums gathered; Note [Calibration over several processes] in
// calibrate/curvature.cpp). Everything else runs on every rank, redundantly and identically (loading, the K-FAC
// and GPTQ layer statistics, the allocation, the final assembly); rank 0 alone writes the model and the reports,
// after the last exchange, so a failed job leaves no output. A block's measurement does not depend on which blocks
// were measured before it, so the job writes the bytes one process writes with the same --threads.
//
// Why the layer statistics are not split: their sums are [cols, cols] matrices per block whatever the number of
// examples (ResNet-50: 1.0 GB in float64, BERT-base 1.2 GB), and computing them is one of the cheapest stages
// (0.7 s and 1.1 s on one H200 for 448 examples, BENCHMARKS.md): exchanging them would cost more than it saves
// at the calibration sizes post-training quantization uses.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace bayesq {

struct LaunchInfo {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  bool agent_store = false;  // torchrun's agent serves the store: rank 0 is a client too
  std::string launcher;      // "torchrun or RANK/WORLD_SIZE", "slurm", or empty for one process
};

// The launch variables of this process. Throws UserError(usage) naming the variable when they are incomplete or
// out of range (WORLD_SIZE set without MASTER_ADDR, RANK >= WORLD_SIZE, ...).
LaunchInfo launch_from_environment();

// What carries a job's exchanges: automatic is gloo where this build has it, else store.
enum class Exchange { automatic, gloo, store };
Exchange exchange_from_name(const std::string& name);  // auto | gloo | store; throws UserError(usage)

class World {
 public:
  // A world of one process.
  World();
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  // Joins the job described by `launch` (a world of one when world_size is 1). Throws UserError(distributed)
  // when the rendezvous does not complete within `timeout`, UserError(usage) when gloo is asked for and this
  // build has no Gloo.
  static std::shared_ptr<World> join(const LaunchInfo& launch, std::chrono::milliseconds timeout,
                                     Exchange exchange = Exchange::automatic);

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  bool distributed() const { return size_ > 1; }
  const std::string& launcher() const { return launcher_; }  // LaunchInfo::launcher
  const char* exchange() const;                               // "gloo" or "store"; "none" for one process

  // Every rank's bytes, on every rank, in rank order (gloo: one all-gather of the sizes, one of the padded bytes;
  // store: one key per rank). Every rank must make the same calls in the same order.
  std::vector<std::vector<uint8_t>> all_gather_bytes(const std::vector<uint8_t>& mine) const;
  // The same for one double per rank.
  std::vector<double> all_gather(double mine) const;
  // The end of the job: returns once every rank has called it, on rank 0 only once every other rank has also
  // seen that (Note [Rank 0 leaves last] in world.cpp). Rank 0 serves the store outside torchrun, and a rank still
  // reading the last exchange's keys from it fails with a broken pipe if it exits first. Throws
  // UserError(distributed) when a rank does not arrive within the timeout. Nothing to do for one process.
  void finish() const;

 private:
  struct Group;  // c10d's store and process group, where this build has them
  std::unique_ptr<Group> group_;
  int rank_ = 0, size_ = 1, local_rank_ = 0;
  std::string launcher_;
};

// Rank `rank`'s share [first, end) of `count` items in order (calibration batches), contiguous and ascending in
// rank, sizes differing by at most one; empty where there are more ranks than items.
std::pair<int64_t, int64_t> contiguous_share(int64_t count, int rank, int ranks);

// The blocks each rank works on when per-block work is split: `cost[b]` an estimate of block b's work, assigned
// largest first to the least loaded rank (ties: the lower rank), so the split is the same on every rank.
std::vector<int> assign_blocks(const std::vector<double>& cost, int ranks);

}  // namespace bayesq

#include "bayesq/measure/joint_allocation.h"

#include <algorithm>
#include <cstdlib>

#include <torch/torch.h>

#include "bayesq/common/bytes.h"
#include "bayesq/common/errors.h"
#include "bayesq/common/progress.h"
#include "bayesq/common/timer.h"
#include "bayesq/export/model_writer.h"
#include "bayesq/measure/kl_forward.h"
#include "bayesq/measure/measured_table.h"
#include "bayesq/measure/suffix_forward.h"
#include "bayesq/model/block_discovery.h"

namespace bayesq {

namespace {

// Position of `bits` among the table's candidate bit-widths of one codebook kind (entries are bits ascending).
int bit_rank(const BlockLosses& losses, int bits) {
  std::vector<int> all;
  for (const LossEntry& e : losses.entries) all.push_back(e.bits);
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  return static_cast<int>(std::lower_bound(all.begin(), all.end(), bits) - all.begin());
}

int entry_of(const BlockLosses& losses, int bits, CodebookKind kind) {
  for (std::size_t i = 0; i < losses.entries.size(); ++i)
    if (losses.entries[i].bits == bits && losses.entries[i].kind == kind) return static_cast<int>(i);
  return -1;
}

// `allocation`'s choices re-expressed against the full table: entry indices into it and its additive losses.
void to_full_table(const LossTable& table, Allocation& allocation) {
  allocation.expected_loss = 0.0;
  for (std::size_t b = 0; b < allocation.blocks.size(); ++b) {
    BlockChoice& c = allocation.blocks[b];
    if (c.keep_fp) continue;
    c.entry = entry_of(table.blocks[b], c.bits, c.kind);
    BQ_ASSERT(c.entry >= 0, "joint allocation chose an option the table lacks for ", c.name);
    c.expected_loss = table.blocks[b].entries[static_cast<std::size_t>(c.entry)].expected_loss;
    allocation.expected_loss += c.expected_loss;
  }
}

}  // namespace

std::vector<int> window_entries(const BlockLosses& losses, const BlockChoice& current, int window) {
  std::vector<int> out;
  const int centre = current.keep_fp ? 0 : bit_rank(losses, current.bits);
  for (std::size_t i = 0; i < losses.entries.size(); ++i)
    if (current.keep_fp || std::abs(bit_rank(losses, losses.entries[i].bits) - centre) <= window)
      out.push_back(static_cast<int>(i));
  return out;
}

JointRefinement refine_allocation(const torch::jit::Module& model, const BlockIndex& index, const DataFile& data,
                                  const LossTable& table, const Allocation& start, const AllocationParams& params,
                                  const JointParams& joint, const MeasureParams& measure, const OptionBlock& option,
                                  const Compute& compute, const std::string& model_path, const World* world,
                                  const OptionsAhead& ahead, const std::function<void()>& rounds_begin) {
  const auto t0 = Clock::now();
  BQ_ASSERT(start.blocks.size() == index.blocks.size() && table.blocks.size() == index.blocks.size(),
            "joint allocation: table, allocation and index disagree");
  JointRefinement out;
  out.allocation = start;
  out.examples = std::min<int64_t>(data.size(), measure.examples > 0 ? measure.examples : data.size());
  torch::jit::Module work = eval_copy(model, compute.device);
  // Every quantized block at its current option; `current[b]` is the value to restore after a trial.
  const std::size_t count = index.blocks.size();
  std::vector<torch::Tensor> original(count), current(count);
  std::vector<std::string> names;
  for (std::size_t b = 0; b < count; ++b) {
    if (start.blocks[b].keep_fp) continue;
    original[b] = find_tensor(work, index.blocks[b].name);
    names.push_back(index.blocks[b].name);
  }
  KlForward forward(work, names, data, out.examples, compute, model_path, measure.cuda_graphs);
  out.replayed = forward.replayed();
  const std::vector<torch::Tensor>& reference = forward.reference();
  const double rows = double(forward.rows());
  ++out.forwards;
  auto measure_kl = [&]() {
    ++out.forwards;
    return forward.kl_sum() / rows;
  };
  auto dequantized = [&](std::size_t b, int entry) {
    return dequantized_tensor(option(b, entry), index.blocks[b], original[b]);
  };
  for (std::size_t b = 0; b < count; ++b) {
    if (start.blocks[b].keep_fp) continue;
    current[b] = dequantized(b, start.blocks[b].entry);
    forward.set_block(index.blocks[b].name, current[b]);
  }
  double kl = measure_kl();
  out.initial_kl = kl;
  // The table's entries are N x mean KL, N the measurement file's size (measured_table.h).
  out.additive_kl = start.expected_loss / double(data.size());
  out.skipped = joint.threshold > 0.0 && !(kl > joint.threshold * out.additive_kl);
  if (!out.skipped && joint.rounds > 0 && rounds_begin) rounds_begin();

  AllocationParams local_params = params;
  local_params.certify = false;  // the certificate is the additive table's; a local table has none worth giving
  local_params.allowed_entries.clear();  // the local table's entries are all measured here
  for (int round = 0; round < (out.skipped ? 0 : joint.rounds); ++round) {
    const auto tr = Clock::now();
    JointRound r;
    const int64_t forwards_before = out.forwards;
    // The local table: each block's options within `window` candidate bit-widths of its current one, scored by
    // N x the KL sum with that block changed and every other block as it is (N x J(A) for the current option).
    LossTable local;
    local.tau = table.tau;
    local.group_size = table.group_size;
    std::vector<std::vector<double>> trial_kl(count);  // J with block b at local entry i
    std::vector<std::vector<int>> full_entry(count);
    std::vector<int64_t> trials(count, 0);              // forward passes block b's entries need
    for (std::size_t b = 0; b < count; ++b) {
      const BlockChoice& c = out.allocation.blocks[b];
      full_entry[b] = window_entries(table.blocks[b], c, joint.window);
      for (int i : full_entry[b])
        if (!c.keep_fp && i != c.entry) ++trials[b];
    }
    // Blocks split over the processes of a job by their number of trials; each trial starts from the same
    // model (every other block at its current option), so where it runs does not change its value.
    std::vector<int> owner(count, world ? world->rank() : 0);
    if (world && world->distributed())
      owner = assign_blocks(std::vector<double>(trials.begin(), trials.end()), world->size());
    const int me = world ? world->rank() : 0;
    // Trials whose KL is still on the device (Note [Queued trials]): block, slot in trial_kl[block], queued sum.
    struct Queued {
      std::size_t block, slot;
      torch::Tensor sum;
    };
    std::vector<Queued> queued;
    auto read_back = [&]() {
      const auto tw = Clock::now();
      std::vector<torch::Tensor> sums;
      for (const Queued& q : queued) sums.push_back(q.sum);
      const std::vector<double> values = read_queued(sums);
      for (std::size_t k = 0; k < queued.size(); ++k) trial_kl[queued[k].block][queued[k].slot] = values[k] / rows;
      queued.clear();
      out.wait_seconds += seconds_since(tw);
    };
    constexpr std::size_t kMaxQueued = 64;
    Progress progress("joint refinement, round " + std::to_string(round + 1), static_cast<int64_t>(count), "blocks");
    for (std::size_t b = 0; b < count; ++b) {
      const BlockChoice& c = out.allocation.blocks[b];
      if (owner[b] == me) {
        if (ahead && trials[b] > 0) {
          const auto to = Clock::now();
          std::vector<int> asked;
          for (int i : full_entry[b])
            if (i != c.entry) asked.push_back(i);
          ahead(b, asked);
          out.option_seconds += seconds_since(to);
        }
        // Two trials or more: from the block's cached prefix (Note [Cached prefix]), the others as they are now.
        std::unique_ptr<SuffixForward> suffix;
        if (trials[b] >= 2 && measure.prefix_on(compute.device.is_cpu())) {
          const auto tp = Clock::now();
          suffix = SuffixForward::build(work, table.blocks[b].name, data, out.examples, compute);
          out.prefix_seconds += seconds_since(tp);
          if (suffix) ++out.cached_prefixes;
        }
        for (int i : full_entry[b]) {
          double trial = kl;
          if (!c.keep_fp && i != c.entry) {
            const auto to = Clock::now();
            forward.set_block(table.blocks[b].name, dequantized(b, i));
            out.option_seconds += seconds_since(to);
            ++out.forwards;
            if (suffix) trial = kl_sum(reference, suffix->log_probabilities()) / rows;
            else queued.push_back({b, trial_kl[b].size(), forward.kl_sum_queued()});
          }
          trial_kl[b].push_back(trial);
        }
        if (!c.keep_fp) forward.set_block(table.blocks[b].name, current[b]);
        if (queued.size() >= kMaxQueued) read_back();
      }
      progress.advance();
    }
    read_back();
    progress.finish();
    if (world && world->distributed()) {
      ByteWriter mine;
      for (std::size_t b = 0; b < count; ++b)
        if (owner[b] == me) {
          mine.put<uint64_t>(b);
          mine.put_vector(trial_kl[b]);
        }
      const std::vector<std::vector<uint8_t>> all = world->all_gather_bytes(mine.bytes());
      for (int r = 0; r < world->size(); ++r) {
        if (r == me) continue;
        ByteReader in(all[static_cast<std::size_t>(r)]);
        while (!in.done()) {
          const std::size_t b = static_cast<std::size_t>(in.get<uint64_t>());
          BQ_ASSERT(b < count && owner[b] == r, "rank ", r, " sent trials of block ", b, ", which is not its own");
          trial_kl[b] = in.get_vector<double>();
          BQ_ASSERT(trial_kl[b].size() == full_entry[b].size(), "rank ", r, " sent ", trial_kl[b].size(),
                    " trials of block ", b, " for ", full_entry[b].size(), " entries");
          out.forwards += trials[b];  // counted as one process counts them
        }
      }
    }
    for (std::size_t b = 0; b < count; ++b) {
      const BlockLosses& losses = table.blocks[b];
      BlockLosses l;
      l.name = losses.name;
      l.rows = losses.rows;
      l.cols = losses.cols;
      for (std::size_t k = 0; k < full_entry[b].size(); ++k) {
        LossEntry le = losses.entries[static_cast<std::size_t>(full_entry[b][k])];
        le.expected_loss = trial_kl[b][k] * double(data.size());  // the table's scale: N x mean KL
        le.measured = true;  // whether or not the additive table measured it
        l.entries.push_back(le);
      }
      local.blocks.push_back(std::move(l));
    }
    Allocation next = allocate(local, local_params);
    r.predicted_kl = kl;
    std::vector<std::size_t> changed;
    for (std::size_t b = 0; b < count; ++b) {
      const BlockChoice& c = next.blocks[b];
      if (c.keep_fp) continue;
      const int full = full_entry[b][static_cast<std::size_t>(c.entry)];
      if (full == out.allocation.blocks[b].entry) continue;
      changed.push_back(b);
      r.predicted_kl += trial_kl[b][static_cast<std::size_t>(c.entry)] - kl;
    }
    r.changed_blocks = static_cast<int64_t>(changed.size());
    r.measured_kl = kl;
    if (!changed.empty()) {
      std::vector<torch::Tensor> proposed;
      for (std::size_t b : changed) {
        proposed.push_back(dequantized(b, full_entry[b][static_cast<std::size_t>(next.blocks[b].entry)]));
        forward.set_block(index.blocks[b].name, proposed.back());
      }
      r.measured_kl = measure_kl();
      r.accepted = r.measured_kl < kl;
      if (r.accepted) {
        for (std::size_t k = 0; k < changed.size(); ++k) current[changed[k]] = proposed[k];
        kl = r.measured_kl;
        next.certified = false;
        to_full_table(table, next);
        out.allocation = std::move(next);
      } else {
        for (std::size_t b : changed) forward.set_block(index.blocks[b].name, current[b]);
      }
    }
    r.forwards = out.forwards - forwards_before;
    r.seconds = seconds_since(tr);
    out.rounds.push_back(r);
    if (!r.accepted) break;
  }
  if (world && world->distributed()) {  // the job's count, as one process alone has it
    const std::vector<double> counts = world->all_gather(double(out.cached_prefixes));
    out.cached_prefixes = 0;
    for (double n : counts) out.cached_prefixes += static_cast<int64_t>(n);
  }
  out.final_kl = kl;
  out.seconds = seconds_since(t0);
  return out;
}

void to_json(nlohmann::json& j, const JointRound& r) {
  j = nlohmann::json{{"predicted_kl", r.predicted_kl}, {"measured_kl", r.measured_kl},
                     {"changed_blocks", r.changed_blocks}, {"forwards", r.forwards},
                     {"accepted", r.accepted}};  // seconds: in the report's timings, apart from results
}

void to_json(nlohmann::json& j, const JointRefinement& r) {
  j = nlohmann::json{{"initial_kl", r.initial_kl}, {"additive_kl", r.additive_kl}, {"final_kl", r.final_kl},
                     {"examples", r.examples}, {"forwards", r.forwards}, {"rounds", r.rounds}};
  if (r.skipped) j["skipped"] = true;
  if (r.cached_prefixes > 0) j["cached_prefixes"] = r.cached_prefixes;
  if (r.replayed) j["replayed_forwards"] = true;
}

}  // namespace bayesq

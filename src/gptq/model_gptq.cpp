#include "bayesq/gptq/model_gptq.h"

#include "bayesq/capture/layer_capture.h"
#include "bayesq/common/log.h"
#include "bayesq/common/progress.h"
#include "bayesq/export/model_writer.h"
#include "bayesq/gptq/feedback.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/block_tensor.h"

namespace bayesq {

ModelGptqResult quantize_model_gptq(const torch::jit::Module& model, const BlockIndex& index,
                                    const std::vector<std::vector<float>>& rows, const std::vector<bool>& quantize,
                                    const DataFile& data, const ModelGptqParams& params, const Compute& compute,
                                    const std::string& model_path) {
  ModelGptqResult out;
  out.blocks.resize(index.blocks.size());
  out.present.assign(index.blocks.size(), false);
  torch::jit::Module work = model.clone();
  work.eval();
  work.to(compute.device);
  std::vector<std::size_t> order;
  for (std::size_t b = 0; b < index.blocks.size(); ++b)
    if (quantize[b]) order.push_back(b);
  const CaptureParams capture;  // input moments only
  std::vector<LayerStats> one_shot;
  if (!params.sequential) one_shot = capture_layer_stats(work, index, order, data, capture, compute, model_path);
  nlohmann::json blocks = nlohmann::json::array();
  Progress progress(params.sequential ? "gptq (sequential)" : "gptq", static_cast<int64_t>(order.size()), "blocks");
  for (std::size_t b : order) {
    ProgressStep step(progress);
    const BlockInfo& info = index.blocks[b];
    const LayerStats stats = params.sequential
                                 ? capture_layer_stats(work, index, {b}, data, capture, compute, model_path)[b]
                                 : one_shot[b];
    nlohmann::json entry{{"name", info.name}};
    if (stats.captured) {
      const torch::Tensor w = block_rows(find_tensor(work, info.name), info).to(compute.device);
      GptqStats gs;
      out.blocks[b] = quantize_with_feedback(w, info, stats, params.bits, CodebookKind::uniform_asymmetric,
                                             params.group_size, nullptr, params.gptq, &gs);
      entry["percdamp_used"] = gs.percdamp_used;
      entry["damp_increases"] = gs.damp_increases;
      entry["dead_columns"] = gs.dead_columns;
      if (gs.damp_increases > 0)
        log::warn("block ", info.name, ": Cholesky failed; damping raised to ", gs.percdamp_used, " x mean(diag H)");
    } else {
      const BlockWeights plain{rows[b].data(), nullptr, info.rows(), info.cols()};
      out.blocks[b] = quantize_block_rtn(plain, params.bits, params.group_size);
      entry["fallback"] = "rtn: " + stats.reason;
      log::warn("block ", info.name, ": GPTQ not possible (", stats.reason, "); round-to-nearest used");
    }
    out.present[b] = true;
    if (params.sequential) {
      const torch::Tensor original = find_tensor(work, info.name);
      assign_tensor(work, info.name, dequantized_tensor(out.blocks[b], info, original));
    }
    blocks.push_back(entry);
  }
  out.details = blocks;
  return out;
}

}  // namespace bayesq

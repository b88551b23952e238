#include "bayesq/export/model_writer.h"

#include <chrono>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/jit.h>

#include "bayesq/codebook/bit_packing.h"
#include "bayesq/common/atomic_file.h"
#include "bayesq/common/errors.h"
#include "bayesq/common/progress.h"
#include "bayesq/model/block_discovery.h"
#include "bayesq/model/block_tensor.h"
#include "bayesq/model/graph_walk.h"

namespace bayesq {

using torch::jit::Node;
using torch::jit::Value;

OutputFormat output_format_from_name(const std::string& name) {
  if (name == "packed") return OutputFormat::packed;
  if (name == "fake") return OutputFormat::fake;
  BQ_FAIL(ExitCode::usage, "unknown output format '", name, "' (expected packed or fake)");
}

const char* output_format_name(OutputFormat format) { return format == OutputFormat::fake ? "fake" : "packed"; }

namespace {

// Weight rebuilders compiled into the packed model. Codes are bit planes (bit_packing.h): plane j holds bit j of
// every code, LSB-first within a byte. `group` consecutive columns share a code table (or scale/offset); a table
// row holds the 2^bits levels of each group in turn. All arithmetic is float32, in the order Codebook uses.
constexpr const char* kRebuildSource = R"JIT(
def bq_unpack(planes: Tensor, masks: Tensor, bits: int, numel: int) -> Tensor:
    codes = torch.zeros_like(planes[0]).unsqueeze(1).expand(-1, 8).reshape(-1)
    for j in range(bits):
        bit = torch.bitwise_and(planes[j].unsqueeze(1), masks).ne(0).reshape(-1)
        codes = codes + bit.type_as(planes) * (1 << j)
    return codes[:numel].long()

def bq_group_index(cols: int, group: int, like: Tensor) -> Tensor:
    return torch.div(torch.arange(cols, device=like.device), group, rounding_mode='floor')

def bq_lloyd(planes: Tensor, masks: Tensor, table: Tensor, bits: int, rows: int, cols: int, group: int) -> Tensor:
    codes = bq_unpack(planes, masks, bits, rows * cols).reshape(rows, cols)
    index = codes + bq_group_index(cols, group, planes) * (1 << bits)
    return torch.gather(table.float().reshape(rows, -1), 1, index)

def bq_uniform(planes: Tensor, masks: Tensor, scale: Tensor, offset: Tensor, bits: int, rows: int, cols: int,
               group: int) -> Tensor:
    codes = bq_unpack(planes, masks, bits, rows * cols).reshape(rows, cols)
    index = bq_group_index(cols, group, planes)
    s = scale.float().reshape(rows, -1).index_select(1, index)
    o = offset.float().reshape(rows, -1).index_select(1, index)
    return codes.float() * s + o

def bq_uniform_symmetric(planes: Tensor, masks: Tensor, scale: Tensor, bits: int, rows: int, cols: int,
                         group: int) -> Tensor:
    codes = bq_unpack(planes, masks, bits, rows * cols).reshape(rows, cols)
    index = bq_group_index(cols, group, planes)
    s = scale.float().reshape(rows, -1).index_select(1, index)
    return (codes.float() - float((1 << bits) - 1) * 0.5) * s
)JIT";

std::shared_ptr<torch::jit::Graph> rebuild_graph(const char* name) {
  static const std::shared_ptr<torch::jit::CompilationUnit> unit = torch::jit::compile(kRebuildSource);
  auto graph = torch::jit::toGraphFunction(unit->get_function(name)).graph()->copy();
  torch::jit::Inline(*graph);
  return graph;
}

// The constants one block stores in the packed file.
struct PackedBlock {
  torch::Tensor planes;  // uint8 [bits, ceil(numel / 8)]
  torch::Tensor table;   // lloyd: fp16 [rows, groups * 2^bits]; uniform: fp16 scale [rows, groups]
  torch::Tensor offset;  // uniform_asymmetric: fp16 [rows, groups]
  int64_t code_bytes() const { return planes.numel(); }
  int64_t metadata_bytes() const { return 2 * (table.numel() + (offset.defined() ? offset.numel() : 0)); }
};

PackedBlock pack_block(const QuantizedBlock& q) {
  PackedBlock p;
  const std::vector<uint8_t> planes = pack_bitplanes(q.codes, q.bits);
  p.planes = torch::from_blob(const_cast<uint8_t*>(planes.data()),
                              {q.bits, static_cast<int64_t>(planes.size()) / q.bits}, torch::kUInt8)
                 .clone();
  const int64_t groups = static_cast<int64_t>(q.codebooks.size()) / q.rows;
  if (q.kind == CodebookKind::lloyd) {
    const int64_t levels = int64_t{1} << q.bits;
    std::vector<float> table;
    table.reserve(q.codebooks.size() * static_cast<std::size_t>(levels));
    for (const Codebook& cb : q.codebooks) table.insert(table.end(), cb.levels.begin(), cb.levels.end());
    p.table = torch::from_blob(table.data(), {q.rows, groups * levels}, torch::kFloat32).to(torch::kHalf).clone();
  } else {
    std::vector<float> scale, offset;
    for (const Codebook& cb : q.codebooks) {
      scale.push_back(cb.scale);
      offset.push_back(cb.offset);
    }
    p.table = torch::from_blob(scale.data(), {q.rows, groups}, torch::kFloat32).to(torch::kHalf).clone();
    if (q.kind == CodebookKind::uniform_asymmetric)
      p.offset = torch::from_blob(offset.data(), {q.rows, groups}, torch::kFloat32).to(torch::kHalf).clone();
  }
  return p;
}

// Inserts the rebuild subgraph of one block at the graph's insertion point, reading the packed tensors from the
// module attributes `prefix`planes / table / offset; returns the weight in the block's stored shape and dtype.
// Every op depends on those attributes, so freezing (which keeps them as attributes) cannot fold the rebuild
// into a float constant.
Value* insert_rebuild(torch::jit::Graph& graph, Value* self, const std::string& prefix, const QuantizedBlock& q,
                      const BlockInfo& info, Value* masks, c10::ScalarType dtype) {
  auto attribute = [&](const std::string& name) {
    Node* n = graph.insertNode(graph.createGetAttr(self, prefix + name));
    return n->output();
  };
  std::vector<Value*> inputs = {attribute("planes"), masks, attribute("table")};
  const char* fn = "bq_lloyd";
  if (q.kind == CodebookKind::uniform_asymmetric) {
    inputs.push_back(attribute("offset"));
    fn = "bq_uniform";
  } else if (q.kind == CodebookKind::uniform_symmetric) {
    fn = "bq_uniform_symmetric";
  }
  for (int64_t v : {int64_t{q.bits}, q.rows, q.cols, q.group_size}) inputs.push_back(graph.insertConstant(v));
  auto rebuild = rebuild_graph(fn);
  Value* rows = torch::jit::insertGraph(graph, *rebuild, inputs).at(0);
  if (info.row_axis != 0) rows = graph.insert(torch::jit::aten::t, {rows});
  Value* weight = graph.insert(torch::jit::aten::reshape, {rows, graph.insertConstant(info.shape)});
  if (dtype != c10::ScalarType::Float)
    weight = graph.insert(torch::jit::aten::to, {weight, graph.insertConstant(static_cast<int64_t>(dtype))});
  return weight;
}

void check_blocks(const BlockIndex& index, const std::vector<const QuantizedBlock*>& quantized) {
  BQ_ASSERT(quantized.size() == index.blocks.size(), "one QuantizedBlock slot per block expected");
  for (std::size_t b = 0; b < quantized.size(); ++b)
    if (quantized[b])
      BQ_ASSERT(quantized[b]->rows == index.blocks[b].rows() && quantized[b]->cols == index.blocks[b].cols(),
                "shape mismatch for ", index.blocks[b].name);
}

torch::jit::Module eval_clone(const torch::jit::Module& module) {
  torch::jit::Module clone = module.clone();
  clone.eval();
  return clone;
}

std::string metadata_json(const BlockIndex& index, const std::vector<const QuantizedBlock*>& quantized,
                          OutputFormat format) {
  nlohmann::json blocks = nlohmann::json::array();
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    const BlockInfo& info = index.blocks[b];
    nlohmann::json entry{{"name", info.name}, {"shape", info.shape}, {"op", op_kind_name(info.op)}};
    if (quantized[b]) {
      const BlockCost cost = quantized[b]->cost();
      entry["bits"] = quantized[b]->bits;
      entry["kind"] = codebook_kind_name(quantized[b]->kind);
      entry["group_size"] = quantized[b]->group_size;
      entry["code_bytes"] = cost.code_bits / 8;
      entry["metadata_bytes"] = cost.metadata_bits / 8;
    } else {
      entry["keep_fp"] = true;
    }
    blocks.push_back(entry);
  }
  return nlohmann::json{{"writer", "bayesq"}, {"format", output_format_name(format)}, {"blocks", blocks}}.dump();
}

void attach_metadata(torch::jit::Module& module, const std::string& json) {
  module.register_attribute(kMetadataAttribute, c10::StringType::get(), json);
}

WriteStats finish_stats(WriteStats stats, const std::string& path) {
  stats.file_bytes = static_cast<int64_t>(std::filesystem::file_size(path));
  stats.tensor_bytes = archive_tensor_bytes(path);
  stats.overhead_bytes = stats.file_bytes - stats.tensor_bytes;
  return stats;
}

}  // namespace

torch::Tensor dequantized_tensor(const QuantizedBlock& q, const BlockInfo& info, const torch::Tensor& like) {
  // On a GPU the codes travel (one byte per weight) and are decoded there: decoding on the host and copying four
  // bytes per weight was a quarter of ResNet-50's measured table (every option of every block is swapped in).
  return rows_to_block(dequantized_rows(q, like.device()), info, like);
}

torch::jit::Module dequantized_module(const torch::jit::Module& module, const BlockIndex& index,
                                      const std::vector<const QuantizedBlock*>& quantized) {
  check_blocks(index, quantized);
  torch::jit::Module clone = eval_clone(module);
  for (std::size_t b = 0; b < index.blocks.size(); ++b) {
    if (!quantized[b]) continue;
    const BlockInfo& info = index.blocks[b];
    const torch::Tensor original = find_tensor(clone, info.name);
    torch::Tensor value = dequantized_tensor(*quantized[b], info, original);
    value.set_requires_grad(original.requires_grad());
    assign_tensor(clone, info.name, value);
  }
  return clone;
}

int64_t archive_tensor_bytes(const std::string& path) {
  caffe2::serialize::PyTorchStreamReader reader(path);
  int64_t total = 0;
  for (const std::string& name : reader.getAllRecords()) {
    const bool tensor_record = (name.rfind("data/", 0) == 0 || name.rfind("constants/", 0) == 0);
    if (tensor_record) total += static_cast<int64_t>(std::get<1>(reader.getRecord(name)));
  }
  return total;
}

WriteStats write_quantized_model(const torch::jit::Module& module, const BlockIndex& index,
                                 const std::vector<const QuantizedBlock*>& quantized, OutputFormat format,
                                 const std::string& path) {
  const auto start = std::chrono::steady_clock::now();
  check_blocks(index, quantized);
  check_output_path(path);
  WriteStats stats;
  stats.format = output_format_name(format);
  // Serialised in memory, then written through AtomicFile: libtorch 1.13's file writer aborts the process when a
  // write fails (its destructor throws again), and an archive written to a stream is named "archive" whatever the
  // output is called, so the bytes depend on the model alone.
  int64_t blocks_written = 0;
  for (const QuantizedBlock* q : quantized) blocks_written += q != nullptr;
  Progress progress("export", blocks_written, "blocks");  // ends with the file written
  std::ostringstream archive;
  try {
    if (format == OutputFormat::fake) {
      progress.advance(blocks_written);
      torch::jit::Module fake = dequantized_module(module, index, quantized);
      for (std::size_t b = 0; b < index.blocks.size(); ++b) {
        if (!quantized[b]) continue;
        const torch::Tensor w = find_tensor(fake, index.blocks[b].name);
        stats.blocks.push_back({index.blocks[b].name, w.numel() * static_cast<int64_t>(w.element_size()), 0});
      }
      attach_metadata(fake, metadata_json(index, quantized, format));
      fake.save(archive);
    } else {
      // Rewrite the clone's inlined forward graph: every read of a quantized weight now reads its rebuild from
      // packed attributes; then freeze, keeping those attributes, so the float weights drop out of the file.
      torch::jit::Module clone = eval_clone(module);
      auto graph = clone.get_method("forward").graph();
      torch::jit::Inline(*graph);
      unflatten_weight_lists(*graph, clone);  // a scripted RNN's weight list: one read per weight
      Value* self = graph->inputs().at(0);
      std::map<std::string, std::size_t> block_of;
      for (std::size_t b = 0; b < index.blocks.size(); ++b)
        if (quantized[b]) block_of[index.blocks[b].name] = b;
      std::vector<std::vector<Node*>> reads(index.blocks.size());
      visit_nodes(graph->block(), [&](Node* n) {
        if (n->kind() != torch::jit::prim::GetAttr) return;
        const auto it = block_of.find(attribute_path(n->output(), self));
        if (it != block_of.end()) reads[it->second].push_back(n);
      });

      torch::jit::WithInsertPoint guard(graph->block()->nodes().front());
      const torch::Tensor masks = torch::tensor({1, 2, 4, 8, 16, 32, 64, 128}, torch::kUInt8);
      Value* masks_value = graph->insertConstant(masks);
      std::vector<std::string> preserved;
      std::set<std::string> packed_attributes;
      for (std::size_t b = 0; b < index.blocks.size(); ++b) {
        if (!quantized[b]) continue;
        ProgressStep step(progress);
        const BlockInfo& info = index.blocks[b];
        BQ_ASSERT(!reads[b].empty(), "block ", info.name, " is never read by the forward graph");
        const PackedBlock packed = pack_block(*quantized[b]);
        stats.blocks.push_back({info.name, packed.code_bytes(), packed.metadata_bytes()});
        stats.quantized_bytes += packed.code_bytes() + packed.metadata_bytes();
        const std::string prefix = "bayesq_" + std::to_string(b) + "_";
        std::vector<std::pair<std::string, torch::Tensor>> attributes = {{"planes", packed.planes},
                                                                         {"table", packed.table}};
        if (packed.offset.defined()) attributes.emplace_back("offset", packed.offset);
        for (const auto& a : attributes) {
          clone.register_attribute(prefix + a.first, c10::TensorType::get(), a.second);
          preserved.push_back(prefix + a.first);
          packed_attributes.insert(prefix + a.first);
        }
        const torch::Tensor weight = find_tensor(clone, info.name);
        Value* rebuilt = insert_rebuild(*graph, self, prefix, *quantized[b], info, masks_value, weight.scalar_type());
        for (Node* n : reads[b]) n->output()->replaceAllUsesWith(rebuilt);
      }
      torch::jit::Module frozen = torch::jit::freeze_module(clone, preserved);

      // What else the archive stores: the remaining tensor constants and attributes, each storage once.
      std::set<const void*> seen;
      auto count = [&](const torch::Tensor& t) {
        if (seen.insert(t.storage().unsafeGetStorageImpl()).second)
          stats.float_bytes += static_cast<int64_t>(t.storage().nbytes());
      };
      visit_nodes(frozen.get_method("forward").graph()->block(), [&](Node* n) {
        if (n->kind() == torch::jit::prim::Constant && n->output()->type()->isSubtypeOf(*c10::TensorType::get()))
          count(torch::jit::toIValue(n->output())->toTensor());
      });
      for (const auto& a : frozen.named_attributes(false))
        if (a.value.isTensor() && !packed_attributes.count(a.name)) count(a.value.toTensor());
      attach_metadata(frozen, metadata_json(index, quantized, format));
      frozen.save(archive);
    }
  } catch (const c10::Error& e) {
    std::string what = e.what_without_backtrace();
    BQ_FAIL(ExitCode::io, "cannot write model (", what.substr(0, what.find('\n')), "): ", path);
  }
  write_binary_file(path, archive.str());
  stats = finish_stats(stats, path);
  if (format == OutputFormat::fake) {
    for (const auto& b : stats.blocks) stats.quantized_bytes += b.code_bytes;
    stats.float_bytes = stats.tensor_bytes - stats.quantized_bytes;
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

void to_json(nlohmann::json& j, const WriteStats& s) {
  nlohmann::json blocks = nlohmann::json::array();
  for (const auto& b : s.blocks)
    blocks.push_back({{"name", b.name}, {"code_bytes", b.code_bytes}, {"metadata_bytes", b.metadata_bytes}});
  j = nlohmann::json{{"format", s.format},
                     {"file_bytes", s.file_bytes},
                     {"tensor_bytes", s.tensor_bytes},
                     {"quantized_bytes", s.quantized_bytes},
                     {"float_bytes", s.float_bytes},
                     {"overhead_bytes", s.overhead_bytes},
                     {"seconds", s.seconds},
                     {"blocks", blocks}};
}

}  // namespace bayesq

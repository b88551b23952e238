// Codebook: the scalar quantizer of one row or one group of a block (METHOD.md §3).
//
// A codebook maps a weight to the nearest of its 2^bits levels. Its metadata is stored in fp16 in the packed
// file, so the factory functions round it to fp16 first; `levels` are then the exact float values the file
// decodes to:
//   lloyd               level_k = table[k]                          (2^bits fp16 values)
//   uniform_asymmetric  level_k = float(k) * scale + offset         (fp16 scale and offset)
//   uniform_symmetric   level_k = (float(k) - (2^bits - 1) / 2) * scale   (fp16 scale; symmetric about zero)
// All arithmetic is float32, in the same order as the graph that rebuilds the weight in the exported model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bayesq {

enum class CodebookKind { lloyd, uniform_asymmetric, uniform_symmetric };

const char* codebook_kind_name(CodebookKind kind);
CodebookKind codebook_kind_from_name(const std::string& name);  // throws UserError(usage) on an unknown name

constexpr int kMinBits = 1;
constexpr int kMaxBits = 8;

// Bits of fp16 metadata one codebook stores in the packed file.
int64_t codebook_metadata_bits(CodebookKind kind, int bits);

struct Codebook {
  CodebookKind kind = CodebookKind::lloyd;
  int bits = 0;
  float scale = 0.0f;           // uniform kinds only (fp16-representable)
  float offset = 0.0f;          // uniform_asymmetric only (fp16-representable)
  std::vector<float> levels;    // 2^bits decoded values, ascending (except for from_table)
  // 2^bits - 1 cell ends of the encoder: the midpoints between consecutive levels, except where rescale_levels
  // (design.h) keeps the cells of the design it rescales; empty for from_table.
  std::vector<double> boundaries;

  static Codebook lloyd(int bits, const std::vector<double>& levels);
  // A lloyd table whose order is fixed by codes already assigned (after distillation moved its values): levels
  // are rounded to fp16 and kept in place; it decodes but cannot encode.
  static Codebook from_table(int bits, const std::vector<double>& table);
  static Codebook uniform_asymmetric(int bits, double scale, double offset);
  static Codebook uniform_symmetric(int bits, double scale);

  int size() const { return static_cast<int>(levels.size()); }
  // Index of the value's cell (the nearest level, but see `boundaries`); a value on a cell end goes to the lower one.
  int encode(double value) const;
  bool can_encode() const { return boundaries.size() + 1 == levels.size(); }
  float decode(int code) const { return levels[static_cast<std::size_t>(code)]; }
  int64_t metadata_bits() const { return codebook_metadata_bits(kind, bits); }
};

}  // namespace bayesq

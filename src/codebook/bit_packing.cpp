#include "bayesq/codebook/bit_packing.h"

#include "bayesq/common/errors.h"

namespace bayesq {

int64_t packed_code_bytes(int64_t count, int bits) { return int64_t{bits} * ((count + 7) / 8); }

std::vector<uint8_t> pack_bitplanes(const std::vector<uint8_t>& codes, int bits) {
  BQ_ASSERT(bits >= 1 && bits <= 8, "bits = ", bits);
  const int64_t count = static_cast<int64_t>(codes.size());
  const int64_t plane_bytes = (count + 7) / 8;
  std::vector<uint8_t> packed(static_cast<std::size_t>(packed_code_bytes(count, bits)), 0);
  for (int64_t e = 0; e < count; ++e) {
    const unsigned code = codes[static_cast<std::size_t>(e)];
    BQ_ASSERT((code >> bits) == 0, "code ", code, " does not fit ", bits, " bits");
    for (int j = 0; j < bits; ++j)
      if ((code >> j) & 1u) packed[static_cast<std::size_t>(j * plane_bytes + e / 8)] |= uint8_t(1u << (e % 8));
  }
  return packed;
}

std::vector<uint8_t> unpack_bitplanes(const std::vector<uint8_t>& packed, int64_t count, int bits) {
  BQ_ASSERT(static_cast<int64_t>(packed.size()) == packed_code_bytes(count, bits), "packed size ", packed.size());
  const int64_t plane_bytes = (count + 7) / 8;
  std::vector<uint8_t> codes(static_cast<std::size_t>(count), 0);
  for (int j = 0; j < bits; ++j)
    for (int64_t e = 0; e < count; ++e)
      if ((packed[static_cast<std::size_t>(j * plane_bytes + e / 8)] >> (e % 8)) & 1u)
        codes[static_cast<std::size_t>(e)] |= uint8_t(1u << j);
  return codes;
}

}  // namespace bayesq

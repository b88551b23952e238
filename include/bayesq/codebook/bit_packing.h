// Bit-plane packing of codes, the layout of the packed model file (METHOD.md §7).
//
// For codes c_0..c_{n-1} of `bits` bits, plane j (0 = least significant) holds bit j of every code, eight
// codes per byte, code e in byte e / 8 at bit e % 8. The planes are stored one after another:
// bits * ceil(n / 8) bytes in all, which is exactly the code cost that the allocator charges. The exported
// graph unpacks a plane with one bitwise_and against [1, 2, 4, ..., 128], so any width 1..8 uses the same ops.
#pragma once

#include <cstdint>
#include <vector>

namespace bayesq {

int64_t packed_code_bytes(int64_t count, int bits);
std::vector<uint8_t> pack_bitplanes(const std::vector<uint8_t>& codes, int bits);
std::vector<uint8_t> unpack_bitplanes(const std::vector<uint8_t>& packed, int64_t count, int bits);

}  // namespace bayesq

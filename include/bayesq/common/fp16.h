// IEEE 754 binary16 conversion. Code tables, scales and offsets are stored in fp16 in the packed file; every
// quantizer rounds its metadata through these functions before encoding, so the loss bayesq computes is the
// loss of exactly what the file reproduces.
#pragma once

#include <cstdint>

namespace bayesq {

// Round-to-nearest-even conversion; overflow saturates to +-inf, NaN stays NaN.
uint16_t float_to_half_bits(float value);
float half_bits_to_float(uint16_t bits);

// The nearest fp16-representable value, as a float.
inline float round_to_half(float value) { return half_bits_to_float(float_to_half_bits(value)); }

// Largest finite fp16 value (65504).
constexpr float kHalfMax = 65504.0f;

}  // namespace bayesq

// Scalar number formats of the checkpoint, decoded the way every CPU kernel reads them:
//   bf16  : the top 16 bits of an IEEE fp32 (so decoding is a 16-bit shift, exact);
//   MXFP4 : E2M1 codes (kFp4Values) in nibbles, low nibble first, 32 values per block sharing one E8M0 scale
//           byte s meaning 2^(s - 127) (OCP MX spec; gpt_oss/torch/weights.py).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace gpt_oss {

inline float bf16_to_f32(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &wide, sizeof(out));
  return out;
}

// E2M1: sign bit 3, then exponent/mantissa; index = the 4-bit code.
inline constexpr float kFp4Values[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                                         -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

inline constexpr int kMxfp4BlockValues = 32;  // values sharing one scale
inline constexpr int kMxfp4BlockBytes = 16;   // two codes per byte

// E8M0 scale byte → 2^(s - 127), exact for every byte (subnormal results included; 255 is NaN in the spec
// but the reference decodes it as 2^128 = inf, and so do we).
inline float e8m0_to_f32(uint8_t s) { return std::ldexp(1.0f, static_cast<int>(s) - 127); }

}  // namespace gpt_oss

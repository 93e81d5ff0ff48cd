// Counter-based random numbers shared by host and device samplers: every random number of draw `d` of seed `s` is
// a pure function of (s, d) and the token it belongs to, so a seeded generation repeats exactly, no generator
// state lives on the device, and a token's noise can be computed wherever that token's logit is.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GPT_OSS_HD __host__ __device__ __forceinline__
#else
#define GPT_OSS_HD inline
#endif

namespace gpt_oss {

GPT_OSS_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The 64 random bits of draw `draw` of `seed`; every token's uniform of that draw derives from them.
GPT_OSS_HD uint64_t draw_key(uint64_t seed, uint64_t draw) {
  return splitmix64(splitmix64(seed) ^ (draw * 0xD1B54A32D192ED03ull));
}

// Token `token`'s uniform of a draw: (k + 1/2) / 2^52 with k 52 random bits, in [2^-53, 1 - 2^-53], so never 0 or
// 1 and -log(-log(u)) is finite. Exact in double on every machine (k + 1/2 < 2^52 fits the 53-bit mantissa; 53
// random bits plus half an ulp would round the largest k up to 1.0). Within a draw, distinct tokens get distinct
// 64-bit inputs (an odd multiplier is a bijection) and splitmix64 is a bijection, so no two tokens of a draw share
// their 64 random bits.
GPT_OSS_HD double token_uniform(uint64_t key, uint64_t token) {
  const uint64_t bits = splitmix64(key ^ (token * 0x9E6C63D0676A9A99ull));
  return (static_cast<double>(bits >> 12) + 0.5) * (1.0 / 4503599627370496.0);
}

// The sampling key of a token at temperature > 0 (csrc/cpu/sampling.cpp states the law): z + g with
// z = logit / temperature and g = -log(-log(u)) a Gumbel(0, 1) draw, all in double. A division and an addition,
// never contracted into an fma on either side, so z is bit-identical on host and device; only log may differ by an
// ulp between libm and the CUDA math library.
GPT_OSS_HD double gumbel_key(float logit, double temperature, uint64_t key, uint64_t token) {
  return static_cast<double>(logit) / temperature - log(-log(token_uniform(key, token)));
}

}  // namespace gpt_oss

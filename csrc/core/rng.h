// Counter-based random numbers shared by host and device samplers: draw `i` of seed `s` is a pure function of
// (s, i), so a seeded generation repeats exactly and no generator state lives on the device.
#pragma once

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

// Uniform in [0, 1) with 53 random bits.
GPT_OSS_HD double uniform_draw(uint64_t seed, uint64_t draw) {
  const uint64_t bits = splitmix64(splitmix64(seed) ^ (draw * 0xD1B54A32D192ED03ull));
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace gpt_oss

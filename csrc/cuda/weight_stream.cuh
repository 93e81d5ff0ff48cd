// Device helpers shared by the weight-streaming GEMV families (gemv_bf16.cu, moe_mxfp4.cu): streaming loads
// that bypass L1, the m16n8k16 tensor-core step used as a batch-1 dot product, and device facts.
//
// The GEMV trick: mma.m16n8k16 with A = 16 weight rows × 16 k and every column of B = the same 16 input values.
// Lane (g = lane / 4, t = lane % 4) then holds in d[0] the dot of row g and in d[2] the dot of row g + 8: no
// cross-lane reduction. Inside one mma the k axis may be permuted freely as long as A and B use the same
// permutation, so each kernel chooses the k order that lets a lane build its fragments from one 16-byte load.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/common.cuh"

namespace gpt_oss {

// 16 bytes read once (weights): no L1 allocation, so the stream does not evict the small reused vectors.
// volatile keeps the loads in source order relative to the (volatile) mma steps: a batch of loads is issued
// before its first use instead of being sunk next to it.
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

__device__ __forceinline__ uint32_t ld_stream_u32(const void* p) {
  uint32_t r;
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(p));
  return r;
}

// d += A·B for one m16n8k16 step, fp32 accumulation. a: {row g k-lo, row g+8 k-lo, row g k-hi, row g+8 k-hi}.
__device__ __forceinline__ void mma_f16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Multiprocessors of the current device (cached per device; cudaDeviceGetAttribute is capture-safe).
inline int current_device_sms() {
  static int cached[64] = {};
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) throw std::runtime_error("CUDA device ordinal out of range");
  if (cached[dev] == 0) CUDA_CHECK(cudaDeviceGetAttribute(&cached[dev], cudaDevAttrMultiProcessorCount, dev));
  return cached[dev];
}

}  // namespace gpt_oss

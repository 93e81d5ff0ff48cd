// The attention prologue's pieces (norm_rope.cu; benchmarks/pending/qkv_attention_fused.patch reuses them in a
// kernel fused with attention): the RMSNorm of the residual into shared memory, one warp's GEMV of a rotation pair
// (rows i and i + head_dim/2 of one head, so RoPE needs no exchange) and the pair's bias + RoPE epilogue.
#pragma once

#include "cuda/norm_rope.h"

namespace gpt_oss {
namespace qkv_pairs {

constexpr int kLoadBatch = 3;  // 16-byte chunks per row per lane per batch; two batches in flight (v1: one of 6)
constexpr int kStep = 32 * kLoadBatch;

__device__ __forceinline__ float dot8(const uint4& w, const float* xn) {
  const float4 a = *reinterpret_cast<const float4*>(xn);
  const float4 b = *reinterpret_cast<const float4*>(xn + 4);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&w);
  const float2 w0 = __bfloat1622float2(h[0]), w1 = __bfloat1622float2(h[1]);
  const float2 w2 = __bfloat1622float2(h[2]), w3 = __bfloat1622float2(h[3]);
  return w0.x * a.x + w0.y * a.y + w1.x * a.z + w1.y * a.w + w2.x * b.x + w2.y * b.y + w3.x * b.z + w3.y * b.w;
}

// One warp's stream of a pair's two weight rows, double-buffered in registers: batch n + 1 is in flight while
// batch n is multiplied. start() puts both batches in flight (weights need no earlier kernel, so a kernel calls
// it before its dependency wait); finish() multiplies by xn and returns both dots, summed over the warp.
struct PairStream {
  uint4 a0[kLoadBatch], b0[kLoadBatch], a1[kLoadBatch], b1[kLoadBatch];
  const uint4* w0 = nullptr;
  const uint4* w1 = nullptr;
  int chunks = 0;

  __device__ void load_batch(uint4 (&a)[kLoadBatch], uint4 (&b)[kLoadBatch], int base) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int u = 0; u < kLoadBatch; ++u) {
      const int c = base + u * 32 + lane;
      if (c < chunks) {
        a[u] = __ldcs(w0 + c);
        b[u] = __ldcs(w1 + c);
      }
    }
  }

  // Rows row0 and row0 + half of w [rows][hidden].
  __device__ void start(const bf16* w, int hidden, size_t row0, int half) {
    w0 = reinterpret_cast<const uint4*>(w + row0 * hidden);
    w1 = reinterpret_cast<const uint4*>(w + (row0 + half) * hidden);
    chunks = hidden / 8;
    load_batch(a0, b0, 0);
    load_batch(a1, b1, kStep);
  }

  __device__ float2 finish(const float* xn) {
    const int lane = threadIdx.x % 32;
    float acc0 = 0.0f, acc1 = 0.0f;
    auto multiply = [&](const uint4 (&a)[kLoadBatch], const uint4 (&b)[kLoadBatch], int base) {
#pragma unroll
      for (int u = 0; u < kLoadBatch; ++u) {
        const int c = base + u * 32 + lane;
        if (c < chunks) {
          acc0 += dot8(a[u], xn + 8 * c);
          acc1 += dot8(b[u], xn + 8 * c);
        }
      }
    };
    for (int base = 0; base < chunks; base += 2 * kStep) {
      multiply(a0, b0, base);
      load_batch(a0, b0, base + 2 * kStep);
      multiply(a1, b1, base + kStep);
      load_batch(a1, b1, base + 3 * kStep);
    }
    return make_float2(warp_sum(acc0), warp_sum(acc1));
  }
};

// xn = rmsnorm(x) · norm_scale into shared memory (fp32, [hidden]), by every thread of a CTA of kWarps warps;
// ends with a CTA barrier. x is read through L2 (ld.cg), never L1: the previous MoE launch may still have been
// running after this kernel started, and its read-modify-write of the residual leaves this SM's L1 holding lines
// whose other rows other SMs then update.
template <int kWarps>
__device__ __forceinline__ void rmsnorm_to_shared(const NormRopeParams& p, float* xn) {
  __shared__ float partial_sums[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float4* x4 = reinterpret_cast<const float4*>(p.x);
  const float4* s4 = reinterpret_cast<const float4*>(p.norm_scale);
  float ss = 0.0f;
  for (int j = threadIdx.x; j < p.hidden / 4; j += kWarps * 32) {
    const float4 v = __ldcg(x4 + j);
    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
  ss = warp_sum(ss);
  if (lane == 0) partial_sums[warp] = ss;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += partial_sums[w];
  const float rstd = rsqrtf(total / p.hidden + p.eps);
  float4* xn4 = reinterpret_cast<float4*>(xn);
  for (int j = threadIdx.x; j < p.hidden / 4; j += kWarps * 32) {
    const float4 v = __ldcg(x4 + j), s = s4[j];
    xn4[j] = make_float4(v.x * rstd * s.x, v.y * rstd * s.y, v.z * rstd * s.z, v.w * rstd * s.w);
  }
  __syncthreads();
}

// Bias, then RoPE for q and k heads (half-split rotation: dim i pairs with dim i + head_dim/2), of pair i of
// `head` (0..q_heads-1 query, then kv_heads keys, then kv_heads values) at position pos.
__device__ __forceinline__ float2 pair_epilogue(const NormRopeParams& p, int head, int i, float2 dots, int pos) {
  const int half = p.head_dim / 2;
  const size_t row0 = static_cast<size_t>(head) * p.head_dim + i, row1 = row0 + half;
  float v0 = dots.x + __bfloat162float(p.bias[row0]);
  float v1 = dots.y + __bfloat162float(p.bias[row1]);
  if (head < p.q_heads + p.kv_heads) {
    const float2 cs = p.rope[static_cast<size_t>(pos) * half + i];
    const float r0 = v0 * cs.x - v1 * cs.y;
    const float r1 = v1 * cs.x + v0 * cs.y;
    v0 = r0;
    v1 = r1;
  }
  return make_float2(v0, v1);
}

}  // namespace qkv_pairs
}  // namespace gpt_oss

// Fused attention prologue for one decoded token:
//   1. xn = rmsnorm(x) * norm_scale              (fp32; every CTA recomputes it from L2: no separate launch)
//   2. qkv = W · xn + bias                       (bf16 W streamed once from HBM, fp32 accumulation)
//   3. q, k = rope(q, k) at position *pos        (half-split rotation: dim i pairs with dim i + head_dim/2)
//   4. q → fp32 scratch; k, v → bf16 KV cache at slot *pos % capacity
//
// Work split: a warp owns one rotation pair, i.e. rows (i, i + head_dim/2) of one head, so RoPE happens in the
// warp's epilogue with no exchange. The grid is exactly the CTAs that fit at once (3 of 8 warps per SM) and
// the pairs interleave over them, so every SM streams the same share (v2: 320 CTAs of 8 consecutive pairs
// left some SMs 3 CTAs and others 2, a 24% tail). Each lane streams 16-byte chunks of both rows in
// double-buffered batches of kLoadBatch chunks per row. The launch is a programmatic dependent one and both
// batches are issued before pdl_wait(), so they are in flight while the previous kernel (the MoE of the layer
// before) drains and while this CTA computes the norm.
//
// Floor: the weight, (q_heads + 2 kv_heads) · head_dim · hidden · 2 bytes = 29.5 MB for gpt-oss
// (5120 × 2880) → 9.8 µs at 3.0 TB/s. x, norm_scale (23 KB) are re-read by every CTA from L2.
//
// Warning: hidden % 8 == 0 (16-byte rows), head_dim even, W/x/norm_scale 16-byte aligned (cudaMalloc is).
#include "cuda/norm_rope.h"

#include "core/rope.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace gpt_oss {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kLoadBatch = 3;  // 16-byte chunks per row per lane per batch; two batches in flight (v1: one of 6)

__device__ __forceinline__ float dot8(const uint4& w, const float* xn) {
  const float4 a = *reinterpret_cast<const float4*>(xn);
  const float4 b = *reinterpret_cast<const float4*>(xn + 4);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&w);
  const float2 w0 = __bfloat1622float2(h[0]), w1 = __bfloat1622float2(h[1]);
  const float2 w2 = __bfloat1622float2(h[2]), w3 = __bfloat1622float2(h[3]);
  return w0.x * a.x + w0.y * a.y + w1.x * a.z + w1.y * a.w + w2.x * b.x + w2.y * b.y + w3.x * b.z + w3.y * b.w;
}

__global__ void __launch_bounds__(kThreads, 3) norm_qkv_rope_kernel(const NormRopeParams p) {
  TimelineScope timeline(kTlNormQkvRope);
  extern __shared__ float4 smem4[];
  float* xn = reinterpret_cast<float*>(smem4);  // [hidden]
  __shared__ float partial_sums[kWarps];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int half = p.head_dim / 2;
  const int pairs = (p.q_heads + 2 * p.kv_heads) * half;
  const int chunks = p.hidden / 8;
  // Warp w of CTA c owns pairs c + w·gridDim.x + k·(gridDim.x·kWarps): interleaved over the CTAs, so every SM
  // (a fixed number of resident CTAs) gets the same number of rows to within one per CTA.
  const int pair_stride = gridDim.x * kWarps;
  const int first_pair = blockIdx.x + gridDim.x * warp;
  const uint4* w0 = nullptr;
  const uint4* w1 = nullptr;
  auto select_pair = [&](int pair) {
    const size_t row0 = static_cast<size_t>(pair / half) * p.head_dim + pair % half;
    w0 = reinterpret_cast<const uint4*>(p.w + row0 * p.hidden);
    w1 = reinterpret_cast<const uint4*>(p.w + (row0 + half) * p.hidden);
  };

  // Double-buffered registers: batch n + 1 is in flight while batch n is multiplied.
  uint4 a0[kLoadBatch], b0[kLoadBatch], a1[kLoadBatch], b1[kLoadBatch];
  auto load_batch = [&](uint4 (&a)[kLoadBatch], uint4 (&b)[kLoadBatch], int base) {
#pragma unroll
    for (int u = 0; u < kLoadBatch; ++u) {
      const int c = base + u * 32 + lane;
      if (c < chunks) {
        a[u] = __ldcs(w0 + c);
        b[u] = __ldcs(w1 + c);
      }
    }
  };
  constexpr int kStep = 32 * kLoadBatch;
  auto start_pair = [&](int pair) {  // both register batches in flight
    select_pair(pair);
    load_batch(a0, b0, 0);
    load_batch(a1, b1, kStep);
  };
  if (first_pair < pairs) start_pair(first_pair);  // weights need no earlier kernel: stream while it drains
  pdl_launch_dependents();
  pdl_wait();
  timeline.mark_waited();

  // RMSNorm statistics in fp32 over the whole residual stream. x is read through L2 (ld.cg), never L1: the
  // previous MoE launch may still have been running after this kernel started, and its read-modify-write of
  // the residual leaves this SM's L1 holding lines whose other rows other SMs then update.
  const float4* x4 = reinterpret_cast<const float4*>(p.x);
  const float4* s4 = reinterpret_cast<const float4*>(p.norm_scale);
  float ss = 0.0f;
  for (int j = threadIdx.x; j < p.hidden / 4; j += kThreads) {
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
  for (int j = threadIdx.x; j < p.hidden / 4; j += kThreads) {
    const float4 v = __ldcg(x4 + j), s = s4[j];
    smem4[j] = make_float4(v.x * rstd * s.x, v.y * rstd * s.y, v.z * rstd * s.z, v.w * rstd * s.w);
  }
  __syncthreads();
  const int pos = *p.pos;

  for (int pair = first_pair; pair < pairs; pair += pair_stride) {
    if (pair != first_pair) start_pair(pair);
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
    acc0 = warp_sum(acc0);
    acc1 = warp_sum(acc1);
    if (lane != 0) continue;

    const int head = pair / half, i = pair % half;
    const size_t row0 = static_cast<size_t>(head) * p.head_dim + i, row1 = row0 + half;
    float v0 = acc0 + __bfloat162float(p.bias[row0]);
    float v1 = acc1 + __bfloat162float(p.bias[row1]);
    if (head < p.q_heads + p.kv_heads) {
      const float2 cs = p.rope[static_cast<size_t>(pos) * half + i];
      const float r0 = v0 * cs.x - v1 * cs.y;
      const float r1 = v1 * cs.x + v0 * cs.y;
      v0 = r0;
      v1 = r1;
    }
    if (head < p.q_heads) {
      p.q[row0] = v0;
      p.q[row1] = v1;
      continue;
    }
    const bool is_k = head < p.q_heads + p.kv_heads;
    const int kv_head = is_k ? head - p.q_heads : head - p.q_heads - p.kv_heads;
    bf16* cache = is_k ? p.cache.k : p.cache.v;
    const size_t at = (static_cast<size_t>(kv_head) * p.cache.capacity + pos % p.cache.capacity) * p.head_dim + i;
    cache[at] = __float2bfloat16(v0);
    cache[at + half] = __float2bfloat16(v1);
  }
}

}  // namespace

std::vector<float> yarn_rope_table(const ModelConfig& c, int positions) {
  const YarnRope rope = yarn_rope(c);
  const int half = c.head_dim / 2;
  std::vector<float> cos(half), sin(half), table(static_cast<size_t>(positions) * half * 2);
  for (int t = 0; t < positions; ++t) {
    rope_cos_sin(rope, t, cos.data(), sin.data());
    float* row = table.data() + static_cast<size_t>(t) * half * 2;
    for (int j = 0; j < half; ++j) {
      row[2 * j] = cos[j];
      row[2 * j + 1] = sin[j];
    }
  }
  return table;
}

void launch_norm_qkv_rope(const NormRopeParams& p, cudaStream_t stream) {
  if (p.hidden <= 0 || p.hidden % 8 != 0)
    throw std::invalid_argument("norm_qkv_rope: hidden must be a positive multiple of 8, got " + std::to_string(p.hidden));
  if (p.head_dim <= 0 || p.head_dim % 2 != 0)
    throw std::invalid_argument("norm_qkv_rope: head_dim must be even, got " + std::to_string(p.head_dim));
  if (p.cache.capacity <= 0) throw std::invalid_argument("norm_qkv_rope: KV cache capacity must be positive");
  const int pairs = (p.q_heads + 2 * p.kv_heads) * (p.head_dim / 2);
  const size_t smem = static_cast<size_t>(p.hidden) * sizeof(float);
  if (smem > 48 * 1024) {
    CUDA_CHECK(cudaFuncSetAttribute(norm_qkv_rope_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
  }
  // As many CTAs as fit at once (3 per SM), each owning an interleaved share of the pairs: one balanced wave.
  int device = 0, sms = 0, per_sm = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, norm_qkv_rope_kernel, kThreads, smem));
  const int grid = std::max(1, std::min(ceil_div(pairs, kWarps), sms * std::max(per_sm, 1)));
  launch_pdl(norm_qkv_rope_kernel, dim3(grid), dim3(kThreads), smem, stream, p);
}

}  // namespace gpt_oss

// The attention prologue's pieces (norm_rope.cu; session 12's kernel fused with attention, in git history, reused
// them): the RMSNorm of the residual into shared memory, one warp's GEMV of a rotation pair
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

// RMSNorm into shared memory in two calls, by every thread of a CTA of kWarps warps (the same element mapping in
// both, so no barrier is needed between them):
//   stage_norm_scale: xn ← norm_scale by cp.async, before the dependency wait (a weight: no earlier kernel
//     writes it), using no registers while the weight stream's batches hold them;
//   rmsnorm_to_shared: xn ← rmsnorm(x) · xn (fp32, [hidden]); ends with a CTA barrier.
// x is read through L2 (ld.cg), never L1: the previous MoE launch may still have been running after this kernel
// started, and its read-modify-write of the residual leaves this SM's L1 holding lines whose other rows other SMs
// then update. Up to kNormLoads float4 a thread (hidden ≤ 3072 at 8 warps: gpt-oss's 2880), x's loads go out at
// once, unpredicated (indices clamped, extras zeroed after), and stay in registers for the second pass: one L2
// round trip after the wait. (A loop bounded at run time compiled to a one-load remainder loop: for 2880, 2-3
// dependent round trips for the sum of squares and as many again for the scaled write. With the first pair's
// constants before the wait, in norm_qkv_rope: H100, decode at 1k, 20b 514.8 → 519.9 tok/s, 120b 365.3 → 369.9.)
constexpr int kNormLoads = 3;
template <int kWarps>
__device__ __forceinline__ void stage_norm_scale(const NormRopeParams& p, float* xn) {
  const int n4 = p.hidden / 4;
  for (int j = threadIdx.x; j < n4; j += kWarps * 32) cp_async16(xn + 4 * j, p.norm_scale + 4 * j, true);
  cp_async_commit();
}

template <int kWarps>
__device__ __forceinline__ void rmsnorm_to_shared(const NormRopeParams& p, float* xn) {
  __shared__ float partial_sums[kWarps];
  constexpr int kThreads = kWarps * 32;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, n4 = p.hidden / 4;
  const float4* x4 = reinterpret_cast<const float4*>(p.x);
  float4* xn4 = reinterpret_cast<float4*>(xn);
  const bool in_registers = n4 <= kNormLoads * kThreads;  // uniform
  float4 v[kNormLoads];
  float ss = 0.0f;
  if (in_registers) {
#pragma unroll
    for (int u = 0; u < kNormLoads; ++u) v[u] = __ldcg(x4 + min(tid + u * kThreads, n4 - 1));
#pragma unroll
    for (int u = 0; u < kNormLoads; ++u) {
      if (tid + u * kThreads >= n4) v[u] = make_float4(0.f, 0.f, 0.f, 0.f);
      ss += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
    }
  } else {
    for (int j = tid; j < n4; j += kThreads) {
      const float4 x = __ldcg(x4 + j);
      ss += x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
    }
  }
  ss = warp_sum(ss);
  if (lane == 0) partial_sums[warp] = ss;
  cp_async_wait<0>();  // this thread's norm_scale copies (stage_norm_scale): the elements it scales below
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += partial_sums[w];
  const float rstd = rsqrtf(total / p.hidden + p.eps);
  auto scale = [&](int j, float4 x) {
    const float4 s = xn4[j];
    xn4[j] = make_float4(x.x * rstd * s.x, x.y * rstd * s.y, x.z * rstd * s.z, x.w * rstd * s.w);
  };
  if (in_registers) {
#pragma unroll
    for (int u = 0; u < kNormLoads; ++u)
      if (tid + u * kThreads < n4) scale(tid + u * kThreads, v[u]);
  } else {
    for (int j = tid; j < n4; j += kThreads) scale(j, __ldcg(x4 + j));
  }
  __syncthreads();
}

// Pair i of `head` (0..q_heads-1 query, then kv_heads keys, then kv_heads values): its two biases and, for q and
// k heads, its rotation (cos, sin) at position pos. Weights and the position only (written before the graph, as
// attention relies on too), so they may be read before the dependency wait.
struct PairConsts {
  float bias0, bias1;
  float2 cs;
  bool rotate;  // q and k heads
};
__device__ __forceinline__ PairConsts pair_consts(const NormRopeParams& p, int head, int i, int pos) {
  const int half = p.head_dim / 2;
  const size_t row0 = static_cast<size_t>(head) * p.head_dim + i, row1 = row0 + half;
  const bool rotate = head < p.q_heads + p.kv_heads;
  const float2 cs = rotate ? p.rope[static_cast<size_t>(pos) * half + i] : make_float2(1.f, 0.f);
  return {__bfloat162float(p.bias[row0]), __bfloat162float(p.bias[row1]), cs, rotate};
}

// Bias, then RoPE for q and k heads (half-split rotation: dim i pairs with dim i + head_dim/2).
__device__ __forceinline__ float2 pair_epilogue(const PairConsts& c, float2 dots) {
  const float v0 = dots.x + c.bias0, v1 = dots.y + c.bias1;
  if (!c.rotate) return make_float2(v0, v1);
  return make_float2(v0 * c.cs.x - v1 * c.cs.y, v1 * c.cs.x + v0 * c.cs.y);
}

}  // namespace qkv_pairs
}  // namespace gpt_oss

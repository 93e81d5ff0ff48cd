// Batched prefill: the dense and attention parts of one layer for a chunk of T tokens (see prefill.h).
//
// GEMM (qkv, out-projection, router gate): a warp owns 16 weight rows × 64 tokens (8 n8 tiles, 32 fp32
// accumulators a lane); a CTA is 4 warps = 64 rows; grid (ceil(rows / 64), ceil(T / 64)). Per 32-column block,
// lane (g, t) loads 16 B of weight rows g and g + 8 (columns 8t .. 8t + 7) — the A fragments of two m16n8k16
// steps with the k axis permuted inside the block, the trick of gemv_bf16.cu — and for each n8 tile 16 B of
// token g's input at the same columns (the B fragments, same permutation). The weight tile is read from HBM
// once per 64 tokens; inputs come through L1/L2 (they are ≤ 3 MB a chunk). Every output belongs to one lane:
// no split-K, no atomics, deterministic.
//
// Attention: one CTA per (query, KV head), one warp per query head of the group (GQA: the group's K/V tile is
// staged once in shared memory for all its heads), 32 keys a step: lane = key for the scores, lane = two
// output dims for P·V, online softmax in the log2 domain, the sink in the denominator once. CUDA cores, fp32:
// attention is ≤ 15 % of a 1k prefill's FLOPs (see benchmarks/NOTES.md); a tensor-core version is the next
// step once the GEMMs are measured.
//
// Sliding-window rings: the chunk's own keys are read from a scratch copy (k_chunk / v_chunk), positions before
// the chunk from the cache, and the chunk is committed to the cache only after the layer's attention. So a
// chunk longer than the ring is exact: a key a later query of the chunk needs is never overwritten first.
#include "cuda/prefill.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "cuda/attention_decode.h"
#include "cuda/weight_stream.cuh"

namespace gpt_oss {
namespace {

constexpr int kD = kAttentionHeadDim;
constexpr int kGemmWarps = 4;
constexpr int kGemmRows = 16 * kGemmWarps;
constexpr int kGemmTokens = 64;
constexpr int kNTiles = kGemmTokens / 8;
constexpr float kLog2e = 1.4426950408889634f;

void require(bool ok, const char* who, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(who) + ": " + what);
}

__global__ void prefill_embedding_kernel(const bf16* __restrict__ table, const int32_t* __restrict__ tokens,
                                         int hidden, float* __restrict__ x) {
  const int t = blockIdx.x;
  const bf16* row = table + static_cast<int64_t>(tokens[t]) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) x[static_cast<int64_t>(t) * hidden + i] = __bfloat162float(row[i]);
}

__global__ void prefill_rmsnorm_kernel(const float* __restrict__ x, const float* __restrict__ scale, int hidden,
                                       float eps, bf16* __restrict__ xn, bf16* __restrict__ xn_lo) {
  __shared__ float s_red[32];
  const int t = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  const float* row = x + static_cast<int64_t>(t) * hidden;
  float ss = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss = fmaf(row[i], row[i], ss);
  ss = warp_sum(ss);
  if (lane == 0) s_red[warp] = ss;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < nwarps; ++w) total += s_red[w];
  const float inv_rms = rsqrtf(total / static_cast<float>(hidden) + eps);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float v = row[i] * inv_rms * scale[i];
    const bf16 hi = __float2bfloat16(v);
    xn[static_cast<int64_t>(t) * hidden + i] = hi;
    if (xn_lo) xn_lo[static_cast<int64_t>(t) * hidden + i] = __float2bfloat16(v - __bfloat162float(hi));
  }
}

__global__ void __launch_bounds__(kGemmWarps * 32)
    prefill_gemm_bf16_kernel(const bf16* __restrict__ W, const bf16* __restrict__ bias, const bf16* __restrict__ X,
                             const bf16* __restrict__ X_lo, int rows, int cols, int T, float* __restrict__ Y, int ldy,
                             bool accumulate) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int row0 = blockIdx.x * kGemmRows + warp * 16;
  const int tok0 = blockIdx.y * kGemmTokens;
  if (row0 >= rows) return;  // no barrier below: a warp past the last row may leave
  const int rg = row0 + g, rg8 = row0 + g + 8;
  const bf16* w_g = W + static_cast<int64_t>(min(rg, rows - 1)) * cols + 8 * t;
  const bf16* w_g8 = W + static_cast<int64_t>(min(rg8, rows - 1)) * cols + 8 * t;
  const bool ok_g = rg < rows, ok_g8 = rg8 < rows;
  const bf16* x_n[kNTiles];
  bool ok_n[kNTiles];
#pragma unroll
  for (int n = 0; n < kNTiles; ++n) {
    const int tok = tok0 + n * 8 + g;
    ok_n[n] = tok < T;
    x_n[n] = X + static_cast<int64_t>(min(tok, T - 1)) * cols + 8 * t;
  }
  float acc[kNTiles][4] = {};
  const uint4 zero = make_uint4(0, 0, 0, 0);
  // cols % 8 == 0: a lane's 8 columns of a block are all in or all out.
  auto load_w = [&](const bf16* row, bool ok, int c0) { return ok && c0 + 8 * t < cols ? ld_stream(row + c0) : zero; };
  uint4 next_a = load_w(w_g, ok_g, 0), next_b = load_w(w_g8, ok_g8, 0);
  for (int c0 = 0; c0 < cols; c0 += 32) {
    const bool in = c0 + 8 * t < cols;
    const uint4 wa = next_a, wb = next_b;
    if (c0 + 32 < cols) {  // the next block's weights are in flight during this block's mma
      next_a = load_w(w_g, ok_g, c0 + 32);
      next_b = load_w(w_g8, ok_g8, c0 + 32);
    }
#pragma unroll
    for (int n = 0; n < kNTiles; ++n) {
      const uint4 xv = in && ok_n[n] ? __ldg(reinterpret_cast<const uint4*>(x_n[n] + c0)) : zero;
      mma_bf16(acc[n], wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
      mma_bf16(acc[n], wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
      if (X_lo) {  // the input's low bf16 half: X + X_lo carries ~16 bits, as the decode path's fp32 input
        const uint4 xl = in && ok_n[n] ? __ldg(reinterpret_cast<const uint4*>(X_lo + (x_n[n] - X) + c0)) : zero;
        mma_bf16(acc[n], wa.x, wb.x, wa.y, wb.y, xl.x, xl.y);
        mma_bf16(acc[n], wa.z, wb.z, wa.w, wb.w, xl.z, xl.w);
      }
    }
  }
  const float b_g = bias && ok_g ? __bfloat162float(bias[rg]) : 0.f;
  const float b_g8 = bias && ok_g8 ? __bfloat162float(bias[rg8]) : 0.f;
#pragma unroll
  for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // accumulator columns 2t, 2t + 1 of the n8 tile
      const int tok = tok0 + n * 8 + 2 * t + h;
      if (tok >= T) continue;
      float* y = Y + static_cast<int64_t>(tok) * ldy;
      if (ok_g) y[rg] = (accumulate ? y[rg] : 0.f) + acc[n][h] + b_g;
      if (ok_g8) y[rg8] = (accumulate ? y[rg8] : 0.f) + acc[n][2 + h] + b_g8;
    }
  }
}

// One thread per rotation pair (i, i + 32) of one head of one token.
__global__ void prefill_rope_kernel(const float* __restrict__ qkv, const float2* __restrict__ rope, int pos0, int T,
                                    int q_heads, int kv_heads, float* __restrict__ q, bf16* __restrict__ k_chunk,
                                    bf16* __restrict__ v_chunk) {
  constexpr int half = kD / 2;
  const int heads = q_heads + 2 * kv_heads;
  const int64_t total = static_cast<int64_t>(T) * heads * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const int head = static_cast<int>((idx / half) % heads);
    const int t = static_cast<int>(idx / (static_cast<int64_t>(half) * heads));
    const float* row = qkv + (static_cast<int64_t>(t) * heads + head) * kD;
    float v0 = row[i], v1 = row[i + half];
    if (head < q_heads + kv_heads) {
      const float2 cs = rope[static_cast<int64_t>(pos0 + t) * half + i];
      const float r0 = v0 * cs.x - v1 * cs.y, r1 = v1 * cs.x + v0 * cs.y;
      v0 = r0, v1 = r1;
    }
    if (head < q_heads) {
      float* out = q + (static_cast<int64_t>(t) * q_heads + head) * kD;
      out[i] = v0, out[i + half] = v1;
    } else {
      const bool is_k = head < q_heads + kv_heads;
      const int kvh = head - q_heads - (is_k ? 0 : kv_heads);
      bf16* out = (is_k ? k_chunk : v_chunk) + (static_cast<int64_t>(t) * kv_heads + kvh) * kD;
      out[i] = __float2bfloat16(v0), out[i + half] = __float2bfloat16(v1);
    }
  }
}

constexpr int kAttnKeys = 32;

__global__ void prefill_attention_kernel(const PrefillAttentionParams p) {
  __shared__ float s_k[kAttnKeys][kD + 1];  // +1: lane = key reads a column without bank conflicts
  __shared__ float s_v[kAttnKeys][kD];
  __shared__ float s_q[kAttentionMaxGroup][kD];
  const int t = blockIdx.x, kvh = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = p.q_heads / p.kv_heads, head = kvh * group + warp;
  const int pos = p.pos0 + t;
  const int lo = p.window > 0 ? max(0, pos - p.window + 1) : 0;
  const float q_scale = p.sm_scale * kLog2e;
  for (int i = threadIdx.x; i < group * kD; i += blockDim.x)
    s_q[i / kD][i % kD] = p.q[(static_cast<int64_t>(t) * p.q_heads + kvh * group) * kD + i] * q_scale;

  float m = -INFINITY, l = 0.f, o0 = 0.f, o1 = 0.f;
  for (int base = lo; base <= pos; base += kAttnKeys) {
    __syncthreads();  // the previous tile is consumed (and s_q written, on the first pass)
    for (int i = threadIdx.x; i < kAttnKeys * kD / 8; i += blockDim.x) {
      const int key = i / (kD / 8), d8 = (i % (kD / 8)) * 8, j = base + key;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (j <= pos) {
        const bf16 *kr, *vr;
        if (j < p.pos0) {
          const int64_t at = (static_cast<int64_t>(kvh) * p.cache.capacity + j % p.cache.capacity) * kD + d8;
          kr = p.cache.k + at, vr = p.cache.v + at;
        } else {
          const int64_t at = (static_cast<int64_t>(j - p.pos0) * p.kv_heads + kvh) * kD + d8;
          kr = p.k_chunk + at, vr = p.v_chunk + at;
        }
        kv = *reinterpret_cast<const uint4*>(kr);
        vv = *reinterpret_cast<const uint4*>(vr);
      }
      const bf16* kh = reinterpret_cast<const bf16*>(&kv);
      const bf16* vh = reinterpret_cast<const bf16*>(&vv);
#pragma unroll
      for (int e = 0; e < 8; ++e) s_k[key][d8 + e] = __bfloat162float(kh[e]), s_v[key][d8 + e] = __bfloat162float(vh[e]);
    }
    __syncthreads();
    const int j = base + lane;
    float s = -INFINITY;
    if (j <= pos) {
      s = 0.f;
#pragma unroll 16
      for (int d = 0; d < kD; ++d) s = fmaf(s_q[warp][d], s_k[lane][d], s);
    }
    const float m_new = fmaxf(m, warp_max(s));  // finite: the tile holds at least key `base` ≤ pos
    const float corr = exp2f(m - m_new);
    const float pr = j <= pos ? exp2f(s - m_new) : 0.f;
    l = l * corr + warp_sum(pr);
    o0 *= corr, o1 *= corr;
#pragma unroll 8
    for (int key = 0; key < kAttnKeys; ++key) {
      const float pk = __shfl_sync(0xffffffffu, pr, key);
      o0 = fmaf(pk, s_v[key][lane], o0);
      o1 = fmaf(pk, s_v[key][lane + 32], o1);
    }
    m = m_new;
  }
  const float sink = p.sinks[head] * kLog2e;
  const float m_max = fmaxf(m, sink);
  const float w = exp2f(m - m_max);
  const float scale = w / (l * w + exp2f(sink - m_max));
  bf16* out = p.out + (static_cast<int64_t>(t) * p.q_heads + head) * kD;
  out[lane] = __float2bfloat16(o0 * scale);
  out[lane + 32] = __float2bfloat16(o1 * scale);
}

__global__ void prefill_kv_commit_kernel(const uint4* __restrict__ k_chunk, const uint4* __restrict__ v_chunk,
                                         int pos0, int first, int T, int kv_heads, KvLayerCache cache) {
  constexpr int per_row = kD / 8;
  const int64_t total = static_cast<int64_t>(T - first) * kv_heads * per_row;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int d = static_cast<int>(idx % per_row);
    const int kvh = static_cast<int>((idx / per_row) % kv_heads);
    const int t = first + static_cast<int>(idx / (static_cast<int64_t>(per_row) * kv_heads));
    const int64_t src = (static_cast<int64_t>(t) * kv_heads + kvh) * per_row + d;
    const int64_t dst = (static_cast<int64_t>(kvh) * cache.capacity + (pos0 + t) % cache.capacity) * per_row + d;
    reinterpret_cast<uint4*>(cache.k)[dst] = k_chunk[src];
    reinterpret_cast<uint4*>(cache.v)[dst] = v_chunk[src];
  }
}

// One warp per token (warp_route). The decode route (router.cuh, ranks within a CTA) picks the same experts and
// weights by the same ranks_before order; on a NaN logit it answers ids -1 where warp_route answers NaN weights.
__global__ void prefill_topk_softmax_kernel(const float* __restrict__ logits, int T, int experts, int k,
                                            int32_t* __restrict__ ids, float* __restrict__ weights) {
  const int t = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (t >= T) return;
  const float* row = logits + static_cast<int64_t>(t) * experts;
  warp_route(experts, k, [row](int e) { return row[e]; }, ids + static_cast<int64_t>(t) * k,
             weights + static_cast<int64_t>(t) * k);
}

// One CTA. The ids go to shared memory; thread e counts expert e's pairs, a serial scan gives the offsets, and
// thread e then writes its pairs in pair order: the same grouping on every run, no atomics.
constexpr int kGroupThreads = 256;

__global__ void __launch_bounds__(kGroupThreads)
    prefill_group_experts_kernel(const int32_t* __restrict__ ids, int pairs, int experts, int tile_tokens,
                                 int32_t* __restrict__ order, int32_t* __restrict__ sorted_of, int4* __restrict__ tiles,
                                 int32_t* __restrict__ tile_count) {
  extern __shared__ int32_t s_ids[];  // [pairs]
  __shared__ int s_count[kRouteMaxExperts], s_offset[kRouteMaxExperts], s_tile0[kRouteMaxExperts];
  for (int i = threadIdx.x; i < pairs; i += blockDim.x) s_ids[i] = ids[i];
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    int c = 0;
    for (int i = 0; i < pairs; ++i) c += s_ids[i] == e;
    s_count[e] = c;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int offset = 0, tile = 0;
    for (int e = 0; e < experts; ++e) {
      s_offset[e] = offset, s_tile0[e] = tile;
      offset += s_count[e];
      tile += (s_count[e] + tile_tokens - 1) / tile_tokens;
    }
    *tile_count = tile;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    int at = s_offset[e];
    for (int i = 0; i < pairs; ++i)
      if (s_ids[i] == e) order[at] = i, sorted_of[i] = at, ++at;
    for (int s = 0, n = s_tile0[e]; s < s_count[e]; s += tile_tokens, ++n)
      tiles[n] = make_int4(e, s_offset[e] + s, min(tile_tokens, s_count[e] - s), 0);
  }
}

__global__ void prefill_moe_combine_kernel(const float* __restrict__ y, const int32_t* __restrict__ sorted_of,
                                           const float* __restrict__ weights, int k, int hidden, float* __restrict__ x) {
  const int t = blockIdx.x;
  for (int h = threadIdx.x; h < hidden; h += blockDim.x) {
    float sum = 0.f;
    for (int j = 0; j < k; ++j)
      sum = fmaf(weights[t * k + j], y[static_cast<int64_t>(sorted_of[t * k + j]) * hidden + h], sum);
    x[static_cast<int64_t>(t) * hidden + h] += sum;
  }
}

int stride_grid(int64_t total, int threads) {
  return static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, 65536));
}

}  // namespace

void launch_prefill_embedding(const bf16* table, const int32_t* tokens, int T, int hidden, float* x,
                              cudaStream_t stream) {
  require(T >= 1 && hidden >= 1, "launch_prefill_embedding", "need T >= 1 and hidden >= 1");
  prefill_embedding_kernel<<<T, 256, 0, stream>>>(table, tokens, hidden, x);
  CUDA_CHECK_LAUNCH();
}

void launch_prefill_rmsnorm(const float* x, const float* scale, int T, int hidden, float eps, bf16* xn, bf16* xn_lo,
                            cudaStream_t stream) {
  require(T >= 1 && hidden >= 1, "launch_prefill_rmsnorm", "need T >= 1 and hidden >= 1");
  prefill_rmsnorm_kernel<<<T, 256, 0, stream>>>(x, scale, hidden, eps, xn, xn_lo);
  CUDA_CHECK_LAUNCH();
}

void launch_prefill_gemm_bf16(const bf16* W, const bf16* bias, const bf16* X, const bf16* X_lo, int rows, int cols,
                              int T, float* Y, int ldy, bool accumulate, cudaStream_t stream) {
  const char* who = "launch_prefill_gemm_bf16";
  require(rows >= 1 && T >= 1 && ldy >= rows, who, "need rows >= 1, T >= 1 and ldy >= rows");
  require(cols >= 8 && cols % 8 == 0, who, "cols must be a positive multiple of 8, got " + std::to_string(cols));
  require(T <= 65535 * kGemmTokens, who, "T too large for one launch");
  const dim3 grid(ceil_div(rows, kGemmRows), ceil_div(T, kGemmTokens));
  prefill_gemm_bf16_kernel<<<grid, kGemmWarps * 32, 0, stream>>>(W, bias, X, X_lo, rows, cols, T, Y, ldy,
                                                                   accumulate);
  CUDA_CHECK_LAUNCH();
}

void launch_prefill_rope(const float* qkv, const float2* rope, int pos0, int T, int q_heads, int kv_heads, float* q,
                         bf16* k_chunk, bf16* v_chunk, cudaStream_t stream) {
  require(T >= 1 && pos0 >= 0 && q_heads >= 1 && kv_heads >= 1, "launch_prefill_rope",
          "need T >= 1, pos0 >= 0 and at least one q and one KV head");
  const int64_t total = static_cast<int64_t>(T) * (q_heads + 2 * kv_heads) * (kD / 2);
  prefill_rope_kernel<<<stride_grid(total, 256), 256, 0, stream>>>(qkv, rope, pos0, T, q_heads, kv_heads, q,
                                                                   k_chunk, v_chunk);
  CUDA_CHECK_LAUNCH();
}

void launch_prefill_attention(const PrefillAttentionParams& p, cudaStream_t stream) {
  const char* who = "launch_prefill_attention";
  require(p.T >= 1 && p.pos0 >= 0 && p.window >= 0, who, "need T >= 1, pos0 >= 0, window >= 0");
  require(p.kv_heads >= 1 && p.q_heads % p.kv_heads == 0 && p.q_heads / p.kv_heads <= kAttentionMaxGroup, who,
          "q_heads / kv_heads must be an integer in [1, " + std::to_string(kAttentionMaxGroup) + "]");
  require(p.kv_heads <= 65535, who, "at most 65535 KV heads");
  const int last = p.pos0 + p.T - 1;
  // Every cached key a query may need must still be in its slot: the ring covers the window, or nothing wrapped.
  const bool cache_holds = p.pos0 == 0 || (p.cache.capacity > 0 && ((p.window > 0 && p.cache.capacity >= p.window) ||
                                                                    last < p.cache.capacity));
  require(cache_holds, who,
          "the KV cache (capacity " + std::to_string(p.cache.capacity) + ") no longer holds keys the chunk's queries "
          "need (pos0 " + std::to_string(p.pos0) + ", window " + std::to_string(p.window) + ")");
  const int group = p.q_heads / p.kv_heads;
  prefill_attention_kernel<<<dim3(p.T, p.kv_heads), group * 32, 0, stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void launch_prefill_kv_commit(const bf16* k_chunk, const bf16* v_chunk, int pos0, int T, int kv_heads,
                              const KvLayerCache& cache, cudaStream_t stream) {
  require(T >= 1 && pos0 >= 0 && kv_heads >= 1 && cache.capacity >= 1, "launch_prefill_kv_commit",
          "need T >= 1, pos0 >= 0, kv_heads >= 1 and a cache");
  const int first = std::max(0, T - cache.capacity);
  const int64_t total = static_cast<int64_t>(T - first) * kv_heads * (kD / 8);
  prefill_kv_commit_kernel<<<stride_grid(total, 256), 256, 0, stream>>>(
      reinterpret_cast<const uint4*>(k_chunk), reinterpret_cast<const uint4*>(v_chunk), pos0, first, T, kv_heads,
      cache);
  CUDA_CHECK_LAUNCH();
}

void launch_prefill_topk_softmax(const float* logits, int T, int experts, int k, int32_t* ids, float* weights,
                                 cudaStream_t stream) {
  require(T >= 1 && experts >= 1 && experts <= kRouteMaxExperts && k >= 1 && k <= kRouteMaxK && k <= experts,
          "launch_prefill_topk_softmax",
          "need T >= 1, 1 <= experts <= " + std::to_string(kRouteMaxExperts) + " and 1 <= k <= min(" +
              std::to_string(kRouteMaxK) + ", experts)");
  constexpr int warps = 8;
  prefill_topk_softmax_kernel<<<ceil_div(T, warps), warps * 32, 0, stream>>>(logits, T, experts, k, ids, weights);
  CUDA_CHECK_LAUNCH();
}

int prefill_group_max_tiles(int pairs, int experts, int tile_tokens) {
  return ceil_div(pairs, tile_tokens) + std::min(pairs, experts);
}

void launch_prefill_group_experts(const int32_t* ids, int pairs, int experts, int tile_tokens, int32_t* order,
                                  int32_t* sorted_of, int4* tiles, int32_t* tile_count, cudaStream_t stream) {
  const char* who = "launch_prefill_group_experts";
  require(pairs >= 1 && experts >= 1 && experts <= kRouteMaxExperts && tile_tokens >= 1, who,
          "need pairs >= 1, 1 <= experts <= " + std::to_string(kRouteMaxExperts) + " and tile_tokens >= 1");
  const size_t smem = sizeof(int32_t) * pairs;
  require(smem <= 96 * 1024, who, "at most " + std::to_string(96 * 1024 / 4) + " pairs per chunk");
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(prefill_group_experts_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
  prefill_group_experts_kernel<<<1, kGroupThreads, smem, stream>>>(ids, pairs, experts, tile_tokens, order,
                                                                   sorted_of, tiles, tile_count);
  CUDA_CHECK_LAUNCH();
}

void launch_prefill_moe_combine(const float* y, const int32_t* sorted_of, const float* weights, int T, int k,
                                int hidden, float* x, cudaStream_t stream) {
  require(T >= 1 && k >= 1 && hidden >= 1, "launch_prefill_moe_combine", "need T, k, hidden >= 1");
  prefill_moe_combine_kernel<<<T, 256, 0, stream>>>(y, sorted_of, weights, k, hidden, x);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gpt_oss

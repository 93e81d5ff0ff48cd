// Decode attention for one query token (flash-decoding with GQA packing and sinks):
//   1. CTA (split s, KV head g) streams keys [start_s, end_s) of the valid slots [0, len), len = min(pos+1,
//      capacity), through a kStages-deep cp.async pipeline of kTile-key tiles (K rows padded to dodge bank
//      conflicts). K and V are read from HBM once for all G query heads of the group.
//   2. Warp w owns query heads w and w + 4 of the group: lane j scores key j of the tile for both heads, the
//      online softmax (max, rescale, sum) is a warp reduction, and lane j accumulates output dims 2j, 2j+1
//      (P·V with p broadcast by shuffles). Scores live in the log2 domain (q pre-scaled by sm_scale·log2 e).
//   3. Each split writes (m, l, o unnormalised) to the workspace; the last CTA of a KV head to finish (atomic
//      counter) merges the splits and the sink: out = Σ_s o_s 2^(m_s−M) / (2^(sink−M) + Σ_s l_s 2^(m_s−M)),
//      so the sink enters the denominator exactly once. It then re-arms the counter for the next launch.
// Order inside the window does not matter (RoPE is already in k), so a ring of `capacity` slots needs no
// unrolling: slots [0, len) are exactly the keys the query may see, sliding or full.
//
// Layouts: q fp32 [q_heads][64]; K, V bf16 [kv_heads][capacity][64]; out bf16 [q_heads][64].
// Floor: 2 · len · kv_heads · 64 · 2 bytes (K + V): 2 KiB per key per layer for gpt-oss; at 32k context
// 67 MB → 22 µs per full layer at 3.0 TB/s.
// Warning: head_dim == 64 and q_heads / kv_heads <= 8 (checked by the launcher).
#include "cuda/attention_decode.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace gpt_oss {
namespace {

constexpr int kD = kAttentionHeadDim;
constexpr int kTile = 32;          // keys per pipeline stage: one key per lane
constexpr int kStages = 4;         // tiles in flight per CTA (4 × 8 KiB of K + V)
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kKRowPad = kD + 8;   // 144-byte K rows: 8 lanes reading 16 B hit 8 distinct 4-bank groups
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0 → zero-fill, so masked V rows contribute exactly 0
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

struct HeadState {
  float m = -INFINITY, l = 0.0f;
  float2 o = {0.0f, 0.0f};
};

// One tile of the online softmax for one head: s is this lane's score (log2 domain), p returned for P·V.
__device__ __forceinline__ float online_softmax_step(HeadState& st, float s) {
  const float m_new = fmaxf(st.m, warp_max(s));
  const float rescale = exp2f(st.m - m_new);
  const float p = exp2f(s - m_new);
  st.l = st.l * rescale + warp_sum(p);
  st.o.x *= rescale;
  st.o.y *= rescale;
  st.m = m_new;
  return p;
}

__global__ void __launch_bounds__(kThreads) attention_decode_kernel(const AttentionDecodeParams p) {
  __shared__ __align__(16) bf16 k_tiles[kStages][kTile][kKRowPad];
  __shared__ __align__(16) bf16 v_tiles[kStages][kTile][kD];
  __shared__ __align__(16) float q_s[kAttentionMaxGroup][kD];
  __shared__ bool is_last;

  pdl_wait();  // q and the new key come from norm_qkv_rope, the position from the step's copy
  const int group = p.q_heads / p.kv_heads;
  const int kv_head = blockIdx.y, split = blockIdx.x;
  const int len = min(*p.pos + 1, p.cache.capacity);
  const int splits = min(p.max_splits, (len + kTile - 1) / kTile);
  if (split >= splits) return;
  const int per_split = (len + splits - 1) / splits;
  const int keys_per_split = (per_split + kTile - 1) / kTile * kTile;
  const int start = min(split * keys_per_split, len);
  const int end = min(start + keys_per_split, len);
  const int tiles = (end - start + kTile - 1) / kTile;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t head_base = static_cast<size_t>(kv_head) * p.cache.capacity * kD;
  const bf16* k_head = p.cache.k + head_base;
  const bf16* v_head = p.cache.v + head_base;

  auto load_tile = [&](int tile, int stage) {
#pragma unroll
    for (int r = 0; r < kTile * (kD / 8) / kThreads; ++r) {
      const int idx = threadIdx.x + r * kThreads;
      const int row = idx / (kD / 8), chunk = idx % (kD / 8);
      const int key = start + tile * kTile + row;
      const bool valid = key < end;
      const size_t at = static_cast<size_t>(valid ? key : 0) * kD + chunk * 8;
      cp_async16(&k_tiles[stage][row][chunk * 8], k_head + at, valid);
      cp_async16(&v_tiles[stage][row][chunk * 8], v_head + at, valid);
    }
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < tiles) load_tile(s, s);
    cp_async_commit();
  }

  const float q_scale = p.sm_scale * kLog2e;
  for (int idx = threadIdx.x; idx < group * kD; idx += kThreads)
    q_s[idx / kD][idx % kD] = p.q[static_cast<size_t>(kv_head) * group * kD + idx] * q_scale;

  const int h0 = warp, h1 = warp + kWarps;
  const bool has0 = h0 < group, has1 = h1 < group;
  HeadState st0, st1;

  for (int t = 0; t < tiles; ++t) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile t landed for every thread; stage (t-1) % kStages is free again
    if (t + kStages - 1 < tiles) load_tile(t + kStages - 1, (t + kStages - 1) % kStages);
    cp_async_commit();
    const int stage = t % kStages;
    if (!has0) continue;

    // Scores of key `lane` for heads h0, h1.
    const uint4* k_row = reinterpret_cast<const uint4*>(&k_tiles[stage][lane][0]);
    float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
    for (int c = 0; c < kD / 8; ++c) {
      const uint4 kk = k_row[c];
      const __nv_bfloat162* k2 = reinterpret_cast<const __nv_bfloat162*>(&kk);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 kf = __bfloat1622float2(k2[e]);
        const float2 qa = *reinterpret_cast<const float2*>(&q_s[h0][c * 8 + 2 * e]);
        s0 += kf.x * qa.x + kf.y * qa.y;
        if (has1) {
          const float2 qb = *reinterpret_cast<const float2*>(&q_s[h1][c * 8 + 2 * e]);
          s1 += kf.x * qb.x + kf.y * qb.y;
        }
      }
    }
    const bool valid = start + t * kTile + lane < end;
    const float p0 = online_softmax_step(st0, valid ? s0 : -INFINITY);
    const float p1 = has1 ? online_softmax_step(st1, valid ? s1 : -INFINITY) : 0.0f;

    // o += P · V: lane owns dims 2·lane, 2·lane + 1.
#pragma unroll 8
    for (int j = 0; j < kTile; ++j) {
      const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v_tiles[stage][j][2 * lane]));
      const float pj0 = __shfl_sync(0xffffffffu, p0, j);
      const float pj1 = __shfl_sync(0xffffffffu, p1, j);
      st0.o.x += pj0 * v.x;
      st0.o.y += pj0 * v.y;
      st1.o.x += pj1 * v.x;
      st1.o.y += pj1 * v.y;
    }
  }
  cp_async_wait<0>();

  // Partial results of this split.
  const size_t splits_base = (static_cast<size_t>(kv_head) * p.max_splits + split) * group;
  float* partial_o = p.workspace;
  float* partial_ml = p.workspace + static_cast<size_t>(p.kv_heads) * p.max_splits * group * kD;
  auto store = [&](int h, const HeadState& st) {
    reinterpret_cast<float2*>(partial_o + (splits_base + h) * kD)[lane] = st.o;
    if (lane == 0) {
      partial_ml[(splits_base + h) * 2] = st.m;
      partial_ml[(splits_base + h) * 2 + 1] = st.l;
    }
  };
  if (has0) store(h0, st0);
  if (has1) store(h1, st1);

  // The last split of this KV head to finish merges all of them.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicAdd(&p.counters[kv_head], 1) == splits - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();

  const size_t head_splits = static_cast<size_t>(kv_head) * p.max_splits * group;
  for (int item = threadIdx.x; item < group * (kD / 2); item += kThreads) {
    const int h = item / (kD / 2), pair = item % (kD / 2);
    const int q_head = kv_head * group + h;
    const float sink = p.sinks[q_head] * kLog2e;
    float m_max = sink;
    for (int s = 0; s < splits; ++s) m_max = fmaxf(m_max, __ldcg(&partial_ml[(head_splits + s * group + h) * 2]));
    float denom = exp2f(sink - m_max);
    float2 acc = {0.0f, 0.0f};
    for (int s = 0; s < splits; ++s) {
      const size_t at = head_splits + s * group + h;
      const float w = exp2f(__ldcg(&partial_ml[at * 2]) - m_max);
      denom += __ldcg(&partial_ml[at * 2 + 1]) * w;
      const float2 o = __ldcg(reinterpret_cast<const float2*>(partial_o + at * kD) + pair);
      acc.x += o.x * w;
      acc.y += o.y * w;
    }
    const float inv = 1.0f / denom;
    reinterpret_cast<__nv_bfloat162*>(p.out + static_cast<size_t>(q_head) * kD)[pair] =
        __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
  }
  if (threadIdx.x == 0) p.counters[kv_head] = 0;
}

}  // namespace

int attention_decode_max_splits(int kv_heads, int capacity, int multiprocessors) {
  const int for_occupancy = ceil_div(2 * multiprocessors, std::max(kv_heads, 1));
  return std::max(1, std::min({for_occupancy, 64, ceil_div(capacity, kTile)}));
}

size_t attention_decode_workspace_bytes(int q_heads, int max_splits) {
  // (o[64], m, l) per query head per split: kv_heads · max_splits · group entries.
  return static_cast<size_t>(max_splits) * q_heads * (kD + 2) * sizeof(float);
}

void launch_attention_decode(const AttentionDecodeParams& p, cudaStream_t stream) {
  if (p.kv_heads <= 0 || p.q_heads % p.kv_heads != 0 || p.q_heads / p.kv_heads > kAttentionMaxGroup)
    throw std::invalid_argument("attention_decode: q_heads / kv_heads must be an integer in [1, 8], got " +
                                std::to_string(p.q_heads) + " / " + std::to_string(p.kv_heads));
  if (p.max_splits < 1 || p.cache.capacity < 1)
    throw std::invalid_argument("attention_decode: max_splits and capacity must be positive");
  launch_pdl(attention_decode_kernel, dim3(p.max_splits, p.kv_heads), dim3(kThreads), 0, stream, p);
}

}  // namespace gpt_oss

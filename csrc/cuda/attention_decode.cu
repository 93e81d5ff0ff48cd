// Decode attention for one query token (flash-decoding with GQA packing, tensor cores and sinks):
//   1. Split s of KV head g is one CTA; it covers keys [start_s, end_s) of the valid slots [0, len),
//      len = min(pos + 1, capacity), and reads K and V from HBM once for all G query heads of the group.
//   2. Each of its 4 warps streams its own 16-key blocks (blocks w, w+4, ... of the split) through its own
//      cp.async pipeline (no CTA barrier in the loop). The pipeline starts before pdl_wait(): every key but
//      the newest was written by earlier steps, and the newest row is re-read after the wait.
//   3. mma.sync m16n8k16 bf16: S = Q·Kᵀ with the G ≤ 8 heads as the M rows (q split into bf16 hi + lo, so
//      scores keep ~fp32 precision); S's C fragments are exactly the A fragments of P·V (FA2's register
//      reuse), P rounded to bf16; online softmax in the log2 domain (q pre-scaled by sm_scale·log2 e).
//   4. The 4 warps' states merge in shared memory. One split: the CTA writes the output. Up to 8 (a cluster of
//      CTAs): each keeps (m, l, o unnormalised) in shared memory and the cluster's first CTA merges them through
//      distributed shared memory. More: each writes them to the workspace and the last CTA of the KV head to
//      finish (atomic counter) merges the splits, then re-arms the counter for the next launch. Either way
//      out = Σ_s o_s 2^(m_s−M) / (2^(sink−M) + Σ_s l_s 2^(m_s−M)): the sink enters the denominator once.
// v1 used CUDA cores (warp = 2 heads, lane = key): issue-bound at long contexts (~3000 instructions per
// 32-key tile per CTA; 20b at 8k: 353 tok/s vs 411 with this kernel, H100).
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

#include <cooperative_groups.h>

namespace gpt_oss {
namespace {

namespace cg = cooperative_groups;

constexpr int kD = kAttentionHeadDim;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowPad = kD + 8;    // 144-byte smem rows: 8 rows × 16 B at a time hit 8 distinct 4-bank groups
constexpr float kLog2e = 1.4426950408889634f;
// Keys per split at least: shorter splits cost more in the combine than they save (v1, ncu at a 1k context:
// 32 splits of 32 keys took 13.4 µs, 4 splits 7.9 µs).
constexpr int kMinKeysPerSplit = 128;
// Past kLongContext keys, splits of at least kMinKeysPerSplitLong: fewer CTAs stream longer runs and the combine
// merges fewer partials (H100, 20b at 8k: 443.9 → 453.2 tok/s in session 3 with 512 everywhere; this rule,
// session 5: 473.0 → 477.6 at 8k, 1k unchanged; 512-key splits at 1k had cost 1 %).
constexpr int kLongContext = 4096;
constexpr int kMinKeysPerSplitLong = 512;

constexpr int kMmaBlock = 16;      // keys per warp step: two n8 score blocks, one k16 step of P·V
constexpr int kMmaStages = 3;      // blocks in flight per warp
constexpr size_t kSmemBytes = static_cast<size_t>(kWarps) * kMmaStages * 2 * kMmaBlock * kRowPad * sizeof(bf16);

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0 → zero-fill, so masked V rows contribute exactly 0
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// The keys of this CTA's split. Every CTA derives the same split count from the device position, so a
// graph replay serves any length; CTAs past the count exit at once.
struct SplitRange {
  int splits, start, end;
};
__device__ __forceinline__ SplitRange split_range(const AttentionDecodeParams& p, int quantum) {
  const int len = min(*p.pos + 1, p.cache.capacity);
  const int min_keys = len > kLongContext ? kMinKeysPerSplitLong : kMinKeysPerSplit;
  const int splits = min(p.max_splits, (len + min_keys - 1) / min_keys);
  const int per_split = (len + splits - 1) / splits;
  const int keys_per_split = (per_split + quantum - 1) / quantum * quantum;
  const int start = min(static_cast<int>(blockIdx.x) * keys_per_split, len);
  return {splits, start, min(start + keys_per_split, len)};
}

// Workspace: o [kv_heads][max_splits][group][64] then (m, l) [kv_heads][max_splits][group][2], fp32.
__device__ __forceinline__ size_t partial_index(const AttentionDecodeParams& p, int group, int kv_head, int split,
                                                int h) {
  return (static_cast<size_t>(kv_head) * p.max_splits + split) * group + h;
}
__device__ __forceinline__ float* partial_ml(const AttentionDecodeParams& p, int group) {
  return p.workspace + static_cast<size_t>(p.kv_heads) * p.max_splits * group * kD;
}

// out = acc·2^(m−M) / (l·2^(m−M) + 2^(sink−M)), M = max(m, sink): the sink's one term in the denominator.
// sink: the head's sink logit in the log2 domain (loaded at the kernel's start: in the epilogue its load would be
// one more DRAM round trip at the end of the critical path).
__device__ __forceinline__ void write_output(const AttentionDecodeParams& p, int q_head, int pair, float m, float l,
                                             float2 acc, float sink) {
  const float m_max = fmaxf(m, sink);
  const float w = exp2f(m - m_max);
  const float scale = w / (l * w + exp2f(sink - m_max));
  reinterpret_cast<__nv_bfloat162*>(p.out + static_cast<size_t>(q_head) * kD)[pair] =
      __floats2bfloat162_rn(acc.x * scale, acc.y * scale);
}

// out for the group's heads from the splits' partials: ml(s, h) = (m, l), o(s, h, pair) = 2 dims of o, each
// from the workspace or a peer's shared memory. out = Σ_s o_s 2^(m_s−M) / (2^(sink−M) + Σ_s l_s 2^(m_s−M)).
template <typename Ml, typename O>
__device__ __forceinline__ void merge_splits(const AttentionDecodeParams& p, int group, int kv_head, int splits,
                                             const float* s_sink, Ml ml, O o_at) {
  for (int item = threadIdx.x; item < group * (kD / 2); item += blockDim.x) {
    const int h = item / (kD / 2), pair = item % (kD / 2);
    float m_max = -INFINITY;  // finite after the loop: split 0 always holds keys
    for (int s = 0; s < splits; ++s) m_max = fmaxf(m_max, ml(s, h).x);
    float l_sum = 0.0f;
    float2 acc = {0.0f, 0.0f};
#pragma unroll 4
    for (int s = 0; s < splits; ++s) {
      const float2 m_l = ml(s, h);
      const float w = exp2f(m_l.x - m_max);
      l_sum += m_l.y * w;
      const float2 o = o_at(s, h, pair);
      acc.x += o.x * w;
      acc.y += o.y * w;
    }
    write_output(p, kv_head * group + h, pair, m_max, l_sum, acc, s_sink[h]);
  }
}

// Called by every thread of a CTA once its split's partials are in the workspace: the last CTA of the KV head
// merges all splits with the sink and writes the output.
__device__ void combine_when_last(const AttentionDecodeParams& p, int group, int kv_head, int splits,
                                  const float* s_sink) {
  __shared__ bool is_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicAdd(&p.counters[kv_head], 1) == splits - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();

  const float* ml = partial_ml(p, group);
  merge_splits(
      p, group, kv_head, splits, s_sink,
      [&](int s, int h) {
        return __ldcg(reinterpret_cast<const float2*>(ml) + partial_index(p, group, kv_head, s, h));
      },
      [&](int s, int h, int pair) {
        return __ldcg(reinterpret_cast<const float2*>(p.workspace + partial_index(p, group, kv_head, s, h) * kD) +
                      pair);
      });
  if (threadIdx.x == 0) p.counters[kv_head] = 0;
}

// Up to kCombineCluster splits: the grid runs in clusters of that many CTAs along x, so a KV head's splits are
// one cluster and meet in distributed shared memory (s_part: [head][o[64], m, l] of each CTA), without the
// workspace's fence, arrival atomic and L2 round trips. Every CTA of the first cluster (x < kCombineCluster), idle
// ones included, calls this; its rank 0 is split 0, which always holds keys. H100, 20b, same call (session 6):
// 521.9 → 528.6 tok/s at 896 keys (8 splits: this path), 518.5 → 523.8 at 1k and 493.8 → 499.6 at 8k (9 and 16
// splits: the workspace path, so the cluster-shaped launch alone gave ~1 %; why is not known).
constexpr int kCombineCluster = 8;
constexpr int kPartEntry = kD + 2;
__device__ void combine_in_cluster(const AttentionDecodeParams& p, int group, int kv_head, int splits,
                                   const float* s_sink, float* s_part) {
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every split's partial is in its CTA's shared memory
  if (cluster.block_rank() == 0) {
    merge_splits(
        p, group, kv_head, splits, s_sink,
        [&](int s, int h) {
          return *reinterpret_cast<const float2*>(cluster.map_shared_rank(s_part, s) + h * kPartEntry + kD);
        },
        [&](int s, int h, int pair) {
          return *reinterpret_cast<const float2*>(cluster.map_shared_rank(s_part, s) + h * kPartEntry + 2 * pair);
        });
  }
  cluster.sync();  // the peers' shared memory stays until rank 0 has read it
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// Fragment ownership (lane = 4·g + t): row g of A/C is query head g; C columns 2t, 2t+1 are keys (S) or dims
// (O). Rows 8..15 of the m16 tiles stay zero and are never read back.
__global__ void __launch_bounds__(kThreads) attention_decode_kernel(const AttentionDecodeParams p) {
  TimelineScope timeline(kTlAttention);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);

  // The position comes from the step's host copy, which completed before the graph's first kernel, so it
  // and every key but the newest may be read before pdl_wait(); q and the newest K/V row may not.
  const int group = p.q_heads / p.kv_heads;
  const int kv_head = blockIdx.y, split = blockIdx.x;
  const SplitRange range = split_range(p, kWarps * kMmaBlock);
  const int newest = *p.pos % p.cache.capacity;
  const bool cluster_combine = range.splits > 1 && range.splits <= kCombineCluster;
  __shared__ __align__(8) float s_part[kAttentionMaxGroup * kPartEntry];  // this split's partial (cluster_combine)
  if (split >= range.splits) {
    // The idle CTAs of the first cluster join its barriers (all the splits are in it); later clusters hold none.
    if (cluster_combine && split < kCombineCluster)
      combine_in_cluster(p, group, kv_head, range.splits, nullptr, s_part);
    return;
  }
  __shared__ float s_sink[kAttentionMaxGroup];  // read after the loop's closing barrier
  if (static_cast<int>(threadIdx.x) < group) s_sink[threadIdx.x] = p.sinks[kv_head * group + threadIdx.x] * kLog2e;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int blocks = (range.end - range.start + kMmaBlock - 1) / kMmaBlock;
  const int my_blocks = blocks > warp ? (blocks - warp + kWarps - 1) / kWarps : 0;  // blocks warp, warp+4, ...

  const size_t head_base = static_cast<size_t>(kv_head) * p.cache.capacity * kD;
  const bf16* k_head = p.cache.k + head_base;
  const bf16* v_head = p.cache.v + head_base;
  bf16* warp_smem = smem + static_cast<size_t>(warp) * kMmaStages * 2 * kMmaBlock * kRowPad;
  auto k_stage = [&](int s) { return warp_smem + static_cast<size_t>(s) * 2 * kMmaBlock * kRowPad; };
  auto v_stage = [&](int s) { return k_stage(s) + kMmaBlock * kRowPad; };

  auto load_block = [&](int i, int stage) {  // the warp's i-th block: 16 keys of K and V, 8 × 16 B per lane
    const int first = range.start + (warp + i * kWarps) * kMmaBlock;
#pragma unroll
    for (int r = 0; r < kMmaBlock * (kD / 8) / 32; ++r) {
      const int idx = lane + r * 32;
      const int row = idx / (kD / 8), chunk = idx % (kD / 8);
      const bool valid = first + row < range.end;
      const size_t at = static_cast<size_t>(valid ? first + row : 0) * kD + chunk * 8;
      cp_async16(k_stage(stage) + row * kRowPad + chunk * 8, k_head + at, valid);
      cp_async16(v_stage(stage) + row * kRowPad + chunk * 8, v_head + at, valid);
    }
  };
#pragma unroll
  for (int s = 0; s < kMmaStages - 1; ++s) {
    if (s < my_blocks) load_block(s, s);
    cp_async_commit();
  }
  pdl_wait();  // norm_qkv_rope has written q and the newest K/V row
  timeline.mark_waited();
  // No pdl_launch_dependents(): the out-projection is released only as this grid's CTAs exit. Released right
  // after this wait, its 180 CTAs stream 23.6 MB of weights against attention's K/V reads, the critical path:
  // measured on the H100 (session 3, 20b) early release 455.2 / 418.1 tok/s at 1k / 8k, late 463.7 / 435.4.

  // Q as the A operand (rows = heads), pre-scaled to the log2 domain and split into bf16 hi + lo.
  uint32_t q_hi[kD / 16][2], q_lo[kD / 16][2];
  {
    const float q_scale = p.sm_scale * kLog2e;
    const float* q = p.q + (static_cast<size_t>(kv_head) * group + g) * kD;
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int d = ks * 16 + half * 8 + 2 * t;
        const float x0 = g < group ? __ldcg(q + d) * q_scale : 0.0f;  // L2: norm_qkv_rope may have run
        const float x1 = g < group ? __ldcg(q + d + 1) * q_scale : 0.0f;  // after this kernel started
        const __nv_bfloat162 hi = __floats2bfloat162_rn(x0, x1);
        const float2 hf = __bfloat1622float2(hi);
        q_hi[ks][half] = *reinterpret_cast<const uint32_t*>(&hi);
        q_lo[ks][half] = pack_bf16(x0 - hf.x, x1 - hf.y);
      }
    }
  }

  float m = -INFINITY, l = 0.0f;  // of head g, replicated over t
  float o[kD / 8][4] = {};        // o[n][0..1]: head g, dims 8n + 2t, 8n + 2t + 1

  for (int i = 0; i < my_blocks; ++i) {
    cp_async_wait<kMmaStages - 2>();
    __syncwarp();  // every lane's copies of block i landed; stage (i-1) % kMmaStages is free again
    if (i + kMmaStages - 1 < my_blocks) load_block(i + kMmaStages - 1, (i + kMmaStages - 1) % kMmaStages);
    cp_async_commit();
    const int first = range.start + (warp + i * kWarps) * kMmaBlock;
    if (newest >= first && newest < first + kMmaBlock) {  // this block may hold a stale copy of the newest row
      if (lane < 16) {
        const int chunk = lane % 8;
        const bf16* src = (lane < 8 ? k_head : v_head) + static_cast<size_t>(newest) * kD + chunk * 8;
        bf16* dst = (lane < 8 ? k_stage(i % kMmaStages) : v_stage(i % kMmaStages)) + (newest - first) * kRowPad;
        *reinterpret_cast<uint4*>(dst + chunk * 8) = __ldcg(reinterpret_cast<const uint4*>(src));
      }
      __syncwarp();
    }
    const bf16* ks_smem = k_stage(i % kMmaStages);
    const bf16* vs_smem = v_stage(i % kMmaStages);

    // S = Q·Kᵀ for keys 0..7 (s[0]) and 8..15 (s[1]) of the block.
    float s[2][4] = {};
#pragma unroll
    for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // dims 0..31, 32..63
        uint32_t b[4];
        ldmatrix_x4(b, ks_smem + (nb * 8 + lane % 8) * kRowPad + half * 32 + (lane / 8) * 8);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int kstep = half * 2 + j;
          mma_bf16(s[nb], q_hi[kstep][0], 0u, q_hi[kstep][1], 0u, b[2 * j], b[2 * j + 1]);
          mma_bf16(s[nb], q_lo[kstep][0], 0u, q_lo[kstep][1], 0u, b[2 * j], b[2 * j + 1]);
        }
      }
    }
    float block_max = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (first + nb * 8 + 2 * t + e >= range.end) s[nb][e] = -INFINITY;
        block_max = fmaxf(block_max, s[nb][e]);
      }
    }
    block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 1));
    block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 2));
    const float m_new = fmaxf(m, block_max);  // finite: every block holds at least one valid key
    const float rescale = exp2f(m - m_new);
    float block_sum = 0.0f;
#pragma unroll
    for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[nb][e] = exp2f(s[nb][e] - m_new);
        block_sum += s[nb][e];
      }
    }
    block_sum += __shfl_xor_sync(0xffffffffu, block_sum, 1);
    block_sum += __shfl_xor_sync(0xffffffffu, block_sum, 2);
    l = l * rescale + block_sum;
    m = m_new;
#pragma unroll
    for (int n = 0; n < kD / 8; ++n) {
      o[n][0] *= rescale;
      o[n][1] *= rescale;
    }

    // O += P·V: P's A fragment is S's C fragment (keys 2t, 2t+1 of both n8 blocks), V via transposed loads.
    const uint32_t p_lo = pack_bf16(s[0][0], s[0][1]), p_hi = pack_bf16(s[1][0], s[1][1]);
#pragma unroll
    for (int q4 = 0; q4 < kD / 16; ++q4) {  // dims 16·q4 .. 16·q4 + 15: two n8 blocks
      uint32_t b[4];
      const int j = lane / 8;
      ldmatrix_x4_trans(b, vs_smem + ((j & 1) * 8 + lane % 8) * kRowPad + q4 * 16 + (j >> 1) * 8);
      mma_bf16(o[2 * q4], p_lo, 0u, p_hi, 0u, b[0], b[1]);
      mma_bf16(o[2 * q4 + 1], p_lo, 0u, p_hi, 0u, b[2], b[3]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with its stages: reuse them for the cross-warp merge

  // Merge the 4 warps' states of each head, then write the split's partial.
  float* merge = reinterpret_cast<float*>(smem_raw);  // [kWarps][8 heads][kD + 2]
  constexpr int kEntry = kD + 2;
  float* mine = merge + (warp * kAttentionMaxGroup + g) * kEntry;
#pragma unroll
  for (int n = 0; n < kD / 8; ++n) {
    mine[8 * n + 2 * t] = o[n][0];
    mine[8 * n + 2 * t + 1] = o[n][1];
  }
  if (t == 0) {
    mine[kD] = m;
    mine[kD + 1] = l;
  }
  __syncthreads();
  float* ml = partial_ml(p, group);
  for (int item = threadIdx.x; item < group * (kD / 2); item += kThreads) {
    const int h = item / (kD / 2), pair = item % (kD / 2);
    float m_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_max = fmaxf(m_max, merge[(w * kAttentionMaxGroup + h) * kEntry + kD]);
    float l_sum = 0.0f;
    float2 acc = {0.0f, 0.0f};
    if (m_max != -INFINITY) {  // else: an empty split, written as m = -inf, l = 0, o = 0
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float* e = merge + (w * kAttentionMaxGroup + h) * kEntry;
        const float wgt = exp2f(e[kD] - m_max);
        l_sum += e[kD + 1] * wgt;
        acc.x += e[2 * pair] * wgt;
        acc.y += e[2 * pair + 1] * wgt;
      }
    }
    if (range.splits == 1) {  // the whole context in this CTA: no workspace round trip
      write_output(p, kv_head * group + h, pair, m_max, l_sum, acc, s_sink[h]);
      continue;
    }
    const size_t at = partial_index(p, group, kv_head, split, h);
    float* o_dst = cluster_combine ? s_part + h * kPartEntry : p.workspace + at * kD;
    float* ml_dst = cluster_combine ? s_part + h * kPartEntry + kD : ml + at * 2;
    reinterpret_cast<float2*>(o_dst)[pair] = acc;
    if (pair == 0) *reinterpret_cast<float2*>(ml_dst) = make_float2(m_max, l_sum);
  }
  if (cluster_combine)
    combine_in_cluster(p, group, kv_head, range.splits, s_sink, s_part);
  else if (range.splits > 1)
    combine_when_last(p, group, kv_head, range.splits, s_sink);
}

}  // namespace

int attention_decode_max_splits(int kv_heads, int capacity, int multiprocessors) {
  const int for_occupancy = ceil_div(2 * multiprocessors, std::max(kv_heads, 1));
  return std::max(1, std::min({for_occupancy, 64, ceil_div(capacity, kMinKeysPerSplit)}));
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
  // Idempotent; legal during graph capture (it is not a stream operation).
  CUDA_CHECK(cudaFuncSetAttribute(attention_decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(kSmemBytes)));
  // Clusters of kCombineCluster along x (see combine_in_cluster). CTAs past the split count exit at once, those of
  // the first cluster after joining its barriers.
  launch_kernel(attention_decode_kernel, dim3(ceil_div(p.max_splits, kCombineCluster) * kCombineCluster, p.kv_heads),
                dim3(kThreads), kSmemBytes, stream, /*pdl=*/true, kCombineCluster, p);
}

}  // namespace gpt_oss

// Decode attention for one query token (flash-decoding with GQA packing, tensor cores and sinks):
//   1. Split s of KV head g is one CTA; it covers keys [start_s, end_s) of the valid slots [0, len),
//      len = min(pos + 1, capacity), and reads K and V from HBM once for all G query heads of the group
//      (attention_split.cuh: 4 warps, cp.async pipelines started before pdl_wait(), mma.sync, online softmax).
//   2. One split: the CTA writes the output. Up to 16 (a cluster of CTAs): each keeps (m, l, o unnormalised) in
//      shared memory and the cluster's first CTA merges them through distributed shared memory (a short cache's
//      splits store theirs into that CTA's shared memory instead: combine_pushed). More: each writes
//      them to the workspace and the last CTA of the KV head to finish (atomic counter) merges the splits, then
//      re-arms the counter for the next launch. Either way
//      out = Σ_s o_s 2^(m_s−M) / (2^(sink−M) + Σ_s l_s 2^(m_s−M)): the sink enters the denominator once.
// Order inside the window does not matter (RoPE is already in k), so a ring of `capacity` slots needs no
// unrolling: slots [0, len) are exactly the keys the query may see, sliding or full.
//
// Layouts: q fp32 [q_heads][64]; K, V bf16 [kv_heads][capacity][64]; out bf16 [q_heads][64].
// Floor: 2 · len · kv_heads · 64 · 2 bytes (K + V): 2 KiB per key per layer for gpt-oss; at 32k context
// 67 MB → 22 µs per full layer at 3.0 TB/s.
// Warning: head_dim == 64 and q_heads / kv_heads <= 8 (checked by the launcher).
#include "cuda/attention_decode.h"
#include "cuda/attention_split.cuh"

#include <algorithm>
#include <stdexcept>
#include <string>

#include <cooperative_groups.h>

namespace gpt_oss {
namespace {

namespace cg = cooperative_groups;

using attention_split::kD;
using attention_split::kLog2e;
using attention_split::kMmaStages;
using attention_split::kSmemBytes;
using attention_split::kThreads;
using attention_split::write_output;
// Keys per split at least: shorter splits cost more in the combine than they save (v1, ncu at a 1k context:
// 32 splits of 32 keys took 13.4 µs, 4 splits 7.9 µs).
constexpr int kMinKeysPerSplit = 128;
// Past kLongContext keys, splits of at least kMinKeysPerSplitLong: fewer CTAs stream longer runs and the combine
// merges fewer partials (H100, 20b at 8k: 443.9 → 453.2 tok/s in session 3 with 512 everywhere; this rule,
// session 5: 473.0 → 477.6 at 8k, 1k unchanged; 512-key splits at 1k had cost 1 %).
constexpr int kLongContext = 4096;
constexpr int kMinKeysPerSplitLong = 512;
// What a lone split's CTA leaves of the opt-in shared memory: room for its static shared memory (s_part, s_sink:
// 2.2 KB), less than any other kernel's CTA needs beside its 1 KB reservation.
constexpr size_t kWholeSmSlack = 3 * 1024;
// A short cache (≤ kDeepMaxSplits · kDeepKeysPerSplit slots: a full layer at a 1k–2k context) gets
// ceil(capacity / kDeepKeysPerSplit) splits a KV head, each a CTA on an SM of its own (as a lone split's) with
// kDeepStages − 1 blocks a warp in flight: every key of its split (≤ 512 = 4 warps × 8 blocks × 16) is issued
// before the wait, and its few splits meet in one small cluster. Probe (session 19): at 1k a full layer ran 9–10
// splits of ≤ 128 keys in clusters of 16, whose idle members wait in the combine's barriers, and its working CTAs
// took 6.3 µs from the key loop to the exit beside an out-projection CTA, 5.0 without one.
constexpr int kDeepKeysPerSplit = 512;
constexpr int kDeepMaxSplits = 4;
constexpr int kDeepStages = kDeepKeysPerSplit / (attention_split::kWarps * attention_split::kMmaBlock) + 1;

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

// out for the group's heads from the splits' partials: ml(s, h) = (m, l), o(s, h, pair) = 2 dims of o, each
// from the workspace or a peer's shared memory. out = Σ_s o_s 2^(m_s−M) / (2^(sink−M) + Σ_s l_s 2^(m_s−M)).
// The splits go kMergeBatch at a time, all 2 · kMergeBatch loads of a batch issued before the first is used
// (indices clamped, extras weighted 0), merged one by one with a running max (online softmax): one round trip per
// batch, so one for up to 16 splits (8k). The two-pass form (max, then sums) over loops bounded at run time cost
// ~5 dependent L2 round trips an item at 9 splits (1k), 2 items a thread, per the SASS; a separate max also let
// ptxas issue the o loads only after it. 122 registers (109 before), no spills. H100, same call: decode at 1k
// 20b 514.8 → 520.4 tok/s, 120b 365.3 → 369.7 (session 10).
constexpr int kMergeBatch = 16;
template <int Batch = kMergeBatch, typename Ml, typename O>
__device__ __forceinline__ void merge_splits(const AttentionDecodeParams& p, int group, int kv_head, int splits,
                                             const float* s_sink, Ml ml, O o_at) {
  for (int item = threadIdx.x; item < group * (kD / 2); item += blockDim.x) {
    const int h = item / (kD / 2), pair = item % (kD / 2);
    float m_run = -INFINITY, l_sum = 0.0f;  // m_run is finite after the first batch: split 0 always holds keys
    float2 acc = {0.0f, 0.0f};
    for (int s0 = 0; s0 < splits; s0 += Batch) {
      float2 m_l[Batch], o[Batch];
#pragma unroll
      for (int u = 0; u < Batch; ++u) {
        const int s = min(s0 + u, splits - 1);
        o[u] = o_at(s, h, pair);
        m_l[u] = ml(s, h);
      }
#pragma unroll
      for (int u = 0; u < Batch; ++u) {  // unconditional (weight 0 past the end): no load sinks into a branch
        const bool valid = s0 + u < splits;
        const float m_new = valid ? fmaxf(m_run, m_l[u].x) : m_run;
        const float rescale = exp2f(m_run - m_new);  // 0 at the first split (m_run = -inf), where l, acc are 0
        const float w = valid ? exp2f(m_l[u].x - m_new) : 0.0f;
        l_sum = l_sum * rescale + m_l[u].y * w;
        acc.x = acc.x * rescale + o[u].x * w;
        acc.y = acc.y * rescale + o[u].y * w;
        m_run = m_new;
      }
    }
    write_output(p.out, kv_head * group + h, pair, m_run, l_sum, acc, s_sink[h]);
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

// Up to `cluster` splits (16 where the device can place clusters of 16 attention CTAs, else 8: the launcher's
// combine_cluster_size): the grid runs in clusters of that many CTAs along x, so a KV head's splits are one cluster
// and meet in distributed shared memory (s_part: [head][o[64], m, l] of each CTA), without the workspace's fence,
// arrival atomic and L2 round trips. Every CTA of the first cluster (x < cluster), idle ones included, calls this;
// its rank 0 is split 0, which always holds keys. H100, 20b, same call (session 6), clusters of 8: 521.9 → 528.6
// tok/s at 896 keys (8 splits: this path), 518.5 → 523.8 at 1k and 493.8 → 499.6 at 8k (9 and 16 splits: the
// workspace path, so the cluster-shaped launch alone gave ~1 %; why is not known). Clusters of 16 take 1k's 9
// splits and 8k's 16 onto this path too.
constexpr int kPortableCluster = 8;
constexpr int kLargeCluster = 16;  // non-portable: cudaFuncAttributeNonPortableClusterSizeAllowed
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
  cluster_sync_relaxed();  // the peers' shared memory stays until rank 0 has read it (consumed above)
}

// A short cache's splits (≤ kDeepMaxSplits, one cluster, rank = split) store their partials straight into rank 0's
// shared memory (`pushed`: [split][head][o[64], m, l], past the split's stages), and rank 0 merges them from its own
// shared memory. On the critical path: one cluster barrier, whose release orders the remote stores. The pull
// (combine_in_cluster) takes a barrier, a round of remote loads (16 a thread, the batch clamped) and a second
// barrier that keeps the peers alive until rank 0 has read them: 3.7 µs from a split's merge to its exit in a full
// layer at 1k (120b timeline, H100, session 21), a sliding layer's lone split 0.2.
// The peers' stores into rank 0 may start only once rank 0 is running: every CTA arrives on the cluster barrier
// first thing and waits on it (all arrived long before) before its first remote store.
// H100, same call (session 22), at 1k: 20b 685.7 → 696.3 tok/s, 120b 478.8 → 483.9; a full layer's attention
// 6.9 → 5.0 µs (timeline of the st.async form, which ran 689.3 / 484.5: the barrier's fence is not the cost).
constexpr size_t kDeepPushedBytes =
    static_cast<size_t>(kDeepMaxSplits) * kAttentionMaxGroup * kPartEntry * sizeof(float);
__device__ void combine_pushed(const AttentionDecodeParams& p, int group, int kv_head, int splits,
                               const float* s_sink, const float* pushed) {
  cluster_arrive_release();  // this split's partial is in rank 0's shared memory
  cluster_wait_acquire();
  if (cg::this_cluster().block_rank() != 0) return;  // nobody reads a peer's shared memory: no closing barrier
  merge_splits<kDeepMaxSplits>(
      p, group, kv_head, splits, s_sink,
      [&](int s, int h) { return *reinterpret_cast<const float2*>(pushed + (s * group + h) * kPartEntry + kD); },
      [&](int s, int h, int pair) {
        return reinterpret_cast<const float2*>(pushed + (s * group + h) * kPartEntry)[pair];
      });
}

template <int Stages>
__global__ void __launch_bounds__(kThreads) attention_decode_kernel(const AttentionDecodeParams p, int cluster) {
  TimelineScope timeline(kTlAttention);
  extern __shared__ __align__(16) unsigned char smem_raw[];

  // The position comes from the step's host copy, which completed before the graph's first kernel, so it
  // and every key but the newest may be read before pdl_wait(); q and the newest K/V row may not.
  const int group = p.q_heads / p.kv_heads;
  const int kv_head = blockIdx.y, split = blockIdx.x;
  const SplitRange range = split_range(p, attention_split::kWarps * attention_split::kMmaBlock);
  const int newest = *p.pos % p.cache.capacity;
  const bool cluster_combine = range.splits > 1 && range.splits <= cluster;
  constexpr bool deep = Stages == kDeepStages;  // a short cache's grid: one cluster of ≤ kDeepMaxSplits a KV head
  const bool push = deep && cluster_combine;
  if (push) cluster_arrive_relaxed();  // this CTA runs: its peers may store into its shared memory (combine_pushed)
  float* const pushed = reinterpret_cast<float*>(smem_raw + attention_split::smem_bytes(Stages));  // push: rank 0's
  __shared__ __align__(8) float s_part[kAttentionMaxGroup * kPartEntry];  // this split's partial (cluster_combine)
  if (split >= range.splits) {
    // The idle CTAs of the first cluster join its barriers (all the splits are in it); later clusters hold none.
    if (cluster_combine && split < cluster) {
      pdl_launch_dependents();  // their release counts as early as the working CTAs'
      if (push) {
        cluster_wait();
        combine_pushed(p, group, kv_head, range.splits, nullptr, pushed);
      } else {
        combine_in_cluster(p, group, kv_head, range.splits, nullptr, s_part);
      }
    }
    return;
  }
  __shared__ float s_sink[kAttentionMaxGroup];  // read after the split's closing barrier
  if (static_cast<int>(threadIdx.x) < group) s_sink[threadIdx.x] = p.sinks[kv_head * group + threadIdx.x] * kLog2e;
  const size_t head_base = static_cast<size_t>(kv_head) * p.cache.capacity * kD;
  const bf16* k_head = p.cache.k + head_base;
  const bf16* v_head = p.cache.v + head_base;
  const attention_split::Split<Stages> attend{k_head, v_head, range.start, range.end, smem_raw};
  attend.prefetch();
  // A short cache's CTAs (each on an SM of its own, every key of the split already issued) release the
  // out-projection before their wait, so its CTAs become resident and issue their first weight batch while
  // norm_qkv_rope drains. H100, same call, two runs (session 21): 120b 465.5 → 471.2 / 471.1 tok/s at 1k, 425.1 →
  // 427.5 / 427.8 at 8k (sliding layers only there); 20b 680 → 681, 620 → 619: tied.
  if constexpr (deep) pdl_launch_dependents();
  pdl_wait();  // norm_qkv_rope has written q and the newest K/V row
  timeline.mark_waited();
  // Longer caches release the out-projection once q is read and every K/V copy of the split is in flight (run()'s
  // after_keys: before the key loop when the prefetch issued all of it, else after the loop), so its CTAs wake and
  // issue their first weight batch under the loop, the merge and the combine. Released right at this wait (session
  // 3), its 180 CTAs streamed 23.6 MB ahead of attention's K/V reads and lost 2–4 %; only at exit, the out-
  // projection's CTAs started ~0.9 µs after attention's last one left and passed their own wait 1.1 µs later
  // (session 15's timeline). H100, same call (session 16), 20b 584.0 / 547.7 / 479.5 → 592.6 / 561.4 / 491.6 tok/s
  // at 1k / 8k / 32k, 120b 415.3 / 388.1 / 337.4 → 422.4 / 399.6 / 346.2; released after the loop in every split:
  // 588.7 / 556.3 / 486.5 and 418.8 / 395.0 / 342.2.

  const float* q = p.q + static_cast<size_t>(kv_head) * group * kD;
  float* ml = partial_ml(p, group);
  // push: this split's entries of rank 0's `pushed` (distributed shared memory; rank 0's own are local).
  float* const pushed_mine =
      push ? cg::this_cluster().map_shared_rank(pushed, 0) + split * group * kPartEntry : nullptr;
  attend.run(
      group, p.sm_scale, newest,
      [&](int h, int d) {  // L2: norm_qkv_rope may have run after this started
        return __ldcg(reinterpret_cast<const float2*>(q + h * kD + d));
      },
      [&](int c) {
        const bf16* row = (c < 8 ? k_head : v_head) + static_cast<size_t>(newest) * kD;
        return __ldcg(reinterpret_cast<const uint4*>(row) + c % 8);
      },
      [&] {
        if constexpr (!deep) pdl_launch_dependents();
        if (push) cluster_wait();  // every peer runs (their first arrival): before the first remote store
      },
      [&](int h, int pair, float m_max, float l_sum, float2 acc) {
        if (range.splits == 1) {  // the whole context in this CTA: no workspace round trip
          write_output(p.out, kv_head * group + h, pair, m_max, l_sum, acc, s_sink[h]);
          return;
        }
        const size_t at = partial_index(p, group, kv_head, split, h);
        float* const part = push ? pushed_mine + h * kPartEntry : s_part + h * kPartEntry;
        float* o_dst = cluster_combine ? part : p.workspace + at * kD;
        float* ml_dst = cluster_combine ? part + kD : ml + at * 2;
        reinterpret_cast<float2*>(o_dst)[pair] = acc;
        if (pair == 0) *reinterpret_cast<float2*>(ml_dst) = make_float2(m_max, l_sum);
      });
  if (push)
    combine_pushed(p, group, kv_head, range.splits, s_sink, pushed);
  else if (cluster_combine)
    combine_in_cluster(p, group, kv_head, range.splits, s_sink, s_part);
  else if (range.splits > 1)
    combine_when_last(p, group, kv_head, range.splits, s_sink);
}

// kLargeCluster where the device can hold every KV head's first cluster of that size at once (H100: GPCs of 16–18
// SMs, up to 4 attention CTAs an SM), else kPortableCluster. A host query, legal during graph capture; the
// decode step launches attention only while it captures, so its cost is paid once a graph.
int combine_cluster_size(int kv_heads) {
  CUDA_CHECK(cudaFuncSetAttribute(attention_decode_kernel<kMmaStages>, cudaFuncAttributeNonPortableClusterSizeAllowed,
                                  1));
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(kLargeCluster, kv_heads);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = kSmemBytes;
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = kLargeCluster;
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, attention_decode_kernel<kMmaStages>, &config) != cudaSuccess) {
    (void)cudaGetLastError();  // not supported here: the portable size
    return kPortableCluster;
  }
  return clusters >= kv_heads ? kLargeCluster : kPortableCluster;
}

}  // namespace

int attention_decode_max_splits(int kv_heads, int capacity, int multiprocessors) {
  const int deep = ceil_div(capacity, kDeepKeysPerSplit);
  if (deep <= kDeepMaxSplits && deep * std::max(kv_heads, 1) <= multiprocessors / 4) return deep;
  const int for_occupancy = ceil_div(2 * multiprocessors, std::max(kv_heads, 1));
  return std::max(1, std::min({for_occupancy, 64, ceil_div(capacity, kMinKeysPerSplit)}));
}

int attention_decode_short_length() { return kDeepMaxSplits * kDeepKeysPerSplit; }

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
  // A short cache (every sliding layer: 128 slots, one split; a full layer up to kDeepMaxSplits · 512 slots): one
  // CTA a split, each asking for all the shared memory an SM has, so that no other kernel's CTA shares its SM. The
  // out-projection, released once q is read, becomes resident beside attention and issues 64 KB of weight loads a
  // CTA; on an SM it shares, attention's merge (shared-memory traffic through the same load/store pipe) took 3.8 µs
  // from the key loop's end to the exit instead of 2.0 (timeline, 20b at 1k, session 19). H100, same call, the
  // sliding layers alone: 20b 664.6 → 674.5 tok/s at 1k, 120b 460.1 → 467.0. The attribute is the larger size for
  // both kernels: a graph holds launches of each.
  int device = 0, optin = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const size_t whole_sm = std::max(attention_split::smem_bytes(kDeepStages) + kDeepPushedBytes,
                                   static_cast<size_t>(optin) - kWholeSmSlack);
  // Idempotent; legal during graph capture (it is not a stream operation).
  CUDA_CHECK(cudaFuncSetAttribute(attention_decode_kernel<kDeepStages>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(whole_sm)));
  if (p.max_splits <= kDeepMaxSplits) {  // attention_decode_max_splits' short-cache rule (any length is correct)
    launch_kernel(attention_decode_kernel<kDeepStages>, dim3(p.max_splits, p.kv_heads), dim3(kThreads), whole_sm,
                  stream, /*pdl=*/true, /*cluster_x=*/p.max_splits, p, /*cluster=*/p.max_splits);
    return;
  }
  CUDA_CHECK(cudaFuncSetAttribute(attention_decode_kernel<kMmaStages>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(kSmemBytes)));
  // Clusters along x (see combine_in_cluster). CTAs past the split count exit at once, those of
  // the first cluster after joining its barriers.
  const int cluster = combine_cluster_size(p.kv_heads);
  launch_kernel(attention_decode_kernel<kMmaStages>, dim3(ceil_div(p.max_splits, cluster) * cluster, p.kv_heads),
                dim3(kThreads), kSmemBytes, stream, /*pdl=*/true, cluster, p, cluster);
}

}  // namespace gpt_oss

// Decode attention fused with its prologue, one launch a layer: RMSNorm → qkv GEMV + bias → YaRN RoPE → k/v
// appended to the cache → attention with sinks, for one query token.
//
// Why: as two launches (norm_qkv_rope, then attention_decode) the attention of a 20b layer at 1k spent ~6.5 µs of
// dependent latency with HBM idle (H100, session 8 timeline): the wait for the whole qkv grid, q and the newest
// K/V row read back from L2, and the split combine's fence, arrival atomic and partial round trips. Here one
// cluster of kCluster CTAs owns one KV head: its CTAs compute exactly that head's rotation pairs (its G query
// heads, its key and its value head), push q and the new k / v row into every peer's shared memory, and after
// one cluster barrier each CTA attends its split of the keys (attention_split.cuh); the splits' partials meet in
// distributed shared memory, kCluster lanes per output pair. Nothing of the chain goes through L2 but the
// cache row written for later steps and the output.
//
// Work split: CTA r of KV head g's cluster owns that head's pairs r, r + kCluster, ...; warp w the pairs
// r + kCluster·(w + kWarps·m), each both rows of one rotation pair (qkv_pairs.cuh), both register batches in
// flight before pdl_wait() (the MoE of the layer before still drains). The first 4 warps also start their K/V
// cp.async pipelines before the wait. Split r covers keys [r·S, (r+1)·S) of the valid slots, S = len / kCluster
// rounded up to 16 (empty splits give m = −inf, l = 0).
//
// Floor: the qkv weight (29.5 MB for gpt-oss) plus K and V (2 KiB a key a layer), as the two kernels it replaces.
// Warning: head_dim == 64, q_heads / kv_heads ≤ 8 (qkv_attention_supported()).
#include "cuda/qkv_attention.h"

#include <cooperative_groups.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <tuple>

#include "cuda/attention_split.cuh"
#include "cuda/qkv_pairs.cuh"

namespace gpt_oss {
namespace {

namespace cg = cooperative_groups;

constexpr int kCluster = 16;  // CTAs per KV head (non-portable cluster size: qkv_attention_supported checks)
constexpr int kWarps = 10;    // gpt-oss: 320 pairs a KV head = 16 CTAs × 10 warps × 2 pairs
constexpr int kThreads = kWarps * 32;
constexpr int kD = kAttentionHeadDim;
constexpr int kHalf = kD / 2;
constexpr int kPartEntry = kD + 2;  // a head's split partial: o[64], m, l
static_assert(kThreads >= attention_split::kThreads, "the split's 4 warps are the CTA's first");
static_assert(kAttentionMaxGroup * kHalf <= kThreads, "the merge gives each output pair kCluster lanes");

size_t dynamic_smem(int hidden) { return attention_split::kSmemBytes + static_cast<size_t>(hidden) * sizeof(float); }

__global__ void __launch_bounds__(kThreads, 2)
    qkv_attention_kernel(const QkvAttentionParams p) {
  TimelineScope timeline(kTlQkvAttention);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* xn = reinterpret_cast<float*>(smem_raw + attention_split::kSmemBytes);  // [hidden]
  __shared__ float s_q[kAttentionMaxGroup * kD];                 // the cluster's query heads, RoPE applied
  __shared__ __align__(16) bf16 s_new[2 * kD];                   // the newest key's K row, then its V row
  __shared__ __align__(8) float s_part[kAttentionMaxGroup * kPartEntry];  // this split's partial per head
  __shared__ float s_sink[kAttentionMaxGroup];

  const NormRopeParams& a = p.qkv;
  cg::cluster_group cluster = cg::this_cluster();
  // A peer's shared memory may be written only once the peer runs: arrive now, wait just before the first write.
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
  const int rank = static_cast<int>(cluster.block_rank());
  const int kv_head = blockIdx.y, group = a.q_heads / a.kv_heads;
  const int pairs = (group + 2) * kHalf;  // the KV head's: its query heads, then its key head, then its value head
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  // The position comes from the step's host copy, complete before the graph's first kernel: the split's keys
  // (all but the newest, written by earlier steps) may be read before pdl_wait().
  const int pos = *a.pos, capacity = a.cache.capacity;
  const int len = min(pos + 1, capacity), newest = pos % capacity;
  constexpr int kQuantum = attention_split::kMmaBlock;
  const int per_split = ((len + kCluster - 1) / kCluster + kQuantum - 1) / kQuantum * kQuantum;
  const int start = min(rank * per_split, len);
  const size_t head_base = static_cast<size_t>(kv_head) * capacity * kD;
  const attention_split::Split attend{a.cache.k + head_base, a.cache.v + head_base, start,
                                      min(start + per_split, len), smem_raw};

  auto head_of = [&](int j) {  // pair j of this KV head → (global head index of the qkv rows, i)
    const int local = j / kHalf;
    const int head = local < group ? kv_head * group + local
                                   : (local == group ? a.q_heads + kv_head : a.q_heads + a.kv_heads + kv_head);
    return head;
  };
  const int first_pair = rank + kCluster * warp, pair_stride = kCluster * kWarps;
  qkv_pairs::PairStream stream;
  auto start_pair = [&](int j) {
    stream.start(a.w, a.hidden, static_cast<size_t>(head_of(j)) * kD + j % kHalf, kHalf);
  };
  if (first_pair < pairs) start_pair(first_pair);  // weights need no earlier kernel: stream while it drains
  if (warp < attention_split::kWarps) attend.prefetch();
  pdl_wait();  // the previous layer's MoE has written the residual
  timeline.mark_waited();
  // No pdl_launch_dependents(): the out-projection is released as this grid's CTAs exit (attention_decode.cu says
  // why an earlier release loses).
  if (static_cast<int>(threadIdx.x) < group)
    s_sink[threadIdx.x] = p.sinks[kv_head * group + threadIdx.x] * attention_split::kLog2e;
  qkv_pairs::rmsnorm_to_shared<kWarps>(a, xn);
  asm volatile("barrier.cluster.wait.aligned;" ::: "memory");

  for (int j = first_pair; j < pairs; j += pair_stride) {
    if (j != first_pair) start_pair(j);
    const int head = head_of(j), i = j % kHalf, local = j / kHalf;
    const float2 v = qkv_pairs::pair_epilogue(a, head, i, stream.finish(xn), pos);  // every lane: the warp's sums
    if (local < group) {
      if (lane < kCluster) {  // lane r hands the pair to cluster rank r
        float* dst = cluster.map_shared_rank(s_q, lane) + local * kD;
        dst[i] = v.x;
        dst[i + kHalf] = v.y;
      }
      continue;
    }
    const bool is_v = local > group;
    const bf16 b0 = __float2bfloat16(v.x), b1 = __float2bfloat16(v.y);
    if (lane == 0) {  // the cache, for later steps
      bf16* cache = (is_v ? a.cache.v : a.cache.k) + head_base + static_cast<size_t>(newest) * kD;
      cache[i] = b0;
      cache[i + kHalf] = b1;
    }
    if (lane < kCluster) {  // this step's key attends from shared memory, as the cache holds it (bf16)
      bf16* dst = cluster.map_shared_rank(s_new, lane) + (is_v ? kD : 0);
      dst[i] = b0;
      dst[i + kHalf] = b1;
    }
  }
  cluster.sync();  // every q and the new k / v are in every CTA's shared memory

  if (warp < attention_split::kWarps) {
    attend.run(
        group, p.sm_scale, newest, [&](int h, int d) { return s_q[h * kD + d]; },
        [&](int c) { return reinterpret_cast<const uint4*>(s_new)[c]; },
        [&](int h, int pair, float m, float l, float2 acc) {
          reinterpret_cast<float2*>(s_part + h * kPartEntry)[pair] = acc;
          if (pair == 0) *reinterpret_cast<float2*>(s_part + h * kPartEntry + kD) = make_float2(m, l);
        });
  }
  cluster.sync();  // every split's partial is in its CTA's shared memory

  // out = Σ_s o_s 2^(m_s−M) / (2^(sink−M) + Σ_s l_s 2^(m_s−M)), M = max_s m_s: each CTA merges group·32 / kCluster
  // output pairs, kCluster lanes each (lane s reads split s), in a fixed shuffle order.
  const int per_cta = group * kHalf / kCluster;  // group · 2: a whole number of warps
  const int local = static_cast<int>(threadIdx.x) / kCluster, split = static_cast<int>(threadIdx.x) % kCluster;
  if (local < per_cta) {
    const int item = rank * per_cta + local, h = item / kHalf, pair = item % kHalf;
    const float* peer = cluster.map_shared_rank(s_part, split) + h * kPartEntry;
    const float2 ml = *reinterpret_cast<const float2*>(peer + kD);
    const float2 o = reinterpret_cast<const float2*>(peer)[pair];
    float m_max = ml.x;
#pragma unroll
    for (int off = kCluster / 2; off > 0; off >>= 1) m_max = fmaxf(m_max, __shfl_xor_sync(0xffffffffu, m_max, off));
    const float w = exp2f(ml.x - m_max);  // finite m_max: split 0 always holds keys; empty splits weigh 0
    float l = ml.y * w;
    float2 acc = make_float2(o.x * w, o.y * w);
#pragma unroll
    for (int off = kCluster / 2; off > 0; off >>= 1) {
      l += __shfl_xor_sync(0xffffffffu, l, off);
      acc.x += __shfl_xor_sync(0xffffffffu, acc.x, off);
      acc.y += __shfl_xor_sync(0xffffffffu, acc.y, off);
    }
    if (split == 0) attention_split::write_output(p.out, kv_head * group + h, pair, m_max, l, acc, s_sink[h]);
  }
  cluster.sync();  // the peers have read this CTA's partial
}

}  // namespace

bool qkv_attention_supported(const NormRopeParams& s) {
  if (s.head_dim != kD || s.kv_heads <= 0 || s.q_heads % s.kv_heads != 0 || s.q_heads / s.kv_heads > kAttentionMaxGroup ||
      s.hidden <= 0 || s.hidden % 8 != 0 || s.cache.capacity <= 0)
    return false;
  // Every KV head's cluster resident at once (else a second wave of clusters doubles the step); cached per device
  // and shape, as the occupancy query is not free.
  static std::mutex mu;
  static std::map<std::tuple<int, int, int>, bool> known;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  const auto key = std::make_tuple(device, s.hidden, s.kv_heads);
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = known.find(key); it != known.end()) return it->second;
  const size_t smem = dynamic_smem(s.hidden);
  bool ok = cudaFuncSetAttribute(qkv_attention_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) ==
                cudaSuccess &&
            cudaFuncSetAttribute(qkv_attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(smem)) == cudaSuccess;
  if (ok) {
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(kCluster, s.kv_heads);
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = smem;
    cudaLaunchAttribute cluster_dim = {};
    cluster_dim.id = cudaLaunchAttributeClusterDimension;
    cluster_dim.val.clusterDim.x = kCluster;
    cluster_dim.val.clusterDim.y = 1;
    cluster_dim.val.clusterDim.z = 1;
    config.attrs = &cluster_dim;
    config.numAttrs = 1;
    int clusters = 0;
    ok = cudaOccupancyMaxActiveClusters(&clusters, qkv_attention_kernel, &config) == cudaSuccess &&
         clusters >= s.kv_heads;
  }
  cudaGetLastError();  // a refused attribute or query leaves no sticky error behind
  known[key] = ok;
  return ok;
}

void launch_qkv_attention(const QkvAttentionParams& p, cudaStream_t stream) {
  if (!qkv_attention_supported(p.qkv))
    throw std::invalid_argument("qkv_attention: unsupported shape or device (see qkv_attention_supported)");
  // For this launch's hidden size (the support check set it for the first shape it saw); idempotent and legal
  // during graph capture (not a stream operation).
  CUDA_CHECK(cudaFuncSetAttribute(qkv_attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(dynamic_smem(p.qkv.hidden))));
  launch_kernel(qkv_attention_kernel, dim3(kCluster, p.qkv.kv_heads), dim3(kThreads), dynamic_smem(p.qkv.hidden),
                stream, /*pdl=*/true, kCluster, p);
}

}  // namespace gpt_oss

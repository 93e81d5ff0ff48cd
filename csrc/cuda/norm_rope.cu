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
#include "cuda/qkv_pairs.cuh"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace gpt_oss {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

__global__ void __launch_bounds__(kThreads, 3) norm_qkv_rope_kernel(const NormRopeParams p) {
  TimelineScope timeline(kTlNormQkvRope);
  extern __shared__ float4 smem4[];
  float* xn = reinterpret_cast<float*>(smem4);  // [hidden]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int half = p.head_dim / 2;
  const int pairs = (p.q_heads + 2 * p.kv_heads) * half;
  // Warp w of CTA c owns pairs c + w·gridDim.x + k·(gridDim.x·kWarps): interleaved over the CTAs, so every SM
  // (a fixed number of resident CTAs) gets the same number of rows to within one per CTA.
  const int pair_stride = gridDim.x * kWarps;
  const int first_pair = blockIdx.x + gridDim.x * warp;
  qkv_pairs::PairStream stream;
  auto start_pair = [&](int pair) {
    stream.start(p.w, p.hidden, static_cast<size_t>(pair / half) * p.head_dim + pair % half, half);
  };
  if (first_pair < pairs) start_pair(first_pair);  // weights need no earlier kernel: stream while it drains
  qkv_pairs::stage_norm_scale<kWarps>(p, xn);
  // Nor do the first pair's bias and rotation (pos is written before the graph): most warps own one pair, whose
  // epilogue then reads nothing from memory on the way to attention's wait.
  const int pos = *p.pos;
  qkv_pairs::PairConsts first_consts{};
  if (lane == 0 && first_pair < pairs)
    first_consts = qkv_pairs::pair_consts(p, first_pair / half, first_pair % half, pos);
  pdl_launch_dependents();
  pdl_wait();
  timeline.mark_waited();
  qkv_pairs::rmsnorm_to_shared<kWarps>(p, xn);  // RMSNorm statistics in fp32 over the whole residual stream

  for (int pair = first_pair; pair < pairs; pair += pair_stride) {
    if (pair != first_pair) start_pair(pair);
    const float2 dots = stream.finish(xn);
    if (lane != 0) continue;
    const int head = pair / half, i = pair % half;
    const qkv_pairs::PairConsts consts = pair == first_pair ? first_consts : qkv_pairs::pair_consts(p, head, i, pos);
    const float2 v = qkv_pairs::pair_epilogue(consts, dots);
    if (head < p.q_heads) {
      const size_t row0 = static_cast<size_t>(head) * p.head_dim + i;
      p.q[row0] = v.x;
      p.q[row0 + half] = v.y;
      continue;
    }
    const bool is_k = head < p.q_heads + p.kv_heads;
    const int kv_head = is_k ? head - p.q_heads : head - p.q_heads - p.kv_heads;
    bf16* cache = is_k ? p.cache.k : p.cache.v;
    const size_t at = (static_cast<size_t>(kv_head) * p.cache.capacity + pos % p.cache.capacity) * p.head_dim + i;
    cache[at] = __float2bfloat16(v.x);
    cache[at + half] = __float2bfloat16(v.y);
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

// MXFP4 mixture of experts for batch-1 decode: mlp1 + SwiGLU, mlp2 + weighted sum + residual. (The router starts
// in the out-projection's tail, RouterTail in gemv_bf16.cu, and every CTA here finishes it: router.cuh.)
//
// Floors (bytes / 3.0 TB/s; gpt-oss hidden = intermediate = 2880, k = 4; 1530 B a row: 1440 codes + 90 scales):
//   mlp1    4 experts × 5760 rows × 1530 B = 35.3 MB                        → 11.8 µs
//   mlp2    4 experts × 2880 rows × 1530 B = 17.6 MB                        → 5.9 µs
// Measured (H100 SXM, graph-timed with successive launches overlapping through PDL, every expert streamed from
// HBM, session 3): mlp1 21.6 µs, mlp2 12.9 µs. Time against bytes (bench_kernels_weights --sweep, k = 1..8):
// mlp1 ≈ 6.0 µs + bytes at 2.2 TB/s, mlp2 (whole-tile CTAs) ≈ 2.8 µs + bytes at 1.5 TB/s. Both are
// latency-bound: a warp's weight batches are serial, each round trip ~3 µs under load, so what counts is how
// many warps' batches are in flight (registers), not the instruction count (mlp1 SASS: ~3 instructions per
// weight, 4.9 available at 3 TB/s).
//
// Both launch with programmatic dependent launch (launch_pdl): a kernel becomes resident while the previous
// one drains and waits (pdl_wait) only before reading what earlier kernels wrote (always through L2 with
// ld.cg: a producer that ran during this kernel's lifetime breaks the ld.global.nc contract); mlp2 reads the
// router's ids and issues its first weight batch before the wait. Tried on the H100 and dropped (same DRAM
// bytes, slower): a bulk L2 prefetch of each CTA's whole tile (mlp1 21.6 → 25.6 µs), streaming through a ring
// of cp.async slots in shared memory, 8 / 12 items in flight a warp (mlp1 20.2 → 24.7 µs, mlp2 equal), and a
// persistent TMA-fed MoE (benchmarks/NOTES.md).
//
// Steps of one layer's MoE (two launches after the out-projection + router, no host sync; ids stay on the GPU):
//   1. mlp1: grid (group of 4 row tiles, expert slot j); each CTA routes (one round of the router's partials,
//      with the residual it normalises), stages x once and streams 4 16-row tiles of expert ids[j] over all of
//      K, 2 warps a tile splitting K; epilogue: bias, clamped interleaved SwiGLU → act[j] bf16.
//   (mlp2's CTAs route the same way before their dependency wait, while mlp1 runs.)
//   2. mlp2: grid (row tile × split, in clusters of the splits); each CTA streams one 16-row tile of half the k
//      experts, its 8 warps shared among those experts, each warp one contiguous run of K chunks of one expert;
//      partial sums meet in shared memory in a fixed order, and the cluster's rank 0 adds both splits (DSMEM),
//      the routing-weighted biases and the fp32 residual: deterministic.
//
// Repacked layout (upload_mxfp4_experts, a device kernel): rows in tiles of 16, K in chunks of 64 values (two
// MXFP4 blocks). Tile row ρ < 8 is row 2ρ of the tile's 16, ρ ≥ 8 is row 2(ρ-8)+1, so a lane holds a glu row
// and its linear partner. Per (expert, tile, chunk): 32 lanes × 16 B of codes (in the codes array) and 8 row
// pairs × 4 B of scales (in the scales array; exactly the stored bytes, no copies). Lane (g, t) = (lane / 4,
// lane % 4) gets words {row g blk 0, row g+8 blk 0, row g blk 1, row g+8 blk 1}, each the 8 values 8t..8t+7 of
// its block, and the scale word g: the 4 matching E8M0 scales.
// Dequantisation: nibbles are placed so that AND / shift / AND give fp16 pairs equal to value · 2^-14 exactly
// (E2M1 subnormals land on fp16 subnormals, which the tensor cores keep) — 11 integer ops per 8 values; an
// m16n8k16 f16 mma per 8 values a lane; the block scale 2^(e-127) is applied to the fp32 mma result.
// Inputs are staged to shared memory as fp16 scaled by 2^-p and 2^(14+p) is applied in the epilogue. mlp1 takes p
// from max |x| (the largest lands in [2^14, 2^15)): every bf16 input within 2^-28 of the largest one reaches the
// tensor cores exactly, whatever the vector's magnitude. mlp2 takes p from the caller's bound on |act| (the
// SwiGLU's clamp bounds it), which spares every CTA a search for the largest value: exact within 2^-28 of the
// bound, and loud (inf) past it.
//
// Warning: E8M0 scale 0 (2^-127) is treated as 0 and 255 (NaN) as +inf. An expert id outside [0, experts)
// makes the launch write NaN, never read out of bounds.
#include "cuda/moe_mxfp4.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include <cooperative_groups.h>

#include "cuda/router.cuh"
#include "cuda/weight_stream.cuh"

namespace gpt_oss {

namespace {

namespace cg = cooperative_groups;

constexpr int kTileRows = 16;
constexpr int kChunkValues = 64;
constexpr int kMaxK = 8;
// One staged input serves 4 row tiles: the staging's L2 reads drop 4-fold (16.6 → 4.1 MB a layer, all in the
// first microseconds of mlp1). H100, same call (session 5): mlp1 17.7 → 16.4 µs (20b), 18.5 → 16.2 (120b);
// 20b decode 498.5 → 517.6 tok/s at 1k, 473.0 → 483.4 at 8k, against 1440 CTAs of one tile.
constexpr int kMlp1TilesPerCta = 4;
constexpr int kMlp1WarpsPerTile = 2;
constexpr int kMlp1Warps = kMlp1TilesPerCta * kMlp1WarpsPerTile;
constexpr int kMlp2Warps = 8;
constexpr int kMlp2Splits = 2;  // CTAs per mlp2 tile (see moe_mlp2_residual_kernel)
// Chunks a warp loads before computing (640 B each). Sized so that every CTA is resident at once on a
// 132-SM H100 (mlp1: 360 CTAs of 8 warps, mlp2: 360 CTAs of 8 warps, each ≤ 85 registers and ≤ 3 an SM; mlp1's
// launch bound keeps 24 warps an SM for any kMlp1TilesPerCta).
constexpr int kMlp1Batch = 6;
constexpr int kMlp2Batch = 6;

__host__ __device__ inline int tile_row_offset(int rho) { return rho < 8 ? 2 * rho : 2 * (rho - 8) + 1; }

// ---- repack ------------------------------------------------------------------------------------------------

// Bit positions of the low value's magnitude (3 bits) and sign for nibble pair p; the high value sits 16 above.
__device__ constexpr int kMagBit[4] = {9, 0, 3, 12};
__device__ constexpr int kSignBit[4] = {15, 6, 7, 8};

// natural: 8 consecutive values, value i in nibble i (the checkpoint's byte order).
__device__ uint32_t place_nibbles(uint32_t natural) {
  uint32_t out = 0;
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const uint32_t lo = (natural >> (8 * p)) & 0xFu, hi = (natural >> (8 * p + 4)) & 0xFu;
    out |= ((lo & 7u) << kMagBit[p]) | ((lo >> 3) << kSignBit[p]) | ((hi & 7u) << (kMagBit[p] + 16)) |
           ((hi >> 3) << (kSignBit[p] + 16));
  }
  return out;
}

__global__ void repack_mxfp4_kernel(const uint8_t* __restrict__ blocks, const uint8_t* __restrict__ scales,
                                    int experts, int rows, int col_blocks, int tiles, int chunks,
                                    uint4* __restrict__ codes_out, uint32_t* __restrict__ scales_out) {
  const int64_t total = static_cast<int64_t>(experts) * tiles * chunks * 32;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int lane = static_cast<int>(i % 32);
    const int64_t tc = i / 32;
    const int c = static_cast<int>(tc % chunks);
    const int tile = static_cast<int>((tc / chunks) % tiles);
    const int64_t e = tc / (static_cast<int64_t>(chunks) * tiles);
    const int g = lane / 4, t = lane % 4;
    uint32_t words[4];
    uint32_t scale_word = 0;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int row = tile * kTileRows + tile_row_offset((w & 1) ? g + 8 : g);
      const int blk = 2 * c + (w >> 1);
      uint32_t natural = 0, scale = 0;
      if (row < rows && blk < col_blocks) {
        const int64_t rb = (e * rows + row) * col_blocks + blk;
        natural = *reinterpret_cast<const uint32_t*>(blocks + rb * 16 + 4 * t);
        scale = scales[rb];
      }
      words[w] = place_nibbles(natural);
      scale_word |= scale << (8 * w);
    }
    codes_out[i] = make_uint4(words[0], words[1], words[2], words[3]);
    if (t == 0) scales_out[tc * 8 + g] = scale_word;
  }
}

// ---- streaming MMA core -------------------------------------------------------------------------------------

// 8 placed values → 4 fp16 pairs (value · 2^-14): pairs (v0,v1), (v2,v3), (v4,v5), (v6,v7).
__device__ __forceinline__ void fp4x8_to_f16(uint32_t q, uint32_t& p0, uint32_t& p1, uint32_t& p2, uint32_t& p3) {
  p0 = q & 0x8E008E00u;
  p1 = (q << 9) & 0x8E008E00u;
  p2 = ((q << 6) & 0x0E000E00u) | ((q << 8) & 0x80008000u);
  p3 = ((q >> 3) & 0x0E000E00u) | ((q << 7) & 0x80008000u);
}

// One 64-value chunk of a 16-row tile: adds (scaled) dots of rows g and g + 8 into acc.
__device__ __forceinline__ void chunk_dot(uint4 code, uint32_t sc, const __half* xs, int t, float& acc_g,
                                          float& acc_g8) {
  const uint4 x0 = *reinterpret_cast<const uint4*>(xs + 8 * t);
  const uint4 x1 = *reinterpret_cast<const uint4*>(xs + 32 + 8 * t);
  uint32_t a[4], b[4];
  float d0[4] = {0.f, 0.f, 0.f, 0.f}, d1[4] = {0.f, 0.f, 0.f, 0.f};
  fp4x8_to_f16(code.x, a[0], a[1], a[2], a[3]);  // row g, block 0
  fp4x8_to_f16(code.y, b[0], b[1], b[2], b[3]);  // row g + 8, block 0
  mma_f16(d0, a[0], b[0], a[1], b[1], x0.x, x0.y);
  mma_f16(d0, a[2], b[2], a[3], b[3], x0.z, x0.w);
  fp4x8_to_f16(code.z, a[0], a[1], a[2], a[3]);  // row g, block 1
  fp4x8_to_f16(code.w, b[0], b[1], b[2], b[3]);  // row g + 8, block 1
  mma_f16(d1, a[0], b[0], a[1], b[1], x1.x, x1.y);
  mma_f16(d1, a[2], b[2], a[3], b[3], x1.z, x1.w);
  // E8M0 bytes {row g blk 0, row g+8 blk 0, row g blk 1, row g+8 blk 1} → 2^(e-127) as fp32.
  const float s_g0 = __uint_as_float((sc & 0xFFu) << 23), s_g80 = __uint_as_float((sc & 0xFF00u) << 15);
  const float s_g1 = __uint_as_float((sc & 0xFF0000u) << 7), s_g81 = __uint_as_float((sc >> 1) & 0x7F800000u);
  acc_g = fmaf(d0[0], s_g0, fmaf(d1[0], s_g1, acc_g));
  acc_g8 = fmaf(d0[2], s_g80, fmaf(d1[2], s_g81, acc_g8));
}

struct StreamArgs {
  const uint4* codes;
  const uint32_t* scales;
  int tiles, chunks;
};

// Adds rows g and g + 8 of n ≥ 0 consecutive chunks of one expert's 16-row tile, times the staged inputs, into
// acc_g / acc_g8. codes / scales / xs point at the lane's data of the first chunk (consecutive chunks are 32
// uint4, 8 scale words and 64 inputs apart). Every batch issues all its loads before its first use. The first
// batch is the short one (n mod kBatch, else a whole one; its surplus loads repeat its last chunk and are not
// used) and is issued before `stage`, the CTA-wide input staging every thread calls once, so weights stream while
// the inputs are staged; the later batches are whole and addressed by compile-time offsets from one pointer.
// (The generic per-item (expert, chunk) bookkeeping this replaced cost ~35 of the ~100 instructions a chunk took,
// and the arithmetic is on the critical path: session 4's no-math probe ran mlp1 3.8 µs faster.)
template <int kBatch, typename Stage>
__device__ __forceinline__ void stream_chunks(const uint4* codes, const uint32_t* scales, const __half* xs, int n,
                                              Stage stage, float& acc_g, float& acc_g8) {
  const int t = threadIdx.x % 4;
  const int lead = n > 0 ? n - (n - 1) / kBatch * kBatch : 0;  // 1..kBatch chunks, or none
  uint4 code[kBatch];
  uint32_t scale[kBatch];
  if (lead > 0) {
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int v = min(u, lead - 1);
      code[u] = ld_stream(codes + v * 32);
      scale[u] = ld_stream_u32(scales + v * 8);
    }
  }
  stage();
  if (lead == 0) return;
#pragma unroll
  for (int u = 0; u < kBatch; ++u)
    if (u < lead) chunk_dot(code[u], scale[u], xs + u * kChunkValues, t, acc_g, acc_g8);
  codes += lead * 32, scales += lead * 8, xs += lead * kChunkValues;
  for (int i = lead; i < n; i += kBatch) {
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      code[u] = ld_stream(codes + u * 32);
      scale[u] = ld_stream_u32(scales + u * 8);
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) chunk_dot(code[u], scale[u], xs + u * kChunkValues, t, acc_g, acc_g8);
    codes += kBatch * 32, scales += kBatch * 8, xs += kBatch * kChunkValues;
  }
}

// Chunk c of expert e's row tile in the repacked layout, and the lane's first code / scale word there (32-bit
// index arithmetic: upload_mxfp4_experts keeps every code index below 2^31).
__device__ __forceinline__ uint32_t chunk_line(const StreamArgs& a, int e, int tile, int c) {
  return (static_cast<uint32_t>(e) * a.tiles + tile) * a.chunks + c;
}
__device__ __forceinline__ const uint4* chunk_codes(const StreamArgs& a, int e, int tile, int c) {
  return a.codes + (chunk_line(a, e, tile, c) * 32 + threadIdx.x % 32);
}
__device__ __forceinline__ const uint32_t* chunk_scales(const StreamArgs& a, int e, int tile, int c) {
  return a.scales + (chunk_line(a, e, tile, c) * 8 + threadIdx.x % 32 / 4);
}

// The contiguous item range of warp `warp` out of `warps` over n_items.
__device__ __forceinline__ void warp_range(int n_items, int warps, int warp, int& begin, int& end) {
  const int per = (n_items + warps - 1) / warps;
  begin = min(n_items, warp * per);
  end = min(n_items, begin + per);
}

// Stages nj ≤ kSlots bf16 vectors of `cols` values into shared fp16 (row stride xs_stride, zero padded), each
// scaled by 2^-p_j so its largest magnitude lands in [2^14, 2^15); s_up[j] = 2^(14 + p_j) undoes both biases.
// Both passes walk the nj vectors as one flat range with kStageLoads loads in flight per thread: the staging
// sits on every CTA's critical path, so its L2 round trips must not run one at a time.
constexpr int kStageLoads = 4;

// For a vector whose largest magnitude is mj: down = 2^-p, which puts mj in [2^14, 2^15), and up = 2^(14 + p).
// NaN or inf inputs give p = 113: they stay NaN / inf and the result says so. Tiny vectors are scaled up (p < 0)
// so they do not become fp16 subnormals.
__device__ __forceinline__ void stage_scales(float mj, float& down, float& up) {
  const int e = (mj == mj) ? static_cast<int>((__float_as_uint(mj) >> 23) & 0xFF) - 127 : 127;
  const int p = min(113, max(-100, e - 14));
  down = __uint_as_float(static_cast<uint32_t>(127 - p) << 23);
  up = __uint_as_float(static_cast<uint32_t>(127 + 14 + p) << 23);
}

// Stages nj bf16 vectors (x: [nj, cols] contiguous) into shared fp16 (row stride xs_stride, zero padded), row j
// times down(j), a power of two; kStageLoads loads in flight per thread. The caller synchronises.
template <typename Down>
__device__ __forceinline__ void stage_scaled(const bf16* __restrict__ x, int nj, int cols, int xs_stride,
                                             __half* xs, Down down_of) {
  const int tid = threadIdx.x, nthreads = blockDim.x, groups = cols / 8;
  const uint4* x16 = reinterpret_cast<const uint4*>(x);
  const int xs_groups = xs_stride / 8, xs_total = nj * xs_groups;
  for (int base = tid; base < xs_total; base += kStageLoads * nthreads) {
    uint4 v[kStageLoads];
#pragma unroll
    for (int u = 0; u < kStageLoads; ++u) {
      const int idx = base + u * nthreads, j = idx / xs_groups, i = idx - j * xs_groups;
      v[u] = idx < xs_total && i < groups ? __ldcg(x16 + j * groups + i) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kStageLoads; ++u) {
      const int idx = base + u * nthreads;
      if (idx >= xs_total) break;
      const float down = down_of(idx / xs_groups);
      const uint32_t w[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
      uint32_t h[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const __half2 hv = __floats2half2_rn(__uint_as_float(w[q] << 16) * down,
                                             __uint_as_float(w[q] & 0xFFFF0000u) * down);
        h[q] = *reinterpret_cast<const uint32_t*>(&hv);
      }
      reinterpret_cast<uint4*>(xs)[idx] = make_uint4(h[0], h[1], h[2], h[3]);  // row j at j · xs_stride
    }
  }
}

template <int kSlots>
__device__ __forceinline__ void stage_inputs(const bf16* __restrict__ x, int nj, int cols, int xs_stride,
                                             __half* xs, float* s_up, float* s_red) {
  const int tid = threadIdx.x, nthreads = blockDim.x, warp = tid / 32, lane = tid % 32, nwarps = nthreads / 32;
  const int groups = cols / 8, total = nj * groups;  // 8 bf16 per 16-byte load; x is [nj, cols] contiguous
  const uint4* x16 = reinterpret_cast<const uint4*>(x);
  float m[kSlots];
#pragma unroll
  for (int q = 0; q < kSlots; ++q) m[q] = 0.f;
  for (int base = tid; base < total; base += kStageLoads * nthreads) {
    uint4 v[kStageLoads];
#pragma unroll
    for (int u = 0; u < kStageLoads; ++u) {
      const int idx = base + u * nthreads;
      v[u] = idx < total ? __ldcg(x16 + idx) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kStageLoads; ++u) {
      const uint32_t w[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
      float mv = 0.f;
#pragma unroll
      for (int q = 0; q < 4; ++q)
        mv = fmaxf(mv, fmaxf(fabsf(__uint_as_float(w[q] << 16)), fabsf(__uint_as_float(w[q] & 0xFFFF0000u))));
      const int j = (base + u * nthreads) / groups;  // past the end: j ≥ nj, matches no slot
#pragma unroll
      for (int q = 0; q < kSlots; ++q)
        if (q == j) m[q] = fmaxf(m[q], mv);
    }
  }
#pragma unroll
  for (int q = 0; q < kSlots; ++q) {
    if (q >= nj) break;
    const float mq = warp_max(m[q]);
    if (lane == 0) s_red[q * nwarps + warp] = mq;
  }
  __syncthreads();
  if (tid < nj) {
    float mj = 0.f;
    for (int w = 0; w < nwarps; ++w) mj = fmaxf(mj, s_red[tid * nwarps + w]);
    stage_scales(mj, s_red[kMaxK * 32 + tid], s_up[tid]);
  }
  __syncthreads();
  stage_scaled(x, nj, cols, xs_stride, xs, [&](int j) { return s_red[kMaxK * 32 + j]; });
  __syncthreads();
}

// ---- how a launch gets its route ---------------------------------------------------------------------------

// Routed (rp.partials set: decode): every CTA finishes the routing from the out-projection's partials
// (router.cuh) and mlp1 normalises the residual itself. Given: ids / weights (and mlp1's x_normed) that an
// earlier launch wrote (launch_route, or a test's own).
struct MoeRouting {
  RoutePartials rp;
  const float* residual;
  const float* norm_scale;
  float eps, x_bound;
  const bf16* x_normed;
  const int32_t* ids;
  const float* weights;
};

// ---- mlp1 + SwiGLU ------------------------------------------------------------------------------------------

constexpr int kMlp1Threads = kMlp1Warps * 32;
// Routed mlp1 holds its share of the normed input in registers for hidden ≤ kXPerThread · kMlp1Threads (3072;
// gpt-oss 2880); the rest, if any, is normalised again from L2 where it is staged.
constexpr int kXPerThread = 12;

__global__ void __launch_bounds__(kMlp1Threads, 12 / kMlp1TilesPerCta)
    moe_mlp1_swiglu_kernel(MoeRouting r, int k, StreamArgs a, const bf16* __restrict__ bias, int experts, int rows,
                           int cols, float alpha, float limit, bf16* __restrict__ act) {
  TimelineScope timeline(kTlMlp1);
  extern __shared__ uint4 dyn_smem[];
  __half* xs = reinterpret_cast<__half*>(dyn_smem);
  __shared__ float s_up[1], s_red[kMaxK * 32 + kMaxK];
  __shared__ float s_sum[kMlp1Warps][kTileRows];
  __shared__ RouteSmem<kMlp1Threads> s_route;
  __shared__ int32_t s_ids[kRouteMaxK];
  __shared__ float s_weights[kRouteMaxK];
  const int j = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int tile = blockIdx.x * kMlp1TilesPerCta + warp / kMlp1WarpsPerTile;  // this warp's row tile
  // Every expert weight depends on the route (the out-projection, right before): no weight stream before the
  // wait. The norm scale and the gate bias are weights too, so they are read before it: after it, the residual and
  // the partials are the only L2 reads on the route's path (360 CTAs × 11.5 KB of norm scale, half of what the
  // route read there). Dependents are released only after the wait, so mlp2 may read the out-projection's
  // partials before its own.
  const bool routed = r.rp.partials != nullptr;
  float sv[kXPerThread];  // routed: the norm scale at threadIdx.x + kMlp1Threads · u
  if (routed) {
#pragma unroll
    for (int u = 0; u < kXPerThread; ++u) {
      const int i = threadIdx.x + u * kMlp1Threads;
      sv[u] = i < cols ? r.norm_scale[i] : 0.f;
    }
    route_stage_bias<kMlp1Threads>(r.rp, experts, s_route);
  }
  pdl_wait();
  timeline.mark_waited();
  pdl_launch_dependents();
  float inv_rms = 0.f, x_down = 1.f, x_up = 1.f;  // routed: the staging scale from the route's x_bound
  int id;
  if (routed) {
    // Only the partials are read on the route's path. The residual is read once the first weight batch is out
    // (in the staging below), so its L2 round trip runs under that batch's DRAM one; read here, beside the
    // partials, its 4.1 MB over the grid were queued ahead of them.
    inv_rms = route_from_partials<kMlp1Threads>(r.rp, experts, k, cols, r.eps, s_route, s_ids, s_weights);
    // The input is staged at the scale of the route's bound on |x_normed| (MoeRoute::x_bound), every thread its
    // own copy: no search for the largest value (a warp max, thread 0's pass over the warps, a barrier).
    // With the ranked route above, H100, same call (session 16): decode at 1k 20b 577.0 → 583.4 tok/s, 120b 411.0 →
    // 415.8 (the route alone: 579.7 / 412.5).
    stage_scales(r.x_bound, x_down, x_up);
    __syncthreads();  // publishes the route
    id = s_ids[j];
  } else {
    id = __ldcg(r.ids + j);  // every thread: one L2 request a warp, and no barrier before the first loads
  }
  const bool bad_id = id < 0 || id >= experts;
  const int expert = bad_id ? 0 : id;
  // Thread p < 8 · kMlp1TilesPerCta writes activation 8 · out_tile + pair: glu row 2i, linear row 2i + 1.
  const int pair = threadIdx.x % 8, local = threadIdx.x / 8, out_tile = blockIdx.x * kMlp1TilesPerCta + local;
  const int inter = rows / 2, i = out_tile * 8 + pair;
  const bool writes = local < kMlp1TilesPerCta && i < inter;
  float b_glu = 0.f, b_lin = 0.f;  // loaded now: in the epilogue they would be one more DRAM round trip
  if (writes) {
    const bf16* b = bias + static_cast<int64_t>(expert) * rows;
    b_glu = __bfloat162float(b[2 * i]), b_lin = __bfloat162float(b[2 * i + 1]);
  }
  int begin = 0, end = 0;
  if (tile < a.tiles) warp_range(a.chunks, kMlp1WarpsPerTile, warp % kMlp1WarpsPerTile, begin, end);
  float acc_g = 0.f, acc_g8 = 0.f;
  const int xs_len = a.chunks * kChunkValues;
  stream_chunks<kMlp1Batch>(
      chunk_codes(a, expert, tile, begin), chunk_scales(a, expert, tile, begin), xs + begin * kChunkValues,
      end - begin,
      [&] {
        if (!routed) {
          stage_inputs<1>(r.x_normed, 1, cols, xs_len, xs, s_up, s_red);
          return;
        }
        // All loads out before the first use (unpredicated, indices clamped, extras unused): one L2 round trip,
        // where predicated loads let ptxas put a use between them.
        float xv[kXPerThread];
#pragma unroll
        for (int u = 0; u < kXPerThread; ++u)
          xv[u] = __ldcg(r.residual + min(static_cast<int>(threadIdx.x) + u * kMlp1Threads, cols - 1));
#pragma unroll
        for (int u = 0; u < kXPerThread; ++u) {  // the same conversion as stage_inputs'; past cols, zeros
          const int ix = threadIdx.x + u * kMlp1Threads;
          const float v = __bfloat162float(normed_bf16(xv[u], inv_rms, sv[u]));
          if (ix < xs_len) xs[ix] = __float2half_rn(ix < cols ? v * x_down : 0.f);
        }
        for (int ix = threadIdx.x + kXPerThread * kMlp1Threads; ix < xs_len; ix += kMlp1Threads)
          xs[ix] = __float2half_rn(
              ix < cols ? __bfloat162float(normed_bf16(__ldcg(r.residual + ix), inv_rms, r.norm_scale[ix])) * x_down
                        : 0.f);
        __syncthreads();
      },
      acc_g, acc_g8);
  if (lane % 4 == 0) s_sum[warp][lane / 4] = acc_g, s_sum[warp][lane / 4 + 8] = acc_g8;
  __syncthreads();
  if (writes) {
    float glu = 0.f, lin = 0.f;
    for (int w = local * kMlp1WarpsPerTile; w < (local + 1) * kMlp1WarpsPerTile; ++w)
      glu += s_sum[w][pair], lin += s_sum[w][pair + 8];
    const float up = routed ? x_up : s_up[0];
    glu = glu * up + b_glu;
    lin = lin * up + b_lin;
    glu = glu > limit ? limit : glu;  // comparisons, not fminf: a NaN stays NaN
    lin = lin > limit ? limit : (lin < -limit ? -limit : lin);
    float out = glu / (1.f + __expf(-alpha * glu)) * (lin + 1.f);
    if (bad_id) out = __int_as_float(0x7fc00000);
    act[static_cast<int64_t>(j) * inter + i] = __float2bfloat16(out);
  }
}

// ---- mlp2 + weighted sum + residual -------------------------------------------------------------------------

// Each tile is split over kMlp2Splits CTAs by expert slot (slots [split · per, (split + 1) · per)): 360 CTAs of
// 8 warps keep 2880 warps' weight batches in flight where 180 whole-tile CTAs kept 1440. The kernel is
// latency-bound (time grows by ~3 µs per serial batch a warp), so halving each warp's share is what counts:
// H100, graph-timed, 20b k = 4: 14.9 → 12.9 µs (4 splits of 4 warps: 13.0, but decode lost 2 %). A tile's splits
// are one cluster: each CTA sums its 16 rows into shared memory and rank 0 adds the partner's through DSMEM, in
// split order, with the routing-weighted biases and the residual: deterministic.
__global__ void __launch_bounds__(kMlp2Warps * 32, 3)
    moe_mlp2_residual_kernel(const bf16* __restrict__ act, float act_bound, MoeRouting r, int k, StreamArgs a,
                             const bf16* __restrict__ bias, int experts, int rows, int cols,
                             float* __restrict__ residual) {
  TimelineScope timeline(kTlMlp2);
  extern __shared__ uint4 dyn_smem[];
  __half* xs = reinterpret_cast<__half*>(dyn_smem);
  __shared__ int s_expert[kMaxK];
  __shared__ float s_factor[kMaxK];
  __shared__ float s_sum[kMlp2Warps][kTileRows];
  __shared__ RouteSmem<kMlp2Warps * 32> s_route;
  __shared__ int32_t s_ids[kRouteMaxK];
  __shared__ float s_weight[kRouteMaxK];
  __shared__ float s_row[kTileRows];
  __shared__ int s_bad;
  // A tile's kMlp2Splits CTAs are one cluster (consecutive x): their rows meet in distributed shared memory.
  const int tile = blockIdx.x / kMlp2Splits, split = blockIdx.x % kMlp2Splits, warp = threadIdx.x / 32,
            lane = threadIdx.x % 32;
  const int per = (k + kMlp2Splits - 1) / kMlp2Splits, j0 = min(k, split * per), nj = min(k, j0 + per) - j0;
  if (threadIdx.x == 0) s_bad = 0;
  // The route, before pdl_wait(): the out-projection (or the launch that wrote the given ids and weights) finished
  // before mlp1 released this launch (see mlp1), so what it wrote is final in L2; read there (ld.cg), never from
  // an L1 line an earlier layer's launch left on this SM. Most of mlp2's CTAs start under mlp1's tail, before
  // their wait (session 14: handing the late ones the route mlp1 had published changed nothing in decode).
  if (r.rp.partials) {
    route_stage_bias<kMlp2Warps * 32>(r.rp, experts, s_route);
    route_from_partials<kMlp2Warps * 32>(r.rp, experts, k, rows, r.eps, s_route, s_ids, s_weight);
  } else if (threadIdx.x < k) {
    s_ids[threadIdx.x] = __ldcg(r.ids + threadIdx.x);
    s_weight[threadIdx.x] = __ldcg(r.weights + threadIdx.x);
  }
  __syncthreads();
  if (threadIdx.x < k) {
    const int id = s_ids[threadIdx.x];
    const bool bad = id < 0 || id >= experts;
    s_expert[threadIdx.x] = bad ? 0 : id;
    if (bad) s_bad = 1;
  }
  __syncthreads();
  // The CTA's nj slots share its warps (slot s: warps [⌈8s / nj⌉, ⌈8(s + 1) / nj⌉)), which split the slot's chunks:
  // each warp streams one contiguous run of one expert and applies the slot's factor once, at the end.
  const int xs_stride = a.chunks * kChunkValues;
  const int slot = nj > 0 ? warp * nj / kMlp2Warps : 0;
  const int first_warp = nj > 0 ? (slot * kMlp2Warps + nj - 1) / nj : 0;
  const int slot_warps = nj > 0 ? ((slot + 1) * kMlp2Warps + nj - 1) / nj - first_warp : 1;
  int begin = 0, end = 0;
  if (nj > 0) warp_range(a.chunks, slot_warps, warp - first_warp, begin, end);
  const int expert = nj > 0 ? s_expert[j0 + slot] : 0;
  // Thread rho < 16 of rank 0 (split 0) finishes row `row` of the tile (see the tail). Its k experts' biases and
  // its residual are read right after the wait, with the act staging, so their round trip runs under the stream;
  // in the tail they were a DRAM round trip on the tile's path wherever rank 0 was the later of the two splits.
  // (Read before the wait, the biases held a register that ptxas spilled ahead of warp 0's lead batch.)
  const int rho = threadIdx.x, row = tile * kTileRows + tile_row_offset(rho % kTileRows);
  const bool mine = rho < kTileRows && row < rows;
  const bool adds = mine && split == 0;
  constexpr int kTailSlots = 4;
  __nv_bfloat162 b[kTailSlots / 2];  // as bf16 pairs: two registers held across the stream, not four
  float old = 0.f;
  float acc_g = 0.f, acc_g8 = 0.f;
  stream_chunks<kMlp2Batch>(
      chunk_codes(a, expert, tile, begin), chunk_scales(a, expert, tile, begin),
      xs + slot * xs_stride + begin * kChunkValues, end - begin,
      [&] {
        pdl_wait();  // act (mlp1) and the residual are read only after this
        timeline.mark_waited();
        pdl_launch_dependents();
        if (adds) {
          old = __ldcg(residual + row);  // L2: see pdl_wait
#pragma unroll
          for (int j = 0; j < kTailSlots; j += 2)  // slots past k clamped to slot k - 1 and not added
            b[j / 2] = __halves2bfloat162(bias[static_cast<int64_t>(s_expert[min(j, k - 1)]) * rows + row],
                                          bias[static_cast<int64_t>(s_expert[min(j + 1, k - 1)]) * rows + row]);
        }
        // One pass at the scale of the caller's bound on |act| (launch_bf16_mxfp4w_moe_mlp2_residual): no search
        // for each vector's largest value, which cost an L2 round trip and two barriers on every CTA's path.
        float down, up;
        stage_scales(act_bound, down, up);
        if (nj > 0)
          stage_scaled(act + static_cast<int64_t>(j0) * cols, nj, cols, xs_stride, xs, [=](int) { return down; });
        if (threadIdx.x >= j0 && threadIdx.x < j0 + nj) s_factor[threadIdx.x] = s_weight[threadIdx.x] * up;
        __syncthreads();
      },
      acc_g, acc_g8);
  if (end > begin) {
    const float f = s_factor[j0 + slot];
    acc_g *= f, acc_g8 *= f;
  }
  if (lane % 4 == 0) s_sum[warp][lane / 4] = acc_g, s_sum[warp][lane / 4 + 8] = acc_g8;
  __syncthreads();
  // The cluster's rank 0 (split 0) adds the splits' rows in split order, the routing-weighted biases and the
  // residual: deterministic. The partner's rows cost one DSMEM read, where global partials, a fence, an arrival
  // atomic and a load of the partials were three dependent round trips on the tile's path. The biases of the first
  // kTailSlots slots and the residual are already in registers (above); past kTailSlots (no gpt-oss model) the
  // rest are loaded here, one by one.
  float own = 0.f;
  if (mine) {
    for (int from = 0; from < kMlp2Warps; ++from) own += s_sum[from][rho];
    s_row[rho] = own;
  }
  cluster_arrive_release();  // s_row is published
  cluster_wait_acquire();
  cg::cluster_group cluster = cg::this_cluster();
  if (adds) {
    float sum = own;
#pragma unroll
    for (int sp = 1; sp < kMlp2Splits; ++sp) sum += *cluster.map_shared_rank(&s_row[rho], sp);
#pragma unroll
    for (int j = 0; j < kTailSlots; ++j)
      if (j < k) sum = fmaf(s_weight[j], j % 2 ? __high2float(b[j / 2]) : __low2float(b[j / 2]), sum);
    for (int j = kTailSlots; j < k; ++j)  // k > kTailSlots: the rest, one by one
      sum = fmaf(s_weight[j], __bfloat162float(bias[static_cast<int64_t>(s_expert[j]) * rows + row]), sum);
    residual[row] = old + (s_bad ? __int_as_float(0x7fc00000) : sum);
  }
  cluster_sync_relaxed();  // the partner's s_row stays until rank 0 has read it (consumed above)
}

// ---- batched prefill: grouped expert GEMMs ------------------------------------------------------------------
//
// Grid (ceil(row tiles / 4), tile list entry); a CTA's 4 warps each own one 16-row tile of the repacked layout
// × the entry's ≤ 64 tokens (8 n8 tiles, 32 accumulators a lane). Per 64-value chunk a lane loads its 16 B of
// codes and 4 B of scales (one full line per warp, exactly the decode kernels' fragments) and, per n8 tile,
// 2 × 16 B of token g's staged fp16 input: the same k permutation as chunk_dot, with token g as column g.
// Block scales and the per-token staging factor are applied to the fp32 mma results. The weight tile streams
// from HBM once per 64 tokens of an expert; every output belongs to one lane: deterministic.

constexpr int kPrefillWarps = 4;
constexpr int kPrefillNTiles = kMoePrefillTileTokens / 8;
constexpr int kStageThreads = 256;

__global__ void __launch_bounds__(kStageThreads)
    moe_prefill_stage_kernel(const bf16* __restrict__ in, int cols, int stride, __half* __restrict__ staged,
                             float* __restrict__ up) {
  __shared__ float s_red[kStageThreads / 32];
  __shared__ float s_down;
  const int r = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const bf16* row = in + static_cast<int64_t>(r) * cols;
  float m = 0.f;
  for (int i = threadIdx.x; i < cols; i += kStageThreads) m = fmaxf(m, fabsf(__bfloat162float(row[i])));
  m = warp_max(m);
  if (lane == 0) s_red[warp] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    float mx = 0.f;
    for (int w = 0; w < kStageThreads / 32; ++w) mx = fmaxf(mx, s_red[w]);
    // As stage_inputs: NaN / inf stay NaN / inf; tiny rows are scaled up rather than becoming fp16 subnormals.
    const int e = (mx == mx) ? static_cast<int>((__float_as_uint(mx) >> 23) & 0xFF) - 127 : 127;
    const int p = min(113, max(-100, e - 14));
    s_down = __uint_as_float(static_cast<uint32_t>(127 - p) << 23);
    up[r] = __uint_as_float(static_cast<uint32_t>(127 + 14 + p) << 23);
  }
  __syncthreads();
  const float down = s_down;
  __half* out = staged + static_cast<int64_t>(r) * stride;
  for (int i = threadIdx.x; i < stride; i += kStageThreads)
    out[i] = __float2half_rn(i < cols ? __bfloat162float(row[i]) * down : 0.f);
}

// mlp1 (kSwiglu) or mlp2 for one (row-tile group, tile entry). x rows: order[i] / k for mlp1 (the token of
// sorted pair i), i itself for mlp2 (order == nullptr).
template <bool kSwiglu>
__global__ void __launch_bounds__(kPrefillWarps * 32)
    moe_prefill_gemm_kernel(const __half* __restrict__ staged, const float* __restrict__ up,
                            const int32_t* __restrict__ order, int k, const int4* __restrict__ tiles,
                            const int32_t* __restrict__ tile_count, StreamArgs a, const bf16* __restrict__ bias,
                            int rows, float alpha, float limit, bf16* __restrict__ act, float* __restrict__ y) {
  if (static_cast<int>(blockIdx.y) >= *tile_count) return;
  const int4 entry = tiles[blockIdx.y];
  const int expert = entry.x, first = entry.y, count = entry.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int tile = blockIdx.x * kPrefillWarps + warp;
  if (tile >= a.tiles) return;  // no barrier in this kernel
  const int stride = a.chunks * kChunkValues;
  auto x_row = [&](int col) { return order ? order[first + col] / k : first + col; };
  const __half* x_n[kPrefillNTiles];
  bool ok_n[kPrefillNTiles];
#pragma unroll
  for (int n = 0; n < kPrefillNTiles; ++n) {
    const int col = n * 8 + g;
    ok_n[n] = col < count;
    x_n[n] = staged + static_cast<int64_t>(ok_n[n] ? x_row(col) : x_row(0)) * stride + 8 * t;
  }
  // Per (expert, tile, chunk) line: 32 lanes × 16 B of codes and 8 row pairs × 4 B of scales (see stream_tile).
  const int64_t line0 = (static_cast<int64_t>(expert) * a.tiles + tile) * a.chunks;
  const uint4* codes = a.codes + line0 * 32 + lane;
  const uint32_t* scales = a.scales + line0 * 8 + g;
  float acc[kPrefillNTiles][4] = {};
  const uint4 zero = make_uint4(0, 0, 0, 0);
  uint4 code = ld_stream(codes);
  uint32_t sc = ld_stream_u32(scales);
  for (int c = 0; c < a.chunks; ++c) {
    const uint4 cur = code;
    const uint32_t cur_sc = sc;
    if (c + 1 < a.chunks) {  // the next chunk's weights are in flight during this one's mma
      code = ld_stream(codes + (c + 1) * 32);
      sc = ld_stream_u32(scales + (c + 1) * 8);
    }
    uint32_t ag0[4], ag80[4], ag1[4], ag81[4];
    fp4x8_to_f16(cur.x, ag0[0], ag0[1], ag0[2], ag0[3]);    // row g, block 0
    fp4x8_to_f16(cur.y, ag80[0], ag80[1], ag80[2], ag80[3]);  // row g + 8, block 0
    fp4x8_to_f16(cur.z, ag1[0], ag1[1], ag1[2], ag1[3]);    // row g, block 1
    fp4x8_to_f16(cur.w, ag81[0], ag81[1], ag81[2], ag81[3]);  // row g + 8, block 1
    const float s_g0 = __uint_as_float((cur_sc & 0xFFu) << 23), s_g80 = __uint_as_float((cur_sc & 0xFF00u) << 15);
    const float s_g1 = __uint_as_float((cur_sc & 0xFF0000u) << 7), s_g81 = __uint_as_float((cur_sc >> 1) & 0x7F800000u);
#pragma unroll
    for (int n = 0; n < kPrefillNTiles; ++n) {
      const uint4 x0 = ok_n[n] ? __ldg(reinterpret_cast<const uint4*>(x_n[n] + c * kChunkValues)) : zero;
      const uint4 x1 = ok_n[n] ? __ldg(reinterpret_cast<const uint4*>(x_n[n] + c * kChunkValues + 32)) : zero;
      float d0[4] = {0.f, 0.f, 0.f, 0.f}, d1[4] = {0.f, 0.f, 0.f, 0.f};
      mma_f16(d0, ag0[0], ag80[0], ag0[1], ag80[1], x0.x, x0.y);
      mma_f16(d0, ag0[2], ag80[2], ag0[3], ag80[3], x0.z, x0.w);
      mma_f16(d1, ag1[0], ag81[0], ag1[1], ag81[1], x1.x, x1.y);
      mma_f16(d1, ag1[2], ag81[2], ag1[3], ag81[3], x1.z, x1.w);
      acc[n][0] = fmaf(d0[0], s_g0, fmaf(d1[0], s_g1, acc[n][0]));
      acc[n][1] = fmaf(d0[1], s_g0, fmaf(d1[1], s_g1, acc[n][1]));
      acc[n][2] = fmaf(d0[2], s_g80, fmaf(d1[2], s_g81, acc[n][2]));
      acc[n][3] = fmaf(d0[3], s_g80, fmaf(d1[3], s_g81, acc[n][3]));
    }
  }
  // Accumulator (n, h) / (n, 2 + h): tile rows ρ = g / g + 8 for column 8n + 2t + h. mlp1: ρ g is glu row 2g,
  // ρ g + 8 its linear partner 2g + 1 (tile_row_offset), so a lane holds both halves of one activation.
  const bf16* b = bias + static_cast<int64_t>(expert) * rows;
  const int row_g = tile * kTileRows + tile_row_offset(g), row_g8 = tile * kTileRows + tile_row_offset(g + 8);
#pragma unroll
  for (int n = 0; n < kPrefillNTiles; ++n) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int col = n * 8 + 2 * t + h;
      if (col >= count) continue;
      const float u = up[x_row(col)];
      const int64_t pair = first + col;
      if constexpr (kSwiglu) {
        const int inter = rows / 2, i = tile * 8 + g;
        if (i >= inter) continue;
        float glu = acc[n][h] * u + __bfloat162float(b[2 * i]);
        float lin = acc[n][2 + h] * u + __bfloat162float(b[2 * i + 1]);
        glu = glu > limit ? limit : glu;  // comparisons, not fminf: a NaN stays NaN
        lin = lin > limit ? limit : (lin < -limit ? -limit : lin);
        act[pair * inter + i] = __float2bfloat16(glu / (1.f + __expf(-alpha * glu)) * (lin + 1.f));
      } else {
        if (row_g < rows) y[pair * rows + row_g] = acc[n][h] * u + __bfloat162float(b[row_g]);
        if (row_g8 < rows) y[pair * rows + row_g8] = acc[n][2 + h] * u + __bfloat162float(b[row_g8]);
      }
    }
  }
}

int row_tiles(const Mxfp4Experts& m) { return ceil_div(m.rows, kTileRows); }

void check_moe_shapes(const Mxfp4Experts& m, int k, const char* who) {
  if (k < 1 || k > kMaxK || k > m.experts)
    throw std::invalid_argument(std::string(who) + ": k = " + std::to_string(k) + " must be in [1, min(" +
                                std::to_string(kMaxK) + ", experts = " + std::to_string(m.experts) + ")]");
  if (m.rows == 0) throw std::invalid_argument(std::string(who) + ": the experts were not uploaded");
}

size_t stage_bytes(const Mxfp4Experts& m, int nj) {
  return static_cast<size_t>(nj) * ceil_div(m.cols, kChunkValues) * kChunkValues * sizeof(__half);
}

template <typename Kernel>
void allow_dynamic_smem(Kernel kernel, size_t bytes, const char* who) {
  int dev = 0, limit = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (bytes + 4096 > static_cast<size_t>(limit))
    throw std::invalid_argument(std::string(who) + ": the inputs need " + std::to_string(bytes) +
                                " bytes of shared memory, more than this device has");
  if (bytes > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

StreamArgs stream_args(const Mxfp4Experts& m) {
  return StreamArgs{m.weights.get<uint4>(), m.scales.get<uint32_t>(), row_tiles(m), ceil_div(m.cols, kChunkValues)};
}

}  // namespace

Mxfp4Experts upload_mxfp4_experts(const uint8_t* blocks, const uint8_t* scales, const uint16_t* bias, int experts,
                                  int rows, int cols) {
  if (experts < 1 || rows < 1 || cols < 32 || cols % 32 != 0)
    throw std::invalid_argument("upload_mxfp4_experts: need experts >= 1, rows >= 1 and cols a positive multiple "
                                "of 32 (got " + std::to_string(experts) + ", " + std::to_string(rows) + ", " +
                                std::to_string(cols) + ")");
  Mxfp4Experts m;
  m.experts = experts, m.rows = rows, m.cols = cols;
  const int tiles = row_tiles(m), chunks = ceil_div(cols, kChunkValues), col_blocks = cols / 32;
  const size_t lanes_per_expert = static_cast<size_t>(tiles) * chunks * 32;
  if (lanes_per_expert * experts >= (size_t{1} << 31))
    throw std::invalid_argument("upload_mxfp4_experts: " + std::to_string(experts) + " experts of " +
                                std::to_string(rows) + " x " + std::to_string(cols) +
                                " exceed the kernels' 32-bit code index (2^31 x 16 B)");
  m.weights = DeviceBuffer(lanes_per_expert * experts * sizeof(uint4));
  m.scales = DeviceBuffer(lanes_per_expert / 4 * experts * sizeof(uint32_t));  // one word per row pair g
  m.bias = DeviceBuffer::from_host(bias, static_cast<size_t>(experts) * rows * sizeof(uint16_t));

  // Raw experts go up in batches of at most ~256 MB and are repacked on the device.
  const size_t raw_blocks = static_cast<size_t>(rows) * col_blocks * 16, raw_scales = static_cast<size_t>(rows) * col_blocks;
  const int batch = static_cast<int>(std::max<size_t>(1, (256u << 20) / (raw_blocks + raw_scales)));
  DeviceBuffer d_blocks(raw_blocks * std::min(batch, experts)), d_scales(raw_scales * std::min(batch, experts));
  for (int e0 = 0; e0 < experts; e0 += batch) {
    const int n = std::min(batch, experts - e0);
    CUDA_CHECK(cudaMemcpy(d_blocks.get(), blocks + raw_blocks * e0, raw_blocks * n, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_scales.get(), scales + raw_scales * e0, raw_scales * n, cudaMemcpyHostToDevice));
    const int64_t total = static_cast<int64_t>(lanes_per_expert) * n;
    const int threads = 256, grid = static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, 65536));
    repack_mxfp4_kernel<<<grid, threads>>>(d_blocks.get<uint8_t>(), d_scales.get<uint8_t>(), n, rows, col_blocks,
                                           tiles, chunks, m.weights.get<uint4>() + lanes_per_expert * e0,
                                           m.scales.get<uint32_t>() + lanes_per_expert / 4 * e0);
    CUDA_CHECK_LAUNCH();
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  return m;
}

namespace {

MoeRouting given_route(const bf16* x_normed, const int32_t* ids, const float* weights) {
  MoeRouting r{};
  r.x_normed = x_normed, r.ids = ids, r.weights = weights;
  return r;
}

// hidden: the residual's size (mlp1's cols, mlp2's rows), which sets how many partial rows the out-projection left.
MoeRouting routed(const MoeRoute& route, int experts, int hidden, const char* who) {
  check_moe_route(route, experts, who);
  MoeRouting r{};
  r.rp = RoutePartials{static_cast<const float*>(route.workspace), router_clusters(hidden), route.gate_b};
  r.residual = route.residual, r.norm_scale = route.norm_scale, r.eps = route.eps, r.x_bound = route.x_bound;
  return r;
}

void launch_mlp1(const MoeRouting& r, int k, const Mxfp4Experts& mlp1, float alpha, float limit, bf16* act,
                 cudaStream_t stream) {
  const size_t smem = stage_bytes(mlp1, 1);
  allow_dynamic_smem(moe_mlp1_swiglu_kernel, smem, "mlp1");
  launch_pdl(moe_mlp1_swiglu_kernel, dim3(ceil_div(row_tiles(mlp1), kMlp1TilesPerCta), k), dim3(kMlp1Threads), smem,
             stream, r, k, stream_args(mlp1), mlp1.bias.get<bf16>(), mlp1.experts, mlp1.rows, mlp1.cols, alpha,
             limit, act);
}

void launch_mlp2(const bf16* act, float act_bound, const MoeRouting& r, int k, const Mxfp4Experts& mlp2,
                 float* residual, cudaStream_t stream) {
  const size_t smem = stage_bytes(mlp2, (k + kMlp2Splits - 1) / kMlp2Splits);
  allow_dynamic_smem(moe_mlp2_residual_kernel, smem, "mlp2");
  launch_kernel(moe_mlp2_residual_kernel, dim3(row_tiles(mlp2) * kMlp2Splits), dim3(kMlp2Warps * 32), smem, stream,
                /*pdl=*/true, /*cluster_x=*/kMlp2Splits, act, act_bound, r, k, stream_args(mlp2),
                mlp2.bias.get<bf16>(), mlp2.experts, mlp2.rows, mlp2.cols, residual);
}

void check_mlp1(const Mxfp4Experts& mlp1, int k, const char* who) {
  check_moe_shapes(mlp1, k, who);
  if (mlp1.rows % 2 != 0) throw std::invalid_argument(std::string(who) + ": mlp1 rows must be even (glu/linear pairs)");
}

}  // namespace

void launch_bf16_mxfp4w_moe_mlp1_swiglu(const bf16* x_normed, const int32_t* ids, int k, const Mxfp4Experts& mlp1,
                                        float alpha, float limit, bf16* act, cudaStream_t stream) {
  check_mlp1(mlp1, k, "launch_bf16_mxfp4w_moe_mlp1_swiglu");
  launch_mlp1(given_route(x_normed, ids, nullptr), k, mlp1, alpha, limit, act, stream);
}

void launch_bf16_mxfp4w_moe_mlp1_swiglu(const MoeRoute& route, int k, const Mxfp4Experts& mlp1, float alpha,
                                        float limit, bf16* act, cudaStream_t stream) {
  const char* who = "launch_bf16_mxfp4w_moe_mlp1_swiglu";
  check_mlp1(mlp1, k, who);
  launch_mlp1(routed(route, mlp1.experts, mlp1.cols, who), k, mlp1, alpha, limit, act, stream);
}

float swiglu_act_bound(float alpha, float limit) {
  if (!(alpha > 0.f) || !(limit > 0.f) || !std::isfinite(alpha) || !std::isfinite(limit))
    throw std::invalid_argument("swiglu_act_bound: alpha and limit must be finite and > 0, got " +
                                std::to_string(alpha) + ", " + std::to_string(limit));
  // glu · sigmoid(alpha · glu) lies in [-0.2785 / alpha, limit] for glu ≤ limit; |lin + 1| ≤ limit + 1; the bf16
  // rounding of act and the fast exp add less than 2^-7.
  return std::max(limit, 0.2785f / alpha) * (limit + 1.f) * (1.f + 0x1p-7f);
}

namespace {
void check_act_bound(float act_bound, const char* who) {
  if (!(act_bound > 0.f) || !std::isfinite(act_bound))
    throw std::invalid_argument(std::string(who) + ": act_bound must be finite and > 0, got " +
                                std::to_string(act_bound));
}
}  // namespace

void launch_bf16_mxfp4w_moe_mlp2_residual(const bf16* act, float act_bound, const int32_t* ids, const float* weights,
                                          int k, const Mxfp4Experts& mlp2, float* residual, cudaStream_t stream) {
  const char* who = "launch_bf16_mxfp4w_moe_mlp2_residual";
  check_moe_shapes(mlp2, k, who);
  check_act_bound(act_bound, who);
  launch_mlp2(act, act_bound, given_route(nullptr, ids, weights), k, mlp2, residual, stream);
}

void launch_bf16_mxfp4w_moe_mlp2_residual(const bf16* act, float act_bound, const MoeRoute& route, int k,
                                          const Mxfp4Experts& mlp2, float* residual, cudaStream_t stream) {
  const char* who = "launch_bf16_mxfp4w_moe_mlp2_residual";
  check_moe_shapes(mlp2, k, who);
  check_act_bound(act_bound, who);
  launch_mlp2(act, act_bound, routed(route, mlp2.experts, mlp2.rows, who), k, mlp2, residual, stream);
}

void launch_moe_prefill_stage(const bf16* in, int n_rows, int cols, __half* staged, float* up, cudaStream_t stream) {
  if (n_rows < 1 || cols < 1)
    throw std::invalid_argument("launch_moe_prefill_stage: need n_rows >= 1 and cols >= 1");
  moe_prefill_stage_kernel<<<n_rows, kStageThreads, 0, stream>>>(in, cols, ceil_div(cols, kChunkValues) * kChunkValues,
                                                                 staged, up);
  CUDA_CHECK_LAUNCH();
}

namespace {
void check_prefill_tiles(const Mxfp4Experts& m, int max_tiles, const char* who) {
  if (m.rows == 0) throw std::invalid_argument(std::string(who) + ": the experts were not uploaded");
  if (max_tiles < 1 || max_tiles > 65535)
    throw std::invalid_argument(std::string(who) + ": max_tiles must be in [1, 65535], got " +
                                std::to_string(max_tiles));
}
}  // namespace

void launch_bf16_mxfp4w_moe_prefill_mlp1_swiglu(const __half* staged, const float* up, const int32_t* order, int k,
                                                const int4* tiles, const int32_t* tile_count, int max_tiles,
                                                const Mxfp4Experts& mlp1, float alpha, float limit, bf16* act,
                                                cudaStream_t stream) {
  const char* who = "launch_bf16_mxfp4w_moe_prefill_mlp1_swiglu";
  check_prefill_tiles(mlp1, max_tiles, who);
  if (mlp1.rows % 2 != 0) throw std::invalid_argument(std::string(who) + ": mlp1 rows must be even");
  if (k < 1 || !order) throw std::invalid_argument(std::string(who) + ": need k >= 1 and the pair order");
  const dim3 grid(ceil_div(row_tiles(mlp1), kPrefillWarps), max_tiles);
  moe_prefill_gemm_kernel<true><<<grid, kPrefillWarps * 32, 0, stream>>>(
      staged, up, order, k, tiles, tile_count, stream_args(mlp1), mlp1.bias.get<bf16>(), mlp1.rows, alpha, limit,
      act, nullptr);
  CUDA_CHECK_LAUNCH();
}

void launch_bf16_mxfp4w_moe_prefill_mlp2(const __half* staged, const float* up, const int4* tiles,
                                         const int32_t* tile_count, int max_tiles, const Mxfp4Experts& mlp2, float* y,
                                         cudaStream_t stream) {
  check_prefill_tiles(mlp2, max_tiles, "launch_bf16_mxfp4w_moe_prefill_mlp2");
  const dim3 grid(ceil_div(row_tiles(mlp2), kPrefillWarps), max_tiles);
  moe_prefill_gemm_kernel<false><<<grid, kPrefillWarps * 32, 0, stream>>>(
      staged, up, nullptr, 1, tiles, tile_count, stream_args(mlp2), mlp2.bias.get<bf16>(), mlp2.rows, 0.f, 0.f,
      nullptr, y);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gpt_oss

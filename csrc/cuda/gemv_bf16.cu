// bf16-weight GEMVs for batch-1 decode: the attention out-projection (+ bias + fp32 residual, and the MoE router
// of the updated residual in its tail: RouterTail) and the unembedding with the final RMSNorm fused.
//
// Floors (bytes / 3.0 TB/s):
//   out-projection  2880 × 4096 bf16 = 23.6 MB                   → 7.9 µs
//   unembedding     201088 × 2880 bf16 = 1.158 GB (+ 0.8 MB out) → 386 µs
// Measured (H100 SXM, 2026-11-25; torch copy 2.98 TB/s): out-projection 10.2 µs (2.31 TB/s, rotating 8 copies,
// successive launches overlapping through PDL; 10.9 before PDL), unembedding 417-436 µs (2.66-2.78 TB/s) row-major,
// 383.5 µs (3.02 TB/s) packed (H100, session 11).
// The fused draw (FusedSample) costs the unembedding 417.0 → 419.2 µs greedy and 420.0 at T = 1, where the
// sampler launch it replaces took 7.5 µs greedy (+ a ~3 µs launch gap) and 49 µs at T = 1 (H100, session 7).
//
// Work split: a warp owns a tile of 16 rows. Per 32-column chunk, lane (g, t) = (lane / 4, lane % 4) loads
// 16 B of row g and 16 B of row g + 8 (columns 32c + 8t .. + 7) and the matching 16 B of the input: exactly
// the A and B fragments of two bf16 m16n8k16 mma steps (k order permuted within the chunk), so weights go
// from the 16-byte load straight into the tensor cores with no conversion and the accumulation is fp32.
//   out-projection: one CTA per tile, its 8 warps splitting the columns; partial sums meet in shared memory
//     in a fixed order and the CTA adds bias and residual (deterministic, no atomics). Launched with
//     programmatic dependent launch: its CTAs become resident while attention drains and each warp's first
//     weight batch is in flight before pdl_wait(). (A bulk L2 prefetch of each warp's whole share before the
//     wait was tried and measured slower on the H100: 12.15 vs 10.9 µs.) With a router, each CTA then adds its
//     rows' share of the gate dots into its cluster's row of partials (router_tail); the MoE launches route.
//   unembedding: a persistent grid (SMs × resident CTAs); each CTA normalises x into shared bf16 once, then
//     each warp walks tiles gw, gw + warps, ... over all columns. Its weight is stored packed in that load order
//     (pack_unembedding_kernel, at upload), so every load instruction reads 512 contiguous bytes. Row-major, each
//     instruction read 8 rows × 64 B and HBM served that at 2.49 TB/s, packed 3.03 (benchmarks/
//     unembedding_layout.cu): the kernel went 426.6 → 383.5 µs, 101 % of the copy rate (H100, session 11).
//
// Warning: cols must be a multiple of 8 and the matrices 16-byte aligned (cudaMalloc'd buffers are).
#include "cuda/gemv_bf16.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <climits>
#include <stdexcept>
#include <string>

#include <cooperative_groups.h>

#include "core/rng.h"
#include "cuda/router.cuh"
#include "cuda/weight_stream.cuh"

namespace gpt_oss {

namespace {

namespace cg = cooperative_groups;

constexpr int kTileRows = 16;
constexpr int kChunkCols = 32;
constexpr int kWarps = 8;
constexpr int kBatch = 8;  // chunks whose loads a warp issues before it uses the first

// Adds W[rg] · x and W[rg8] · x over chunks [c_begin, c_end) of cols columns into d[0] / d[2]. w_at(c, h) returns
// this lane's 16 weight bytes of chunk c for row g (h = 0) or g + 8 (h = 1), columns 32c + 8t .. + 7, from either
// layout (row-major: the out-projection; tile-packed: the unembedding). x_at(col) returns the 8 inputs at col as a
// uint4 (from global or shared memory). Full batches issue all their loads before the first mma (no predicates,
// so the scheduler keeps them together); the rest, including a partial last chunk, go one by one. before_x() runs
// once, after the first batch's weight loads are issued and before any input is read (the out-projection waits
// for the previous kernel there).
template <typename WAt, typename XAt, typename BeforeX>
__device__ __forceinline__ void rows_dot(WAt w_at, int cols, int c_begin, int c_end, XAt x_at, BeforeX before_x,
                                         float (&d)[4]) {
  const int t = threadIdx.x % 4;
  const int full_end = max(c_begin, min(c_end, cols / kChunkCols));
  int c = c_begin;
  bool inputs_ready = false;
  for (; c + kBatch <= full_end; c += kBatch) {
    uint4 wa[kBatch], wb[kBatch], xv[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      wa[u] = ld_stream(w_at(c + u, 0));
      wb[u] = ld_stream(w_at(c + u, 1));
    }
    if (!inputs_ready) before_x(), inputs_ready = true;
#pragma unroll
    for (int u = 0; u < kBatch; ++u) xv[u] = x_at((c + u) * kChunkCols + 8 * t);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      mma_bf16(d, wa[u].x, wb[u].x, wa[u].y, wb[u].y, xv[u].x, xv[u].y);
      mma_bf16(d, wa[u].z, wb[u].z, wa[u].w, wb[u].w, xv[u].z, xv[u].w);
    }
  }
  if (!inputs_ready) before_x();
  for (; c < c_end; ++c) {
    const int col = c * kChunkCols + 8 * t;
    uint4 wa = make_uint4(0, 0, 0, 0), wb = wa, xv = wa;
    if (col < cols) {  // cols % 8 == 0: a lane's 8 columns are all inside or all outside
      wa = ld_stream(w_at(c, 0));
      wb = ld_stream(w_at(c, 1));
      xv = x_at(col);
    }
    // Outside the branch: every lane of the warp must reach the same mma.sync instruction.
    mma_bf16(d, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
    mma_bf16(d, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
  }
}

constexpr int kThreads = kWarps * 32;
static_assert(kRouteMaxExperts <= kThreads, "router_tail: one thread per expert for the gate loads");
// With a router the grid is launched in clusters of kRouteCluster CTAs whose partials first meet in distributed
// shared memory, so each consumer reads gridDim / kRouteCluster rows of partials instead of gridDim (120b: 23 × 132
// floats, one round of loads, instead of 180 × 132). Clusters of 8 instead of 4 took the tail 16.3 → 15.6 µs (20b)
// and 16.9 → 16.1 µs (120b), 120b decode 366.2 → 368.8 tok/s at 1k (H100, session 6, when one last CTA read them).
constexpr int kRouteCluster = 8;

// The router's first half in the out-projection's tail. Every CTA owns 16 rows of the new residual x: it adds its
// share of each expert's gate dot, Σ_r gate_w[e, r] · x_r · norm_scale_r, and of Σ_r x_r², into a row of
// partials; the cluster's rows meet in its rank-0 CTA (fixed rank order), which stores the cluster's row. The
// MoE launches finish the routing from those rows (router.cuh). This replaced a separate router launch (6.1 µs on
// the H100, graph-timed, for 0.18 MB); until session 13 the last CTA to arrive (an arrival counter) also routed
// here, 3.6–3.8 µs of tail on the critical path (session 11's timeline).
// store_residual() runs right after the first cluster barrier, whose release waits for every store in flight
// (common.cuh: cluster_arrive_release): before it, the residual store put an L2 round trip on every CTA's path
// ahead of the partials' store; after it, the two drain together.
template <typename StoreResidual>
__device__ __forceinline__ void router_tail(const RouterTail& rt, int tile, uint4 gate_lo, uint4 gate_hi,
                                            const float* s_xs, const float* s_sq, StoreResidual store_residual) {
  __shared__ __align__(16) float s_part[kRouteMaxExperts + 4];  // this CTA's row of partials (cols_pad ≤ 260)
  const int tid = threadIdx.x, experts = rt.experts, cols_pad = route_cols_padded(experts);
  float* partials = static_cast<float*>(rt.workspace);
  __syncthreads();  // s_xs, s_sq
  for (int c = tid; c < cols_pad; c += kThreads) {  // column `experts` is the sum of squares, then zero padding
    float p = 0.f;
    if (c < experts) {
      const uint32_t w[8] = {gate_lo.x, gate_lo.y, gate_lo.z, gate_lo.w, gate_hi.x, gate_hi.y, gate_hi.z, gate_hi.w};
#pragma unroll
      for (int h = 0; h < 8; ++h) {
        p = fmaf(__uint_as_float(w[h] << 16), s_xs[2 * h], p);
        p = fmaf(__uint_as_float(w[h] & 0xFFFF0000u), s_xs[2 * h + 1], p);
      }
    } else if (c == experts) {
#pragma unroll
      for (int r = 0; r < kTileRows; ++r) p += s_sq[r];
    }
    s_part[c] = p;
  }
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  store_residual();
  if (cluster.block_rank() == 0) {
    for (int c = tid; c < cols_pad; c += kThreads) {
      float sum = 0.f;
      for (int r = 0; r < kRouteCluster; ++r) sum += *cluster.map_shared_rank(&s_part[c], r);
      partials[static_cast<int64_t>(tile / kRouteCluster) * cols_pad + c] = sum;
    }
  }
  cluster_sync_relaxed();  // the other CTAs' shared memory stays until rank 0 has read it (consumed above)
}

// launch_route: the routing alone, one CTA (router.cuh), with x_normed written as mlp1 stages it.
__global__ void __launch_bounds__(kThreads) route_kernel(RoutePartials rp, int experts, int k, int hidden,
                                                         const float* __restrict__ residual,
                                                         const float* __restrict__ norm_scale, float eps,
                                                         bf16* __restrict__ x_normed, int32_t* __restrict__ ids,
                                                         float* __restrict__ weights) {
  __shared__ RouteSmem<kThreads> s;
  route_stage_bias<kThreads>(rp, experts, s);
  pdl_wait();
  const float inv_rms = route_from_partials<kThreads>(rp, experts, k, hidden, eps, s, ids, weights);
  for (int i = threadIdx.x; i < hidden; i += kThreads)
    x_normed[i] = normed_bf16(__ldcg(residual + i), inv_rms, norm_scale[i]);
}

__global__ void __launch_bounds__(kThreads, 2)
    bf16_gemv_bias_residual_kernel(const bf16* __restrict__ W, const bf16* __restrict__ bias,
                                   const bf16* __restrict__ in, int rows, int cols, float* __restrict__ residual,
                                   RouterTail rt) {
  TimelineScope timeline(kTlOutProj);
  __shared__ float s_sum[kWarps][kTileRows];
  __shared__ float s_xs[kTileRows], s_sq[kTileRows];
  const int tile = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  const int chunks = (cols + kChunkCols - 1) / kChunkCols;
  const int per_warp = (chunks + kWarps - 1) / kWarps;
  const int c_begin = min(chunks, warp * per_warp), c_end = min(chunks, c_begin + per_warp);
  const int row0 = tile * kTileRows;
  const int rg = min(row0 + g, rows - 1), rg8 = min(row0 + g + 8, rows - 1);
  const bf16* row_g = W + static_cast<int64_t>(rg) * cols + 8 * (lane % 4);
  const bf16* row_g8 = W + static_cast<int64_t>(rg8) * cols + 8 * (lane % 4);
  const bool route = rt.gate_w != nullptr;
  // Router: thread e's 16 gate weights of this tile's rows stream in with the first weight batch.
  uint4 gate_lo = make_uint4(0, 0, 0, 0), gate_hi = gate_lo;
  if (route && static_cast<int>(threadIdx.x) < rt.experts && row0 < rows) {  // the grid is padded to clusters
    const bf16* gw = rt.gate_w + static_cast<int64_t>(threadIdx.x) * rows + row0;  // rows % 8 == 0
    gate_lo = ld_stream(gw);
    if (row0 + 8 < rows) gate_hi = ld_stream(gw + 8);
  }
  // Thread r < 16 finishes row row0 + r. Its bias and norm scale are weights, read before the wait; its residual
  // right after it, with the first inputs. Read in the epilogue (after the CTA's barrier), the three were a DRAM
  // round trip on every CTA's path between its last mma and the router's arrival.
  const int row = row0 + threadIdx.x;
  const bool stores = threadIdx.x < kTileRows && row < rows;
  float row_bias = 0.f, row_scale = 0.f, old = 0.f;
  if (stores) {
    row_bias = __bfloat162float(bias[row]);
    if (route) row_scale = rt.norm_scale[row];
  }
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  // The weights need no earlier kernel: the first batch is in flight before the wait; the input (attention)
  // and the residual are read only after it, and through L2 (ld.cg): under PDL the producer may still have been
  // running during this kernel's lifetime, which the non-coherent (ld.global.nc) path does not allow.
  rows_dot(
      [row_g, row_g8](int c, int h) { return (h ? row_g8 : row_g) + c * kChunkCols; }, cols, c_begin, c_end,
      [in](int col) { return __ldcg(reinterpret_cast<const uint4*>(in + col)); },
      [&] {
        pdl_wait();
        timeline.mark_waited();
        pdl_launch_dependents();
        if (stores) old = __ldcg(residual + row);
      },
      d);
  if (lane % 4 == 0) s_sum[warp][g] = d[0], s_sum[warp][g + 8] = d[2];
  __syncthreads();
  float x = 0.f;
  if (threadIdx.x < kTileRows) {
    if (row < rows) {
      float sum = 0.f;
      for (int w = 0; w < kWarps; ++w) sum += s_sum[w][threadIdx.x];
      x = old + (sum + row_bias);
      if (!route) residual[row] = x;
    }
    if (route) s_xs[threadIdx.x] = x * row_scale, s_sq[threadIdx.x] = x * x;
  }
  if (route) router_tail(rt, tile, gate_lo, gate_hi, s_xs, s_sq, [&] {
    if (stores) residual[row] = x;
  });
}

// FusedSample as the kernel takes it: temperature widened, the draw's random bits derived on the host.
struct TokenDraw {
  void* workspace;     // null: logits only
  int32_t* token;
  double temperature;  // 0: argmax
  uint64_t draw_key;   // core/rng.h draw_key(seed, draw)
};

// FusedSample's workspace: the arrival counter (padded to 16 bytes), then one BestKey per CTA.
constexpr int kSampleHeader = 16;
constexpr int kSampleMaxCtas = 1024;
static_assert(sizeof(BestKey) == 16, "sample_tail reads a CTA's BestKey as one 16-byte load");

// The token from every CTA's best key (FusedSample); called by all threads after the CTA's last tile with this
// thread's candidate (threads without any hold -inf, INT_MAX, 0).
__device__ __forceinline__ void sample_tail(const TokenDraw& draw, BestKey mine) {
  __shared__ int s_last;
  const int tid = threadIdx.x;
  int* arrivals = static_cast<int*>(draw.workspace);
  BestKey* partials = reinterpret_cast<BestKey*>(static_cast<char*>(draw.workspace) + kSampleHeader);
  const BestKey cta = block_best<kWarps>(mine);
  if (tid == 0) {
    partials[blockIdx.x] = cta;
    __threadfence();  // the partial is visible device-wide before the arrival counts
    s_last = atomicAdd(arrivals, 1) == static_cast<int>(gridDim.x) - 1;
  }
  __syncthreads();  // also ends block_best's reads, so it may run again
  if (!s_last) return;
  __threadfence();  // the other CTAs' partials (fenced before their arrivals) are read after the count
  BestKey all{-INFINITY, INT_MAX, 0};
  for (int c = tid; c < static_cast<int>(gridDim.x); c += kThreads) {
    const int4 raw = __ldcg(reinterpret_cast<const int4*>(partials + c));
    const double key = __hiloint2double(raw.y, raw.x);
    if (ranks_before(key, raw.z, all.key, all.index)) all.key = key, all.index = raw.z;
    all.bad |= raw.w;
  }
  all = block_best<kWarps>(all);
  if (tid == 0) {
    // Every key is -inf only when every logit is: nothing to sample (greedy still answers the lowest index).
    *draw.token = all.bad || (draw.temperature > 0.0 && all.key == -INFINITY) ? -1 : all.index;
    *arrivals = 0;  // ready for the next launch
  }
}

// The final RMSNorm into shared bf16 xs [padded] (zeros past hidden) by every thread of a kThreads CTA, ending with a
// barrier; x is read through L2 (the previous launch wrote it). Up to kNormLoads values a thread (hidden ≤ 3072:
// gpt-oss's 2880), all of x and norm_scale are loaded in one round (unpredicated, indices clamped, extras unused)
// and x stays in registers for the scaled write; the same sums in the same order as the loop below, which for 2880
// waited on ~12 dependent loads a pass (the SASS reuses one register) before the first weight load of the token.
// With the programmatic launch: 435 → 427.5 µs graph-timed (H100, session 10, twice). Every unembedding kernel
// normalises with this one function, so all of them multiply the same xs bits.
__device__ __forceinline__ void final_norm_to_shared(const float* __restrict__ norm_scale, const float* x, int hidden,
                                                     int padded, float eps, bf16* xs) {
  __shared__ float s_red[kWarps];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  constexpr int kNormLoads = 12;
  float ss = 0.f;
  const bool in_registers = hidden <= kNormLoads * kThreads;  // uniform
  float xv[kNormLoads], sv[kNormLoads];
  if (in_registers) {
#pragma unroll
    for (int u = 0; u < kNormLoads; ++u) {
      const int i = min(tid + u * kThreads, hidden - 1);
      xv[u] = __ldcg(x + i), sv[u] = norm_scale[i];
    }
#pragma unroll
    for (int u = 0; u < kNormLoads; ++u)
      if (tid + u * kThreads < hidden) ss = fmaf(xv[u], xv[u], ss);
  } else {
    for (int i = tid; i < hidden; i += kThreads) ss = fmaf(__ldcg(x + i), __ldcg(x + i), ss);
  }
  ss = warp_sum(ss);
  if (lane == 0) s_red[warp] = ss;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < kWarps; ++w) total += s_red[w];
  const float inv_rms = rsqrtf(total / static_cast<float>(hidden) + eps);
  if (in_registers) {
#pragma unroll
    for (int u = 0; u < kNormLoads; ++u)
      if (tid + u * kThreads < hidden) xs[tid + u * kThreads] = __float2bfloat16(xv[u] * inv_rms * sv[u]);
  } else {
    for (int i = tid; i < hidden; i += kThreads) xs[i] = __float2bfloat16(__ldcg(x + i) * inv_rms * norm_scale[i]);
  }
  // The packed weights' zero columns must meet zero inputs (0 · uninitialised shared memory may be NaN).
  for (int i = hidden + tid; i < padded; i += kThreads) xs[i] = __float2bfloat16(0.f);
  __syncthreads();
}

__global__ void __launch_bounds__(kWarps * 32, 2)
    unembedding_kernel(const bf16* __restrict__ W, const float* __restrict__ norm_scale, const float* x,
                       int vocab, int hidden, float eps, float* __restrict__ logits, TokenDraw draw) {
  TimelineScope timeline(kTlUnembedding);
  extern __shared__ uint4 dyn_smem[];
  bf16* xs = reinterpret_cast<bf16*>(dyn_smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  // A programmatic launch: the CTAs become resident while the last MoE launch drains, so the launch gap (~2.7 µs
  // on the H100, session 8's timeline) leaves the token's path. No weight load goes out before the wait: a
  // 17 MB first batch would land on that launch's tail. x, written by it, is read through L2 after the wait.
  pdl_wait();
  timeline.mark_waited();
  const int tiles = (vocab + kTileRows - 1) / kTileRows, chunks = (hidden + kChunkCols - 1) / kChunkCols;
  const int padded = chunks * kChunkCols;
  final_norm_to_shared(norm_scale, x, hidden, padded, eps, xs);

  const int warps = gridDim.x * kWarps;
  // This lane's best key (FusedSample): the logit itself at temperature 0, else its Gumbel-max key, computed
  // from the very fp32 value written to logits, so the CPU sampler on those logits computes the same double.
  BestKey best{-INFINITY, INT_MAX, 0};
  for (int tile = blockIdx.x * kWarps + warp; tile < tiles; tile += warps) {
    // The tile's 16 rows, packed (pack_unembedding_kernel): load (c, h) of the warp is 512 contiguous bytes.
    const bf16* tile_w = W + static_cast<int64_t>(tile) * kTileRows * padded + 8 * lane;
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    rows_dot([tile_w](int c, int h) { return tile_w + (2 * c + h) * 256; }, padded, 0, chunks,
             [xs](int col) { return *reinterpret_cast<const uint4*>(xs + col); }, [] {}, d);
    // Every lane of a quad holds rows g and g + 8 (each lane feeds the same x fragment whatever its column, so
    // the 8 output columns all hold W · x): lane t = 0 takes row g, t = 1 row g + 8, so a quad's two key
    // computations run side by side instead of one after the other.
    const int t = lane % 4, r = tile * kTileRows + g + 8 * t;
    if (t < 2 && r < vocab) {
      const float v = t == 0 ? d[0] : d[2];
      logits[r] = v;
      best.bad |= (v != v) || (v == INFINITY);
      const double key =
          draw.temperature > 0.0 ? gumbel_key(v, draw.temperature, draw.draw_key, r) : static_cast<double>(v);
      if (ranks_before(key, r, best.key, best.index)) best.key = key, best.index = r;
    }
  }
  if (draw.workspace) sample_tail(draw, best);
}

// The unembedding's weight in the order unembedding_kernel reads it. Tile T (rows 16T .. 16T + 15) is one block of
// 16 × padded bf16; its 16-byte piece (j, lane), at byte 512 j + 16 lane of the block, is what lane (g, t) of the
// warp loads for chunk c = j / 2 of row g + 8 (j % 2): columns 32c + 8t .. + 7. So each load instruction of a warp
// reads 512 contiguous bytes and a batch of 8 chunks 8 KB, where the row-major order gave 16 pieces of 512 B,
// 5760 B apart. Rows past vocab and columns past hidden are zero. One thread a piece; `src` holds rows
// first_row .. first_row + rows - 1 (first_row a multiple of 16), row-major.
__global__ void pack_unembedding_kernel(const bf16* __restrict__ src, int first_row, int rows, int hidden,
                                        uint4* __restrict__ packed) {
  const int chunks = (hidden + kChunkCols - 1) / kChunkCols, pieces = kTileRows * chunks * 4;  // a tile's
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= static_cast<int64_t>((rows + kTileRows - 1) / kTileRows) * pieces) return;
  const int tile = static_cast<int>(p / pieces), q = static_cast<int>(p % pieces);
  const int j = q / 32, lane = q % 32, row = tile * kTileRows + lane / 4 + 8 * (j % 2);
  const int col = (j / 2) * kChunkCols + 8 * (lane % 4);
  uint4 v = make_uint4(0, 0, 0, 0);
  if (row < rows && col < hidden) v = *reinterpret_cast<const uint4*>(src + static_cast<int64_t>(row) * hidden + col);
  packed[static_cast<int64_t>(first_row / kTileRows + tile) * pieces + q] = v;
}

void check_gemv(const void* W, int rows, int cols, const char* who) {
  if (rows < 1 || cols < 8 || cols % 8 != 0)
    throw std::invalid_argument(std::string(who) + ": need rows >= 1 and cols a positive multiple of 8 (got " +
                                std::to_string(rows) + " x " + std::to_string(cols) + ")");
  if (reinterpret_cast<uintptr_t>(W) % 16 != 0)
    throw std::invalid_argument(std::string(who) + ": the weight matrix must be 16-byte aligned");
}

// ---- screened sampling: the fused draw from an int8 copy of the unembedding, exact where it matters -----------
//
// The token of a fused draw (greedy or Gumbel-max) depends only on the rows whose keys can be the largest. Stage 1
// (screen_kernel) streams an int8 copy of W, half the bytes (579 MB for gpt-oss instead of 1.16 GB), and gives
// every row an interval [lo, hi] that provably holds its exact key; its last CTA takes M, the largest lo. Stage 2
// (pick_kernel) recomputes from the bf16 weight only the rows whose hi reaches M, and draws among them. The row
// with the largest exact key always has hi ≥ its key ≥ M, so the token is the one the exact logits give. (Exact
// here: the bf16 row · the same xs, summed in fp32 in pick_kernel's fixed order. unembedding_kernel sums in the
// tensor cores' order, so the two paths can differ only where two keys lie within fp32 rounding.)
//
// The interval. Each 64-column chunk c of row r is stored as int8 q with its own scale s_rc = max |w_rc| / 127 (a
// bf16, rounded up; ŵ = s_rc q), so one outlier costs only its chunk's resolution. xs is quantised per mma step,
// the 32 columns one m16n8k32 multiplies (x̂ = s_ck xq, s_ck = max |xs_ck| / 127, k = 0, 1). The int8 products add
// exactly in int32, so
//   a = Σ_c s_rc (s_c0 (q · xq)_c0 + s_c1 (q · xq)_c1)   (fp32: three roundings a chunk)
// and with l = w_r · xs (real) and l̃ its fp32 sum (pick_kernel), by Cauchy–Schwarz:
//   |l − a_real| ≤ ‖w_r‖ ‖xs − x̂‖ + ‖w_r − ŵ_r‖ ‖x̂‖,
//   |a − a_real| ≤ (3C + 2) u ‖ŵ_r‖ ‖x̂‖,   |l̃ − l| ≤ n u ‖w_r‖ ‖xs‖
// (u = 2^-24, C the chunks, n the padded row length; ‖ŵ_r‖ ≤ ‖w_r‖ + ‖w_r − ŵ_r‖). So b = ‖w_r‖ E1 + ‖w_r − ŵ_r‖ E2
// with E1 = ‖xs − x̂‖ + n u ‖xs‖ + (3C + 2) u ‖x̂‖ and E2 = (1 + (3C + 2) u) ‖x̂‖, every norm rounded up (the row
// norms in double at load, the x norms in double each step), times 1 + 2^-20 for the double arithmetic; lo = a − b,
// hi = a + b, turned into keys the way gumbel_key turns a logit (monotone, so the order survives the rounding). A
// row holding a non-finite weight has infinite norms: always recomputed, its logit NaN or ±inf exactly as in the
// exact path. A non-finite xs makes every bound NaN: every row is recomputed (slow, and the draw then answers -1 as
// the exact path does). benchmarks/screen_bound_sim.py models the bound in NumPy (per-row weight scales and 64-column
// x scales recomputed 8× as many rows where a few weight columns and x channels are outliers).

constexpr int kScreenChunk = 64;                 // int8 columns a lane's 16-byte load covers in one mma pair
constexpr int kScreenMaxChunks = 24576 / kScreenChunk;
constexpr int kScreenBatch = 8;                  // chunks whose loads a warp issues before the first mma
constexpr int kScreenHeader = 16;                // arrival counter, then M (double) at byte 8
constexpr int kPickRowLoads = 12;                // 16-byte pieces a lane loads per recomputed row (hidden ≤ 3072)

// d += A·B for one m16n8k32 step, int8 in, int32 accumulation (exact).
__device__ __forceinline__ void mma_s8(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                       uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 8 bf16 weights · 8 bf16 inputs, in fp32, in index order.
__device__ __forceinline__ float dot8_bf16(const uint4& w, const bf16* xs) {
  const uint4 xv = *reinterpret_cast<const uint4*>(xs);
  const __nv_bfloat162* a = reinterpret_cast<const __nv_bfloat162*>(&w);
  const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&xv);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 wa = __bfloat1622float2(a[i]), xb = __bfloat1622float2(b[i]);
    s = fmaf(wa.x, xb.x, s);
    s = fmaf(wa.y, xb.y, s);
  }
  return s;
}

// The int8 copy in the order screen_kernel reads it: tile T (rows 16T .. 16T + 15) is one block of 16 × padded64
// bytes; its 16-byte piece (j, lane) at byte 512 j + 16 lane is what lane (g, t) loads for chunk c = j / 2 of row
// g + 8 (j % 2): columns 64c + 16t .. + 15. The chunk scales: tile T's block of chunks × 16 bf16, (c, g, h) at
// 16c + 2g + h, so lane (g, t) reads rows g and g + 8 of chunk c as one 4-byte pair. One warp a row, from the packed
// bf16 weight (pack_unembedding_kernel's layout), 8 lanes a chunk; consts[r] = (‖w_r‖, ‖w_r − ŵ_r‖), in double and
// rounded up; a row with a non-finite weight: (inf, inf), scales and q 0.
__global__ void quantize_unembedding_kernel(const bf16* __restrict__ W, int vocab_padded, int hidden,
                                            int8_t* __restrict__ codes, bf16* __restrict__ scales,
                                            float2* __restrict__ consts) {
  const int r = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (r >= vocab_padded) return;
  const int tile = r / kTileRows, g = r % kTileRows, h = g / 8, g8 = g % 8;
  const int chunks32 = (hidden + kChunkCols - 1) / kChunkCols, padded32 = chunks32 * kChunkCols;
  const int chunks64 = (hidden + kScreenChunk - 1) / kScreenChunk, padded64 = chunks64 * kScreenChunk;
  const bf16* block = W + static_cast<int64_t>(tile) * kTileRows * padded32;
  int8_t* out = codes + static_cast<int64_t>(tile) * kTileRows * padded64;
  bf16* out_scales = scales + static_cast<int64_t>(tile) * chunks64 * kTileRows;
  bool finite = true;
  for (int p = lane; p < padded32 / 8; p += 32) {  // piece p: columns 8p .. 8p + 7 (bf16 chunk p / 4, t = p % 4)
    const uint4 raw = *reinterpret_cast<const uint4*>(block + (2 * (p / 4) + h) * 256 + (4 * g8 + p % 4) * 8);
    const __nv_bfloat16* v = reinterpret_cast<const __nv_bfloat16*>(&raw);
    for (int i = 0; i < 8; ++i) finite &= isfinite(__bfloat162float(v[i]));
  }
  finite = __all_sync(0xffffffffu, finite);
  double sum_w2 = 0.0, sum_d2 = 0.0;
  // Lanes 8j .. 8j + 7 hold the 8 pieces of one chunk; every lane runs every round (extra pieces are zero).
  for (int p = lane; p < (padded64 / 8 + 31) / 32 * 32; p += 32) {
    float w[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (p < padded32 / 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(block + (2 * (p / 4) + h) * 256 + (4 * g8 + p % 4) * 8);
      const __nv_bfloat16* v = reinterpret_cast<const __nv_bfloat16*>(&raw);
      for (int i = 0; i < 8; ++i) w[i] = finite ? __bfloat162float(v[i]) : 0.f;
    }
    float amax = 0.f;
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(w[i]));
    for (int o = 1; o < 8; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    // The scale as a bf16 rounded up, so no quotient passes 127.
    const float scale = __bfloat162float(__float2bfloat16_ru(amax / 127.f));
    uint2 packed = make_uint2(0, 0);
    int8_t* q8 = reinterpret_cast<int8_t*>(&packed);
    for (int i = 0; i < 8; ++i) {
      const int q = scale > 0.f ? max(-127, min(127, __float2int_rn(w[i] / scale))) : 0;
      q8[i] = static_cast<int8_t>(q);
      const double d = static_cast<double>(w[i]) - static_cast<double>(scale) * q;
      sum_w2 += static_cast<double>(w[i]) * w[i];
      sum_d2 += d * d;
    }
    if (p < padded64 / 8) {
      const int col = 8 * p, c = col / kScreenChunk, t = (col % kScreenChunk) / 16;
      *reinterpret_cast<uint2*>(out + (2 * c + h) * 512 + (4 * g8 + t) * 16 + col % 16) = packed;
      if (lane % 8 == 0) out_scales[c * kTileRows + 2 * g8 + h] = __float2bfloat16(scale);  // exact: scale is a bf16
    }
  }
  sum_w2 = warp_sum(sum_w2);
  sum_d2 = warp_sum(sum_d2);
  if (lane == 0)
    consts[r] = finite ? make_float2(__double2float_ru(sqrt(sum_w2)), __double2float_ru(sqrt(sum_d2)))
                       : make_float2(INFINITY, INFINITY);
}

// The key of a logit bound, as gumbel_key makes a logit's key (greedy: the value itself).
__device__ __forceinline__ double bound_key(double v, const TokenDraw& draw, double log_neg_log_u) {
  return draw.temperature > 0.0 ? v / draw.temperature - log_neg_log_u : v;
}

// Stage 1: every row's hi key into upper[r] (float, rounded up) and M = the largest lo key over all rows into the
// screen workspace (the last CTA to arrive), which it leaves re-armed.
__global__ void __launch_bounds__(kThreads, 2)
    screen_kernel(const int8_t* __restrict__ codes, const bf16* __restrict__ scales,
                  const float2* __restrict__ consts, const float* __restrict__ norm_scale, const float* x, int vocab, int hidden, float eps,
                  float* __restrict__ upper, void* screen_workspace, TokenDraw draw) {
  TimelineScope timeline(kTlUnembedding);
  extern __shared__ uint4 dyn_smem[];
  __shared__ float2 s_step_scale[kScreenMaxChunks];  // x's scale for the two mma steps of each chunk
  __shared__ double s_norm[3][kWarps];
  __shared__ int s_last;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int chunks64 = (hidden + kScreenChunk - 1) / kScreenChunk, padded64 = chunks64 * kScreenChunk;
  const int padded = max(padded64, (hidden + kChunkCols - 1) / kChunkCols * kChunkCols);
  bf16* xs = reinterpret_cast<bf16*>(dyn_smem);
  int8_t* xq = reinterpret_cast<int8_t*>(xs + padded);
  pdl_wait();
  timeline.mark_waited();
  pdl_launch_dependents();  // pick_kernel may start: x is final (it normalises it again before its own wait)
  final_norm_to_shared(norm_scale, x, hidden, padded, eps, xs);

  // xs per mma step: a warp a 64-column chunk, two values a lane. Column 16t + 8k + j of the chunk (t < 4, j < 8)
  // is multiplied in step k, so lane l's two columns 2l, 2l + 1 belong to step (l % 8) / 4, and the lanes of one
  // step are those equal under xor 1, 2, 8 and 16.
  double e2 = 0.0, h2 = 0.0, x2 = 0.0;  // Σ (xs − x̂)², Σ x̂², Σ xs² of this thread's values
  for (int c = warp; c < chunks64; c += kWarps) {
    const int i = c * kScreenChunk + 2 * lane;
    const float v0 = __bfloat162float(xs[i]), v1 = __bfloat162float(xs[i + 1]);
    float amax = fmaxf(fabsf(v0), fabsf(v1));
    for (const int o : {1, 2, 8, 16}) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float scale = amax / 127.f;
    const int q0 = scale > 0.f ? max(-127, min(127, __float2int_rn(v0 / scale))) : 0;
    const int q1 = scale > 0.f ? max(-127, min(127, __float2int_rn(v1 / scale))) : 0;
    xq[i] = static_cast<int8_t>(q0), xq[i + 1] = static_cast<int8_t>(q1);
    if (lane == 0) s_step_scale[c].x = scale;
    if (lane == 4) s_step_scale[c].y = scale;
    const double h0 = static_cast<double>(scale) * q0, h1 = static_cast<double>(scale) * q1;
    e2 += (v0 - h0) * (v0 - h0) + (v1 - h1) * (v1 - h1);
    h2 += h0 * h0 + h1 * h1;
    x2 += static_cast<double>(v0) * v0 + static_cast<double>(v1) * v1;
    if (!(isfinite(v0) && isfinite(v1))) e2 = NAN;  // a non-finite xs: every bound NaN, every row recomputed
  }
  e2 = warp_sum(e2), h2 = warp_sum(h2), x2 = warp_sum(x2);
  if (lane == 0) s_norm[0][warp] = e2, s_norm[1][warp] = h2, s_norm[2][warp] = x2;
  __syncthreads();  // also publishes xq and the chunk scales
  e2 = h2 = x2 = 0.0;
  for (int w = 0; w < kWarps; ++w) e2 += s_norm[0][w], h2 += s_norm[1][w], x2 += s_norm[2][w];
  // a's own fp32 rounding: three a chunk, (3C + 2) u ‖ŵ‖ ‖x̂‖ with ‖ŵ‖ ≤ ‖w‖ + ‖Δ‖.
  const double u = 0x1p-24, margin = 1.0 + 0x1p-20, a_err = (3.0 * chunks64 + 2.0) * u;
  const double xh = sqrt(h2);
  const double e1 = (sqrt(e2) + padded * u * sqrt(x2) + a_err * xh) * margin;
  const double e2c = (1.0 + a_err) * xh * margin;

  const int tiles = (vocab + kTileRows - 1) / kTileRows, warps = gridDim.x * kWarps;
  double best_lo = -INFINITY;
  for (int tile = blockIdx.x * kWarps + warp; tile < tiles; tile += warps) {
    const int8_t* tile_q = codes + static_cast<int64_t>(tile) * kTileRows * padded64 + 16 * lane;
    // Rows g and g + 8's scales of chunk c: one bf16 pair at tile_s + 16c.
    const bf16* tile_s = scales + static_cast<int64_t>(tile) * chunks64 * kTileRows + 2 * g;
    float acc0 = 0.f, acc8 = 0.f;  // rows g and g + 8: Σ_c s_rc (s_c0 (q · xq)_c0 + s_c1 (q · xq)_c1)
    auto chunk = [&](const uint4& wa, const uint4& wb, uint32_t ws_bits, int c) {
      const uint4 xv = *reinterpret_cast<const uint4*>(xq + c * kScreenChunk + 16 * t);
      int d0[4] = {0, 0, 0, 0}, d1[4] = {0, 0, 0, 0};
      mma_s8(d0, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);  // step 0: bytes 0..7 of the lane's 16 columns
      mma_s8(d1, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);  // step 1: bytes 8..15
      const float2 xsc = s_step_scale[c];
      const float w0 = __uint_as_float(ws_bits << 16), w8 = __uint_as_float(ws_bits & 0xFFFF0000u);
      acc0 = fmaf(w0, fmaf(xsc.y, static_cast<float>(d1[0]), xsc.x * static_cast<float>(d0[0])), acc0);
      acc8 = fmaf(w8, fmaf(xsc.y, static_cast<float>(d1[2]), xsc.x * static_cast<float>(d0[2])), acc8);
    };
    int c = 0;
    for (; c + kScreenBatch <= chunks64; c += kScreenBatch) {
      uint4 wa[kScreenBatch], wb[kScreenBatch];
      uint32_t ws[kScreenBatch];
#pragma unroll
      for (int k = 0; k < kScreenBatch; ++k) {
        wa[k] = ld_stream(tile_q + (2 * (c + k)) * 512);
        wb[k] = ld_stream(tile_q + (2 * (c + k) + 1) * 512);
        ws[k] = ld_stream_u32(tile_s + (c + k) * kTileRows);
      }
#pragma unroll
      for (int k = 0; k < kScreenBatch; ++k) chunk(wa[k], wb[k], ws[k], c + k);
    }
    for (; c < chunks64; ++c)
      chunk(ld_stream(tile_q + (2 * c) * 512), ld_stream(tile_q + (2 * c + 1) * 512),
            ld_stream_u32(tile_s + c * kTileRows), c);
    // Every lane of a quad holds rows g and g + 8 (all 8 columns of B are xq): t = 0 takes row g, t = 1 row g + 8.
    const int r = tile * kTileRows + g + 8 * t;
    if (t < 2 && r < vocab) {
      const float2 k = consts[r];
      const double a = t == 0 ? acc0 : acc8;
      const double b = static_cast<double>(k.x) * e1 + static_cast<double>(k.y) * e2c;
      const double lnl = draw.temperature > 0.0 ? log(-log(token_uniform(draw.draw_key, r))) : 0.0;
      const double lo = bound_key(a - b, draw, lnl), hi = bound_key(a + b, draw, lnl);
      upper[r] = __double2float_ru(hi);
      if (lo > best_lo) best_lo = lo;  // a NaN bound never raises M
    }
  }
  // M: the CTA's largest lo, then the last CTA to arrive takes the largest over the CTAs.
  for (int o = 16; o > 0; o >>= 1) best_lo = fmax(best_lo, __shfl_xor_sync(0xffffffffu, best_lo, o));
  __syncthreads();  // s_norm's reads are done: reuse it
  if (lane == 0) s_norm[0][warp] = best_lo;
  __syncthreads();
  int* arrivals = static_cast<int*>(screen_workspace);
  double* m_slot = reinterpret_cast<double*>(static_cast<char*>(screen_workspace) + 8);
  double* partials = reinterpret_cast<double*>(static_cast<char*>(screen_workspace) + kScreenHeader);
  if (tid == 0) {
    double m = -INFINITY;
    for (int w = 0; w < kWarps; ++w) m = fmax(m, s_norm[0][w]);
    partials[blockIdx.x] = m;
    __threadfence();  // the partial is visible device-wide before the arrival counts
    s_last = atomicAdd(arrivals, 1) == static_cast<int>(gridDim.x) - 1;
  }
  __syncthreads();
  if (!s_last || tid != 0) return;
  __threadfence();
  double m = -INFINITY;
  for (int b = 0; b < static_cast<int>(gridDim.x); ++b) m = fmax(m, __ldcg(partials + b));
  *m_slot = m;
  *arrivals = 0;  // ready for the next launch
}

// Stage 2: the rows whose hi reaches M, recomputed exactly (a warp a row: the bf16 row · xs, each lane's pieces in
// order, then the warp's sum), and the draw among them (sample_tail, as unembedding_kernel's).
__global__ void __launch_bounds__(kThreads, 2)
    pick_kernel(const bf16* __restrict__ W, const float* __restrict__ norm_scale, const float* x, int vocab,
                int hidden, float eps, const float* upper, const void* screen_workspace, TokenDraw draw) {
  TimelineScope timeline(kTlSample);
  extern __shared__ uint4 dyn_smem[];
  bf16* xs = reinterpret_cast<bf16*>(dyn_smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunks32 = (hidden + kChunkCols - 1) / kChunkCols, padded32 = chunks32 * kChunkCols;
  // x is final (screen_kernel released this launch after its own wait), so the norm runs before this wait.
  final_norm_to_shared(norm_scale, x, hidden, padded32, eps, xs);
  pdl_wait();  // upper and M
  timeline.mark_waited();
  const double m = __ldcg(reinterpret_cast<const double*>(static_cast<const char*>(screen_workspace) + 8));
  const int pieces = padded32 / 8;  // 16-byte pieces a row
  BestKey best{-INFINITY, INT_MAX, 0};
  const int warps = gridDim.x * kWarps;
  for (int base = (blockIdx.x * kWarps + warp) * 32; base < vocab; base += warps * 32) {
    const int r = base + lane;
    const float hi = r < vocab ? __ldcg(upper + r) : -INFINITY;
    unsigned candidates = __ballot_sync(0xffffffffu, r < vocab && !(static_cast<double>(hi) < m));
    while (candidates) {
      const int row = base + __ffs(candidates) - 1;
      candidates &= candidates - 1;
      const int tile = row / kTileRows, g = row % kTileRows;
      const bf16* block = W + static_cast<int64_t>(tile) * kTileRows * padded32;
      float sum = 0.f;
      for (int p0 = 0; p0 < pieces; p0 += 32 * kPickRowLoads) {
        uint4 w[kPickRowLoads];
#pragma unroll
        for (int k = 0; k < kPickRowLoads; ++k) {  // clamped, unpredicated: one round trip
          const int p = min(p0 + lane + 32 * k, pieces - 1);
          w[k] = *reinterpret_cast<const uint4*>(block + (2 * (p / 4) + g / 8) * 256 + (4 * (g % 8) + p % 4) * 8);
        }
#pragma unroll
        for (int k = 0; k < kPickRowLoads; ++k) {
          const int p = p0 + lane + 32 * k;
          if (p < pieces) sum += dot8_bf16(w[k], xs + 8 * p);
        }
      }
      const float v = warp_sum(sum);
      if (lane == 0) {
        best.bad |= (v != v) || (v == INFINITY);
        const double key =
            draw.temperature > 0.0 ? gumbel_key(v, draw.temperature, draw.draw_key, row) : static_cast<double>(v);
        if (ranks_before(key, row, best.key, best.index)) best.key = key, best.index = row;
      }
    }
  }
  sample_tail(draw, best);
}

}  // namespace

size_t router_tail_workspace_bytes(int hidden, int experts) {
  return static_cast<size_t>(router_clusters(hidden)) * route_cols_padded(experts) * sizeof(float);
}

int router_clusters(int hidden) { return ceil_div(ceil_div(hidden, kTileRows), kRouteCluster); }

float rmsnorm_output_bound(const float* norm_scale, int hidden) {
  if (hidden < 1) throw std::invalid_argument("rmsnorm_output_bound: need hidden >= 1, got " + std::to_string(hidden));
  float max_abs = 0.f;
  for (int i = 0; i < hidden; ++i) {
    if (!std::isfinite(norm_scale[i]))
      throw std::invalid_argument("the norm scale holds a non-finite value at index " + std::to_string(i));
    max_abs = std::max(max_abs, std::fabs(norm_scale[i]));
  }
  return std::max(std::sqrt(static_cast<float>(hidden)) * max_abs * (1.f + 0x1p-7f), 0x1p-100f);
}

void check_moe_route(const MoeRoute& route, int experts, const char* who) {
  if (!route.workspace || !route.gate_b || !route.residual || !route.norm_scale)
    throw std::invalid_argument(std::string(who) + ": the route needs the router's workspace, the "
                                "gate bias, the residual and the norm scale");
  if (!(route.x_bound > 0.f) || !std::isfinite(route.x_bound))
    throw std::invalid_argument(std::string(who) + ": the route's x_bound must be finite and > 0 "
                                "(rmsnorm_output_bound), got " + std::to_string(route.x_bound));
  if (experts < 1 || experts > kRouteMaxExperts)
    throw std::invalid_argument(std::string(who) + ": routing needs 1 <= experts <= " +
                                std::to_string(kRouteMaxExperts) + ", got " + std::to_string(experts));
}

void launch_route(const MoeRoute& route, int experts, int k, int hidden, bf16* x_normed, int32_t* ids,
                  float* weights, cudaStream_t stream) {
  check_moe_route(route, experts, "launch_route");
  if (k < 1 || k > kRouteMaxK || k > experts || hidden < 1)
    throw std::invalid_argument("launch_route: need 1 <= k <= min(" + std::to_string(kRouteMaxK) +
                                ", experts) and hidden >= 1");
  if (!x_normed || !ids || !weights) throw std::invalid_argument("launch_route: every output buffer is needed");
  launch_pdl(route_kernel, dim3(1), dim3(kThreads), 0, stream,
             RoutePartials{static_cast<const float*>(route.workspace), router_clusters(hidden), route.gate_b}, experts, k,
             hidden, route.residual, route.norm_scale, route.eps, x_normed, ids, weights);
}

void launch_bf16_gemv_bias_residual(const bf16* W, const bf16* bias, const bf16* in, int rows, int cols,
                                    float* residual, const RouterTail* router, cudaStream_t stream) {
  check_gemv(W, rows, cols, "launch_bf16_gemv_bias_residual");
  if (reinterpret_cast<uintptr_t>(in) % 16 != 0)
    throw std::invalid_argument("launch_bf16_gemv_bias_residual: the input vector must be 16-byte aligned");
  RouterTail rt = {};
  if (router) {
    rt = *router;
    if (rt.experts < 1 || rt.experts > kRouteMaxExperts)
      throw std::invalid_argument("launch_bf16_gemv_bias_residual: the router needs 1 <= experts <= " +
                                  std::to_string(kRouteMaxExperts) + " (got " + std::to_string(rt.experts) + ")");
    if (rows % 8 != 0 || reinterpret_cast<uintptr_t>(rt.gate_w) % 16 != 0 || !rt.workspace || !rt.norm_scale)
      throw std::invalid_argument(
          "launch_bf16_gemv_bias_residual: the router needs hidden (rows) a multiple of 8, a 16-byte aligned gate "
          "matrix, and every buffer");
  }
  const int tiles = ceil_div(rows, kTileRows), cluster = router ? kRouteCluster : 1;
  launch_kernel(bf16_gemv_bias_residual_kernel, dim3(ceil_div(tiles, cluster) * cluster), dim3(kThreads), 0, stream,
                /*pdl=*/true, cluster, W, bias, in, rows, cols, residual, rt);
}

size_t unembedding_sample_workspace_bytes() {
  return kSampleHeader + static_cast<size_t>(kSampleMaxCtas) * sizeof(BestKey);
}

void launch_unembedding(const bf16* W_packed, const float* norm_scale, const float* x, int vocab, int hidden,
                        float eps, float* logits, const FusedSample* sample, cudaStream_t stream) {
  check_gemv(W_packed, vocab, hidden, "launch_unembedding");
  const size_t smem = static_cast<size_t>(ceil_div(hidden, kChunkCols)) * kChunkCols * sizeof(bf16);
  if (smem > 48 * 1024)
    throw std::invalid_argument("launch_unembedding: hidden " + std::to_string(hidden) + " is too large (max 24576)");
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, unembedding_kernel, kWarps * 32, smem));
  const int tiles = ceil_div(vocab, kTileRows);
  const int grid = std::max(1, std::min({ceil_div(tiles, kWarps), current_device_sms() * std::max(per_sm, 1),
                                          sample ? kSampleMaxCtas : INT_MAX}));
  TokenDraw draw{};
  if (sample) {
    if (!sample->workspace || !sample->token || !(sample->temperature >= 0.0f))
      throw std::invalid_argument(
          "launch_unembedding: the fused sample needs its workspace and token buffers and a temperature >= 0");
    draw = TokenDraw{sample->workspace, sample->token, sample->temperature, draw_key(sample->seed, sample->draw)};
  }
  launch_pdl(unembedding_kernel, dim3(grid), dim3(kWarps * 32), smem, stream, W_packed, norm_scale, x, vocab, hidden,
             eps, logits, draw);
}

// Dynamic shared memory of the two screened launches: xs in bf16 (and, for screen_kernel, in int8) at whole
// chunks.
static size_t screen_smem(int hidden) {
  const size_t padded32 = static_cast<size_t>(ceil_div(hidden, kChunkCols)) * kChunkCols;
  const size_t padded64 = static_cast<size_t>(ceil_div(hidden, kScreenChunk)) * kScreenChunk;
  return std::max(padded32, padded64) * sizeof(bf16) + padded64;
}
static size_t pick_smem(int hidden) {
  return static_cast<size_t>(ceil_div(hidden, kChunkCols)) * kChunkCols * sizeof(bf16);
}

bool screened_sampling_fits(int hidden) {
  if (hidden < 1 || hidden > kScreenMaxChunks * kScreenChunk) return false;
  cudaFuncAttributes screen{}, pick{};
  CUDA_CHECK(cudaFuncGetAttributes(&screen, screen_kernel));
  CUDA_CHECK(cudaFuncGetAttributes(&pick, pick_kernel));
  return screen_smem(hidden) <= static_cast<size_t>(screen.maxDynamicSharedSizeBytes) &&
         pick_smem(hidden) <= static_cast<size_t>(pick.maxDynamicSharedSizeBytes);
}

// The screened unembedding's buffers, in build_screened_unembedding's order: codes, scales, consts, upper, workspace.
static std::array<size_t, 5> screened_buffer_bytes(int vocab, int hidden) {
  const size_t vocab_padded = static_cast<size_t>(ceil_div(vocab, kTileRows)) * kTileRows;
  const size_t chunks = ceil_div(hidden, kScreenChunk);
  return {vocab_padded * chunks * kScreenChunk, vocab_padded * chunks * sizeof(bf16), vocab_padded * sizeof(float2),
          static_cast<size_t>(vocab) * sizeof(float), kScreenHeader + static_cast<size_t>(kSampleMaxCtas) * sizeof(double)};
}

size_t screened_unembedding_bytes(int vocab, int hidden) {
  size_t total = 0;
  for (const size_t bytes : screened_buffer_bytes(vocab, hidden)) total += bytes;
  return total;
}

ScreenedUnembedding build_screened_unembedding(const bf16* W_packed, int vocab, int hidden) {
  check_gemv(W_packed, vocab, hidden, "build_screened_unembedding");
  if (!screened_sampling_fits(hidden))
    throw std::invalid_argument("build_screened_unembedding: hidden " + std::to_string(hidden) +
                                " is too large for the screened draw's shared memory");
  const int vocab_padded = ceil_div(vocab, kTileRows) * kTileRows;
  const std::array<size_t, 5> bytes = screened_buffer_bytes(vocab, hidden);
  ScreenedUnembedding s;
  s.codes = DeviceBuffer(bytes[0]);
  s.scales = DeviceBuffer(bytes[1]);
  s.consts = DeviceBuffer(bytes[2]);
  s.upper = DeviceBuffer(bytes[3]);
  s.workspace = DeviceBuffer(bytes[4]);
  CUDA_CHECK(cudaMemset(s.workspace.get(), 0, s.workspace.bytes()));
  const int64_t threads = static_cast<int64_t>(vocab_padded) * 32;
  quantize_unembedding_kernel<<<static_cast<unsigned>((threads + 255) / 256), 256>>>(
      W_packed, vocab_padded, hidden, s.codes.get<int8_t>(), s.scales.get<bf16>(), s.consts.get<float2>());
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cudaDeviceSynchronize());
  s.vocab = vocab, s.hidden = hidden;
  return s;
}

void launch_screened_sample(const ScreenedUnembedding& s, const bf16* W_packed, const float* norm_scale,
                            const float* x, float eps, const FusedSample& sample, cudaStream_t stream) {
  if (!s.vocab) throw std::invalid_argument("launch_screened_sample: no screened unembedding was built");
  if (!sample.workspace || !sample.token || !(sample.temperature >= 0.0f))
    throw std::invalid_argument(
        "launch_screened_sample: the sample needs its workspace and token buffers and a temperature >= 0");
  const TokenDraw draw{sample.workspace, sample.token, sample.temperature, draw_key(sample.seed, sample.draw)};
  const int vocab = s.vocab, hidden = s.hidden;
  const size_t smem_screen = screen_smem(hidden), smem_pick = pick_smem(hidden);  // build checked that they fit
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, screen_kernel, kThreads, smem_screen));
  const int slots = current_device_sms() * std::max(per_sm, 1);
  const int grid = std::max(1, std::min({ceil_div(ceil_div(vocab, kTileRows), kWarps), slots, kSampleMaxCtas}));
  launch_pdl(screen_kernel, dim3(grid), dim3(kThreads), smem_screen, stream, s.codes.get<int8_t>(),
             s.scales.get<bf16>(), s.consts.get<float2>(), norm_scale, x, vocab, hidden, eps, s.upper.get<float>(), s.workspace.get(), draw);
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, pick_kernel, kThreads, smem_pick));
  const int pick_grid = std::max(1, std::min({ceil_div(vocab, 32 * kWarps), current_device_sms() * std::max(per_sm, 1),
                                              kSampleMaxCtas}));
  launch_pdl(pick_kernel, dim3(pick_grid), dim3(kThreads), smem_pick, stream, W_packed, norm_scale, x, vocab, hidden,
             eps, static_cast<const float*>(s.upper.get<float>()), static_cast<const void*>(s.workspace.get()), draw);
}

DeviceBuffer upload_unembedding_packed(const bf16* host, int vocab, int hidden) {
  if (vocab < 1 || hidden < 8 || hidden % 8 != 0)  // a host pointer: any alignment (cudaMemcpy reads it)
    throw std::invalid_argument("upload_unembedding_packed: need vocab >= 1 and hidden a positive multiple of 8 (got " +
                                std::to_string(vocab) + " x " + std::to_string(hidden) + ")");
  DeviceBuffer packed(static_cast<size_t>(ceil_div(vocab, kTileRows)) * kTileRows * ceil_div(hidden, kChunkCols) *
                      kChunkCols * sizeof(bf16));  // whole tiles of whole chunks
  // Through a staging buffer of whole tiles (~24 MB for gpt-oss), so loading costs no second copy of the matrix.
  constexpr int kSlabRows = 4096;
  const int slab_rows = std::min(vocab, kSlabRows);
  DeviceBuffer staging(static_cast<size_t>(slab_rows) * hidden * sizeof(bf16));
  const int pieces = kTileRows * ceil_div(hidden, kChunkCols) * 4;
  for (int r0 = 0; r0 < vocab; r0 += kSlabRows) {
    const int rows = std::min(kSlabRows, vocab - r0);
    // Synchronous on the legacy stream: the previous slab's pack (same stream) has finished reading the staging.
    CUDA_CHECK(cudaMemcpy(staging.get(), host + static_cast<int64_t>(r0) * hidden,
                          static_cast<size_t>(rows) * hidden * sizeof(bf16), cudaMemcpyHostToDevice));
    const int64_t threads = static_cast<int64_t>(ceil_div(rows, kTileRows)) * pieces;
    pack_unembedding_kernel<<<static_cast<unsigned>((threads + 255) / 256), 256>>>(staging.get<bf16>(), r0, rows,
                                                                                    hidden, packed.get<uint4>());
    CUDA_CHECK_LAUNCH();
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  return packed;
}

}  // namespace gpt_oss

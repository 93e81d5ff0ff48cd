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

__global__ void __launch_bounds__(kWarps * 32, 2)
    unembedding_kernel(const bf16* __restrict__ W, const float* __restrict__ norm_scale, const float* x,
                       int vocab, int hidden, float eps, float* __restrict__ logits, TokenDraw draw) {
  TimelineScope timeline(kTlUnembedding);
  extern __shared__ uint4 dyn_smem[];
  bf16* xs = reinterpret_cast<bf16*>(dyn_smem);
  __shared__ float s_red[kWarps];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4;
  // A programmatic launch: the CTAs become resident while the last MoE launch drains, so the launch gap (~2.7 µs
  // on the H100, session 8's timeline) leaves the token's path. No weight load goes out before the wait: a
  // 17 MB first batch would land on that launch's tail. x, written by it, is read through L2 after the wait.
  pdl_wait();
  timeline.mark_waited();
  // The final RMSNorm. Up to kNormLoads values a thread (hidden ≤ 3072: gpt-oss's 2880), all of x and norm_scale
  // are loaded in one round (unpredicated, indices clamped, extras unused) and x stays in registers for the
  // scaled write; the same sums in the same order as the loop below, which for 2880 waited on ~12 dependent
  // loads a pass (the SASS reuses one register) before the first weight load of the token. With the programmatic
  // launch: 435 → 427.5 µs graph-timed (H100, session 10, twice).
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
  const int tiles = (vocab + kTileRows - 1) / kTileRows, chunks = (hidden + kChunkCols - 1) / kChunkCols;
  // The packed weight's zero columns must meet zero inputs (0 · uninitialised shared memory may be NaN).
  const int padded = chunks * kChunkCols;
  for (int i = hidden + tid; i < padded; i += kThreads) xs[i] = __float2bfloat16(0.f);
  __syncthreads();

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

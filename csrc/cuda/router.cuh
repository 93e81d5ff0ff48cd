// The MoE router's last step, run by each CTA that needs the route (the MoE kernels, and launch_route for tests):
// the out-projection's tail (gemv_bf16.cu) leaves one row of partials per cluster of its CTAs, and every CTA of
// mlp1 and mlp2 sums those rows itself, in one fixed order, so all of them reach the same bits. No last CTA of
// the out-projection routes on the critical path (an arrival atomic, one more L2 round trip and a CTA's serial
// work, ~3 µs a layer in session 11's timeline); each consumer pays one round of partial loads instead.
// H100, one call (session 13), graph-timed: out-projection + router 15.72 → 12.32 µs (20b), 15.58 → 12.08 (120b);
// mlp1 16.51 → 17.94 / 16.21 → 17.22 (its route is after its wait); decode at 1k 20b 552.8 → 550.4 tok/s (a
// tie), 120b 393.3 → 403.2 (+2.5 %). 20b's mlp1 paid more than 120b's until the partials were summed over fewer
// groups (kRouteLoads below; session 14, same call: 20b 551.1 → 566.3 tok/s, 120b unchanged).
#pragma once

#include "cuda/common.cuh"

namespace gpt_oss {

// A partials row: the experts' gate dots Σ_r gate_w[e, r] · x_r · norm_scale_r, then Σ_r x_r², padded to whole
// float4s. rmsnorm's 1 / rms is one factor common to the whole vector, so it is applied after the sum.
__host__ __device__ inline int route_cols_padded(int experts) { return (experts + 1 + 3) / 4 * 4; }

// The kernel argument: the out-projection's partials and the gate bias (gemv_bf16.h: MoeRoute).
struct RoutePartials {
  const float* partials;  // [clusters, route_cols_padded(experts)]
  int clusters;
  const bf16* gate_b;  // [experts]
};

template <int kThreads>
struct RouteSmem {
  __align__(16) float red[kThreads * 4];  // written as float4
  __align__(16) float logit[kRouteMaxExperts];
  float bias[kRouteMaxExperts];
  float cand_v[kRouteMaxExperts / 32 * kRouteMaxK];  // each warp's k best, in rank order
  int cand_i[kRouteMaxExperts / 32 * kRouteMaxK];
  float top_v[kRouteMaxK];  // the k best of the candidates (more than one warp of experts)
  int top_i[kRouteMaxK];
};

// The gate bias into s.bias (threads e < experts), before route_from_partials: a weight, so a kernel may stage it
// before its dependency wait; route_from_partials' first barrier publishes it.
template <int kThreads>
__device__ __forceinline__ void route_stage_bias(const RoutePartials& rp, int experts, RouteSmem<kThreads>& s) {
  static_assert(kRouteMaxExperts <= kThreads, "one thread per expert for the bias load");
  if (static_cast<int>(threadIdx.x) < experts) s.bias[threadIdx.x] = __bfloat162float(rp.gate_b[threadIdx.x]);
}

// Every thread of a kThreads CTA, after route_stage_bias: the logits' sums from the partials (in one fixed order
// whatever CTA runs it), the top k and their softmax into ids / weights, which may be shared memory; returns 1 / rms
// of the residual (every thread). The caller's next barrier publishes ids and weights.
// Each thread sums up to kRouteLoads rows of one float4 column in registers (loads unpredicated, rows clamped,
// extras not added: one round trip), over as few groups of threads as that allows, because the groups are then
// summed one after another: gpt-oss's 23 rows take 6 groups (20b and 120b), where one row a thread took 28
// dependent shared loads for 20b (9 float4 columns), ~0.5 µs before the top-k. Every caller uses the same
// kRouteLoads, so every CTA adds in the same order.
constexpr int kRouteLoads = 4;

template <int kThreads>
__device__ __forceinline__ float route_from_partials(const RoutePartials& rp, int experts, int k, int hidden,
                                                     float eps, RouteSmem<kThreads>& s, int32_t* ids,
                                                     float* weights) {
  const int tid = threadIdx.x, cols_pad = route_cols_padded(experts);
  // Thread (group, quad) sums float4 column quad `quad` over rows group, group + groups, ...; then column c is
  // summed over the groups.
  const int quads = cols_pad / 4, quad = tid % quads, group = tid / quads;
  const int groups = min(kThreads / quads, (rp.clusters + kRouteLoads - 1) / kRouteLoads);
  if (group < groups) {
    const float4* p4 = reinterpret_cast<const float4*>(rp.partials) + quad;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int t0 = group; t0 < rp.clusters; t0 += kRouteLoads * groups) {
      float4 v[kRouteLoads];
#pragma unroll
      for (int u = 0; u < kRouteLoads; ++u)
        v[u] = __ldcg(p4 + static_cast<int64_t>(min(t0 + u * groups, rp.clusters - 1)) * quads);
#pragma unroll
      for (int u = 0; u < kRouteLoads; ++u)
        if (t0 + u * groups < rp.clusters) acc.x += v[u].x, acc.y += v[u].y, acc.z += v[u].z, acc.w += v[u].w;
    }
    reinterpret_cast<float4*>(s.red)[group * quads + quad] = acc;
  }
  __syncthreads();
  // Every thread: Σ x² over the groups (the same broadcast reads in every thread, so no barrier) and 1 / rms.
  float sumsq = 0.f;
  for (int gi = 0; gi < groups; ++gi) sumsq += s.red[gi * cols_pad + experts];
  const float inv_rms = rsqrtf(sumsq / static_cast<float>(hidden) + eps);
  // Thread e < experts: its logit, then its rank (ranks_before order) among its warp's 32 by comparing it with each of
  // them, and a warp's k best become candidates in rank order; with more than 32 experts the candidates are ranked the
  // same way. All ranks at once, where one warp's k rounds of a shuffle tree were a serial chain (~1000 cycles at k =
  // 4; H100, same call, session 16: decode at 1k 20b 577.0 → 579.7 tok/s, 120b 411.0 → 412.5). Threads past the
  // experts (up to whole warps) hold -inf at higher indices, which never rank before an expert. A NaN logit (a NaN
  // residual or gate row) has no rank: every id then becomes -1, which mlp1 turns into NaN outputs.
  const int warp = tid / 32, route_warps = (experts + 31) / 32;
  float v = -INFINITY;
  if (tid < experts) {
    float total = 0.f;
    for (int gi = 0; gi < groups; ++gi) total += s.red[gi * cols_pad + tid];
    v = fmaf(total, inv_rms, s.bias[tid]);
  }
  if (warp < route_warps) s.logit[tid] = v;
  const bool bad = __syncthreads_or(v != v);
  if (warp < route_warps) {
    int rank = 0;
    const float* mine = s.logit + warp * 32;
#pragma unroll
    for (int j = 0; j < 32; j += 4) {
      const float4 u = *reinterpret_cast<const float4*>(mine + j);
      const int i = warp * 32 + j;
      rank += ranks_before(u.x, i, v, tid) + ranks_before(u.y, i + 1, v, tid) + ranks_before(u.z, i + 2, v, tid) +
              ranks_before(u.w, i + 3, v, tid);
    }
    if (rank < k) s.cand_v[warp * k + rank] = v, s.cand_i[warp * k + rank] = tid;
  }
  __syncthreads();
  const float* best_v = s.cand_v;
  const int* best_i = s.cand_i;
  if (route_warps > 1) {  // rank the route_warps · k candidates
    const int cands = route_warps * k;
    if (tid < cands) {
      const float cv = s.cand_v[tid];
      const int ci = s.cand_i[tid];
      int rank = 0;
      for (int j = 0; j < cands; ++j) rank += ranks_before(s.cand_v[j], s.cand_i[j], cv, ci);
      if (rank < k) s.top_v[rank] = cv, s.top_i[rank] = ci;
    }
    __syncthreads();
    best_v = s.top_v, best_i = s.top_i;
  }
  if (tid < k) {
    const float top = best_v[0];
    float sum = 0.f;
    for (int t = 0; t < k; ++t) sum += __expf(best_v[t] - top);
    ids[tid] = bad ? -1 : best_i[tid];
    weights[tid] = __expf(best_v[tid] - top) / sum;
  }
  return inv_rms;
}

// mlp1's input as the reference rounds it: bf16(x · inv_rms · scale).
__device__ __forceinline__ bf16 normed_bf16(float x, float inv_rms, float scale) {
  return __float2bfloat16(x * inv_rms * scale);
}

}  // namespace gpt_oss

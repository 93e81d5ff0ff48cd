// Public launchers of the bf16 GEMV family (gemv_bf16.cu): attention output projection and unembedding.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"

namespace gpt_oss {

// The MoE router of the block after the attention, with x the updated residual [rows = hidden]:
//   x_normed = bf16(rmsnorm(x) · norm_scale)            (mlp1's input)
//   logits   = gate_w · (rmsnorm(x) · norm_scale) + gate_b  (fp32, from the unrounded normed x)
//   ids / weights = the top k of the logits (ties → lower id), softmax over those k.
// Split in two (router.cuh says why): the out-projection's tail (RouterTail) leaves per cluster of its CTAs a row
// of partial gate dots and sum of squares in the workspace (router_tail_workspace_bytes); the MoE launches read
// them (MoeRoute) and finish the routing themselves, each CTA the same bits. launch_route finishes it alone.
struct RouterTail {
  const float* norm_scale;  // [hidden]
  const bf16* gate_w;       // [experts, hidden]
  int experts;
  void* workspace;
};
size_t router_tail_workspace_bytes(int hidden, int experts);

// What an MoE launch needs to finish the routing of the residual an out-projection + RouterTail updated (how
// many partial rows there are follows from the hidden size, which the launch knows).
struct MoeRoute {
  const void* workspace;    // the RouterTail's
  const bf16* gate_b;       // [experts]
  const float* residual;    // [hidden], as the out-projection left it
  const float* norm_scale;  // [hidden]
  float eps;
  // A bound on |bf16(rmsnorm(residual) · norm_scale)|, mlp1's input, whatever the residual: rmsnorm_output_bound.
  // mlp1 stages its input at this one scale instead of searching it for its largest value.
  float x_bound;
};
int router_clusters(int hidden);
// sqrt(hidden) · max |norm_scale| (with 2^-7 of margin for the rounding): |x_i| / rms(x) ≤ sqrt(hidden) for every x.
// norm_scale: host memory. Throws std::invalid_argument naming the index of a non-finite value.
float rmsnorm_output_bound(const float* norm_scale, int hidden);
// Throws std::invalid_argument (prefixed with who) unless route can serve a launch of `experts` experts.
void check_moe_route(const MoeRoute& route, int experts, const char* who);

// The routing alone, from an out-projection's partials: x_normed [hidden], ids / weights [k] (one CTA).
void launch_route(const MoeRoute& route, int experts, int k, int hidden, bf16* x_normed, int32_t* ids,
                  float* weights, cudaStream_t);

// residual[r] += W[r, :] · in + bias[r];  W bf16 [rows, cols] row-major, in bf16 [cols], residual fp32 [rows].
// With a router (not null), then the router's partials of the updated residual (RouterTail).
void launch_bf16_gemv_bias_residual(const bf16* W, const bf16* bias, const bf16* in, int rows, int cols,
                                    float* residual, const RouterTail* router, cudaStream_t);

// Decoding fused into the unembedding, for the draws that need no top-k / top-p cut: the token launch_sample and
// the CPU sampler (csrc/cpu/sampling.cpp) pick from the logits it writes. Temperature 0: their argmax (lowest id
// on ties). Above: the Gumbel-max draw over every token for (seed, draw), with each key computed in double from
// the fp32 logit as written. -1 when a logit is NaN or +inf, or when every logit is -inf at temperature > 0.
// Each CTA leaves its best key in the workspace and the last one to finish (an arrival counter) picks the
// token, so no sampler launch re-reads the 0.8 MB of logits.
// The workspace (unembedding_sample_workspace_bytes) must be zero before the first launch; each launch leaves it
// so. Launches sharing a workspace must be stream-ordered.
struct FusedSample {
  void* workspace;
  int32_t* token;
  float temperature;  // >= 0; 0 → argmax
  uint64_t seed, draw;
};
size_t unembedding_sample_workspace_bytes();

// logits[v] = W[v, :] · (rmsnorm(x) * norm_scale);  W bf16 [vocab, hidden] packed (upload_unembedding_packed),
// x fp32 [hidden], logits fp32 [vocab]. With sample (not null), also the sampled token (FusedSample).
void launch_unembedding(const bf16* W_packed, const float* norm_scale, const float* x, int vocab, int hidden,
                        float eps, float* logits, const FusedSample* sample, cudaStream_t);

// Screened fused sampling (gemv_bf16.cu, screen_kernel / pick_kernel): the FusedSample token from an int8 copy of the
// unembedding (half its bytes) that bounds every row's key, and the bf16 rows whose bound reaches the best lower
// bound recomputed exactly. The token is the exact logits' (up to fp32 rounding between keys); logits are not
// written. Built once from the packed bf16 weight; `upper` and `workspace` are the launch's scratch (launches
// sharing them must be stream-ordered).
struct ScreenedUnembedding {
  DeviceBuffer codes;      // int8, whole 16-row tiles of whole 64-column chunks, in screen_kernel's load order
  DeviceBuffer scales;     // bf16 a row and chunk, in tile order
  DeviceBuffer consts;     // float2 a row: (‖w_r‖, ‖w_r − ŵ_r‖), rounded up
  DeviceBuffer upper;      // float a row: the step's upper bound on its key
  DeviceBuffer workspace;  // arrival counter, the best lower bound, one partial a CTA
  int vocab = 0, hidden = 0;
};
// Whether the screened draw takes this hidden size (its launches stage x in shared memory: ~15k at most on
// sm_90); build_screened_unembedding throws where it does not.
bool screened_sampling_fits(int hidden);
// The GPU memory build_screened_unembedding allocates (0.60 GB for gpt-oss).
size_t screened_unembedding_bytes(int vocab, int hidden);
ScreenedUnembedding build_screened_unembedding(const bf16* W_packed, int vocab, int hidden);
// sample's workspace: unembedding_sample_workspace_bytes(), zero before the first launch (each leaves it so).
void launch_screened_sample(const ScreenedUnembedding& s, const bf16* W_packed, const float* norm_scale,
                            const float* x, float eps, const FusedSample& sample, cudaStream_t);

// The unembedding's weight in the order its kernel streams it (gemv_bf16.cu, pack_unembedding_kernel): from a host
// row-major bf16 [vocab, hidden] (hidden a multiple of 8) into a new device buffer of whole 16-row, 32-column tiles.
DeviceBuffer upload_unembedding_packed(const bf16* host, int vocab, int hidden);

}  // namespace gpt_oss

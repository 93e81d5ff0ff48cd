// Public launchers of the MXFP4 mixture-of-experts family (moe_mxfp4.cu): mlp1 + SwiGLU, mlp2 + sum + residual
// (the out-projection's tail leaves the router's partials, which these launches finish: MoeRoute in gemv_bf16.h).
// Decode (one token). Device pointers; every launcher is graph-capturable (no sync, no alloc).
#pragma once

#include <cstdint>

#include <cuda_fp16.h>

#include "cuda/common.cuh"
#include "cuda/gemv_bf16.h"

namespace gpt_oss {

// One layer's experts of one projection, uploaded once and repacked into the layout the kernels stream
// (the layout is private to moe_mxfp4.cu). rows = output features per expert, cols = input features.
struct Mxfp4Experts {
  DeviceBuffer weights;  // packed FP4 codes, repacked
  DeviceBuffer scales;   // E8M0, repacked
  DeviceBuffer bias;     // bf16 [experts, rows]
  int experts = 0, rows = 0, cols = 0;
};

// From the checkpoint's host tensors: blocks [experts, rows, cols/32, 16] u8, scales [experts, rows, cols/32] u8,
// bias [experts, rows] bf16 (as uint16).
Mxfp4Experts upload_mxfp4_experts(const uint8_t* blocks, const uint8_t* scales, const uint16_t* bias, int experts,
                                  int rows, int cols);

// act[j, :] = swiglu(W1[ids[j]] · x_normed + b1[ids[j]]) for j < k; rows of W1 interleave glu (even) and
// linear (odd); act is bf16 [k, intermediate]. The route either given (x_normed, ids from an earlier launch) or
// finished by every CTA from the out-projection's router partials (MoeRoute, gemv_bf16.h: decode), in which case
// x_normed is the route's bf16(rmsnorm(residual) · norm_scale) and the out-projection must be the launch right
// before.
void launch_bf16_mxfp4w_moe_mlp1_swiglu(const bf16* x_normed, const int32_t* ids, int k, const Mxfp4Experts& mlp1,
                                        float alpha, float limit, bf16* act, cudaStream_t);
void launch_bf16_mxfp4w_moe_mlp1_swiglu(const MoeRoute& route, int k, const Mxfp4Experts& mlp1, float alpha,
                                        float limit, bf16* act, cudaStream_t);

// residual[h] += Σ_j weights[j] · (W2[ids[j]] · act[j] + b2[ids[j]])[h]   (fp32 residual, in place); the route
// as for mlp1 (given ids / weights, or MoeRoute with mlp1 the launch right before). act_bound: the caller's bound
// on |act| (mlp1's output: swiglu_act_bound), which sets the one fp16 scale act is staged at. Every act value
// within 2^-28 of the bound reaches the tensor cores exactly; one past 4× the bound (past 2× for some bounds)
// becomes inf, and so does the output (loud, never a quietly wrong sum).
void launch_bf16_mxfp4w_moe_mlp2_residual(const bf16* act, float act_bound, const int32_t* ids, const float* weights,
                                          int k, const Mxfp4Experts& mlp2, float* residual, cudaStream_t);
void launch_bf16_mxfp4w_moe_mlp2_residual(const bf16* act, float act_bound, const MoeRoute& route, int k,
                                          const Mxfp4Experts& mlp2, float* residual, cudaStream_t);

// The largest |act| mlp1's clamped SwiGLU can write (alpha, limit finite and > 0; throws otherwise).
float swiglu_act_bound(float alpha, float limit);

// ---- batched prefill (T tokens; see prefill.h for the grouping) ----------------------------------------------

// Tokens per expert GEMM tile of the prefill kernels (the tile_tokens of launch_prefill_group_experts).
constexpr int kMoePrefillTileTokens = 64;

// Row r of `in` (bf16 [n_rows, cols]) → fp16 [n_rows, ceil(cols / 64) · 64] scaled by 2^-p_r so its largest
// magnitude lands in [2^14, 2^15) (zero padded), and up[r] = 2^(14 + p_r): the inputs of the prefill expert
// GEMMs, staged once per chunk instead of once per CTA.
void launch_moe_prefill_stage(const bf16* in, int n_rows, int cols, __half* staged, float* up, cudaStream_t);

// For each tile n < *tile_count (tiles from launch_prefill_group_experts: expert, first sorted pair, count):
// act[i, :] = swiglu(W1[expert] · x[order[i] / k] + b1[expert]) for the tile's sorted pairs i; staged / up: the
// chunk's normed tokens through launch_moe_prefill_stage (cols = mlp1.cols). act bf16 [T·k, rows / 2].
void launch_bf16_mxfp4w_moe_prefill_mlp1_swiglu(const __half* staged, const float* up, const int32_t* order, int k,
                                                const int4* tiles, const int32_t* tile_count, int max_tiles,
                                                const Mxfp4Experts& mlp1, float alpha, float limit, bf16* act,
                                                cudaStream_t);

// y[i, :] = W2[expert] · act[i] + b2[expert] for the tiles' sorted pairs i (fp32 [T·k, rows]); staged / up: act
// through launch_moe_prefill_stage (cols = mlp2.cols). The routing weights and the sum over experts are
// launch_prefill_moe_combine's.
void launch_bf16_mxfp4w_moe_prefill_mlp2(const __half* staged, const float* up, const int4* tiles,
                                         const int32_t* tile_count, int max_tiles, const Mxfp4Experts& mlp2, float* y,
                                         cudaStream_t);

}  // namespace gpt_oss

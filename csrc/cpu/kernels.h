// The CPU backend's kernel families, one .cpp each. Every kernel computes in fp32 and reads weights in place in
// their checkpoint formats (cpu/numerics.h). Activations are row-major fp32 [tokens, features]. Names mirror the
// CUDA kernels (csrc/cuda) so the two backends can be read side by side.
#pragma once

#include <cstdint>
#include <vector>

#include "core/model.h"
#include "core/rope.h"
#include "cpu/kv_cache.h"
#include "cpu/thread_pool.h"

namespace gpt_oss {

// ---- norm.cpp ----------------------------------------------------------------------------------------------
// out[t, :] = x[t, :] * rsqrt(mean(x[t, :]^2) + eps) * scale;  x, out [n, dim] (may alias), scale f32 [dim].
void rmsnorm(const float* x, const float* scale, int n, int dim, float eps, float* out);

// ---- matmul.cpp --------------------------------------------------------------------------------------------
// y[t, r] = Σ_c W[r, c] · x[t, c] + bias[r]  for t < n, r < rows.
// W bf16 [rows, cols] row-major, cols even; bias bf16 [rows] or null; x fp32 [n, cols]; y fp32 [n, rows].
// Each weight row is read once per call however large n is (prefill is a GEMM, decode a GEMV).
void linear_bf16(ThreadPool& pool, const float* x, int n, const uint16_t* W, const uint16_t* bias, int rows,
                 int cols, float* y);

// One MXFP4 matrix [rows, cols] (cols % 32 == 0): blocks [rows, cols/32, 16] u8, scales [rows, cols/32] u8
// (see core/model.h), bias bf16 [rows] or null.
struct Mxfp4Matrix {
  const uint8_t* blocks = nullptr;
  const uint8_t* scales = nullptr;
  const uint16_t* bias = nullptr;
  int rows = 0, cols = 0;
};
// y[t, r] = Σ_c W[r, c] · x[t, c] + bias[r], W dequantised on the fly; x fp32 [n, cols], y fp32 [n, rows].
void linear_mxfp4(ThreadPool& pool, const float* x, int n, const Mxfp4Matrix& W, float* y);

// ---- rope.cpp (the YaRN frequencies live in core/rope.h) -------------------------------------------------
// Rotates every head of x [heads, head_dim] in place, pairing the two halves of a head (not adjacent values):
// x1 = x[:D/2], x2 = x[D/2:] → (x1·cos − x2·sin, x2·cos + x1·sin).
void apply_rope(float* x, int heads, int head_dim, const float* cos, const float* sin);

// ---- attention.cpp -----------------------------------------------------------------------------------------
// Causal GQA attention with one learned sink logit per head, for n new tokens at positions start .. start+n-1
// whose keys and values are already in `cache`. Query head h reads kv head h / (q_heads / kv_heads). A token at
// position p sees keys in [p − window + 1, p] (window 0: [0, p]). Per head:
//   w = softmax([q·k_j · sm_scale ..., sink]) without the sink's own column;  out = Σ_j w_j v_j.
// q [n, q_heads*head_dim] with row stride q_stride; out [n, q_heads*head_dim] contiguous.
struct AttentionShape {
  int q_heads = 0, kv_heads = 0, head_dim = 0;
  int window = 0;  // 0 → full causal
  float sm_scale = 1.0f;
};
void attention(ThreadPool& pool, const AttentionShape& shape, const float* q, int64_t q_stride, int n,
               int64_t start, const LayerKvCache& cache, const float* sinks, float* out);

// ---- moe.cpp -----------------------------------------------------------------------------------------------
// The clamped SwiGLU of gpt-oss: glu clamped above at limit, linear to [-limit, limit], then
// glu · sigmoid(alpha · glu) · (linear + 1). Inputs interleave: glu = h[2i], linear = h[2i + 1].
float swiglu(float glu, float linear, float alpha, float limit);

// ids/weights [n, k]: the k largest gate logits per token (ties → lower expert id), in descending order, and
// the softmax over those k logits. gate_logits [n, experts]. A token with a NaN logit gets ids 0..k-1 and NaN
// weights: its MoE output is NaN and sampling fails (a NaN has no rank; the CUDA routes answer the same way).
void route_top_k(const float* gate_logits, int n, int experts, int k, int32_t* ids, float* weights);

struct MoeExperts {
  const uint8_t* mlp1_blocks = nullptr;  // [experts, 2*intermediate, hidden/32, 16]
  const uint8_t* mlp1_scales = nullptr;  // [experts, 2*intermediate, hidden/32]
  const uint16_t* mlp1_bias = nullptr;   // [experts, 2*intermediate]
  const uint8_t* mlp2_blocks = nullptr;  // [experts, hidden, intermediate/32, 16]
  const uint8_t* mlp2_scales = nullptr;  // [experts, hidden, intermediate/32]
  const uint16_t* mlp2_bias = nullptr;   // [experts, hidden]
  int experts = 0, hidden = 0, intermediate = 0;
  float swiglu_alpha = 1.702f, swiglu_limit = 7.0f;
  Mxfp4Matrix mlp1(int expert) const;
  Mxfp4Matrix mlp2(int expert) const;
};
// Reusable buffers of moe_experts_residual (they grow to the largest chunk seen).
struct MoeScratch {
  std::vector<float> x, h, act, y;
  std::vector<int32_t> tokens;
};
// residual[t, :] += Σ_j weights[t, j] · mlp2_e(swiglu(mlp1_e(x[t, :]))) with e = ids[t, j]; x fp32 [n, hidden].
// Tokens are grouped by expert so each expert's weights are read once per call.
void moe_experts_residual(ThreadPool& pool, const MoeExperts& moe, const float* x, int n, const int32_t* ids,
                          const float* weights, int k, float* residual, MoeScratch& scratch);

}  // namespace gpt_oss

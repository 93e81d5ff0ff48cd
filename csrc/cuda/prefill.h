// Public launchers of the batched prefill path (prefill.cu): a chunk of T tokens through one layer with every
// weight matrix read once per chunk (bf16 tensor-core GEMMs, tokens as the N dimension) instead of once per
// token. The MXFP4 expert GEMMs live in moe_mxfp4.cu (they need its private weight layout); this file holds
// the dense parts, the attention, the router's top-k and the expert grouping. No launcher synchronises or
// allocates; none is meant for graph capture (positions are host arguments).
#pragma once

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/norm_rope.h"

namespace gpt_oss {

// x[t, :] = embedding[tokens[t], :] as fp32, t < T. tokens are device ints already checked against the vocab.
void launch_prefill_embedding(const bf16* table, const int32_t* tokens, int T, int hidden, float* x, cudaStream_t);

// xn[t, :] = bf16(rmsnorm(x[t, :]) · scale), fp32 statistics; x fp32 [T, hidden], xn bf16 [T, hidden].
// xn_lo (may be null): the rounding residual bf16(v - xn), so xn + xn_lo carries the fp32 value to ~16 bits.
void launch_prefill_rmsnorm(const float* x, const float* scale, int T, int hidden, float eps, bf16* xn, bf16* xn_lo,
                            cudaStream_t);

// Y[t, r] (op)= W[r, :] · X[t, :] + bias[r] for r < rows, t < T; W bf16 [rows, cols] row-major, X bf16 [T, cols]
// (row stride cols), Y fp32 [T, ldy]. accumulate: Y += (the out-projection's residual), else Y = (qkv, gate).
// bias may be null. Each output is owned by one thread: deterministic. cols % 8 == 0, 16-byte aligned rows.
// X_lo (may be null, same shape): a low bf16 half added to X at twice the mma work. The qkv projection uses it
// so its input matches the decode path's fp32 normalised x (norm_qkv_rope); a bf16-rounded input moved q/k/v by
// ~1e-3 and flipped router near-ties at many positions of the batched-vs-replay comparison.
void launch_prefill_gemm_bf16(const bf16* W, const bf16* bias, const bf16* X, const bf16* X_lo, int rows, int cols,
                              int T, float* Y, int ldy, bool accumulate, cudaStream_t);

// RoPE at positions pos0 + t of the GEMM's qkv [T, (q_heads + 2 kv_heads) · 64] fp32: q → fp32 [T, q_heads · 64];
// k, v → bf16 scratch [T][kv_heads][64] each (the chunk's own keys; attention reads them from here, so a
// chunk longer than a sliding ring is exact). rope: the decode table [positions][32] (cos, sin).
void launch_prefill_rope(const float* qkv, const float2* rope, int pos0, int T, int q_heads, int kv_heads, float* q,
                         bf16* k_chunk, bf16* v_chunk, cudaStream_t);

struct PrefillAttentionParams {
  const float* q = nullptr;        // [T][q_heads][64] fp32, RoPE applied
  const bf16* k_chunk = nullptr;   // [T][kv_heads][64] the chunk's keys (RoPE applied)
  const bf16* v_chunk = nullptr;   // [T][kv_heads][64]
  KvLayerCache cache;              // keys of positions < pos0 (slot p % capacity), not yet holding the chunk
  const float* sinks = nullptr;    // [q_heads] fp32 unscaled logits
  bf16* out = nullptr;             // [T][q_heads · 64]
  int pos0 = 0, T = 0, q_heads = 0, kv_heads = 0;
  int window = 0;                  // > 0: a query at p sees keys (p - window, p]; 0: all keys ≤ p
  float sm_scale = 0.125f;
};

// Causal GQA attention with one sink per head for the chunk's queries (positions pos0 .. pos0 + T - 1).
// Keys before pos0 come from the cache, which must still hold every one a query may see: for a sliding layer
// capacity ≥ window, for a full one capacity > pos0 + T - 1. Throws on shapes it does not handle.
void launch_prefill_attention(const PrefillAttentionParams& p, cudaStream_t);

// After the layer's attention: the chunk's k/v rows into the cache at slot (pos0 + t) % capacity, only the last
// min(T, capacity) of them (earlier ones would be overwritten in the ring anyway).
void launch_prefill_kv_commit(const bf16* k_chunk, const bf16* v_chunk, int pos0, int T, int kv_heads,
                              const KvLayerCache& cache, cudaStream_t);

// Router tail for T tokens: logits fp32 [T, experts] (gate GEMM + bias already applied) → ids/weights [T, k]:
// top-k (ties → lower id), softmax over the k: warp_route (common.cuh), as the decode router.
void launch_prefill_topk_softmax(const float* logits, int T, int experts, int k, int32_t* ids, float* weights,
                                 cudaStream_t);

// The expert grouping of T·k (token, slot) pairs, deterministic (pairs of an expert in token order):
//   order[i]      the pair (t·k + j) at sorted position i, grouped by expert
//   sorted_of[p]  the sorted position of pair p (inverse of order)
//   tiles[n]      int4 (expert, first sorted position, pair count ≤ tile_tokens, 0) for n < *tile_count;
//                 capacity prefill_group_max_tiles(T·k, experts, tile_tokens)
int prefill_group_max_tiles(int pairs, int experts, int tile_tokens);
void launch_prefill_group_experts(const int32_t* ids, int pairs, int experts, int tile_tokens, int32_t* order,
                                  int32_t* sorted_of, int4* tiles, int32_t* tile_count, cudaStream_t);

// x[t, :] += Σ_j weights[t, j] · y[sorted_of[t·k + j], :] for j = 0..k-1 in that order (deterministic).
// y fp32 [T·k, hidden] in sorted order (mlp2 output with its bias).
void launch_prefill_moe_combine(const float* y, const int32_t* sorted_of, const float* weights, int T, int k,
                                int hidden, float* x, cudaStream_t);

}  // namespace gpt_oss

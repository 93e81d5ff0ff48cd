// Public launcher of the fused attention prologue (norm_rope.cu): RMSNorm → qkv GEMV + bias → YaRN RoPE →
// q to scratch, k/v appended to the bf16 KV cache. One launch per layer per decoded token.
#pragma once

#include <vector>

#include "core/model.h"
#include "cuda/common.cuh"

namespace gpt_oss {

// KV cache of one layer of one sequence: K and V each bf16 [kv_heads][capacity][head_dim]. A key of position p
// lives in slot p % capacity: sliding layers keep a ring of `sliding_window` slots, full layers max_context.
struct KvLayerCache {
  bf16* k = nullptr;
  bf16* v = nullptr;
  int capacity = 0;
};

struct NormRopeParams {
  const float* x = nullptr;           // [hidden] fp32 residual stream
  const float* norm_scale = nullptr;  // [hidden] fp32
  const bf16* w = nullptr;            // [(q_heads + 2 kv_heads) * head_dim, hidden], rows q | k | v
  const bf16* bias = nullptr;         // [(q_heads + 2 kv_heads) * head_dim]
  const float2* rope = nullptr;       // [positions][head_dim / 2] (cos, sin), YaRN concentration folded in
  const int* pos = nullptr;           // device scalar: the position of the token being decoded
  float* q = nullptr;                 // [q_heads * head_dim] fp32 out, RoPE applied
  KvLayerCache cache;                 // k (RoPE applied) and v written at slot pos % capacity
  int hidden = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  float eps = 1e-5f;
};

// The YaRN cos/sin table of gpt_oss/torch/model.py RotaryEmbedding, computed in double and stored fp32 as
// interleaved (cos, sin) pairs [positions][head_dim / 2], each multiplied by the YaRN concentration.
std::vector<float> yarn_rope_table(const ModelConfig& config, int positions);

// Throws std::invalid_argument when the shapes break the kernel's assumptions (hidden % 8, even head_dim).
void launch_norm_qkv_rope(const NormRopeParams& p, cudaStream_t stream);

}  // namespace gpt_oss

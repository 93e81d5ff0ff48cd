// Public launcher of decode attention (attention_decode.cu): one query token against a sequence's KV cache,
// GQA, one learned sink per head, sliding window as a ring, split-KV with an in-launch combine.
#pragma once

#include <cstddef>

#include "cuda/common.cuh"
#include "cuda/norm_rope.h"

namespace gpt_oss {

// The kernel's fixed shapes: head_dim 64, at most 8 query heads per KV head.
constexpr int kAttentionHeadDim = 64;
constexpr int kAttentionMaxGroup = 8;

struct AttentionDecodeParams {
  const float* q = nullptr;      // [q_heads * 64] fp32, RoPE applied; heads of KV head g are [g*G, (g+1)*G)
  KvLayerCache cache;            // K, V bf16 [kv_heads][capacity][64]; slots [0, min(pos + 1, capacity)) valid
  const float* sinks = nullptr;  // [q_heads] fp32, unscaled logits
  // Device scalar: position of the query token, whose k/v norm_qkv_rope appends just before. Read before
  // pdl_wait(), so it must be written before the previous kernel starts (the backend copies it before the graph).
  const int* pos = nullptr;
  bf16* out = nullptr;           // [q_heads * 64]
  float* workspace = nullptr;    // attention_decode_workspace_bytes(); reused by every layer of a stream
  int* counters = nullptr;       // [kv_heads] int, zero before the first launch; the kernel leaves them zero
  int q_heads = 0, kv_heads = 0;
  int max_splits = 1;            // grid.x; from attention_decode_max_splits()
  float sm_scale = 0.125f;
};

// Splits per KV head for a cache of this capacity: enough CTAs for about two per SM on long contexts; a few deep
// splits, each on an SM of its own, for a cache of at most attention_decode_short_length() slots.
int attention_decode_max_splits(int kv_heads, int capacity, int multiprocessors);
// The longest sequence the short-cache grid serves: the backend decodes every sequence's first this many tokens
// with max_splits from attention_decode_max_splits(kv_heads, min(capacity, this), SMs) (a second graph).
int attention_decode_short_length();
size_t attention_decode_workspace_bytes(int q_heads, int max_splits);

// Throws std::invalid_argument when head_dim != 64 or q_heads / kv_heads is not an integer in [1, 8].
void launch_attention_decode(const AttentionDecodeParams& p, cudaStream_t stream);

}  // namespace gpt_oss

// Public launcher of decode attention fused with its prologue (qkv_attention.cu): RMSNorm → qkv GEMV + bias →
// YaRN RoPE → k/v appended to the cache → attention with sinks, one launch per layer per decoded token, each KV
// head's query, key and value handed over in distributed shared memory instead of through L2.
#pragma once

#include "cuda/attention_decode.h"
#include "cuda/norm_rope.h"

namespace gpt_oss {

struct QkvAttentionParams {
  NormRopeParams qkv;            // as launch_norm_qkv_rope takes them; qkv.q is not used (q stays on chip)
  const float* sinks = nullptr;  // [q_heads] fp32, unscaled logits
  bf16* out = nullptr;           // [q_heads * 64] bf16
  float sm_scale = 0.125f;
};

// Whether this device and these shapes can take the fused launch: head_dim 64, q_heads / kv_heads ≤ 8, the KV
// head's rotation pairs a multiple of the cluster, and every KV head's cluster resident at once (16-CTA clusters
// are non-portable). The caller launches norm_qkv_rope + attention_decode otherwise.
bool qkv_attention_supported(const NormRopeParams& shape);

// Throws std::invalid_argument when qkv_attention_supported() is false.
void launch_qkv_attention(const QkvAttentionParams& p, cudaStream_t stream);

}  // namespace gpt_oss

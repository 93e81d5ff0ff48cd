// The model description every backend shares: configuration, named weight views, sampling parameters.
// Nothing here knows Python or a device. Names follow the official `original/` checkpoint layout
// (python/gpt_oss_native/checkpoint.py maps the Hugging Face layout onto them):
//
//   embedding.weight                     [vocab, hidden]                    bf16
//   block.{i}.attn.norm.scale            [hidden]                           f32
//   block.{i}.attn.qkv.weight            [(q_heads + 2 kv_heads) * head_dim, hidden]  bf16   rows: q | k | v
//   block.{i}.attn.qkv.bias              [(q_heads + 2 kv_heads) * head_dim]          bf16
//   block.{i}.attn.sinks                 [q_heads]                          f32
//   block.{i}.attn.out.weight            [hidden, q_heads * head_dim]       bf16
//   block.{i}.attn.out.bias              [hidden]                           bf16
//   block.{i}.mlp.norm.scale             [hidden]                           f32
//   block.{i}.mlp.gate.weight            [experts, hidden]                  bf16
//   block.{i}.mlp.gate.bias              [experts]                          bf16
//   block.{i}.mlp.mlp1_weight.blocks     [experts, 2 * intermediate, hidden / 32, 16]        u8 (MXFP4, 2 per byte)
//   block.{i}.mlp.mlp1_weight.scales     [experts, 2 * intermediate, hidden / 32]            u8 (E8M0)
//   block.{i}.mlp.mlp1_bias              [experts, 2 * intermediate]        bf16   rows interleave glu / linear
//   block.{i}.mlp.mlp2_weight.blocks     [experts, hidden, intermediate / 32, 16]            u8
//   block.{i}.mlp.mlp2_weight.scales     [experts, hidden, intermediate / 32]                u8
//   block.{i}.mlp.mlp2_bias              [experts, hidden]                  bf16
//   norm.scale                           [hidden]                           f32
//   unembedding.weight                   [vocab, hidden]                    bf16
//
// MXFP4: byte b of a block holds value 2k in its low nibble and 2k+1 in its high nibble; a nibble is an
// E2M1 code (0..15 → ±{0, .5, 1, 1.5, 2, 3, 4, 6}, sign in bit 3) and the block's 32 values share the scale
// 2^(scale - 127).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace gpt_oss {

struct ModelConfig {
  int num_layers = 0;
  int num_experts = 0;
  int experts_per_token = 4;
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int head_dim = 64;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int sliding_window = 128;            // applies to even layers
  int initial_context_length = 4096;   // YaRN's original context
  float rope_theta = 150000.0f;
  float rope_scaling_factor = 32.0f;
  float rope_ntk_alpha = 1.0f;
  float rope_ntk_beta = 32.0f;
  float swiglu_limit = 7.0f;
  float swiglu_alpha = 1.702f;
  float norm_eps = 1e-5f;

  bool layer_is_sliding(int layer) const { return sliding_window > 0 && layer % 2 == 0; }
  int qkv_dim() const { return (num_attention_heads + 2 * num_key_value_heads) * head_dim; }
  // Throws std::invalid_argument naming the first inconsistent field.
  void validate() const;
};

enum class DType { bf16, f32, u8 };
const char* dtype_name(DType);

// A read-only view of one host tensor (the memory belongs to the caller, e.g. an mmap'd checkpoint).
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::u8;
  std::vector<int64_t> shape;
  int64_t numel() const;
};

class Weights {
 public:
  void add(std::string name, TensorView view);
  // Returns the tensor, or throws std::invalid_argument naming it when it is missing or its dtype/shape differ.
  const TensorView& get(const std::string& name, DType dtype, const std::vector<int64_t>& shape) const;
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  const std::map<std::string, TensorView>& all() const { return tensors_; }

 private:
  std::map<std::string, TensorView> tensors_;
};

// Validates every tensor the model needs (names, dtypes, shapes) up front, so a bad checkpoint fails at load.
void validate_weights(const ModelConfig& config, const Weights& weights);

struct SamplingParams {
  float temperature = 1.0f;  // 0 → greedy (argmax, lowest index on ties)
  float top_p = 1.0f;        // nucleus mass kept, in (0, 1]
  int top_k = 0;             // 0 → no top-k cut
  uint64_t seed = 0;

  bool top_k_cuts(int vocab) const { return top_k > 0 && top_k < vocab; }
  // Whether top-k or top-p keeps fewer than all tokens (the law's kept set, csrc/cpu/sampling.cpp).
  bool cuts(int vocab) const { return top_k_cuts(vocab) || top_p < 1.0f; }
  // Throws std::invalid_argument naming the first parameter out of range.
  void validate() const;
};

}  // namespace gpt_oss

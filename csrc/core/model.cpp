#include "core/model.h"

#include <stdexcept>

namespace gpt_oss {

namespace {
void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("invalid model config: " + what);
}
}  // namespace

void ModelConfig::validate() const {
  require(num_layers > 0, "num_layers must be > 0");
  require(num_experts > 0, "num_experts must be > 0");
  require(experts_per_token > 0 && experts_per_token <= num_experts,
          "experts_per_token must be in [1, num_experts]");
  require(vocab_size > 0, "vocab_size must be > 0");
  require(hidden_size > 0 && hidden_size % 32 == 0, "hidden_size must be a positive multiple of 32 (MXFP4 blocks)");
  require(intermediate_size > 0 && intermediate_size % 32 == 0,
          "intermediate_size must be a positive multiple of 32 (MXFP4 blocks)");
  require(head_dim > 0 && head_dim % 2 == 0, "head_dim must be positive and even (RoPE pairs)");
  require(num_attention_heads > 0 && num_key_value_heads > 0, "head counts must be > 0");
  require(num_attention_heads % num_key_value_heads == 0,
          "num_attention_heads must be a multiple of num_key_value_heads (GQA)");
  require(sliding_window >= 0, "sliding_window must be >= 0");
  require(initial_context_length > 0, "initial_context_length must be > 0");
  require(rope_theta > 1 && rope_scaling_factor >= 1, "rope_theta must be > 1 and rope_scaling_factor >= 1");
  // YaRN's ramp runs from the beta edge to the alpha edge; reversed or equal edges divide by zero.
  require(rope_scaling_factor == 1 || (rope_ntk_alpha > 0 && rope_ntk_alpha < rope_ntk_beta),
          "rope_ntk_alpha must be in (0, rope_ntk_beta) when rope_scaling_factor > 1");
  require(swiglu_limit > 0 && swiglu_alpha > 0, "swiglu_limit and swiglu_alpha must be > 0");
  require(norm_eps > 0, "norm_eps must be > 0");
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::bf16: return "bf16";
    case DType::f32: return "f32";
    case DType::u8: return "u8";
  }
  return "?";
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void Weights::add(std::string name, TensorView view) { tensors_[std::move(name)] = std::move(view); }

namespace {
std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}
}  // namespace

const TensorView& Weights::get(const std::string& name, DType dtype, const std::vector<int64_t>& shape) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::invalid_argument("weight '" + name + "' is missing");
  const TensorView& v = it->second;
  if (v.dtype != dtype)
    throw std::invalid_argument("weight '" + name + "' has dtype " + dtype_name(v.dtype) + ", expected " +
                                dtype_name(dtype));
  if (v.shape != shape)
    throw std::invalid_argument("weight '" + name + "' has shape " + shape_str(v.shape) + ", expected " +
                                shape_str(shape));
  return v;
}

void SamplingParams::validate() const {
  if (!(temperature >= 0.0f)) throw std::invalid_argument("temperature must be >= 0");
  if (!(top_p > 0.0f && top_p <= 1.0f)) throw std::invalid_argument("top_p must be in (0, 1]");
  if (top_k < 0) throw std::invalid_argument("top_k must be >= 0");
}

void validate_weights(const ModelConfig& c, const Weights& w) {
  const int64_t H = c.hidden_size, V = c.vocab_size, E = c.num_experts, I = c.intermediate_size;
  const int64_t qkv = c.qkv_dim(), attn = static_cast<int64_t>(c.num_attention_heads) * c.head_dim;
  w.get("embedding.weight", DType::bf16, {V, H});
  w.get("norm.scale", DType::f32, {H});
  w.get("unembedding.weight", DType::bf16, {V, H});
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string b = "block." + std::to_string(i) + ".";
    w.get(b + "attn.norm.scale", DType::f32, {H});
    w.get(b + "attn.qkv.weight", DType::bf16, {qkv, H});
    w.get(b + "attn.qkv.bias", DType::bf16, {qkv});
    w.get(b + "attn.sinks", DType::f32, {c.num_attention_heads});
    w.get(b + "attn.out.weight", DType::bf16, {H, attn});
    w.get(b + "attn.out.bias", DType::bf16, {H});
    w.get(b + "mlp.norm.scale", DType::f32, {H});
    w.get(b + "mlp.gate.weight", DType::bf16, {E, H});
    w.get(b + "mlp.gate.bias", DType::bf16, {E});
    w.get(b + "mlp.mlp1_weight.blocks", DType::u8, {E, 2 * I, H / 32, 16});
    w.get(b + "mlp.mlp1_weight.scales", DType::u8, {E, 2 * I, H / 32});
    w.get(b + "mlp.mlp1_bias", DType::bf16, {E, 2 * I});
    w.get(b + "mlp.mlp2_weight.blocks", DType::u8, {E, H, I / 32, 16});
    w.get(b + "mlp.mlp2_weight.scales", DType::u8, {E, H, I / 32});
    w.get(b + "mlp.mlp2_bias", DType::bf16, {E, H});
  }
}

}  // namespace gpt_oss

// The CPU backend: the layer schedule of gpt-oss in fp32, reading the caller's weights in place.
//   x = embedding[tokens]
//   per layer l:  a = rmsnorm(x) · attn.norm;  qkv = W_qkv a + b_qkv;  rope(q), rope(k)
//                 o = attention(q, k, v; sinks, window if l is even);  x += W_out o + b_out
//                 m = rmsnorm(x) · mlp.norm;  gate = W_gate m + b_gate;  (ids, w) = top-k softmax(gate)
//                 x += Σ_j w_j · expert_{ids_j}(m)
//   logits = W_unembedding (rmsnorm(x) · norm)
// A forward of n tokens runs in chunks of kPrefillChunk tokens; within a chunk every matmul is a GEMM over its
// tokens, so prefill reads each weight once per chunk. Calls are serialised by a mutex (one set of scratch
// buffers); every sequence owns its KV cache (cpu/kv_cache.h).
// Run-ahead sampling is synchronous here: submit_sample computes the step and its draw, collect_sample hands the
// queued draw back (a device-fed submission feeds the latest draw). So the backend does not run ahead
// (runs_ahead() is false): the Engine submits and collects in turn.
#include <algorithm>
#include <array>
#include <cmath>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/sample_queue.h"
#include "cpu/kernels.h"
#include "cpu/numerics.h"

namespace gpt_oss {

namespace {

constexpr int kPrefillChunk = 256;  // tokens per pass through the layers; bounds activation memory

struct LayerWeights {
  const float* attn_norm;
  const uint16_t* qkv_weight;
  const uint16_t* qkv_bias;
  const float* sinks;
  const uint16_t* out_weight;
  const uint16_t* out_bias;
  const float* mlp_norm;
  const uint16_t* gate_weight;
  const uint16_t* gate_bias;
  MoeExperts experts;
  int window;  // 0 on full-attention layers
};

struct Sequence {
  int64_t length = 0;
  int64_t dropped_at = -1;  // the length drop_last_token() left, until a token is fed again; -1: no drop
  std::vector<LayerKvCache> layers;
  SampleQueue samples;
  // Per ring entry of `samples`: the token the submission drew, or -1 when its draw failed (with the sampler's
  // error, rethrown at collect, or none when it was fed a failed draw and never ran).
  std::array<int32_t, kMaxOutstandingSamples> drawn{};
  std::array<std::exception_ptr, kMaxOutstandingSamples> errors;
};

// One chunk's activations, reused across calls (they grow to the largest chunk seen).
struct Activations {
  std::vector<float> x;               // [n, hidden] residual stream
  std::vector<float> normed;          // [n, hidden] rmsnorm output feeding a block
  std::vector<float> qkv;             // [n, qkv_dim]
  std::vector<float> attn;            // [n, q_heads * head_dim]
  std::vector<float> projected;       // [n, hidden] attention output projection
  std::vector<float> rope_cos, rope_sin;  // [n, head_dim / 2]
  std::vector<float> gate_logits;     // [n, experts]
  std::vector<int32_t> expert_ids;    // [n, experts_per_token]
  std::vector<float> expert_weights;  // [n, experts_per_token]
  MoeScratch moe;
};

class CpuBackend final : public Backend {
 public:
  CpuBackend(const ModelConfig& config, const Weights& weights, const BackendOptions& options);

  std::string name() const override { return "cpu"; }
  int new_sequence() override;
  void free_sequence(int seq) override;
  int sequence_length(int seq) const override;
  void forward(int seq, const int32_t* tokens, int n, float* logits, bool all_logits) override;
  void submit_sample(int seq, const int32_t* tokens, int n, const SamplingParams& params, uint64_t draw) override;
  int32_t collect_sample(int seq) override;
  int outstanding_samples(int seq) const override;
  bool runs_ahead() const override { return false; }
  void drop_last_token(int seq) override;

 private:
  Sequence& sequence(int seq) const;
  void run_forward(int seq, const int32_t* tokens, int n, float* logits, bool all_logits);
  void forward_chunk(Sequence& s, const int32_t* tokens, int n, float* logits, bool all_logits);
  void attention_block(const LayerWeights& layer, LayerKvCache& cache, int64_t start, int n);
  void mlp_block(const LayerWeights& layer, int n);

  ModelConfig cfg_;
  BackendOptions options_;
  ThreadPool pool_;
  YarnRope rope_;
  const uint16_t* embedding_;
  const float* final_norm_;
  const uint16_t* unembedding_;
  std::vector<LayerWeights> layers_;
  std::vector<std::unique_ptr<Sequence>> sequences_;  // slot per id; null when free
  Activations act_;
  std::vector<float> sample_logits_;
  mutable std::mutex mutex_;
};

CpuBackend::CpuBackend(const ModelConfig& config, const Weights& w, const BackendOptions& options)
    : cfg_(config), options_(options), pool_(options.num_threads), rope_(yarn_rope(config)) {
  cfg_.validate();
  validate_weights(cfg_, w);
  if (options.max_context <= 0) throw std::invalid_argument("max_context must be > 0");
  if (options.max_sequences <= 0) throw std::invalid_argument("max_sequences must be > 0");
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size, E = cfg_.num_experts, I = cfg_.intermediate_size;
  const int64_t qkv = cfg_.qkv_dim(), attn = static_cast<int64_t>(cfg_.num_attention_heads) * cfg_.head_dim;
  auto bf16 = [&](const std::string& name, std::vector<int64_t> shape) {
    return static_cast<const uint16_t*>(w.get(name, DType::bf16, shape).data);
  };
  auto f32 = [&](const std::string& name, std::vector<int64_t> shape) {
    return static_cast<const float*>(w.get(name, DType::f32, shape).data);
  };
  auto u8 = [&](const std::string& name, std::vector<int64_t> shape) {
    return static_cast<const uint8_t*>(w.get(name, DType::u8, shape).data);
  };
  embedding_ = bf16("embedding.weight", {V, H});
  final_norm_ = f32("norm.scale", {H});
  unembedding_ = bf16("unembedding.weight", {V, H});
  for (int i = 0; i < cfg_.num_layers; ++i) {
    const std::string b = "block." + std::to_string(i) + ".";
    LayerWeights l;
    l.attn_norm = f32(b + "attn.norm.scale", {H});
    l.qkv_weight = bf16(b + "attn.qkv.weight", {qkv, H});
    l.qkv_bias = bf16(b + "attn.qkv.bias", {qkv});
    l.sinks = f32(b + "attn.sinks", {cfg_.num_attention_heads});
    l.out_weight = bf16(b + "attn.out.weight", {H, attn});
    l.out_bias = bf16(b + "attn.out.bias", {H});
    l.mlp_norm = f32(b + "mlp.norm.scale", {H});
    l.gate_weight = bf16(b + "mlp.gate.weight", {E, H});
    l.gate_bias = bf16(b + "mlp.gate.bias", {E});
    l.experts.mlp1_blocks = u8(b + "mlp.mlp1_weight.blocks", {E, 2 * I, H / 32, 16});
    l.experts.mlp1_scales = u8(b + "mlp.mlp1_weight.scales", {E, 2 * I, H / 32});
    l.experts.mlp1_bias = bf16(b + "mlp.mlp1_bias", {E, 2 * I});
    l.experts.mlp2_blocks = u8(b + "mlp.mlp2_weight.blocks", {E, H, I / 32, 16});
    l.experts.mlp2_scales = u8(b + "mlp.mlp2_weight.scales", {E, H, I / 32});
    l.experts.mlp2_bias = bf16(b + "mlp.mlp2_bias", {E, H});
    l.experts.experts = cfg_.num_experts;
    l.experts.hidden = cfg_.hidden_size;
    l.experts.intermediate = cfg_.intermediate_size;
    l.experts.swiglu_alpha = cfg_.swiglu_alpha;
    l.experts.swiglu_limit = cfg_.swiglu_limit;
    l.window = cfg_.layer_is_sliding(i) ? cfg_.sliding_window : 0;
    layers_.push_back(l);
  }
  sequences_.resize(options.max_sequences);
}

Sequence& CpuBackend::sequence(int seq) const {
  if (seq < 0 || seq >= static_cast<int>(sequences_.size()) || !sequences_[seq])
    throw std::invalid_argument("sequence " + std::to_string(seq) +
                                " does not exist (never created, or already freed); use new_sequence()");
  return *sequences_[seq];
}

int CpuBackend::new_sequence() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (size_t id = 0; id < sequences_.size(); ++id) {
    if (sequences_[id]) continue;
    auto s = std::make_unique<Sequence>();
    // A ring spans the window plus one chunk: a chunk's keys go in before its first query reads the window.
    for (const LayerWeights& l : layers_)
      s->layers.emplace_back(cfg_.num_key_value_heads, cfg_.head_dim,
                             l.window > 0 ? std::min(l.window + kPrefillChunk, options_.max_context) : 0);
    sequences_[id] = std::move(s);
    return static_cast<int>(id);
  }
  throw std::runtime_error("all " + std::to_string(sequences_.size()) +
                           " sequences are in use; free one with free_sequence() or raise max_sequences");
}

void CpuBackend::free_sequence(int seq) {
  std::lock_guard<std::mutex> lock(mutex_);
  sequence(seq);
  sequences_[seq].reset();
}

int CpuBackend::sequence_length(int seq) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(sequence(seq).length);
}

void CpuBackend::forward(int seq, const int32_t* tokens, int n, float* logits, bool all_logits) {
  std::lock_guard<std::mutex> lock(mutex_);
  Sequence& s = sequence(seq);
  s.samples.require_empty(seq, "forward");
  run_forward(seq, tokens, n, logits, all_logits);
  s.samples.forget_draw();
}

void CpuBackend::submit_sample(int seq, const int32_t* tokens, int n, const SamplingParams& params,
                               uint64_t draw) {
  std::lock_guard<std::mutex> lock(mutex_);
  Sequence& s = sequence(seq);
  const int entry = s.samples.reserve(seq, tokens, n, params);
  const bool device_fed = tokens == nullptr;
  const int32_t fed = device_fed ? s.drawn[s.samples.latest()] : 0;
  int32_t token = -1;
  std::exception_ptr error;
  // A failed draw feeds nothing: the step is not run and its collect reports the failure.
  if (!device_fed || fed >= 0) {
    sample_logits_.resize(cfg_.vocab_size);
    run_forward(seq, device_fed ? &fed : tokens, n, sample_logits_.data(), false);
    try {
      token = sample_logits(sample_logits_.data(), cfg_.vocab_size, params, draw);
    } catch (...) {
      error = std::current_exception();  // raised at collect, where the CUDA backend learns of its failures
    }
  }
  s.drawn[entry] = token;
  s.errors[entry] = error;
  s.samples.push(device_fed);
}

int32_t CpuBackend::collect_sample(int seq) {
  std::lock_guard<std::mutex> lock(mutex_);
  Sequence& s = sequence(seq);
  const int entry = s.samples.front(seq);
  const int32_t token = s.drawn[entry];
  const std::exception_ptr error = std::exchange(s.errors[entry], nullptr);
  s.samples.pop(seq, token >= 0);
  if (error) std::rethrow_exception(error);
  return token;
}

int CpuBackend::outstanding_samples(int seq) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sequence(seq).samples.outstanding();
}

void CpuBackend::drop_last_token(int seq) {
  std::lock_guard<std::mutex> lock(mutex_);
  Sequence& s = sequence(seq);
  require_droppable_last_token(seq, s.length, s.samples.outstanding(), s.dropped_at);
  // Every layer holds the token (forward_chunk appends to all of them before the length moves on).
  for (LayerKvCache& layer : s.layers) layer.drop_last();
  s.dropped_at = --s.length;
  s.samples.forget_draw();
}

void CpuBackend::run_forward(int seq, const int32_t* tokens, int n, float* logits, bool all_logits) {
  Sequence& s = sequence(seq);
  if (n <= 0) throw std::invalid_argument("forward needs at least one token");
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= cfg_.vocab_size)
      throw std::invalid_argument("token " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                                  " is outside the vocabulary [0, " + std::to_string(cfg_.vocab_size) + ")");
  if (s.length + n > options_.max_context)
    throw std::length_error("sequence " + std::to_string(seq) + " holds " + std::to_string(s.length) +
                            " tokens; " + std::to_string(n) + " more would pass max_context " +
                            std::to_string(options_.max_context) + " (raise max_context or start a new sequence)");
  for (int begin = 0; begin < n; begin += kPrefillChunk) {
    const int m = std::min(kPrefillChunk, n - begin);
    const bool last = begin + m == n;
    float* out = all_logits ? logits + static_cast<int64_t>(begin) * cfg_.vocab_size : (last ? logits : nullptr);
    forward_chunk(s, tokens + begin, m, out, all_logits);
  }
}

void CpuBackend::forward_chunk(Sequence& s, const int32_t* tokens, int n, float* logits, bool all_logits) {
  const int H = cfg_.hidden_size, half = cfg_.head_dim / 2;
  act_.x.resize(static_cast<size_t>(n) * H);
  act_.normed.resize(static_cast<size_t>(n) * H);
  for (int t = 0; t < n; ++t) {
    const uint16_t* row = embedding_ + static_cast<int64_t>(tokens[t]) * H;
    std::transform(row, row + H, act_.x.begin() + static_cast<int64_t>(t) * H, bf16_to_f32);
  }
  act_.rope_cos.resize(static_cast<size_t>(n) * half);
  act_.rope_sin.resize(static_cast<size_t>(n) * half);
  for (int t = 0; t < n; ++t)
    rope_cos_sin(rope_, s.length + t, act_.rope_cos.data() + t * half, act_.rope_sin.data() + t * half);

  for (size_t l = 0; l < layers_.size(); ++l) {
    attention_block(layers_[l], s.layers[l], s.length, n);
    mlp_block(layers_[l], n);
  }
  s.length += n;

  if (logits == nullptr) return;
  // Only the rows the caller asked for go through the final norm and the unembedding.
  const int rows = all_logits ? n : 1;
  const float* x_rows = act_.x.data() + static_cast<int64_t>(n - rows) * H;
  rmsnorm(x_rows, final_norm_, rows, H, cfg_.norm_eps, act_.normed.data());
  linear_bf16(pool_, act_.normed.data(), rows, unembedding_, nullptr, cfg_.vocab_size, H, logits);
}

void CpuBackend::attention_block(const LayerWeights& layer, LayerKvCache& cache, int64_t start, int n) {
  const int H = cfg_.hidden_size, D = cfg_.head_dim, half = D / 2;
  const int q_heads = cfg_.num_attention_heads, kv_heads = cfg_.num_key_value_heads, qkv_dim = cfg_.qkv_dim();
  const int q_dim = q_heads * D, kv_dim = kv_heads * D;
  act_.qkv.resize(static_cast<size_t>(n) * qkv_dim);
  act_.attn.resize(static_cast<size_t>(n) * q_dim);
  act_.projected.resize(static_cast<size_t>(n) * H);

  rmsnorm(act_.x.data(), layer.attn_norm, n, H, cfg_.norm_eps, act_.normed.data());
  linear_bf16(pool_, act_.normed.data(), n, layer.qkv_weight, layer.qkv_bias, qkv_dim, H, act_.qkv.data());
  // Row t of qkv: q [q_heads, D] | k [kv_heads, D] | v [kv_heads, D].
  float* q = act_.qkv.data();
  float* k = q + q_dim;
  float* v = k + kv_dim;
  for (int t = 0; t < n; ++t) {
    const float* cos = act_.rope_cos.data() + t * half;
    const float* sin = act_.rope_sin.data() + t * half;
    apply_rope(q + static_cast<int64_t>(t) * qkv_dim, q_heads, D, cos, sin);
    apply_rope(k + static_cast<int64_t>(t) * qkv_dim, kv_heads, D, cos, sin);
  }
  for (int t = 0; t < n; ++t)
    cache.append(start + t, k + static_cast<int64_t>(t) * qkv_dim, v + static_cast<int64_t>(t) * qkv_dim);
  const AttentionShape shape{q_heads, kv_heads, D, layer.window, 1.0f / std::sqrt(static_cast<float>(D))};
  attention(pool_, shape, q, qkv_dim, n, start, cache, layer.sinks, act_.attn.data());

  linear_bf16(pool_, act_.attn.data(), n, layer.out_weight, layer.out_bias, H, q_dim, act_.projected.data());
  for (size_t i = 0; i < act_.projected.size(); ++i) act_.x[i] += act_.projected[i];
}

void CpuBackend::mlp_block(const LayerWeights& layer, int n) {
  const int H = cfg_.hidden_size, E = cfg_.num_experts, k = cfg_.experts_per_token;
  act_.gate_logits.resize(static_cast<size_t>(n) * E);
  act_.expert_ids.resize(static_cast<size_t>(n) * k);
  act_.expert_weights.resize(static_cast<size_t>(n) * k);
  rmsnorm(act_.x.data(), layer.mlp_norm, n, H, cfg_.norm_eps, act_.normed.data());
  linear_bf16(pool_, act_.normed.data(), n, layer.gate_weight, layer.gate_bias, E, H, act_.gate_logits.data());
  route_top_k(act_.gate_logits.data(), n, E, k, act_.expert_ids.data(), act_.expert_weights.data());
  moe_experts_residual(pool_, layer.experts, act_.normed.data(), n, act_.expert_ids.data(),
                       act_.expert_weights.data(), k, act_.x.data(), act_.moe);
}

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const ModelConfig& config, const Weights& weights,
                                          const BackendOptions& options) {
  return std::make_unique<CpuBackend>(config, weights, options);
}

}  // namespace gpt_oss

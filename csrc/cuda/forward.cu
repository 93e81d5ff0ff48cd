// The CUDA backend: weights uploaded once, one KV cache per sequence slot, and the decode step of one token
// captured once per slot into a CUDA graph and replayed. The token and its position are read from the slot's
// device step state (Slot::step), so the same graph serves every step of every sequence that reuses the slot.
//
// Run-ahead sampling (submit_sample / collect_sample): the sampler writes its token into the slot's step state,
// so the next step can be queued before the host has seen the token (device-fed: only its position is copied
// host-to-device), and copies it to the slot's pinned result ring; an event per ring entry lets collect wait for
// its own step alone. Everything runs in order on one stream, so steps of different slots never overlap and the
// shared activations, logits and scratch are safe.
//
// drop_last_token only moves the slot's length back: nothing on the device holds it (every step's position is
// copied from the host, the graph reads it there, the prefill takes it as an argument), and the next token fed
// overwrites the dropped one's KV entries. The slot's step state keeps the dropped step's draw, which nothing
// reads: a device-fed submission is refused after a drop, and a host-fed one copies its own token over it.
//
// Decode step (one token), all on one non-default stream:
//   embedding gather (x fp32)
//   per layer: norm_qkv_rope (q, KV append) → attention_decode → x += Wo·attn + bo
//              with the router's partials in its tail → mlp1 (routes, normalises) + SwiGLU
//              → x += Σ_k w_k (W2·act_k + b2) (mlp2 routes too, before its wait)
//   unembedding with the final norm fused (only when logits are needed) → fp32 logits → device sampler.
// Prefill (n ≥ kBatchedPrefillMinTokens tokens) runs in chunks of up to kPrefillChunk tokens through the batched
// kernels of prefill.h / moe_mxfp4.h, which read every weight matrix once per chunk instead of once per token:
//   embedding gather [T, hidden]
//   per layer: rmsnorm → qkv GEMM + bias → RoPE (q; k, v to a chunk scratch) → causal attention (chunk keys
//              from the scratch, earlier ones from the cache) → commit the chunk's k, v to the cache
//              → x += Wo·attn + bo (GEMM) → rmsnorm → gate GEMM → top-k → group the (token, expert) pairs by
//              expert → mlp1 + SwiGLU and mlp2 per expert over its tokens → x += Σ_k w_k (…) in a fixed order
//   unembedding only for the rows whose logits are returned.
// Shorter inputs, and all of them with GPT_OSS_NATIVE_CUDA_PREFILL=replay, run the decode step once per token
// (graph replays). GPT_OSS_NATIVE_CUDA_PREFILL=batched uses the batched path for any n ≥ 2 (tests, A/B).
//
// KV cache of a slot: one allocation, per layer K then V, each bf16 [kv_heads][capacity][head_dim]; sliding
// layers hold a ring of min(sliding_window, max_context) slots, full layers max_context slots. Slots are
// allocated on first use and kept when their sequence is freed, so a new sequence reuses one (and its graph).
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/sample_queue.h"
#include "cuda/attention_decode.h"
#include "cuda/common.cuh"
#include "cuda/gemv_bf16.h"
#include "cuda/moe_mxfp4.h"
#include "cuda/norm_rope.h"
#include "cuda/prefill.h"
#include "cuda/sampling.h"

namespace gpt_oss {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Tokens per batched prefill chunk: each chunk streams every expert the chunk routes to (at 512 tokens all of
// them, ~10 GB for 20b), so longer chunks amortise the MoE weights better; 512 keeps the scratch near 80 MB.
constexpr int kPrefillChunk = 512;
// Inputs shorter than this replay the decode graph per token. Below ~8 tokens the batched kernels, tuned for
// tens of tokens (64-token tiles, no graph: 15 launches a layer), cost about as much as the replays they save.
constexpr int kBatchedPrefillMinTokens = 8;

enum class PrefillMode { automatic, batched, replay };

PrefillMode prefill_mode() {
  const char* v = std::getenv("GPT_OSS_NATIVE_CUDA_PREFILL");
  const std::string mode = v ? v : "";
  if (mode.empty() || mode == "auto") return PrefillMode::automatic;
  if (mode == "batched") return PrefillMode::batched;
  if (mode == "replay") return PrefillMode::replay;
  throw std::invalid_argument("GPT_OSS_NATIVE_CUDA_PREFILL must be auto, batched or replay, got '" + mode + "'");
}

// Screened sampling (ScreenedUnembedding) is on unless GPT_OSS_NATIVE_CUDA_SCREEN=0. Its bounds are worst-case
// (Cauchy–Schwarz), so how many rows a draw recomputes depends on the weights: ~130 of 201088 for greedy and ~8 at
// T = 1 on random full-size weights, where the top logit is only the largest of noise (benchmarks/NOTES.md, session
// 18). Either way the token is the exact logits' (up to fp32 rounding between two keys); the off switch is for
// comparing the two paths and for a GPU too small for the int8 copy beside more than one sequence's cache.
bool screening_enabled() {
  const char* v = std::getenv("GPT_OSS_NATIVE_CUDA_SCREEN");
  const std::string mode = v ? v : "";
  if (mode.empty() || mode == "1") return true;
  if (mode == "0") return false;
  throw std::invalid_argument("GPT_OSS_NATIVE_CUDA_SCREEN must be 0 or 1, got '" + mode + "'");
}

std::string gib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f GiB", bytes / kGiB);
  return buf;
}

size_t dtype_bytes(DType t) { return t == DType::bf16 ? 2 : t == DType::f32 ? 4 : 1; }

// x[i] = embedding[*token][i] as fp32. A device-fed token is -1 when the draw that fed it failed: it is clamped
// into the table, so no read leaves it (the step computes garbage, and collect_sample reports the failure).
__global__ void embedding_gather_kernel(const bf16* table, const int* token, int vocab, int hidden, float* x) {
  TimelineScope timeline(kTlEmbedding);
  const size_t row = static_cast<size_t>(min(max(*token, 0), vocab - 1)) * hidden;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < hidden; i += gridDim.x * blockDim.x)
    x[i] = __bfloat162float(table[row + i]);
}

struct StreamDeleter {
  void operator()(cudaStream_t s) const { cudaStreamDestroy(s); }
};
struct GraphExecDeleter {
  void operator()(cudaGraphExec_t g) const { cudaGraphExecDestroy(g); }
};
struct EventDeleter {
  void operator()(cudaEvent_t e) const { cudaEventDestroy(e); }
};
struct PinnedDeleter {
  void operator()(void* p) const { cudaFreeHost(p); }
};
using StreamPtr = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, StreamDeleter>;
using GraphExecPtr = std::unique_ptr<std::remove_pointer_t<cudaGraphExec_t>, GraphExecDeleter>;
using EventPtr = std::unique_ptr<std::remove_pointer_t<cudaEvent_t>, EventDeleter>;

// What the graph reads each step: the token (copied from the host, or written there by the previous step's
// sampler) and its position (always copied from the host, before the replay).
struct StepState {
  int32_t token;
  int32_t pos;
};

// The host side of a slot's outstanding submissions (pinned), one entry per SampleQueue ring entry: the step's
// staged state, read by its host-to-device copy, and the token its sampler drew, written by a device-to-host
// copy. An entry is reused only after its submission was collected (its event passed), so neither copy is
// pending then.
struct SubmissionRing {
  StepState staged[kMaxOutstandingSamples];
  int32_t drawn[kMaxOutstandingSamples];
};

struct LayerWeights {
  DeviceBuffer attn_norm, qkv_w, qkv_b, sinks, out_w, out_b, mlp_norm, gate_w, gate_b;
  float mlp_norm_bound = 0.f;  // rmsnorm_output_bound of mlp_norm: mlp1 stages its input at this scale
  Mxfp4Experts mlp1, mlp2;
  // Attention's grid (attention_decode_max_splits) for the whole cache, and while a sequence holds at most
  // attention_decode_short_length() tokens (fewer, deeper splits; the same where the cache is that short).
  int attention_splits = 1, attention_splits_short = 1;
};

struct Slot {
  bool live = false;
  int length = 0;  // tokens of every queued step, collected or not
  int dropped_at = -1;  // the length drop_last_token() left, until a token is fed again; -1: no drop
  DeviceBuffer kv;
  std::vector<KvLayerCache> layers;
  GraphExecPtr graph, graph_short;  // the decode step; graph_short while pos < attention_decode_short_length()
  DeviceBuffer step;  // StepState, read by this slot's graph
  SampleQueue samples;
  std::unique_ptr<SubmissionRing, PinnedDeleter> ring;
  std::array<EventPtr, kMaxOutstandingSamples> done;  // recorded after each entry's drawn token has landed
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(const ModelConfig& config, const Weights& weights, const BackendOptions& options)
      : cfg_(config), opts_(options) {
    select_device();
    check_config();
    check_memory(weights);
    upload_weights(weights);
    allocate_activations();
    build_screen();
  }

  ~CudaBackend() override {
    if (stream_) cudaStreamSynchronize(stream_.get());
  }

  std::string name() const override { return "cuda:" + std::to_string(opts_.device) + " (" + device_name_ + ")"; }

  int new_sequence() override {
    std::lock_guard<std::mutex> lock(mu_);
    use_device();
    int chosen = -1;
    for (size_t i = 0; i < slots_.size() && chosen < 0; ++i)
      if (!slots_[i].live && slots_[i].kv.get()) chosen = static_cast<int>(i);  // reuse a cache (and graph)
    for (size_t i = 0; i < slots_.size() && chosen < 0; ++i)
      if (!slots_[i].live) chosen = static_cast<int>(i);
    if (chosen < 0)
      throw std::runtime_error("all " + std::to_string(opts_.max_sequences) +
                               " sequences are in use: free one or raise max_sequences");
    Slot& slot = slots_[chosen];
    if (!slot.kv.get()) allocate_slot(slot);
    slot.live = true;
    slot.length = 0;
    slot.dropped_at = -1;
    return chosen;
  }

  void free_sequence(int seq) override {
    std::lock_guard<std::mutex> lock(mu_);
    use_device();
    Slot& slot = live_slot(seq);
    // Outstanding steps still read the slot's staged states and write its ring: they finish before the slot can
    // be reused (the latest one's event covers the others), and their tokens are dropped.
    if (slot.samples.outstanding() > 0) CUDA_CHECK(cudaEventSynchronize(slot.done[slot.samples.latest()].get()));
    slot.samples.clear();
    slot.live = false;
  }

  int sequence_length(int seq) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return const_cast<CudaBackend*>(this)->live_slot(seq).length;
  }

  void forward(int seq, const int32_t* tokens, int n, float* logits, bool all_logits) override {
    std::lock_guard<std::mutex> lock(mu_);
    use_device();
    Slot& slot = live_slot(seq);
    slot.samples.require_empty(seq, "forward");
    check_tokens(slot, seq, tokens, n);
    slot.samples.forget_draw();
    if (use_batched_prefill(n)) {
      prefill(slot, tokens, n, logits, all_logits, nullptr);
    } else {
      replay_tokens(slot, tokens, n, all_logits, logits, nullptr);
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
  }

  void submit_sample(int seq, const int32_t* tokens, int n, const SamplingParams& params, uint64_t draw) override {
    std::lock_guard<std::mutex> lock(mu_);
    use_device();
    Slot& slot = live_slot(seq);
    const int entry = slot.samples.reserve(seq, tokens, n, params);
    const bool device_fed = tokens == nullptr;
    check_tokens(slot, seq, tokens, n);
    cudaStream_t s = stream_.get();
    StepState& staged = slot.ring->staged[entry];
    // The token lands in the slot's step state, where a device-fed next step reads it, and in the pinned ring.
    int32_t* token = &slot.step.get<StepState>()->token;
    // Greedy, or no top-k / top-p cut (gpt-oss's default): the unembedding draws the token itself (FusedSample);
    // no sampler launch re-reads the logits. A cut needs the cluster sampler's selects.
    const FusedSample fused{unembedding_sample_workspace_.get(), token, params.temperature, params.seed, draw};
    const FusedSample* in_unembedding =
        params.temperature == 0.0f || !params.cuts(cfg_.vocab_size) ? &fused : nullptr;
    if (device_fed) {
      staged.pos = slot.length;
      decode_step(slot, &staged, /*device_fed=*/true, /*wants_logits=*/true, in_unembedding);
    } else if (use_batched_prefill(n)) {
      prefill(slot, tokens, n, nullptr, false, in_unembedding);  // leaves the last token's logits in logits_
    } else if (n == 1) {
      staged = StepState{tokens[0], slot.length};
      decode_step(slot, &staged, /*device_fed=*/false, /*wants_logits=*/true, in_unembedding);
    } else {
      replay_tokens(slot, tokens, n, /*all_logits=*/false, nullptr, in_unembedding);
    }
    if (!in_unembedding)
      launch_sample(logits_.get<float>(), cfg_.vocab_size, params, draw, sample_workspace_.get(), token, s);
    CUDA_CHECK(cudaMemcpyAsync(&slot.ring->drawn[entry], token, sizeof(int32_t), cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaEventRecord(slot.done[entry].get(), s));
    slot.samples.push(device_fed);
  }

  int32_t collect_sample(int seq) override {
    std::lock_guard<std::mutex> lock(mu_);
    use_device();
    Slot& slot = live_slot(seq);
    const int entry = slot.samples.front(seq);
    CUDA_CHECK(cudaEventSynchronize(slot.done[entry].get()));  // this step's token, not the steps queued after it
    const int32_t token = slot.ring->drawn[entry];
    slot.samples.pop(seq, token >= 0);
    // The device sampler answers -1 for logits it cannot sample (NaN, +inf, or all -inf), as the CPU one throws.
    if (token < 0)
      throw std::runtime_error("sampling failed: the logits contain NaN or +inf, or every logit is -inf "
                               "(corrupt weights or an overflow); nothing was sampled");
    return token;
  }

  int outstanding_samples(int seq) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return const_cast<CudaBackend*>(this)->live_slot(seq).samples.outstanding();
  }

  bool runs_ahead() const override { return true; }

  // Host bookkeeping only (see the top of the file). With nothing outstanding every step of the slot was
  // collected or synchronised, and a later step runs after them on the stream anyway.
  void drop_last_token(int seq) override {
    std::lock_guard<std::mutex> lock(mu_);
    Slot& slot = live_slot(seq);
    require_droppable_last_token(seq, slot.length, slot.samples.outstanding(), slot.dropped_at);
    slot.dropped_at = --slot.length;
    slot.samples.forget_draw();
  }

 private:
  void use_device() const { CUDA_CHECK(cudaSetDevice(opts_.device)); }

  void select_device() {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
      cudaGetLastError();
      throw std::runtime_error(std::string("no CUDA device is available (") +
                               (e == cudaSuccess ? "none found" : cudaGetErrorString(e)) +
                               "): use backend='cpu' on this machine");
    }
    if (opts_.device < 0 || opts_.device >= count)
      throw std::invalid_argument("CUDA device " + std::to_string(opts_.device) + " does not exist (this machine has " +
                                  std::to_string(count) + "; pass device=0.." + std::to_string(count - 1) + ")");
    use_device();
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, opts_.device));
    device_name_ = prop.name;
    multiprocessors_ = prop.multiProcessorCount;
    cudaFuncAttributes attr{};
    if (const cudaError_t e = cudaFuncGetAttributes(&attr, embedding_gather_kernel); e != cudaSuccess) {
      cudaGetLastError();
      const std::string device = device_name_ + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
      if (e == cudaErrorInvalidDeviceFunction || e == cudaErrorNoKernelImageForDevice)
        throw std::runtime_error("this build has no kernels for " + device +
                                 ": rebuild with -DCMAKE_CUDA_ARCHITECTURES set for it (the default is 90a, Hopper)");
      throw std::runtime_error("cannot load the CUDA kernels on " + device + ": " + cudaGetErrorString(e));
    }
    cudaStream_t s = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    stream_.reset(s);
  }

  void check_config() const {
    const ModelConfig& c = cfg_;
    if (c.head_dim != kAttentionHeadDim)
      throw std::invalid_argument("the CUDA backend needs head_dim 64, the model has " + std::to_string(c.head_dim));
    if (c.num_attention_heads % c.num_key_value_heads != 0 ||
        c.num_attention_heads / c.num_key_value_heads > kAttentionMaxGroup)
      throw std::invalid_argument("the CUDA backend needs 1..8 query heads per KV head, the model has " +
                                  std::to_string(c.num_attention_heads) + " / " +
                                  std::to_string(c.num_key_value_heads));
    if (c.hidden_size % 8 != 0)
      throw std::invalid_argument("the CUDA backend needs hidden_size % 8 == 0, the model has " +
                                  std::to_string(c.hidden_size));
    const int max_positions = static_cast<int>(std::lround(c.initial_context_length * std::max(1.0f, c.rope_scaling_factor)));
    if (opts_.max_context < 1 || opts_.max_context > max_positions)
      throw std::invalid_argument("max_context must be in [1, " + std::to_string(max_positions) +
                                  "] (the model's RoPE range), got " + std::to_string(opts_.max_context));
    if (opts_.max_sequences < 1)
      throw std::invalid_argument("max_sequences must be >= 1, got " + std::to_string(opts_.max_sequences));
  }

  int layer_capacity(int layer) const {
    return cfg_.layer_is_sliding(layer) ? std::min(cfg_.sliding_window, opts_.max_context) : opts_.max_context;
  }

  size_t cache_bytes() const {
    size_t slots = 0;
    for (int l = 0; l < cfg_.num_layers; ++l) slots += layer_capacity(l);
    return slots * 2 * cfg_.num_key_value_heads * cfg_.head_dim * sizeof(bf16);
  }

  size_t rope_bytes() const { return static_cast<size_t>(opts_.max_context) * cfg_.head_dim * sizeof(float); }

  // Fails before any upload when the weights plus one sequence's cache cannot fit.
  void check_memory(const Weights& weights) const {
    size_t weight_bytes = 0;
    for (const auto& [name, view] : weights.all()) weight_bytes += view.numel() * dtype_bytes(view.dtype);
    const size_t needed = weight_bytes + cache_bytes() + rope_bytes() + (64u << 20);  // + activations, workspaces
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (needed > free_bytes)
      throw std::runtime_error("not enough GPU memory on " + name() + ": the weights need " + gib(weight_bytes) +
                               " and one sequence's KV cache at max_context=" + std::to_string(opts_.max_context) +
                               " needs " + gib(cache_bytes()) + " (" + gib(needed) + " in all), but only " +
                               gib(free_bytes) + " of " + gib(total_bytes) +
                               " is free: lower max_context or free the GPU");
  }

  // The bound on mlp1's input (MoeRoute::x_bound) from this layer's norm scale; a non-finite scale is a corrupt
  // checkpoint.
  static float mlp_input_bound(const TensorView& scale, const std::string& name) {
    try {
      return rmsnorm_output_bound(static_cast<const float*>(scale.data), static_cast<int>(scale.numel()));
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(name + ": " + e.what());
    }
  }

  DeviceBuffer upload(const Weights& w, const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
    const TensorView& v = w.get(name, dtype, shape);
    return DeviceBuffer::from_host(v.data, v.numel() * dtype_bytes(dtype));
  }

  void upload_weights(const Weights& w) {
    const ModelConfig& c = cfg_;
    const int64_t H = c.hidden_size, E = c.num_experts, I = c.intermediate_size, V = c.vocab_size;
    const int64_t Q = c.num_attention_heads, D = c.head_dim, qkv = c.qkv_dim();
    embedding_ = upload(w, "embedding.weight", DType::bf16, {V, H});
    final_norm_ = upload(w, "norm.scale", DType::f32, {H});
    unembedding_ = upload_unembedding_packed(
        static_cast<const bf16*>(w.get("unembedding.weight", DType::bf16, {V, H}).data), static_cast<int>(V),
        static_cast<int>(H));
    layers_.resize(c.num_layers);
    for (int l = 0; l < c.num_layers; ++l) {
      const std::string p = "block." + std::to_string(l) + ".";
      LayerWeights& L = layers_[l];
      L.attn_norm = upload(w, p + "attn.norm.scale", DType::f32, {H});
      L.qkv_w = upload(w, p + "attn.qkv.weight", DType::bf16, {qkv, H});
      L.qkv_b = upload(w, p + "attn.qkv.bias", DType::bf16, {qkv});
      L.sinks = upload(w, p + "attn.sinks", DType::f32, {Q});
      L.out_w = upload(w, p + "attn.out.weight", DType::bf16, {H, Q * D});
      L.out_b = upload(w, p + "attn.out.bias", DType::bf16, {H});
      L.mlp_norm = upload(w, p + "mlp.norm.scale", DType::f32, {H});
      L.mlp_norm_bound = mlp_input_bound(w.get(p + "mlp.norm.scale", DType::f32, {H}), p + "mlp.norm.scale");
      L.gate_w = upload(w, p + "mlp.gate.weight", DType::bf16, {E, H});
      L.gate_b = upload(w, p + "mlp.gate.bias", DType::bf16, {E});
      L.mlp1 = upload_experts(w, p + "mlp.mlp1", 2 * I, H);
      L.mlp2 = upload_experts(w, p + "mlp.mlp2", H, I);
      L.attention_splits = attention_decode_max_splits(c.num_key_value_heads, layer_capacity(l), multiprocessors_);
      L.attention_splits_short = attention_decode_max_splits(
          c.num_key_value_heads, std::min(layer_capacity(l), attention_decode_short_length()), multiprocessors_);
      short_graph_differs_ |= L.attention_splits_short != L.attention_splits;
    }
    const std::vector<float> rope = yarn_rope_table(c, opts_.max_context);
    rope_ = DeviceBuffer::from_host(rope.data(), rope.size() * sizeof(float));
  }

  Mxfp4Experts upload_experts(const Weights& w, const std::string& prefix, int64_t rows, int64_t cols) {
    const int64_t E = cfg_.num_experts;
    const TensorView& blocks = w.get(prefix + "_weight.blocks", DType::u8, {E, rows, cols / 32, 16});
    const TensorView& scales = w.get(prefix + "_weight.scales", DType::u8, {E, rows, cols / 32});
    const TensorView& bias = w.get(prefix + "_bias", DType::bf16, {E, rows});
    return upload_mxfp4_experts(static_cast<const uint8_t*>(blocks.data), static_cast<const uint8_t*>(scales.data),
                                static_cast<const uint16_t*>(bias.data), static_cast<int>(E), static_cast<int>(rows),
                                static_cast<int>(cols));
  }

  // Screened sampling's int8 copy of the unembedding (ScreenedUnembedding: the fused draw then streams half the
  // unembedding's bytes, 0.60 GB for gpt-oss), where it fits beside one sequence's cache.
  void build_screen() {
    if (!screening_enabled()) return;
    if (!screened_sampling_fits(cfg_.hidden_size)) {
      std::fprintf(stderr, "gpt_oss_native: screened sampling does not take hidden_size %d (it stages the input in "
                   "shared memory): each draw streams the whole unembedding instead\n", cfg_.hidden_size);
      return;
    }
    const size_t bytes = screened_unembedding_bytes(cfg_.vocab_size, cfg_.hidden_size);
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (bytes + cache_bytes() + (64u << 20) > free_bytes) {
      std::fprintf(stderr, "gpt_oss_native: screened sampling needs %s of GPU memory beside one sequence's cache and "
                   "%s is free: each draw streams the whole unembedding instead\n", gib(bytes).c_str(),
                   gib(free_bytes).c_str());
      return;
    }
    screened_ = build_screened_unembedding(unembedding_.get<bf16>(), cfg_.vocab_size, cfg_.hidden_size);
  }

  // The unembedding of the final residual row x: the logits into logits_, and with sample its fused draw. With the
  // screened copy a draw is made from it instead and logits_ is left as it was: nothing reads it after a fused draw.
  void unembed(const float* x, const FusedSample* sample) {
    if (sample && screened_.vocab) {
      launch_screened_sample(screened_, unembedding_.get<bf16>(), final_norm_.get<float>(), x, cfg_.norm_eps, *sample,
                             stream_.get());
      return;
    }
    launch_unembedding(unembedding_.get<bf16>(), final_norm_.get<float>(), x, cfg_.vocab_size, cfg_.hidden_size,
                       cfg_.norm_eps, logits_.get<float>(), sample, stream_.get());
  }

  void allocate_activations() {
    const ModelConfig& c = cfg_;
    const int k = c.experts_per_token;
    int max_splits = 1;
    for (const LayerWeights& L : layers_) max_splits = std::max(max_splits, L.attention_splits);
    x_ = DeviceBuffer(sizeof(float) * c.hidden_size);
    q_ = DeviceBuffer(sizeof(float) * c.num_attention_heads * c.head_dim);
    attn_ = DeviceBuffer(sizeof(bf16) * c.num_attention_heads * c.head_dim);
    router_workspace_ = DeviceBuffer(router_tail_workspace_bytes(c.hidden_size, c.num_experts));
    act_ = DeviceBuffer(sizeof(bf16) * k * c.intermediate_size);
    act_bound_ = swiglu_act_bound(c.swiglu_alpha, c.swiglu_limit);
    logits_ = DeviceBuffer(sizeof(float) * c.vocab_size);
    attention_workspace_ = DeviceBuffer(attention_decode_workspace_bytes(c.num_attention_heads, max_splits));
    attention_counters_ = DeviceBuffer(sizeof(int) * c.num_key_value_heads);
    CUDA_CHECK(cudaMemset(attention_counters_.get(), 0, attention_counters_.bytes()));
    sample_workspace_ = DeviceBuffer(sample_workspace_bytes(c.vocab_size));
    unembedding_sample_workspace_ = DeviceBuffer(unembedding_sample_workspace_bytes());
    CUDA_CHECK(cudaMemset(unembedding_sample_workspace_.get(), 0, unembedding_sample_workspace_.bytes()));
    void* pinned = nullptr;
    CUDA_CHECK(cudaMallocHost(&pinned, sizeof(StepState) * opts_.max_context));
    host_steps_.reset(pinned);
    host_steps_read_ = new_event();
    slots_.resize(opts_.max_sequences);
  }

  static EventPtr new_event() {
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return EventPtr(e);
  }

  // A slot's KV cache, step state and submission ring, kept for the slot's next sequences. The cache goes last:
  // a slot counts as allocated once it has one.
  void allocate_slot(Slot& slot) {
    slot.step = DeviceBuffer(sizeof(StepState));
    void* pinned = nullptr;
    CUDA_CHECK(cudaMallocHost(&pinned, sizeof(SubmissionRing)));
    slot.ring.reset(static_cast<SubmissionRing*>(pinned));
    for (EventPtr& e : slot.done) e = new_event();
    const size_t bytes = cache_bytes();
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (bytes > free_bytes)
      throw std::runtime_error("not enough GPU memory for another sequence's KV cache: it needs " + gib(bytes) +
                               " at max_context=" + std::to_string(opts_.max_context) + ", " + gib(free_bytes) +
                               " is free: free a sequence or lower max_context");
    slot.kv = DeviceBuffer(bytes);
    slot.layers.clear();
    bf16* at = slot.kv.get<bf16>();
    for (int l = 0; l < cfg_.num_layers; ++l) {
      KvLayerCache layer;
      layer.capacity = layer_capacity(l);
      const size_t per = static_cast<size_t>(cfg_.num_key_value_heads) * layer.capacity * cfg_.head_dim;
      layer.k = at;
      layer.v = at + per;
      at += 2 * per;
      slot.layers.push_back(layer);
    }
  }

  Slot& live_slot(int seq) {
    if (seq < 0 || seq >= static_cast<int>(slots_.size()) || !slots_[seq].live)
      throw std::invalid_argument("sequence " + std::to_string(seq) + " does not exist (freed or never created)");
    return slots_[seq];
  }

  // tokens == nullptr: one device-fed token, whose range the host cannot check (the embedding clamps it).
  void check_tokens(const Slot& slot, int seq, const int32_t* tokens, int n) const {
    if (n < 1) throw std::invalid_argument("forward needs at least one token");
    if (slot.length + static_cast<int64_t>(n) > opts_.max_context)
      throw std::length_error("sequence " + std::to_string(seq) + " would reach " + std::to_string(slot.length + n) +
                              " tokens, past max_context " + std::to_string(opts_.max_context));
    for (int i = 0; tokens && i < n; ++i)
      if (tokens[i] < 0 || tokens[i] >= cfg_.vocab_size)
        throw std::invalid_argument("token " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                                    " is outside the vocabulary [0, " + std::to_string(cfg_.vocab_size) + ")");
  }

  // Host tokens through the decode graph one at a time (inputs the batched prefill does not take). Their states
  // are staged in host_steps_; a submit returns before its copies ran, so a later use first waits for them
  // (host_steps_read_ is recorded after the last one). Logits of the rows asked for (every row with all_logits,
  // else the last) land in logits_ and, when host_logits is given, there. With sample, the last row's unembedding
  // also writes the sampled token.
  void replay_tokens(Slot& slot, const int32_t* tokens, int n, bool all_logits, float* host_logits,
                     const FusedSample* sample) {
    CUDA_CHECK(cudaEventSynchronize(host_steps_read_.get()));
    StepState* staged = static_cast<StepState*>(host_steps_.get());
    for (int i = 0; i < n; ++i) {
      const bool wants_logits = all_logits || i == n - 1;
      staged[i] = StepState{tokens[i], slot.length};
      decode_step(slot, &staged[i], /*device_fed=*/false, wants_logits, i == n - 1 ? sample : nullptr);
      if (wants_logits && host_logits) {
        float* dst = host_logits + (all_logits ? static_cast<size_t>(i) * cfg_.vocab_size : 0);
        CUDA_CHECK(cudaMemcpyAsync(dst, logits_.get(), sizeof(float) * cfg_.vocab_size, cudaMemcpyDeviceToHost,
                                   stream_.get()));
      }
    }
    CUDA_CHECK(cudaEventRecord(host_steps_read_.get(), stream_.get()));
  }

  // One token through every layer. `staged` (pinned, left untouched until the copy has run) holds the step's
  // state: all of it goes to the slot's step state, or only its pos when device_fed (the previous step's sampler
  // wrote the token there). With sample (and wants_logits), the unembedding also writes the sampled token.
  void decode_step(Slot& slot, const StepState* staged, bool device_fed, bool wants_logits,
                   const FusedSample* sample) {
    StepState* step = slot.step.get<StepState>();
    if (device_fed) {
      CUDA_CHECK(cudaMemcpyAsync(&step->pos, &staged->pos, sizeof(int32_t), cudaMemcpyHostToDevice, stream_.get()));
    } else {
      CUDA_CHECK(cudaMemcpyAsync(step, staged, sizeof(StepState), cudaMemcpyHostToDevice, stream_.get()));
    }
    // Short sequences take the short-cache attention grid (attention_decode.cu): a graph of their own.
    const bool short_grid = short_graph_differs_ && staged->pos < attention_decode_short_length();
    if (!warmed_up_) {
      // The first step runs eagerly so lazy one-time setup inside launchers happens outside any capture.
      enqueue_layers(slot, short_grid);
      warmed_up_ = true;
    } else {
      GraphExecPtr& graph = short_grid ? slot.graph_short : slot.graph;
      if (!graph) graph = capture(slot, short_grid);
      CUDA_CHECK(cudaGraphLaunch(graph.get(), stream_.get()));
    }
    ++slot.length;
    if (wants_logits) unembed(x_.get<float>(), sample);
  }

  bool use_batched_prefill(int n) {
    const PrefillMode mode = prefill_mode();
    if (mode == PrefillMode::replay || n < (mode == PrefillMode::batched ? 2 : kBatchedPrefillMinTokens)) return false;
    return allocate_prefill_scratch();
  }

  // The batched path's scratch, sized for kPrefillChunk tokens, allocated on its first use. Where it does not
  // fit (a cache sized to the last GiB), prefill replays the decode graph per token instead, saying so once.
  bool allocate_prefill_scratch() {
    if (prefill_ready_) return true;
    if (prefill_unavailable_) return false;
    const ModelConfig& c = cfg_;
    const size_t C = kPrefillChunk, H = c.hidden_size, I = c.intermediate_size, Q = c.num_attention_heads * c.head_dim;
    const size_t KV = static_cast<size_t>(c.num_key_value_heads) * c.head_dim, pairs = C * c.experts_per_token;
    const size_t staged_cols = static_cast<size_t>(ceil_div(std::max(c.hidden_size, c.intermediate_size), 64)) * 64;
    const size_t max_tiles = prefill_group_max_tiles(static_cast<int>(pairs), c.num_experts, kMoePrefillTileTokens);
    const std::pair<DeviceBuffer*, size_t> buffers[] = {
        {&prefill_tokens_, C * sizeof(int32_t)},
        {&prefill_x_, C * H * sizeof(float)},
        {&prefill_xn_, C * H * sizeof(bf16)},
        {&prefill_xn_lo_, C * H * sizeof(bf16)},
        {&prefill_qkv_, C * c.qkv_dim() * sizeof(float)},
        {&prefill_q_, C * Q * sizeof(float)},
        {&prefill_k_, C * KV * sizeof(bf16)},
        {&prefill_v_, C * KV * sizeof(bf16)},
        {&prefill_attn_, C * Q * sizeof(bf16)},
        {&prefill_gate_, C * c.num_experts * sizeof(float)},
        {&prefill_ids_, pairs * sizeof(int32_t)},
        {&prefill_weights_, pairs * sizeof(float)},
        {&prefill_order_, pairs * sizeof(int32_t)},
        {&prefill_sorted_of_, pairs * sizeof(int32_t)},
        {&prefill_up_, std::max(C, pairs) * sizeof(float)},
        {&prefill_tiles_, max_tiles * sizeof(int4)},
        {&prefill_tile_count_, sizeof(int32_t)},
        {&prefill_staged_, std::max(C, pairs) * staged_cols * sizeof(__half)},
        {&prefill_act_, pairs * I * sizeof(bf16)},
        {&prefill_y_, pairs * H * sizeof(float)},
    };
    size_t bytes = 0;
    for (const auto& [buffer, size] : buffers) bytes += size;
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (bytes + (64u << 20) > free_bytes) {  // leave room for the decode path's own small allocations
      std::fprintf(stderr, "gpt_oss_native: the batched prefill needs %s of GPU scratch and %s is free: prompts "
                   "are prefilled token by token (lower max_context for the fast path)\n", gib(bytes).c_str(),
                   gib(free_bytes).c_str());
      prefill_unavailable_ = true;
      return false;
    }
    for (const auto& [buffer, size] : buffers) *buffer = DeviceBuffer(size);
    prefill_ready_ = true;
    return true;
  }

  // n tokens at the slot's end through the batched kernels, kPrefillChunk at a time. Logits of the rows asked
  // for (every row with all_logits, else the last) land in logits_ and, when host_logits is given, there. With
  // sample, the last row's unembedding also writes the sampled token.
  void prefill(Slot& slot, const int32_t* tokens, int n, float* host_logits, bool all_logits,
               const FusedSample* sample) {
    cudaStream_t s = stream_.get();
    for (int c0 = 0; c0 < n; c0 += kPrefillChunk) {
      const int T = std::min(kPrefillChunk, n - c0);
      // Pageable source: the copy has read it when the call returns, so `tokens` may go away afterwards.
      CUDA_CHECK(cudaMemcpyAsync(prefill_tokens_.get(), tokens + c0, sizeof(int32_t) * T, cudaMemcpyHostToDevice, s));
      enqueue_prefill_chunk(slot, slot.length, T);
      slot.length += T;
      const int first_row = all_logits ? 0 : (c0 + T == n ? T - 1 : T);  // else only the last chunk's last row
      for (int t = first_row; t < T; ++t) {
        unembed(prefill_x_.get<float>() + static_cast<size_t>(t) * cfg_.hidden_size,
                c0 + t == n - 1 ? sample : nullptr);
        if (host_logits) {
          float* dst = host_logits + (all_logits ? static_cast<size_t>(c0 + t) * cfg_.vocab_size : 0);
          // Pageable destination: returns once the row is on the host, so logits_ may be reused next.
          CUDA_CHECK(cudaMemcpyAsync(dst, logits_.get(), sizeof(float) * cfg_.vocab_size, cudaMemcpyDeviceToHost, s));
        }
      }
    }
  }

  // One chunk of T tokens at positions pos0 .. pos0 + T - 1 through every layer (prefill_x_ holds the final
  // residual stream afterwards).
  void enqueue_prefill_chunk(const Slot& slot, int pos0, int T) {
    const ModelConfig& c = cfg_;
    cudaStream_t s = stream_.get();
    const int H = c.hidden_size, k = c.experts_per_token, E = c.num_experts, pairs = T * k;
    const int Q = c.num_attention_heads, KV = c.num_key_value_heads;
    const int max_tiles = prefill_group_max_tiles(pairs, E, kMoePrefillTileTokens);
    float* x = prefill_x_.get<float>();
    bf16* xn = prefill_xn_.get<bf16>();
    bf16* xn_lo = prefill_xn_lo_.get<bf16>();
    launch_prefill_embedding(embedding_.get<bf16>(), prefill_tokens_.get<int32_t>(), T, H, x, s);
    for (int l = 0; l < c.num_layers; ++l) {
      const LayerWeights& L = layers_[l];
      // The qkv input keeps ~16 bits (xn + xn_lo), as decode's norm_qkv_rope keeps it in fp32.
      launch_prefill_rmsnorm(x, L.attn_norm.get<float>(), T, H, c.norm_eps, xn, xn_lo, s);
      launch_prefill_gemm_bf16(L.qkv_w.get<bf16>(), L.qkv_b.get<bf16>(), xn, xn_lo, c.qkv_dim(), H, T,
                               prefill_qkv_.get<float>(), c.qkv_dim(), /*accumulate=*/false, s);
      launch_prefill_rope(prefill_qkv_.get<float>(), rope_.get<float2>(), pos0, T, Q, KV, prefill_q_.get<float>(),
                          prefill_k_.get<bf16>(), prefill_v_.get<bf16>(), s);
      PrefillAttentionParams ap;
      ap.q = prefill_q_.get<float>();
      ap.k_chunk = prefill_k_.get<bf16>();
      ap.v_chunk = prefill_v_.get<bf16>();
      ap.cache = slot.layers[l];
      ap.sinks = L.sinks.get<float>();
      ap.out = prefill_attn_.get<bf16>();
      ap.pos0 = pos0;
      ap.T = T;
      ap.q_heads = Q;
      ap.kv_heads = KV;
      ap.window = c.layer_is_sliding(l) ? c.sliding_window : 0;
      ap.sm_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
      launch_prefill_attention(ap, s);
      launch_prefill_kv_commit(prefill_k_.get<bf16>(), prefill_v_.get<bf16>(), pos0, T, KV, slot.layers[l], s);
      launch_prefill_gemm_bf16(L.out_w.get<bf16>(), L.out_b.get<bf16>(), prefill_attn_.get<bf16>(), nullptr, H, Q * c.head_dim,
                               T, x, H, /*accumulate=*/true, s);

      launch_prefill_rmsnorm(x, L.mlp_norm.get<float>(), T, H, c.norm_eps, xn, nullptr, s);  // bf16, as the router
      launch_prefill_gemm_bf16(L.gate_w.get<bf16>(), L.gate_b.get<bf16>(), xn, nullptr, E, H, T, prefill_gate_.get<float>(), E,
                               /*accumulate=*/false, s);
      launch_prefill_topk_softmax(prefill_gate_.get<float>(), T, E, k, prefill_ids_.get<int32_t>(),
                                  prefill_weights_.get<float>(), s);
      launch_prefill_group_experts(prefill_ids_.get<int32_t>(), pairs, E, kMoePrefillTileTokens,
                                   prefill_order_.get<int32_t>(), prefill_sorted_of_.get<int32_t>(),
                                   prefill_tiles_.get<int4>(), prefill_tile_count_.get<int32_t>(), s);
      launch_moe_prefill_stage(xn, T, H, prefill_staged_.get<__half>(), prefill_up_.get<float>(), s);
      launch_bf16_mxfp4w_moe_prefill_mlp1_swiglu(prefill_staged_.get<__half>(), prefill_up_.get<float>(),
                                                 prefill_order_.get<int32_t>(), k, prefill_tiles_.get<int4>(),
                                                 prefill_tile_count_.get<int32_t>(), max_tiles, L.mlp1,
                                                 c.swiglu_alpha, c.swiglu_limit, prefill_act_.get<bf16>(), s);
      launch_moe_prefill_stage(prefill_act_.get<bf16>(), pairs, c.intermediate_size, prefill_staged_.get<__half>(),
                               prefill_up_.get<float>(), s);
      launch_bf16_mxfp4w_moe_prefill_mlp2(prefill_staged_.get<__half>(), prefill_up_.get<float>(),
                                          prefill_tiles_.get<int4>(), prefill_tile_count_.get<int32_t>(), max_tiles,
                                          L.mlp2, prefill_y_.get<float>(), s);
      launch_prefill_moe_combine(prefill_y_.get<float>(), prefill_sorted_of_.get<int32_t>(),
                                 prefill_weights_.get<float>(), T, k, H, x, s);
    }
  }

  GraphExecPtr capture(const Slot& slot, bool short_grid) {
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamBeginCapture(stream_.get(), cudaStreamCaptureModeThreadLocal));
    try {
      enqueue_layers(slot, short_grid);
    } catch (...) {
      cudaStreamEndCapture(stream_.get(), &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(stream_.get(), &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    CUDA_CHECK(e);
    return GraphExecPtr(exec);
  }

  void enqueue_layers(const Slot& slot, bool short_grid) {
    const ModelConfig& c = cfg_;
    cudaStream_t s = stream_.get();
    const StepState* step = slot.step.get<StepState>();
    const int* d_token = &step->token;
    const int* d_pos = &step->pos;
    float* x = x_.get<float>();
    embedding_gather_kernel<<<ceil_div(c.hidden_size, 256), 256, 0, s>>>(embedding_.get<bf16>(), d_token,
                                                                          c.vocab_size, c.hidden_size, x);
    CUDA_CHECK_LAUNCH();
    for (int l = 0; l < c.num_layers; ++l) {
      const LayerWeights& L = layers_[l];
      NormRopeParams np;
      np.x = x;
      np.norm_scale = L.attn_norm.get<float>();
      np.w = L.qkv_w.get<bf16>();
      np.bias = L.qkv_b.get<bf16>();
      np.rope = rope_.get<float2>();
      np.pos = d_pos;
      np.q = q_.get<float>();
      np.cache = slot.layers[l];
      np.hidden = c.hidden_size;
      np.q_heads = c.num_attention_heads;
      np.kv_heads = c.num_key_value_heads;
      np.head_dim = c.head_dim;
      np.eps = c.norm_eps;
      launch_norm_qkv_rope(np, s);

      AttentionDecodeParams ap;
      ap.q = q_.get<float>();
      ap.cache = slot.layers[l];
      ap.sinks = L.sinks.get<float>();
      ap.pos = d_pos;
      ap.out = attn_.get<bf16>();
      ap.workspace = attention_workspace_.get<float>();
      ap.counters = attention_counters_.get<int>();
      ap.q_heads = c.num_attention_heads;
      ap.kv_heads = c.num_key_value_heads;
      ap.max_splits = short_grid ? L.attention_splits_short : L.attention_splits;
      ap.sm_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
      launch_attention_decode(ap, s);

      // The out-projection leaves the router's partials in its tail (RouterTail); mlp1 and mlp2 finish the
      // routing themselves (MoeRoute), and mlp1 normalises the residual.
      RouterTail router;
      router.norm_scale = L.mlp_norm.get<float>();
      router.gate_w = L.gate_w.get<bf16>();
      router.experts = c.num_experts;
      router.workspace = router_workspace_.get();
      launch_bf16_gemv_bias_residual(L.out_w.get<bf16>(), L.out_b.get<bf16>(), attn_.get<bf16>(),
                                     /*rows=*/c.hidden_size, /*cols=*/c.num_attention_heads * c.head_dim, x, &router,
                                     s);
      MoeRoute route;
      route.workspace = router_workspace_.get();
      route.gate_b = L.gate_b.get<bf16>();
      route.residual = x;
      route.norm_scale = L.mlp_norm.get<float>();
      route.eps = c.norm_eps;
      route.x_bound = L.mlp_norm_bound;
      launch_bf16_mxfp4w_moe_mlp1_swiglu(route, c.experts_per_token, L.mlp1, c.swiglu_alpha, c.swiglu_limit,
                                         act_.get<bf16>(), s);
      launch_bf16_mxfp4w_moe_mlp2_residual(act_.get<bf16>(), act_bound_, route, c.experts_per_token, L.mlp2, x, s);
    }
  }

  ModelConfig cfg_;
  BackendOptions opts_;
  std::string device_name_;
  int multiprocessors_ = 0;
  mutable std::mutex mu_;
  StreamPtr stream_;

  DeviceBuffer embedding_, final_norm_, unembedding_, rope_;
  ScreenedUnembedding screened_;  // empty (vocab 0) when screened sampling is off
  std::vector<LayerWeights> layers_;

  DeviceBuffer x_, q_, attn_, router_workspace_, act_, logits_;
  float act_bound_ = 0.f;  // the largest |act| mlp1 can write: mlp2 stages act at one fp16 scale
  DeviceBuffer attention_workspace_, attention_counters_, sample_workspace_, unembedding_sample_workspace_;
  std::unique_ptr<void, PinnedDeleter> host_steps_;  // StepState[max_context]: replay_tokens' staging
  EventPtr host_steps_read_;                         // recorded after the copies of host_steps_' last use

  DeviceBuffer prefill_tokens_, prefill_x_, prefill_xn_, prefill_xn_lo_, prefill_qkv_, prefill_q_, prefill_k_, prefill_v_, prefill_attn_;
  DeviceBuffer prefill_gate_, prefill_ids_, prefill_weights_, prefill_order_, prefill_sorted_of_, prefill_up_;
  DeviceBuffer prefill_tiles_, prefill_tile_count_, prefill_staged_, prefill_act_, prefill_y_;
  bool prefill_ready_ = false, prefill_unavailable_ = false;

  std::vector<Slot> slots_;
  bool warmed_up_ = false;
  bool short_graph_differs_ = false;  // some layer's attention_splits_short != attention_splits
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& config, const Weights& weights,
                                           const BackendOptions& options) {
  config.validate();
  return std::make_unique<CudaBackend>(config, weights, options);
}

}  // namespace gpt_oss

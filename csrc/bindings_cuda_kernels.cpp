// Test surface of the CUDA kernels: `_C.cuda_kernels.<stem>(numpy arrays...) -> numpy arrays`. Each entry
// copies its inputs to the device, launches one kernel family's public launcher, synchronises and copies the
// outputs back, so tests/kernels/ can compare every kernel with a float64 NumPy reference. Built only with
// the CUDA backend; nothing on the decode path goes through here.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

// ---- forward-path kernels (cuda-forward): norm_rope, attention_decode ----
#include <memory>
#include <vector>

#include "cuda/attention_decode.h"
#include "cuda/norm_rope.h"

// ---- weight-streaming kernels (cuda-weights) ----
#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>

#include "cpu/numerics.h"
#include "cuda/gemv_bf16.h"
#include "cuda/moe_mxfp4.h"
#include "cuda/sampling.h"

// ---- batched prefill kernels ----
#include "cuda/prefill.h"

namespace nb = nanobind;

namespace gpt_oss {
namespace {

// Host <-> device plumbing shared by every kernel-test entry below.
template <typename T>
using Array = nb::ndarray<const T, nb::c_contig, nb::device::cpu>;

template <typename T>
DeviceBuffer upload(const Array<T>& a) {
  return DeviceBuffer::from_host(a.data(), a.size() * sizeof(T));
}

// A [vocab, hidden] bf16 unembedding, packed in its kernel's load order as the model stores it.
DeviceBuffer upload_unembedding(const Array<uint16_t>& w) {
  return upload_unembedding_packed(reinterpret_cast<const bf16*>(w.data()), static_cast<int>(w.shape(0)),
                                   static_cast<int>(w.shape(1)));
}

// 0xFF bytes: NaN for fp32 / bf16 / fp16, -1 for int32, so an unwritten output never passes for a result.
DeviceBuffer poisoned(size_t bytes) {
  DeviceBuffer d(bytes);
  CUDA_CHECK(cudaMemset(d.get(), 0xFF, bytes));
  return d;
}

// A NumPy array of `shape` filled by fill(dst, count).
template <typename T, typename Fill>
nb::ndarray<nb::numpy, T> numpy_array(std::vector<size_t> shape, Fill fill) {
  size_t n = 1;
  for (size_t s : shape) n *= s;
  auto host = std::make_unique<T[]>(std::max<size_t>(n, 1));
  fill(host.get(), n);
  T* raw = host.release();
  nb::capsule owner(raw, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  return nb::ndarray<nb::numpy, T>(raw, shape.size(), shape.data(), owner);
}

template <typename T>
nb::ndarray<nb::numpy, T> download(const DeviceBuffer& d, std::vector<size_t> shape) {
  return numpy_array<T>(std::move(shape), [&](T* dst, size_t n) {
    CUDA_CHECK(cudaMemcpy(dst, d.get(), n * sizeof(T), cudaMemcpyDeviceToHost));
  });
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

// The YaRN table (core/rope.h, the one definition the backends use) for positions [0, positions) on the device.
DeviceBuffer device_rope_table(int head_dim, float theta, float scaling_factor, int initial_context_length,
                               float ntk_alpha, float ntk_beta, int positions) {
  ModelConfig c;
  c.head_dim = head_dim;
  c.rope_theta = theta;
  c.rope_scaling_factor = scaling_factor;
  c.initial_context_length = initial_context_length;
  c.rope_ntk_alpha = ntk_alpha;
  c.rope_ntk_beta = ntk_beta;
  const std::vector<float> table = yarn_rope_table(c, positions);
  return DeviceBuffer::from_host(table.data(), table.size() * sizeof(float));
}

}  // namespace

// ---- forward-path kernels (cuda-forward): norm_rope, attention_decode ----
namespace forward_kernel_tests {

DeviceBuffer device_int(int value) { return DeviceBuffer::from_host(&value, sizeof(int)); }

// q fp32 [q_heads * head_dim], k_cache and v_cache (bf16 as uint16 [kv_heads, capacity, head_dim]) after one
// launch of launch_norm_qkv_rope at `pos`; the caches come back whole so tests see every slot.
nb::tuple norm_qkv_rope(Array<float> x, Array<float> norm_scale, Array<uint16_t> w,
                        Array<uint16_t> bias, int q_heads, int kv_heads, int head_dim, int pos,
                        Array<uint16_t> k_cache, Array<uint16_t> v_cache, float rope_theta,
                        float rope_scaling_factor, int initial_context_length, float rope_ntk_alpha,
                        float rope_ntk_beta, float eps) {
  if (k_cache.ndim() != 3 || v_cache.ndim() != 3 || k_cache.shape(0) != static_cast<size_t>(kv_heads) ||
      k_cache.shape(2) != static_cast<size_t>(head_dim) || v_cache.size() != k_cache.size())
    throw std::invalid_argument("k_cache / v_cache must both be [kv_heads, capacity, head_dim]");
  const int hidden = static_cast<int>(x.size());
  const size_t rows = static_cast<size_t>(q_heads + 2 * kv_heads) * head_dim;
  if (w.size() != rows * hidden || bias.size() != rows || norm_scale.size() != static_cast<size_t>(hidden))
    throw std::invalid_argument("w must be [(q_heads + 2 kv_heads) * head_dim, hidden] and bias its rows");
  DeviceBuffer d_rope = device_rope_table(head_dim, rope_theta, rope_scaling_factor, initial_context_length,
                                         rope_ntk_alpha, rope_ntk_beta, pos + 1);

  DeviceBuffer d_x = upload(x), d_scale = upload(norm_scale), d_w = upload(w), d_bias = upload(bias);
  DeviceBuffer d_k = upload(k_cache), d_v = upload(v_cache), d_pos = device_int(pos);
  DeviceBuffer d_q = poisoned(sizeof(float) * q_heads * head_dim);
  NormRopeParams p;
  p.x = d_x.get<float>();
  p.norm_scale = d_scale.get<float>();
  p.w = d_w.get<bf16>();
  p.bias = d_bias.get<bf16>();
  p.rope = d_rope.get<float2>();
  p.pos = d_pos.get<int>();
  p.q = d_q.get<float>();
  p.cache = KvLayerCache{d_k.get<bf16>(), d_v.get<bf16>(), static_cast<int>(k_cache.shape(1))};
  p.hidden = hidden;
  p.q_heads = q_heads;
  p.kv_heads = kv_heads;
  p.head_dim = head_dim;
  p.eps = eps;
  launch_norm_qkv_rope(p, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<size_t> cache_shape{k_cache.shape(0), k_cache.shape(1), k_cache.shape(2)};
  return nb::make_tuple(download<float>(d_q, {static_cast<size_t>(q_heads) * head_dim}),
                        download<uint16_t>(d_k, cache_shape), download<uint16_t>(d_v, cache_shape));
}

// out bf16 (as uint16) [q_heads * 64] of launch_attention_decode, launched twice on the same counters (the
// second launch checks that the in-launch combine re-arms them); returns (first, second).
nb::tuple attention_decode(Array<float> q, Array<uint16_t> k_cache, Array<uint16_t> v_cache,
                           Array<float> sinks, int pos, int max_splits) {
  if (k_cache.ndim() != 3 || v_cache.size() != k_cache.size() || k_cache.shape(2) != kAttentionHeadDim)
    throw std::invalid_argument("k_cache / v_cache must both be [kv_heads, capacity, 64]");
  const int kv_heads = static_cast<int>(k_cache.shape(0)), capacity = static_cast<int>(k_cache.shape(1));
  const int q_heads = static_cast<int>(sinks.size());
  if (q.size() != static_cast<size_t>(q_heads) * kAttentionHeadDim)
    throw std::invalid_argument("q must be [q_heads * 64] with q_heads = len(sinks)");
  if (max_splits <= 0) {
    int device = 0, sms = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    max_splits = attention_decode_max_splits(kv_heads, capacity, sms);
  }
  DeviceBuffer d_q = upload(q), d_k = upload(k_cache), d_v = upload(v_cache), d_sinks = upload(sinks);
  DeviceBuffer d_pos = device_int(pos);
  DeviceBuffer workspace = poisoned(attention_decode_workspace_bytes(q_heads, max_splits));
  DeviceBuffer counters(sizeof(int) * kv_heads);
  CUDA_CHECK(cudaMemset(counters.get(), 0, counters.bytes()));
  const size_t out_elems = static_cast<size_t>(q_heads) * kAttentionHeadDim;
  DeviceBuffer first = poisoned(out_elems * sizeof(bf16)), second = poisoned(out_elems * sizeof(bf16));
  AttentionDecodeParams p;
  p.q = d_q.get<float>();
  p.cache = KvLayerCache{d_k.get<bf16>(), d_v.get<bf16>(), capacity};
  p.sinks = d_sinks.get<float>();
  p.pos = d_pos.get<int>();
  p.workspace = workspace.get<float>();
  p.counters = counters.get<int>();
  p.q_heads = q_heads;
  p.kv_heads = kv_heads;
  p.max_splits = max_splits;
  p.sm_scale = 1.0f / 8.0f;
  p.out = first.get<bf16>();
  launch_attention_decode(p, nullptr);
  p.out = second.get<bf16>();
  launch_attention_decode(p, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  return nb::make_tuple(download<uint16_t>(first, {out_elems}), download<uint16_t>(second, {out_elems}));
}

}  // namespace forward_kernel_tests

// ---- weight-streaming kernels (cuda-weights): moe_mxfp4, gemv_bf16, sampling ----
namespace weight_kernel_tests {

// blocks [E, rows, cols/32, 16] u8, scales [E, rows, cols/32] u8, bias [E, rows] bf16 → device experts.
Mxfp4Experts experts_from(const Array<uint8_t>& blocks, const Array<uint8_t>& scales, const Array<uint16_t>& bias) {
  require(blocks.ndim() == 4 && blocks.shape(3) == 16 && scales.ndim() == 3 && bias.ndim() == 2,
          "blocks must be [E, rows, cols/32, 16], scales [E, rows, cols/32], bias [E, rows]");
  const int E = static_cast<int>(blocks.shape(0)), rows = static_cast<int>(blocks.shape(1));
  const int cols = static_cast<int>(blocks.shape(2)) * 32;
  require(scales.shape(0) == blocks.shape(0) && scales.shape(1) == blocks.shape(1) &&
              scales.shape(2) == blocks.shape(2) && bias.shape(0) == blocks.shape(0) && bias.shape(1) == blocks.shape(1),
          "blocks, scales and bias disagree on [E, rows, cols/32]");
  return upload_mxfp4_experts(blocks.data(), scales.data(), bias.data(), E, rows, cols);
}

DeviceBuffer checked_ids(const Array<int32_t>& ids, int experts) {
  for (size_t i = 0; i < ids.size(); ++i)
    require(ids.data()[i] >= 0 && ids.data()[i] < experts, "expert ids must be in [0, experts)");
  return upload(ids);
}

// The router's device side for one hidden size: gate, norm scale, workspace and outputs (all poisoned: a partials
// row the out-projection's tail leaves unwritten routes NaN).
struct RouterBuffers {
  DeviceBuffer norm_scale, gate_w, gate_b, workspace, x_normed, ids, weights;
  int experts = 0, k = 0, hidden = 0;
  float eps = 0.f, x_bound = 0.f;

  RouterBuffers(const Array<float>& ns, const Array<uint16_t>& gw, const Array<uint16_t>& gb, int k_, float eps_)
      : k(k_), eps(eps_) {
    require(gw.ndim() == 2 && gw.shape(1) == ns.size() && gb.size() == gw.shape(0),
            "gate_w must be [experts, hidden], gate_b [experts], norm_scale [hidden]");
    experts = static_cast<int>(gw.shape(0));
    hidden = static_cast<int>(ns.size());
    norm_scale = upload(ns), gate_w = upload(gw), gate_b = upload(gb);
    x_bound = rmsnorm_output_bound(ns.data(), hidden);
    workspace = poisoned(router_tail_workspace_bytes(hidden, experts));
    x_normed = poisoned(sizeof(uint16_t) * hidden);
    ids = poisoned(sizeof(int32_t) * std::max(k, 1));
    weights = poisoned(sizeof(float) * std::max(k, 1));
  }
  RouterTail tail() const { return RouterTail{norm_scale.get<float>(), gate_w.get<bf16>(), experts, workspace.get()}; }
  MoeRoute route(const float* residual) const {
    return MoeRoute{workspace.get(), gate_b.get<bf16>(), residual, norm_scale.get<float>(), eps, x_bound};
  }
};

// residual += W · x + bias, then the MoE router of the new residual (the out-projection's partials, finished by
// launch_route): (residual, x_normed, ids, weights).
nb::tuple gemv_bias_residual_router(Array<uint16_t> w, Array<uint16_t> bias, Array<uint16_t> x, Array<float> residual,
                                    Array<float> norm_scale, Array<uint16_t> gate_w, Array<uint16_t> gate_b, int k,
                                    float eps) {
  require(w.ndim() == 2 && w.shape(1) == x.size() && bias.size() == w.shape(0) && residual.size() == w.shape(0) &&
              norm_scale.size() == w.shape(0),
          "w must be [hidden, cols], bias, residual and norm_scale [hidden], x [cols]");
  const int rows = static_cast<int>(w.shape(0)), cols = static_cast<int>(w.shape(1));
  DeviceBuffer d_w = upload(w), d_b = upload(bias), d_x = upload(x), d_r = upload(residual);
  const RouterBuffers router(norm_scale, gate_w, gate_b, k, eps);
  const RouterTail tail = router.tail();
  launch_bf16_gemv_bias_residual(d_w.get<bf16>(), d_b.get<bf16>(), d_x.get<bf16>(), rows, cols, d_r.get<float>(),
                                 &tail, nullptr);
  launch_route(router.route(d_r.get<float>()), router.experts, k, rows, router.x_normed.get<bf16>(),
               router.ids.get<int32_t>(), router.weights.get<float>(), nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const size_t kk = static_cast<size_t>(k);
  return nb::make_tuple(download<float>(d_r, {static_cast<size_t>(rows)}),
                        download<uint16_t>(router.x_normed, {static_cast<size_t>(rows)}),
                        download<int32_t>(router.ids, {kk}), download<float>(router.weights, {kk}));
}

nb::ndarray<nb::numpy, uint16_t> mlp1_swiglu(Array<uint16_t> x_normed, Array<int32_t> ids, Array<uint8_t> blocks,
                                              Array<uint8_t> scales, Array<uint16_t> bias, float alpha, float limit) {
  const Mxfp4Experts m = experts_from(blocks, scales, bias);
  require(x_normed.size() == static_cast<size_t>(m.cols), "x_normed must have cols = blocks.shape[2] * 32 values");
  const int k = static_cast<int>(ids.size());
  DeviceBuffer d_x = upload(x_normed), d_ids = checked_ids(ids, m.experts);
  DeviceBuffer act = poisoned(sizeof(uint16_t) * k * (m.rows / 2));
  launch_bf16_mxfp4w_moe_mlp1_swiglu(d_x.get<bf16>(), d_ids.get<int32_t>(), k, m, alpha, limit, act.get<bf16>(),
                                     nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download<uint16_t>(act, {static_cast<size_t>(k), static_cast<size_t>(m.rows / 2)});
}

nb::ndarray<nb::numpy, float> mlp2_residual(Array<uint16_t> act, Array<int32_t> ids, Array<float> weights,
                                            Array<uint8_t> blocks, Array<uint8_t> scales, Array<uint16_t> bias,
                                            Array<float> residual, std::optional<float> act_bound) {
  const Mxfp4Experts m = experts_from(blocks, scales, bias);
  const int k = static_cast<int>(ids.size());
  require(act.size() == static_cast<size_t>(k) * m.cols && weights.size() == ids.size() &&
              residual.size() == static_cast<size_t>(m.rows),
          "act must be [k, cols], weights [k], residual [rows]");
  DeviceBuffer d_act = upload(act), d_ids = checked_ids(ids, m.experts), d_w = upload(weights), d_r = upload(residual);
  if (!act_bound) {  // by default the largest finite |act| (a NaN or inf then reaches the output, as it should)
    float largest = 0.f;
    for (size_t i = 0; i < act.size(); ++i) {
      const float v = std::fabs(bf16_to_f32(act.data()[i]));
      if (std::isfinite(v)) largest = std::max(largest, v);
    }
    act_bound = largest > 0.f ? largest : 1.f;
  }
  launch_bf16_mxfp4w_moe_mlp2_residual(d_act.get<bf16>(), *act_bound, d_ids.get<int32_t>(), d_w.get<float>(), k,
                                       m, d_r.get<float>(), nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download<float>(d_r, {static_cast<size_t>(m.rows)});
}

// `layers` blocks of [out-projection + router partials → mlp1 → mlp2, both routing] on x (fp32 residual, updated
// in place) the way forward.cu launches them: one stream, no host sync in between, each launch overlapping the previous one's tail
// (programmatic dependent launch). The same weights and attention output serve every layer; x changes, so the
// routes do.
nb::ndarray<nb::numpy, float> moe_layers(Array<float> x, Array<uint16_t> w_o, Array<uint16_t> b_o,
                                         Array<uint16_t> attn, Array<float> norm_scale, Array<uint16_t> gate_w,
                                         Array<uint16_t> gate_b, Array<uint8_t> blocks1, Array<uint8_t> scales1,
                                         Array<uint16_t> bias1, Array<uint8_t> blocks2, Array<uint8_t> scales2,
                                         Array<uint16_t> bias2, int k, float alpha, float limit, float eps,
                                         int layers) {
  const Mxfp4Experts m1 = experts_from(blocks1, scales1, bias1), m2 = experts_from(blocks2, scales2, bias2);
  const int E = m1.experts, hidden = static_cast<int>(x.size()), inter = m1.rows / 2;
  require(m2.experts == E && m2.cols == inter && m2.rows == hidden && m1.cols == hidden &&
              gate_w.size() == static_cast<size_t>(E) * hidden && norm_scale.size() == x.size() &&
              w_o.ndim() == 2 && w_o.shape(0) == x.size() && w_o.shape(1) == attn.size() && b_o.size() == x.size(),
          "mlp1 must be [E, 2I, H], mlp2 [E, H, I], gate_w [E, H], norm_scale and b_o [H], w_o [H, attn]");
  DeviceBuffer d_x = upload(x), d_wo = upload(w_o), d_bo = upload(b_o), d_attn = upload(attn);
  const RouterBuffers router(norm_scale, gate_w, gate_b, k, eps);
  const RouterTail tail = router.tail();
  DeviceBuffer act = poisoned(sizeof(uint16_t) * k * inter);
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  std::unique_ptr<std::remove_pointer_t<cudaStream_t>, void (*)(cudaStream_t)> stream(s, [](cudaStream_t p) { cudaStreamDestroy(p); });
  for (int l = 0; l < layers; ++l) {
    launch_bf16_gemv_bias_residual(d_wo.get<bf16>(), d_bo.get<bf16>(), d_attn.get<bf16>(), hidden,
                                   static_cast<int>(attn.size()), d_x.get<float>(), &tail, s);
    const MoeRoute route = router.route(d_x.get<float>());
    launch_bf16_mxfp4w_moe_mlp1_swiglu(route, k, m1, alpha, limit, act.get<bf16>(), s);
    launch_bf16_mxfp4w_moe_mlp2_residual(act.get<bf16>(), swiglu_act_bound(alpha, limit), route, k, m2,
                                         d_x.get<float>(), s);
  }
  CUDA_CHECK(cudaStreamSynchronize(s));
  return download<float>(d_x, {static_cast<size_t>(hidden)});
}

nb::ndarray<nb::numpy, float> gemv_bias_residual(Array<uint16_t> w, Array<uint16_t> bias, Array<uint16_t> x,
                                                 Array<float> residual) {
  require(w.ndim() == 2 && w.shape(1) == x.size() && bias.size() == w.shape(0) && residual.size() == w.shape(0),
          "w must be [rows, cols], bias and residual [rows], x [cols]");
  const int rows = static_cast<int>(w.shape(0)), cols = static_cast<int>(w.shape(1));
  DeviceBuffer d_w = upload(w), d_b = upload(bias), d_x = upload(x), d_r = upload(residual);
  launch_bf16_gemv_bias_residual(d_w.get<bf16>(), d_b.get<bf16>(), d_x.get<bf16>(), rows, cols, d_r.get<float>(),
                                 nullptr, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download<float>(d_r, {static_cast<size_t>(rows)});
}

nb::ndarray<nb::numpy, float> unembedding(Array<uint16_t> w, Array<float> norm_scale, Array<float> x, float eps) {
  require(w.ndim() == 2 && w.shape(1) == x.size() && norm_scale.size() == x.size(),
          "w must be [vocab, hidden], norm_scale and x [hidden]");
  const int vocab = static_cast<int>(w.shape(0)), hidden = static_cast<int>(w.shape(1));
  DeviceBuffer d_w = upload_unembedding(w), d_s = upload(norm_scale), d_x = upload(x);
  DeviceBuffer logits = poisoned(sizeof(float) * vocab);
  launch_unembedding(d_w.get<bf16>(), d_s.get<float>(), d_x.get<float>(), vocab, hidden, eps, logits.get<float>(),
                     nullptr, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download<float>(logits, {static_cast<size_t>(vocab)});
}

// The unembedding with the fused sample (FusedSample; temperature 0: argmax), one launch per entry of `draws` on
// one workspace (each launch must leave it re-armed): the logits of the last launch and every launch's token.
nb::tuple unembedding_sample(Array<uint16_t> w, Array<float> norm_scale, Array<float> x, float eps, float temperature,
                             uint64_t seed, Array<uint64_t> draws) {
  require(w.ndim() == 2 && w.shape(1) == x.size() && norm_scale.size() == x.size() && draws.size() >= 1 &&
              temperature >= 0.0f,
          "w must be [vocab, hidden], norm_scale and x [hidden], at least one draw, temperature >= 0");
  const int vocab = static_cast<int>(w.shape(0)), hidden = static_cast<int>(w.shape(1));
  DeviceBuffer d_w = upload_unembedding(w), d_s = upload(norm_scale), d_x = upload(x);
  DeviceBuffer logits = poisoned(sizeof(float) * vocab), tokens = poisoned(sizeof(int32_t) * draws.size());
  DeviceBuffer ws(unembedding_sample_workspace_bytes());
  CUDA_CHECK(cudaMemset(ws.get(), 0, ws.bytes()));
  for (size_t i = 0; i < draws.size(); ++i) {
    const FusedSample sample{ws.get(), tokens.get<int32_t>() + i, temperature, seed, draws.data()[i]};
    launch_unembedding(d_w.get<bf16>(), d_s.get<float>(), d_x.get<float>(), vocab, hidden, eps, logits.get<float>(),
                       &sample, nullptr);
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  return nb::make_tuple(download<float>(logits, {static_cast<size_t>(vocab)}), download<int32_t>(tokens, {draws.size()}));
}

// Screened fused sampling (launch_screened_sample), one launch per entry of `draws` on one pair of workspaces (each
// launch must leave them re-armed): every launch's token, and the last launch's upper key bounds and best lower
// bound M (a row is recomputed exactly when its bound is not below M).
nb::tuple unembedding_screened_sample(Array<uint16_t> w, Array<float> norm_scale, Array<float> x, float eps,
                                      float temperature, uint64_t seed, Array<uint64_t> draws) {
  require(w.ndim() == 2 && w.shape(1) == x.size() && norm_scale.size() == x.size() && draws.size() >= 1 &&
              temperature >= 0.0f,
          "w must be [vocab, hidden], norm_scale and x [hidden], at least one draw, temperature >= 0");
  const int vocab = static_cast<int>(w.shape(0)), hidden = static_cast<int>(w.shape(1));
  DeviceBuffer d_w = upload_unembedding(w), d_s = upload(norm_scale), d_x = upload(x);
  const ScreenedUnembedding screen = build_screened_unembedding(d_w.get<bf16>(), vocab, hidden);
  CUDA_CHECK(cudaMemset(screen.upper.get(), 0xFF, screen.upper.bytes()));  // poisoned: NaN
  DeviceBuffer tokens = poisoned(sizeof(int32_t) * draws.size());
  DeviceBuffer ws(unembedding_sample_workspace_bytes());
  CUDA_CHECK(cudaMemset(ws.get(), 0, ws.bytes()));
  for (size_t i = 0; i < draws.size(); ++i) {
    const FusedSample sample{ws.get(), tokens.get<int32_t>() + i, temperature, seed, draws.data()[i]};
    launch_screened_sample(screen, d_w.get<bf16>(), d_s.get<float>(), d_x.get<float>(), eps, sample, nullptr);
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  double m = 0.0;
  CUDA_CHECK(cudaMemcpy(&m, static_cast<char*>(screen.workspace.get()) + 8, sizeof(double), cudaMemcpyDeviceToHost));
  return nb::make_tuple(download<int32_t>(tokens, {draws.size()}),
                        download<float>(screen.upper, {static_cast<size_t>(vocab)}), m);
}

SamplingParams sampling_params(float temperature, float top_p, int top_k, uint64_t seed) {
  require(temperature >= 0.0f && top_p > 0.0f && top_p <= 1.0f && top_k >= 0,
          "need temperature >= 0, top_p in (0, 1] and top_k >= 0");
  return SamplingParams{temperature, top_p, top_k, seed};
}

// One device draw per entry of `draws` (same logits, same seed): the tokens, in order.
nb::ndarray<nb::numpy, int32_t> sample(Array<float> logits, float temperature, float top_p, int top_k, uint64_t seed,
                                       Array<uint64_t> draws) {
  const SamplingParams p = sampling_params(temperature, top_p, top_k, seed);
  const int vocab = static_cast<int>(logits.size());
  DeviceBuffer d_l = upload(logits), ws(std::max<size_t>(1, sample_workspace_bytes(vocab)));
  DeviceBuffer tokens = poisoned(sizeof(int32_t) * std::max<size_t>(1, draws.size()));
  for (size_t i = 0; i < draws.size(); ++i)
    launch_sample(d_l.get<float>(), vocab, p, draws.data()[i], ws.get(), tokens.get<int32_t>() + i, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download<int32_t>(tokens, {draws.size()});
}

// ---- per-CTA timeline (a build with -DGPT_OSS_NATIVE_TIMELINE=ON; common.cuh) ----
struct Timeline {
  DeviceBuffer records, count;
  unsigned capacity = 0;
};
Timeline& timeline() {
  static Timeline t;
  return t;
}

// Starts recording into a fresh buffer of `capacity` records; 0 stops.
void timeline_start(int capacity) {
  require(kTimelineBuilt, "this build records no timeline: configure with -DGPT_OSS_NATIVE_TIMELINE=ON");
  require(capacity >= 0, "capacity must be >= 0");
  Timeline& t = timeline();
  CUDA_CHECK(cudaDeviceSynchronize());
  TimelineBuffer b;
  if (capacity > 0) {
    t.records = DeviceBuffer(sizeof(unsigned long long) * kTimelineWords * capacity);
    t.count = DeviceBuffer(sizeof(unsigned));
    CUDA_CHECK(cudaMemset(t.count.get(), 0, sizeof(unsigned)));
    b = {t.records.get<unsigned long long>(), t.count.get<unsigned>(), static_cast<unsigned>(capacity)};
  }
#ifdef GPT_OSS_NATIVE_TIMELINE
  set_timeline(b);
#endif
  t.capacity = static_cast<unsigned>(capacity);
  if (capacity == 0) t = Timeline{};
}

// The records so far, [n, kTimelineWords] u64 (common.cuh gives the layout), and resets the count.
nb::ndarray<nb::numpy, uint64_t> timeline_read() {
  Timeline& t = timeline();
  require(t.capacity > 0, "no timeline is recording: call timeline_start first");
  CUDA_CHECK(cudaDeviceSynchronize());
  unsigned n = 0;
  CUDA_CHECK(cudaMemcpy(&n, t.count.get(), sizeof n, cudaMemcpyDeviceToHost));
  n = std::min(n, t.capacity);
  auto out = download<uint64_t>(t.records, {static_cast<size_t>(n), static_cast<size_t>(kTimelineWords)});
  CUDA_CHECK(cudaMemset(t.count.get(), 0, sizeof(unsigned)));
  return out;
}

// ---- timing (benchmarks/bench_kernels_weights.py) ----

// Median µs of one launch: `per_graph` calls (call i gets index i) captured into a graph, replayed `reps` times.
double graph_us(const std::function<void(cudaStream_t, int)>& launch, int per_graph, int reps) {
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  std::unique_ptr<std::remove_pointer_t<cudaStream_t>, void (*)(cudaStream_t)> stream(s, [](cudaStream_t x) { cudaStreamDestroy(x); });
  for (int i = 0; i < per_graph; ++i) launch(s, i);  // eager warm-up (sets kernel attributes outside capture)
  CUDA_CHECK(cudaStreamSynchronize(s));
  cudaGraph_t graph = nullptr;
  CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < per_graph; ++i) launch(s, i);
  CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  CUDA_CHECK(e);
  std::unique_ptr<std::remove_pointer_t<cudaGraphExec_t>, void (*)(cudaGraphExec_t)> owned(exec, [](cudaGraphExec_t x) { cudaGraphExecDestroy(x); });
  cudaEvent_t a = nullptr, b = nullptr;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  std::vector<double> times;
  for (int r = 0; r < reps + 1; ++r) {
    CUDA_CHECK(cudaEventRecord(a, s));
    CUDA_CHECK(cudaGraphLaunch(exec, s));
    CUDA_CHECK(cudaEventRecord(b, s));
    CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    if (r > 0) times.push_back(1000.0 * ms / per_graph);  // replay 0 warms the graph up
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Device-to-device copy of `bytes`: µs per copy (it moves 2 × bytes).
double time_copy(size_t bytes, int reps) {
  DeviceBuffer src(bytes), dst(bytes);
  CUDA_CHECK(cudaMemset(src.get(), 0x5A, bytes));
  return graph_us([&](cudaStream_t s, int) { CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, s)); },
                  1, reps);
}

// Out-projection + router partials, mlp1 and mlp2 (each routing) of one layer (µs each, and chained). Launch i
// routes to experts {k·i, .., k·i + k - 1} mod E and uses its own copy of the out-projection, so a graph of E / k launches streams every
// expert once and no weight sits in L2.
nb::dict time_moe(Array<float> x, Array<float> norm_scale, Array<uint16_t> w_o, Array<uint16_t> gate_w,
                  Array<uint16_t> gate_b, Array<uint8_t> blocks1, Array<uint8_t> scales1, Array<uint16_t> bias1,
                  Array<uint8_t> blocks2, Array<uint8_t> scales2, Array<uint16_t> bias2, int k, int reps) {
  const Mxfp4Experts m1 = experts_from(blocks1, scales1, bias1), m2 = experts_from(blocks2, scales2, bias2);
  const int E = m1.experts, hidden = static_cast<int>(x.size()), inter = m1.rows / 2;
  require(m2.experts == E && m2.cols == inter && m2.rows == hidden && m1.cols == hidden &&
              gate_w.size() == static_cast<size_t>(E) * hidden && w_o.ndim() == 2 && w_o.shape(0) == x.size(),
          "mlp1 must be [E, 2I, H], mlp2 [E, H, I], gate [E, H], w_o [H, cols]");
  const int per_graph = std::max(1, E / k), cols = static_cast<int>(w_o.shape(1));
  // Launch i routes to experts k·i .. k·i + k - 1 (mod E): its own gate bias lifts them far above the rest.
  std::vector<DeviceBuffer> gate_bs;
  for (int i = 0; i < per_graph; ++i) {
    std::vector<uint16_t> b(gate_b.data(), gate_b.data() + E);
    for (int j = 0; j < k; ++j) b[(k * i + j) % E] = 0x42C8;  // bf16 100
    gate_bs.push_back(DeviceBuffer::from_host(b.data(), b.size() * sizeof(uint16_t)));
  }
  std::vector<DeviceBuffer> w_os;
  for (int i = 0; i < per_graph; ++i) w_os.push_back(upload(w_o));
  const RouterBuffers router(norm_scale, gate_w, gate_b, k, 1e-5f);
  const RouterTail tail = router.tail();
  DeviceBuffer b_o(sizeof(uint16_t) * hidden), attn(sizeof(uint16_t) * cols), act(sizeof(uint16_t) * k * inter);
  DeviceBuffer residual = DeviceBuffer::from_host(x.data(), sizeof(float) * hidden);
  CUDA_CHECK(cudaMemset(b_o.get(), 0, b_o.bytes()));
  CUDA_CHECK(cudaMemset(attn.get(), 0, attn.bytes()));  // the residual stays x: routes stay finite
  CUDA_CHECK(cudaMemset(act.get(), 0, act.bytes()));
  auto outproj_router = [&](cudaStream_t s, int i) {
    launch_bf16_gemv_bias_residual(w_os[i].get<bf16>(), b_o.get<bf16>(), attn.get<bf16>(), hidden, cols,
                                   residual.get<float>(), &tail, s);
  };
  outproj_router(nullptr, 0);  // the partials mlp1 and mlp2 route from when timed alone
  CUDA_CHECK(cudaDeviceSynchronize());
  auto route = [&](int i) {
    MoeRoute r = router.route(residual.get<float>());
    r.gate_b = gate_bs[i].get<bf16>();
    return r;
  };
  auto mlp1 = [&](cudaStream_t s, int i) {
    launch_bf16_mxfp4w_moe_mlp1_swiglu(route(i), k, m1, 1.702f, 7.0f, act.get<bf16>(), s);
  };
  auto mlp2 = [&](cudaStream_t s, int i) {
    launch_bf16_mxfp4w_moe_mlp2_residual(act.get<bf16>(), swiglu_act_bound(1.702f, 7.0f), route(i), k, m2,
                                         residual.get<float>(), s);
  };
  nb::dict out;
  out["outproj_router_us"] = graph_us(outproj_router, per_graph, reps);
  out["mlp1_us"] = graph_us(mlp1, per_graph, reps);
  out["mlp2_us"] = graph_us(mlp2, per_graph, reps);
  // The three in decode order, as forward.cu launches them: what the attention block's tail and the MoE cost
  // once each launch overlaps the previous one's tail (programmatic dependent launch).
  out["chain_us"] = graph_us(
      [&](cudaStream_t s, int i) {
        outproj_router(s, i);
        mlp1(s, i);
        mlp2(s, i);
      },
      per_graph, reps);
  return out;
}

// The out-projection over `copies` copies of w (so the 24 MB matrix is not served from L2): µs per launch.
double time_gemv_bias_residual(Array<uint16_t> w, int copies, int reps) {
  require(w.ndim() == 2, "w must be [rows, cols]");
  const int rows = static_cast<int>(w.shape(0)), cols = static_cast<int>(w.shape(1));
  std::vector<DeviceBuffer> ws;
  for (int c = 0; c < copies; ++c) ws.push_back(upload(w));
  DeviceBuffer bias(sizeof(uint16_t) * rows), x(sizeof(uint16_t) * cols), residual(sizeof(float) * rows);
  CUDA_CHECK(cudaMemset(bias.get(), 0, bias.bytes()));
  CUDA_CHECK(cudaMemset(x.get(), 0x3F, x.bytes()));
  CUDA_CHECK(cudaMemset(residual.get(), 0, residual.bytes()));
  return graph_us(
      [&](cudaStream_t s, int i) {
        launch_bf16_gemv_bias_residual(ws[i].get<bf16>(), bias.get<bf16>(), x.get<bf16>(), rows, cols,
                                       residual.get<float>(), nullptr, s);
      },
      copies, reps);
}

// The unembedding alone (temperature None), or with the fused sample at that temperature (0: argmax).
double time_unembedding(Array<uint16_t> w, Array<float> norm_scale, Array<float> x, std::optional<float> temperature,
                        int reps) {
  require(!temperature || *temperature >= 0.0f, "temperature must be None or >= 0");
  const int vocab = static_cast<int>(w.shape(0)), hidden = static_cast<int>(w.shape(1));
  DeviceBuffer d_w = upload_unembedding(w), d_s = upload(norm_scale), d_x = upload(x), logits(sizeof(float) * vocab);
  DeviceBuffer ws(unembedding_sample_workspace_bytes()), token(sizeof(int32_t));
  CUDA_CHECK(cudaMemset(ws.get(), 0, ws.bytes()));
  const FusedSample fused{ws.get(), token.get<int32_t>(), temperature.value_or(0.0f), 1234, 0};
  return graph_us(
      [&](cudaStream_t s, int) {
        launch_unembedding(d_w.get<bf16>(), d_s.get<float>(), d_x.get<float>(), vocab, hidden, 1e-5f,
                           logits.get<float>(), temperature ? &fused : nullptr, s);
      },
      1, reps);
}

// The screened fused draw (launch_screened_sample) at that temperature (0: argmax).
double time_unembedding_screened(Array<uint16_t> w, Array<float> norm_scale, Array<float> x, float temperature,
                                 int reps) {
  require(temperature >= 0.0f, "temperature must be >= 0");
  const int vocab = static_cast<int>(w.shape(0)), hidden = static_cast<int>(w.shape(1));
  DeviceBuffer d_w = upload_unembedding(w), d_s = upload(norm_scale), d_x = upload(x);
  const ScreenedUnembedding screen = build_screened_unembedding(d_w.get<bf16>(), vocab, hidden);
  DeviceBuffer ws(unembedding_sample_workspace_bytes()), token(sizeof(int32_t));
  CUDA_CHECK(cudaMemset(ws.get(), 0, ws.bytes()));
  const FusedSample fused{ws.get(), token.get<int32_t>(), temperature, 1234, 0};
  return graph_us(
      [&](cudaStream_t s, int) {
        launch_screened_sample(screen, d_w.get<bf16>(), d_s.get<float>(), d_x.get<float>(), 1e-5f, fused, s);
      },
      1, reps);
}

double time_sample(Array<float> logits, float temperature, float top_p, int top_k, int reps) {
  const SamplingParams p = sampling_params(temperature, top_p, top_k, 1234);
  const int vocab = static_cast<int>(logits.size());
  DeviceBuffer d_l = upload(logits), token(sizeof(int32_t)), ws(std::max<size_t>(1, sample_workspace_bytes(vocab)));
  return graph_us(
      [&](cudaStream_t s, int i) { launch_sample(d_l.get<float>(), vocab, p, i, ws.get(), token.get<int32_t>(), s); },
      16, reps);
}

}  // namespace weight_kernel_tests

// ---- batched prefill kernels: prefill.h and the grouped expert GEMMs of moe_mxfp4.h ----
namespace prefill_kernel_tests {

// y fp32 [T, rows] after launch_prefill_gemm_bf16(w [rows, cols], bias [rows] or empty, x [T, cols], x_lo [T, cols]
// or empty) on y_in.
nb::ndarray<nb::numpy, float> gemm_bf16(Array<uint16_t> w, Array<uint16_t> bias, Array<uint16_t> x, Array<uint16_t> x_lo,
                                        Array<float> y_in, bool accumulate) {
  require(w.ndim() == 2 && x.ndim() == 2 && x.shape(1) == w.shape(1) && y_in.ndim() == 2 &&
              y_in.shape(0) == x.shape(0) && y_in.shape(1) == w.shape(0) &&
              (bias.size() == 0 || bias.size() == w.shape(0)) && (x_lo.size() == 0 || x_lo.size() == x.size()),
          "w must be [rows, cols], x [T, cols], x_lo [T, cols] or empty, y [T, rows], bias [rows] or empty");
  const int rows = static_cast<int>(w.shape(0)), cols = static_cast<int>(w.shape(1)), T = static_cast<int>(x.shape(0));
  DeviceBuffer d_w = upload(w), d_x = upload(x), d_xl = upload(x_lo), d_y = upload(y_in), d_b = upload(bias);
  launch_prefill_gemm_bf16(d_w.get<bf16>(), bias.size() ? d_b.get<bf16>() : nullptr, d_x.get<bf16>(),
                           x_lo.size() ? d_xl.get<bf16>() : nullptr, rows, cols, T,
                           d_y.get<float>(), rows, accumulate, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download<float>(d_y, {static_cast<size_t>(T), static_cast<size_t>(rows)});
}

// rmsnorm → qkv GEMM + bias → RoPE at pos0 + t for x fp32 [T, hidden]: (q fp32 [T, q_heads, 64], k, v bf16
// [T, kv_heads, 64]), all poisoned before the launches.
nb::tuple qkv_rope(Array<float> x, Array<float> norm_scale, Array<uint16_t> w, Array<uint16_t> bias, int q_heads,
                   int kv_heads, int pos0, float rope_theta, float rope_scaling_factor, int initial_context_length,
                   float rope_ntk_alpha, float rope_ntk_beta, float eps) {
  require(x.ndim() == 2 && norm_scale.size() == x.shape(1), "x must be [T, hidden] and norm_scale [hidden]");
  const int T = static_cast<int>(x.shape(0)), hidden = static_cast<int>(x.shape(1));
  const int rows = (q_heads + 2 * kv_heads) * kAttentionHeadDim;
  require(w.size() == static_cast<size_t>(rows) * hidden && bias.size() == static_cast<size_t>(rows),
          "w must be [(q_heads + 2 kv_heads) * 64, hidden] and bias its rows");
  DeviceBuffer d_rope = device_rope_table(kAttentionHeadDim, rope_theta, rope_scaling_factor, initial_context_length,
                                         rope_ntk_alpha, rope_ntk_beta, pos0 + T);
  DeviceBuffer d_x = upload(x), d_s = upload(norm_scale), d_w = upload(w), d_b = upload(bias);
  DeviceBuffer xn = poisoned(sizeof(bf16) * T * hidden), xn_lo = poisoned(sizeof(bf16) * T * hidden),
               qkv = poisoned(sizeof(float) * T * rows);
  DeviceBuffer q = poisoned(sizeof(float) * T * q_heads * kAttentionHeadDim);
  DeviceBuffer k = poisoned(sizeof(bf16) * T * kv_heads * kAttentionHeadDim);
  DeviceBuffer v = poisoned(sizeof(bf16) * T * kv_heads * kAttentionHeadDim);
  launch_prefill_rmsnorm(d_x.get<float>(), d_s.get<float>(), T, hidden, eps, xn.get<bf16>(), xn_lo.get<bf16>(), nullptr);
  launch_prefill_gemm_bf16(d_w.get<bf16>(), d_b.get<bf16>(), xn.get<bf16>(), xn_lo.get<bf16>(), rows, hidden, T,
                           qkv.get<float>(), rows,
                           false, nullptr);
  launch_prefill_rope(qkv.get<float>(), d_rope.get<float2>(), pos0, T, q_heads, kv_heads, q.get<float>(),
                      k.get<bf16>(), v.get<bf16>(), nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const size_t t = T, d = kAttentionHeadDim;
  return nb::make_tuple(download<float>(q, {t, static_cast<size_t>(q_heads), d}),
                        download<uint16_t>(k, {t, static_cast<size_t>(kv_heads), d}),
                        download<uint16_t>(v, {t, static_cast<size_t>(kv_heads), d}));
}

// launch_prefill_attention then launch_prefill_kv_commit: (out bf16 [T, q_heads * 64], k_cache, v_cache after
// the commit). q fp32 [T, q_heads, 64]; k/v_chunk bf16 [T, kv_heads, 64]; caches bf16 [kv_heads, capacity, 64]
// holding positions < pos0.
nb::tuple attention(Array<float> q, Array<uint16_t> k_chunk, Array<uint16_t> v_chunk, Array<uint16_t> k_cache,
                    Array<uint16_t> v_cache, Array<float> sinks, int pos0, int window) {
  require(q.ndim() == 3 && q.shape(2) == kAttentionHeadDim && k_chunk.ndim() == 3 && k_chunk.shape(0) == q.shape(0) &&
              k_chunk.shape(2) == kAttentionHeadDim && v_chunk.size() == k_chunk.size() && k_cache.ndim() == 3 &&
              k_cache.shape(0) == k_chunk.shape(1) && k_cache.shape(2) == kAttentionHeadDim &&
              v_cache.size() == k_cache.size() && sinks.size() == q.shape(1),
          "q must be [T, q_heads, 64], k/v_chunk [T, kv_heads, 64], caches [kv_heads, capacity, 64], sinks [q_heads]");
  const int T = static_cast<int>(q.shape(0)), q_heads = static_cast<int>(q.shape(1));
  const int kv_heads = static_cast<int>(k_chunk.shape(1)), capacity = static_cast<int>(k_cache.shape(1));
  DeviceBuffer d_q = upload(q), d_kc = upload(k_chunk), d_vc = upload(v_chunk), d_k = upload(k_cache),
               d_v = upload(v_cache), d_s = upload(sinks);
  DeviceBuffer out = poisoned(sizeof(bf16) * T * q_heads * kAttentionHeadDim);
  PrefillAttentionParams p;
  p.q = d_q.get<float>();
  p.k_chunk = d_kc.get<bf16>();
  p.v_chunk = d_vc.get<bf16>();
  p.cache = KvLayerCache{d_k.get<bf16>(), d_v.get<bf16>(), capacity};
  p.sinks = d_s.get<float>();
  p.out = out.get<bf16>();
  p.pos0 = pos0;
  p.T = T;
  p.q_heads = q_heads;
  p.kv_heads = kv_heads;
  p.window = window;
  p.sm_scale = 1.0f / 8.0f;
  launch_prefill_attention(p, nullptr);
  launch_prefill_kv_commit(d_kc.get<bf16>(), d_vc.get<bf16>(), pos0, T, kv_heads, p.cache, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<size_t> cache_shape{k_cache.shape(0), k_cache.shape(1), k_cache.shape(2)};
  return nb::make_tuple(download<uint16_t>(out, {static_cast<size_t>(T), static_cast<size_t>(q_heads) * 64}),
                        download<uint16_t>(d_k, cache_shape), download<uint16_t>(d_v, cache_shape));
}

// rmsnorm → gate GEMM + bias → top-k + softmax for x fp32 [T, hidden]: (x_normed bf16 [T, hidden],
// ids [T, k], weights [T, k]).
nb::tuple router(Array<float> x, Array<float> norm_scale, Array<uint16_t> gate_w, Array<uint16_t> gate_b, int k,
                 float eps) {
  require(x.ndim() == 2 && gate_w.ndim() == 2 && gate_w.shape(1) == x.shape(1) && gate_b.size() == gate_w.shape(0) &&
              norm_scale.size() == x.shape(1),
          "x must be [T, hidden], gate_w [experts, hidden], gate_b [experts], norm_scale [hidden]");
  const int T = static_cast<int>(x.shape(0)), hidden = static_cast<int>(x.shape(1));
  const int experts = static_cast<int>(gate_w.shape(0));
  DeviceBuffer d_x = upload(x), d_s = upload(norm_scale), d_w = upload(gate_w), d_b = upload(gate_b);
  DeviceBuffer xn = poisoned(sizeof(bf16) * T * hidden), logits = poisoned(sizeof(float) * T * experts);
  DeviceBuffer ids = poisoned(sizeof(int32_t) * T * k), w = poisoned(sizeof(float) * T * k);
  launch_prefill_rmsnorm(d_x.get<float>(), d_s.get<float>(), T, hidden, eps, xn.get<bf16>(), nullptr, nullptr);
  launch_prefill_gemm_bf16(d_w.get<bf16>(), d_b.get<bf16>(), xn.get<bf16>(), nullptr, experts, hidden, T, logits.get<float>(),
                           experts, false, nullptr);
  launch_prefill_topk_softmax(logits.get<float>(), T, experts, k, ids.get<int32_t>(), w.get<float>(), nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const size_t t = T, kk = k;
  return nb::make_tuple(download<uint16_t>(xn, {t, static_cast<size_t>(hidden)}), download<int32_t>(ids, {t, kk}),
                        download<float>(w, {t, kk}));
}

Mxfp4Experts experts_from(const Array<uint8_t>& blocks, const Array<uint8_t>& scales, const Array<uint16_t>& bias) {
  require(blocks.ndim() == 4 && blocks.shape(3) == 16 && scales.ndim() == 3 && bias.ndim() == 2 &&
              scales.shape(0) == blocks.shape(0) && scales.shape(1) == blocks.shape(1) &&
              scales.shape(2) == blocks.shape(2) && bias.shape(0) == blocks.shape(0) && bias.shape(1) == blocks.shape(1),
          "blocks must be [E, rows, cols/32, 16], scales [E, rows, cols/32], bias [E, rows]");
  return upload_mxfp4_experts(blocks.data(), scales.data(), bias.data(), static_cast<int>(blocks.shape(0)),
                              static_cast<int>(blocks.shape(1)), static_cast<int>(blocks.shape(2)) * 32);
}

// The MoE of one chunk as the backend runs it: group → stage → mlp1 + SwiGLU → stage → mlp2 → combine into the
// residual. x_normed bf16 [T, hidden], ids / weights [T, k], residual fp32 [T, hidden]. Returns (residual,
// act bf16 [T, k, intermediate] in pair order, sorted_of [T, k], tile entries [tile_count, 3]).
nb::tuple moe(Array<uint16_t> x_normed, Array<int32_t> ids, Array<float> weights, Array<uint8_t> blocks1,
              Array<uint8_t> scales1, Array<uint16_t> bias1, Array<uint8_t> blocks2, Array<uint8_t> scales2,
              Array<uint16_t> bias2, float alpha, float limit, Array<float> residual) {
  const Mxfp4Experts m1 = experts_from(blocks1, scales1, bias1), m2 = experts_from(blocks2, scales2, bias2);
  require(x_normed.ndim() == 2 && ids.ndim() == 2 && ids.shape(0) == x_normed.shape(0) &&
              weights.size() == ids.size() && residual.size() == x_normed.size(),
          "x_normed must be [T, hidden], ids and weights [T, k], residual [T, hidden]");
  const int T = static_cast<int>(x_normed.shape(0)), hidden = static_cast<int>(x_normed.shape(1));
  const int k = static_cast<int>(ids.shape(1)), pairs = T * k, inter = m1.rows / 2, E = m1.experts;
  require(m1.cols == hidden && m2.cols == inter && m2.rows == hidden && m2.experts == E,
          "mlp1 must be [E, 2 I, hidden] and mlp2 [E, hidden, I]");
  for (size_t i = 0; i < ids.size(); ++i) require(ids.data()[i] >= 0 && ids.data()[i] < E, "ids must be in [0, E)");
  const int max_tiles = prefill_group_max_tiles(pairs, E, kMoePrefillTileTokens);
  const size_t staged_cols = static_cast<size_t>(ceil_div(std::max(hidden, inter), 64)) * 64;
  DeviceBuffer d_x = upload(x_normed), d_ids = upload(ids), d_w = upload(weights), d_r = upload(residual);
  DeviceBuffer order = poisoned(sizeof(int32_t) * pairs), sorted_of = poisoned(sizeof(int32_t) * pairs);
  DeviceBuffer tiles = poisoned(sizeof(int4) * max_tiles), tile_count = poisoned(sizeof(int32_t));
  DeviceBuffer staged = poisoned(sizeof(__half) * std::max(T, pairs) * staged_cols);
  DeviceBuffer up = poisoned(sizeof(float) * std::max(T, pairs));
  DeviceBuffer act = poisoned(sizeof(bf16) * pairs * inter), y = poisoned(sizeof(float) * pairs * hidden);
  launch_prefill_group_experts(d_ids.get<int32_t>(), pairs, E, kMoePrefillTileTokens, order.get<int32_t>(),
                               sorted_of.get<int32_t>(), tiles.get<int4>(), tile_count.get<int32_t>(), nullptr);
  launch_moe_prefill_stage(d_x.get<bf16>(), T, hidden, staged.get<__half>(), up.get<float>(), nullptr);
  launch_bf16_mxfp4w_moe_prefill_mlp1_swiglu(staged.get<__half>(), up.get<float>(), order.get<int32_t>(), k,
                                             tiles.get<int4>(), tile_count.get<int32_t>(), max_tiles, m1, alpha, limit,
                                             act.get<bf16>(), nullptr);
  launch_moe_prefill_stage(act.get<bf16>(), pairs, inter, staged.get<__half>(), up.get<float>(), nullptr);
  launch_bf16_mxfp4w_moe_prefill_mlp2(staged.get<__half>(), up.get<float>(), tiles.get<int4>(),
                                      tile_count.get<int32_t>(), max_tiles, m2, y.get<float>(), nullptr);
  launch_prefill_moe_combine(y.get<float>(), sorted_of.get<int32_t>(), d_w.get<float>(), T, k, hidden,
                             d_r.get<float>(), nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  // act rows back into pair order, so the test needs no knowledge of the grouping.
  std::vector<int32_t> h_sorted(pairs);
  CUDA_CHECK(cudaMemcpy(h_sorted.data(), sorted_of.get(), sizeof(int32_t) * pairs, cudaMemcpyDeviceToHost));
  std::vector<uint16_t> h_act(static_cast<size_t>(pairs) * inter);
  CUDA_CHECK(cudaMemcpy(h_act.data(), act.get(), h_act.size() * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  for (int p = 0; p < pairs; ++p) require(h_sorted[p] >= 0 && h_sorted[p] < pairs, "sorted_of is out of range");
  int32_t n_tiles = 0;
  CUDA_CHECK(cudaMemcpy(&n_tiles, tile_count.get(), sizeof(int32_t), cudaMemcpyDeviceToHost));
  require(n_tiles >= 0 && n_tiles <= max_tiles, "tile_count is out of range");
  std::vector<int4> h_tiles(std::max(n_tiles, 1));
  CUDA_CHECK(cudaMemcpy(h_tiles.data(), tiles.get(), sizeof(int4) * n_tiles, cudaMemcpyDeviceToHost));
  const size_t t = T, kk = k, in = inter;
  auto act_by_pair = numpy_array<uint16_t>({t, kk, in}, [&](uint16_t* dst, size_t) {
    for (int p = 0; p < pairs; ++p)
      std::copy_n(h_act.data() + static_cast<size_t>(h_sorted[p]) * inter, inter, dst + static_cast<size_t>(p) * inter);
  });
  auto tile_rows = numpy_array<int32_t>({static_cast<size_t>(n_tiles), 3}, [&](int32_t* dst, size_t) {
    for (int n = 0; n < n_tiles; ++n) dst[3 * n] = h_tiles[n].x, dst[3 * n + 1] = h_tiles[n].y, dst[3 * n + 2] = h_tiles[n].z;
  });
  return nb::make_tuple(download<float>(d_r, {t, static_cast<size_t>(hidden)}), act_by_pair,
                        download<int32_t>(sorted_of, {t, kk}), tile_rows);
}

}  // namespace prefill_kernel_tests

void register_cuda_kernel_tests(nb::module_& m) {
  m.doc() = "CUDA kernel test entry points (host arrays in, host arrays out)";
  // Entries are added below, one block per kernel family, each named by the kernel's stem.
  {  // ---- forward-path kernels (cuda-forward) ----
    using namespace nb::literals;
    m.def("norm_qkv_rope", &forward_kernel_tests::norm_qkv_rope, "x"_a, "norm_scale"_a, "w"_a, "bias"_a,
          "q_heads"_a, "kv_heads"_a, "head_dim"_a, "pos"_a, "k_cache"_a, "v_cache"_a, "rope_theta"_a,
          "rope_scaling_factor"_a, "initial_context_length"_a, "rope_ntk_alpha"_a, "rope_ntk_beta"_a, "eps"_a);
    m.def("attention_decode", &forward_kernel_tests::attention_decode, "q"_a, "k_cache"_a, "v_cache"_a, "sinks"_a,
          "pos"_a, "max_splits"_a = 0);
  }
  {  // ---- weight-streaming kernels (cuda-weights) ----
    using namespace nb::literals;
    namespace wk = weight_kernel_tests;
    m.def("bf16_gemv_bias_residual_router", &wk::gemv_bias_residual_router, "w"_a, "bias"_a, "x"_a, "residual"_a,
          "norm_scale"_a, "gate_w"_a, "gate_b"_a, "k"_a, "eps"_a);
    m.def("bf16_mxfp4w_moe_mlp1_swiglu", &wk::mlp1_swiglu, "x_normed"_a, "ids"_a, "blocks"_a, "scales"_a, "bias"_a,
          "alpha"_a, "limit"_a);
    m.def("bf16_mxfp4w_moe_mlp2_residual", &wk::mlp2_residual, "act"_a, "ids"_a, "weights"_a, "blocks"_a,
          "scales"_a, "bias"_a, "residual"_a, "act_bound"_a = nb::none());
    m.def("moe_layers", &wk::moe_layers, "x"_a, "w_o"_a, "b_o"_a, "attn"_a, "norm_scale"_a, "gate_w"_a, "gate_b"_a,
          "blocks1"_a, "scales1"_a, "bias1"_a, "blocks2"_a, "scales2"_a, "bias2"_a, "k"_a, "alpha"_a, "limit"_a,
          "eps"_a, "layers"_a);
    m.def("bf16_gemv_bias_residual", &wk::gemv_bias_residual, "w"_a, "bias"_a, "x"_a, "residual"_a);
    m.def("unembedding", &wk::unembedding, "w"_a, "norm_scale"_a, "x"_a, "eps"_a);
    m.def("unembedding_sample", &wk::unembedding_sample, "w"_a, "norm_scale"_a, "x"_a, "eps"_a, "temperature"_a,
          "seed"_a, "draws"_a);
    m.def("unembedding_screened_sample", &wk::unembedding_screened_sample, "w"_a, "norm_scale"_a, "x"_a, "eps"_a,
          "temperature"_a, "seed"_a, "draws"_a);
    m.def("sample", &wk::sample, "logits"_a, "temperature"_a, "top_p"_a, "top_k"_a, "seed"_a, "draws"_a);
    m.def("time_copy", &wk::time_copy, "bytes"_a, "reps"_a);
    m.attr("timeline_built") = kTimelineBuilt;
    m.def("timeline_start", &wk::timeline_start, "capacity"_a);
    m.def("timeline_read", &wk::timeline_read);
    m.def("time_moe", &wk::time_moe, "x"_a, "norm_scale"_a, "w_o"_a, "gate_w"_a, "gate_b"_a, "blocks1"_a,
          "scales1"_a, "bias1"_a, "blocks2"_a, "scales2"_a, "bias2"_a, "k"_a, "reps"_a);
    m.def("time_bf16_gemv_bias_residual", &wk::time_gemv_bias_residual, "w"_a, "copies"_a, "reps"_a);
    m.def("time_unembedding", &wk::time_unembedding, "w"_a, "norm_scale"_a, "x"_a, "temperature"_a.none(),
          "reps"_a);
    m.def("time_unembedding_screened", &wk::time_unembedding_screened, "w"_a, "norm_scale"_a, "x"_a,
          "temperature"_a, "reps"_a);
    m.def("time_sample", &wk::time_sample, "logits"_a, "temperature"_a, "top_p"_a, "top_k"_a, "reps"_a);
  }
  {  // ---- batched prefill kernels ----
    using namespace nb::literals;
    namespace pk = prefill_kernel_tests;
    m.def("prefill_gemm_bf16", &pk::gemm_bf16, "w"_a, "bias"_a, "x"_a, "x_lo"_a, "y"_a, "accumulate"_a);
    m.def("prefill_qkv_rope", &pk::qkv_rope, "x"_a, "norm_scale"_a, "w"_a, "bias"_a, "q_heads"_a, "kv_heads"_a,
          "pos0"_a, "rope_theta"_a, "rope_scaling_factor"_a, "initial_context_length"_a, "rope_ntk_alpha"_a,
          "rope_ntk_beta"_a, "eps"_a);
    m.def("prefill_attention", &pk::attention, "q"_a, "k_chunk"_a, "v_chunk"_a, "k_cache"_a, "v_cache"_a, "sinks"_a,
          "pos0"_a, "window"_a);
    m.def("prefill_router", &pk::router, "x"_a, "norm_scale"_a, "gate_w"_a, "gate_b"_a, "k"_a, "eps"_a);
    m.def("prefill_moe", &pk::moe, "x_normed"_a, "ids"_a, "weights"_a, "blocks1"_a, "scales1"_a, "bias1"_a,
          "blocks2"_a, "scales2"_a, "bias2"_a, "alpha"_a, "limit"_a, "residual"_a);
  }
}

}  // namespace gpt_oss

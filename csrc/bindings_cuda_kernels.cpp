// Test surface of the CUDA kernels: `_C.cuda_kernels.<stem>(numpy arrays...) -> numpy arrays`. Each entry
// copies its inputs to the device, launches one kernel family's public launcher, synchronises and copies the
// outputs back, so tests/kernels/ can compare every kernel with a float64 NumPy reference. Built only with
// the CUDA backend; nothing on the decode path goes through here.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

// ---- forward-path kernels (cuda-forward): norm_rope, attention_decode ----
#include <memory>
#include <vector>

#include "cuda/attention_decode.h"
#include "cuda/norm_rope.h"

namespace nb = nanobind;

namespace gpt_oss {

// ---- forward-path kernels (cuda-forward): norm_rope, attention_decode ----
namespace forward_kernel_tests {

template <typename T>
using HostArray = nb::ndarray<const T, nb::c_contig, nb::device::cpu>;

template <typename T>
DeviceBuffer to_device(const HostArray<T>& a) {
  return DeviceBuffer::from_host(a.data(), a.size() * sizeof(T));
}

// A device buffer full of NaN-ish bytes (0xFF: NaN for fp32 and bf16), so unwritten outputs are caught.
DeviceBuffer poisoned(size_t bytes) {
  DeviceBuffer d(bytes);
  CUDA_CHECK(cudaMemset(d.get(), 0xFF, bytes));
  return d;
}

template <typename T>
nb::ndarray<nb::numpy, T> to_host(const DeviceBuffer& d, std::vector<size_t> shape) {
  size_t n = 1;
  for (size_t s : shape) n *= s;
  auto host = std::make_unique<T[]>(n);
  CUDA_CHECK(cudaMemcpy(host.get(), d.get(), n * sizeof(T), cudaMemcpyDeviceToHost));
  T* raw = host.release();
  nb::capsule owner(raw, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  return nb::ndarray<nb::numpy, T>(raw, shape.size(), shape.data(), owner);
}

DeviceBuffer device_int(int value) { return DeviceBuffer::from_host(&value, sizeof(int)); }

// q fp32 [q_heads * head_dim], k_cache and v_cache (bf16 as uint16 [kv_heads, capacity, head_dim]) after one
// launch of launch_norm_qkv_rope at `pos`; the caches come back whole so tests see every slot.
nb::tuple norm_qkv_rope(HostArray<float> x, HostArray<float> norm_scale, HostArray<uint16_t> w,
                        HostArray<uint16_t> bias, int q_heads, int kv_heads, int head_dim, int pos,
                        HostArray<uint16_t> k_cache, HostArray<uint16_t> v_cache, float rope_theta,
                        float rope_scaling_factor, int initial_context_length, float rope_ntk_alpha,
                        float rope_ntk_beta, float eps) {
  if (k_cache.ndim() != 3 || v_cache.ndim() != 3 || k_cache.shape(0) != static_cast<size_t>(kv_heads) ||
      k_cache.shape(2) != static_cast<size_t>(head_dim) || v_cache.size() != k_cache.size())
    throw std::invalid_argument("k_cache / v_cache must both be [kv_heads, capacity, head_dim]");
  const int hidden = static_cast<int>(x.size());
  const size_t rows = static_cast<size_t>(q_heads + 2 * kv_heads) * head_dim;
  if (w.size() != rows * hidden || bias.size() != rows || norm_scale.size() != static_cast<size_t>(hidden))
    throw std::invalid_argument("w must be [(q_heads + 2 kv_heads) * head_dim, hidden] and bias its rows");
  ModelConfig rope_config;
  rope_config.head_dim = head_dim;
  rope_config.rope_theta = rope_theta;
  rope_config.rope_scaling_factor = rope_scaling_factor;
  rope_config.initial_context_length = initial_context_length;
  rope_config.rope_ntk_alpha = rope_ntk_alpha;
  rope_config.rope_ntk_beta = rope_ntk_beta;
  const std::vector<float> table = yarn_rope_table(rope_config, pos + 1);

  DeviceBuffer d_x = to_device(x), d_scale = to_device(norm_scale), d_w = to_device(w), d_bias = to_device(bias);
  DeviceBuffer d_k = to_device(k_cache), d_v = to_device(v_cache), d_pos = device_int(pos);
  DeviceBuffer d_rope = DeviceBuffer::from_host(table.data(), table.size() * sizeof(float));
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
  return nb::make_tuple(to_host<float>(d_q, {static_cast<size_t>(q_heads) * head_dim}),
                        to_host<uint16_t>(d_k, cache_shape), to_host<uint16_t>(d_v, cache_shape));
}

// out bf16 (as uint16) [q_heads * 64] of launch_attention_decode, launched twice on the same counters (the
// second launch checks that the in-launch combine re-arms them); returns (first, second).
nb::tuple attention_decode(HostArray<float> q, HostArray<uint16_t> k_cache, HostArray<uint16_t> v_cache,
                           HostArray<float> sinks, int pos, int max_splits, bool tensor_cores) {
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
  DeviceBuffer d_q = to_device(q), d_k = to_device(k_cache), d_v = to_device(v_cache), d_sinks = to_device(sinks);
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
  p.tensor_cores = tensor_cores;
  p.out = first.get<bf16>();
  launch_attention_decode(p, nullptr);
  p.out = second.get<bf16>();
  launch_attention_decode(p, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  return nb::make_tuple(to_host<uint16_t>(first, {out_elems}), to_host<uint16_t>(second, {out_elems}));
}

}  // namespace forward_kernel_tests

void register_cuda_kernel_tests(nb::module_& m) {
  m.doc() = "CUDA kernel test entry points (host arrays in, host arrays out)";
  // Entries are added below, one block per kernel family, each named by the kernel's stem.
  {  // ---- forward-path kernels (cuda-forward) ----
    using namespace nb::literals;
    m.def("norm_qkv_rope", &forward_kernel_tests::norm_qkv_rope, "x"_a, "norm_scale"_a, "w"_a, "bias"_a,
          "q_heads"_a, "kv_heads"_a, "head_dim"_a, "pos"_a, "k_cache"_a, "v_cache"_a, "rope_theta"_a,
          "rope_scaling_factor"_a, "initial_context_length"_a, "rope_ntk_alpha"_a, "rope_ntk_beta"_a, "eps"_a);
    m.def("attention_decode", &forward_kernel_tests::attention_decode, "q"_a, "k_cache"_a, "v_cache"_a, "sinks"_a,
          "pos"_a, "max_splits"_a = 0, "tensor_cores"_a = false);
  }
}

}  // namespace gpt_oss

// The only file that knows Python. It turns numpy arrays into TensorViews, picks a Backend and releases the
// GIL around every model call. Python API (python/gpt_oss_native/_C.pyi mirrors it):
//
//   Model(config: dict, weights: dict[str, ndarray], backend="cpu", max_context=8192, max_sequences=8,
//         num_threads=0, device=0)
//     .backend -> str
//     .new_sequence() -> int;  .free_sequence(seq);  .sequence_length(seq) -> int
//     .forward(seq, tokens: int32[n], all_logits=False) -> float32[n, vocab] | float32[vocab]
//     .forward_sample(seq, tokens, temperature, top_p, top_k, seed, draw) -> int
//     .submit_sample(seq, tokens | None, temperature, top_p, top_k, seed, draw);  .collect_sample(seq) -> int
//     .outstanding_samples(seq) -> int;  .runs_ahead -> bool;  .drop_last_token(seq)
//   sample_logits(logits: float32[vocab], temperature, top_p, top_k, seed, draw) -> int
//   built_with_cuda: bool;  cuda_devices() -> list[dict]  (empty without a driver or a GPU)
//
// Weights: bf16 tensors arrive as uint16 arrays, f32 as float32, MXFP4 blocks/scales as uint8; arrays must be
// C-contiguous. The Model keeps the weights dict alive: the CPU backend reads the (mmap'd) arrays in place.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "core/backend.h"
#ifdef GPT_OSS_NATIVE_WITH_CUDA
#include "cuda/device_query.h"
namespace gpt_oss {
void register_cuda_kernel_tests(nanobind::module_& m);  // csrc/bindings_cuda_kernels.cpp
}
#endif

namespace nb = nanobind;
using namespace nb::literals;

namespace gpt_oss {
namespace {

using Tokens = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Logits1D = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

template <typename T>
T config_field(const nb::dict& d, const char* key, T fallback, bool required) {
  if (!d.contains(key)) {
    if (required) throw std::invalid_argument(std::string("model config is missing '") + key + "'");
    return fallback;
  }
  return nb::cast<T>(d[key]);
}

ModelConfig config_from_dict(const nb::dict& d) {
  ModelConfig c;
  c.num_layers = config_field<int>(d, "num_layers", 0, true);
  c.num_experts = config_field<int>(d, "num_experts", 0, true);
  c.experts_per_token = config_field<int>(d, "experts_per_token", c.experts_per_token, false);
  c.vocab_size = config_field<int>(d, "vocab_size", 0, true);
  c.hidden_size = config_field<int>(d, "hidden_size", 0, true);
  c.intermediate_size = config_field<int>(d, "intermediate_size", 0, true);
  c.head_dim = config_field<int>(d, "head_dim", c.head_dim, false);
  c.num_attention_heads = config_field<int>(d, "num_attention_heads", 0, true);
  c.num_key_value_heads = config_field<int>(d, "num_key_value_heads", 0, true);
  c.sliding_window = config_field<int>(d, "sliding_window", c.sliding_window, false);
  c.initial_context_length = config_field<int>(d, "initial_context_length", c.initial_context_length, false);
  c.rope_theta = config_field<float>(d, "rope_theta", c.rope_theta, false);
  c.rope_scaling_factor = config_field<float>(d, "rope_scaling_factor", c.rope_scaling_factor, false);
  c.rope_ntk_alpha = config_field<float>(d, "rope_ntk_alpha", c.rope_ntk_alpha, false);
  c.rope_ntk_beta = config_field<float>(d, "rope_ntk_beta", c.rope_ntk_beta, false);
  c.swiglu_limit = config_field<float>(d, "swiglu_limit", c.swiglu_limit, false);
  c.swiglu_alpha = config_field<float>(d, "swiglu_alpha", c.swiglu_alpha, false);
  c.norm_eps = config_field<float>(d, "norm_eps", c.norm_eps, false);
  c.validate();
  return c;
}

Weights weights_from_dict(const nb::dict& d) {
  Weights w;
  for (auto [key, value] : d) {
    const std::string name = nb::cast<std::string>(key);
    nb::ndarray<nb::ro, nb::device::cpu, nb::c_contig> array;  // read-only: mmap'd checkpoints
    if (!nb::try_cast(value, array))
      throw std::invalid_argument("weight '" + name + "' is not a C-contiguous host array");
    TensorView v;
    v.data = array.data();
    const nb::dlpack::dtype t = array.dtype();
    if (t == nb::dtype<uint16_t>()) v.dtype = DType::bf16;
    else if (t == nb::dtype<float>()) v.dtype = DType::f32;
    else if (t == nb::dtype<uint8_t>()) v.dtype = DType::u8;
    else throw std::invalid_argument("weight '" + name + "' has an unsupported dtype (want uint16 for bf16, float32 or uint8)");
    for (size_t i = 0; i < array.ndim(); ++i) v.shape.push_back(static_cast<int64_t>(array.shape(i)));
    w.add(name, std::move(v));
  }
  return w;
}

SamplingParams sampling_params(float temperature, float top_p, int top_k, uint64_t seed) {
  const SamplingParams p{temperature, top_p, top_k, seed};
  p.validate();
  return p;
}

class PyModel {
 public:
  PyModel(nb::dict config, nb::dict weights, const std::string& backend, int max_context, int max_sequences,
          int num_threads, int device)
      : weights_keepalive_(weights) {
    const ModelConfig cfg = config_from_dict(config);
    const Weights w = weights_from_dict(weights);
    validate_weights(cfg, w);
    vocab_ = cfg.vocab_size;
    BackendOptions opts{max_context, max_sequences, num_threads, device};
    nb::gil_scoped_release release;
    if (backend == "cpu") {
      backend_ = make_cpu_backend(cfg, w, opts);
    } else if (backend == "cuda") {
#ifdef GPT_OSS_NATIVE_WITH_CUDA
      backend_ = make_cuda_backend(cfg, w, opts);
#else
      throw std::invalid_argument("this build of gpt_oss_native has no CUDA backend (nvcc was not found at build time)");
#endif
    } else {
      throw std::invalid_argument("unknown backend '" + backend + "' (choose cpu or cuda)");
    }
  }

  std::string backend() const { return backend_->name(); }
  int new_sequence() { return backend_->new_sequence(); }
  void free_sequence(int seq) { backend_->free_sequence(seq); }
  int sequence_length(int seq) const { return backend_->sequence_length(seq); }

  nb::ndarray<nb::numpy, float> forward(int seq, Tokens tokens, bool all_logits) {
    const int n = static_cast<int>(tokens.shape(0));
    if (n == 0) throw std::invalid_argument("forward needs at least one token");
    const size_t rows = all_logits ? static_cast<size_t>(n) : 1;
    float* out = new float[rows * vocab_];  // owned by the capsule below
    nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
    {
      nb::gil_scoped_release release;
      backend_->forward(seq, tokens.data(), n, out, all_logits);
    }
    if (all_logits) return nb::ndarray<nb::numpy, float>(out, {rows, static_cast<size_t>(vocab_)}, owner);
    return nb::ndarray<nb::numpy, float>(out, {static_cast<size_t>(vocab_)}, owner);
  }

  int32_t forward_sample(int seq, Tokens tokens, float temperature, float top_p, int top_k, uint64_t seed,
                         uint64_t draw) {
    const int n = static_cast<int>(tokens.shape(0));
    if (n == 0) throw std::invalid_argument("forward_sample needs at least one token");
    const SamplingParams p = sampling_params(temperature, top_p, top_k, seed);
    nb::gil_scoped_release release;
    return backend_->forward_sample(seq, tokens.data(), n, p, draw);
  }

  // tokens None: feed the sequence's previous draw, on the device.
  void submit_sample(int seq, std::optional<Tokens> tokens, float temperature, float top_p, int top_k,
                     uint64_t seed, uint64_t draw) {
    const int n = tokens ? static_cast<int>(tokens->shape(0)) : 1;
    if (n == 0) throw std::invalid_argument("submit_sample needs at least one token");
    const SamplingParams p = sampling_params(temperature, top_p, top_k, seed);
    nb::gil_scoped_release release;
    backend_->submit_sample(seq, tokens ? tokens->data() : nullptr, n, p, draw);
  }

  int32_t collect_sample(int seq) {
    nb::gil_scoped_release release;
    return backend_->collect_sample(seq);
  }

  int outstanding_samples(int seq) const { return backend_->outstanding_samples(seq); }
  bool runs_ahead() const { return backend_->runs_ahead(); }

  void drop_last_token(int seq) {
    nb::gil_scoped_release release;  // waits for the backend's lock, which a long forward may hold
    backend_->drop_last_token(seq);
  }

 private:
  nb::object weights_keepalive_;
  std::unique_ptr<Backend> backend_;
  int vocab_ = 0;
};

}  // namespace
}  // namespace gpt_oss

NB_MODULE(_C, m) {
  using namespace gpt_oss;
  m.doc() = "gpt_oss_native native core: CPU and CUDA backends for gpt-oss";

  nb::class_<PyModel>(m, "Model")
      .def(nb::init<nb::dict, nb::dict, const std::string&, int, int, int, int>(), "config"_a, "weights"_a,
           "backend"_a = "cpu", "max_context"_a = 8192, "max_sequences"_a = 8, "num_threads"_a = 0,
           "device"_a = 0)
      .def_prop_ro("backend", &PyModel::backend)
      .def("new_sequence", &PyModel::new_sequence)
      .def("free_sequence", &PyModel::free_sequence, "seq"_a)
      .def("sequence_length", &PyModel::sequence_length, "seq"_a)
      .def("forward", &PyModel::forward, "seq"_a, "tokens"_a, "all_logits"_a = false)
      .def("forward_sample", &PyModel::forward_sample, "seq"_a, "tokens"_a, "temperature"_a = 1.0f,
           "top_p"_a = 1.0f, "top_k"_a = 0, "seed"_a = 0, "draw"_a = 0)
      .def("submit_sample", &PyModel::submit_sample, "seq"_a, "tokens"_a.none(), "temperature"_a = 1.0f,
           "top_p"_a = 1.0f, "top_k"_a = 0, "seed"_a = 0, "draw"_a = 0)
      .def("collect_sample", &PyModel::collect_sample, "seq"_a)
      .def("outstanding_samples", &PyModel::outstanding_samples, "seq"_a)
      .def_prop_ro("runs_ahead", &PyModel::runs_ahead)
      .def("drop_last_token", &PyModel::drop_last_token, "seq"_a);

  m.def(
      "sample_logits",
      [](Logits1D logits, float temperature, float top_p, int top_k, uint64_t seed, uint64_t draw) {
        const SamplingParams p = sampling_params(temperature, top_p, top_k, seed);
        return sample_logits(logits.data(), static_cast<int>(logits.shape(0)), p, draw);
      },
      "logits"_a, "temperature"_a = 1.0f, "top_p"_a = 1.0f, "top_k"_a = 0, "seed"_a = 0, "draw"_a = 0);

#ifdef GPT_OSS_NATIVE_WITH_CUDA
  m.attr("built_with_cuda") = true;
  nb::module_ kernels = m.def_submodule("cuda_kernels");
  register_cuda_kernel_tests(kernels);
  m.def("cuda_devices", [] {
    nb::list out;
    for (const CudaDeviceInfo& d : cuda_device_query()) {
      nb::dict e;
      e["index"] = d.index;
      e["name"] = d.name;
      e["compute_capability"] = nb::make_tuple(d.major, d.minor);
      e["multiprocessors"] = d.multiprocessors;
      e["total_memory"] = d.total_memory;
      out.append(e);
    }
    return out;
  });
#else
  m.attr("built_with_cuda") = false;
  m.def("cuda_devices", [] { return nb::list(); });
#endif
}

// The Backend interface: what the Python Engine drives. One object owns one model's weights on one device and
// any number of sequences, each with its own KV cache. Implementations: csrc/cpu (always), csrc/cuda, metal/.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/model.h"

namespace gpt_oss {

struct BackendOptions {
  int max_context = 8192;   // tokens per sequence; a forward past it throws std::length_error
  int max_sequences = 8;    // sequences alive at once; new_sequence past it throws std::runtime_error
  int num_threads = 0;      // CPU: 0 → all cores
  int device = 0;           // CUDA device ordinal
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  virtual int new_sequence() = 0;
  virtual void free_sequence(int seq) = 0;
  virtual int sequence_length(int seq) const = 0;

  // Appends `n` tokens to the sequence (prefill when n > 1, decode when n == 1) and writes fp32 logits:
  // [n, vocab] rows when all_logits, else only the last position's [vocab].
  virtual void forward(int seq, const int32_t* tokens, int n, float* logits, bool all_logits) = 0;

  // forward(), then samples the next token from the last position's logits on the device; only the id comes
  // back. `draw` indexes the random stream of params.seed (the Engine passes the sequence's step count), so a
  // seed repeats exactly.
  virtual int32_t forward_sample(int seq, const int32_t* tokens, int n, const SamplingParams& params,
                                 uint64_t draw) = 0;
};

std::unique_ptr<Backend> make_cpu_backend(const ModelConfig&, const Weights&, const BackendOptions&);
// Defined only when the CUDA backend is built (GPT_OSS_NATIVE_WITH_CUDA).
std::unique_ptr<Backend> make_cuda_backend(const ModelConfig&, const Weights&, const BackendOptions&);
// Host-side sampling over fp32 logits, the definition every backend's device sampler must match in law.
int32_t sample_logits(const float* logits, int vocab, const SamplingParams& params, uint64_t draw);

}  // namespace gpt_oss

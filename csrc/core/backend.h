// The Backend interface: what the Python Engine drives. One object owns one model's weights on one device and
// any number of sequences, each with its own KV cache. Implementations: csrc/cpu (always), csrc/cuda, metal/.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/model.h"

namespace gpt_oss {

// Run-ahead depth: the submissions of one sequence that may wait to be collected. Two let the Engine queue step
// k + 1 before it waits for step k, so the device always has the next step (where the backend runs_ahead()).
constexpr int kMaxOutstandingSamples = 2;

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

  // Run-ahead decode: the device samples step k while the host still handles token k - 1.
  // submit_sample queues forward(tokens) and a draw from the last position's logits, and returns without waiting
  // for the token. `draw` indexes the random stream of params.seed (the Engine passes the sequence's step count),
  // so a seed repeats exactly. tokens == nullptr (then n must be 1) feeds the token this sequence's previous
  // submission drew, read on the device, so a step can be queued before the host has seen its input; there must be
  // such a draw, with no forward() since. At most kMaxOutstandingSamples submissions of a sequence wait to be
  // collected. A submission that throws (bad tokens, max_context, a full queue, no draw to feed) queued nothing.
  virtual void submit_sample(int seq, const int32_t* tokens, int n, const SamplingParams& params,
                             uint64_t draw) = 0;
  // Waits for the oldest outstanding submission of `seq` and returns its token. Throws std::runtime_error when
  // nothing is outstanding, when the sampler failed (NaN / +inf logits, or all -inf: the backend's message), or
  // when the step was fed a draw that failed; the submission is retired either way.
  virtual int32_t collect_sample(int seq) = 0;
  virtual int outstanding_samples(int seq) const = 0;
  // Whether submit_sample returns before its step is computed (CUDA: the work is queued on the device), so
  // queuing step k + 1 before collecting step k keeps the device busy while the host handles token k. A backend
  // that computes at submit (the CPU) answers false: there, running ahead would only hand every token out a
  // step late and compute a step that a stop throws away, so the Engine submits and collects in turn.
  virtual bool runs_ahead() const = 0;

  // Forgets the sequence's newest token, as if it had never been fed: the length drops by one and the next
  // token fed takes its position. For the step a run-ahead decode queued past a stop: dropping the token it fed
  // leaves the cache holding what a blocking loop would have fed. Only that one token: sliding-window layers
  // keep a ring as wide as the window (CUDA), where writing position p overwrote p - window, which no query
  // from p on reads, but dropping p - 1 as well would lose p - window, which the query at p - 1 reads. Throws
  // std::runtime_error when the sequence is empty, has submissions outstanding, or was fed nothing since its
  // last drop. Afterwards a device-fed submission is refused, as after forward(): the latest draw is no longer
  // the sequence's newest input.
  virtual void drop_last_token(int seq) = 0;

  // submit_sample + collect_sample: one blocking step. Throws when `seq` has submissions outstanding (their
  // tokens come first). forward() throws then too; free_sequence() waits for them and drops their tokens;
  // sequence_length() counts the tokens of every submission, collected or not.
  int32_t forward_sample(int seq, const int32_t* tokens, int n, const SamplingParams& params, uint64_t draw);
};

std::unique_ptr<Backend> make_cpu_backend(const ModelConfig&, const Weights&, const BackendOptions&);
// Defined only when the CUDA backend is built (GPT_OSS_NATIVE_WITH_CUDA).
std::unique_ptr<Backend> make_cuda_backend(const ModelConfig&, const Weights&, const BackendOptions&);
// Throws std::runtime_error: `seq` has `outstanding` submitted samples not collected, so `call` may not run.
void require_no_outstanding_samples(int seq, int outstanding, const char* call);
// Throws std::runtime_error unless drop_last_token(seq) may run on a sequence of `length` tokens with
// `outstanding` submissions not collected, whose last drop (-1: none) left it `dropped_at` tokens long.
void require_droppable_last_token(int seq, int64_t length, int outstanding, int64_t dropped_at);
// Host-side sampling over fp32 logits, the definition every backend's device sampler must match in law.
int32_t sample_logits(const float* logits, int vocab, const SamplingParams& params, uint64_t draw);

}  // namespace gpt_oss

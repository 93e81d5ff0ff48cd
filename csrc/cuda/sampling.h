// Public launchers of the device sampler (sampling.cu): only the token id crosses to the host.
#pragma once

#include <cstdint>

#include "core/model.h"
#include "cuda/common.cuh"

namespace gpt_oss {

// Bytes of scratch launch_sample needs for a vocabulary of this size.
size_t sample_workspace_bytes(int vocab);

// *token = a draw from softmax(logits / temperature) restricted to top_k and the top_p nucleus: the Gumbel-max
// draw of csrc/cpu/sampling.cpp with the noise of (params.seed, draw) (core/rng.h); argmax (lowest index on ties)
// when temperature == 0; -1 when a logit is NaN or +inf, or every logit is -inf at temperature > 0.
void launch_sample(const float* logits, int vocab, const SamplingParams& params, uint64_t draw, void* workspace,
                   int32_t* token, cudaStream_t);

}  // namespace gpt_oss

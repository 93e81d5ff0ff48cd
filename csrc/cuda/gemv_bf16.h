// Public launchers of the bf16 GEMV family (gemv_bf16.cu): attention output projection and unembedding.
#pragma once

#include "cuda/common.cuh"

namespace gpt_oss {

// residual[r] += W[r, :] · in + bias[r];  W bf16 [rows, cols] row-major, in bf16 [cols], residual fp32 [rows].
void launch_bf16_gemv_bias_residual(const bf16* W, const bf16* bias, const bf16* in, int rows, int cols,
                                    float* residual, cudaStream_t);

// logits[v] = W[v, :] · (rmsnorm(x) * norm_scale);  W bf16 [vocab, hidden], x fp32 [hidden], logits fp32 [vocab].
void launch_unembedding(const bf16* W, const float* norm_scale, const float* x, int vocab, int hidden, float eps,
                        float* logits, cudaStream_t);

}  // namespace gpt_oss

// Mixture of experts (gpt_oss/torch/model.py MLPBlock) after the router's gate GEMV:
//   route: top-k gate logits (ties → lower id), softmax over those k;
//   per routed expert e: h = W1_e x + b1_e  [2·intermediate, rows interleaving glu (even) / linear (odd)]
//                        a = swiglu(h)      [intermediate]
//                        y = W2_e a + b2_e  [hidden]
//   residual += Σ_j weight_j · y_j.
// Tokens are grouped by expert (gathered rows) so a prefill chunk reads each routed expert's weights once.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "cpu/kernels.h"

namespace gpt_oss {

float swiglu(float glu, float linear, float alpha, float limit) {
  glu = std::min(glu, limit);
  linear = std::min(std::max(linear, -limit), limit);
  return glu / (1.0f + std::exp(-alpha * glu)) * (linear + 1.0f);
}

void route_top_k(const float* gate_logits, int n, int experts, int k, int32_t* ids, float* weights) {
  std::vector<int32_t> order(experts);
  for (int t = 0; t < n; ++t) {
    const float* logits = gate_logits + static_cast<int64_t>(t) * experts;
    if (std::any_of(logits, logits + experts, [](float v) { return std::isnan(v); })) {
      for (int j = 0; j < k; ++j) ids[t * k + j] = j, weights[t * k + j] = std::nanf("");
      continue;  // partial_sort's comparison is no ordering with a NaN in it
    }
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    const float max_logit = logits[order[0]];
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) {
      ids[t * k + j] = order[j];
      weights[t * k + j] = std::exp(logits[order[j]] - max_logit);
      sum += weights[t * k + j];
    }
    for (int j = 0; j < k; ++j) weights[t * k + j] /= sum;
  }
}

Mxfp4Matrix MoeExperts::mlp1(int e) const {
  const int64_t rows = 2 * static_cast<int64_t>(intermediate), blocks = hidden / 32;
  return {mlp1_blocks + e * rows * blocks * 16, mlp1_scales + e * rows * blocks, mlp1_bias + e * rows,
          static_cast<int>(rows), hidden};
}

Mxfp4Matrix MoeExperts::mlp2(int e) const {
  const int64_t rows = hidden, blocks = intermediate / 32;
  return {mlp2_blocks + e * rows * blocks * 16, mlp2_scales + e * rows * blocks, mlp2_bias + e * rows,
          static_cast<int>(rows), intermediate};
}

void moe_experts_residual(ThreadPool& pool, const MoeExperts& moe, const float* x, int n, const int32_t* ids,
                          const float* weights, int k, float* residual, MoeScratch& scratch) {
  const int H = moe.hidden, I = moe.intermediate;
  // Slots (token, j) grouped by expert, in token order within an expert.
  std::vector<std::vector<int32_t>> slots_of(moe.experts);
  for (int32_t slot = 0; slot < n * k; ++slot) slots_of[ids[slot]].push_back(slot);
  for (int e = 0; e < moe.experts; ++e) {
    const std::vector<int32_t>& slots = slots_of[e];
    const int m = static_cast<int>(slots.size());
    if (m == 0) continue;
    scratch.x.resize(static_cast<size_t>(m) * H);
    scratch.h.resize(static_cast<size_t>(m) * 2 * I);
    scratch.act.resize(static_cast<size_t>(m) * I);
    scratch.y.resize(static_cast<size_t>(m) * H);
    for (int i = 0; i < m; ++i) {
      const float* src = x + static_cast<int64_t>(slots[i] / k) * H;
      std::copy(src, src + H, scratch.x.begin() + static_cast<int64_t>(i) * H);
    }
    linear_mxfp4(pool, scratch.x.data(), m, moe.mlp1(e), scratch.h.data());
    for (int64_t i = 0; i < static_cast<int64_t>(m) * I; ++i)
      scratch.act[i] = swiglu(scratch.h[2 * i], scratch.h[2 * i + 1], moe.swiglu_alpha, moe.swiglu_limit);
    linear_mxfp4(pool, scratch.act.data(), m, moe.mlp2(e), scratch.y.data());
    for (int i = 0; i < m; ++i) {
      const float w = weights[slots[i]];
      float* dst = residual + static_cast<int64_t>(slots[i] / k) * H;
      const float* y = scratch.y.data() + static_cast<int64_t>(i) * H;
      for (int c = 0; c < H; ++c) dst[c] += w * y[c];
    }
  }
}

}  // namespace gpt_oss

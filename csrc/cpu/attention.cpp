// Causal GQA attention with learned sinks and an optional sliding window (gpt_oss/torch/model.py sdpa):
//   for query head h (kv head g = h / group) at position p, keys j ∈ [max(0, p − window + 1), p]:
//     s_j = (q_h · k_{g,j}) · sm_scale;  m = max(sink_h, max_j s_j)
//     out_h = Σ_j e^{s_j − m} v_{g,j} / (e^{sink_h − m} + Σ_j e^{s_j − m})
// Work items are (token, kv head): the group's query heads share each key and value read. Keys before the
// chunk come from the cache, the chunk's own keys from k_new/v_new (the caller appends them afterwards, so a
// sliding ring never loses a key an earlier query of the same chunk still needs).
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/kernels.h"

namespace gpt_oss {

namespace {

float dot(const float* a, const float* b, int n) {
  float lanes[8] = {};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) lanes[l] += a[i + l] * b[i + l];
  float sum = 0.0f;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (float l : lanes) sum += l;
  return sum;
}

}  // namespace

void attention(ThreadPool& pool, const AttentionShape& s, const float* q, int64_t q_stride, const float* k_new,
               const float* v_new, int64_t kv_stride, int n, int64_t start, const LayerKvCache& cache,
               const float* sinks, float* out) {
  const int group = s.q_heads / s.kv_heads;
  const int D = s.head_dim;
  const int64_t out_stride = static_cast<int64_t>(s.q_heads) * D;
  pool.parallel_for(static_cast<int64_t>(n) * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int t = static_cast<int>(item / s.kv_heads);
      const int g = static_cast<int>(item % s.kv_heads);
      const int64_t position = start + t;
      const int64_t first = s.window > 0 ? std::max<int64_t>(0, position - s.window + 1) : 0;
      const int64_t count = position - first + 1;
      auto key = [&](int64_t j) {
        return (j < start ? cache.key(j) : k_new + (j - start) * kv_stride) + static_cast<int64_t>(g) * D;
      };
      auto value = [&](int64_t j) {
        return (j < start ? cache.value(j) : v_new + (j - start) * kv_stride) + static_cast<int64_t>(g) * D;
      };
      scores.assign(static_cast<size_t>(group) * count, 0.0f);
      for (int64_t j = 0; j < count; ++j) {
        const float* k = key(first + j);
        for (int m = 0; m < group; ++m) {
          const float* qh = q + t * q_stride + static_cast<int64_t>(g * group + m) * D;
          scores[m * count + j] = dot(qh, k, D) * s.sm_scale;
        }
      }
      for (int m = 0; m < group; ++m) {
        const int h = g * group + m;
        float* sc = scores.data() + m * count;
        float max_logit = sinks[h];
        for (int64_t j = 0; j < count; ++j) max_logit = std::max(max_logit, sc[j]);
        float denominator = std::exp(sinks[h] - max_logit);
        for (int64_t j = 0; j < count; ++j) {
          sc[j] = std::exp(sc[j] - max_logit);
          denominator += sc[j];
        }
        const float inv = 1.0f / denominator;
        for (int64_t j = 0; j < count; ++j) sc[j] *= inv;
      }
      float* o = out + t * out_stride + static_cast<int64_t>(g) * group * D;
      std::fill(o, o + static_cast<int64_t>(group) * D, 0.0f);
      for (int64_t j = 0; j < count; ++j) {
        const float* v = value(first + j);
        for (int m = 0; m < group; ++m) {
          const float w = scores[m * count + j];
          float* oh = o + static_cast<int64_t>(m) * D;
          for (int d = 0; d < D; ++d) oh[d] += w * v[d];
        }
      }
    }
  });
}

}  // namespace gpt_oss

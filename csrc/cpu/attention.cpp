// Causal GQA attention with learned sinks and an optional sliding window (gpt_oss/torch/model.py sdpa):
//   for query head h (kv head g = h / group) at position p, keys j ∈ [max(0, p − window + 1), p]:
//     s_j = (q_h · k_{g,j}) · sm_scale;  m = max(sink_h, max_j s_j)
//     out_h = Σ_j e^{s_j − m} v_{g,j} / (e^{sink_h − m} + Σ_j e^{s_j − m})
// Work items are (token, kv head). Scores come kKeyTile keys × kHeadTile heads at a time from the cache's
// transposed keys: each step multiplies one key row (kKeyTile consecutive positions of one dimension) by each
// head's query value, so the loops vectorise over positions with no horizontal sums, and a head tile shares
// every key read. Values accumulate kDimTile dimensions × kHeadTile heads in registers over all positions.
// Floor: the item's keys and values (2 · count · head_dim floats); compute ~2 · group · count · head_dim FMAs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/kernels.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define GPT_OSS_CPU_AVX512 1
#endif

namespace gpt_oss {

namespace {

constexpr int kKeyTile = 16;  // positions per score tile (one AVX-512 vector)
constexpr int kDimTile = 16;  // value dimensions per output tile
constexpr int kHeadTile = 8;

// scores[m * ld + j] = (q_m · k_j) · sm_scale for the kHeadTile heads of q_tile ([kHeadTile][D]; rows of absent
// heads are zero and their scores unused) and the keys of `run` (kv head g).
// acc[m][o] += w[m * ld + i] · v_i[d0 + o] is the value side: out rows [kHeadTile][D] accumulate Σ_i w_i v_i.
#ifdef GPT_OSS_CPU_AVX512
void tile_scores(const float* q_tile, const LayerKvCache::Run& run, int g, int D, float sm_scale, float* scores,
                 int64_t ld) {
  const __m512 scale = _mm512_set1_ps(sm_scale);
  for (int j0 = 0; j0 < run.length; j0 += kKeyTile) {
    const __mmask16 valid = static_cast<__mmask16>((1u << std::min(kKeyTile, run.length - j0)) - 1);
    __m512 acc[kHeadTile];
    for (int m = 0; m < kHeadTile; ++m) acc[m] = _mm512_setzero_ps();
    for (int d = 0; d < D; ++d) {
      const __m512 k = _mm512_maskz_loadu_ps(valid, run.keys + (static_cast<int64_t>(g) * D + d) * run.key_row + j0);
      for (int m = 0; m < kHeadTile; ++m) acc[m] = _mm512_fmadd_ps(_mm512_set1_ps(q_tile[m * D + d]), k, acc[m]);
    }
    for (int m = 0; m < kHeadTile; ++m) _mm512_mask_storeu_ps(scores + m * ld + j0, valid, _mm512_mul_ps(acc[m], scale));
  }
}

void tile_values(const float* w, int64_t ld, const LayerKvCache::Run& run, int g, int D, int kv_heads, float* out) {
  for (int d0 = 0; d0 < D; d0 += kDimTile) {
    const __mmask16 valid = static_cast<__mmask16>((1u << std::min(kDimTile, D - d0)) - 1);
    __m512 acc[kHeadTile];
    for (int m = 0; m < kHeadTile; ++m) acc[m] = _mm512_maskz_loadu_ps(valid, out + m * D + d0);
    for (int i = 0; i < run.length; ++i) {
      const __m512 v = _mm512_maskz_loadu_ps(valid, run.values + (static_cast<int64_t>(i) * kv_heads + g) * D + d0);
      for (int m = 0; m < kHeadTile; ++m) acc[m] = _mm512_fmadd_ps(_mm512_set1_ps(w[m * ld + i]), v, acc[m]);
    }
    for (int m = 0; m < kHeadTile; ++m) _mm512_mask_storeu_ps(out + m * D + d0, valid, acc[m]);
  }
}
#else
void tile_scores(const float* q_tile, const LayerKvCache::Run& run, int g, int D, float sm_scale, float* scores,
                 int64_t ld) {
  for (int j0 = 0; j0 < run.length; j0 += kKeyTile) {
    const int valid = std::min(kKeyTile, run.length - j0);
    float acc[kHeadTile][kKeyTile] = {};
    for (int d = 0; d < D; ++d) {
      const float* k = run.keys + (static_cast<int64_t>(g) * D + d) * run.key_row + j0;
      for (int m = 0; m < kHeadTile; ++m)
        for (int j = 0; j < valid; ++j) acc[m][j] += q_tile[m * D + d] * k[j];
    }
    for (int m = 0; m < kHeadTile; ++m)
      for (int j = 0; j < valid; ++j) scores[m * ld + j0 + j] = acc[m][j] * sm_scale;
  }
}

void tile_values(const float* w, int64_t ld, const LayerKvCache::Run& run, int g, int D, int kv_heads, float* out) {
  for (int d0 = 0; d0 < D; d0 += kDimTile) {
    const int valid = std::min(kDimTile, D - d0);
    float acc[kHeadTile][kDimTile] = {};
    for (int i = 0; i < run.length; ++i) {
      const float* v = run.values + (static_cast<int64_t>(i) * kv_heads + g) * D + d0;
      for (int m = 0; m < kHeadTile; ++m)
        for (int o = 0; o < valid; ++o) acc[m][o] += w[m * ld + i] * v[o];
    }
    for (int m = 0; m < kHeadTile; ++m)
      for (int o = 0; o < valid; ++o) out[m * D + d0 + o] += acc[m][o];
  }
}
#endif

// e^x for x <= 0 (softmax arguments, max subtracted), ~1 ulp (Cephes expf): plain arithmetic, so the loops
// below vectorise without -ffast-math, unlike calls to std::exp.
inline float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 · 2^23: adding and subtracting it rounds to an integer
  x = std::max(x, -87.0f);               // e^-87 ≈ 1.6e-38 still normal; anything smaller is 0 to softmax
  const float n = (x * kLog2e + kRound) - kRound;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 0]
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return y * two_n;
}

// scores[j] ← e^{scores[j] − m} / (e^{sink − m} + Σ_j e^{scores[j] − m}), m = max(sink, scores).
// Reductions run in kLanes independent partial results so they vectorise too.
void softmax_with_sink(float* scores, int64_t count, float sink) {
  constexpr int kLanes = 16;
  float lane_max[kLanes];
  std::fill(lane_max, lane_max + kLanes, sink);
  int64_t j = 0;
  for (; j + kLanes <= count; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lane_max[l] = std::max(lane_max[l], scores[j + l]);
  float max_logit = *std::max_element(lane_max, lane_max + kLanes);
  for (; j < count; ++j) max_logit = std::max(max_logit, scores[j]);

  for (j = 0; j < count; ++j) scores[j] = exp_nonpositive(scores[j] - max_logit);
  float lane_sum[kLanes] = {};
  for (j = 0; j + kLanes <= count; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lane_sum[l] += scores[j + l];
  float denominator = exp_nonpositive(sink - max_logit);
  for (; j < count; ++j) denominator += scores[j];
  for (float l : lane_sum) denominator += l;
  const float inv = 1.0f / denominator;
  for (j = 0; j < count; ++j) scores[j] *= inv;
}

}  // namespace

void attention(ThreadPool& pool, const AttentionShape& s, const float* q, int64_t q_stride, int n, int64_t start,
               const LayerKvCache& cache, const float* sinks, float* out) {
  const int group = s.q_heads / s.kv_heads;
  const int D = s.head_dim;
  const int64_t out_stride = static_cast<int64_t>(s.q_heads) * D;
  pool.parallel_for(static_cast<int64_t>(n) * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, q_tile(static_cast<size_t>(kHeadTile) * D), o_tile(static_cast<size_t>(kHeadTile) * D);
    for (int64_t item = begin; item < end; ++item) {
      const int t = static_cast<int>(item / s.kv_heads);
      const int g = static_cast<int>(item % s.kv_heads);
      const int64_t position = start + t;
      const int64_t first = s.window > 0 ? std::max<int64_t>(0, position - s.window + 1) : 0;
      const int64_t count = position - first + 1;
      // Score rows for whole head tiles, so the tiles never check which heads exist.
      const int padded_group = (group + kHeadTile - 1) / kHeadTile * kHeadTile;
      scores.assign(static_cast<size_t>(padded_group) * count, 0.0f);

      for (int m0 = 0; m0 < group; m0 += kHeadTile) {
        const int heads = std::min(kHeadTile, group - m0);
        std::fill(q_tile.begin(), q_tile.end(), 0.0f);
        const float* q_heads = q + t * q_stride + static_cast<int64_t>(g * group + m0) * D;
        std::copy(q_heads, q_heads + static_cast<int64_t>(heads) * D, q_tile.begin());
        for (int64_t j = 0; j < count;) {
          const LayerKvCache::Run run = cache.run(first + j, count - j);
          tile_scores(q_tile.data(), run, g, D, s.sm_scale, scores.data() + m0 * count + j, count);
          j += run.length;
        }
      }

      for (int m = 0; m < group; ++m) softmax_with_sink(scores.data() + m * count, count, sinks[g * group + m]);

      float* o = out + t * out_stride + static_cast<int64_t>(g) * group * D;
      for (int m0 = 0; m0 < group; m0 += kHeadTile) {
        std::fill(o_tile.begin(), o_tile.end(), 0.0f);
        for (int64_t j = 0; j < count;) {
          const LayerKvCache::Run run = cache.run(first + j, count - j);
          tile_values(scores.data() + m0 * count + j, count, run, g, D, s.kv_heads, o_tile.data());
          j += run.length;
        }
        const int heads = std::min(kHeadTile, group - m0);
        std::copy(o_tile.begin(), o_tile.begin() + static_cast<int64_t>(heads) * D, o + static_cast<int64_t>(m0) * D);
      }
    }
  });
}

}  // namespace gpt_oss

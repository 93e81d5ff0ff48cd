// YaRN rotary embedding (https://arxiv.org/abs/2309.00071), as gpt_oss/torch/model.py defines it:
//   freq_i = theta^(2i / D), i < D/2;  with scaling factor s > 1:
//     low  = D/2 · ln(L0 / (beta · 2π)) / ln(theta),  high = D/2 · ln(L0 / (alpha · 2π)) / ln(theta)
//     ramp_i = clamp((i − low) / (high − low), 0, 1)
//     inv_freq_i = ramp_i / (s · freq_i) + (1 − ramp_i) / freq_i          (NTK-by-parts)
//     concentration = 0.1 · ln(s) + 1
//   else inv_freq_i = 1 / freq_i, concentration = 1.
// cos/sin of position · inv_freq carry the concentration; a head's two halves form the rotated pairs.
// Frequencies and angles are computed in double; only cos and sin are rounded to fp32.
#include "core/rope.h"

#include <cmath>

namespace gpt_oss {

YarnRope yarn_rope(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  const double theta = c.rope_theta, scaling = c.rope_scaling_factor;
  YarnRope rope;
  rope.inv_freq.resize(half);
  double low = 0.0, high = 1.0;
  if (scaling > 1.0) {
    const double two_pi = 2.0 * M_PI;
    low = half * std::log(c.initial_context_length / (c.rope_ntk_beta * two_pi)) / std::log(theta);
    high = half * std::log(c.initial_context_length / (c.rope_ntk_alpha * two_pi)) / std::log(theta);
    rope.concentration = 0.1 * std::log(scaling) + 1.0;
  }
  for (int i = 0; i < half; ++i) {
    const double freq = std::pow(theta, 2.0 * i / c.head_dim);
    double inv_freq = 1.0 / freq;
    if (scaling > 1.0) {
      const double ramp = std::fmin(std::fmax((i - low) / (high - low), 0.0), 1.0);
      inv_freq = ramp / (scaling * freq) + (1.0 - ramp) / freq;
    }
    rope.inv_freq[i] = inv_freq;
  }
  return rope;
}

void rope_cos_sin(const YarnRope& rope, int64_t position, float* cos, float* sin) {
  const int half = static_cast<int>(rope.inv_freq.size());
  for (int i = 0; i < half; ++i) {
    const double angle = static_cast<double>(position) * rope.inv_freq[i];
    cos[i] = static_cast<float>(std::cos(angle) * rope.concentration);
    sin[i] = static_cast<float>(std::sin(angle) * rope.concentration);
  }
}

}  // namespace gpt_oss

// YaRN-scaled rotary embedding (gpt_oss/torch/model.py RotaryEmbedding), the one definition every backend uses:
// head_dim/2 inverse frequencies and the attention "concentration" that scales both cos and sin. Computed in
// double so long positions keep their phase; only cos and sin are rounded to fp32.
#pragma once

#include <cstdint>
#include <vector>

#include "core/model.h"

namespace gpt_oss {

struct YarnRope {
  std::vector<double> inv_freq;  // [head_dim / 2]
  double concentration = 1.0;
};
YarnRope yarn_rope(const ModelConfig& config);
// cos[i] = cos(position · inv_freq[i]) · concentration, sin likewise; both [head_dim / 2].
void rope_cos_sin(const YarnRope& rope, int64_t position, float* cos, float* sin);

}  // namespace gpt_oss

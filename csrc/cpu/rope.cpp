// Applies the rotary embedding of core/rope.h to query and key heads.
#include "cpu/kernels.h"

namespace gpt_oss {

void apply_rope(float* x, int heads, int head_dim, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int h = 0; h < heads; ++h) {
    float* x1 = x + static_cast<int64_t>(h) * head_dim;
    float* x2 = x1 + half;
    for (int i = 0; i < half; ++i) {
      const float a = x1[i], b = x2[i];
      x1[i] = a * cos[i] - b * sin[i];
      x2[i] = b * cos[i] + a * sin[i];
    }
  }
}

}  // namespace gpt_oss

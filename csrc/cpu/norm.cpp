// RMSNorm: out[t, :] = x[t, :] * rsqrt(mean(x[t, :]^2) + eps) * scale. fp32 [n, dim] rows; the mean of squares
// accumulates in double so long rows lose nothing.
#include <cmath>

#include "cpu/kernels.h"

namespace gpt_oss {

void rmsnorm(const float* x, const float* scale, int n, int dim, float eps, float* out) {
  for (int t = 0; t < n; ++t) {
    const float* row = x + static_cast<int64_t>(t) * dim;
    double sum_sq = 0.0;
    for (int i = 0; i < dim; ++i) sum_sq += static_cast<double>(row[i]) * row[i];
    const float inv_rms = static_cast<float>(1.0 / std::sqrt(sum_sq / dim + eps));
    float* dst = out + static_cast<int64_t>(t) * dim;
    for (int i = 0; i < dim; ++i) dst[i] = row[i] * inv_rms * scale[i];
  }
}

}  // namespace gpt_oss

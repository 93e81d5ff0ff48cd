// Weight-streaming matmuls: y[t, r] = Σ_c W[r, c] · x[t, c] + bias[r] with W read in place.
//   linear_bf16 : W bf16 [rows, cols] row-major.
//   linear_mxfp4: W MXFP4 [rows, cols]: per row, cols/32 blocks of 16 bytes (value 2k in the low nibble of
//                 byte k, 2k+1 in the high nibble) and one E8M0 scale byte per block.
// Floor: decode reads every weight byte once (memory bound); prefill reuses each weight tile across the tokens.
// Work splits over output rows (threads), then tiles of kRowTile rows × kTokenTile tokens whose accumulators
// stay in registers; weights are widened to fp32 in registers (bf16: a 16-bit shift; FP4: a 16-entry table
// lookup by permute), never copied. The AVX-512 path and the portable path compute the same sums.
#include <algorithm>
#include <array>
#include <cstring>

#include "cpu/kernels.h"
#include "cpu/numerics.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define GPT_OSS_CPU_AVX512 1
// GCC 12's AVX-512 headers trip false -W(maybe-)uninitialized warnings (_mm512_undefined_*, GCC PR 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#endif

namespace gpt_oss {

namespace {

constexpr int kRowTile = 4;
constexpr int kTokenTile = 4;

// 2^(s - 127) for every E8M0 byte.
const std::array<float, 256>& e8m0_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int s = 0; s < 256; ++s) t[s] = e8m0_to_f32(static_cast<uint8_t>(s));
    return t;
  }();
  return table;
}

// ---- bf16 tiles: out[t * ldo + r] = Σ_c W[r][c] x[t][c] for r < R, t < T ----------------------------------
#ifdef GPT_OSS_CPU_AVX512
inline __m512 load_bf16x16(const uint16_t* p, __mmask16 mask) {
  const __m256i bits = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

template <int R, int T>
void bf16_tile(const uint16_t* W, int64_t ldw, const float* x, int64_t ldx, int cols, float* out, int64_t ldo) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int c = 0; c < cols; c += 16) {
    const __mmask16 mask = cols - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (cols - c)) - 1);
    __m512 w[R];
    for (int r = 0; r < R; ++r) w[r] = load_bf16x16(W + r * ldw + c, mask);
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + t * ldx + c);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(w[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) out[t * ldo + r] = _mm512_reduce_add_ps(acc[r][t]);
}
#else
template <int R, int T>
void bf16_tile(const uint16_t* W, int64_t ldw, const float* x, int64_t ldx, int cols, float* out, int64_t ldo) {
  constexpr int kLanes = 16;  // independent partial sums, so the compiler may vectorise across them
  float acc[R][T][kLanes] = {};
  int c = 0;
  for (; c + kLanes <= cols; c += kLanes)
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t)
        for (int l = 0; l < kLanes; ++l) acc[r][t][l] += bf16_to_f32(W[r * ldw + c + l]) * x[t * ldx + c + l];
  for (; c < cols; ++c)
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) acc[r][t][0] += bf16_to_f32(W[r * ldw + c]) * x[t * ldx + c];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float sum = 0.0f;
      for (int l = 0; l < kLanes; ++l) sum += acc[r][t][l];
      out[t * ldo + r] = sum;
    }
}
#endif

// ---- MXFP4 tiles over de-interleaved activations ------------------------------------------------------------
// xd holds x with each 32-value block reordered as [16 even-index values, 16 odd-index values], so the low
// nibbles of a block's 16 bytes pair with the first half and the high nibbles with the second.
void deinterleave_blocks(const float* x, int n, int cols, float* xd) {
  for (int64_t t = 0; t < n; ++t)
    for (int b = 0; b < cols; b += kMxfp4BlockValues)
      for (int i = 0; i < kMxfp4BlockValues / 2; ++i) {
        xd[t * cols + b + i] = x[t * cols + b + 2 * i];
        xd[t * cols + b + 16 + i] = x[t * cols + b + 2 * i + 1];
      }
}

#ifdef GPT_OSS_CPU_AVX512
template <int R, int T>
void mxfp4_tile(const uint8_t* blocks, const uint8_t* scales, int blocks_per_row, const float* xd, int64_t ldx,
                float* out, int64_t ldo) {
  const __m512 lut = _mm512_loadu_ps(kFp4Values);
  const float* scale_of = e8m0_table().data();
  const __m512i low_nibble = _mm512_set1_epi32(0x0F);
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int b = 0; b < blocks_per_row; ++b) {
    __m512 w_even[R], w_odd[R];
    for (int r = 0; r < R; ++r) {
      const int64_t block = static_cast<int64_t>(r) * blocks_per_row + b;
      const __m512i codes = _mm512_cvtepu8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(blocks + block * kMxfp4BlockBytes)));
      const __m512 scale = _mm512_set1_ps(scale_of[scales[block]]);
      w_even[r] = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(codes, low_nibble), lut), scale);
      w_odd[r] = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), lut), scale);
    }
    for (int t = 0; t < T; ++t) {
      const float* xb = xd + t * ldx + b * kMxfp4BlockValues;
      const __m512 x_even = _mm512_loadu_ps(xb), x_odd = _mm512_loadu_ps(xb + 16);
      for (int r = 0; r < R; ++r)
        acc[r][t] = _mm512_fmadd_ps(w_odd[r], x_odd, _mm512_fmadd_ps(w_even[r], x_even, acc[r][t]));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) out[t * ldo + r] = _mm512_reduce_add_ps(acc[r][t]);
}
#else
template <int R, int T>
void mxfp4_tile(const uint8_t* blocks, const uint8_t* scales, int blocks_per_row, const float* xd, int64_t ldx,
                float* out, int64_t ldo) {
  constexpr int kHalf = kMxfp4BlockValues / 2;
  const float* scale_of = e8m0_table().data();
  float acc[R][T][kHalf] = {};
  for (int b = 0; b < blocks_per_row; ++b)
    for (int r = 0; r < R; ++r) {
      const int64_t block = static_cast<int64_t>(r) * blocks_per_row + b;
      const uint8_t* bytes = blocks + block * kMxfp4BlockBytes;
      const float scale = scale_of[scales[block]];
      float w_even[kHalf], w_odd[kHalf];
      for (int i = 0; i < kHalf; ++i) {
        w_even[i] = kFp4Values[bytes[i] & 0x0F] * scale;
        w_odd[i] = kFp4Values[bytes[i] >> 4] * scale;
      }
      for (int t = 0; t < T; ++t) {
        const float* xb = xd + t * ldx + b * kMxfp4BlockValues;
        for (int i = 0; i < kHalf; ++i) acc[r][t][i] += w_even[i] * xb[i] + w_odd[i] * xb[kHalf + i];
      }
    }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float sum = 0.0f;
      for (int i = 0; i < kHalf; ++i) sum += acc[r][t][i];
      out[t * ldo + r] = sum;
    }
}
#endif

// Runs tile(R, T) over rows [r0, r1) × tokens [0, n): full kRowTile × kTokenTile tiles, then the edges.
// tile_fn<R, T>(row, token) computes the R×T tile whose top-left is (row, token).
template <typename TileFn>
void for_each_tile(int64_t r0, int64_t r1, int n, const TileFn& tile) {
  int64_t r = r0;
  for (; r + kRowTile <= r1; r += kRowTile) {
    int t = 0;
    for (; t + kTokenTile <= n; t += kTokenTile) tile.template run<kRowTile, kTokenTile>(r, t);
    for (; t < n; ++t) tile.template run<kRowTile, 1>(r, t);
  }
  for (; r < r1; ++r) {
    int t = 0;
    for (; t + kTokenTile <= n; t += kTokenTile) tile.template run<1, kTokenTile>(r, t);
    for (; t < n; ++t) tile.template run<1, 1>(r, t);
  }
}

void add_bias(const uint16_t* bias, int n, int64_t r0, int64_t r1, int rows, float* y) {
  if (bias == nullptr) return;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = r0; r < r1; ++r) y[t * rows + r] += bf16_to_f32(bias[r]);
}

struct Bf16Tile {
  const uint16_t* W;
  const float* x;
  float* y;
  int rows, cols;
  template <int R, int T>
  void run(int64_t r, int t) const {
    bf16_tile<R, T>(W + r * cols, cols, x + static_cast<int64_t>(t) * cols, cols, cols,
                    y + static_cast<int64_t>(t) * rows + r, rows);
  }
};

struct Mxfp4Tile {
  const Mxfp4Matrix* W;
  const float* xd;
  float* y;
  template <int R, int T>
  void run(int64_t r, int t) const {
    const int blocks_per_row = W->cols / kMxfp4BlockValues;
    mxfp4_tile<R, T>(W->blocks + r * blocks_per_row * kMxfp4BlockBytes, W->scales + r * blocks_per_row,
                     blocks_per_row, xd + static_cast<int64_t>(t) * W->cols, W->cols,
                     y + static_cast<int64_t>(t) * W->rows + r, W->rows);
  }
};

}  // namespace

void linear_bf16(ThreadPool& pool, const float* x, int n, const uint16_t* W, const uint16_t* bias, int rows,
                 int cols, float* y) {
  const Bf16Tile tile{W, x, y, rows, cols};
  pool.parallel_for(rows, kRowTile, [&](int64_t r0, int64_t r1) {
    for_each_tile(r0, r1, n, tile);
    add_bias(bias, n, r0, r1, rows, y);
  });
}

void linear_mxfp4(ThreadPool& pool, const float* x, int n, const Mxfp4Matrix& W, float* y) {
  std::vector<float> xd(static_cast<size_t>(n) * W.cols);
  deinterleave_blocks(x, n, W.cols, xd.data());
  const Mxfp4Tile tile{&W, xd.data(), y};
  pool.parallel_for(W.rows, kRowTile, [&](int64_t r0, int64_t r1) {
    for_each_tile(r0, r1, n, tile);
    add_bias(W.bias, n, r0, r1, W.rows, y);
  });
}

}  // namespace gpt_oss

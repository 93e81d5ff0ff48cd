// Weight-streaming matmuls: y[t, r] = Σ_c W[r, c] · x[t, c] + bias[r] with W read in place.
//   linear_bf16 : W bf16 [rows, cols] row-major.
//   linear_mxfp4: W MXFP4 [rows, cols]: per row, cols/32 blocks of 16 bytes (value 2k in the low nibble of
//                 byte k, 2k+1 in the high nibble) and one E8M0 scale byte per block.
// Floor: decode reads every weight byte once. bf16 rows run at the memory bandwidth; MXFP4 rows are bound by the
// decode work (~4.5 cycles per 32-value block on Zen 4, ~13 GB/s of packed weights per core). Prefill reuses
// each weight tile across tokens. Work splits over output rows (threads); single-token rows stream one at a
// time into four accumulators, multi-token work runs kRowTile × kTokenTile register tiles. Weights widen to
// fp32 in registers (bf16: a shift or a mask; FP4: a 16-entry table lookup by permute), never copied.
// Paths: AVX-512 (everything), AVX2+FMA (decode rows; ~1.5x slower than AVX-512, 4x faster than portable),
// portable C++ (any compiler; auto-vectorised). They compute the same sums up to summation order.
#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>

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
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GPT_OSS_CPU_AVX2 1  // decode rows only; multi-token tiles use the portable code
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

#if defined(GPT_OSS_CPU_AVX512) || defined(GPT_OSS_CPU_AVX2)
// A hint only (never faults), so the address may run past the end of the matrix.
inline void prefetch_ahead(const uint8_t* p, uintptr_t bytes) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) + bytes), _MM_HINT_T0);
}
#endif

// Activations enter the tiles pair-split: each 32-column chunk holds its 16 even-column values, then its 16
// odd-column values (the last chunk zero-padded). A bf16 weight row read as 32-bit words then widens with one
// shift (the even column, low half) and one mask (the odd column, high half); an MXFP4 byte's low and high
// nibbles are likewise an even/odd column pair.
constexpr int kChunk = 32;

int64_t padded_cols(int cols) { return (cols + kChunk - 1) / kChunk * kChunk; }

// Portable tiles: kChunk / 2 independent partial sums per (row, token), so the compiler may vectorise across them.
constexpr int kHalf = kChunk / 2;

// acc[t] += w_even · x[t][:kHalf] + w_odd · x[t][kHalf:] for the T tokens of one split-pair chunk (split_pairs).
template <int T>
inline void accumulate_pairs(float (&acc)[T][kHalf], const float* w_even, const float* w_odd, const float* x,
                             int64_t ldx) {
  for (int t = 0; t < T; ++t) {
    const float* xc = x + t * ldx;
    for (int i = 0; i < kHalf; ++i) acc[t][i] += w_even[i] * xc[i] + w_odd[i] * xc[kHalf + i];
  }
}

// out[t, r] = the sum of row r's partial sums for token t.
template <int R, int T>
inline void store_sums(const float (&acc)[R][T][kHalf], float* out, int64_t ldo) {
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float sum = 0.0f;
      for (int i = 0; i < kHalf; ++i) sum += acc[r][t][i];
      out[t * ldo + r] = sum;
    }
}

void split_pairs(const float* x, int n, int cols, float* xs) {
  const int64_t ld = padded_cols(cols);
  for (int64_t t = 0; t < n; ++t)
    for (int c = 0; c < ld; c += kChunk)
      for (int i = 0; i < kChunk / 2; ++i) {
        const int even = c + 2 * i, odd = even + 1;
        xs[t * ld + c + i] = even < cols ? x[t * cols + even] : 0.0f;
        xs[t * ld + c + kChunk / 2 + i] = odd < cols ? x[t * cols + odd] : 0.0f;
      }
}

// ---- bf16 tiles: out[t * ldo + r] = Σ_c W[r][c] x[t][c] for r < R, t < T; cols even -----------------------
#ifdef GPT_OSS_CPU_AVX512
// One row, one token (decode): a single memory stream and four independent accumulators, so neither the
// prefetchers nor the FMA latency limit it (a 4-row tile reaches ~60% of the bandwidth this does).
float bf16_row(const uint16_t* W, const float* xs, int cols) {
  const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  int c = 0;
  for (; c + 2 * kChunk <= cols; c += 2 * kChunk) {
    const __m512i w0 = _mm512_loadu_si512(W + c), w1 = _mm512_loadu_si512(W + c + kChunk);
    acc0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w0, 16)), _mm512_loadu_ps(xs + c), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(w0, high_half)), _mm512_loadu_ps(xs + c + 16), acc1);
    acc2 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w1, 16)), _mm512_loadu_ps(xs + c + 32), acc2);
    acc3 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(w1, high_half)), _mm512_loadu_ps(xs + c + 48), acc3);
  }
  for (; c < cols; c += kChunk) {
    const __mmask16 mask = static_cast<__mmask16>((1u << std::min(kChunk / 2, (cols - c) / 2)) - 1);
    const __m512i w = _mm512_maskz_loadu_epi32(mask, W + c);
    acc0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), _mm512_loadu_ps(xs + c), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(w, high_half)), _mm512_loadu_ps(xs + c + 16), acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

template <int R, int T>
void bf16_tile(const uint16_t* W, int64_t ldw, const float* xs, int64_t ldx, int cols, float* out, int64_t ldo) {
  const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int c = 0; c < cols; c += kChunk) {
    const int pairs = std::min(kChunk / 2, (cols - c) / 2);
    const __mmask16 mask = static_cast<__mmask16>((1u << pairs) - 1);
    __m512 w_even[R], w_odd[R];
    for (int r = 0; r < R; ++r) {
      const __m512i words = _mm512_maskz_loadu_epi32(mask, W + r * ldw + c);
      w_even[r] = _mm512_castsi512_ps(_mm512_slli_epi32(words, 16));
      w_odd[r] = _mm512_castsi512_ps(_mm512_and_si512(words, high_half));
    }
    for (int t = 0; t < T; ++t) {
      const __m512 x_even = _mm512_loadu_ps(xs + t * ldx + c);
      const __m512 x_odd = _mm512_loadu_ps(xs + t * ldx + c + kChunk / 2);
      for (int r = 0; r < R; ++r)
        acc[r][t] = _mm512_fmadd_ps(w_odd[r], x_odd, _mm512_fmadd_ps(w_even[r], x_even, acc[r][t]));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) out[t * ldo + r] = _mm512_reduce_add_ps(acc[r][t]);
}
#else
template <int R, int T>
void bf16_tile(const uint16_t* W, int64_t ldw, const float* xs, int64_t ldx, int cols, float* out, int64_t ldo) {
  float acc[R][T][kHalf] = {};
  for (int c = 0; c < cols; c += kChunk) {
    const int pairs = std::min(kHalf, (cols - c) / 2);
    for (int r = 0; r < R; ++r) {
      float w_even[kHalf] = {}, w_odd[kHalf] = {};
      for (int i = 0; i < pairs; ++i) {
        w_even[i] = bf16_to_f32(W[r * ldw + c + 2 * i]);
        w_odd[i] = bf16_to_f32(W[r * ldw + c + 2 * i + 1]);
      }
      accumulate_pairs(acc[r], w_even, w_odd, xs + c, ldx);
    }
  }
  store_sums(acc, out, ldo);
}

#ifdef GPT_OSS_CPU_AVX2
inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// As the AVX-512 bf16_row, with 8-lane halves: the 16 columns at c + 16h are xs[c + 8h ..] (even) and
// xs[c + 16 + 8h ..] (odd).
float bf16_row(const uint16_t* W, const float* xs, int cols) {
  const __m256i high_half = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int c = 0; c < cols; c += kChunk) {
    for (int h = 0; h < 2; ++h) {
      const int pairs = std::min(8, std::max(0, (cols - c) / 2 - 8 * h));
      const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(pairs), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      const __m256i words = _mm256_maskload_epi32(reinterpret_cast<const int*>(W + c + 16 * h), lanes);
      acc[2 * h] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(words, 16)),
                                   _mm256_loadu_ps(xs + c + 8 * h), acc[2 * h]);
      acc[2 * h + 1] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(words, high_half)),
                                       _mm256_loadu_ps(xs + c + 16 + 8 * h), acc[2 * h + 1]);
    }
  }
  return horizontal_sum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}
#else
float bf16_row(const uint16_t* W, const float* xs, int cols) {
  float out;
  bf16_tile<1, 1>(W, 0, xs, 0, cols, &out, 0);
  return out;
}
#endif
#endif

// ---- MXFP4 tiles: the same sums with W decoded per block: code → kFp4Values · 2^(scale − 127) ---------------
#ifdef GPT_OSS_CPU_AVX512
// The block's table, scaled once; vpermps reads only the low 4 bits of each index, so the low nibble needs no
// mask and the high one only a shift.
inline __m512 scaled_fp4_table(__m512 fp4_values, float scale) {
  return _mm512_mul_ps(fp4_values, _mm512_set1_ps(scale));
}
inline __m512i fp4_codes(const uint8_t* block) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block)));
}

// One row, one token (decode): two blocks per step into four independent accumulators (as bf16_row).
float mxfp4_row(const uint8_t* blocks, const uint8_t* scales, int blocks_per_row, const float* xs) {
  const __m512 fp4_values = _mm512_loadu_ps(kFp4Values);
  const float* scale_of = e8m0_table().data();  // hoisted: a call in the loop would spill every register
  __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  int b = 0;
  for (; b + 2 <= blocks_per_row; b += 2) {
    // The decode work per byte is high enough that the hardware prefetcher falls behind: +30% measured.
    if (b % 4 == 0) prefetch_ahead(blocks + b * kMxfp4BlockBytes, 4096);
    const __m512 table0 = scaled_fp4_table(fp4_values, scale_of[scales[b]]);
    const __m512 table1 = scaled_fp4_table(fp4_values, scale_of[scales[b + 1]]);
    const __m512i codes0 = fp4_codes(blocks + b * kMxfp4BlockBytes);
    const __m512i codes1 = fp4_codes(blocks + (b + 1) * kMxfp4BlockBytes);
    const float* xb = xs + b * kMxfp4BlockValues;
    acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(codes0, table0), _mm512_loadu_ps(xb), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(codes0, 4), table0), _mm512_loadu_ps(xb + 16), acc1);
    acc2 = _mm512_fmadd_ps(_mm512_permutexvar_ps(codes1, table1), _mm512_loadu_ps(xb + 32), acc2);
    acc3 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(codes1, 4), table1), _mm512_loadu_ps(xb + 48), acc3);
  }
  if (b < blocks_per_row) {
    const __m512 table = scaled_fp4_table(fp4_values, scale_of[scales[b]]);
    const __m512i codes = fp4_codes(blocks + b * kMxfp4BlockBytes);
    const float* xb = xs + b * kMxfp4BlockValues;
    acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(codes, table), _mm512_loadu_ps(xb), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), table), _mm512_loadu_ps(xb + 16), acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

template <int R, int T>
void mxfp4_tile(const uint8_t* blocks, const uint8_t* scales, int blocks_per_row, const float* xs, int64_t ldx,
                float* out, int64_t ldo) {
  const __m512 fp4_values = _mm512_loadu_ps(kFp4Values);
  const float* scale_of = e8m0_table().data();
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int b = 0; b < blocks_per_row; ++b) {
    __m512 w_even[R], w_odd[R];
    for (int r = 0; r < R; ++r) {
      const int64_t block = static_cast<int64_t>(r) * blocks_per_row + b;
      const __m512 table = scaled_fp4_table(fp4_values, scale_of[scales[block]]);
      const __m512i codes = fp4_codes(blocks + block * kMxfp4BlockBytes);
      w_even[r] = _mm512_permutexvar_ps(codes, table);
      w_odd[r] = _mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), table);
    }
    for (int t = 0; t < T; ++t) {
      const float* xb = xs + t * ldx + b * kMxfp4BlockValues;
      const __m512 x_even = _mm512_loadu_ps(xb), x_odd = _mm512_loadu_ps(xb + kChunk / 2);
      for (int r = 0; r < R; ++r)
        acc[r][t] = _mm512_fmadd_ps(w_odd[r], x_odd, _mm512_fmadd_ps(w_even[r], x_even, acc[r][t]));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) out[t * ldo + r] = _mm512_reduce_add_ps(acc[r][t]);
}
#else
template <int R, int T>
void mxfp4_tile(const uint8_t* blocks, const uint8_t* scales, int blocks_per_row, const float* xs, int64_t ldx,
                float* out, int64_t ldo) {
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
      accumulate_pairs(acc[r], w_even, w_odd, xs + b * kMxfp4BlockValues, ldx);
    }
  store_sums(acc, out, ldo);
}

#ifdef GPT_OSS_CPU_AVX2
// Eight FP4 codes (low 4 bits of each lane; higher bits are ignored) → values: AVX2 permutes only 8 entries, so
// the table holds the non-negative half (kFp4Values[0..7], scaled) and bit 3, the sign, is moved to bit 31.
inline __m256 fp4_decode8(__m256i codes, __m256 magnitudes) {
  const __m256i sign = _mm256_and_si256(_mm256_slli_epi32(codes, 28), _mm256_set1_epi32(static_cast<int>(0x80000000u)));
  return _mm256_xor_ps(_mm256_permutevar8x32_ps(magnitudes, codes), _mm256_castsi256_ps(sign));
}

float mxfp4_row(const uint8_t* blocks, const uint8_t* scales, int blocks_per_row, const float* xs) {
  const __m256 fp4_magnitudes = _mm256_loadu_ps(kFp4Values);
  const float* scale_of = e8m0_table().data();  // hoisted: a call in the loop would spill every register
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int b = 0; b < blocks_per_row; ++b) {
    if (b % 4 == 0) prefetch_ahead(blocks + b * kMxfp4BlockBytes, 4096);
    const __m256 table = _mm256_mul_ps(fp4_magnitudes, _mm256_set1_ps(scale_of[scales[b]]));
    const float* xb = xs + b * kMxfp4BlockValues;
    for (int h = 0; h < 2; ++h) {  // bytes 8h .. 8h+7: even values xb[8h ..], odd values xb[16 + 8h ..]
      const __m256i codes = _mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blocks + b * kMxfp4BlockBytes + 8 * h)));
      acc[2 * h] = _mm256_fmadd_ps(fp4_decode8(codes, table), _mm256_loadu_ps(xb + 8 * h), acc[2 * h]);
      acc[2 * h + 1] = _mm256_fmadd_ps(fp4_decode8(_mm256_srli_epi32(codes, 4), table),
                                       _mm256_loadu_ps(xb + 16 + 8 * h), acc[2 * h + 1]);
    }
  }
  return horizontal_sum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}
#else
float mxfp4_row(const uint8_t* blocks, const uint8_t* scales, int blocks_per_row, const float* xs) {
  float out;
  mxfp4_tile<1, 1>(blocks, scales, blocks_per_row, xs, 0, &out, 0);
  return out;
}
#endif
#endif

// Runs the tiles over rows [r0, r1) × tokens [0, n): per group of kRowTile rows (their weights stay in L1), all
// full kTokenTile token tiles, then the remaining tokens (all of them in decode) row by row with the 1 × 1
// kernel. tile.run<R, T>(row, token) computes the R×T tile whose top-left is (row, token).
template <typename TileFn>
void for_each_tile(int64_t r0, int64_t r1, int n, const TileFn& tile) {
  const int full_tokens = n / kTokenTile * kTokenTile;
  for (int64_t r = r0; r < r1; r += kRowTile) {
    const int64_t rows = std::min<int64_t>(kRowTile, r1 - r);
    for (int t = 0; t < full_tokens; t += kTokenTile) {
      if (rows == kRowTile) {
        tile.template run<kRowTile, kTokenTile>(r, t);
      } else {
        for (int64_t i = 0; i < rows; ++i) tile.template run<1, kTokenTile>(r + i, t);
      }
    }
    for (int t = full_tokens; t < n; ++t)
      for (int64_t i = 0; i < rows; ++i) tile.template run<1, 1>(r + i, t);
  }
}

void add_bias(const uint16_t* bias, int n, int64_t r0, int64_t r1, int rows, float* y) {
  if (bias == nullptr) return;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = r0; r < r1; ++r) y[t * rows + r] += bf16_to_f32(bias[r]);
}

struct Bf16Tile {
  const uint16_t* W;
  const float* xs;  // pair-split activations, row stride padded_cols(cols)
  float* y;
  int rows, cols;
  template <int R, int T>
  void run(int64_t r, int t) const {
    const int64_t ldx = padded_cols(cols);
    float* out = y + static_cast<int64_t>(t) * rows + r;
    if constexpr (R == 1 && T == 1)
      *out = bf16_row(W + r * cols, xs + t * ldx, cols);
    else
      bf16_tile<R, T>(W + r * cols, cols, xs + t * ldx, ldx, cols, out, rows);
  }
};

struct Mxfp4Tile {
  const Mxfp4Matrix* W;
  const float* xs;  // pair-split activations (cols is a multiple of 32: no padding)
  float* y;
  template <int R, int T>
  void run(int64_t r, int t) const {
    const int blocks_per_row = W->cols / kMxfp4BlockValues;
    const uint8_t* blocks = W->blocks + r * blocks_per_row * kMxfp4BlockBytes;
    const uint8_t* scales = W->scales + r * blocks_per_row;
    const float* x = xs + static_cast<int64_t>(t) * W->cols;
    float* out = y + static_cast<int64_t>(t) * W->rows + r;
    if constexpr (R == 1 && T == 1)
      *out = mxfp4_row(blocks, scales, blocks_per_row, x);
    else
      mxfp4_tile<R, T>(blocks, scales, blocks_per_row, x, W->cols, out, W->rows);
  }
};

}  // namespace

void linear_bf16(ThreadPool& pool, const float* x, int n, const uint16_t* W, const uint16_t* bias, int rows,
                 int cols, float* y) {
  if (cols % 2 != 0) throw std::invalid_argument("linear_bf16: cols must be even");
  std::vector<float> xs(static_cast<size_t>(n) * padded_cols(cols));
  split_pairs(x, n, cols, xs.data());
  const Bf16Tile tile{W, xs.data(), y, rows, cols};
  pool.parallel_for(rows, kRowTile, [&](int64_t r0, int64_t r1) {
    for_each_tile(r0, r1, n, tile);
    add_bias(bias, n, r0, r1, rows, y);
  });
}

void linear_mxfp4(ThreadPool& pool, const float* x, int n, const Mxfp4Matrix& W, float* y) {
  std::vector<float> xs(static_cast<size_t>(n) * W.cols);
  split_pairs(x, n, W.cols, xs.data());
  const Mxfp4Tile tile{&W, xs.data(), y};
  pool.parallel_for(W.rows, kRowTile, [&](int64_t r0, int64_t r1) {
    for_each_tile(r0, r1, n, tile);
    add_bias(W.bias, n, r0, r1, W.rows, y);
  });
}

}  // namespace gpt_oss

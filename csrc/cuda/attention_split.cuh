// One split of decode attention (attention_decode.cu; session 12's attention fused with its prologue, in git
// history, ran it too): threads 0..127 of a CTA (4 warps) attend one query token's G ≤ 8 heads of one
// KV head over keys [start, end) of the cache and leave, per (head, dim pair), the split's softmax state
// (m, l, o unnormalised, log2 domain) for the caller to write or merge.
//   - Each warp streams its own 16-key blocks (blocks w, w+4, ... of the split) through its own cp.async
//     pipeline (no CTA barrier in the loop). prefetch() starts it before the caller's dependency wait: every key
//     but the newest was written by earlier steps; the newest row comes from the caller after the wait.
//   - mma.sync m16n8k16 bf16: S = Q·Kᵀ with the G heads as the M rows (q split into bf16 hi + lo, so scores keep
//     ~fp32 precision); S's C fragments are exactly the A fragments of P·V (FA2's register reuse), P rounded to
//     bf16; online softmax in the log2 domain (q pre-scaled by sm_scale·log2 e).
// v1 used CUDA cores (warp = 2 heads, lane = key): issue-bound at long contexts (~3000 instructions per 32-key
// tile per CTA; 20b at 8k: 353 tok/s vs 411 with tensor cores, H100).
// Layouts: K, V bf16 [capacity][64] of one KV head.
#pragma once

#include "cuda/attention_decode.h"

namespace gpt_oss {
namespace attention_split {

constexpr int kD = kAttentionHeadDim;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowPad = kD + 8;  // 144-byte smem rows: 8 rows × 16 B at a time hit 8 distinct 4-bank groups
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kMmaBlock = 16;   // keys per warp step: two n8 score blocks, one k16 step of P·V
constexpr int kMmaStages = 3;   // blocks in flight per warp (Split's default)
// Shared memory of a Split with `stages` blocks in flight per warp.
constexpr size_t smem_bytes(int stages) {
  return static_cast<size_t>(kWarps) * stages * 2 * kMmaBlock * kRowPad * sizeof(bf16);
}
constexpr size_t kSmemBytes = smem_bytes(kMmaStages);

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// The barrier of threads 0..127 only, so a CTA with more warps can run a split on its first four.
__device__ __forceinline__ void sync_split_threads() { asm volatile("bar.sync 1, %0;" ::"n"(kThreads) : "memory"); }

// One CTA's keys [start, end) of one KV head; smem: smem_bytes(Stages) of stages, reused for the cross-warp merge.
// Stages − 1 blocks of each warp (16 · (Stages − 1) · kWarps keys) are issued by prefetch().
template <int Stages = kMmaStages>
struct Split {
  const bf16* k;
  const bf16* v;
  int start, end;
  unsigned char* smem;

  __device__ int blocks() const { return (end - start + kMmaBlock - 1) / kMmaBlock; }
  __device__ int warp_blocks(int warp) const {  // blocks warp, warp + 4, ...
    const int b = blocks();
    return b > warp ? (b - warp + kWarps - 1) / kWarps : 0;
  }
  __device__ bf16* k_stage(int warp, int stage) const {
    return reinterpret_cast<bf16*>(smem) + (static_cast<size_t>(warp) * Stages + stage) * 2 * kMmaBlock * kRowPad;
  }
  __device__ bf16* v_stage(int warp, int stage) const { return k_stage(warp, stage) + kMmaBlock * kRowPad; }

  // The warp's i-th block: 16 keys of K and V, 8 × 16 B per lane, into stage `stage`.
  __device__ void load_block(int warp, int lane, int i, int stage) const {
    const int first = start + (warp + i * kWarps) * kMmaBlock;
#pragma unroll
    for (int r = 0; r < kMmaBlock * (kD / 8) / 32; ++r) {
      const int idx = lane + r * 32;
      const int row = idx / (kD / 8), chunk = idx % (kD / 8);
      const bool valid = first + row < end;
      const size_t at = static_cast<size_t>(valid ? first + row : 0) * kD + chunk * 8;
      // Rows past the split zero-fill, so masked V rows contribute exactly 0.
      cp_async16(k_stage(warp, stage) + row * kRowPad + chunk * 8, k + at, valid);
      cp_async16(v_stage(warp, stage) + row * kRowPad + chunk * 8, v + at, valid);
    }
  }

  // Threads 0..127: the first Stages − 1 blocks of each warp in flight (before the caller's wait).
  __device__ void prefetch() const {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, mine = warp_blocks(warp);
#pragma unroll
    for (int s = 0; s < Stages - 1; ++s) {
      if (s < mine) load_block(warp, lane, s, s);
      cp_async_commit();
    }
  }

  // Threads 0..127, after prefetch() and the caller's wait. q_at(h, d): dims d, d + 1 (d even) of head h's fp32 q
  // (RoPE applied, not yet scaled). newest_chunk(c): 16-byte chunk c of the newest key's row, c < 8 of K, 8..15 of
  // V (bf16, as the cache holds it), read only by the warp whose blocks hold slot `newest`. Both are read at once,
  // first thing: one L2 round trip, where the newest row read inside the loop was a second, dependent one on that
  // warp's path. after_keys() runs once per CTA, as soon as q is in registers and every K/V copy is in flight:
  // before the loop when prefetch() issued all the split's blocks, else after the loop. Then
  // emit(h, pair, m, l, acc) for every (head, dim pair) of the group: m = −inf, l = 0, acc = 0 when the split holds
  // no keys.
  template <typename QAt, typename NewestChunk, typename AfterKeys, typename Emit>
  __device__ void run(int group, float sm_scale, int newest, QAt q_at, NewestChunk newest_chunk, AfterKeys after_keys,
                      Emit emit) const {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;  // fragment ownership: row g = head g; C columns 2t, 2t+1
    const int my_blocks = warp_blocks(warp);
    // The newest row, if in one of this warp's blocks (blocks warp, warp + 4, ...): lanes 0..15 hold a chunk each.
    const bool newest_here = newest >= start && newest < end && (newest - start) / kMmaBlock % kWarps == warp;
    uint4 newest_row = make_uint4(0, 0, 0, 0);
    if (newest_here && lane < 16) newest_row = newest_chunk(lane);

    // Q as the A operand (rows = heads), pre-scaled to the log2 domain and split into bf16 hi + lo. Rows 8..15 of
    // the m16 tiles stay zero and are never read back.
    uint32_t q_hi[kD / 16][2], q_lo[kD / 16][2];
    {
      const float q_scale = sm_scale * kLog2e;
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int d = ks * 16 + half * 8 + 2 * t;
          const float2 x = g < group ? q_at(g, d) : make_float2(0.0f, 0.0f);
          const float x0 = x.x * q_scale, x1 = x.y * q_scale;
          const __nv_bfloat162 hi = __floats2bfloat162_rn(x0, x1);
          const float2 hf = __bfloat1622float2(hi);
          q_hi[ks][half] = *reinterpret_cast<const uint32_t*>(&hi);
          q_lo[ks][half] = pack_bf16(x0 - hf.x, x1 - hf.y);
        }
      }
    }

    const bool all_prefetched = blocks() <= kWarps * (Stages - 1);  // uniform over the CTA
    if (all_prefetched) after_keys();
    float m = -INFINITY, l = 0.0f;  // of head g, replicated over t
    float o[kD / 8][4] = {};        // o[n][0..1]: head g, dims 8n + 2t, 8n + 2t + 1

    for (int i = 0; i < my_blocks; ++i) {
      cp_async_wait<Stages - 2>();
      __syncwarp();  // every lane's copies of block i landed; stage (i-1) % Stages is free again
      if (i + Stages - 1 < my_blocks) load_block(warp, lane, i + Stages - 1, (i + Stages - 1) % Stages);
      cp_async_commit();
      const int first = start + (warp + i * kWarps) * kMmaBlock;
      const bf16* ks_smem = k_stage(warp, i % Stages);
      const bf16* vs_smem = v_stage(warp, i % Stages);
      if (newest_here && newest >= first && newest < first + kMmaBlock) {  // the staged row may be a stale copy
        if (lane < 16) {
          bf16* dst = (lane < 8 ? k_stage(warp, i % Stages) : v_stage(warp, i % Stages)) +
                      (newest - first) * kRowPad;
          *reinterpret_cast<uint4*>(dst + (lane % 8) * 8) = newest_row;
        }
        __syncwarp();
      }

      // S = Q·Kᵀ for keys 0..7 (s[0]) and 8..15 (s[1]) of the block.
      float s[2][4] = {};
#pragma unroll
      for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {  // dims 0..31, 32..63
          uint32_t b[4];
          ldmatrix_x4(b, ks_smem + (nb * 8 + lane % 8) * kRowPad + half * 32 + (lane / 8) * 8);
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int kstep = half * 2 + j;
            mma_bf16(s[nb], q_hi[kstep][0], 0u, q_hi[kstep][1], 0u, b[2 * j], b[2 * j + 1]);
            mma_bf16(s[nb], q_lo[kstep][0], 0u, q_lo[kstep][1], 0u, b[2 * j], b[2 * j + 1]);
          }
        }
      }
      float block_max = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (first + nb * 8 + 2 * t + e >= end) s[nb][e] = -INFINITY;
          block_max = fmaxf(block_max, s[nb][e]);
        }
      }
      block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 1));
      block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 2));
      const float m_new = fmaxf(m, block_max);  // finite: every block holds at least one valid key
      const float rescale = exp2f(m - m_new);
      float block_sum = 0.0f;
#pragma unroll
      for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          s[nb][e] = exp2f(s[nb][e] - m_new);
          block_sum += s[nb][e];
        }
      }
      block_sum += __shfl_xor_sync(0xffffffffu, block_sum, 1);
      block_sum += __shfl_xor_sync(0xffffffffu, block_sum, 2);
      l = l * rescale + block_sum;
      m = m_new;
#pragma unroll
      for (int n = 0; n < kD / 8; ++n) {
        o[n][0] *= rescale;
        o[n][1] *= rescale;
      }

      // O += P·V: P's A fragment is S's C fragment (keys 2t, 2t+1 of both n8 blocks), V via transposed loads.
      const uint32_t p_lo = pack_bf16(s[0][0], s[0][1]), p_hi = pack_bf16(s[1][0], s[1][1]);
#pragma unroll
      for (int q4 = 0; q4 < kD / 16; ++q4) {  // dims 16·q4 .. 16·q4 + 15: two n8 blocks
        uint32_t b[4];
        const int j = lane / 8;
        ldmatrix_x4_trans(b, vs_smem + ((j & 1) * 8 + lane % 8) * kRowPad + q4 * 16 + (j >> 1) * 8);
        mma_bf16(o[2 * q4], p_lo, 0u, p_hi, 0u, b[0], b[1]);
        mma_bf16(o[2 * q4 + 1], p_lo, 0u, p_hi, 0u, b[2], b[3]);
      }
    }
    cp_async_wait<0>();
    sync_split_threads();  // every warp is done with its stages: reuse them for the cross-warp merge
    if (!all_prefetched) after_keys();

    // Merge the 4 warps' states of each head.
    float* merge = reinterpret_cast<float*>(smem);  // [kWarps][8 heads][kD + 2]
    constexpr int kEntry = kD + 2;
    float* mine = merge + (warp * kAttentionMaxGroup + g) * kEntry;
#pragma unroll
    for (int n = 0; n < kD / 8; ++n) {
      mine[8 * n + 2 * t] = o[n][0];
      mine[8 * n + 2 * t + 1] = o[n][1];
    }
    if (t == 0) {
      mine[kD] = m;
      mine[kD + 1] = l;
    }
    sync_split_threads();
    for (int item = threadIdx.x; item < group * (kD / 2); item += kThreads) {
      const int h = item / (kD / 2), pair = item % (kD / 2);
      float m_max = -INFINITY;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) m_max = fmaxf(m_max, merge[(w * kAttentionMaxGroup + h) * kEntry + kD]);
      float l_sum = 0.0f;
      float2 acc = {0.0f, 0.0f};
      if (m_max != -INFINITY) {  // else: an empty split, emitted as m = -inf, l = 0, o = 0
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
          const float* e = merge + (w * kAttentionMaxGroup + h) * kEntry;
          const float wgt = exp2f(e[kD] - m_max);
          l_sum += e[kD + 1] * wgt;
          acc.x += e[2 * pair] * wgt;
          acc.y += e[2 * pair + 1] * wgt;
        }
      }
      emit(h, pair, m_max, l_sum, acc);
    }
  }
};

// out = acc·2^(m−M) / (l·2^(m−M) + 2^(sink−M)), M = max(m, sink): the sink's one term in the denominator.
// sink: the head's sink logit in the log2 domain.
__device__ __forceinline__ void write_output(bf16* out, int q_head, int pair, float m, float l, float2 acc,
                                             float sink) {
  const float m_max = fmaxf(m, sink);
  const float w = exp2f(m - m_max);
  const float scale = w / (l * w + exp2f(sink - m_max));
  reinterpret_cast<__nv_bfloat162*>(out + static_cast<size_t>(q_head) * kD)[pair] =
      __floats2bfloat162_rn(acc.x * scale, acc.y * scale);
}

}  // namespace attention_split
}  // namespace gpt_oss

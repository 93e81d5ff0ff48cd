// Device sampler: greedy argmax, or the Gumbel-max draw of csrc/cpu/sampling.cpp over the top-k / top-p kept set.
//
// Floor: one read of the logits, vocab × 4 B = 0.8 MB for 201088 (0.27 µs at 3.0 TB/s); in practice bounded
// by the cluster barriers and histogram passes below. Measured (H100, vocab 201088, graph-timed, session 7;
// benchmarks/NOTES.md): greedy 7.5 µs, T = 1 43.9 µs, top_p 0.9 86.4 µs, top_k 40 54.2 µs; the former
// inverse-CDF draw, a third radix select, took 49.0 / 93.7 / 79.7 (the first radix level's shared-memory atomics
// over all tokens dominate a select). Decoding without a top-k / top-p cut does not launch this kernel: the
// unembedding draws the token itself (gemv_bf16.h FusedSample).
//
// One cluster of 8 CTAs × 512 threads; each CTA keeps a slice of the logits in shared memory, so the logits
// are read from global memory once and every later pass runs on-chip.
//   0. max / argmax (lowest index on ties) and a NaN / +inf check, merged through distributed shared memory
//      (cluster_best). Greedy stops here. Logits holding NaN or +inf, or all -inf, give token -1 (the host
//      reports it).
//   1. The kept set K: the tokens whose 64-bit key (order-preserving logit bits, then the complemented index) is
//      ≥ a boundary key. Keys are distinct and their descending order is the CPU's (descending logit =
//      descending probability, ties → lower index). With no cut the boundary is 0 (every token); else radix
//      selects find it. Mass m_i = floor(2^40 · exp((l_i - max) / T)) as a 64-bit integer: integer sums are
//      exact and independent of order, so every CTA derives identical decisions. "The first token in key order
//      whose running count / mass reaches a target" is found by radix descent, 8 key bits a level: each CTA
//      histograms its candidates (count and mass per digit; per-warp private histograms with 32-bit limbs,
//      then one per CTA), every CTA merges the 8 CTA histograms and picks the same digit:
//        top-k    (count ≥ top_k)              → S_k = mass of the top k; boundary = the k-th key
//        nucleus  (mass ≥ ceil(top_p · S_k))   → boundary = that token's key (S_k = Σ mass without top-k)
//   2. The draw: each thread's best Gumbel-max key z_i + g_i (core/rng.h gumbel_key, in double) over its kept
//      tokens, merged through the cluster like step 0 (ties → lower index).
// The selects' fp32 masses differ from the CPU's double probabilities by ~1e-7 relative and 2^-40 absolute, so
// the nucleus can differ from the CPU's only when a prefix mass is that close to top_p. The draw computes the
// CPU's doubles (the CUDA and libm logs may differ by an ulp), so the token is the CPU's except where two keys
// are within ~1e-15 relative.
//
// Warning: vocab ≤ 8 × (shared memory per CTA − 56 KB) / 4 (≈ 350k on H100).
#include "cuda/sampling.h"

#include <cooperative_groups.h>

#include <climits>
#include <cmath>
#include <stdexcept>
#include <string>

#include "core/rng.h"
#include "cuda/weight_stream.cuh"

namespace gpt_oss {

namespace cg = cooperative_groups;

namespace {

constexpr int kCluster = 8;
constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBuckets = 256;
constexpr float kMassScale = 1099511627776.0f;  // 2^40
constexpr int kLimbBits = 20;                    // mass = lo + hi · 2^20, each limb summed in a u32

// One CTA's histogram of a level, read by the whole cluster.
struct Histogram {
  unsigned int count[kBuckets];
  unsigned long long mass[kBuckets];
};

// One warp's private histogram: native 32-bit shared atomics (a 64-bit shared atomic add is a CAS loop),
// contention only inside the warp. A limb sum stays below 2^32 while a warp sees at most 4096 tokens, i.e. a
// slice of at most 65536 (the launcher's shared-memory check is stricter).
struct WarpHistogram {
  unsigned int count[kBuckets], lo[kBuckets], hi[kBuckets];
};

struct SampleArgs {
  const float* logits;
  int vocab, slice, top_k, levels, pad;
  int index_bits;
  float inv_t, top_p;
  bool greedy;
  double temperature;
  uint64_t draw_key;  // core/rng.h draw_key(seed, draw)
  int32_t* token;
};

struct Selected {
  unsigned long long key, count, mass;  // the element's key; running count and mass through it (inclusive)
};

__device__ __forceinline__ uint32_t orderable(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

template <typename T>
__device__ __forceinline__ T warp_inclusive_scan(T v, int lane) {
  for (int o = 1; o < 32; o <<= 1) {
    const T other = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += other;
  }
  return v;
}

class ClusterSampler {
 public:
  __device__ ClusterSampler(const SampleArgs& a, const float* vals, Histogram* hist, WarpHistogram* warp_hist,
                            float max_logit)
      : a_(a), vals_(vals), hist_(hist), warp_hist_(warp_hist), max_logit_(max_logit), cluster_(cg::this_cluster()) {
    base_ = static_cast<int>(cluster_.block_rank()) * a.slice;
    n_ = max(0, min(a.slice, a.vocab - base_));
  }

  __device__ unsigned long long key(int i) const {
    const unsigned long long index_part = ((1ull << a_.index_bits) - 1) - static_cast<unsigned long long>(base_ + i);
    return ((static_cast<unsigned long long>(orderable(vals_[i])) << a_.index_bits) | index_part) << a_.pad;
  }

  __device__ unsigned long long mass(int i) const {
    const float w = __expf((vals_[i] - max_logit_) * a_.inv_t);
    return __float2ull_rz(w * kMassScale);  // exact scaling by a power of two, then truncation
  }

  // This CTA's share of Σ mass.
  __device__ unsigned long long local_mass() const {
    unsigned long long m = 0;
    for (int i = threadIdx.x; i < n_; i += kThreads) m += mass(i);
    return m;
  }

  // The first token (descending key) whose running count (by_count) or mass reaches target (1 ≤ target ≤ total).
  // Every CTA runs this with the same arguments and reaches the same answer.
  __device__ Selected select(bool by_count, unsigned long long target) {
    __shared__ unsigned long long s_prefix, s_base_count, s_base_mass, s_incl_count, s_incl_mass, s_found;
    __shared__ unsigned long long s_warp_count[kBuckets / 32], s_warp_mass[kBuckets / 32];
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    __syncthreads();  // every thread has read the previous select's result
    if (tid == 0) s_prefix = 0, s_base_count = 0, s_base_mass = 0;
    for (int level = 0; level < a_.levels; ++level) {
      const int shift = 8 * (a_.levels - 1 - level);
      Histogram& h = hist_[parity_];
      parity_ ^= 1;
      WarpHistogram& wh = warp_hist_[warp];
      for (int b = lane; b < kBuckets; b += 32) wh.count[b] = 0, wh.lo[b] = 0, wh.hi[b] = 0;
      __syncthreads();  // also publishes s_prefix / s_base_* (written by one thread)
      const unsigned long long prefix = s_prefix, base_count = s_base_count, base_mass = s_base_mass;
      for (int i = tid; i < n_; i += kThreads) {
        const unsigned long long k = key(i);
        if (level > 0 && ((k ^ prefix) >> (shift + 8)) != 0) continue;
        const int digit = static_cast<int>((k >> shift) & 0xFF);
        const unsigned long long m = mass(i);
        atomicAdd(&wh.count[digit], 1u);
        atomicAdd(&wh.lo[digit], static_cast<unsigned int>(m & ((1u << kLimbBits) - 1)));
        atomicAdd(&wh.hi[digit], static_cast<unsigned int>(m >> kLimbBits));
      }
      __syncthreads();
      if (tid < kBuckets) {
        unsigned int count = 0;
        unsigned long long lo = 0, hi = 0;
        for (int w = 0; w < kWarps; ++w)
          count += warp_hist_[w].count[tid], lo += warp_hist_[w].lo[tid], hi += warp_hist_[w].hi[tid];
        h.count[tid] = count;
        h.mass[tid] = lo + (hi << kLimbBits);
      }
      cluster_.sync();

      // Thread b owns digit 255 - b (descending order): merge the 8 CTAs' histograms, then scan.
      unsigned long long count = 0, m = 0, incl_count = 0, incl_mass = 0;
      if (tid < kBuckets) {
        const int digit = kBuckets - 1 - tid;
        for (int r = 0; r < kCluster; ++r) {
          const Histogram* remote = cluster_.map_shared_rank(&h, r);
          count += remote->count[digit];
          m += remote->mass[digit];
        }
        incl_count = warp_inclusive_scan(count, lane);
        incl_mass = warp_inclusive_scan(m, lane);
        if (lane == 31) s_warp_count[warp] = incl_count, s_warp_mass[warp] = incl_mass;
      }
      __syncthreads();
      if (tid < kBuckets) {
        for (int w = 0; w < warp; ++w) incl_count += s_warp_count[w], incl_mass += s_warp_mass[w];
        const unsigned long long incl = by_count ? base_count + incl_count : base_mass + incl_mass;
        const unsigned long long excl = incl - (by_count ? count : m);
        if (excl < target && target <= incl) {
          s_prefix = prefix | (static_cast<unsigned long long>(kBuckets - 1 - tid) << shift);
          s_base_count = base_count + incl_count - count;
          s_base_mass = base_mass + incl_mass - m;
          s_incl_count = base_count + incl_count;
          s_incl_mass = base_mass + incl_mass;
        }
      }
      __syncthreads();
      // The chosen digit holds one token of the whole cluster (every CTA sees the same merged counts): its key is
      // the only one matching the prefix so far, so one pass finds it instead of the levels left (the index bits
      // and the low mantissa bits rarely separate anything: 3–4 of the 7 levels for a 201088-token vocabulary).
      if (level + 1 < a_.levels && s_incl_count - s_base_count == 1) {
        const unsigned long long chosen = s_prefix;
        for (int i = tid; i < n_; i += kThreads) {
          const unsigned long long k = key(i);
          if (((k ^ chosen) >> shift) == 0)
            for (int r = 0; r < kCluster; ++r) *cluster_.map_shared_rank(&s_found, r) = k;
        }
        cluster_.sync();  // the finder's writes land before anyone reads; every histogram read is done by now
        return Selected{s_found, s_incl_count, s_incl_mass};
      }
    }
    return Selected{s_prefix, s_incl_count, s_incl_mass};
  }

 private:
  SampleArgs a_;
  const float* vals_;
  Histogram* hist_;
  WarpHistogram* warp_hist_;
  float max_logit_;
  cg::cluster_group cluster_;
  int base_ = 0, n_ = 0, parity_ = 0;
};

// The best (ranks_before order) of every thread's candidate in the cluster; every thread of every CTA gets the
// answer. It ends on a cluster barrier, so once it returns no CTA reads another's shared memory: a CTA may exit,
// or call it again.
__device__ BestKey cluster_best(const cg::cluster_group& cluster, BestKey mine) {
  __shared__ double s_cta_key, s_key;
  __shared__ int s_cta_index, s_cta_bad, s_index, s_bad;
  const BestKey cta = block_best<kWarps>(mine);
  if (threadIdx.x == 0) s_cta_key = cta.key, s_cta_index = cta.index, s_cta_bad = cta.bad;
  cluster.sync();
  if (threadIdx.x == 0) {
    double k = -INFINITY;
    int i = INT_MAX, b = 0;
    for (int r = 0; r < kCluster; ++r) {
      const double rk = *cluster.map_shared_rank(&s_cta_key, r);
      const int ri = *cluster.map_shared_rank(&s_cta_index, r);
      b |= *cluster.map_shared_rank(&s_cta_bad, r);
      if (ranks_before(rk, ri, k, i)) k = rk, i = ri;
    }
    s_key = k, s_index = i, s_bad = b;
  }
  cluster.sync();  // publishes s_key / s_index / s_bad; every remote read of s_cta_* is done
  return BestKey{s_key, s_index, s_bad};
}

__global__ void __launch_bounds__(kThreads, 1) sample_kernel(SampleArgs a) {
  TimelineScope timeline(kTlSample);
  extern __shared__ uint4 dyn_smem[];
  Histogram* hist = reinterpret_cast<Histogram*>(dyn_smem);  // two, used alternately level by level
  WarpHistogram* warp_hist = reinterpret_cast<WarpHistogram*>(hist + 2);
  float* vals = reinterpret_cast<float*>(warp_hist + kWarps);
  __shared__ unsigned long long s_warp_mass[kThreads / 32], s_cta_mass, s_total;
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank()), tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int base = rank * a.slice, n = max(0, min(a.slice, a.vocab - base));

  // 0. Load the slice; max / argmax (lowest index on ties); NaN / +inf check.
  double best = -INFINITY;
  int best_i = INT_MAX, bad = 0;
  for (int i = tid; i < n; i += kThreads) {
    const float v = a.logits[base + i];
    vals[i] = v;
    bad |= (v != v) || (v == INFINITY);
    if (ranks_before(static_cast<double>(v), base + i, best, best_i)) best = v, best_i = base + i;
  }
  const BestKey top = cluster_best(cluster, {best, best_i, bad});
  const bool unusable = top.bad || (!a.greedy && top.key == -INFINITY);
  if (unusable || a.greedy) {
    if (rank == 0 && tid == 0) *a.token = unusable ? -1 : top.index;
    return;
  }

  // 1. The kept set: keys >= boundary.
  ClusterSampler sampler(a, vals, hist, warp_hist, static_cast<float>(top.key));
  unsigned long long boundary = 0;
  const bool top_k_cuts = a.top_k > 0 && a.top_k < a.vocab;
  if (top_k_cuts || a.top_p < 1.0f) {
    unsigned long long kept_mass = 0;
    if (top_k_cuts) {
      const Selected kth = sampler.select(/*by_count=*/true, a.top_k);
      boundary = kth.key, kept_mass = kth.mass;
    } else {  // the total mass
      unsigned long long m = sampler.local_mass();
      for (int o = 16; o > 0; o >>= 1) m += __shfl_xor_sync(0xffffffffu, m, o);
      if (lane == 0) s_warp_mass[warp] = m;
      __syncthreads();
      if (tid == 0) {
        unsigned long long t = 0;
        for (int w = 0; w < kThreads / 32; ++w) t += s_warp_mass[w];
        s_cta_mass = t;
      }
      cluster.sync();
      if (tid == 0) {
        unsigned long long t = 0;
        for (int r = 0; r < kCluster; ++r) t += *cluster.map_shared_rank(&s_cta_mass, r);
        s_total = t;
      }
      __syncthreads();
      kept_mass = s_total;
    }
    if (a.top_p < 1.0f) {
      const double want = ceil(static_cast<double>(a.top_p) * static_cast<double>(kept_mass));
      const unsigned long long target =
          static_cast<unsigned long long>(fmin(fmax(want, 1.0), static_cast<double>(kept_mass)));
      boundary = sampler.select(/*by_count=*/false, target).key;
    }
  }

  // 2. The Gumbel-max draw over the kept set.
  best = -INFINITY, best_i = INT_MAX;
  for (int i = tid; i < n; i += kThreads) {
    if (sampler.key(i) < boundary) continue;
    const double k = gumbel_key(vals[i], a.temperature, a.draw_key, base + i);
    if (ranks_before(k, base + i, best, best_i)) best = k, best_i = base + i;
  }
  const BestKey pick = cluster_best(cluster, {best, best_i, 0});
  if (rank == 0 && tid == 0) *a.token = pick.index;
}

int bits_for(int vocab) {
  int b = 1;
  while ((1ll << b) < vocab) ++b;
  return b;
}

}  // namespace

size_t sample_workspace_bytes(int /*vocab*/) { return 0; }  // everything lives in the cluster's shared memory

void launch_sample(const float* logits, int vocab, const SamplingParams& params, uint64_t draw, void* /*workspace*/,
                   int32_t* token, cudaStream_t stream) {
  if (vocab < 1) throw std::invalid_argument("launch_sample: the vocabulary is empty");
  if (!(params.temperature >= 0.0f) || !(params.top_p > 0.0f && params.top_p <= 1.0f) || params.top_k < 0)
    throw std::invalid_argument("launch_sample: need temperature >= 0, top_p in (0, 1] and top_k >= 0");
  SampleArgs a{};
  a.logits = logits;
  a.vocab = vocab;
  a.slice = ceil_div(vocab, kCluster);
  a.top_k = params.top_k;
  a.top_p = params.top_p;
  a.greedy = params.temperature == 0.0f;
  a.inv_t = a.greedy ? 1.0f : 1.0f / params.temperature;
  a.index_bits = bits_for(vocab);
  const int key_bits = 32 + a.index_bits;
  a.levels = (key_bits + 7) / 8;
  a.pad = 8 * a.levels - key_bits;
  a.temperature = params.temperature;
  a.draw_key = draw_key(params.seed, draw);
  a.token = token;
  const size_t smem = 2 * sizeof(Histogram) + kWarps * sizeof(WarpHistogram) + static_cast<size_t>(a.slice) * sizeof(float);
  int dev = 0, limit = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (smem + 1024 > static_cast<size_t>(limit))
    throw std::invalid_argument("launch_sample: vocabulary " + std::to_string(vocab) + " is too large for the device sampler");
  CUDA_CHECK(cudaFuncSetAttribute(sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  launch_kernel(sample_kernel, dim3(kCluster), dim3(kThreads), smem, stream, /*pdl=*/false, kCluster, a);
}

}  // namespace gpt_oss

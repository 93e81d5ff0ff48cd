// Shared CUDA helpers: error checking that throws (never aborts the Python process), RAII device memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

namespace gpt_oss {

using bf16 = __nv_bfloat16;

[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(e) + " in " + what + " at " + file +
                           ":" + std::to_string(line));
}

#define CUDA_CHECK(expr)                                                           \
  do {                                                                             \
    cudaError_t err_ = (expr);                                                     \
    if (err_ != cudaSuccess) ::gpt_oss::throw_cuda_error(err_, #expr, __FILE__, __LINE__); \
  } while (0)

// Checks the launch configuration of the kernel just launched (not its execution).
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

// Owns one cudaMalloc'd allocation; movable, not copyable.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes) CUDA_CHECK(cudaMalloc(&ptr_, bytes));
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (ptr_) cudaFree(ptr_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T = void>
  T* get() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

  static DeviceBuffer from_host(const void* src, size_t bytes) {
    DeviceBuffer b(bytes);
    if (bytes) CUDA_CHECK(cudaMemcpy(b.ptr_, src, bytes, cudaMemcpyHostToDevice));
    return b;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// ---- per-CTA timeline (CMake -DGPT_OSS_NATIVE_TIMELINE=ON; off by default, when all of it compiles away) ----
// Thread 0 of each CTA of an instrumented kernel appends one record of kTimelineWords u64: kernel id << 32 | CTA
// index, SM id, and %globaltimer ns at entry, after the kernel's dependency wait (0 if it has none) and at exit,
// then the CTA's SM cycles from entry to exit. `benchmarks/decode.py --timeline` prints where one decode step's
// time goes: each launch's first entry, last exit and its CTAs' spread.
enum TimelineKernel : uint32_t {
  kTlEmbedding = 1, kTlNormQkvRope, kTlAttention, kTlOutProj, kTlMlp1, kTlMlp2, kTlUnembedding, kTlSample
};
struct TimelineBuffer {
  unsigned long long* records = nullptr;  // [capacity][kTimelineWords]
  unsigned* count = nullptr;              // records appended (may exceed capacity: the rest are dropped)
  unsigned capacity = 0;
};
constexpr int kTimelineWords = 6;

#ifdef GPT_OSS_NATIVE_TIMELINE
constexpr bool kTimelineBuilt = true;
// Every translation unit has its own device copy of the buffer descriptor; each registers a setter at static
// initialisation (no relocatable device code needed), and set_timeline() calls them all.
void register_timeline_setter(void (*set)(const TimelineBuffer&));
void set_timeline(const TimelineBuffer& buffer);
#ifdef __CUDACC__
namespace {
__device__ TimelineBuffer g_timeline;
void set_timeline_in_this_unit(const TimelineBuffer& b) { CUDA_CHECK(cudaMemcpyToSymbol(g_timeline, &b, sizeof b)); }
[[maybe_unused]] const bool g_timeline_registered = (register_timeline_setter(&set_timeline_in_this_unit), true);

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ unsigned long long sm_cycles() {
  unsigned long long c;
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(c));
  return c;
}

struct TimelineScope {
  uint32_t kernel;
  unsigned long long start, waited = 0, cycles;
  __device__ explicit TimelineScope(uint32_t k) : kernel(k), start(global_ns()), cycles(sm_cycles()) {}
  __device__ void mark_waited() { waited = global_ns(); }
  __device__ ~TimelineScope() {
    if (threadIdx.x != 0 || threadIdx.y != 0) return;
    // Stamped before reading the buffer's descriptor: that load is a global round trip (up to ~1 µs under a
    // weight stream), which the exit times included until session 19.
    const unsigned long long end = global_ns();
    const unsigned long long spent = sm_cycles() - cycles;
    if (g_timeline.records == nullptr) return;
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    const unsigned slot = atomicAdd(g_timeline.count, 1u);
    if (slot >= g_timeline.capacity) return;
    unsigned long long* r = g_timeline.records + static_cast<size_t>(slot) * kTimelineWords;
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    r[0] = (static_cast<unsigned long long>(kernel) << 32) | block;
    r[1] = sm, r[2] = start, r[3] = waited, r[4] = end, r[5] = spent;
  }
};
}  // namespace
#endif
#else
constexpr bool kTimelineBuilt = false;
#ifdef __CUDACC__
struct TimelineScope {
  __device__ explicit TimelineScope(uint32_t) {}
  __device__ void mark_waited() {}
};
#endif
#endif

#ifdef __CUDACC__
// Asks for the smallest shared-memory carveout that keeps the kernel's CTAs an SM at what the default gives, so
// the rest of the SM's unified 256 KB stays L1. Global loads in flight need L1 room: with the largest carveout
// (28 KB of L1) decode lost 7.6 % (20b) / 8.9 % (120b) at 1k; with this, over the driver's default choice, +0.5 % /
// +1.3 % on one H100 and +2.1 % / +1.2 % on another (session 19). A hint: the driver still gives a launch what it
// needs. Set again only when a kernel's block or shared memory changes (attention launches two shapes); legal
// during graph capture (not a stream operation).
inline void prefer_least_shared_memory(const void* kernel, int threads, size_t dynamic_smem) {
  struct Choice {
    int threads;
    size_t smem;
  };
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, Choice> chosen;  // (kernel, device) → shape its carveout fits
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(kernel, device);
  const auto it = chosen.find(key);
  if (it != chosen.end() && it->second.threads == threads && it->second.smem == dynamic_smem) return;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, -1));
  int per_sm = 0, reserved = 0, sm_smem = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, dynamic_smem));
  CUDA_CHECK(cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sm_smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  cudaFuncAttributes attributes = {};
  CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  const size_t needed =
      static_cast<size_t>(std::max(per_sm, 1)) * (attributes.sharedSizeBytes + dynamic_smem + reserved);
  const int percent = static_cast<int>(std::min<size_t>(100, (needed * 100 + sm_smem - 1) / sm_smem));
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, percent));
  int after = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&after, kernel, threads, dynamic_smem));
  if (after < per_sm)  // the rounding lost a CTA an SM: keep the default
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, -1));
  chosen[key] = {threads, dynamic_smem};
}

// Programmatic dependent launch: the kernel may start while the previous kernel of the stream drains (its
// launch latency and any independent prologue, e.g. weight loads, overlap that tail). Such a kernel must call
// pdl_wait() before touching anything an earlier kernel wrote; pdl_wait() returns once those kernels finished
// and their writes are in L2. Read such data with __ldcg (L2), never through L1 or ld.global.nc (__ldg, or a
// const __restrict__ pointer): this SM's L1 may hold lines loaded after this kernel started (e.g. by the
// producer's own read-modify-write of neighbouring rows) that other SMs have since rewritten.
// Captured into CUDA graphs as programmatic edges.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                   int cluster_x, Args... args) {
  prefer_least_shared_memory(reinterpret_cast<const void*>(kernel), static_cast<int>(block.x * block.y * block.z),
                             smem);
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attributes[2] = {};
  unsigned n = 0;
  if (pdl) {
    attributes[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster_x > 1) {  // thread-block cluster of cluster_x CTAs along x (distributed shared memory, cluster.sync)
    attributes[n].id = cudaLaunchAttributeClusterDimension;
    attributes[n].val.clusterDim.x = cluster_x;
    attributes[n].val.clusterDim.y = 1;
    attributes[n++].val.clusterDim.z = 1;
  }
  config.attrs = attributes;
  config.numAttrs = n;
  CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args...));
}

template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args... args) {
  launch_kernel(kernel, grid, block, smem, stream, /*pdl=*/true, /*cluster_x=*/1, args...);
}

__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
// Lets the next PDL kernel of the stream launch now (it still waits in pdl_wait() for this one to finish).
__device__ __forceinline__ void pdl_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// Cluster barriers in halves. cg's cluster.sync() is arrive.release + wait.acquire, and the release compiles to
// MEMBAR.ALL.GPU, which waits until every store and load the thread has in flight is done: global stores before
// it cost an L2 round trip, and loads issued before it lose their overlap with the wait. Issue independent loads
// between cluster_arrive_release() and cluster_wait_acquire(); end a cluster's life with cluster_sync_relaxed()
// when that barrier publishes nothing (it only keeps shared memory alive for remote readers whose reads are
// consumed already): a grid's completion still flushes its stores before a dependent's pdl_wait() returns.
__device__ __forceinline__ void cluster_arrive_release() {
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait_acquire() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_sync_relaxed() {
  cluster_arrive_relaxed();
  cluster_wait();
}

// 16 bytes global → shared through L2 (cp.async.cg, no L1 allocation); valid = false zero-fills instead (no read).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// d += A·B for one m16n8k16 bf16 step, fp32 accumulation. a: {row g k-lo, row g+8 k-lo, row g k-hi, row g+8 k-hi}.
__device__ __forceinline__ void mma_bf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The one ranking of logits (router top-k, sampler): larger value first, ties to the lower index. The double
// overload ranks the samplers' keys (a logit widened exactly, or a Gumbel-max key).
__device__ __forceinline__ bool ranks_before(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}
__device__ __forceinline__ bool ranks_before(double v, int i, double bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

// A sampler's best candidate: its key, its token (ties → lower), and whether any logit seen was NaN or +inf.
struct BestKey {
  double key;
  int index, bad;
};

// The best (ranks_before order) of every thread's candidate in a CTA of kWarps warps, in thread 0 (any order of
// merging gives the same answer). Thread 0 reads the shared slots after the last barrier inside, so a second call
// must come after another CTA (or cluster) barrier.
template <int kWarps>
__device__ __forceinline__ BestKey block_best(BestKey b) {
  __shared__ double s_key[kWarps];
  __shared__ int s_index[kWarps], s_bad[kWarps];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  for (int o = 16; o > 0; o >>= 1) {
    const double other_key = __shfl_xor_sync(0xffffffffu, b.key, o);
    const int other_index = __shfl_xor_sync(0xffffffffu, b.index, o);
    if (ranks_before(other_key, other_index, b.key, b.index)) b.key = other_key, b.index = other_index;
  }
  b.bad = __any_sync(0xffffffffu, b.bad);
  if (lane == 0) s_key[warp] = b.key, s_index[warp] = b.index, s_bad[warp] = b.bad;
  __syncthreads();
  if (tid == 0)
    for (int w = 1; w < kWarps; ++w) {
      if (ranks_before(s_key[w], s_index[w], b.key, b.index)) b.key = s_key[w], b.index = s_index[w];
      b.bad |= s_bad[w];
    }
  return b;
}

// The MoE routing of one token by one warp: the k ≤ kMaxK largest of n ≤ 32 · kPerLane logits (ranks_before
// order) and a softmax over those k. logit(e) gives expert e's logit and is called once for each e < n, by lane
// e % 32. Lane 0 writes ids[s] and weights[s] for s < k, in rank order. A NaN logit (a NaN residual or gate row) has
// no rank: the token then gets in-range ids and NaN weights, so its MoE output is NaN and sampling fails, as the
// decode route's ids -1 do (and never an id the expert grouping cannot place). Used by the batched prefill; decode
// routes in router.cuh (route_from_partials).
constexpr int kRouteMaxExperts = 256;
constexpr int kRouteMaxK = 8;

template <typename Logit>
__device__ __forceinline__ void warp_route(int n, int k, Logit logit, int32_t* ids, float* weights) {
  constexpr int kPerLane = kRouteMaxExperts / 32;
  const int lane = threadIdx.x % 32;
  float v[kPerLane];
  uint32_t taken = 0;  // bit q: lane + 32 q is chosen or does not exist
  bool has_nan = false;
#pragma unroll
  for (int q = 0; q < kPerLane; ++q) {
    const int e = lane + 32 * q;
    v[q] = e < n ? logit(e) : -INFINITY;
    has_nan |= v[q] != v[q];
    if (e >= n) taken |= 1u << q;
  }
  has_nan = __any_sync(0xffffffffu, has_nan);
  float top_v[kRouteMaxK];
  int top_i[kRouteMaxK];
#pragma unroll
  for (int s = 0; s < kRouteMaxK; ++s) {
    if (s >= k) break;
    float bv = -INFINITY;
    int bi = 0x7fffffff;
#pragma unroll
    for (int q = 0; q < kPerLane; ++q)
      if (!((taken >> q) & 1u) && ranks_before(v[q], lane + 32 * q, bv, bi)) bv = v[q], bi = lane + 32 * q;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ranks_before(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    if (bi == 0x7fffffff) bi = s;  // every logit left is NaN: any valid id, its weight is NaN below
    else if (bi % 32 == lane) taken |= 1u << (bi / 32);
    top_v[s] = bv;
    top_i[s] = bi;
  }
  if (lane == 0) {
    float sum = 0.f, e[kRouteMaxK];
#pragma unroll
    for (int s = 0; s < kRouteMaxK; ++s)
      if (s < k) e[s] = __expf(top_v[s] - top_v[0]), sum += e[s];
#pragma unroll
    for (int s = 0; s < kRouteMaxK; ++s)
      if (s < k) ids[s] = top_i[s], weights[s] = has_nan ? __int_as_float(0x7fc00000) : e[s] / sum;
  }
}
#endif

}  // namespace gpt_oss
